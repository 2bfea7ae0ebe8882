package resource_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/matryer/is"

	"github.com/paperclip-k8s/paperclip-k8s/engine/resource"
	"github.com/paperclip-k8s/paperclip-k8s/internal/testutil"
)

// The readiness of resources/sandboxclaim.yaml on claims as the real
// extensions controller writes them (testdata/objects/sandboxclaim-*.json,
// the statuses verbatim from the observed runs): Ready when the claim
// forwards its Sandbox's Ready (whatever the generation the adoption PUT
// made), Pending while the controller has not observed the provider's
// latest change (a moved shutdownTime), while a missing pool or template
// may come back, and while a pod is (re)created; Failed at once when the
// claim can never be Ready (refused metadata, expiry, a failed pod).
func TestSandboxClaimReadiness(t *testing.T) {
	c := testutil.Catalog(t)
	s, ok := c.Get("sandboxclaim")
	if !ok {
		t.Fatal("no sandboxclaim file")
	}
	for _, tc := range []struct {
		file, state, reason, message, hint string
	}{
		{"warm-ready", "Ready", "DependenciesReady", "Pod is Ready", ""},
		{"warm-ready-gen2", "Ready", "DependenciesReady", "Pod is Ready", ""},
		{"stale-generation", "Pending", "Pending", "waiting for the agent-sandbox extensions controller", ""},
		{"invalid-metadata", "Failed", "InvalidMetadata", `label domain "paperclip.io" is not in the allowlist`, "sandbox.users.io"},
		{"claim-expired", "Failed", "ClaimExpired", "Claim expired.", ""},
		{"warmpool-not-found", "Pending", "WarmPoolNotFound", `SandboxWarmPool "nopool" not found`, "the next acquire applies it again"},
		{"pod-failed", "Failed", "PodFailed", "Pod failed", ""},
		{"sandbox-expired", "Failed", "SandboxExpired", "expired independently of the Claim", ""},
		{"dependencies-not-ready", "Pending", "DependenciesNotReady", "Pod exists with phase: Pending", ""},
		{"cold-sandbox-not-ready", "Pending", "SandboxNotReady", "Sandbox is not ready", ""},
		{"deleting", "Terminating", "Terminating", "the SandboxClaim is being deleted", ""},
		{"no-status", "Pending", "Pending", "waiting for the agent-sandbox extensions controller", ""},
	} {
		t.Run(tc.file, func(t *testing.T) {
			is := is.New(t)
			obj, err := os.ReadFile(filepath.Join("..", "..", "testdata", "objects", "sandboxclaim-"+tc.file+".json"))
			is.NoErr(err)
			got := s.Evaluate(obj)
			is.Equal(got.State, resource.State(tc.state))
			is.Equal(got.Reason, tc.reason)
			if !strings.Contains(got.Message, tc.message) {
				t.Errorf("message %q does not contain %q", got.Message, tc.message)
			}
			if !strings.Contains(got.Hint, tc.hint) {
				t.Errorf("hint %q does not contain %q", got.Hint, tc.hint)
			}
		})
	}
}
