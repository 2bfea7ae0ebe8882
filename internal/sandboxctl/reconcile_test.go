package sandboxctl

import (
	"testing"
	"time"

	"github.com/matryer/is"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// noKube fails the test (nil dereference panic) on any typed-client call.
type noKube struct{ kubernetes.Interface }

// A Sandbox with a deletionTimestamp gets no writes at all, even when it is
// expired and has no pod (both of which make a live Sandbox write). This is
// a unit test because "no write happened" has no event to wait for on a real
// cluster.
func TestNoWritesWhileDeleting(t *testing.T) {
	is := is.New(t)
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{GVR: "SandboxList"})
	c := New(dyn, noKube{}, nil)
	c.sandboxes = cache.NewSharedIndexInformer(&cache.ListWatch{}, &unstructured.Unstructured{}, 0, cache.Indexers{})
	c.pods = cache.NewSharedIndexInformer(&cache.ListWatch{}, &corev1.Pod{}, 0, cache.Indexers{})

	sb := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": APIVersion,
		"kind":       Kind,
		"metadata": map[string]any{
			"name": "sb", "namespace": "ns", "uid": "u1", "generation": int64(1), "resourceVersion": "5",
			"deletionTimestamp": time.Now().UTC().Format(time.RFC3339),
			"finalizers":        []any{"test.paperclip.io/hold"},
		},
		"spec": map[string]any{
			"shutdownTime":   "2020-01-01T00:00:00Z",
			"shutdownPolicy": "Delete",
			"podTemplate":    map[string]any{"spec": map[string]any{"containers": []any{map[string]any{"name": "c", "image": "i"}}}},
		},
		"status": map[string]any{"conditions": []any{map[string]any{
			"type": "Ready", "status": "True", "reason": "DependenciesReady", "message": "Pod is Ready",
			"observedGeneration": int64(1), "lastTransitionTime": "2026-01-01T00:00:00Z",
		}}},
	}}
	is.NoErr(c.sandboxes.GetIndexer().Add(sb))
	after, err := c.reconcile(t.Context(), "ns/sb")
	is.NoErr(err)
	is.Equal(after, time.Duration(0))
	is.Equal(len(dyn.Actions()), 0) // no status patch, no delete

	// Control: the same Sandbox without the deletionTimestamp is expired and
	// gets its Ready=False/SandboxExpired status patch.
	live := sb.DeepCopy()
	live.SetDeletionTimestamp(nil)
	is.NoErr(c.sandboxes.GetIndexer().Update(live))
	_, _ = c.reconcile(t.Context(), "ns/sb")
	is.True(len(dyn.Actions()) > 0)
	patch, ok := dyn.Actions()[0].(interface{ GetSubresource() string })
	is.True(ok)
	is.Equal(patch.GetSubresource(), "status")
	is.Equal(dyn.Actions()[0].GetVerb(), "patch")
}

func TestConditionTransitionTimeKept(t *testing.T) {
	is := is.New(t)
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	prev := []metav1.Condition{{Type: "Ready", Status: metav1.ConditionFalse, Reason: "DependenciesNotReady", LastTransitionTime: metav1.NewTime(t0)}}
	cs := &conds{prev: prev, gen: 2, now: t0.Add(time.Hour)}
	cs.set("Ready", metav1.ConditionFalse, "SandboxExpired", "Sandbox has expired") // same status: time kept
	cs.set("Finished", metav1.ConditionTrue, "PodFailed", "Pod failed")             // new: now
	is.True(cs.out[0].LastTransitionTime.Equal(&metav1.Time{Time: t0}))
	is.True(cs.out[1].LastTransitionTime.Time.Equal(t0.Add(time.Hour)))
	is.Equal(cs.out[0].ObservedGeneration, int64(2))
	cs.set("Ready", metav1.ConditionTrue, "DependenciesReady", "Pod is Ready") // replaces in place
	is.Equal(len(cs.out), 2)
	is.True(cs.out[0].LastTransitionTime.Time.Equal(t0.Add(time.Hour)))
}
