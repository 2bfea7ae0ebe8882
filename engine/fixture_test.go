package engine_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	dynfake "k8s.io/client-go/dynamic/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/paperclip-k8s/paperclip-k8s/engine"
	"github.com/paperclip-k8s/paperclip-k8s/engine/enginetest"
	"github.com/paperclip-k8s/paperclip-k8s/engine/resource"
	"github.com/paperclip-k8s/paperclip-k8s/internal/testutil"
	"github.com/paperclip-k8s/paperclip-k8s/plugin/valuestest"
)

// fixture is what most engine unit tests start from: the test catalog
// (resources/ and testdata/backends), the engine over the fake dynamic
// client (enginetest.New) and the values of one shipped values fixture.
//
//	f := newFixture(t, "standard-job")
//	job, w := f.workload(t, "job") // the backend file, the run's Job in ns1
//	_, err := f.e.Release(ctx, engine.RefOf(job, w))
type fixture struct {
	c      *resource.Catalog
	e      *engine.Engine
	dyn    *dynfake.FakeDynamicClient
	values map[string]any // valuestest.LoadShipped(values).Values; tests may change it
}

// newFixture loads the catalog and the values fixture (a testdata/values
// name: "standard-job", "cilium-sandbox", …) and starts the engine; the
// API groups in omit are not served (see enginetest.New).
func newFixture(t *testing.T, values string, omit ...string) *fixture {
	t.Helper()
	return fixtureOf(t, testutil.TestCatalog(t), values, omit...)
}

// newShippedFixture is newFixture over the shipped files only
// (testutil.Catalog: no testdata backends).
func newShippedFixture(t *testing.T, values string) *fixture {
	t.Helper()
	return fixtureOf(t, testutil.Catalog(t), values)
}

func fixtureOf(t *testing.T, c *resource.Catalog, values string, omit ...string) *fixture {
	t.Helper()
	e, dyn := enginetest.New(t, c, omit...)
	return &fixture{c: c, e: e, dyn: dyn, values: valuestest.LoadShipped(t, values).Values}
}

// file is the catalog's file name (a backend or an object file); the test
// fails when there is none.
func (f *fixture) file(t *testing.T, name string) *resource.Resource {
	t.Helper()
	r, ok := f.c.Get(name)
	if !ok {
		t.Fatalf("the test catalog has no file %q", name)
	}
	return r
}

// namespace is the values' namespace: the tenant namespace.
func (f *fixture) namespace() string {
	return f.values["namespace"].(string)
}

// runName is the values' run.name: the name of the run's workload.
func (f *fixture) runName() string {
	return f.values["run"].(map[string]any)["name"].(string)
}

// workload creates the run's workload of backend (a catalog file name) in
// namespace ns1 from the fixture's values; it returns the file and the
// object.
func (f *fixture) workload(t *testing.T, backend string) (*resource.Resource, *unstructured.Unstructured) {
	t.Helper()
	file := f.file(t, backend)
	return file, f.create(t, file, nil)
}

// create creates file's object in namespace ns1 from the fixture's values,
// owned by owner (nil for a workload); the test fails on an error.
func (f *fixture) create(t *testing.T, file *resource.Resource, owner *unstructured.Unstructured) *unstructured.Unstructured {
	t.Helper()
	obj, err := f.e.Create(context.Background(), file, "ns1", f.values, owner)
	if err != nil {
		t.Fatalf("creating %s in ns1: %v", file.Name, err)
	}
	return obj
}

// waitResult is what Engine.Wait returned.
type waitResult struct {
	obj *unstructured.Unstructured
	st  resource.Status
	err error
}

// waitAsync runs f.e.Wait(ctx, file, w, want...) in a goroutine and returns
// once watches watches have started (the wait's sources in order: the
// object, then its events when file has event rules), so that what the test
// changes next reaches the wait as events; the channel gets the result.
func (f *fixture) waitAsync(ctx context.Context, file *resource.Resource, w *unstructured.Unstructured, watches int, want ...resource.State) <-chan waitResult {
	done := make(chan waitResult, 1)
	started := enginetest.WatchStarts(f.dyn)
	go func() {
		obj, st, err := f.e.Wait(ctx, file, w, want...)
		done <- waitResult{obj, st, err}
	}()
	for range watches {
		<-started
	}
	return done
}

// podResult is what Engine.AwaitPod returned.
type podResult struct {
	pod *unstructured.Unstructured
	err error
}

// awaitPodAsync runs f.e.AwaitPod(ctx, file, w) in a goroutine; the channel
// gets the result. It returns at once: the caller syncs with the wait on a
// signal of its own set up before (enginetest.WatchStarts, firstGet).
func (f *fixture) awaitPodAsync(ctx context.Context, file *resource.Resource, w *unstructured.Unstructured) <-chan podResult {
	done := make(chan podResult, 1)
	go func() {
		_, p, err := f.e.AwaitPod(ctx, file, w)
		done <- podResult{p, err}
	}()
	return done
}

// addPod creates a pod controlled by w (podOf) with status; the test fails
// on an error.
func (f *fixture) addPod(t *testing.T, w *unstructured.Unstructured, status map[string]any) *unstructured.Unstructured {
	t.Helper()
	p, err := f.dyn.Resource(gvrPod).Namespace(w.GetNamespace()).Create(context.Background(), podOf(w, status), metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating the pod of %s: %v", w.GetName(), err)
	}
	return p
}

// setPodStatus replaces pod's status on the server; the test fails on an
// error.
func (f *fixture) setPodStatus(t *testing.T, pod *unstructured.Unstructured, status map[string]any) {
	t.Helper()
	pod.Object["status"] = status
	if _, err := f.dyn.Resource(gvrPod).Namespace(pod.GetNamespace()).Update(context.Background(), pod, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("updating pod %s: %v", pod.GetName(), err)
	}
}

// terminalSays asserts that err is a *engine.TerminalError whose message
// contains each of wants, and returns it.
func terminalSays(t *testing.T, err error, wants ...string) *engine.TerminalError {
	t.Helper()
	var te *engine.TerminalError
	if !errors.As(err, &te) {
		t.Fatalf("error %v is not a TerminalError", err)
	}
	for _, want := range wants {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not contain %q", err, want)
		}
	}
	return te
}

// expire ends fw as an API server ends an expired watch (410 Gone).
func expire(fw *watch.FakeWatcher) {
	fw.Error(&metav1.Status{Status: metav1.StatusFailure, Code: 410, Reason: metav1.StatusReasonExpired, Message: "too old resource version"})
}

// reactorChain is the fake dynamic client's reactor chain.
type reactorChain interface {
	PrependReactor(string, string, k8stesting.ReactionFunc)
}

// firstAction returns a channel that gets a value when the fake client
// first serves verb on resource (and match, when set, holds for the
// action); the action itself goes on to the fake.
func firstAction(dyn reactorChain, verb, resource string, match func(k8stesting.Action) bool) <-chan struct{} {
	ch := make(chan struct{}, 1)
	dyn.PrependReactor(verb, resource, func(a k8stesting.Action) (bool, runtime.Object, error) {
		if match == nil || match(a) {
			select {
			case ch <- struct{}{}:
			default:
			}
		}
		return false, nil, nil
	})
	return ch
}
