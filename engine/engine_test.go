package engine_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/matryer/is"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	k8stesting "k8s.io/client-go/testing"

	"github.com/paperclip-k8s/paperclip-k8s/engine"
	"github.com/paperclip-k8s/paperclip-k8s/engine/enginetest"
	"github.com/paperclip-k8s/paperclip-k8s/engine/resource"
	"github.com/paperclip-k8s/paperclip-k8s/internal/testutil"
)

// A backend defined only in testdata is claimed, awaited, its pod found and
// released by the engine, with no Go change.
func TestTestdataOnlyBackendLifecycle(t *testing.T) {
	is := is.New(t)
	f := newFixture(t, "standard-job")
	e := f.e
	ctx := context.Background()
	backend := f.file(t, "barepod")
	is.Equal(backend.Backend.Mode, "exec")

	w := f.create(t, backend, nil)
	is.Equal(w.GetKind(), "Pod")
	is.Equal(w.GetAPIVersion(), "v1")
	is.Equal(w.GetNamespace(), "ns1")
	deadline, _, _ := unstructured.NestedInt64(w.Object, "spec", "activeDeadlineSeconds")
	is.Equal(deadline, int64(3600))

	sec := f.create(t, f.file(t, "secret"), w)
	refs := sec.GetOwnerReferences()
	is.Equal(len(refs), 1)
	is.Equal(refs[0].UID, w.GetUID())
	is.Equal(refs[0].Kind, "Pod")
	is.True(*refs[0].Controller)

	// A second claim of the same name fails: Create is a claim.
	_, err := e.Create(ctx, backend, "ns1", f.values, nil)
	is.True(err != nil)

	waitCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	done := f.waitAsync(waitCtx, backend, w, 1, resource.Ready)
	enginetest.SetStatus(t, e, w, backend, map[string]any{"phase": "Pending"})
	enginetest.SetStatus(t, e, w, backend, map[string]any{"phase": "Running", "conditions": []any{map[string]any{"type": "Ready", "status": "True"}}})
	r := <-done
	is.NoErr(r.err)
	is.Equal(r.st.State, resource.Ready)

	pod, err := e.FindPod(ctx, backend, w)
	is.NoErr(err)
	is.Equal(pod.GetUID(), w.GetUID())

	deleted, err := e.Release(ctx, engine.RefOf(backend, w))
	is.NoErr(err)
	is.True(deleted)
	deleted, err = e.Release(ctx, engine.RefOf(backend, w))
	is.NoErr(err) // already gone is done
	is.True(!deleted)
	_, err = e.Get(ctx, engine.RefOf(backend, w))
	is.True(engine.IsGone(err))
}

// A terminal state ends the wait at once, with the rule's reason and message.
func TestWaitReturnsTerminalFailureOnTheEvent(t *testing.T) {
	is := is.New(t)
	f := newFixture(t, "cilium-sandbox")
	e := f.e
	sb, w := f.workload(t, "sandbox")
	is.Equal(w.GetAPIVersion(), "agents.x-k8s.io/v1beta1")

	waitCtx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	done := f.waitAsync(waitCtx, sb, w, 1, resource.Ready)
	cond := func(typ, status, reason, msg string) map[string]any {
		return map[string]any{"type": typ, "status": status, "reason": reason, "message": msg, "observedGeneration": int64(1)}
	}
	enginetest.SetStatus(t, e, w, sb, map[string]any{"conditions": []any{cond("Ready", "False", "DependenciesNotReady", "Pod exists with phase: Pending")}})
	enginetest.SetStatus(t, e, w, sb, map[string]any{"conditions": []any{cond("Ready", "False", "PodFailed", "Pod failed"), cond("Finished", "True", "PodFailed", "Pod failed")}})
	select {
	case r := <-done:
		err := r.err
		var te *engine.TerminalError
		is.True(errors.As(err, &te))
		is.Equal(te.Status.State, resource.Failed)
		is.Equal(te.Status.Reason, "PodFailed")
		is.True(strings.Contains(err.Error(), w.GetName()))
	case <-time.After(30 * time.Second):
		t.Fatal("the wait did not return on the failure event")
	}
}

func TestWaitReportsDeletionAndContextEnd(t *testing.T) {
	is := is.New(t)
	f := newFixture(t, "standard-job")
	e := f.e
	ctx := context.Background()
	job, w := f.workload(t, "job")

	done := f.waitAsync(ctx, job, w, 1, resource.Succeeded)
	_, err := e.Release(ctx, engine.RefOf(job, w))
	is.NoErr(err)
	is.True(engine.IsGone((<-done).err))

	w2, err := e.Create(ctx, job, "ns2", f.values, nil)
	is.NoErr(err)
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	_, _, err = e.Wait(short, job, w2, resource.Succeeded)
	var we *engine.WaitError
	is.True(errors.As(err, &we))
	is.True(errors.Is(err, context.DeadlineExceeded))
	is.Equal(we.Last.State, resource.Pending)
}

// Pods are found by the file's rules and only when the workload controls
// them (same UID); a pod with the right name but another owner is refused.
func TestFindPodChecksTheOwnerUID(t *testing.T) {
	is := is.New(t)
	f := newFixture(t, "cilium-sandbox")
	e := f.e
	ctx := context.Background()
	sb := f.file(t, "sandbox")
	podSpec, _ := f.c.Pod()
	w := f.create(t, sb, nil)
	r, _ := e.Resolve(podSpec)
	pods := e.Dynamic.Resource(r.GVR).Namespace("ns1")

	_, err := e.FindPod(ctx, sb, w)
	is.True(errors.Is(err, engine.ErrNoPod))

	tru := true
	impostor := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "Pod",
		"metadata": map[string]any{"name": w.GetName(), "namespace": "ns1"}}}
	impostor.SetOwnerReferences([]metav1.OwnerReference{{APIVersion: "agents.x-k8s.io/v1beta1", Kind: "Sandbox", Name: w.GetName(), UID: "someone-else", Controller: &tru}})
	_, err = pods.Create(ctx, impostor, metav1.CreateOptions{})
	is.NoErr(err)
	_, err = e.FindPod(ctx, sb, w)
	is.True(errors.Is(err, engine.ErrNoPod)) // same name, wrong owner UID

	real := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "Pod",
		"metadata": map[string]any{"name": "warm-pod-1", "namespace": "ns1"}}}
	real.SetOwnerReferences([]metav1.OwnerReference{{APIVersion: "agents.x-k8s.io/v1beta1", Kind: "Sandbox", Name: w.GetName(), UID: w.GetUID(), Controller: &tru}})
	_, err = pods.Create(ctx, real, metav1.CreateOptions{})
	is.NoErr(err)
	w.SetAnnotations(map[string]string{"agents.x-k8s.io/pod-name": "warm-pod-1"})
	p, err := e.FindPod(ctx, sb, w)
	is.NoErr(err)
	is.Equal(p.GetName(), "warm-pod-1") // the annotation wins
}

// Release uses a UID precondition: an object that replaced ours keeps living.
func TestReleaseLeavesAReplacementAlone(t *testing.T) {
	is := is.New(t)
	f := newFixture(t, "standard-job")
	e := f.e
	ctx := context.Background()
	job, w := f.workload(t, "job")
	var sawPrecondition atomic.Bool
	f.dyn.PrependReactor("delete", "jobs", func(a k8stesting.Action) (bool, runtime.Object, error) {
		d := a.(k8stesting.DeleteAction)
		if p := d.GetDeleteOptions().Preconditions; p != nil && p.UID != nil {
			sawPrecondition.Store(true)
		}
		if pp := d.GetDeleteOptions().PropagationPolicy; pp == nil || *pp != metav1.DeletePropagationForeground {
			t.Errorf("propagation policy %v, want Foreground from job.yaml", pp)
		}
		return false, nil, nil
	})
	ref := engine.RefOf(job, w)
	ref.UID = "an-older-uid"
	_, err := e.Get(ctx, ref)
	is.True(engine.IsGone(err)) // another UID under the name: replaced
	_, err = e.Release(ctx, engine.RefOf(job, w))
	is.NoErr(err)
	is.True(sawPrecondition.Load())
}

func TestMissingAPINamesWhatToInstall(t *testing.T) {
	is := is.New(t)
	f := newFixture(t, "standard-job", "agents.x-k8s.io")
	_, err := f.e.Resolve(f.file(t, "sandbox"))
	var missing *engine.APIMissingError
	is.True(errors.As(err, &missing))
	is.True(strings.Contains(err.Error(), "agent-sandbox"))
	is.True(strings.Contains(err.Error(), `set backend to "job"`))
}

// v1beta1 is preferred; a cluster that serves only v1alpha1 gets v1alpha1.
func TestResolveFallsBackToAnOlderServedVersion(t *testing.T) {
	is := is.New(t)
	c := testutil.TestCatalog(t)
	sb, _ := c.Get("sandbox")
	for _, served := range []string{"v1beta1", "v1alpha1"} {
		gv := schema.GroupVersion{Group: "agents.x-k8s.io", Version: served}
		mapper := meta.NewDefaultRESTMapper([]schema.GroupVersion{gv})
		mapper.AddSpecific(gv.WithKind("Sandbox"), gv.WithResource("sandboxes"), gv.WithResource("sandbox"), meta.RESTScopeNamespace)
		e := engine.New(c, nil, mapper, nil, nil)
		r, err := e.Resolve(sb)
		is.NoErr(err)
		is.Equal(r.GVR.Version, served)
		is.Equal(r.GVR.Resource, "sandboxes")
		is.True(r.Namespaced)
	}
}

// An expired watch (410 Gone) makes Wait read the object again and watch
// on from its new resourceVersion; a watch that just ends is resumed.
func TestWaitRewatchesAfterExpiry(t *testing.T) {
	is := is.New(t)
	f := newFixture(t, "standard-job")
	e := f.e
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	backend, w := f.workload(t, "barepod")

	var watches []string
	watchers := make(chan *watch.FakeWatcher, 3)
	f.dyn.PrependWatchReactor("pods", func(a k8stesting.Action) (bool, watch.Interface, error) {
		watches = append(watches, a.(k8stesting.WatchAction).GetWatchRestrictions().ResourceVersion)
		fw := watch.NewFake()
		watchers <- fw
		return true, fw, nil
	})
	done := make(chan error, 1)
	go func() {
		_, _, err := e.Wait(ctx, backend, w, resource.Ready)
		done <- err
	}()

	// First watch: expires.
	fw := <-watchers
	expire(fw)
	// Second watch (after a fresh read): ends without an event.
	fw = <-watchers
	fw.Stop()
	// Third watch: the pod becomes ready.
	fw = <-watchers
	ready := w.DeepCopy()
	ready.SetResourceVersion("99")
	is.NoErr(unstructured.SetNestedField(ready.Object, "Running", "status", "phase"))
	is.NoErr(unstructured.SetNestedSlice(ready.Object, []any{map[string]any{"type": "Ready", "status": "True"}}, "status", "conditions"))
	fw.Modify(ready)
	is.NoErr(<-done)
	is.Equal(len(watches), 3)
	is.True(w.GetResourceVersion() != "")
	is.Equal(watches[0], w.GetResourceVersion()) // from the object's own version
}

// A watch the server refuses (not an expired resourceVersion) ends the wait
// at once with an error naming the object, rather than being retried until
// the context ends as an informer would.
func TestWaitFailsOnARefusedWatch(t *testing.T) {
	is := is.New(t)
	f := newFixture(t, "standard-job")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	job, w := f.workload(t, "job")
	f.dyn.PrependWatchReactor("jobs", func(a k8stesting.Action) (bool, watch.Interface, error) {
		return true, nil, apierrors.NewForbidden(schema.GroupResource{Group: "batch", Resource: "jobs"}, w.GetName(), errors.New("no watch for you"))
	})
	_, _, err := f.e.Wait(ctx, job, w, resource.Succeeded)
	is.True(apierrors.IsForbidden(err))
	is.True(strings.Contains(err.Error(), "watching "+engine.RefOf(job, w).String()))
	is.True(ctx.Err() == nil) // not the context's end
}
