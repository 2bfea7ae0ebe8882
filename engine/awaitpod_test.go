package engine_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/paperclip-k8s/paperclip-k8s/engine"
	"github.com/paperclip-k8s/paperclip-k8s/engine/enginetest"
)

var gvrPod = schema.GroupVersionResource{Version: "v1", Resource: "pods"}

// podOf returns a pod controlled by w, with the given status.
func podOf(w *unstructured.Unstructured, status map[string]any) *unstructured.Unstructured {
	p := &unstructured.Unstructured{Object: map[string]any{"status": status}}
	p.SetAPIVersion("v1")
	p.SetKind("Pod")
	p.SetName(w.GetName())
	p.SetNamespace(w.GetNamespace())
	t := true
	p.SetOwnerReferences([]metav1.OwnerReference{{APIVersion: w.GetAPIVersion(), Kind: w.GetKind(), Name: w.GetName(), UID: w.GetUID(), Controller: &t}})
	return p
}

func readyCond(typ string) map[string]any {
	return map[string]any{"type": typ, "status": "True", "observedGeneration": int64(1)}
}

// The real Sandbox controller keeps Ready=True for a moment while it
// replaces a vanished pod: AwaitPod waits for the new pod rather than
// failing, and returns it once it is Ready.
func TestAwaitPodWaitsThroughAStaleReady(t *testing.T) {
	is := is.New(t)
	f := newFixture(t, "cilium-sandbox")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sb, w := f.workload(t, "sandbox")
	w = enginetest.SetStatus(t, f.e, w, sb, map[string]any{"conditions": []any{readyCond("Ready")}}) // Ready, but no pod

	started := enginetest.WatchStarts(f.dyn)
	done := f.awaitPodAsync(ctx, sb, w)
	<-started
	<-started // the pods and the workload are watched
	pending := f.addPod(t, w, map[string]any{"phase": "Pending"})
	select {
	case r := <-done:
		t.Fatalf("returned with a Pending pod: %v %v", r.pod, r.err)
	default:
	}
	f.setPodStatus(t, pending, map[string]any{"phase": "Running", "conditions": []any{readyCond("Ready")}})
	r := <-done
	is.NoErr(r.err)
	is.Equal(r.pod.GetUID(), pending.GetUID())
	phase, _, _ := unstructured.NestedString(r.pod.Object, "status", "phase")
	is.Equal(phase, "Running") // returned on the Ready event, not the Pending pod
}

// A pod that will not start ends the wait at once, naming the pod, the
// reason, the kubelet's message and the fix.
func TestAwaitPodFailsFastOnAnImageThatCannotBePulled(t *testing.T) {
	f := newFixture(t, "cilium-sandbox")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sb, w := f.workload(t, "sandbox")
	f.addPod(t, w, map[string]any{"phase": "Pending", "containerStatuses": []any{
		map[string]any{"name": "agent", "state": map[string]any{"waiting": map[string]any{"reason": "ImagePullBackOff", "message": `Back-off pulling image "x.invalid/a:1"`}}},
	}})
	_, _, err := f.e.AwaitPod(ctx, sb, w)
	terminalSays(t, err, "Pod ns1/"+w.GetName(), "Failed/ImagePullBackOff", `Back-off pulling image "x.invalid/a:1"`, "imagePullSecrets")
}

// When the context ends, the error carries the pod's status (here the
// scheduler's message and the hint).
func TestAwaitPodTimeoutSaysWhy(t *testing.T) {
	is := is.New(t)
	f := newFixture(t, "cilium-sandbox")
	sb, w := f.workload(t, "sandbox")
	f.addPod(t, w, map[string]any{"phase": "Pending", "conditions": []any{
		map[string]any{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/1 nodes are available: 1 node(s) were unschedulable.",
			"lastTransitionTime": time.Now().UTC().Format(time.RFC3339)}, // within the autoscalers' grace
	}})
	ctx, cancel := context.WithCancel(context.Background())
	// The wait reads the pod (FindPod) once its informers have synced, and
	// evaluates it before it looks at the context again.
	read := firstGet(f.dyn)
	done := f.awaitPodAsync(ctx, sb, w)
	<-read
	cancel()
	err := (<-done).err
	var we *engine.WaitError
	is.True(errors.As(err, &we))
	is.Equal(we.Last.Reason, "Unschedulable")
	is.True(strings.Contains(err.Error(), "1 node(s) were unschedulable"))
	is.True(strings.Contains(err.Error(), "check nodeSelector"))
}
