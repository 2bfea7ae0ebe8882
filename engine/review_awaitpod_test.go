package engine_test

import (
	"context"
	"testing"

	"github.com/matryer/is"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/paperclip-k8s/paperclip-k8s/engine"
	"github.com/paperclip-k8s/paperclip-k8s/engine/enginetest"
	"github.com/paperclip-k8s/paperclip-k8s/internal/testutil"
)

// A wait on a backend that finds its pod through via (a claim) checks again
// only for the pod changes that could be its pod: those carrying the
// claim's labelsFrom labels. Another run's pod in the same namespace costs
// it no reads (each check reads the Sandbox and the pod).
func TestAwaitPodViaConcernsOnlyTheRunsPods(t *testing.T) {
	is := is.New(t)
	e, dyn := enginetest.New(t, testutil.Catalog(t))
	claim, sandbox := claimWithSandbox(t, context.Background(), e, dyn, nil, nil)
	s, _ := e.Catalog.Get("sandboxclaim")
	concerns := engine.ViaPodConcerns(s, claim)
	is.True(concerns != nil)
	is.True(concerns(controlled("v1", "Pod", "pool-x7lch", sandbox, runLabel)))
	is.True(!concerns(controlled("v1", "Pod", "pool-other", sandbox, map[string]string{"sandbox.users.io/paperclip-run-id": "another-run"})))
	is.True(!concerns(controlled("v1", "Pod", "pool-warm", sandbox, map[string]string{"agents.x-k8s.io/warm-pool-sandbox": "91dd7983"})))

	// A claim without labelsFrom labels: every pod change concerns it.
	bare := claim.DeepCopy()
	unstructured.RemoveNestedField(bare.Object, "spec", "additionalPodMetadata")
	is.True(engine.ViaPodConcerns(s, bare)(controlled("v1", "Pod", "pool-warm", sandbox, nil)))

	// A backend that finds its pods itself keeps its own rule.
	sb, _ := e.Catalog.Get("sandbox")
	is.True(engine.ViaPodConcerns(sb, claim) == nil)
}
