package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"

	"github.com/paperclip-k8s/paperclip-k8s/internal/devcluster"
	"github.com/paperclip-k8s/paperclip-k8s/internal/sandboxctl"
)

// realize calls environmentRealizeWorkspace for a lease.
func (h *hooks) realize(l lease) (map[string]any, *rpcError) {
	h.t.Helper()
	m, _ := h.w.call("environmentRealizeWorkspace", h.with(map[string]any{
		"lease":     l,
		"workspace": map[string]any{"localPath": "/host/ws", "mode": "isolated_workspace"},
	}))
	if m.err != nil {
		return nil, m.err
	}
	var r struct {
		Metadata map[string]any `json:"metadata"`
	}
	if err := json.Unmarshal(m.result, &r); err != nil {
		h.t.Fatal(err)
	}
	return r.Metadata, nil
}

// Realize waits for the lease's pod (the host's first command has only
// 15 s) and pins it on the workload, so that the first resume of a lease
// kept for reuse (its metadata is acquire's, without a pod) notices a
// replaced pod.
func TestRealizeWaitsAndPinsThePod(t *testing.T) {
	is := is.New(t)
	h := newHooks(t, "sandbox", nil)
	ctx := context.Background()
	l := h.acquire(nil)
	is.Equal(l.meta("podUid"), "")

	meta, rerr := h.realize(l)
	if rerr != nil {
		t.Fatalf("realize: %v", rerr)
	}
	pod := h.waitPod(l, "")
	is.Equal(meta["podName"], pod.Name)
	sb, err := h.dyn().Resource(gvrSandbox).Namespace(h.namespace()).Get(ctx, l.id(), metav1.GetOptions{})
	is.NoErr(err)
	is.Equal(sb.GetAnnotations()["paperclip.io/pod-uid"], string(pod.UID))
	r := h.exec(l, "echo ready", nil)
	is.Equal(r.Stdout, "ready\n")

	// The pod is replaced while the lease is kept for reuse.
	zero := int64(0)
	is.NoErr(h.kube().CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}))
	h.waitPod(l, string(pod.UID))
	var got lease
	h.w.mustCall("environmentResumeLease", h.leaseParams(l), &got) // acquire's metadata
	is.Equal(got.ProviderLeaseID, nil)
	is.Equal(got.Metadata["expired"], true)
	is.True(strings.Contains(got.meta("reason"), "was replaced (pod UID "+string(pod.UID)))
}

// podStage starts hooks whose agent pods carry a kwok stage annotation
// (internal/devcluster/kwok), through the operator's pod annotations.
func podStage(t *testing.T, backend string, annotations map[string]string) *hooks {
	b, err := json.Marshal(annotations)
	if err != nil {
		t.Fatal(err)
	}
	return newHooks(t, backend, nil, workerOpts{env: []string{"PAPERCLIP_K8S_POD_ANNOTATIONS=" + string(b)}})
}

// A pod that is ready only after a while (a cold image pull): realize
// waits for it, and the first command runs.
func TestRealizeWaitsForASlowPod(t *testing.T) {
	is := is.New(t)
	h := podStage(t, "sandbox", map[string]string{"paperclip-k8s.test/ready-after": "5s"})
	l := h.acquire(nil)
	if _, rerr := h.realize(l); rerr != nil {
		t.Fatalf("realize: %v", rerr)
	}
	r := h.exec(l, "echo up", nil)
	is.Equal(r.Stdout, "up\n")
}

// A pod that will not start fails realize at once, with the workload, the
// pod, the kubelet's reason and message, and the fix.
func TestRealizeFailsFastOnAPodThatWillNotStart(t *testing.T) {
	for _, c := range []struct{ reason, want, fix string }{
		{"ErrImagePull", "Failed/ImagePullBackOff: Back-off pulling image", "imagePullSecrets"},
		{"InvalidImageName", "Failed/InvalidImageName: Failed to apply default image tag", "fix the adapter's runtimeImage"},
		{"CreateContainerConfigError", "Failed/CreateContainerConfigError", "is missing or invalid"},
	} {
		t.Run(c.reason, func(t *testing.T) {
			t.Parallel()
			msg := map[string]string{"paperclip-k8s.test/container-waiting": c.reason}
			if c.reason == "CreateContainerConfigError" {
				msg["paperclip-k8s.test/container-waiting-message"] = "container has runAsNonRoot and image will run as root"
			}
			h := podStage(t, "sandbox", msg)
			l := h.acquire(nil)
			_, rerr := h.realize(l)
			wantErr(t, rerr, "Sandbox "+h.namespace()+"/"+l.id()+" cannot be used", "Pod "+h.namespace()+"/", c.want, c.fix)
			// A command fails the same way, at once.
			wantErr(t, h.w.callErr("environmentExecute", h.execParams(l, "true", nil)), c.want)
		})
	}
}

// The real Sandbox controller clears the pod-name annotation and keeps
// Ready=True for a moment when the pod vanishes. A lease whose first use
// falls in that window waits for the replacement pod instead of failing.
func TestRealizeWaitsOutAStaleReady(t *testing.T) {
	is := is.New(t)
	h := newHooks(t, "sandbox", nil)
	ctx := context.Background()
	l := h.acquire(nil)
	pod := h.waitPod(l, "")

	hold := h.env.SandboxController().Hold(h.namespace(), l.id(), sandboxctl.PodGone)
	zero := int64(0)
	is.NoErr(h.kube().CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}))
	<-hold.Reached() // no pod, annotation cleared, Ready=True still
	sb, err := h.dyn().Resource(gvrSandbox).Namespace(h.namespace()).Get(ctx, l.id(), metav1.GetOptions{})
	is.NoErr(err)
	is.Equal(sb.GetAnnotations()["agents.x-k8s.io/pod-name"], "")

	type res struct {
		meta map[string]any
		err  *rpcError
	}
	done := make(chan res, 1)
	go func() {
		m, e := h.realize(l)
		done <- res{m, e}
	}()
	// realize is waiting for a pod: it has not answered while none exists.
	select {
	case r := <-done:
		t.Fatalf("realize answered while the Sandbox had no pod: %v %v", r.meta, r.err)
	default:
	}
	hold.Release()
	r := <-done
	if r.err != nil {
		t.Fatalf("realize: %v", r.err)
	}
	newPod := h.waitPod(l, string(pod.UID))
	is.Equal(r.meta["podName"], newPod.Name)
	out := h.exec(l, "echo new", nil)
	is.Equal(out.Stdout, "new\n")
}

// A pod the company's quota does not allow fails realize at once (the
// controller reports the refusal), naming the quota and the fix.
func TestRealizeFailsFastWhenTheQuotaIsUsedUp(t *testing.T) {
	is := is.New(t)
	h := newHooks(t, "sandbox", map[string]any{"resourceQuota": map[string]any{"pods": "1"}})
	first := h.acquire(nil)
	if _, rerr := h.realize(first); rerr != nil {
		t.Fatalf("realize of the first lease: %v", rerr)
	}
	second := h.acquire(nil)
	_, rerr := h.realize(second)
	wantErr(t, rerr, "Sandbox "+h.namespace()+"/"+second.id()+" cannot be used", "QuotaExceeded", "exceeded quota: paperclip-quota", "resourceQuota in the environment config")
	r := h.exec(first, "echo still", nil)
	is.Equal(r.Stdout, "still\n") // the first run is unaffected
}

// A pod being deleted (kubelet grace period) is not a pod to run in: the
// lease's pod watch sees the deletion at once, commands are refused, and
// resume says the lease expired — while the Sandbox still says Ready.
func TestTerminatingPodEndsTheLease(t *testing.T) {
	is := is.New(t)
	h := podStage(t, "sandbox", map[string]string{"paperclip-k8s.test/terminating-for": "1h"})
	ctx := context.Background()
	l := h.acquire(nil)
	is.Equal(h.exec(l, "true", nil).code(), 0)
	pod := h.waitPod(l, "")
	is.NoErr(h.kube().CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{}))
	t.Cleanup(func() { // let kwok finish the delete
		p, err := h.kube().CoreV1().Pods(pod.Namespace).Get(context.Background(), pod.Name, metav1.GetOptions{})
		if err == nil {
			p.Annotations["paperclip-k8s.test/terminating-for"] = "0s"
			_, _ = h.kube().CoreV1().Pods(pod.Namespace).Update(context.Background(), p, metav1.UpdateOptions{})
		}
	})
	// The worker learns of the deletion from its watch: wait for that event.
	eventually(t, 30*time.Second, "execute refuses the Terminating pod", func() error {
		m, _ := h.w.call("environmentExecute", h.execParams(l, "true", nil))
		if m.err != nil && strings.Contains(m.err.Message, "can no longer be used") {
			return nil
		}
		return fmt.Errorf("execute still answered %s / %v", m.result, m.err)
	})
	var got lease
	h.w.mustCall("environmentResumeLease", h.leaseParams(l), &got)
	is.Equal(got.Metadata["expired"], true)
	is.True(strings.Contains(got.meta("reason"), "Terminating"))
}

// Two pods for one Sandbox: the controller reports MultiplePods (Ready
// False) and a resume says the lease expired, naming the reason.
func TestMultiplePodsExpireTheLease(t *testing.T) {
	is := is.New(t)
	h := newHooks(t, "sandbox", nil)
	ctx := context.Background()
	l := h.acquire(nil)
	is.Equal(h.exec(l, "true", nil).code(), 0)
	pod := h.waitPod(l, "")
	twin := pod.DeepCopy()
	twin.ObjectMeta = metav1.ObjectMeta{Name: pod.Name + "-twin", Namespace: pod.Namespace, Labels: pod.Labels, OwnerReferences: pod.OwnerReferences}
	twin.Status = corev1.PodStatus{}
	_, err := h.kube().CoreV1().Pods(pod.Namespace).Create(ctx, twin, metav1.CreateOptions{})
	is.NoErr(err)
	eventually(t, 30*time.Second, "the Sandbox reports MultiplePods", func() error {
		var got lease
		h.w.mustCall("environmentResumeLease", h.leaseParams(l), &got)
		if got.Metadata["expired"] == true && strings.Contains(got.meta("reason"), "MultiplePods") {
			return nil
		}
		return fmt.Errorf("resume answered %+v", got.Metadata)
	})
}

// untilPod waits, by watch, until a pod of the lease satisfies cond, and
// returns it.
func (h *hooks) untilPod(l lease, what string, cond func(*corev1.Pod) bool) *corev1.Pod {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ns := h.namespace()
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return h.kube().CoreV1().Pods(ns).List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return h.kube().CoreV1().Pods(ns).Watch(ctx, o)
		},
	}
	var found *corev1.Pod
	ours := func(p *corev1.Pod) bool {
		for _, o := range p.OwnerReferences {
			if o.Name == l.id() {
				return true
			}
		}
		return strings.HasPrefix(p.Name, l.id())
	}
	_, err := watchtools.UntilWithSync(ctx, lw, &corev1.Pod{}, func(store cache.Store) (bool, error) {
		for _, o := range store.List() {
			if p := o.(*corev1.Pod); ours(p) && cond(p) {
				found = p
				return true, nil
			}
		}
		return false, nil
	}, func(ev watch.Event) (bool, error) {
		p, ok := ev.Object.(*corev1.Pod)
		if ok && ev.Type != watch.Deleted && ours(p) && cond(p) {
			found = p
			return true, nil
		}
		return false, nil
	})
	if err != nil {
		h.t.Fatalf("waiting for %s: %v", what, err)
	}
	return found
}

// unschedulable reports whether the scheduler has given up on the pod.
func unschedulable(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse && c.Reason == corev1.PodReasonUnschedulable {
			return true
		}
	}
	return false
}

// A pod no node can take, with nothing adding one, fails realize at once
// (the operator's paperclip.io/unschedulable=fail: no grace for an
// autoscaler), naming the workload, the pod, the scheduler's message and
// the fix.
func TestRealizeFailsFastOnAnUnschedulablePod(t *testing.T) {
	t.Parallel()
	h := newHooks(t, "sandbox", map[string]any{"nodeSelector": map[string]any{"paperclip-k8s.test/pool": "none-" + randHex(4)}},
		workerOpts{env: []string{`PAPERCLIP_K8S_POD_ANNOTATIONS={"paperclip.io/unschedulable": "fail"}`}})
	l := h.acquire(nil)
	_, rerr := h.realize(l)
	wantErr(t, rerr, "Sandbox "+h.namespace()+"/"+l.id()+" cannot be used", "Pod "+h.namespace()+"/", "is Failed/Unschedulable: ",
		"didn't match Pod's node affinity/selector", "check nodeSelector, runtimeClassName and defaultResources", "paperclip.io/unschedulable=wait")
}

// With no word from a node autoscaler, an Unschedulable pod fails realize
// once the autoscalers' grace (15 s from the scheduler's verdict, its
// condition's lastTransitionTime) is over, without any change to the pod.
func TestRealizeFailsAnUnschedulablePodWhenNoAutoscalerAnswers(t *testing.T) {
	t.Parallel()
	h := newHooks(t, "sandbox", map[string]any{"nodeSelector": map[string]any{"paperclip-k8s.test/pool": "none-" + randHex(4)}, "timeoutMs": 60000})
	l := h.acquire(nil)
	pod := h.untilPod(l, "the scheduler to give up on the pod", unschedulable)
	_, rerr := h.realize(l)
	wantErr(t, rerr, "Sandbox "+h.namespace()+"/"+l.id()+" cannot be used", "Pod "+h.namespace()+"/"+pod.Name+" is Failed/Unschedulable: ",
		"didn't match Pod's node affinity/selector", "nothing is adding one")
}

// A node autoscaler that says it cannot add a node for the pod
// (cluster-autoscaler NotTriggerScaleUp) fails realize at once, without
// the autoscalers' grace, with the scheduler's and the autoscaler's
// messages and the fix.
func TestRealizeFailsAtOnceWhenTheAutoscalerCannotHelp(t *testing.T) {
	t.Parallel()
	h := newHooks(t, "sandbox", map[string]any{"nodeSelector": map[string]any{"paperclip-k8s.test/pool": "none-" + randHex(4)}, "timeoutMs": 60000})
	l := h.acquire(nil)
	pod := h.untilPod(l, "the scheduler to give up on the pod", unschedulable)
	h.autoscalerSays(pod, "NotTriggerScaleUp", "pod didn't trigger scale-up: 2 node(s) didn't match Pod's node affinity/selector")
	start := time.Now()
	_, rerr := h.realize(l)
	wantErr(t, rerr, "Pod "+h.namespace()+"/"+pod.Name+" is Failed/Unschedulable: ", "didn't match Pod's node affinity/selector",
		"cluster-autoscaler NotTriggerScaleUp: pod didn't trigger scale-up: 2 node(s)", "cannot add a node that fits the pod")
	// Without the autoscaler's word it would fail only after the grace,
	// and say "nothing is adding one" (the figure is logged, not asserted).
	t.Logf("realize failed after %s", time.Since(start).Round(time.Millisecond))
}

// autoscalerSays records a cluster-autoscaler event about the pod, as the
// autoscaler does.
func (h *hooks) autoscalerSays(pod *corev1.Pod, reason, message string) {
	h.t.Helper()
	_, err := h.kube().CoreV1().Events(pod.Namespace).Create(context.Background(), &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{Name: pod.Name + "." + strings.ToLower(reason), Namespace: pod.Namespace},
		InvolvedObject: corev1.ObjectReference{Kind: "Pod", APIVersion: "v1", Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID},
		Reason:         reason, Type: corev1.EventTypeNormal, Message: message,
		Source:        corev1.EventSource{Component: "cluster-autoscaler"},
		LastTimestamp: metav1.Now(), FirstTimestamp: metav1.Now(), Count: 1,
	}, metav1.CreateOptions{})
	if err != nil {
		h.t.Fatal(err)
	}
}

// A pod no node can take waits while a node autoscaler says it is adding
// one (its TriggeredScaleUp event about the pod), even where nothing else
// would be waited for; once the node is there the run goes on.
func TestRealizeWaitsWhileANodeAutoscalerScalesUp(t *testing.T) {
	t.Parallel()
	is := is.New(t)
	ctx := context.Background()
	pool := "pool-" + randHex(4)
	h := newHooks(t, "sandbox", map[string]any{"nodeSelector": map[string]any{"paperclip-k8s.test/" + pool: "yes"}},
		workerOpts{env: []string{`PAPERCLIP_K8S_POD_ANNOTATIONS={"paperclip.io/unschedulable": "fail"}`}})
	l := h.acquire(nil)
	pod := h.untilPod(l, "the scheduler to give up on the pod", unschedulable)
	h.autoscalerSays(pod, "TriggeredScaleUp", "pod triggered scale-up: [{"+pool+" 0->1 (max: 3)}]")

	// The first command waits for the pod as long as it may, and says why.
	r := h.exec(l, "true", map[string]any{"timeoutMs": 1500})
	is.True(r.TimedOut)
	for _, want := range []string{"Pending/ScaleUp: ", "didn't match Pod's node affinity/selector", "cluster-autoscaler TriggeredScaleUp: pod triggered scale-up", "a node autoscaler is adding a node"} {
		if !strings.Contains(r.Stderr, want) {
			t.Errorf("stderr %q does not contain %q", r.Stderr, want)
		}
	}

	// The node comes: realize returns on the Ready pod.
	patch := func(v any) {
		b, err := json.Marshal(map[string]any{"metadata": map[string]any{"labels": map[string]any{"paperclip-k8s.test/" + pool: v}}})
		is.NoErr(err)
		_, err = h.kube().CoreV1().Nodes().Patch(ctx, devcluster.NodeName, types.MergePatchType, b, metav1.PatchOptions{})
		is.NoErr(err)
	}
	t.Cleanup(func() { patch(nil) })
	patch("yes")
	meta, rerr := h.realize(l)
	if rerr != nil {
		t.Fatalf("realize: %v", rerr)
	}
	is.Equal(meta["podName"], pod.Name)
	is.Equal(h.exec(l, "echo up", nil).Stdout, "up\n")
}

// The Job controller reports a used-up quota only as a FailedCreate event
// on the Job: the run fails at once with the controller's message and the
// fix, instead of waiting for its deadline.
func TestJobRunFailsFastWhenTheQuotaIsUsedUp(t *testing.T) {
	t.Parallel()
	is := is.New(t)
	h := newHooks(t, "job", map[string]any{"resourceQuota": map[string]any{"pods": "1"}},
		workerOpts{env: []string{`PAPERCLIP_K8S_POD_ANNOTATIONS={"` + devcluster.CompleteDelayAnnotation + `": "1h"}`}})
	first := h.acquire(nil)
	h.waitPod(first, "") // running, and counted by the quota
	second := h.acquire(nil)
	r := h.exec(second, "true", nil)
	is.Equal(r.code(), 1)
	is.True(!r.TimedOut)
	for _, want := range []string{"Job " + h.namespace() + "/" + second.id(), "Failed/QuotaExceeded: ", "exceeded quota: paperclip-quota", "resourceQuota in the environment config"} {
		if !strings.Contains(r.Stderr, want) {
			t.Errorf("stderr %q does not contain %q", r.Stderr, want)
		}
	}
}
