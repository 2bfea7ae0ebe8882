package engine_test

import (
	"context"
	"errors"
	"maps"
	"testing"
	"time"

	"github.com/matryer/is"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"

	"github.com/paperclip-k8s/paperclip-k8s/engine"
	"github.com/paperclip-k8s/paperclip-k8s/engine/resource"
)

// standbyValues are a run's values as a standby of it is made: no run id
// in its labels, an hour's less deadline.
func standbyValues(t *testing.T, run map[string]any) map[string]any {
	t.Helper()
	sv, err := resource.Normalize(run)
	if err != nil {
		t.Fatal(err)
	}
	v := sv.(map[string]any)
	r := v["run"].(map[string]any)
	labels := maps.Clone(r["labels"].(map[string]any))
	delete(labels, "paperclip.io/run-id")
	r["labels"] = labels
	r["deadlineTime"] = time.Now().Add(10 * time.Minute).UTC().Format(time.RFC3339)
	return v
}

// runValuesNamed are the run's values for a workload of that name.
func runValuesNamed(t *testing.T, values map[string]any, name string) map[string]any {
	t.Helper()
	cp, err := resource.Normalize(values)
	if err != nil {
		t.Fatal(err)
	}
	v := cp.(map[string]any)
	run := v["run"].(map[string]any)
	run["name"] = name
	run["secretName"], run["egressPolicyName"] = name+"-env", name+"-egress"
	return v
}

// TestTakeStandby takes a standby SandboxClaim on the API server: the
// run's labels are added to the standby's (it had none of them), the deadline
// moves, the annotations land; a second take from the same (now stale)
// read is refused by the patch's test that the run's labels are absent, a deleted
// standby is gone, and a run whose rendering differs beyond labels and
// deadline is refused without a write.
func TestTakeStandby(t *testing.T) {
	requireCluster(t)
	is := is.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e, ns, runValues := tenant(t, "standard-sandboxclaim")
	s, _ := e.Catalog.Get("sandboxclaim")
	sv := standbyValues(t, runValues)
	w, err := e.Create(ctx, s, ns, sv, nil)
	is.NoErr(err)
	_, hasRun := w.GetLabels()["paperclip.io/run-id"]
	is.True(!hasRun) // a standby: no run's labels
	gvr := schema.GroupVersionResource{Group: s.API.Group, Version: w.GroupVersionKind().Version, Resource: s.API.Resource}
	c := env.Dynamic().Resource(gvr).Namespace(ns)

	took, err := e.Take(ctx, s, w, sv, runValues, map[string]string{"paperclip.io/pod-uid": "u-1"})
	is.NoErr(err)
	run := runValues["run"].(map[string]any)
	is.Equal(took.GetLabels()["paperclip.io/run-id"], run["labels"].(map[string]any)["paperclip.io/run-id"])
	at, _, _ := unstructured.NestedString(took.Object, "spec", "lifecycle", "shutdownTime")
	is.Equal(at, run["deadlineTime"])
	is.Equal(took.GetAnnotations()["paperclip.io/pod-uid"], "u-1")

	// Another taker read the standby before this take: the server refuses
	// the stale version, and the standby read again is not one any more.
	_, err = e.Take(ctx, s, w, sv, runValues, nil)
	var taken *engine.StandbyTakenError
	is.True(errors.As(err, &taken)) // a standby is not taken twice

	// A run whose claim would differ beyond labels and deadline (another
	// pod label) does not take it, and nothing is written.
	other := standbyValues(t, runValues)
	other["run"].(map[string]any)["podSelector"] = map[string]any{"sandbox.users.io/paperclip-run-id": "someone-else"}
	_, err = e.Take(ctx, s, took, sv, other, nil)
	var mismatch *engine.StandbyMismatchError
	is.True(errors.As(err, &mismatch))
	now, err := e.Get(ctx, engine.RefOf(s, took))
	is.NoErr(err)
	is.Equal(now.GetLabels(), took.GetLabels()) // its controller writes status, not labels

	// A standby annotated since it was read (by its controller, say)
	// keeps those annotations when it is taken.
	rv2 := runValuesNamed(t, runValues, run["name"].(string)+"b")
	sv2 := standbyValues(t, rv2)
	w2, err := e.Create(ctx, s, ns, sv2, nil)
	is.NoErr(err)
	_, err = c.Patch(ctx, w2.GetName(), types.MergePatchType, []byte(`{"metadata":{"annotations":{"example.com/x":"y"}}}`), metav1.PatchOptions{})
	is.NoErr(err)
	stale := w2.DeepCopy()
	stale.SetAnnotations(nil)
	took2, err := e.Take(ctx, s, stale, sv2, rv2, map[string]string{"paperclip.io/pod-uid": "u-2"})
	is.NoErr(err)
	is.Equal(took2.GetAnnotations()["example.com/x"], "y")
	is.Equal(took2.GetAnnotations()["paperclip.io/pod-uid"], "u-2")

	// A standby deleted since it was read is gone.
	is.NoErr(c.Delete(ctx, took.GetName(), metav1.DeleteOptions{}))
	_, err = e.Take(ctx, s, took, sv, runValues, nil)
	is.True(engine.IsGone(err))
}
