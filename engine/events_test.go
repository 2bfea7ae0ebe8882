package engine_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/matryer/is"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	k8stesting "k8s.io/client-go/testing"

	"github.com/paperclip-k8s/paperclip-k8s/engine/enginetest"
	"github.com/paperclip-k8s/paperclip-k8s/engine/resource"
)

var gvrEvent = schema.GroupVersionResource{Version: "v1", Resource: "events"}

// eventAbout is a core/v1 Event about o.
func eventAbout(o *unstructured.Unstructured, name, typ, reason, component, message string) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "v1", "kind": "Event",
		"metadata": map[string]any{"name": name, "namespace": o.GetNamespace()},
		"involvedObject": map[string]any{"apiVersion": o.GetAPIVersion(), "kind": o.GetKind(), "name": o.GetName(),
			"namespace": o.GetNamespace(), "uid": string(o.GetUID())},
		"type": typ, "reason": reason, "message": message,
		"source":        map[string]any{"component": component},
		"lastTimestamp": time.Now().UTC().Format(time.RFC3339),
	}}
}

func unschedulableSince(since time.Time) map[string]any {
	return map[string]any{"phase": "Pending", "conditions": []any{map[string]any{
		"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
		"message":            "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector.",
		"lastTransitionTime": since.UTC().Format(time.RFC3339),
	}}}
}

// firstGet reports the first GET of a pod (FindPod): the wait evaluates
// the pod it read before it looks at anything else.
func firstGet(dyn reactorChain) <-chan struct{} {
	return firstAction(dyn, "get", "pods", nil)
}

// An Unschedulable pod long past the autoscalers' grace still waits
// while a node autoscaler says it is adding a node (an event about the
// pod), and the wait ends on the pod once it is Ready.
func TestAwaitPodWaitsForAScaleUp(t *testing.T) {
	is := is.New(t)
	f := newFixture(t, "cilium-sandbox")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sb, w := f.workload(t, "sandbox")
	w = enginetest.SetStatus(t, f.e, w, sb, map[string]any{"conditions": []any{readyCond("Ready")}})
	pod := f.addPod(t, w, unschedulableSince(time.Now().Add(-time.Hour)))
	_, err := f.dyn.Resource(gvrEvent).Namespace("ns1").Create(ctx, eventAbout(pod, "e1", "Normal", "TriggeredScaleUp", "cluster-autoscaler", "pod triggered scale-up: [{pool-a 1->2 (max: 5)}]"), metav1.CreateOptions{})
	is.NoErr(err)

	read := firstGet(f.dyn)
	done := f.awaitPodAsync(ctx, sb, w)
	<-read // evaluated as Pending/ScaleUp, not Failed
	f.setPodStatus(t, pod, map[string]any{"phase": "Running", "conditions": []any{readyCond("Ready")}})
	r := <-done
	is.NoErr(r.err)
	is.Equal(r.pod.GetUID(), pod.GetUID())
}

// With no word from an autoscaler, an Unschedulable pod fails once the
// grace (pod.yaml's after: 15s, counted from the scheduler's verdict) is
// over, without any change to the pod: the wait evaluates the rules again
// when the grace comes due. The error names the pod, the scheduler's
// message and the fix.
func TestAwaitPodFailsAnUnschedulablePodWhenTheGraceEnds(t *testing.T) {
	is := is.New(t)
	f := newFixture(t, "cilium-sandbox")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sb, w := f.workload(t, "sandbox")
	f.addPod(t, w, unschedulableSince(time.Now().Add(-14*time.Second)))
	_, _, err := f.e.AwaitPod(ctx, sb, w)
	terminalSays(t, err, "Pod ns1/"+w.GetName(), "Failed/Unschedulable", "didn't match Pod's node affinity/selector", "nothing is adding one", "paperclip.io/unschedulable=wait")
	is.True(ctx.Err() == nil)
}

// The Job controller reports a used-up quota only as a FailedCreate event
// on the Job: the wait reads the Job's events and fails on it, naming the
// quota and the fix.
func TestWaitFailsAJobOnAQuotaEvent(t *testing.T) {
	is := is.New(t)
	f := newFixture(t, "standard-job")
	dyn := f.dyn
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	job, w := f.workload(t, "job")
	done := f.waitAsync(ctx, job, w, 2, resource.Succeeded) // the Job and its events
	other := w.DeepCopy()
	other.SetUID("uid-another-job")
	_, err := dyn.Resource(gvrEvent).Namespace("ns1").Create(ctx, eventAbout(other, "e0", "Warning", "FailedCreate", "job-controller", "Error creating: exceeded quota: q"), metav1.CreateOptions{})
	is.NoErr(err)
	_, err = dyn.Resource(gvrEvent).Namespace("ns1").Create(ctx, eventAbout(w, "e1", "Warning", "FailedCreate", "job-controller",
		`Error creating: pods "`+w.GetName()+`-7k2lq" is forbidden: exceeded quota: paperclip-quota, requested: pods=1, used: pods=1, limited: pods=1`), metav1.CreateOptions{})
	is.NoErr(err)
	err = (<-done).err
	te := terminalSays(t, err, "Job ns1/"+w.GetName(), "exceeded quota: paperclip-quota", "resourceQuota in the environment config")
	is.Equal(te.Status.Reason, "QuotaExceeded")
}

// The pods' watch expiring (410 Gone) makes the wait list the pods again
// and watch on; the pod that then turns up is seen.
func TestAwaitPodRewatchesAfterExpiry(t *testing.T) {
	is := is.New(t)
	f := newFixture(t, "cilium-sandbox")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sb, w := f.workload(t, "sandbox")
	dyn := f.dyn
	w = enginetest.SetStatus(t, f.e, w, sb, map[string]any{"conditions": []any{readyCond("Ready")}})

	first := watch.NewFake()
	rewatched := make(chan struct{}, 4)
	var n atomic.Int32
	dyn.PrependWatchReactor("pods", func(a k8stesting.Action) (bool, watch.Interface, error) {
		if n.Add(1) == 1 {
			return true, first, nil
		}
		w, err := dyn.Tracker().Watch(a.GetResource(), a.GetNamespace())
		rewatched <- struct{}{}
		return true, w, err
	})
	done := f.awaitPodAsync(ctx, sb, w)
	expire(first)
	<-rewatched
	pod := f.addPod(t, w, map[string]any{"phase": "Running", "conditions": []any{readyCond("Ready")}})
	r := <-done
	is.NoErr(r.err)
	is.Equal(r.pod.GetUID(), pod.GetUID())
	is.True(n.Load() >= 2)
}
