package resource_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/matryer/is"

	"github.com/paperclip-k8s/paperclip-k8s/engine/resource"
	"github.com/paperclip-k8s/paperclip-k8s/internal/testutil"
)

// TestReadinessRules evaluates the rules of the sandbox, job and pod files
// against objects recorded from real controllers (testdata/objects) for
// every state: ready, pending, terminal failures and successes, stale
// observedGeneration and deletion.
func TestReadinessRules(t *testing.T) {
	c := testutil.Catalog(t)
	dir := filepath.Join("..", "..", "testdata", "objects")
	raw, err := os.ReadFile(filepath.Join(dir, "expected.json"))
	if err != nil {
		t.Fatal(err)
	}
	var expected map[string]struct{ State, Reason, Message string }
	if err := json.Unmarshal(raw, &expected); err != nil {
		t.Fatal(err)
	}
	if len(expected) < 20 {
		t.Fatalf("only %d recorded objects", len(expected))
	}
	for file, want := range expected {
		t.Run(file, func(t *testing.T) {
			is := is.New(t)
			obj, err := os.ReadFile(filepath.Join(dir, file))
			is.NoErr(err)
			specName := strings.SplitN(file, "-", 2)[0]
			s, ok := c.Get(specName)
			is.True(ok)
			var got resource.Status = s.Evaluate(obj)
			is.Equal(string(got.State), want.State)
			is.Equal(got.Reason, want.Reason)
			if !strings.Contains(got.Message, want.Message) {
				t.Errorf("message %q does not contain %q", got.Message, want.Message)
			}
		})
	}
}

const header = "apiVersion: paperclip-k8s.io/v1alpha1\nkind: Resource\n"

func TestReadinessMessagesComeFromTheCondition(t *testing.T) {
	is := is.New(t)
	c := testutil.Catalog(t)
	s, _ := c.Get("job")
	obj, err := os.ReadFile(filepath.Join("..", "..", "testdata", "objects", "job-failed-deadline.json"))
	is.NoErr(err)
	st := s.Evaluate(obj)
	is.Equal(st.Message, "Job was active longer than specified deadline")
	is.True(st.State.Terminal())
	is.Equal(st.String(), "Failed/DeadlineExceeded: Job was active longer than specified deadline")
}

// The generic rules come before each file's own, as kstatus's
// checkGenericProperties: deletion is Terminating (no file repeats it), and
// a status.observedGeneration older than metadata.generation is Pending even
// when the conditions say Ready.
func TestGenericRulesComeFirst(t *testing.T) {
	is := is.New(t)
	c := testutil.Catalog(t)
	sb, _ := c.Get("sandbox")
	ready, err := os.ReadFile(filepath.Join("..", "..", "testdata", "objects", "sandbox-ready.json"))
	is.NoErr(err)
	var obj map[string]any
	is.NoErr(json.Unmarshal(ready, &obj))
	obj["status"].(map[string]any)["observedGeneration"] = 0 // metadata.generation is 1
	stale, _ := json.Marshal(obj)
	st := sb.Evaluate(stale)
	is.Equal(st.State, resource.Pending)
	is.Equal(st.Reason, "LatestGenerationNotObserved")
	is.Equal(st.Message, "the Sandbox's controller has observed generation 0, not yet 1")
	obj["status"].(map[string]any)["observedGeneration"] = 1
	current, _ := json.Marshal(obj)
	is.Equal(sb.Evaluate(current).State, resource.Ready)

	obj["metadata"].(map[string]any)["deletionTimestamp"] = "2026-11-27T04:40:33Z"
	deleting, _ := json.Marshal(obj)
	st = sb.Evaluate(deleting)
	is.Equal(st.String(), "Terminating/Terminating: the Sandbox is being deleted")
	for _, s := range c.All() {
		if s.Health == nil {
			continue
		}
		for _, r := range s.Health.Rules {
			for _, m := range r.Match {
				is.True(m.Path != "metadata.deletionTimestamp") // generic, not repeated per file
			}
		}
	}
}

// {$use: file} in health.rules stands for that file's rules.
func TestHealthRulesAreSharedByUse(t *testing.T) {
	is := is.New(t)
	c := testutil.TestCatalog(t)
	bare, _ := c.Get("barepod")
	pod, _ := c.Get("pod")
	is.Equal(bare.Health.Rules, pod.Health.Rules)
	failed, err := os.ReadFile(filepath.Join("..", "..", "testdata", "objects", "pod-imagepullbackoff.json"))
	is.NoErr(err)
	is.Equal(bare.Evaluate(failed), pod.Evaluate(failed))

	_, err = resource.Load(fstest.MapFS{
		"a.yaml": {Data: []byte(header + "name: a\ndescription: d\nscope: pod\napi: {group: '', kind: Pod, resource: pods, versions: [v1]}\nhealth: {rules: [{$use: b}]}\n")},
		"b.yaml": {Data: []byte(header + "name: b\ndescription: d\nscope: backend\napi: {group: '', kind: Pod, resource: pods, versions: [v1]}\nbackend: {mode: exec, deadline: seconds, podSpecPath: spec}\ntemplate: {metadata: {name: x}}\npods: {container: c, find: [{self: true}]}\nhealth: {rules: [{$use: a}]}\n")},
		"c.yaml": {Data: []byte(header + "name: c\ndescription: d\nscope: run\napi: {group: '', kind: Secret, resource: secrets, versions: [v1]}\ntemplate: {metadata: {name: x}}\nhealth: {rules: [{state: Ready}, {$use: nothere}]}\n")},
	}, ".")
	is.True(err != nil)
	is.True(strings.Contains(err.Error(), "a.yaml: /health/rules: $use makes a cycle: a -> b -> a"))
	is.True(strings.Contains(err.Error(), `c.yaml: /health/rules/1/$use: names "nothere", which is not a file with health rules in the catalog`))
}
