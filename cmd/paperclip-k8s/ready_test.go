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
