package plugin

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/matryer/is"
	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/paperclip-k8s/paperclip-k8s/engine"
	"github.com/paperclip-k8s/paperclip-k8s/engine/enginetest"
	"github.com/paperclip-k8s/paperclip-k8s/engine/resource"
	"github.com/paperclip-k8s/paperclip-k8s/plugin/policy"
	"github.com/paperclip-k8s/paperclip-k8s/plugin/rpc"
)

// The hooks' decisions, in process: a Provider whose cluster is
// engine/enginetest's fake (clusters.fixed) and a fake clientset that
// answers who the provider is and its access reviews. What Kubernetes
// enforces (garbage collection, admission, RBAC, field ownership) is
// tested on the real control plane (cmd/paperclip-k8s, e2e).

// hookT0 is the provider's clock in these tests.
var hookT0 = time.Date(2026, 11, 27, 5, 0, 0, 0, time.UTC)

type fakeCluster struct {
	p   *Provider
	cl  *cluster
	e   *engine.Engine
	dyn *dynfake.FakeDynamicClient
	// denied lists the access reviews answered "not allowed", as
	// verb/resource[/subresource] in namespace ("" cluster-wide).
	mu     sync.Mutex
	denied map[string]bool
}

// fakeProvider is a provider over the shipped data files whose every
// config gets one cluster over the fake clients.
func fakeProvider(t *testing.T) *fakeCluster {
	t.Helper()
	p, err := New(slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	p.Getenv = func(string) string { return "" }
	p.Now = func() time.Time { return hookT0 }
	e, dyn := enginetest.New(t, p.Catalog)
	f := &fakeCluster{p: p, e: e, dyn: dyn, denied: map[string]bool{}}
	kube := fake.NewClientset()
	kube.PrependReactor("create", "selfsubjectreviews", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, &authnv1.SelfSubjectReview{Status: authnv1.SelfSubjectReviewStatus{UserInfo: authnv1.UserInfo{Username: "system:serviceaccount:paperclip:paperclip-k8s"}}}, nil
	})
	kube.PrependReactor("create", "selfsubjectaccessreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		r := a.(k8stesting.CreateAction).GetObject().(*authzv1.SelfSubjectAccessReview).DeepCopy()
		ra := r.Spec.ResourceAttributes
		f.mu.Lock()
		r.Status.Allowed = !f.denied[reviewKey(ra.Verb, ra.Resource, ra.Subresource, ra.Namespace)]
		f.mu.Unlock()
		return true, r, nil
	})
	f.cl = &cluster{kube: kube, engine: e}
	p.clusters.fixed = f.cl
	return f
}

func reviewKey(verb, res, sub, ns string) string {
	if sub != "" {
		res += "/" + sub
	}
	return verb + " " + res + " in " + ns
}

// hookConfig is a sandbox backend in standard egress mode.
func hookConfig() map[string]any {
	return map[string]any{"inCluster": true, "backend": "sandbox", "egressMode": "standard",
		"namespacePrefix": "paperclip-", "sandboxLifetimeSec": 3600, "reusableLeaseIdleSec": 300}
}

func acquireParams(company string) AcquireParams {
	return AcquireParams{
		BaseParams: BaseParams{CompanyID: company, EnvironmentID: "env-1", Config: hookConfig()},
		RunID:      "run-1", AgentID: "agent-1",
		// A task grant: the run gets its own scoped NetworkPolicy too.
		ExecutionWorkspaceSettings: map[string]any{"networkEgress": map[string]any{"allowCidrs": []any{"203.0.113.0/24"}}},
	}
}

func (f *fakeCluster) backend(t *testing.T) *resource.Resource {
	t.Helper()
	s, err := f.p.backend("sandbox")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// workload reads a lease's workload from the fake (nil when it is gone).
func (f *fakeCluster) workload(t *testing.T, l Lease) *unstructured.Unstructured {
	t.Helper()
	m := metadataFrom(l.Metadata)
	w, err := f.e.Get(context.Background(), engine.Ref{Resource: f.backend(t), Namespace: m.Namespace, Name: m.WorkloadName})
	if engine.IsGone(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func (f *fakeCluster) acquire(t *testing.T) Lease {
	t.Helper()
	l, err := f.p.AcquireLease(context.Background(), acquireParams("acme"))
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func leaseParams(l Lease) LeaseParams {
	meta := map[string]any{}
	for k, v := range l.Metadata {
		meta[k] = v
	}
	return LeaseParams{BaseParams: BaseParams{CompanyID: "acme", EnvironmentID: "env-1", Config: hookConfig()},
		ProviderLeaseID: l.ProviderLeaseID, LeaseMetadata: meta}
}

func deadlineOf(t *testing.T, f *fakeCluster, w *unstructured.Unstructured) time.Time {
	t.Helper()
	d, ok := f.backend(t).Deadline(w)
	if !ok {
		t.Fatalf("%s has no deadline at %s", w.GetName(), f.backend(t).Backend.DeadlinePath)
	}
	return d
}

// Acquire claims the tenant namespace, creates the workload with the run's
// labels and deadline, and its run objects owned by it; the lease says
// where they are.
func TestAcquireInProcess(t *testing.T) {
	is := is.New(t)
	f := fakeProvider(t)
	l := f.acquire(t)
	is.True(l.ProviderLeaseID != nil && policy.IsRunName(*l.ProviderLeaseID))
	m := metadataFrom(l.Metadata)
	is.Equal(m.Namespace, "paperclip-acme")
	is.Equal(m.Backend, "sandbox")
	is.Equal(m.WorkloadName, *l.ProviderLeaseID)
	is.Equal(m.Phase, "Pending")
	is.Equal(m.NativeFileSyncUnsupported, false) // sandbox runs commands through exec
	want := hookT0.Add(time.Hour).UTC().Format(time.RFC3339)
	is.Equal(m.ExpiresAt, want) // sandboxLifetimeSec from the provider's clock
	is.Equal(*l.ExpiresAt, want)

	w := f.workload(t, l)
	is.True(w != nil)
	is.Equal(string(w.GetUID()), m.WorkloadUID)
	is.Equal(w.GetLabels()[policy.LabelCompanyID], policy.LabelValue("acme"))
	is.Equal(w.GetLabels()[policy.LabelManagedBy], policy.ManagedByValue)
	is.Equal(w.GetLabels()[policy.LabelEnvironmentID], policy.LabelValue("env-1"))
	is.Equal(deadlineOf(t, f, w).UTC().Format(time.RFC3339), want)

	// The namespace is the company's, created by the claim with its labels.
	nsSpec, _ := f.p.Catalog.Get("namespace")
	ns, err := f.e.Get(context.Background(), engine.Ref{Resource: nsSpec, Name: m.Namespace})
	is.NoErr(err)
	is.Equal(ns.GetLabels()[policy.LabelCompanyID], policy.LabelValue("acme"))

	// The run objects: the Secret and the scoped policy of the task grant,
	// each owned by the workload.
	is.Equal(len(m.RunObjects), 2)
	is.True(m.ScopedNetworkPolicyName != "")
	for _, ro := range m.RunObjects {
		specName, name, _ := strings.Cut(ro, "/")
		s, ok := f.p.Catalog.Get(specName)
		is.True(ok)
		o, err := f.e.Get(context.Background(), engine.Ref{Resource: s, Namespace: m.Namespace, Name: name})
		is.NoErr(err)
		owners := o.GetOwnerReferences()
		is.Equal(len(owners), 1)
		is.Equal(string(owners[0].UID), m.WorkloadUID)
	}
	is.True(strings.Contains(strings.Join(m.RunObjects, " "), "secret/"+m.SecretName))
}

// A run object that cannot be created undoes the acquire: the workload and
// the run objects already created are deleted, and the error says so.
func TestAcquireUndoesAFailedRunObject(t *testing.T) {
	is := is.New(t)
	f := fakeProvider(t)
	var mu sync.Mutex
	var created []*unstructured.Unstructured
	f.dyn.PrependReactor("create", "*", func(a k8stesting.Action) (bool, runtime.Object, error) {
		o := a.(k8stesting.CreateAction).GetObject().(*unstructured.Unstructured)
		if a.GetResource().Resource == "secrets" {
			return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "secrets"}, o.GetName(), errFake)
		}
		if o.GetLabels()[policy.LabelRunID] != "" {
			mu.Lock()
			created = append(created, o.DeepCopy())
			mu.Unlock()
		}
		return false, nil, nil
	})
	_, err := f.p.AcquireLease(context.Background(), acquireParams("acme"))
	is.True(err != nil)
	msg := err.Error()
	for _, want := range []string{"acquiring the lease failed", "secrets", "was deleted", "Sandbox paperclip-acme/pc-"} {
		if !strings.Contains(msg, want) {
			t.Errorf("the error does not say %q: %s", want, msg)
		}
	}
	// The workload and the scoped policy were created, then deleted.
	kinds := map[string]bool{}
	for _, o := range created {
		kinds[o.GetKind()] = true
		gvr := schema.GroupVersionResource{Group: "agents.x-k8s.io", Version: "v1beta1", Resource: "sandboxes"}
		if o.GetKind() == "NetworkPolicy" {
			gvr = schema.GroupVersionResource{Group: "networking.k8s.io", Version: "v1", Resource: "networkpolicies"}
		}
		_, err := f.dyn.Resource(gvr).Namespace(o.GetNamespace()).Get(context.Background(), o.GetName(), metav1.GetOptions{})
		if !apierrors.IsNotFound(err) {
			t.Errorf("%s %s was not deleted by the undo (%v)", o.GetKind(), o.GetName(), err)
		}
	}
	is.Equal(kinds, map[string]bool{"Sandbox": true, "NetworkPolicy": true})
}

var errFake = fakeErr("the test refuses it")

type fakeErr string

func (e fakeErr) Error() string { return string(e) }

// fakeHost is the host's side of a real rpc.Conn: it answers the worker's
// requests (issues.get) as paperclip-server does, from its issues, and
// records them.
type fakeHost struct {
	mu     sync.Mutex
	issues map[string]map[string]any // by id
	refuse *rpc.Error                // when set, the answer to every request
	calls  []hostCall
}

type hostCall struct {
	Method     string
	Params     map[string]any
	Invocation string
}

// hostContext returns a fake host and a context carrying the worker's
// connection to it, inside an invocation of company acme (as a hook's
// context is).
func hostContext(t *testing.T) (*fakeHost, context.Context) {
	t.Helper()
	hostR, workerW := io.Pipe()
	workerR, hostW := io.Pipe()
	conn := rpc.NewConn(workerR, workerW, rpc.HandlerFunc(func(context.Context, string, json.RawMessage) (any, error) { return nil, nil }),
		rpc.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = conn.Serve(ctx)
	}()
	h := &fakeHost{issues: map[string]map[string]any{}}
	go func() {
		dec := json.NewDecoder(hostR)
		for {
			var m struct {
				ID         json.RawMessage `json:"id"`
				Method     string          `json:"method"`
				Params     map[string]any  `json:"params"`
				Invocation string          `json:"paperclipInvocationId"`
			}
			if dec.Decode(&m) != nil {
				return
			}
			reply := map[string]any{"jsonrpc": "2.0", "id": m.ID}
			h.mu.Lock()
			h.calls = append(h.calls, hostCall{Method: m.Method, Params: m.Params, Invocation: m.Invocation})
			switch {
			case h.refuse != nil:
				reply["error"] = h.refuse
			case m.Method == methodIssuesGet:
				id, _ := m.Params["issueId"].(string)
				if issue, ok := h.issues[id]; ok {
					reply["result"] = issue
				} else {
					reply["result"] = nil
				}
			default:
				reply["error"] = &rpc.Error{Code: rpc.CodeMethodNotFound, Message: "method not found: " + m.Method}
			}
			h.mu.Unlock()
			b, _ := json.Marshal(reply)
			if _, err := hostW.Write(append(b, '\n')); err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		_ = hostW.Close()
		_ = hostR.Close()
		<-served
	})
	ctx = rpc.WithConn(ctx, conn)
	return h, rpc.WithInvocation(ctx, rpc.Invocation{ID: "inv-1", Scope: rpc.InvocationScope{CompanyID: "acme"}})
}

func (h *fakeHost) setIssue(id string, issue map[string]any) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.issues[id] = issue
}

func (h *fakeHost) takeCalls() []hostCall {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := h.calls
	h.calls = nil
	return out
}

// reusable makes lp the release of a lease the host published for reuse
// (reuseLease, the reusableSandboxLease scope of execution workspace ws-1)
// on issue issue-1.
func reusable(lp LeaseParams) LeaseParams {
	lp.Config["reuseLease"] = true
	lp.LeaseMetadata["reusableSandboxLease"] = map[string]any{"executionWorkspaceId": "ws-1", "agentId": "agent-1"}
	lp.IssueID = strPtr("issue-1")
	return lp
}

// reuseIssue is issue-1 of company acme, open, bound to ws-1 and asking to
// reuse it: the host's next run on it resumes the lease.
func reusingIssue() map[string]any {
	return map[string]any{"id": "issue-1", "companyId": "acme", "status": "in_progress",
		"executionWorkspaceId": "ws-1", "executionWorkspacePreference": "reuse_existing"}
}

// A lease the host will resume (its issue asks to reuse the lease's
// execution workspace) is not deleted at release: its deadline moves to
// reusableLeaseIdleSec from now, and a resume gives it back its own;
// cancelActiveWork deletes it.
func TestReleaseKeepsALeaseForReuse(t *testing.T) {
	is := is.New(t)
	f := fakeProvider(t)
	host, ctx := hostContext(t)
	host.setIssue("issue-1", reusingIssue())
	l := f.acquire(t)

	rc, err := f.p.ReleaseLease(ctx, reusable(leaseParams(l)))
	is.NoErr(err)
	is.True(rc == nil) // nothing stopped: no termination receipt
	w := f.workload(t, l)
	is.True(w != nil)
	is.Equal(deadlineOf(t, f, w), hookT0.Add(300*time.Second)) // reusableLeaseIdleSec
	// The release asked the host for the lease's issue, in its invocation.
	is.Equal(host.takeCalls(), []hostCall{{Method: "issues.get", Params: map[string]any{"issueId": "issue-1", "companyId": "acme"}, Invocation: "inv-1"}})

	// The next run resumes it: its own deadline is back.
	r, err := f.p.ResumeLease(context.Background(), leaseParams(l))
	is.NoErr(err)
	is.Equal(*r.ProviderLeaseID, *l.ProviderLeaseID)
	is.Equal(deadlineOf(t, f, f.workload(t, l)), hookT0.Add(time.Hour))

	cancel := reusable(leaseParams(l))
	cancel.CancelActiveWork = true
	rc, err = f.p.ReleaseLease(ctx, cancel)
	is.NoErr(err)
	is.Equal(rc.State, "stopped")
	is.True(f.workload(t, l) == nil)
	is.Equal(len(host.takeCalls()), 0) // nothing to ask: it is deleted anyway
}

// A lease the host publishes for reuse but will never resume is deleted at
// release, like any other: the host stores every lease of reuseLease: true
// the same way and sends the same release, so the release asks for the
// lease's issue and keeps the workload only when a later run will come back
// to its execution workspace. Whatever else the host says, or when it says
// nothing, the workload is deleted, and the log says why.
func TestReleaseDeletesALeaseTheHostWillNotResume(t *testing.T) {
	for _, c := range []struct {
		name   string
		params func(LeaseParams) LeaseParams
		issue  map[string]any // issue-1 as the host knows it; nil: unknown
		refuse *rpc.Error
		noHost bool
		asks   bool   // the release asks the host
		why    string // in the log line of the release
	}{
		{name: "no reusableSandboxLease scope (a run without an execution workspace)", params: func(lp LeaseParams) LeaseParams {
			lp = reusable(lp)
			delete(lp.LeaseMetadata, "reusableSandboxLease")
			return lp
		}, issue: reusingIssue()},
		{name: "reuseLease off", params: func(lp LeaseParams) LeaseParams {
			lp = reusable(lp)
			lp.Config["reuseLease"] = false
			return lp
		}, issue: reusingIssue()},
		{name: "no issue", params: func(lp LeaseParams) LeaseParams {
			lp = reusable(lp)
			lp.IssueID = nil
			return lp
		}, issue: reusingIssue(), why: "names no issue"},
		{name: "the issue does not ask to reuse its workspace (isolated workspaces on, no preference)", issue: func() map[string]any {
			i := reusingIssue()
			i["executionWorkspacePreference"] = nil
			return i
		}(), asks: true, why: `executionWorkspacePreference null, want \"reuse_existing\"`},
		{name: "the issue is bound to no workspace (isolated workspaces off: the host drops both fields)", issue: func() map[string]any {
			i := reusingIssue()
			i["executionWorkspaceId"], i["executionWorkspacePreference"] = nil, nil
			return i
		}(), asks: true, why: "does not ask to reuse"},
		{name: "the issue reuses another workspace", issue: func() map[string]any {
			i := reusingIssue()
			i["executionWorkspaceId"] = "ws-2"
			return i
		}(), asks: true, why: `bound to execution workspace \"ws-2\", not the lease's ws-1`},
		{name: "the issue is done", issue: func() map[string]any {
			i := reusingIssue()
			i["status"] = "done"
			return i
		}(), asks: true, why: "issue issue-1 is done"},
		{name: "the issue is another company's", issue: func() map[string]any {
			i := reusingIssue()
			i["companyId"] = "other"
			return i
		}(), asks: true, why: "knows no issue issue-1 of company acme"},
		{name: "the host knows no such issue", asks: true, why: "knows no issue issue-1"},
		{name: "capability issues.read denied", issue: reusingIssue(), refuse: &rpc.Error{Code: rpc.CodeCapabilityDenied, Message: "missing capability issues.read"},
			asks: true, why: "lacks the capability issues.read; reinstall the package"},
		{name: "the host fails", issue: reusingIssue(), refuse: &rpc.Error{Code: rpc.CodeWorkerError, Message: "database unavailable"},
			asks: true, why: "asking the host for issue issue-1 failed: "},
		{name: "no connection to the host", issue: reusingIssue(), noHost: true, why: "asking the host for issue issue-1 failed: "},
	} {
		t.Run(c.name, func(t *testing.T) {
			is := is.New(t)
			f := fakeProvider(t)
			var logs strings.Builder
			var logMu sync.Mutex
			f.p.Log = slog.New(slog.NewTextHandler(writerFunc(func(b []byte) (int, error) {
				logMu.Lock()
				defer logMu.Unlock()
				return logs.Write(b)
			}), nil))
			host, ctx := hostContext(t)
			if c.noHost {
				ctx = context.Background()
			}
			if c.issue != nil {
				host.setIssue("issue-1", c.issue)
			}
			host.refuse = c.refuse
			params := reusable
			if c.params != nil {
				params = c.params
			}
			l := f.acquire(t)
			rc, err := f.p.ReleaseLease(ctx, params(leaseParams(l)))
			is.NoErr(err)
			is.True(rc != nil)
			is.Equal(rc.State, "stopped")
			is.True(f.workload(t, l) == nil) // deleted
			is.Equal(len(host.takeCalls()), map[bool]int{true: 1}[c.asks])
			logMu.Lock()
			defer logMu.Unlock()
			if !strings.Contains(logs.String(), `msg="lease stopped"`) || !strings.Contains(logs.String(), c.why) {
				t.Fatalf("the log does not say the lease was stopped because %q:\n%s", c.why, logs.String())
			}
		})
	}
}

type writerFunc func([]byte) (int, error)

func (w writerFunc) Write(b []byte) (int, error) { return w(b) }

// addPod creates the pod of a workload (named after it, controlled by it),
// as the Sandbox controller would, with a Ready status.
func (f *fakeCluster) addPod(t *testing.T, w *unstructured.Unstructured) *unstructured.Unstructured {
	t.Helper()
	podSpec, _ := f.p.Catalog.Pod()
	r, err := f.e.Resolve(podSpec)
	if err != nil {
		t.Fatal(err)
	}
	pod := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "Pod"}}
	pod.SetName(w.GetName())
	pod.SetNamespace(w.GetNamespace())
	ctrl := true
	pod.SetOwnerReferences([]metav1.OwnerReference{{APIVersion: w.GetAPIVersion(), Kind: w.GetKind(), Name: w.GetName(), UID: w.GetUID(), Controller: &ctrl}})
	got, err := f.dyn.Resource(r.GVR).Namespace(w.GetNamespace()).Create(context.Background(), pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return enginetest.SetStatus(t, f.e, got, podSpec, map[string]any{"phase": "Running",
		"conditions": []any{map[string]any{"type": "Ready", "status": "True"}}})
}

func readyCondition(status, reason string) map[string]any {
	return map[string]any{"conditions": []any{
		map[string]any{"type": "Ready", "status": status, "reason": reason, "message": reason},
	}}
}

// Resume answers "expired" when the lease's workspace is lost, and the
// same lease, pinned to its pod, when it is there.
func TestResumeBranches(t *testing.T) {
	expired := func(t *testing.T, l Lease, err error, why string) {
		t.Helper()
		if err != nil {
			t.Fatalf("resume: %v", err)
		}
		if l.ProviderLeaseID != nil || l.Metadata["expired"] != true {
			t.Fatalf("resume did not expire the lease: %+v", l)
		}
		if reason, _ := l.Metadata["reason"].(string); !strings.Contains(reason, why) {
			t.Errorf("the reason %q does not say %q", reason, why)
		}
	}
	t.Run("workload gone", func(t *testing.T) {
		f := fakeProvider(t)
		l := f.acquire(t)
		w := f.workload(t, l)
		_, err := f.e.Release(context.Background(), engine.RefOf(f.backend(t), w))
		is.New(t).NoErr(err)
		r, err := f.p.ResumeLease(context.Background(), leaseParams(l))
		expired(t, r, err, w.GetName())
	})
	t.Run("terminal", func(t *testing.T) {
		f := fakeProvider(t)
		l := f.acquire(t)
		enginetest.SetStatus(t, f.e, f.workload(t, l), f.backend(t), readyCondition("False", "SandboxExpired"))
		r, err := f.p.ResumeLease(context.Background(), leaseParams(l))
		expired(t, r, err, "Failed")
	})
	t.Run("pod replaced", func(t *testing.T) {
		f := fakeProvider(t)
		l := f.acquire(t)
		w := enginetest.SetStatus(t, f.e, f.workload(t, l), f.backend(t), readyCondition("True", "DependenciesReady"))
		f.addPod(t, w)
		lp := leaseParams(l)
		lp.LeaseMetadata["podUid"] = "uid-of-the-first-pod"
		r, err := f.p.ResumeLease(context.Background(), lp)
		expired(t, r, err, "was replaced (pod UID uid-of-the-first-pod is gone)")
	})
	t.Run("pinned pod gone", func(t *testing.T) {
		f := fakeProvider(t)
		l := f.acquire(t)
		enginetest.SetStatus(t, f.e, f.workload(t, l), f.backend(t), readyCondition("False", "DependenciesNotReady"))
		lp := leaseParams(l)
		lp.LeaseMetadata["podUid"] = "uid-of-the-first-pod"
		r, err := f.p.ResumeLease(context.Background(), lp)
		expired(t, r, err, "is gone (pod UID uid-of-the-first-pod)")
	})
	t.Run("live", func(t *testing.T) {
		is := is.New(t)
		f := fakeProvider(t)
		l := f.acquire(t)
		w := enginetest.SetStatus(t, f.e, f.workload(t, l), f.backend(t), readyCondition("True", "DependenciesReady"))
		pod := f.addPod(t, w)
		lp := leaseParams(l)
		lp.LeaseMetadata["podUid"] = string(pod.GetUID())
		r, err := f.p.ResumeLease(context.Background(), lp)
		is.NoErr(err)
		is.Equal(*r.ProviderLeaseID, *l.ProviderLeaseID)
		m := metadataFrom(r.Metadata)
		is.Equal(m.PodUID, string(pod.GetUID()))
		is.Equal(m.PodName, pod.GetName())
		is.Equal(m.Phase, "Ready")
		is.True(m.ResumedLease)
		is.Equal(*r.ExpiresAt, *l.ExpiresAt)
	})
}

// A lease's metadata never widens what a hook may touch: a namespace other
// than the company's, or a workload without the company's label, is
// refused and left as it is.
func TestLeaseOwnershipRefusals(t *testing.T) {
	t.Run("namespace mismatch", func(t *testing.T) {
		is := is.New(t)
		f := fakeProvider(t)
		l := f.acquire(t)
		lp := leaseParams(l)
		lp.LeaseMetadata["namespace"] = "paperclip-other"
		for name, call := range map[string]func() error{
			"resume":  func() error { _, err := f.p.ResumeLease(context.Background(), lp); return err },
			"release": func() error { _, err := f.p.ReleaseLease(context.Background(), lp); return err },
			"destroy": func() error { _, err := f.p.DestroyLease(context.Background(), lp); return err },
		} {
			err := call()
			if err == nil || !strings.Contains(err.Error(), `names namespace "paperclip-other"`) || !strings.Contains(err.Error(), "nothing was touched") {
				t.Errorf("%s: %v", name, err)
			}
		}
		is.True(f.workload(t, l) != nil)
	})
	t.Run("wrong company label", func(t *testing.T) {
		is := is.New(t)
		f := fakeProvider(t)
		l := f.acquire(t)
		w := f.workload(t, l)
		labels := w.GetLabels()
		labels[policy.LabelCompanyID] = policy.LabelValue("other")
		w.SetLabels(labels)
		r, err := f.e.Resolve(f.backend(t))
		is.NoErr(err)
		_, err = f.dyn.Resource(r.GVR).Namespace(w.GetNamespace()).Update(context.Background(), w, metav1.UpdateOptions{})
		is.NoErr(err)
		lp := leaseParams(l)
		for name, call := range map[string]func() error{
			"resume":  func() error { _, err := f.p.ResumeLease(context.Background(), lp); return err },
			"release": func() error { _, err := f.p.ReleaseLease(context.Background(), lp); return err },
		} {
			err := call()
			if err == nil || !strings.Contains(err.Error(), "is not a workload of this company") || !strings.Contains(err.Error(), policy.LabelCompanyID) {
				t.Errorf("%s: %v", name, err)
			}
		}
		is.True(f.workload(t, l) != nil)
	})
}

// The probe's access reviews: a cluster-wide permission the provider lacks
// is an error; a namespaced one is a note while the provider's RoleBinding
// is not in the tenant namespace yet (acquire applies it), an error once
// it is.
func TestProbeAccessReviews(t *testing.T) {
	is := is.New(t)
	f := fakeProvider(t)
	cfg, err := f.p.parseConfig(hookConfig())
	is.NoErr(err)
	ns := "paperclip-acme"
	diags := func() map[string][]Diagnostic {
		out := map[string][]Diagnostic{}
		for _, d := range f.p.accessReviews(context.Background(), f.cl, cfg, ns) {
			out[d.Code] = append(out[d.Code], d)
		}
		return out
	}
	is.Equal(len(diags()), 0) // everything allowed: nothing to say

	f.denied[reviewKey("create", "namespaces", "", "")] = true
	f.denied[reviewKey("create", "pods", "exec", ns)] = true
	got := diags()
	is.Equal(len(got["forbidden"]), 1)
	is.True(strings.Contains(got["forbidden"][0].Message, "missing permission: create namespaces cluster-wide"))
	is.True(strings.Contains(got["forbidden"][0].Message, ClusterRoleName))
	is.Equal(len(got["tenant-permissions-pending"]), 1)
	is.True(strings.Contains(got["tenant-permissions-pending"][0].Message, "namespace "+ns))

	// Once acquire has applied the tenant (with the provider's
	// RoleBinding), the missing namespaced permission is an error.
	f.acquire(t)
	got = diags()
	is.Equal(len(got["tenant-permissions-pending"]), 0)
	is.Equal(len(got["forbidden"]), 2)
	var exec Diagnostic
	for _, d := range got["forbidden"] {
		if d.Details["subresource"] == "exec" {
			exec = d
		}
	}
	is.True(strings.Contains(exec.Message, "missing permission: create pods/exec in namespace "+ns))
	is.True(strings.Contains(exec.Message, TenantClusterRoleName))
}
