package main

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/paperclip-k8s/paperclip-k8s/internal/devcluster"
)

// The sandboxclaim backend (resources/sandboxclaim.yaml and the tenant's
// SandboxTemplate and SandboxWarmPool) through the built binary, on the
// local control plane with the stand-in extensions controller
// (internal/sandboxctl): the same hooks as the sandbox backend's, plus what
// a warm pool changes.

var (
	gvrClaim    = schema.GroupVersionResource{Group: "extensions.agents.x-k8s.io", Version: "v1beta1", Resource: "sandboxclaims"}
	gvrPool     = schema.GroupVersionResource{Group: "extensions.agents.x-k8s.io", Version: "v1beta1", Resource: "sandboxwarmpools"}
	gvrTemplate = schema.GroupVersionResource{Group: "extensions.agents.x-k8s.io", Version: "v1beta1", Resource: "sandboxtemplates"}
)

// runPodLabel is the label the claim asks the controller to put on the pod
// it hands over (backend.runPodLabel of resources/sandboxclaim.yaml).
const runPodLabel = "sandbox.users.io/paperclip-run-id"

// waitObject watches one object until cond holds (or it is deleted, when
// cond accepts nil) and returns it; d bounds the wait.
func (h *hooks) waitObject(gvr schema.GroupVersionResource, ns, name string, d time.Duration, what string, cond func(*unstructured.Unstructured) bool) *unstructured.Unstructured {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	got, err := devcluster.WaitObject(ctx, h.dyn(), gvr, ns, name, cond)
	if err != nil {
		h.t.Fatalf("%s (%s %s/%s): %v", what, gvr.Resource, ns, name, err)
	}
	return got
}

// claimSandbox is the Sandbox a claim is bound to (status.sandbox.name).
func claimSandbox(claim *unstructured.Unstructured) string {
	s, _, _ := unstructured.NestedString(claim.Object, "status", "sandbox", "name")
	return s
}

// waitPoolReady waits until the tenant's pool has n ready members.
func (h *hooks) waitPoolReady(n int64) {
	h.t.Helper()
	h.waitObject(gvrPool, h.namespace(), "paperclip-agent", 60*time.Second, fmt.Sprintf("the warm pool has %d ready pods", n), func(u *unstructured.Unstructured) bool {
		if u == nil {
			return false
		}
		r, _, _ := unstructured.NestedInt64(u.Object, "status", "readyReplicas")
		return r == n
	})
}

// claimPod is the pod a lease's claim reached, through its Sandbox.
func (h *hooks) claimPod(l lease) (claim, sandbox *unstructured.Unstructured, pod *corev1.Pod) {
	h.t.Helper()
	ctx := context.Background()
	ns := l.meta("namespace")
	claim, err := h.dyn().Resource(gvrClaim).Namespace(ns).Get(ctx, l.id(), metav1.GetOptions{})
	if err != nil {
		h.t.Fatal(err)
	}
	if sandbox, err = h.dyn().Resource(gvrSandbox).Namespace(ns).Get(ctx, claimSandbox(claim), metav1.GetOptions{}); err != nil {
		h.t.Fatal(err)
	}
	if pod, err = h.kube().CoreV1().Pods(ns).Get(ctx, sandbox.GetAnnotations()["agents.x-k8s.io/pod-name"], metav1.GetOptions{}); err != nil {
		h.t.Fatal(err)
	}
	return claim, sandbox, pod
}

// controller is the UID of o's controller ownerReference.
func controller(refs []metav1.OwnerReference) string {
	for _, r := range refs {
		if r.Controller != nil && *r.Controller {
			return string(r.UID)
		}
	}
	return ""
}

// waitClaimRunGone waits until the claim, its Sandbox and pod, the run
// Secret and the scoped NetworkPolicy are all gone.
func (h *hooks) waitClaimRunGone(l lease, sandbox, pod string) {
	h.t.Helper()
	ns, id := l.meta("namespace"), l.id()
	for _, o := range []struct {
		gvr  schema.GroupVersionResource
		name string
	}{{gvrClaim, id}, {gvrSandbox, sandbox}, {schema.GroupVersionResource{Version: "v1", Resource: "pods"}, pod},
		{schema.GroupVersionResource{Version: "v1", Resource: "secrets"}, id + "-env"}, {gvrNetworkPolicy, id + "-egress"}} {
		h.waitObject(o.gvr, ns, o.name, 60*time.Second, "deleted with the lease", func(u *unstructured.Unstructured) bool { return u == nil })
	}
}

// expiredLease resumes l and fails unless the lease comes back expired.
func (h *hooks) expiredLease(l lease, why string) string {
	h.t.Helper()
	m, _ := h.w.call("environmentResumeLease", h.leaseParams(l))
	if m.err != nil {
		h.t.Fatalf("%s: resume failed: %v", why, m.err)
	}
	var got lease
	if err := json.Unmarshal(m.result, &got); err != nil {
		h.t.Fatal(err)
	}
	if got.ProviderLeaseID != nil || got.Metadata["expired"] != true || got.meta("reason") == "" {
		h.t.Fatalf("%s: want an expired lease with a reason, got %s", why, m.result)
	}
	return got.meta("reason")
}

func TestWarmPoolHooks(t *testing.T) {
	is := is.New(t)
	root := filepath.Join(t.TempDir(), "ws")
	h := newHooks(t, "sandboxclaim", map[string]any{"warmPoolSize": 2, "workspacePath": root})
	ctx := context.Background()
	ns := h.namespace()

	// The first acquire applies the tenant with its template and pool.
	first := h.acquire(nil)
	tpl, err := h.dyn().Resource(gvrTemplate).Namespace(ns).Get(ctx, "paperclip-agent", metav1.GetOptions{})
	is.NoErr(err)
	is.Equal(tpl.GetLabels()["paperclip.io/company-id"], h.company)
	mgmt, _, _ := unstructured.NestedString(tpl.Object, "spec", "networkPolicyManagement")
	is.Equal(mgmt, "Unmanaged") // the tenant's own policies govern the pods
	tplLabels, _, _ := unstructured.NestedStringMap(tpl.Object, "spec", "podTemplate", "metadata", "labels")
	is.Equal(tplLabels["paperclip.io/role"], "agent")
	_, hasRun := tplLabels["paperclip.io/run-id"]
	is.True(!hasRun) // nothing of a run in a pod made before it
	pool, err := h.dyn().Resource(gvrPool).Namespace(ns).Get(ctx, "paperclip-agent", metav1.GetOptions{})
	is.NoErr(err)
	replicas, _, _ := unstructured.NestedInt64(pool.Object, "spec", "replicas")
	is.Equal(replicas, int64(2))
	h.w.mustCall("environmentReleaseLease", h.leaseParams(first), nil)
	h.waitPoolReady(2)

	// A run takes a warm pod.
	before := time.Now()
	l := h.acquire(nil)
	is.Equal(l.meta("backend"), "sandboxclaim")
	is.Equal(l.meta("workloadKind"), "SandboxClaim")
	is.Equal(l.Metadata["nativeFileSyncUnsupported"], false)
	exp, err := time.Parse(time.RFC3339, *l.ExpiresAt)
	is.NoErr(err)
	if d := exp.Sub(before.Add(86400 * time.Second)); d < -2*time.Second || d > 2*time.Second {
		t.Errorf("expiresAt %s is not acquire time + 1 day", *l.ExpiresAt)
	}
	claim, err := h.dyn().Resource(gvrClaim).Namespace(ns).Get(ctx, l.id(), metav1.GetOptions{})
	is.NoErr(err)
	is.Equal(string(claim.GetUID()), l.meta("workloadUid"))
	st, _, _ := unstructured.NestedString(claim.Object, "spec", "lifecycle", "shutdownTime")
	is.Equal(st, *l.ExpiresAt) // the cluster ends the run at the lease's expiry
	pol, _, _ := unstructured.NestedString(claim.Object, "spec", "lifecycle", "shutdownPolicy")
	is.Equal(pol, "Delete")
	is.True(claim.GetLabels()["paperclip.io/run-id"] != "") // the run's labels, also on a standby taken
	// The pod's run label is the lease's name: a claim may be made before
	// its run (a standby), when the name is the one value known.
	runID := l.id()
	want, _, _ := unstructured.NestedStringMap(claim.Object, "spec", "additionalPodMetadata", "labels")
	is.Equal(want, map[string]string{runPodLabel: runID})
	sec, err := h.kube().CoreV1().Secrets(ns).Get(ctx, l.id()+"-env", metav1.GetOptions{})
	is.NoErr(err)
	is.Equal(controller(sec.OwnerReferences), string(claim.GetUID()))
	np, err := h.kube().NetworkingV1().NetworkPolicies(ns).Get(ctx, l.id()+"-egress", metav1.GetOptions{})
	is.NoErr(err)
	is.Equal(np.OwnerReferences[0].UID, claim.GetUID())
	is.Equal(np.Spec.PodSelector.MatchLabels, map[string]string{runPodLabel: runID})

	// Realize waits for the claim's pod: a pool member, handed over to the
	// claim in place, labelled for the run (so the scoped policy selects
	// it), reached claim -> Sandbox -> pod with an owner at each hop.
	var rr struct {
		Metadata map[string]any `json:"metadata"`
	}
	h.w.mustCall("environmentRealizeWorkspace", h.with(map[string]any{"lease": l, "workspace": map[string]any{"localPath": "/x"}}), &rr)
	claim, sandbox, pod := h.claimPod(l)
	is.Equal(rr.Metadata["podName"], pod.Name)
	is.True(strings.HasPrefix(sandbox.GetName(), "paperclip-agent-")) // a pool member
	is.Equal(sandbox.GetLabels()["agents.x-k8s.io/launch-type"], "warm")
	is.Equal(controller(metaRefs(sandbox)), string(claim.GetUID()))
	is.Equal(controller(pod.OwnerReferences), string(sandbox.GetUID()))
	is.Equal(pod.Labels[runPodLabel], runID)
	is.Equal(pod.Labels["paperclip.io/role"], "agent")

	// Commands: the run's environment (its Secret, which the warm pod
	// could not mount) comes with each command; the command's own env wins.
	r := h.exec(l, `printf '%s' "$BOOTSTRAP_TOKEN"`, nil)
	is.Equal(r.code(), 0)
	is.Equal(r.Stdout, string(sec.Data["BOOTSTRAP_TOKEN"]))
	is.Equal(len(r.Stdout), 64)
	is.Equal(r.Metadata["podName"], pod.Name)
	r = h.exec(l, `printf '%s|%s' "$BOOTSTRAP_TOKEN" "$PAPERCLIP_EGRESS_POLICY"`, map[string]any{"env": map[string]string{"BOOTSTRAP_TOKEN": "the host's"}})
	is.Equal(r.Stdout, "the host's|"+string(sec.Data["PAPERCLIP_EGRESS_POLICY"]))
	r = h.exec(l, "echo out; echo err >&2; exit 3", nil)
	is.Equal(r.Stdout, "out\n")
	is.True(strings.HasPrefix(r.Stderr, "err\n"))
	is.Equal(r.code(), 3)
	// The first command pinned the pod on the claim.
	claim, _, _ = h.claimPod(l)
	is.Equal(claim.GetAnnotations()["paperclip.io/pod-uid"], string(pod.UID))

	// Native file sync, both ways.
	host := t.TempDir()
	writeFile(t, filepath.Join(host, "in.txt"), []byte("warm\n"), 0o644)
	h.syncFile(l, "environmentSyncIn", "warm-in", filepath.Join(host, "in.txt"), filepath.Join(root, "in.txt"))
	is.Equal(h.exec(l, "cat "+filepath.Join(root, "in.txt"), nil).Stdout, "warm\n")
	h.syncFile(l, "environmentSyncOut", "warm-out", filepath.Join(root, "in.txt"), filepath.Join(host, "out.txt"))
	is.Equal(readString(t, filepath.Join(host, "out.txt")), "warm\n")

	// Resume finds the same pod.
	var live lease
	h.w.mustCall("environmentResumeLease", h.leaseParams(l), &live)
	is.Equal(live.id(), l.id())
	is.Equal(live.Metadata["resumedLease"], true)
	is.Equal(live.meta("phase"), "Ready")
	is.Equal(live.meta("podUid"), string(pod.UID))
	is.Equal(*live.ExpiresAt, *l.ExpiresAt)

	// The pod replaced (the controller recreates it under the same name,
	// new UID): the lease is expired and no command runs in the new pod.
	zero := int64(0)
	is.NoErr(h.kube().CoreV1().Pods(ns).Delete(ctx, pod.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}))
	h.waitObject(schema.GroupVersionResource{Version: "v1", Resource: "pods"}, ns, pod.Name, 60*time.Second, "the controller recreates the pod", func(u *unstructured.Unstructured) bool {
		return u != nil && u.GetUID() != pod.UID
	})
	t.Logf("pod replaced: %s", h.expiredLease(live, "pod replaced"))
	m, _ := h.w.call("environmentExecute", h.execParams(l, "true", nil))
	if m.err == nil || !strings.Contains(m.err.Message, "workspace is lost") {
		t.Fatalf("execute after the pod was replaced: want an error that the workspace is lost, got %s / %v", m.result, m.err)
	}

	// The Sandbox deleted: the claim silently binds another warm Sandbox
	// and stays Ready; the lease must not follow it.
	h.waitPoolReady(2)
	l2 := h.acquire(nil)
	is.Equal(h.exec(l2, "true", nil).code(), 0) // pins the pod
	_, sb2, pod2 := h.claimPod(l2)
	is.NoErr(h.dyn().Resource(gvrSandbox).Namespace(ns).Delete(ctx, sb2.GetName(), metav1.DeleteOptions{}))
	rebound := h.waitObject(gvrClaim, ns, l2.id(), 60*time.Second, "the claim binds another Sandbox", func(u *unstructured.Unstructured) bool {
		return u != nil && claimSandbox(u) != "" && claimSandbox(u) != sb2.GetName()
	})
	t.Logf("claim %s rebound from %s to %s", l2.id(), sb2.GetName(), claimSandbox(rebound))
	t.Logf("Sandbox deleted: %s", h.expiredLease(l2, "Sandbox deleted, claim rebound"))
	m, _ = h.w.call("environmentExecute", h.execParams(l2, "true", nil))
	if m.err == nil {
		t.Fatalf("execute after the claim rebound: ran in another pod than %s (%s)", pod2.Name, m.result)
	}
	t.Logf("execute after the rebind: %s", m.err.Message)

	// Release and destroy delete the claim; its Sandbox, pod, Secret and
	// scoped policy go with it.
	type receipt struct {
		ProviderLeaseID string `json:"providerLeaseId"`
		State           string `json:"state"`
	}
	for _, c := range []struct{ method, state string }{{"environmentReleaseLease", "stopped"}, {"environmentDestroyLease", "destroyed"}} {
		h.waitPoolReady(2)
		l := h.acquire(nil)
		is.Equal(h.exec(l, "true", nil).code(), 0)
		_, sb, pod := h.claimPod(l)
		for range 2 { // idempotent
			var rc receipt
			h.w.mustCall(c.method, h.leaseParams(l), &rc)
			is.Equal(rc, receipt{ProviderLeaseID: l.id(), State: c.state})
		}
		h.waitClaimRunGone(l, sb.GetName(), pod.Name)
	}

	// A run of another adapter than the pool's is refused, naming why.
	e := h.w.callErr("environmentAcquireLease", h.acquireParams(map[string]any{"adapterType": "codex_local"}))
	is.True(strings.Contains(e.Message, `backend "sandboxclaim" cannot serve this run (adapter "codex_local")`))
	is.True(strings.Contains(e.Message, "adapterType"))
}

// metaRefs is the ownerReferences of an unstructured object.
func metaRefs(u *unstructured.Unstructured) []metav1.OwnerReference { return u.GetOwnerReferences() }

// warmPoolSize 0: no pod is kept ready; each claim gets a Sandbox of its
// own (named like the claim), and the run works the same.
func TestWarmPoolColdPath(t *testing.T) {
	is := is.New(t)
	h := newHooks(t, "sandboxclaim", map[string]any{"warmPoolSize": 0})
	ctx := context.Background()
	l := h.acquire(nil)
	pool, err := h.dyn().Resource(gvrPool).Namespace(h.namespace()).Get(ctx, "paperclip-agent", metav1.GetOptions{})
	is.NoErr(err) // a claim needs its pool to exist, even empty
	replicas, found, _ := unstructured.NestedInt64(pool.Object, "spec", "replicas")
	is.True(found)
	is.Equal(replicas, int64(0))
	r := h.exec(l, "echo cold", nil)
	is.Equal(r.code(), 0)
	is.Equal(r.Stdout, "cold\n")
	claim, sandbox, pod := h.claimPod(l)
	is.Equal(claimSandbox(claim), l.id()) // the cold path names the Sandbox like the claim
	is.Equal(sandbox.GetLabels()["agents.x-k8s.io/launch-type"], "cold")
	is.Equal(pod.Labels[runPodLabel], l.id())
	var live lease
	h.w.mustCall("environmentResumeLease", h.leaseParams(l), &live)
	is.Equal(live.meta("podUid"), string(pod.UID))
	h.w.mustCall("environmentReleaseLease", h.leaseParams(l), nil)
	h.waitClaimRunGone(l, sandbox.GetName(), pod.Name)
}

// The probe of a sandboxclaim config: it finds the extension API (and the
// Sandbox API it reaches pods through) and every permission.
func TestWarmPoolProbe(t *testing.T) {
	is := is.New(t)
	h := newHooks(t, "sandboxclaim", nil)
	var pr probeResult
	h.w.mustCall("environmentProbe", h.base(), &pr)
	is.True(pr.OK)
	is.Equal(pr.Metadata["backend"], "sandboxclaim")
	is.Equal(pr.Metadata["backendApiVersion"], "extensions.agents.x-k8s.io/v1beta1")
	for _, d := range pr.Diagnostics {
		if d.Severity == "error" {
			t.Errorf("probe error: %+v", d)
		}
	}
}

// The sandboxclaim backend as a ServiceAccount bound to exactly what
// `paperclip-k8s rbac` prints: every hook works (claims, the tenant's
// template and pool, the Sandbox read on the way to the pod), and the
// admission policy checks the template's pod spec as it checks a
// backend's: a privileged template is refused.
func TestWarmPoolRBAC(t *testing.T) {
	is := is.New(t)
	h := newHooks(t, "sandboxclaim", map[string]any{"warmPoolSize": 1})
	ctx := context.Background()
	kc, saNS := serviceAccountKubeconfig(t, h, "paperclip-provider")
	applyDocs(t, h, rbacFromBinary(t, saNS+"/paperclip-provider"))
	rc, err := clientcmd.RESTConfigFromKubeConfig(kc)
	is.NoErr(err)
	rc.WarningHandler = rest.NoWarnings{}
	asDyn, err := dynamic.NewForConfig(rc)
	is.NoErr(err)
	h.config["kubeconfig"] = string(kc)

	// The authorizer and the policy load what was applied from their
	// informers: the probe says what is missing until they have.
	eventually(t, 30*time.Second, "the probe finds every cluster-wide permission", func() error {
		var pr probeResult
		h.w.mustCall("environmentProbe", h.base(), &pr)
		if !pr.OK {
			return fmt.Errorf("probe: %+v", pr.Diagnostics)
		}
		return nil
	})
	l := h.acquire(nil)
	h.probeClean()
	h.realizeAndExec(l)
	var resumed lease
	h.w.mustCall("environmentResumeLease", h.leaseParams(l), &resumed)
	is.Equal(resumed.id(), l.id())
	_, sb, pod := h.claimPod(l)
	h.w.mustCall("environmentReleaseLease", h.leaseParams(l), nil)
	h.waitClaimRunGone(l, sb.GetName(), pod.Name)
	l2 := h.acquire(nil)
	is.Equal(h.exec(l2, "true", nil).code(), 0)
	_, sb, pod = h.claimPod(l2)
	h.w.mustCall("environmentDestroyLease", h.leaseParams(l2), nil)
	h.waitClaimRunGone(l2, sb.GetName(), pod.Name)

	// A SandboxTemplate whose pods would be privileged, or run as another
	// ServiceAccount, is refused in the tenant namespace.
	tpl, err := h.dyn().Resource(gvrTemplate).Namespace(h.namespace()).Get(ctx, "paperclip-agent", metav1.GetOptions{})
	is.NoErr(err)
	for _, c := range []struct {
		name, want string
		mutate     func(spec map[string]any)
	}{
		{"privileged", "may not run privileged containers", func(spec map[string]any) {
			spec["containers"].([]any)[0].(map[string]any)["securityContext"] = map[string]any{"privileged": true}
		}},
		{"another ServiceAccount", "must run as the ServiceAccount paperclip-tenant-sa", func(spec map[string]any) {
			spec["serviceAccountName"] = "default"
		}},
	} {
		bad := tpl.DeepCopy()
		bad.SetName("evil-" + strings.ToLower(strings.ReplaceAll(c.name, " ", "-")))
		bad.SetResourceVersion("")
		bad.SetUID("")
		spec, _, _ := unstructured.NestedMap(bad.Object, "spec", "podTemplate", "spec")
		c.mutate(spec)
		is.NoErr(unstructured.SetNestedMap(bad.Object, spec, "spec", "podTemplate", "spec"))
		_, err := asDyn.Resource(gvrTemplate).Namespace(h.namespace()).Create(ctx, bad, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		wantDenied(t, c.name+" SandboxTemplate", err, policyDenied, "(sandboxtemplate.yaml)", c.want)
	}
}

// A cluster that serves the Sandbox API but not agent-sandbox's extensions
// (the controller runs without --extensions): the probe of a sandboxclaim
// config says so for the claim and for the tenant's template and pool,
// with the file's missing: text (what to install, or which backend to use
// instead), and not for the Sandbox API, which is served.
func TestWarmPoolProbeWithoutTheExtensions(t *testing.T) {
	is := is.New(t)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		body, ok := map[string]string{
			"/version": `{"major":"1","minor":"37","gitVersion":"v1.37.2-fake"}`,
			"/api":     `{"kind":"APIVersions","versions":["v1"],"serverAddressByClientCIDRs":[{"clientCIDR":"0.0.0.0/0","serverAddress":"127.0.0.1"}]}`,
			"/api/v1": `{"kind":"APIResourceList","groupVersion":"v1","resources":[` +
				`{"name":"pods","singularName":"pod","namespaced":true,"kind":"Pod","verbs":["get","list","watch"]},` +
				`{"name":"namespaces","singularName":"namespace","namespaced":false,"kind":"Namespace","verbs":["get","create","patch"]}]}`,
			"/apis": `{"kind":"APIGroupList","apiVersion":"v1","groups":[{"name":"agents.x-k8s.io",` +
				`"versions":[{"groupVersion":"agents.x-k8s.io/v1beta1","version":"v1beta1"}],"preferredVersion":{"groupVersion":"agents.x-k8s.io/v1beta1","version":"v1beta1"}}]}`,
			"/apis/agents.x-k8s.io/v1beta1": `{"kind":"APIResourceList","groupVersion":"agents.x-k8s.io/v1beta1","resources":[` +
				`{"name":"sandboxes","singularName":"sandbox","namespaced":true,"kind":"Sandbox","verbs":["get","list","watch","create","delete","patch"]}]}`,
		}[r.URL.Path]
		if !ok {
			w.WriteHeader(http.StatusNotFound)
			body = `{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}`
		}
		_, _ = w.Write([]byte(body))
	}))
	t.Cleanup(srv.Close)
	w := startWorker(t)
	w.initialize()
	var pr probeResult
	w.mustCall("environmentProbe", map[string]any{"driverKey": "kubernetes", "companyId": "co-noext", "environmentId": "env-1",
		"config": map[string]any{"kubeconfig": string(kubeconfigFor(t, srv.URL, nil, "t0k3n")), "backend": "sandboxclaim"}}, &pr)
	is.True(!pr.OK)
	missing := map[string]string{}
	for _, d := range pr.Diagnostics {
		if d.Code == "api-missing" {
			is.Equal(d.Severity, "error")
			for _, f := range []string{"sandboxtemplate.yaml", "sandboxwarmpool.yaml", "sandbox.yaml"} {
				if strings.Contains(d.Message, "needed by "+f+":") {
					missing[f] = d.Message
				}
			}
			if strings.Contains(d.Message, "needed by sandboxclaim.yaml:") {
				missing["backend"] = d.Message
			}
		}
	}
	t.Logf("api-missing: %v", missing)
	for _, k := range []string{"backend", "sandboxtemplate.yaml", "sandboxwarmpool.yaml"} {
		is.True(strings.Contains(missing[k], "Install the agent-sandbox controller with its extensions (--extensions)"))
		is.True(strings.Contains(missing[k], `or set backend to "sandbox"`))
	}
	is.True(strings.Contains(missing["backend"], "SandboxClaim"))
	_, sandboxMissing := missing["sandbox.yaml"]
	is.True(!sandboxMissing) // the Sandbox API is served
}

// A lease the host keeps for reuse keeps its claim (and so its pod) on
// release, with the claim's shutdownTime moved to the idle limit; the next
// run's resume finds the same pod and restores the deadline, and a worker
// that has never seen the lease (a restarted one) runs commands in it:
// the claim is Ready again once its controller has seen the moved
// deadline (a spec change, so a new generation).
func TestWarmPoolReusableLease(t *testing.T) {
	is := is.New(t)
	h := newHooks(t, "sandboxclaim", map[string]any{"reuseLease": true, "reusableLeaseIdleSec": 120, "warmPoolSize": 1})
	ctx := context.Background()
	l := h.acquire(nil)
	shutdownTime := func() time.Time {
		t.Helper()
		c, err := h.dyn().Resource(gvrClaim).Namespace(l.meta("namespace")).Get(ctx, l.id(), metav1.GetOptions{})
		is.NoErr(err)
		v, _, _ := unstructured.NestedString(c.Object, "spec", "lifecycle", "shutdownTime")
		st, err := time.Parse(time.RFC3339, v)
		is.NoErr(err)
		return st
	}
	expiresAt, err := time.Parse(time.RFC3339, *l.ExpiresAt)
	is.NoErr(err)
	is.Equal(h.exec(l, "echo kept > kept.txt", nil).code(), 0)
	_, _, pod := h.claimPod(l)
	kept := h.leaseParams(l)
	meta := maps.Clone(l.Metadata)
	meta["reusableSandboxLease"] = map[string]any{"agentId": "agent-1", "executionWorkspaceId": "ews-1"}
	kept["leaseMetadata"] = meta
	kept["issueId"] = "issue-1"
	id, _ := h.w.request("environmentReleaseLease", kept)
	h.w.answerHost("issues.get", map[string]any{"id": "issue-1", "companyId": h.company, "status": "in_progress",
		"executionWorkspaceId": "ews-1", "executionWorkspacePreference": "reuse_existing"})
	res := h.w.reply(id)
	is.True(res.err == nil)
	is.Equal(string(res.result), "null") // kept: no receipt
	is.True(shutdownTime().Before(expiresAt))

	var live lease
	h.w.mustCall("environmentResumeLease", kept, &live)
	is.Equal(live.id(), l.id())
	is.Equal(live.meta("podUid"), string(pod.UID))
	is.True(shutdownTime().Equal(expiresAt))

	// A worker that never saw the lease waits for the claim and its pod
	// afresh, and finds the same pod with its files.
	h.w = startWorker(t)
	h.w.initialize()
	r := h.exec(lease{ProviderLeaseID: live.ProviderLeaseID, Metadata: live.Metadata, ExpiresAt: live.ExpiresAt}, "cat kept.txt", nil)
	is.Equal(r.code(), 0)
	is.Equal(r.Stdout, "kept\n")
	is.Equal(r.Metadata["podName"], pod.Name)
}

// The lease's expiry is on the claim (spec.lifecycle.shutdownTime,
// shutdownPolicy Delete): the controller deletes the claim then, and its
// Sandbox and pod go with it, even if the host never releases the lease.
func TestWarmPoolLeaseExpiryHonoured(t *testing.T) {
	t.Parallel()
	is := is.New(t)
	h := newHooks(t, "sandboxclaim", map[string]any{"warmPoolSize": 1})
	l := h.acquire(map[string]any{"requestedExpiresAt": time.Now().Add(32 * time.Second).UTC().Format(time.RFC3339)})
	exp, err := time.Parse(time.RFC3339, *l.ExpiresAt)
	is.NoErr(err)
	is.Equal(h.exec(l, "true", nil).code(), 0) // the pod runs
	_, sb, pod := h.claimPod(l)
	h.waitObject(gvrClaim, l.meta("namespace"), l.id(), time.Until(exp)+20*time.Second, "the claim is deleted at its expiry", func(u *unstructured.Unstructured) bool { return u == nil })
	goneAt := time.Now()
	t.Logf("expiresAt %s; the claim was gone %s after it", exp.Format(time.RFC3339), goneAt.Sub(exp).Round(time.Millisecond))
	if goneAt.Before(exp.Add(-time.Second)) {
		t.Errorf("the claim was deleted %s before its expiry", exp.Sub(goneAt))
	}
	h.waitClaimRunGone(l, sb.GetName(), pod.Name)
	var got lease
	h.w.mustCall("environmentResumeLease", h.leaseParams(l), &got)
	is.True(got.ProviderLeaseID == nil)
	is.Equal(got.Metadata["expired"], true)
}
