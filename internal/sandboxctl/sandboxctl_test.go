package sandboxctl_test

import (
	"context"
	"testing"
	"time"

	"github.com/matryer/is"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"

	"github.com/paperclip-k8s/paperclip-k8s/internal/devcluster"
	"github.com/paperclip-k8s/paperclip-k8s/internal/sandboxctl"
)

var cluster *devcluster.Cluster

func TestMain(m *testing.M) {
	devcluster.Main(m, devcluster.Options{Nodes: true, SandboxController: true},
		func(c *devcluster.Cluster) { cluster = c })
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

// newSandbox returns a Sandbox running `sleep infinity`, with podTemplate
// labels and annotations.
func newSandbox(name string, labels, annotations map[string]any) *unstructured.Unstructured {
	tmplMeta := map[string]any{}
	if labels != nil {
		tmplMeta["labels"] = labels
	}
	if annotations != nil {
		tmplMeta["annotations"] = annotations
	}
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "agents.x-k8s.io/v1beta1",
		"kind":       "Sandbox",
		"metadata":   map[string]any{"name": name},
		"spec": map[string]any{
			"podTemplate": map[string]any{
				"metadata": tmplMeta,
				"spec": map[string]any{
					"restartPolicy": "Always",
					"containers": []any{map[string]any{
						"name": "main", "image": "busybox", "command": []any{"sleep", "infinity"},
					}},
				},
			},
		},
	}}
}

type cond struct {
	Status, Reason, Message string
	ObservedGeneration      int64
	present                 bool
}

func condition(u *unstructured.Unstructured, typ string) cond {
	if u == nil {
		return cond{}
	}
	cs, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range cs {
		m, _ := c.(map[string]any)
		if m["type"] == typ {
			og, _ := m["observedGeneration"].(int64)
			s, _ := m["status"].(string)
			r, _ := m["reason"].(string)
			msg, _ := m["message"].(string)
			return cond{Status: s, Reason: r, Message: msg, ObservedGeneration: og, present: true}
		}
	}
	return cond{}
}

func conditionTypes(u *unstructured.Unstructured) []string {
	cs, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	var out []string
	for _, c := range cs {
		out = append(out, c.(map[string]any)["type"].(string))
	}
	return out
}

func waitSandbox(t *testing.T, ctx context.Context, ns, name string, f func(*unstructured.Unstructured) bool) *unstructured.Unstructured {
	t.Helper()
	u, err := devcluster.WaitObject(ctx, cluster.Dynamic(), sandboxctl.GVR, ns, name, f)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func readyIs(status, reason string) func(*unstructured.Unstructured) bool {
	return func(u *unstructured.Unstructured) bool {
		c := condition(u, "Ready")
		return c.Status == status && c.Reason == reason
	}
}

func TestNameHash(t *testing.T) {
	is := is.New(t)
	// Values observed on pods of the real controller.
	for name, want := range map[string]string{
		"sb-main": "67797276", "sb-retain": "c62defd6", "sb-fail": "3bf6da83",
		"sb-succeed": "7764f7ad", "sb-podgone": "bba909f9", "sb-metalabels": "46592489",
	} {
		is.Equal(sandboxctl.NameHash(name), want)
	}
	is.Equal(len(sandboxctl.NameHash("")), 8)
}

func TestSandboxBecomesReady(t *testing.T) {
	is := is.New(t)
	ns := devcluster.NewNamespace(t, cluster, nil)
	ctx := ctxT(t, 60*time.Second)
	sbs := cluster.Dynamic().Resource(sandboxctl.GVR).Namespace(ns)
	sb := newSandbox("sb-main",
		map[string]any{"agents.x-k8s.io/foo": "bar", "extensions.agents.x-k8s.io/x": "y", "app": "demo", "paperclip.io/run-id": "r1"},
		map[string]any{"agents.x-k8s.io/baz": "qux", "paperclip.io/note": "hello"})
	sb.SetLabels(map[string]string{"paperclip.io/sandbox-label": "not-propagated"})
	created, err := sbs.Create(ctx, sb, metav1.CreateOptions{})
	is.NoErr(err)

	got := waitSandbox(t, ctx, ns, "sb-main", readyIs("True", "DependenciesReady"))
	gen := got.GetGeneration()
	is.Equal(gen, int64(1))
	is.Equal(conditionTypes(got), []string{"Suspended", "PodScheduled", "Ready"})
	for _, typ := range []string{"Suspended", "PodScheduled", "Ready"} {
		is.Equal(condition(got, typ).ObservedGeneration, gen) // observedGeneration on every condition
	}
	is.Equal(condition(got, "Ready").Message, "Pod is Ready")
	is.Equal(condition(got, "Suspended"), cond{Status: "False", Reason: "NotSuspended", Message: "Sandbox is not suspended", ObservedGeneration: gen, present: true})
	is.Equal(condition(got, "PodScheduled").Status, "True")
	is.Equal(condition(got, "PodScheduled").Reason, "PodScheduled")
	is.Equal(got.GetAnnotations()[sandboxctl.PodNameAnnotation], "sb-main")
	sel, _, _ := unstructured.NestedString(got.Object, "status", "selector")
	is.Equal(sel, "agents.x-k8s.io/sandbox-name-hash=67797276")
	node, _, _ := unstructured.NestedString(got.Object, "status", "nodeName")
	is.Equal(node, devcluster.NodeName)
	ips, _, _ := unstructured.NestedStringSlice(got.Object, "status", "podIPs")
	is.Equal(len(ips), 1)

	pod, err := cluster.Kube().CoreV1().Pods(ns).Get(ctx, "sb-main", metav1.GetOptions{})
	is.NoErr(err)
	is.Equal(pod.Status.PodIP, ips[0])
	ref := metav1.GetControllerOf(pod)
	is.True(ref != nil)
	is.Equal(*ref, metav1.OwnerReference{
		APIVersion: "agents.x-k8s.io/v1beta1", Kind: "Sandbox", Name: "sb-main", UID: created.GetUID(),
		Controller: new(true), BlockOwnerDeletion: new(true),
	})
	is.Equal(pod.Labels, map[string]string{
		"agents.x-k8s.io/sandbox-name-hash": "67797276",
		"app":                               "demo",
		"paperclip.io/run-id":               "r1",
	}) // agents.x-k8s.io/ template labels and the Sandbox's own labels don't reach the pod
	is.Equal(pod.Annotations, map[string]string{
		"paperclip.io/note":                      "hello",
		"agents.x-k8s.io/propagated-labels":      "app,paperclip.io/run-id",
		"agents.x-k8s.io/propagated-annotations": "paperclip.io/note",
	})
	is.Equal(pod.Spec.RestartPolicy, corev1.RestartPolicyAlways)
	is.Equal(pod.Spec.Containers[0].Command, []string{"sleep", "infinity"})
}

func TestPodTemplateLabelUpdatePatchesPodInPlace(t *testing.T) {
	is := is.New(t)
	ns := devcluster.NewNamespace(t, cluster, nil)
	ctx := ctxT(t, 60*time.Second)
	sbs := cluster.Dynamic().Resource(sandboxctl.GVR).Namespace(ns)
	_, err := sbs.Create(ctx, newSandbox("sb-relabel", map[string]any{"paperclip.io/run-id": "r1", "old": "x"}, nil), metav1.CreateOptions{})
	is.NoErr(err)
	waitSandbox(t, ctx, ns, "sb-relabel", readyIs("True", "DependenciesReady"))
	before, err := cluster.Kube().CoreV1().Pods(ns).Get(ctx, "sb-relabel", metav1.GetOptions{})
	is.NoErr(err)

	_, err = sbs.Patch(ctx, "sb-relabel", types.MergePatchType,
		[]byte(`{"spec":{"podTemplate":{"metadata":{"labels":{"old":null,"paperclip.io/extra":"x","agents.x-k8s.io/late":"y"}}}}}`), metav1.PatchOptions{})
	is.NoErr(err)
	got := waitSandbox(t, ctx, ns, "sb-relabel", func(u *unstructured.Unstructured) bool {
		return condition(u, "Ready").ObservedGeneration == 2
	})
	is.Equal(got.GetGeneration(), int64(2))
	for _, typ := range []string{"Suspended", "PodScheduled", "Ready"} {
		is.Equal(condition(got, typ).ObservedGeneration, int64(2))
	}
	is.Equal(condition(got, "Ready").Status, "True")
	pod, err := devcluster.WaitPod(ctx, cluster.Kube(), ns, "sb-relabel", func(p *corev1.Pod) bool {
		return p != nil && p.Labels["paperclip.io/extra"] == "x"
	})
	is.NoErr(err)
	is.Equal(pod.UID, before.UID) // same pod, no restart
	is.Equal(pod.Labels, map[string]string{
		"agents.x-k8s.io/sandbox-name-hash": sandboxctl.NameHash("sb-relabel"),
		"paperclip.io/extra":                "x",
		"paperclip.io/run-id":               "r1",
	})
	is.Equal(pod.Annotations["agents.x-k8s.io/propagated-labels"], "paperclip.io/extra,paperclip.io/run-id")
}

func TestFailedPodFinishesSandbox(t *testing.T) {
	is := is.New(t)
	ns := devcluster.NewNamespace(t, cluster, nil)
	ctx := ctxT(t, 60*time.Second)
	sbs := cluster.Dynamic().Resource(sandboxctl.GVR).Namespace(ns)
	_, err := sbs.Create(ctx, newSandbox("sb-fail", map[string]any{devcluster.FailLabel: "true"}, nil), metav1.CreateOptions{})
	is.NoErr(err)

	got := waitSandbox(t, ctx, ns, "sb-fail", func(u *unstructured.Unstructured) bool {
		return condition(u, "Finished").present
	})
	is.Equal(condition(got, "Ready"), cond{Status: "False", Reason: "PodFailed", Message: "Pod failed", ObservedGeneration: 1, present: true})
	is.Equal(condition(got, "Finished"), cond{Status: "True", Reason: "PodFailed", Message: "Pod failed", ObservedGeneration: 1, present: true})
	is.Equal(conditionTypes(got), []string{"Suspended", "PodScheduled", "Ready", "Finished"})

	pod, err := cluster.Kube().CoreV1().Pods(ns).Get(ctx, "sb-fail", metav1.GetOptions{})
	is.NoErr(err)
	is.Equal(pod.Status.Phase, corev1.PodFailed)
	is.Equal(pod.Status.ContainerStatuses[0].State.Terminated.ExitCode, int32(1))

	// The terminal pod is kept, not replaced: a later reconcile (forced by a
	// metadata change) still finds the same pod.
	_, err = sbs.Patch(ctx, "sb-fail", types.MergePatchType, []byte(`{"spec":{"podTemplate":{"metadata":{"labels":{"poke":"2"}}}}}`), metav1.PatchOptions{})
	is.NoErr(err)
	got = waitSandbox(t, ctx, ns, "sb-fail", func(u *unstructured.Unstructured) bool {
		return condition(u, "Ready").ObservedGeneration == 2
	})
	is.Equal(condition(got, "Finished").Reason, "PodFailed")
	after, err := cluster.Kube().CoreV1().Pods(ns).Get(ctx, "sb-fail", metav1.GetOptions{})
	is.NoErr(err)
	is.Equal(after.UID, pod.UID)
	is.Equal(after.Status.Phase, corev1.PodFailed)
}

func TestDeletedPodIsRecreated(t *testing.T) {
	is := is.New(t)
	ns := devcluster.NewNamespace(t, cluster, nil)
	ctx := ctxT(t, 60*time.Second)
	sbs := cluster.Dynamic().Resource(sandboxctl.GVR).Namespace(ns)
	_, err := sbs.Create(ctx, newSandbox("sb-podgone", nil, nil), metav1.CreateOptions{})
	is.NoErr(err)
	waitSandbox(t, ctx, ns, "sb-podgone", readyIs("True", "DependenciesReady"))
	old, err := cluster.Kube().CoreV1().Pods(ns).Get(ctx, "sb-podgone", metav1.GetOptions{})
	is.NoErr(err)

	is.NoErr(cluster.Kube().CoreV1().Pods(ns).Delete(ctx, "sb-podgone", metav1.DeleteOptions{}))
	pod, err := devcluster.WaitPod(ctx, cluster.Kube(), ns, "sb-podgone", func(p *corev1.Pod) bool {
		return p != nil && p.UID != old.UID && p.Status.Phase == corev1.PodRunning
	})
	is.NoErr(err)
	is.Equal(metav1.GetControllerOf(pod).Name, "sb-podgone")
	got := waitSandbox(t, ctx, ns, "sb-podgone", func(u *unstructured.Unstructured) bool {
		ips, _, _ := unstructured.NestedStringSlice(u.Object, "status", "podIPs")
		return condition(u, "Ready").Status == "True" && len(ips) == 1 && ips[0] == pod.Status.PodIP
	})
	is.Equal(got.GetAnnotations()[sandboxctl.PodNameAnnotation], "sb-podgone")
}

func TestShutdownTimeDeletePolicy(t *testing.T) {
	t.Parallel()
	is := is.New(t)
	ns := devcluster.NewNamespace(t, cluster, nil)
	ctx := ctxT(t, 60*time.Second)
	sbs := cluster.Dynamic().Resource(sandboxctl.GVR).Namespace(ns)
	sb := newSandbox("sb-expire", nil, nil)
	shutdown := time.Now().Add(3 * time.Second).UTC().Format(time.RFC3339)
	is.NoErr(unstructured.SetNestedField(sb.Object, shutdown, "spec", "shutdownTime"))
	is.NoErr(unstructured.SetNestedField(sb.Object, "Delete", "spec", "shutdownPolicy"))
	created, err := sbs.Create(ctx, sb, metav1.CreateOptions{})
	is.NoErr(err)

	// It runs first, then expires and disappears with its pod.
	waitSandbox(t, ctx, ns, "sb-expire", readyIs("True", "DependenciesReady"))
	pod, err := cluster.Kube().CoreV1().Pods(ns).Get(ctx, "sb-expire", metav1.GetOptions{})
	is.NoErr(err)
	is.Equal(metav1.GetControllerOf(pod).UID, created.GetUID())

	waitSandbox(t, ctx, ns, "sb-expire", func(u *unstructured.Unstructured) bool { return u == nil })
	is.True(!time.Now().Before(mustTime(t, shutdown))) // not before shutdownTime
	_, err = devcluster.WaitPod(ctx, cluster.Kube(), ns, "sb-expire", func(p *corev1.Pod) bool { return p == nil })
	is.NoErr(err)
}

func TestShutdownTimeRetainPolicy(t *testing.T) {
	t.Parallel()
	is := is.New(t)
	ns := devcluster.NewNamespace(t, cluster, nil)
	ctx := ctxT(t, 60*time.Second)
	sbs := cluster.Dynamic().Resource(sandboxctl.GVR).Namespace(ns)
	sb := newSandbox("sb-retain", nil, nil) // shutdownPolicy defaults to Retain
	shutdown := time.Now().Add(3 * time.Second).UTC().Format(time.RFC3339)
	is.NoErr(unstructured.SetNestedField(sb.Object, shutdown, "spec", "shutdownTime"))
	_, err := sbs.Create(ctx, sb, metav1.CreateOptions{})
	is.NoErr(err)
	waitSandbox(t, ctx, ns, "sb-retain", readyIs("True", "DependenciesReady"))

	got := waitSandbox(t, ctx, ns, "sb-retain", func(u *unstructured.Unstructured) bool {
		st, _, _ := unstructured.NestedMap(u.Object, "status")
		return condition(u, "Ready").Reason == "SandboxExpired" && len(st) == 1
	})
	is.Equal(condition(got, "Ready"), cond{Status: "False", Reason: "SandboxExpired", Message: "Sandbox has expired", ObservedGeneration: 1, present: true})
	is.Equal(conditionTypes(got), []string{"Suspended", "Ready"}) // PodScheduled removed
	_, err = devcluster.WaitPod(ctx, cluster.Kube(), ns, "sb-retain", func(p *corev1.Pod) bool { return p == nil })
	is.NoErr(err)
	is.Equal(got.GetAnnotations()[sandboxctl.PodNameAnnotation], "sb-retain")
}

func TestShutdownTimeAlreadyPast(t *testing.T) {
	t.Parallel()
	is := is.New(t)
	ns := devcluster.NewNamespace(t, cluster, nil)
	ctx := ctxT(t, 60*time.Second)
	sbs := cluster.Dynamic().Resource(sandboxctl.GVR).Namespace(ns)
	sb := newSandbox("sb-past", nil, nil)
	is.NoErr(unstructured.SetNestedField(sb.Object, "2020-01-01T00:00:00Z", "spec", "shutdownTime"))
	_, err := sbs.Create(ctx, sb, metav1.CreateOptions{})
	is.NoErr(err)
	got := waitSandbox(t, ctx, ns, "sb-past", readyIs("False", "SandboxExpired"))
	is.Equal(conditionTypes(got), []string{"Ready"})
	_, hasSel, _ := unstructured.NestedString(got.Object, "status", "selector")
	is.True(!hasSel)
	// Never a pod: the pod-name annotation would be set right after a create.
	_, has := got.GetAnnotations()[sandboxctl.PodNameAnnotation]
	is.True(!has)
	pods, err := cluster.Kube().CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	is.NoErr(err)
	is.Equal(len(pods.Items), 0)
}

// Deleting a Sandbox leaves the pod to the garbage collector (ownerReference
// cascade), with no finalizer on the Sandbox.
func TestSandboxDeletionCascadesToPod(t *testing.T) {
	is := is.New(t)
	ns := devcluster.NewNamespace(t, cluster, nil)
	ctx := ctxT(t, 60*time.Second)
	sbs := cluster.Dynamic().Resource(sandboxctl.GVR).Namespace(ns)
	_, err := sbs.Create(ctx, newSandbox("sb-bg", nil, nil), metav1.CreateOptions{})
	is.NoErr(err)
	got := waitSandbox(t, ctx, ns, "sb-bg", readyIs("True", "DependenciesReady"))
	is.Equal(len(got.GetFinalizers()), 0)
	is.NoErr(sbs.Delete(ctx, "sb-bg", metav1.DeleteOptions{}))
	_, err = devcluster.WaitPod(ctx, cluster.Kube(), ns, "sb-bg", func(p *corev1.Pod) bool { return p == nil })
	is.NoErr(err)
}

func mustTime(t *testing.T, s string) time.Time {
	t.Helper()
	tm, err := time.Parse(time.RFC3339, s)
	if err != nil {
		t.Fatal(err)
	}
	return tm
}
