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
	k8stesting "k8s.io/client-go/testing"

	"github.com/paperclip-k8s/paperclip-k8s/engine"
	"github.com/paperclip-k8s/paperclip-k8s/engine/enginetest"
	"github.com/paperclip-k8s/paperclip-k8s/engine/resource"
)

// jobPod creates a pod of the Job w as the Job controller makes it (its
// controller-uid label, controlled by w) named w's name + suffix, with
// status; the test fails on an error.
func (f *fixture) jobPod(t *testing.T, w *unstructured.Unstructured, suffix string, status map[string]any) *unstructured.Unstructured {
	t.Helper()
	p := podOf(w, status)
	p.SetName(w.GetName() + suffix)
	p.SetLabels(map[string]string{"batch.kubernetes.io/controller-uid": string(w.GetUID())})
	got, err := f.dyn.Resource(gvrPod).Namespace(w.GetNamespace()).Create(context.Background(), p, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating pod %s: %v", p.GetName(), err)
	}
	return got
}

// waiting is a pod status whose agent container waits with reason.
func waiting(reason, message string) map[string]any {
	return map[string]any{"phase": "Pending", "containerStatuses": []any{
		map[string]any{"name": "agent", "state": map[string]any{"waiting": map[string]any{"reason": reason, "message": message}}},
	}}
}

// The Job says nothing of a pod that cannot pull its image (it stays
// active until its deadline): the wait for the Job (job.yaml's
// pods.failFast) reads the pod and ends when the kubelet gives up on the
// image, with a *TerminalError naming the pod, the reason, the kubelet's
// message and the fix; the status returned names the pod too.
func TestWaitFailsAJobFastOnAPodThatCannotPullItsImage(t *testing.T) {
	is := is.New(t)
	f := newFixture(t, "standard-job")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	job, w := f.workload(t, "job")
	done := f.waitAsync(ctx, job, w, 2, resource.Succeeded, resource.Failed) // the Job and the pods
	pod := f.jobPod(t, w, "-x7k2q", waiting("ContainerCreating", ""))
	f.setPodStatus(t, pod, waiting("ImagePullBackOff", `Back-off pulling image "x.invalid/agent:1": ErrImagePull: not found`))
	r := <-done
	te := terminalSays(t, r.err, "Pod ns1/"+pod.GetName(), "Failed/ImagePullBackOff", `Back-off pulling image "x.invalid/agent:1"`, "imagePullSecrets")
	is.Equal(te.Ref.Name, pod.GetName())
	is.Equal(r.st.State, resource.Failed)
	is.Equal(r.st.Reason, "ImagePullBackOff")
	is.True(strings.HasPrefix(r.st.Message, "Pod ns1/"+pod.GetName()+": Back-off pulling image"))
	is.True(ctx.Err() == nil)
}

// A pod that ran and failed is the Job's to replace (backoffLimit): it
// does not end the wait, and a replacement that cannot pull its image
// does, whichever of the two FindPod prefers.
func TestWaitOnAJobPassesAFailedPodAndFailsOnItsReplacement(t *testing.T) {
	is := is.New(t)
	f := newFixture(t, "standard-job")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	job, w := f.workload(t, "job")
	ran := f.jobPod(t, w, "-aaaaa", map[string]any{"phase": "Failed", "reason": "Error"})
	done := f.waitAsync(ctx, job, w, 2, resource.Succeeded, resource.Failed)
	next := f.jobPod(t, w, "-bbbbb", waiting("ContainerCreating", ""))
	f.setPodStatus(t, next, waiting("ImagePullBackOff", `Back-off pulling image "x.invalid/agent:1"`))
	te := terminalSays(t, (<-done).err, "Pod ns1/"+next.GetName(), "Failed/ImagePullBackOff")
	is.True(te.Ref.Name != ran.GetName())
}

// A failed pod the Job will not replace ends the wait through the Job's
// own Failed condition (the error names the Job), not through the pod.
func TestWaitOnAJobEndsOnTheJobsFailureNotItsPods(t *testing.T) {
	is := is.New(t)
	f := newFixture(t, "standard-job")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	job, w := f.workload(t, "job")
	f.jobPod(t, w, "-aaaaa", map[string]any{"phase": "Failed", "reason": "Error"})
	done := f.waitAsync(ctx, job, w, 2, resource.Succeeded)
	enginetest.SetStatus(t, f.e, w, job, map[string]any{"failed": int64(1), "conditions": []any{
		map[string]any{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"},
	}})
	r := <-done
	te := terminalSays(t, r.err, "Job ns1/"+w.GetName(), "BackoffLimitExceeded")
	is.Equal(te.Ref.Name, w.GetName())
	is.Equal(r.st.State, resource.Failed)
}

// A pod no node can take, with nothing adding one, ends the wait for its
// Job once the autoscalers' grace is over (pod.yaml's after:), without
// any change to the pod: the Job wait evaluates the pod's rules again
// when they come due, and reads the pod's events.
func TestWaitFailsAJobWhosePodNoNodeCanTake(t *testing.T) {
	is := is.New(t)
	f := newFixture(t, "standard-job")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	job, w := f.workload(t, "job")
	pod := f.jobPod(t, w, "-x7k2q", unschedulableSince(time.Now().Add(-14*time.Second)))
	_, st, err := f.e.Wait(ctx, job, w, resource.Succeeded, resource.Failed)
	terminalSays(t, err, "Pod ns1/"+pod.GetName(), "Failed/Unschedulable", "didn't match Pod's node affinity/selector", "nothing is adding one")
	is.Equal(st.Reason, "Unschedulable")
	is.True(ctx.Err() == nil)
}

// firstPodList reports the first list of pods by label selector
// (FindPod's for a Job; the wait's own pod source lists without one).
func firstPodList(dyn reactorChain) <-chan struct{} {
	return firstAction(dyn, "list", "pods", func(a k8stesting.Action) bool {
		l, ok := a.(k8stesting.ListAction)
		return ok && !l.GetListRestrictions().Labels.Empty()
	})
}

// When the context ends while the Job waits for a pod that is not Ready,
// the *WaitError's last status is the pod's (the scheduler's message and
// the fix), naming the pod, rather than the Job's "waiting for its pod".
func TestWaitOnAJobTimeoutSaysWhatItsPodWaitsFor(t *testing.T) {
	is := is.New(t)
	f := newFixture(t, "standard-job")
	job, w := f.workload(t, "job")
	pod := f.jobPod(t, w, "-x7k2q", unschedulableSince(time.Now())) // within the autoscalers' grace
	ctx, cancel := context.WithCancel(context.Background())
	listed := firstPodList(f.dyn)
	done := f.waitAsync(ctx, job, w, 0, resource.Succeeded, resource.Failed)
	<-listed
	cancel()
	err := (<-done).err
	var we *engine.WaitError
	is.True(errors.As(err, &we))
	is.Equal(we.Last.Reason, "Unschedulable")
	for _, want := range []string{"Pod ns1/" + pod.GetName() + ": 0/1 nodes are available", "check nodeSelector"} {
		is.True(strings.Contains(err.Error(), want))
	}
}

// A backend without pods.failFast is waited for on its own status only: a
// pod that will not start does not end the wait (AwaitPod is the one that
// reads it).
func TestWaitWithoutFailFastLooksAtNoPod(t *testing.T) {
	is := is.New(t)
	f := newFixture(t, "cilium-sandbox")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sb, w := f.workload(t, "sandbox")
	is.True(sb.Pods.FailFast == nil)
	f.addPod(t, w, waiting("ImagePullBackOff", "x"))
	done := f.waitAsync(ctx, sb, w, 1, resource.Ready)
	enginetest.SetStatus(t, f.e, w, sb, map[string]any{"conditions": []any{readyCond("Ready")}})
	r := <-done
	is.NoErr(r.err)
	is.Equal(r.st.State, resource.Ready)
}
