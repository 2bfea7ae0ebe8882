package sandboxctl_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/matryer/is"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"

	"github.com/paperclip-k8s/paperclip-k8s/internal/devcluster"
	"github.com/paperclip-k8s/paperclip-k8s/internal/sandboxctl"
	"github.com/paperclip-k8s/paperclip-k8s/internal/testutil"
)

// What the Sandbox said at one watch event: the parts the vanished-pod
// sequence is about.
type sbState struct {
	Annotated bool
	Ready     string // status/reason
	PodIP     string
}

func stateOf(u *unstructured.Unstructured) sbState {
	c := condition(u, "Ready")
	ips, _, _ := unstructured.NestedStringSlice(u.Object, "status", "podIPs")
	st := sbState{Ready: c.Status + "/" + c.Reason}
	_, st.Annotated = u.GetAnnotations()[sandboxctl.PodNameAnnotation]
	if len(ips) > 0 {
		st.PodIP = ips[0]
	}
	return st
}

// sbTrace records the distinct successive states of a Sandbox from now on.
type sbTrace struct {
	w      watch.Interface
	states []sbState
}

func traceSandbox(t *testing.T, ctx context.Context, ns, name string) *sbTrace {
	t.Helper()
	cur, err := cluster.Dynamic().Resource(sandboxctl.GVR).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := cluster.RESTConfig()
	cfg.Timeout = 0 // the admin client's 30 s would cut the watch off
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	w, err := dyn.Resource(sandboxctl.GVR).Namespace(ns).Watch(ctx, metav1.ListOptions{
		FieldSelector: "metadata.name=" + name, ResourceVersion: cur.GetResourceVersion(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Stop)
	return &sbTrace{w: w, states: []sbState{stateOf(cur)}}
}

// until reads events until f holds for the latest state.
func (tr *sbTrace) until(t *testing.T, ctx context.Context, what string, f func(sbState) bool) {
	t.Helper()
	for !f(tr.states[len(tr.states)-1]) {
		select {
		case ev, ok := <-tr.w.ResultChan():
			if !ok {
				t.Fatalf("Sandbox watch ended waiting for %s; states: %+v", what, tr.states)
			}
			u, ok := ev.Object.(*unstructured.Unstructured)
			if !ok {
				continue
			}
			if st := stateOf(u); st != tr.states[len(tr.states)-1] {
				tr.states = append(tr.states, st)
			}
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v; states: %+v", what, ctx.Err(), tr.states)
		}
	}
}

func wait(t *testing.T, ctx context.Context, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-ctx.Done():
		t.Fatalf("waiting for %s: %v", what, ctx.Err())
	}
}

func patchTemplateAnnotation(t *testing.T, ctx context.Context, ns, name, key, value string) {
	t.Helper()
	_, err := cluster.Dynamic().Resource(sandboxctl.GVR).Namespace(ns).Patch(ctx, name, types.MergePatchType,
		fmt.Appendf(nil, `{"spec":{"podTemplate":{"metadata":{"annotations":{%q:%q}}}}}`, key, value), metav1.PatchOptions{})
	if err != nil {
		t.Fatal(err)
	}
}

// The real controller's vanished-pod sequence: the pod-name annotation is
// cleared while Ready=True stays, with no pod at all; then the replacement
// pod, the annotation again, Ready=False (Pending), Ready=True.
func TestVanishedPodKeepsStaleReady(t *testing.T) {
	is := is.New(t)
	ns := devcluster.NewNamespace(t, cluster, nil)
	ctx := ctxT(t, 60*time.Second)
	sbs := cluster.Dynamic().Resource(sandboxctl.GVR).Namespace(ns)
	_, err := sbs.Create(ctx, newSandbox("sb-vanish", nil, nil), metav1.CreateOptions{})
	is.NoErr(err)
	waitSandbox(t, ctx, ns, "sb-vanish", readyIs("True", "DependenciesReady"))
	old, err := cluster.Kube().CoreV1().Pods(ns).Get(ctx, "sb-vanish", metav1.GetOptions{})
	is.NoErr(err)

	hold := cluster.SandboxController().Hold(ns, "sb-vanish", sandboxctl.PodGone)
	t.Cleanup(hold.Release)
	tr := traceSandbox(t, ctx, ns, "sb-vanish")
	is.NoErr(cluster.Kube().CoreV1().Pods(ns).Delete(ctx, "sb-vanish", metav1.DeleteOptions{}))
	wait(t, ctx, hold.Reached(), "the controller to clear the annotation")

	// Inside the window: no pod, no annotation, and still Ready=True about
	// the pod that is gone.
	_, err = cluster.Kube().CoreV1().Pods(ns).Get(ctx, "sb-vanish", metav1.GetOptions{})
	is.True(apierrors.IsNotFound(err))
	got, err := sbs.Get(ctx, "sb-vanish", metav1.GetOptions{})
	is.NoErr(err)
	_, annotated := got.GetAnnotations()[sandboxctl.PodNameAnnotation]
	is.True(!annotated)
	is.Equal(condition(got, "Ready").Status, "True")
	is.Equal(condition(got, "Ready").Reason, "DependenciesReady")
	ips, _, _ := unstructured.NestedStringSlice(got.Object, "status", "podIPs")
	is.Equal(ips, []string{old.Status.PodIP})

	hold.Release()
	pod, err := devcluster.WaitPod(ctx, cluster.Kube(), ns, "sb-vanish", func(p *corev1.Pod) bool {
		return p != nil && p.UID != old.UID && p.Status.Phase == corev1.PodRunning && p.Status.PodIP != ""
	})
	is.NoErr(err)
	tr.until(t, ctx, "Ready=False about the new pod", func(s sbState) bool { return s.Ready == "False/DependenciesNotReady" })
	tr.until(t, ctx, "Ready=True about the new pod", func(s sbState) bool {
		return s.Ready == "True/DependenciesReady" && s.PodIP == pod.Status.PodIP
	})
	oldIP := old.Status.PodIP
	want := []sbState{
		{Annotated: true, Ready: "True/DependenciesReady", PodIP: oldIP},
		{Annotated: false, Ready: "True/DependenciesReady", PodIP: oldIP}, // the stale window
		{Annotated: true, Ready: "True/DependenciesReady", PodIP: oldIP},  // the replacement exists
		{Annotated: true, Ready: "False/DependenciesNotReady"},            // about the new, Pending pod
		{Annotated: true, Ready: "True/DependenciesReady", PodIP: pod.Status.PodIP},
	}
	// (kwok may give the new pod the old pod's IP: the states still differ
	// by their position around Ready=False.)
	is.Equal(tr.states, want)
}

// Held after the replacement is created: the Sandbox still says Ready=True
// (about the old pod) while its only pod is a new, Pending one.
func TestReplacementPendingWhileStaleReady(t *testing.T) {
	is := is.New(t)
	ns := devcluster.NewNamespace(t, cluster, nil)
	ctx := ctxT(t, 60*time.Second)
	sbs := cluster.Dynamic().Resource(sandboxctl.GVR).Namespace(ns)
	_, err := sbs.Create(ctx, newSandbox("sb-pending", nil, nil), metav1.CreateOptions{})
	is.NoErr(err)
	waitSandbox(t, ctx, ns, "sb-pending", readyIs("True", "DependenciesReady"))
	old, err := cluster.Kube().CoreV1().Pods(ns).Get(ctx, "sb-pending", metav1.GetOptions{})
	is.NoErr(err)
	// From now on new pods stay ContainerCreating (the running one is not
	// affected: the annotation only delays a Pending pod).
	patchTemplateAnnotation(t, ctx, ns, "sb-pending", devcluster.ReadyAfterAnnotation, "1h")
	_, err = devcluster.WaitPod(ctx, cluster.Kube(), ns, "sb-pending", func(p *corev1.Pod) bool {
		return p != nil && p.Annotations[devcluster.ReadyAfterAnnotation] == "1h"
	})
	is.NoErr(err)

	hold := cluster.SandboxController().Hold(ns, "sb-pending", sandboxctl.NewPod)
	t.Cleanup(hold.Release)
	is.NoErr(cluster.Kube().CoreV1().Pods(ns).Delete(ctx, "sb-pending", metav1.DeleteOptions{}))
	wait(t, ctx, hold.Reached(), "the controller to create the replacement")

	pod, err := devcluster.WaitPod(ctx, cluster.Kube(), ns, "sb-pending", func(p *corev1.Pod) bool {
		return p != nil && len(p.Status.ContainerStatuses) > 0
	})
	is.NoErr(err)
	is.True(pod.UID != old.UID)
	is.Equal(pod.Status.Phase, corev1.PodPending)
	is.Equal(pod.Status.ContainerStatuses[0].State.Waiting.Reason, "ContainerCreating")
	got, err := sbs.Get(ctx, "sb-pending", metav1.GetOptions{})
	is.NoErr(err)
	is.Equal(got.GetAnnotations()[sandboxctl.PodNameAnnotation], "sb-pending")
	is.Equal(condition(got, "Ready").Status, "True") // stale: about the old pod
	ips, _, _ := unstructured.NestedStringSlice(got.Object, "status", "podIPs")
	is.Equal(ips, []string{old.Status.PodIP})

	hold.Release()
	got = waitSandbox(t, ctx, ns, "sb-pending", readyIs("False", "DependenciesNotReady"))
	is.Equal(condition(got, "Ready").Message, "Pod exists with phase: Pending")
	// Let it start: the template change reaches the pending pod.
	patchTemplateAnnotation(t, ctx, ns, "sb-pending", devcluster.ReadyAfterAnnotation, "0s")
	got = waitSandbox(t, ctx, ns, "sb-pending", func(u *unstructured.Unstructured) bool {
		c := condition(u, "Ready")
		return c.Status == "True" && c.ObservedGeneration == 3 // after both template patches
	})
	pod, err = cluster.Kube().CoreV1().Pods(ns).Get(ctx, "sb-pending", metav1.GetOptions{})
	is.NoErr(err)
	ips, _, _ = unstructured.NestedStringSlice(got.Object, "status", "podIPs")
	is.Equal(ips, []string{pod.Status.PodIP})
	is.Equal(pod.Status.Phase, corev1.PodRunning)
}

// A pod that stays Terminating (as with a real kubelet's grace period): the
// Sandbox keeps reporting it, Ready=True and annotated, and the replacement
// comes only once it is gone.
func TestTerminatingPodKeepsSandboxReady(t *testing.T) {
	is := is.New(t)
	ns := devcluster.NewNamespace(t, cluster, nil)
	ctx := ctxT(t, 60*time.Second)
	kube := cluster.Kube()
	sbs := cluster.Dynamic().Resource(sandboxctl.GVR).Namespace(ns)
	_, err := sbs.Create(ctx, newSandbox("sb-grace", nil, map[string]any{devcluster.TerminatingForAnnotation: "1h"}), metav1.CreateOptions{})
	is.NoErr(err)
	t.Cleanup(func() {
		// Let the pods go with the namespace.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = sbs.Delete(ctx, "sb-grace", metav1.DeleteOptions{})
		_, _ = kube.CoreV1().Pods(ns).Patch(ctx, "sb-grace", types.MergePatchType,
			[]byte(`{"metadata":{"annotations":{"`+devcluster.TerminatingForAnnotation+`":"0s"}}}`), metav1.PatchOptions{})
	})
	waitSandbox(t, ctx, ns, "sb-grace", readyIs("True", "DependenciesReady"))
	old, err := kube.CoreV1().Pods(ns).Get(ctx, "sb-grace", metav1.GetOptions{})
	is.NoErr(err)

	pw, err := testutil.WatchKube(t, cluster.RESTConfig()).CoreV1().Pods(ns).Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=sb-grace", ResourceVersion: old.ResourceVersion})
	is.NoErr(err)
	defer pw.Stop()
	is.NoErr(kube.CoreV1().Pods(ns).Delete(ctx, "sb-grace", metav1.DeleteOptions{}))
	_, err = devcluster.WaitPod(ctx, kube, ns, "sb-grace", func(p *corev1.Pod) bool { return p != nil && p.DeletionTimestamp != nil })
	is.NoErr(err)

	// A spec change makes the controller write a status about the pod as it
	// is now: still Ready, still annotated, no replacement.
	_, err = sbs.Patch(ctx, "sb-grace", types.MergePatchType, []byte(`{"spec":{"podTemplate":{"metadata":{"labels":{"poke":"1"}}}}}`), metav1.PatchOptions{})
	is.NoErr(err)
	got := waitSandbox(t, ctx, ns, "sb-grace", func(u *unstructured.Unstructured) bool {
		return condition(u, "Ready").ObservedGeneration == 2
	})
	is.Equal(condition(got, "Ready").Status, "True")
	is.Equal(got.GetAnnotations()[sandboxctl.PodNameAnnotation], "sb-grace")
	cur, err := kube.CoreV1().Pods(ns).Get(ctx, "sb-grace", metav1.GetOptions{})
	is.NoErr(err)
	is.Equal(cur.UID, old.UID) // still the old, Terminating pod
	is.True(cur.DeletionTimestamp != nil)

	// End the termination: the pod goes, then its replacement comes.
	tr := traceSandbox(t, ctx, ns, "sb-grace")
	_, err = kube.CoreV1().Pods(ns).Patch(ctx, "sb-grace", types.MergePatchType,
		[]byte(`{"metadata":{"annotations":{"`+devcluster.TerminatingForAnnotation+`":"0s"}}}`), metav1.PatchOptions{})
	is.NoErr(err)
	var seq []string
	for len(seq) == 0 || seq[len(seq)-1] != "ADDED:new" {
		select {
		case ev := <-pw.ResultChan():
			p, ok := ev.Object.(*corev1.Pod)
			if !ok {
				continue
			}
			who := "old"
			if p.UID != old.UID {
				who = "new"
			}
			if ev.Type == watch.Modified && who == "old" && p.DeletionTimestamp != nil {
				who = "old-terminating"
			}
			if s := string(ev.Type) + ":" + who; len(seq) == 0 || seq[len(seq)-1] != s {
				seq = append(seq, s)
			}
		case <-ctx.Done():
			t.Fatalf("pod events so far: %v: %v", seq, ctx.Err())
		}
	}
	is.Equal(seq, []string{"MODIFIED:old-terminating", "DELETED:old", "ADDED:new"})
	tr.until(t, ctx, "Ready=False about the new pod", func(s sbState) bool { return s.Ready == "False/DependenciesNotReady" })
	tr.until(t, ctx, "Ready=True again", func(s sbState) bool { return s.Ready == "True/DependenciesReady" })
}

// Two pods controlled by one Sandbox: Ready=False/MultiplePods and one
// Warning event; it clears when the extra pod goes.
func TestMultiplePods(t *testing.T) {
	is := is.New(t)
	ns := devcluster.NewNamespace(t, cluster, nil)
	ctx := ctxT(t, 60*time.Second)
	kube := cluster.Kube()
	sbs := cluster.Dynamic().Resource(sandboxctl.GVR).Namespace(ns)
	created, err := sbs.Create(ctx, newSandbox("sb-multi", nil, nil), metav1.CreateOptions{})
	is.NoErr(err)
	waitSandbox(t, ctx, ns, "sb-multi", readyIs("True", "DependenciesReady"))
	pod, err := kube.CoreV1().Pods(ns).Get(ctx, "sb-multi", metav1.GetOptions{})
	is.NoErr(err)

	ew, err := testutil.WatchKube(t, cluster.RESTConfig()).CoreV1().Events(ns).Watch(ctx, metav1.ListOptions{})
	is.NoErr(err)
	defer ew.Stop()
	// A second pod with the Sandbox's label and controller reference (as a
	// racing or buggy creator would make).
	extra := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: "sb-multi-extra", Labels: map[string]string{sandboxctl.NameHashLabel: sandboxctl.NameHash("sb-multi")},
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion: sandboxctl.APIVersion, Kind: sandboxctl.Kind, Name: "sb-multi", UID: created.GetUID(),
				Controller: new(true), BlockOwnerDeletion: new(true),
			}},
		},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "main", Image: "busybox", Command: []string{"sleep", "infinity"}}}},
	}
	_, err = kube.CoreV1().Pods(ns).Create(ctx, extra, metav1.CreateOptions{})
	is.NoErr(err)

	const msg = "multiple Pods (2) are controlled by this Sandbox; refusing to choose or create a Pod"
	got := waitSandbox(t, ctx, ns, "sb-multi", readyIs("False", "MultiplePods"))
	is.Equal(condition(got, "Ready").Message, msg)
	is.Equal(condition(got, "PodScheduled"), cond{Status: "Unknown", Reason: "PodSchedulingUnknown",
		Message: "Pod state is unknown. Pod scheduling cannot be determined", ObservedGeneration: 1, present: true})
	_, hasIPs, _ := unstructured.NestedStringSlice(got.Object, "status", "podIPs")
	is.True(!hasIPs)
	node, _, _ := unstructured.NestedString(got.Object, "status", "nodeName")
	is.Equal(node, "")
	sel, _, _ := unstructured.NestedString(got.Object, "status", "selector")
	is.Equal(sel, "agents.x-k8s.io/sandbox-name-hash="+sandboxctl.NameHash("sb-multi"))

	var ev *corev1.Event
	for ev == nil {
		select {
		case e := <-ew.ResultChan():
			if x, ok := e.Object.(*corev1.Event); ok && x.Reason == "MultiplePods" {
				ev = x
			}
		case <-ctx.Done():
			t.Fatalf("no MultiplePods event: %v", ctx.Err())
		}
	}
	is.Equal(ev.Type, corev1.EventTypeWarning)
	is.Equal(ev.Message, msg)
	is.Equal(ev.Action, "Reconciling")
	is.Equal(ev.ReportingController, "sandbox-controller")
	is.Equal(ev.InvolvedObject.Kind, "Sandbox")
	is.Equal(ev.InvolvedObject.Name, "sb-multi")
	is.Equal(ev.InvolvedObject.UID, created.GetUID())

	// The extra pod goes: Ready again, about the original pod.
	is.NoErr(kube.CoreV1().Pods(ns).Delete(ctx, "sb-multi-extra", metav1.DeleteOptions{}))
	got = waitSandbox(t, ctx, ns, "sb-multi", readyIs("True", "DependenciesReady"))
	ips, _, _ := unstructured.NestedStringSlice(got.Object, "status", "podIPs")
	is.Equal(ips, []string{pod.Status.PodIP})
	cur, err := kube.CoreV1().Pods(ns).Get(ctx, "sb-multi", metav1.GetOptions{})
	is.NoErr(err)
	is.Equal(cur.UID, pod.UID) // no pod was created or replaced meanwhile
	// One event per entry into the state: every reconcile in it happened
	// before the one that cleared it.
	evs, err := kube.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "reason=MultiplePods"})
	is.NoErr(err)
	is.Equal(len(evs.Items), 1)
}
