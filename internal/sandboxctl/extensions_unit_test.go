package sandboxctl

import (
	"encoding/json"
	"testing"

	"github.com/matryer/is"
)

// The pool's template hashes are FNV-1a of the template's podTemplate and
// blueprint JSON; the values are the real controller's for the template
// `tpl` of the research run (agent-sandbox-extensions-real.md §1, §2).
func TestTemplateHashesMatchTheRealController(t *testing.T) {
	is := is.New(t)
	var ts templateSpec
	is.NoErr(json.Unmarshal([]byte(`{"envVarsInjectionPolicy":"Disallowed","networkPolicyManagement":"Managed","podTemplate":{"metadata":{"annotations":{"paperclip.io/note":"hello"},"labels":{"agents.x-k8s.io/foo":"bar","app":"demo","paperclip.io/run-id":"r1"}},"spec":{"containers":[{"command":["sleep","infinity"],"image":"busybox","name":"main"}],"restartPolicy":"Always"}},"volumeClaimTemplatesPolicy":"Disallowed"}`), &ts))
	podHash, bpHash, err := templateHashes(&ts)
	is.NoErr(err)
	is.Equal(podHash, "6826ca2f") // agents.x-k8s.io/sandbox-pod-template-hash
	is.Equal(bpHash, "9b019d3a")  // agents.x-k8s.io/sandbox-template-hash
	is.Equal(NameHash("tpl"), "9d22159f")
	is.Equal(NameHash("pool"), "91dd7983")
}
