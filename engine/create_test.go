package engine_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/matryer/is"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	dynfake "k8s.io/client-go/dynamic/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/paperclip-k8s/paperclip-k8s/engine"
)

// createThenFail makes the fake server apply every create of resource and
// then answer with err, as when the response of an applied create is lost.
func createThenFail(dyn *dynfake.FakeDynamicClient, resource string, err error) {
	dyn.PrependReactor("create", resource, func(a k8stesting.Action) (bool, runtime.Object, error) {
		o := a.(k8stesting.CreateAction).GetObject().(*unstructured.Unstructured)
		o.SetUID(types.UID("uid-applied-" + o.GetName()))
		if cerr := dyn.Tracker().Create(a.GetResource(), o, a.GetNamespace()); cerr != nil {
			return true, nil, cerr
		}
		return true, nil, err
	})
}

// failCreate answers every create of resource with err without applying it.
func failCreate(dyn *dynfake.FakeDynamicClient, resource string, err error) {
	dyn.PrependReactor("create", resource, func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, err
	})
}

// deletes returns the delete actions recorded on the fake client.
func deletes(dyn *dynfake.FakeDynamicClient) []k8stesting.DeleteAction {
	var out []k8stesting.DeleteAction
	for _, a := range dyn.Actions() {
		if d, ok := a.(k8stesting.DeleteAction); ok && a.GetVerb() == "delete" {
			out = append(out, d)
		}
	}
	return out
}

var (
	jobsGVR    = schema.GroupVersionResource{Group: "batch", Version: "v1", Resource: "jobs"}
	secretsGVR = schema.GroupVersionResource{Version: "v1", Resource: "secrets"}
)

// The errors that leave a create's outcome unknown, and some that do not.
func TestOutcomeUnknown(t *testing.T) {
	gr := schema.GroupResource{Group: "batch", Resource: "jobs"}
	for _, c := range []struct {
		name string
		err  error
		want bool
	}{
		{"context deadline", fmt.Errorf("wrapped: %w", context.DeadlineExceeded), true},
		{"context cancelled", context.Canceled, true},
		{"connection reset", &url.Error{Op: "Post", URL: "https://x", Err: syscall.ECONNRESET}, true},
		{"EOF after the request", &url.Error{Op: "Post", URL: "https://x", Err: io.EOF}, true},
		{"504 Timeout status", apierrors.NewTimeoutError("the server was unable to return a response in the time allotted", 1), true},
		{"server timeout", apierrors.NewServerTimeout(gr, "create", 1), true},
		{"5xx without a Status", apierrors.NewGenericServerResponse(502, "POST", gr, "", "Bad Gateway", 0, true), true},
		{"500 with a Status", apierrors.NewInternalError(errors.New("boom")), false},
		{"already exists", apierrors.NewAlreadyExists(gr, "x"), false},
		{"forbidden", apierrors.NewForbidden(gr, "x", errors.New("no")), false},
		{"invalid", apierrors.NewBadRequest("bad"), false},
		{"connection refused", &url.Error{Op: "Post", URL: "https://x", Err: syscall.ECONNREFUSED}, false},
		{"nil", nil, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := engine.OutcomeUnknown(c.err); got != c.want {
				t.Errorf("OutcomeUnknown(%v) = %v, want %v", c.err, got, c.want)
			}
		})
	}
}

// A workload create that was applied but whose answer was lost (timeout,
// reset) is deleted again, UID-preconditioned, and the error says so and
// names the object.
func TestCreateUnknownOutcomeDeletesTheAppliedObject(t *testing.T) {
	for _, cause := range []error{
		fmt.Errorf("Post \"https://api/apis/batch/v1/namespaces/ns1/jobs\": %w", context.DeadlineExceeded),
		&url.Error{Op: "Post", URL: "https://api/apis/batch/v1/namespaces/ns1/jobs", Err: syscall.ECONNRESET},
		apierrors.NewTimeoutError("the server was unable to return a response in the time allotted", 0),
	} {
		t.Run(cause.Error(), func(t *testing.T) {
			is := is.New(t)
			f := newFixture(t, "standard-job")
			dyn, name := f.dyn, f.runName()
			createThenFail(dyn, "jobs", cause)

			w, err := f.e.Create(context.Background(), f.file(t, "job"), "ns1", f.values, nil)
			is.True(w == nil)
			var uo *engine.UnknownOutcomeError
			is.True(errors.As(err, &uo))
			is.True(uo.Deleted)
			is.True(errors.Is(err, cause)) // the create's error is kept
			msg := err.Error()
			for _, want := range []string{"Job ns1/" + name, "job.yaml", "the outcome is unknown", "deleted again", "uid-applied-" + name} {
				if !strings.Contains(msg, want) {
					t.Errorf("error %q does not say %q", msg, want)
				}
			}
			_, gerr := dyn.Resource(jobsGVR).Namespace("ns1").Get(context.Background(), name, metav1.GetOptions{})
			is.True(apierrors.IsNotFound(gerr)) // nothing is left
			ds := deletes(dyn)
			is.Equal(len(ds), 1)
			is.Equal(ds[0].GetName(), name)
			pre := ds[0].GetDeleteOptions().Preconditions
			is.True(pre != nil && pre.UID != nil)
			is.Equal(string(*pre.UID), "uid-applied-"+name) // UID-pinned
		})
	}
}

// The cleanup runs with a context of its own: a create whose context has
// expired (the usual cause of an unknown outcome) still deletes.
func TestCreateUnknownOutcomeCleansUpAfterTheContextExpired(t *testing.T) {
	is := is.New(t)
	f := newFixture(t, "standard-job")
	dyn := f.dyn
	ctx, cancel := context.WithCancel(context.Background())
	dyn.PrependReactor("create", "jobs", func(a k8stesting.Action) (bool, runtime.Object, error) {
		o := a.(k8stesting.CreateAction).GetObject().(*unstructured.Unstructured)
		o.SetUID("uid-1")
		is.NoErr(dyn.Tracker().Create(a.GetResource(), o, a.GetNamespace()))
		cancel()
		return true, nil, ctx.Err()
	})
	// The fake client ignores contexts: the control-plane test in
	// cmd/paperclip-k8s shows the delete reaching a real server after the
	// hook's context expired. Here CleanupContext itself is checked.
	_, err := f.e.Create(ctx, f.file(t, "job"), "ns1", f.values, nil)
	var uo *engine.UnknownOutcomeError
	is.True(errors.As(err, &uo))
	is.True(uo.Deleted)
	is.True(errors.Is(err, context.Canceled))

	cctx, ccancel := engine.CleanupContext(ctx)
	defer ccancel()
	is.NoErr(cctx.Err()) // detached from the cancelled context
	dl, ok := cctx.Deadline()
	is.True(ok) // but bounded
	is.True(time.Until(dl) <= engine.DefaultCleanupTimeout)
}

// CleanupContext ends at the cleanup deadline recorded on the context (a
// bounded hook's reply deadline), never sooner than MinCleanupTimeout.
func TestCleanupContextDeadline(t *testing.T) {
	is := is.New(t)
	base, cancel := context.WithCancel(context.Background())
	cancel()
	at := time.Now().Add(7 * time.Second)
	ctx, c1 := engine.CleanupContext(engine.WithCleanupDeadline(base, at))
	defer c1()
	is.NoErr(ctx.Err())
	dl, _ := ctx.Deadline()
	is.True(dl.Equal(at))

	past := time.Now().Add(-time.Second)
	ctx2, c2 := engine.CleanupContext(engine.WithCleanupDeadline(base, past))
	defer c2()
	dl2, _ := ctx2.Deadline()
	is.True(time.Until(dl2) > engine.MinCleanupTimeout-time.Second) // still gets its minimum
}

// An unknown outcome where nothing was created: the name is read back, not
// found, nothing is deleted, and the error says so.
func TestCreateUnknownOutcomeNothingCreated(t *testing.T) {
	is := is.New(t)
	f := newFixture(t, "standard-job")
	failCreate(f.dyn, "jobs", &url.Error{Op: "Post", URL: "https://api", Err: io.EOF})
	_, err := f.e.Create(context.Background(), f.file(t, "job"), "ns1", f.values, nil)
	var uo *engine.UnknownOutcomeError
	is.True(errors.As(err, &uo))
	is.True(uo.Absent)
	is.True(strings.Contains(err.Error(), "did not exist when read back"))
	is.Equal(len(deletes(f.dyn)), 0)
}

// An object of that name that does not carry every rendered label, or not
// the owner's UID, is not ours: it is left alone and the error says why.
func TestCreateUnknownOutcomeLeavesAnotherObjectAlone(t *testing.T) {
	timeout := apierrors.NewTimeoutError("timed out", 0)
	// another is an object in ns1 that is not the one the create made.
	another := func(apiVersion, kind, name string, labels map[string]string) *unstructured.Unstructured {
		o := &unstructured.Unstructured{}
		o.SetAPIVersion(apiVersion)
		o.SetKind(kind)
		o.SetName(name)
		o.SetNamespace("ns1")
		o.SetUID("uid-other")
		o.SetLabels(labels)
		return o
	}

	t.Run("labels differ", func(t *testing.T) {
		is := is.New(t)
		f := newFixture(t, "standard-job")
		name := f.runName()
		labels := map[string]string{}
		for k, v := range f.values["run"].(map[string]any)["labels"].(map[string]any) {
			labels[k] = v.(string)
		}
		labels["paperclip.io/run-id"] = "another-run"
		is.NoErr(f.dyn.Tracker().Create(jobsGVR, another("batch/v1", "Job", name, labels), "ns1"))
		failCreate(f.dyn, "jobs", timeout)

		_, err := f.e.Create(context.Background(), f.file(t, "job"), "ns1", f.values, nil)
		var uo *engine.UnknownOutcomeError
		is.True(errors.As(err, &uo))
		is.True(uo.LeftAlone != "")
		is.True(strings.Contains(err.Error(), "paperclip.io/run-id"))
		is.True(strings.Contains(err.Error(), "left alone"))
		is.Equal(len(deletes(f.dyn)), 0)
		_, gerr := f.dyn.Resource(jobsGVR).Namespace("ns1").Get(context.Background(), name, metav1.GetOptions{})
		is.NoErr(gerr)
	})

	t.Run("owner differs", func(t *testing.T) {
		is := is.New(t)
		f := newFixture(t, "standard-job")
		name := f.runName()
		w := f.create(t, f.file(t, "job"), nil)
		// Another Secret of that name with our labels but another owner.
		other := another("v1", "Secret", name+"-env", w.GetLabels())
		other.SetOwnerReferences([]metav1.OwnerReference{{APIVersion: "batch/v1", Kind: "Job", Name: name, UID: "uid-someone-else"}})
		is.NoErr(f.dyn.Tracker().Create(secretsGVR, other, "ns1"))
		failCreate(f.dyn, "secrets", timeout)

		_, err := f.e.Create(context.Background(), f.file(t, "secret"), "ns1", f.values, w)
		var uo *engine.UnknownOutcomeError
		is.True(errors.As(err, &uo))
		is.True(strings.Contains(err.Error(), "not owned by UID "+string(w.GetUID())))
		is.Equal(len(deletes(f.dyn)), 0)
	})

	t.Run("owned run object is deleted", func(t *testing.T) {
		is := is.New(t)
		f := newFixture(t, "standard-job")
		name := f.runName()
		w := f.create(t, f.file(t, "job"), nil)
		createThenFail(f.dyn, "secrets", timeout)
		_, err := f.e.Create(context.Background(), f.file(t, "secret"), "ns1", f.values, w)
		var uo *engine.UnknownOutcomeError
		is.True(errors.As(err, &uo))
		is.True(uo.Deleted)
		is.True(strings.Contains(err.Error(), "Secret ns1/"+name+"-env"))
		_, gerr := f.dyn.Resource(secretsGVR).Namespace("ns1").Get(context.Background(), name+"-env", metav1.GetOptions{})
		is.True(apierrors.IsNotFound(gerr))
	})
}

// When the read-back fails too, the error says that the object could not
// be cleaned up and names it, so an operator can.
func TestCreateUnknownOutcomeCleanupFails(t *testing.T) {
	is := is.New(t)
	f := newFixture(t, "standard-job")
	name := f.runName()
	createThenFail(f.dyn, "jobs", context.DeadlineExceeded)
	f.dyn.PrependReactor("get", "jobs", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, &url.Error{Op: "Get", URL: "https://api", Err: syscall.ECONNREFUSED}
	})
	_, err := f.e.Create(context.Background(), f.file(t, "job"), "ns1", f.values, nil)
	var uo *engine.UnknownOutcomeError
	is.True(errors.As(err, &uo))
	is.True(uo.CleanupErr != nil)
	msg := err.Error()
	is.True(strings.Contains(msg, "could not be cleaned up"))
	is.True(strings.Contains(msg, "delete it by hand"))
	is.True(strings.Contains(msg, "Job ns1/"+name))
	is.True(!apierrors.IsNotFound(err))
}

// A definite answer (the name is taken) is returned as it is: no read-back,
// no delete.
func TestCreateDefiniteErrorIsNotCleanedUp(t *testing.T) {
	is := is.New(t)
	f := newFixture(t, "standard-job")
	job := f.file(t, "job")
	f.create(t, job, nil)
	f.dyn.ClearActions()
	_, err := f.e.Create(context.Background(), job, "ns1", f.values, nil)
	is.True(apierrors.IsAlreadyExists(err))
	var uo *engine.UnknownOutcomeError
	is.True(!errors.As(err, &uo))
	for _, a := range f.dyn.Actions() {
		if a.GetVerb() != "create" {
			t.Errorf("unexpected %s after a definite error", a.GetVerb())
		}
	}
}
