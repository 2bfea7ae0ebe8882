package engine_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/matryer/is"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynfake "k8s.io/client-go/dynamic/fake"

	"github.com/paperclip-k8s/paperclip-k8s/engine"
	"github.com/paperclip-k8s/paperclip-k8s/engine/enginetest"
	"github.com/paperclip-k8s/paperclip-k8s/internal/testutil"
	"github.com/paperclip-k8s/paperclip-k8s/plugin/valuestest"
)

var gvrSandbox = schema.GroupVersionResource{Group: "agents.x-k8s.io", Version: "v1beta1", Resource: "sandboxes"}

// controlled returns an object of apiVersion/kind named name in owner's
// namespace, controlled by owner, with these labels.
func controlled(apiVersion, kind, name string, owner *unstructured.Unstructured, labels map[string]string) *unstructured.Unstructured {
	o := &unstructured.Unstructured{Object: map[string]any{}}
	o.SetAPIVersion(apiVersion)
	o.SetKind(kind)
	o.SetName(name)
	o.SetNamespace(owner.GetNamespace())
	o.SetLabels(labels)
	t := true
	o.SetOwnerReferences([]metav1.OwnerReference{{APIVersion: owner.GetAPIVersion(), Kind: owner.GetKind(), Name: owner.GetName(), UID: owner.GetUID(), Controller: &t}})
	return o
}

// claimWithSandbox creates a claim of the sandboxclaim backend bound (in
// status.sandbox.name) to a Sandbox pool-x7lch that the claim controls and
// that carries the claim's UID label (sandboxLabels nil), as the
// extensions controller leaves them at a warm adoption.
func claimWithSandbox(t *testing.T, ctx context.Context, e *engine.Engine, dyn *dynfake.FakeDynamicClient, sandboxOwner *unstructured.Unstructured, sandboxLabels map[string]string) (claim, sandbox *unstructured.Unstructured) {
	t.Helper()
	is := is.New(t)
	c := e.Catalog
	vc := valuestest.LoadShipped(t, "standard-sandboxclaim")
	cs, _ := c.Get("sandboxclaim")
	claim, err := e.Create(ctx, cs, "ns1", vc.Values, nil)
	is.NoErr(err)
	if sandboxOwner == nil {
		sandboxOwner = claim
	}
	if sandboxLabels == nil {
		sandboxLabels = map[string]string{"agents.x-k8s.io/claim-uid": string(claim.GetUID())}
	}
	sandbox, err = dyn.Resource(gvrSandbox).Namespace("ns1").Create(ctx,
		controlled("agents.x-k8s.io/v1beta1", "Sandbox", "pool-x7lch", sandboxOwner, sandboxLabels), metav1.CreateOptions{})
	is.NoErr(err)
	claim = enginetest.SetStatus(t, e, claim, cs, map[string]any{"conditions": []any{readyCond("Ready")}, "sandbox": map[string]any{"name": "pool-x7lch"}})
	return claim, sandbox
}

// runLabel is the label the claim asks the controller to put on its pod
// (spec.additionalPodMetadata.labels in standard-sandboxclaim).
var runLabel = map[string]string{"sandbox.users.io/paperclip-run-id": "run-9"}

// A pod found through via (claim -> status.sandbox.name -> Sandbox ->
// its pod rules) counts only when each hop is the workload's: the Sandbox
// controlled by the claim's UID and labelled with it, the pod controlled by
// the Sandbox's UID and carrying the claim's labelsFrom labels.
func TestFindPodVia(t *testing.T) {
	ctx := context.Background()
	cs := func(c *testing.T) (*engine.Engine, *dynfake.FakeDynamicClient) {
		return enginetest.New(c, testutil.Catalog(c))
	}
	running := map[string]any{"phase": "Running", "conditions": []any{readyCond("Ready")}}
	t.Run("found", func(t *testing.T) {
		is := is.New(t)
		e, dyn := cs(t)
		claim, sandbox := claimWithSandbox(t, ctx, e, dyn, nil, nil)
		pod := controlled("v1", "Pod", "pool-x7lch", sandbox, runLabel)
		pod.Object["status"] = running
		pod, err := dyn.Resource(gvrPod).Namespace("ns1").Create(ctx, pod, metav1.CreateOptions{})
		is.NoErr(err)
		s, _ := e.Catalog.Get("sandboxclaim")
		got, err := e.FindPod(ctx, s, claim)
		is.NoErr(err)
		is.Equal(got.GetUID(), pod.GetUID())
	})
	for _, tc := range []struct {
		name string
		// setup returns the claim, after making the chain broken in one place.
		setup func(t *testing.T, e *engine.Engine, dyn *dynfake.FakeDynamicClient) *unstructured.Unstructured
	}{
		{"sandbox not controlled by the claim", func(t *testing.T, e *engine.Engine, dyn *dynfake.FakeDynamicClient) *unstructured.Unstructured {
			other := controlled("v1", "ConfigMap", "other", &unstructured.Unstructured{Object: map[string]any{"metadata": map[string]any{"namespace": "ns1", "uid": "uid-other"}}}, nil)
			other.SetUID("uid-other")
			claim, sandbox := claimWithSandbox(t, ctx, e, dyn, other, map[string]string{})
			podIn(t, ctx, dyn, controlled("v1", "Pod", "pool-x7lch", sandbox, runLabel), running)
			return claim
		}},
		{"sandbox without the claim's UID label", func(t *testing.T, e *engine.Engine, dyn *dynfake.FakeDynamicClient) *unstructured.Unstructured {
			claim, sandbox := claimWithSandbox(t, ctx, e, dyn, nil, map[string]string{"agents.x-k8s.io/claim-uid": "another-claim"})
			podIn(t, ctx, dyn, controlled("v1", "Pod", "pool-x7lch", sandbox, runLabel), running)
			return claim
		}},
		{"pod without the run's label (not handed over yet)", func(t *testing.T, e *engine.Engine, dyn *dynfake.FakeDynamicClient) *unstructured.Unstructured {
			claim, sandbox := claimWithSandbox(t, ctx, e, dyn, nil, nil)
			podIn(t, ctx, dyn, controlled("v1", "Pod", "pool-x7lch", sandbox, map[string]string{"sandbox.users.io/paperclip-run-id": "another-run"}), running)
			return claim
		}},
		{"pod controlled by the claim, not by its Sandbox", func(t *testing.T, e *engine.Engine, dyn *dynfake.FakeDynamicClient) *unstructured.Unstructured {
			claim, _ := claimWithSandbox(t, ctx, e, dyn, nil, nil)
			podIn(t, ctx, dyn, controlled("v1", "Pod", "pool-x7lch", claim, runLabel), running)
			return claim
		}},
		{"claim names no Sandbox", func(t *testing.T, e *engine.Engine, dyn *dynfake.FakeDynamicClient) *unstructured.Unstructured {
			claim, sandbox := claimWithSandbox(t, ctx, e, dyn, nil, nil)
			podIn(t, ctx, dyn, controlled("v1", "Pod", "pool-x7lch", sandbox, runLabel), running)
			s, _ := e.Catalog.Get("sandboxclaim")
			return enginetest.SetStatus(t, e, claim, s, map[string]any{"sandbox": map[string]any{}})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			is := is.New(t)
			e, dyn := cs(t)
			claim := tc.setup(t, e, dyn)
			s, _ := e.Catalog.Get("sandboxclaim")
			_, err := e.FindPod(ctx, s, claim)
			is.True(errors.Is(err, engine.ErrNoPod))
		})
	}
}

func podIn(t *testing.T, ctx context.Context, dyn *dynfake.FakeDynamicClient, pod *unstructured.Unstructured, status map[string]any) *unstructured.Unstructured {
	t.Helper()
	pod.Object["status"] = status
	p, err := dyn.Resource(gvrPod).Namespace(pod.GetNamespace()).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// AwaitPod follows the pods of the objects it found through via: a warm
// pod that the controller labels for the run only after the claim is Ready
// (the real one writes the claim's status 1 ms before it patches the pod)
// ends the wait on that pod event, not before.
func TestAwaitPodViaWaitsForTheHandover(t *testing.T) {
	is := is.New(t)
	e, dyn := enginetest.New(t, testutil.Catalog(t))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	claim, sandbox := claimWithSandbox(t, ctx, e, dyn, nil, nil)
	pod := podIn(t, ctx, dyn, controlled("v1", "Pod", "pool-x7lch", sandbox, map[string]string{"agents.x-k8s.io/warm-pool-sandbox": "91dd7983"}),
		map[string]any{"phase": "Running", "conditions": []any{readyCond("Ready")}})
	s, _ := e.Catalog.Get("sandboxclaim")
	type result struct {
		pod *unstructured.Unstructured
		err error
	}
	done := make(chan result, 1)
	started := enginetest.WatchStarts(dyn)
	go func() {
		_, p, err := e.AwaitPod(ctx, s, claim)
		done <- result{p, err}
	}()
	<-started
	<-started // the pods and the claim are watched
	select {
	case r := <-done:
		t.Fatalf("returned before the pod was handed over: %v %v", r.pod, r.err)
	default:
	}
	pod.SetLabels(runLabel)
	_, err := dyn.Resource(gvrPod).Namespace("ns1").Update(ctx, pod, metav1.UpdateOptions{})
	is.NoErr(err)
	r := <-done
	is.NoErr(r.err)
	is.Equal(r.pod.GetUID(), pod.GetUID())
	is.Equal(r.pod.GetLabels()["sandbox.users.io/paperclip-run-id"], "run-9")
}
