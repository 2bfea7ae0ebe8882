package devcluster_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/paperclip-k8s/paperclip-k8s/internal/devcluster"
	"github.com/paperclip-k8s/paperclip-k8s/internal/testutil"
)

// podWatch follows one pod from before it is created, so a test sees every
// state it goes through, in order.
type podWatch struct {
	t    *testing.T
	ctx  context.Context
	w    watch.Interface
	last *corev1.Pod
	seen []string // a short trace for failure messages
}

func watchPod(t *testing.T, ctx context.Context, ns, name string) *podWatch {
	t.Helper()
	w, err := testutil.WatchKube(t, cluster.RESTConfig()).CoreV1().Pods(ns).Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + name})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Stop)
	return &podWatch{t: t, ctx: ctx, w: w}
}

// next returns the first state from now on for which cond holds (a deleted
// pod is passed as nil, after its last state).
func (p *podWatch) next(what string, cond func(*corev1.Pod, watch.EventType) bool) *corev1.Pod {
	p.t.Helper()
	for {
		select {
		case ev, ok := <-p.w.ResultChan():
			if !ok {
				p.t.Fatalf("watch ended waiting for %s; seen: %v", what, p.seen)
			}
			pod, _ := ev.Object.(*corev1.Pod)
			if pod == nil {
				continue
			}
			p.last = pod
			p.seen = append(p.seen, string(ev.Type)+":"+describePod(pod))
			if ev.Type == watch.Deleted {
				if cond(nil, ev.Type) {
					return nil
				}
				continue
			}
			if cond(pod, ev.Type) {
				return pod
			}
		case <-p.ctx.Done():
			p.t.Fatalf("waiting for %s: %v; seen: %v", what, p.ctx.Err(), p.seen)
		}
	}
}

func describePod(p *corev1.Pod) string {
	s := string(p.Status.Phase)
	for _, cs := range p.Status.ContainerStatuses {
		if w := cs.State.Waiting; w != nil {
			s += "/" + w.Reason
		}
		if cs.State.Running != nil {
			s += "/running"
		}
	}
	if p.DeletionTimestamp != nil {
		s += "/terminating"
	}
	return s
}

func waitingReason(p *corev1.Pod) string {
	if p == nil || len(p.Status.ContainerStatuses) == 0 || p.Status.ContainerStatuses[0].State.Waiting == nil {
		return ""
	}
	return p.Status.ContainerStatuses[0].State.Waiting.Reason
}

func podCondition(p *corev1.Pod, t corev1.PodConditionType) corev1.PodCondition {
	for _, c := range p.Status.Conditions {
		if c.Type == t {
			return c
		}
	}
	return corev1.PodCondition{}
}

// stuckPod is a pod as the agent pod template makes it: one container
// "agent" taking its environment from a Secret.
func stuckPod(name, image string, annotations map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: annotations},
		Spec: corev1.PodSpec{
			Containers: []corev1.Container{{
				Name: "agent", Image: image, Command: []string{"sleep", "infinity"},
				EnvFrom: []corev1.EnvFromSource{{SecretRef: &corev1.SecretEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: name + "-env"}}}},
			}},
		},
	}
}

// The kubelet's view of a pod whose containers are not running yet: what
// every stuck state shares.
func assertNotReadyYet(is *is.I, p *corev1.Pod) {
	is.Helper()
	is.Equal(p.Status.Phase, corev1.PodPending)
	is.Equal(p.Spec.NodeName, devcluster.NodeName)
	for _, typ := range []corev1.PodConditionType{corev1.PodReady, corev1.ContainersReady} {
		c := podCondition(p, typ)
		is.Equal(c.Status, corev1.ConditionFalse)
		is.Equal(c.Reason, "ContainersNotReady")
		is.Equal(c.Message, "containers with unready status: [agent]")
	}
	is.Equal(podCondition(p, corev1.PodInitialized).Status, corev1.ConditionTrue)
	is.Equal(podCondition(p, corev1.PodReadyToStartContainers).Status, corev1.ConditionTrue)
	is.Equal(podCondition(p, corev1.PodScheduled).Status, corev1.ConditionTrue)
	is.Equal(len(p.Status.ContainerStatuses), 1)
	cs := p.Status.ContainerStatuses[0]
	is.Equal(cs.Name, "agent")
	is.Equal(cs.Ready, false)
	is.Equal(*cs.Started, false)
	is.Equal(cs.RestartCount, int32(0))
	is.True(cs.State.Running == nil && cs.State.Terminated == nil)
	is.True(p.Status.StartTime != nil)
	is.True(p.Status.PodIP != "") // the pod sandbox exists: only the container is missing
}

func TestStageReadyAfter(t *testing.T) {
	is := is.New(t)
	ns := devcluster.NewNamespace(t, cluster, nil)
	ctx := ctxT(t, 90*time.Second)
	pw := watchPod(t, ctx, ns, "slow")
	_, err := cluster.Kube().CoreV1().Pods(ns).Create(ctx, stuckPod("slow", "busybox", map[string]string{devcluster.ReadyAfterAnnotation: "2s"}), metav1.CreateOptions{})
	is.NoErr(err)

	p := pw.next("ContainerCreating", func(p *corev1.Pod, _ watch.EventType) bool {
		return waitingReason(p) != "" || p.Status.Phase != corev1.PodPending
	})
	is.Equal(waitingReason(p), "ContainerCreating") // before anything else
	assertNotReadyYet(is, p)
	is.Equal(p.Status.ContainerStatuses[0].State.Waiting.Message, "")
	creating := time.Now()

	p = pw.next("Running", func(p *corev1.Pod, _ watch.EventType) bool { return p.Status.Phase != corev1.PodPending })
	t.Logf("Ready %v after ContainerCreating was seen", time.Since(creating).Round(time.Millisecond))
	is.Equal(p.Status.Phase, corev1.PodRunning)
	ready := podCondition(p, corev1.PodReady)
	is.Equal(ready.Status, corev1.ConditionTrue)
	is.Equal(ready.Reason, "") // the merged condition lost its ContainersNotReady reason
	is.Equal(ready.Message, "")
	is.Equal(podCondition(p, corev1.ContainersReady).Reason, "")
	is.True(p.Status.ContainerStatuses[0].State.Running != nil)
	is.True(p.Status.ContainerStatuses[0].State.Waiting == nil)
	is.True(p.Status.ContainerStatuses[0].Ready)
}

func TestStageImagePullFailure(t *testing.T) {
	is := is.New(t)
	ns := devcluster.NewNamespace(t, cluster, nil)
	ctx := ctxT(t, 90*time.Second)
	const image = "registry.invalid/agents/claude:9.9.9"
	pw := watchPod(t, ctx, ns, "nopull")
	_, err := cluster.Kube().CoreV1().Pods(ns).Create(ctx, stuckPod("nopull", image,
		map[string]string{devcluster.ContainerWaitingAnnotation: devcluster.WaitingErrImagePull}), metav1.CreateOptions{})
	is.NoErr(err)

	pullErr := `rpc error: code = NotFound desc = failed to pull and unpack image "` + image + `": failed to resolve reference "` + image + `": ` + image + `: not found`
	p := pw.next("ErrImagePull", func(p *corev1.Pod, _ watch.EventType) bool { return waitingReason(p) != "" })
	is.Equal(waitingReason(p), "ErrImagePull")
	assertNotReadyYet(is, p)
	is.Equal(p.Status.ContainerStatuses[0].State.Waiting.Message, pullErr)
	is.Equal(p.Status.ContainerStatuses[0].Image, image)

	// The kubelet's back-off, then its retry: the reasons alternate.
	p = pw.next("ImagePullBackOff", func(p *corev1.Pod, _ watch.EventType) bool { return waitingReason(p) != "ErrImagePull" })
	is.Equal(waitingReason(p), "ImagePullBackOff")
	assertNotReadyYet(is, p)
	is.Equal(p.Status.ContainerStatuses[0].State.Waiting.Message, `Back-off pulling image "`+image+`": ErrImagePull: `+pullErr)
	p = pw.next("ErrImagePull again", func(p *corev1.Pod, _ watch.EventType) bool { return waitingReason(p) != "ImagePullBackOff" })
	is.Equal(waitingReason(p), "ErrImagePull")
	is.Equal(p.Status.ContainerStatuses[0].State.Waiting.Message, pullErr)
	is.Equal(p.Status.ContainerStatuses[0].RestartCount, int32(0))
}

func TestStageInvalidImageName(t *testing.T) {
	is := is.New(t)
	ns := devcluster.NewNamespace(t, cluster, nil)
	ctx := ctxT(t, 60*time.Second)
	// imageRegistry given as a URL: the kubelet cannot parse the reference.
	const image = "https://registry.example.com/agents/claude:1.2.0"
	pw := watchPod(t, ctx, ns, "badref")
	_, err := cluster.Kube().CoreV1().Pods(ns).Create(ctx, stuckPod("badref", image,
		map[string]string{devcluster.ContainerWaitingAnnotation: devcluster.WaitingInvalidImageName}), metav1.CreateOptions{})
	is.NoErr(err)
	p := pw.next("InvalidImageName", func(p *corev1.Pod, _ watch.EventType) bool { return waitingReason(p) != "" })
	is.Equal(waitingReason(p), "InvalidImageName")
	assertNotReadyYet(is, p)
	is.Equal(p.Status.ContainerStatuses[0].State.Waiting.Message,
		`Failed to apply default image tag "`+image+`": couldn't parse image name "`+image+`": invalid reference format`)
}

func TestStageCreateContainerConfigError(t *testing.T) {
	is := is.New(t)
	ns := devcluster.NewNamespace(t, cluster, nil)
	ctx := ctxT(t, 60*time.Second)
	pw := watchPod(t, ctx, ns, "nosecret")
	_, err := cluster.Kube().CoreV1().Pods(ns).Create(ctx, stuckPod("nosecret", "busybox",
		map[string]string{devcluster.ContainerWaitingAnnotation: devcluster.WaitingCreateContainerConfigError}), metav1.CreateOptions{})
	is.NoErr(err)
	p := pw.next("CreateContainerConfigError", func(p *corev1.Pod, _ watch.EventType) bool { return waitingReason(p) != "" })
	is.Equal(waitingReason(p), "CreateContainerConfigError")
	assertNotReadyYet(is, p)
	is.Equal(p.Status.ContainerStatuses[0].State.Waiting.Message, `secret "nosecret-env" not found`)

	// Another message, e.g. the kubelet's for a missing key.
	const msg = "couldn't find key TOKEN in Secret x/nosecret-env"
	pw = watchPod(t, ctx, ns, "nokey")
	_, err = cluster.Kube().CoreV1().Pods(ns).Create(ctx, stuckPod("nokey", "busybox", map[string]string{
		devcluster.ContainerWaitingAnnotation:        devcluster.WaitingCreateContainerConfigError,
		devcluster.ContainerWaitingMessageAnnotation: msg,
	}), metav1.CreateOptions{})
	is.NoErr(err)
	p = pw.next("CreateContainerConfigError", func(p *corev1.Pod, _ watch.EventType) bool { return waitingReason(p) != "" })
	is.Equal(waitingReason(p), "CreateContainerConfigError")
	is.Equal(p.Status.ContainerStatuses[0].State.Waiting.Message, msg)
}

// Unschedulable needs no stage: the real scheduler reports a nodeSelector
// that no node matches.
func TestUnschedulableNodeSelector(t *testing.T) {
	is := is.New(t)
	ns := devcluster.NewNamespace(t, cluster, nil)
	ctx := ctxT(t, 60*time.Second)
	kube := cluster.Kube()
	ew, err := testutil.WatchKube(t, cluster.RESTConfig()).CoreV1().Events(ns).Watch(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=nowhere"})
	is.NoErr(err)
	defer ew.Stop()
	pw := watchPod(t, ctx, ns, "nowhere")
	pod := stuckPod("nowhere", "busybox", nil)
	pod.Spec.NodeSelector = map[string]string{"paperclip-k8s.test/no-such-node": "true"}
	_, err = kube.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
	is.NoErr(err)

	p := pw.next("PodScheduled", func(p *corev1.Pod, _ watch.EventType) bool { return podCondition(p, corev1.PodScheduled).Status != "" })
	c := podCondition(p, corev1.PodScheduled)
	t.Logf("PodScheduled: %s/%s %q", c.Status, c.Reason, c.Message)
	is.Equal(c.Status, corev1.ConditionFalse)
	is.Equal(c.Reason, corev1.PodReasonUnschedulable)
	is.True(strings.HasPrefix(c.Message, "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."))
	is.Equal(p.Status.Phase, corev1.PodPending)
	is.Equal(p.Spec.NodeName, "")
	is.Equal(len(p.Status.ContainerStatuses), 0) // no kubelet ever saw it

	for {
		select {
		case ev := <-ew.ResultChan():
			e, ok := ev.Object.(*corev1.Event)
			if !ok || e.Reason != "FailedScheduling" {
				continue
			}
			is.Equal(e.Type, corev1.EventTypeWarning)
			is.Equal(e.Message, c.Message)
			return
		case <-ctx.Done():
			t.Fatalf("no FailedScheduling event: %v", ctx.Err())
		}
	}
}

func TestStageTerminatingFor(t *testing.T) {
	is := is.New(t)
	ns := devcluster.NewNamespace(t, cluster, nil)
	ctx := ctxT(t, 60*time.Second)
	pods := cluster.Kube().CoreV1().Pods(ns)

	// A Go duration: Terminating until the test ends the wait.
	pw := watchPod(t, ctx, ns, "lingers")
	_, err := pods.Create(ctx, stuckPod("lingers", "busybox", map[string]string{devcluster.TerminatingForAnnotation: "1h"}), metav1.CreateOptions{})
	is.NoErr(err)
	running := pw.next("Running", func(p *corev1.Pod, _ watch.EventType) bool { return p.Status.Phase == corev1.PodRunning })
	is.NoErr(pods.Delete(ctx, "lingers", metav1.DeleteOptions{}))
	p := pw.next("Terminating", func(p *corev1.Pod, _ watch.EventType) bool { return p == nil || p.DeletionTimestamp != nil })
	is.True(p != nil) // Terminating before it is gone
	is.Equal(p.UID, running.UID)
	is.Equal(*p.DeletionGracePeriodSeconds, int64(30))
	is.Equal(p.Status.Phase, corev1.PodRunning) // status untouched meanwhile
	is.Equal(podCondition(p, corev1.PodReady).Status, corev1.ConditionTrue)
	// Still there when the test ends the wait (the patch needs the pod).
	_, err = pods.Patch(ctx, "lingers", types.MergePatchType,
		[]byte(`{"metadata":{"annotations":{"`+devcluster.TerminatingForAnnotation+`":"0s"}}}`), metav1.PatchOptions{})
	is.NoErr(err)
	pw.next("deleted", func(p *corev1.Pod, ev watch.EventType) bool { return ev == watch.Deleted })

	// "grace": gone at the deletionTimestamp, i.e. after the grace period.
	pw = watchPod(t, ctx, ns, "graceful")
	_, err = pods.Create(ctx, stuckPod("graceful", "busybox", map[string]string{devcluster.TerminatingForAnnotation: "grace"}), metav1.CreateOptions{})
	is.NoErr(err)
	pw.next("Running", func(p *corev1.Pod, _ watch.EventType) bool { return p.Status.Phase == corev1.PodRunning })
	is.NoErr(pods.Delete(ctx, "graceful", metav1.DeleteOptions{GracePeriodSeconds: new(int64(3))}))
	p = pw.next("Terminating", func(p *corev1.Pod, _ watch.EventType) bool { return p == nil || p.DeletionTimestamp != nil })
	is.True(p != nil)
	deadline := p.DeletionTimestamp.Time
	pw.next("deleted", func(p *corev1.Pod, ev watch.EventType) bool { return ev == watch.Deleted })
	// Not before the deletionTimestamp (which has one-second resolution).
	is.True(!time.Now().Before(deadline.Add(-time.Second)))
}
