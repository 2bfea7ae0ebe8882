package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/yaml"

	"github.com/paperclip-k8s/paperclip-k8s/plugin/rpc"
)

// Every hook through the built binary against the local control plane
// (kube-apiserver, etcd, controller-manager with the garbage collector,
// scheduler, kwok, the stand-in Sandbox controller; commands "in pods" run
// as local processes through an execnode).

func TestHookValidateConfig(t *testing.T) {
	w := startWorker(t)
	w.initialize()
	validate := func(cfg map[string]any) (res struct {
		OK               bool           `json:"ok"`
		Errors           []string       `json:"errors"`
		Warnings         []string       `json:"warnings"`
		NormalizedConfig map[string]any `json:"normalizedConfig"`
	}) {
		t.Helper()
		w.mustCall("environmentValidateConfig", map[string]any{"driverKey": "kubernetes", "config": cfg}, &res)
		return res
	}
	t.Run("valid", func(t *testing.T) {
		is := is.New(t)
		// At validation time the host sends the secret's id, not its value.
		r := validate(map[string]any{"kubeconfig": "5b0f7c1e-secret-id", "backend": "sandbox-cr", "egressAllowCidrs": []any{"10.20.0.0/16"}})
		is.True(r.OK)
		is.Equal(len(r.Errors), 0)
		is.Equal(r.NormalizedConfig["backend"], "sandbox") // the alias is normalized
		is.Equal(r.NormalizedConfig["workspacePath"], "/workspace")
		is.Equal(r.NormalizedConfig["kubeconfig"], "5b0f7c1e-secret-id") // the reference is kept for the host to store
	})
	t.Run("invalid, with field pointers", func(t *testing.T) {
		is := is.New(t)
		r := validate(map[string]any{
			"kubeconfig": "x", "namespacePrefix": "UPPER", "egressAllowCidrs": []any{"10.0.0.0/8", "10.0.0.1/8"},
			"backend": "nope", "sandboxLifetimeSec": 5, "egressMode": "magic",
		})
		is.True(!r.OK)
		is.True(r.NormalizedConfig == nil)
		want := []string{"/backend: ", "/egressAllowCidrs/1: ", "/egressMode: ", "/namespacePrefix: ", "/sandboxLifetimeSec: "}
		is.Equal(len(r.Errors), len(want))
		for i, p := range want {
			if !strings.HasPrefix(r.Errors[i], p) {
				t.Errorf("error %d: %q, want the pointer %q", i, r.Errors[i], p)
			}
		}
		// Neither credentials: a root error.
		r = validate(map[string]any{"backend": "job"})
		is.True(!r.OK)
		is.True(len(r.Errors) == 1 && strings.Contains(r.Errors[0], "inCluster") && strings.Contains(r.Errors[0], "kubeconfig"))
	})
	t.Run("host-owned keys tolerated", func(t *testing.T) {
		is := is.New(t)
		cfg := map[string]any{
			"inCluster": true, "timeoutMs": 30000, "reuseLease": true, "runnerLifecycleMode": "per_run",
			"runnerIdleTimeoutMs": 60000, "archiveOnRelease": false, "streamRunLogs": true,
			"sandboxName": "x", "provider": "kubernetes",
		}
		r := validate(cfg)
		is.True(r.OK)
		for _, warn := range r.Warnings {
			for k := range cfg {
				if k != "inCluster" && strings.Contains(warn, k) {
					t.Errorf("warning about the host key %s: %s", k, warn)
				}
			}
		}
		is.Equal(r.NormalizedConfig["timeoutMs"], 30000.0) // kept as they are
		is.Equal(r.NormalizedConfig["runnerLifecycleMode"], "per_run")
	})
}

// clusterRoleFromBinary returns the rules of every ClusterRole `paperclip-k8s
// rbac` prints (the cluster-wide one and the tenant one), as one role.
func clusterRoleFromBinary(t testing.TB) *rbacv1.ClusterRole {
	t.Helper()
	all := &rbacv1.ClusterRole{}
	for _, d := range rbacFromBinary(t, "paperclip/paperclip-k8s") {
		if d.GetKind() != "ClusterRole" {
			continue
		}
		b, err := d.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		var cr rbacv1.ClusterRole
		if err := yaml.UnmarshalStrict(b, &cr); err != nil {
			t.Fatalf("paperclip-k8s rbac printed an invalid ClusterRole: %v\n%s", err, b)
		}
		all.Rules = append(all.Rules, cr.Rules...)
	}
	if len(all.Rules) == 0 {
		t.Fatal("paperclip-k8s rbac printed no ClusterRole")
	}
	return all
}

// serviceAccountKubeconfig creates a namespace and a ServiceAccount in it
// and returns a kubeconfig with a token minted for it (TokenRequest).
func serviceAccountKubeconfig(t testing.TB, h *hooks, name string) (kubeconfig []byte, ns string) {
	t.Helper()
	ctx := context.Background()
	kube := h.kube()
	nsObj, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "pck8s-sa-"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ns = nsObj.Name
	t.Cleanup(func() { _ = kube.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{}) })
	if _, err := kube.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	exp := int64(3600)
	tr, err := kube.CoreV1().ServiceAccounts(ns).CreateToken(ctx, name, &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{ExpirationSeconds: &exp}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rc := h.env.RESTConfig()
	return kubeconfigFor(t, rc.Host, rc.CAData, tr.Status.Token), ns
}

type probeResult struct {
	OK          bool   `json:"ok"`
	Summary     string `json:"summary"`
	Diagnostics []struct {
		Severity string         `json:"severity"`
		Message  string         `json:"message"`
		Code     string         `json:"code"`
		Details  map[string]any `json:"details"`
	} `json:"diagnostics"`
	Metadata map[string]any `json:"metadata"`
}

func TestHookProbe(t *testing.T) {
	t.Run("admin", func(t *testing.T) {
		is := is.New(t)
		h := newHooks(t, "sandbox", nil)
		var r probeResult
		h.w.mustCall("environmentProbe", h.base(), &r)
		is.True(r.OK)
		for _, d := range r.Diagnostics {
			t.Errorf("diagnostic with admin credentials: %+v", d)
		}
		is.Equal(r.Metadata["namespace"], h.namespace())
		is.Equal(r.Metadata["backendApiVersion"], "agents.x-k8s.io/v1beta1")
		is.Equal(r.Metadata["backendApiVersionsServed"], []any{"agents.x-k8s.io/v1beta1"}) // this CRD serves v1beta1 only
		is.True(strings.HasPrefix(r.Metadata["serverVersion"].(string), "v1."))
	})
	t.Run("ServiceAccount bound to nothing", func(t *testing.T) {
		is := is.New(t)
		h := newHooks(t, "sandbox", nil)
		kc, _ := serviceAccountKubeconfig(t, h, "nobody")
		h.config["kubeconfig"] = string(kc)
		var r probeResult
		h.w.mustCall("environmentProbe", h.base(), &r)
		is.True(!r.OK)
		is.True(strings.Contains(r.Summary, "see diagnostics"))
		// Every permission of the ClusterRole is reported missing (those the
		// cluster does not serve, Cilium's, are not checked), with details.
		missing := map[string]bool{}
		for _, d := range r.Diagnostics {
			is.Equal(d.Severity, "error")
			is.Equal(d.Code, "forbidden")
			is.True(strings.Contains(d.Message, "missing permission: "))
			res := d.Details["resource"].(string)
			if sub, _ := d.Details["subresource"].(string); sub != "" {
				res += "/" + sub
			}
			missing[fmt.Sprintf("%s %s/%s", d.Details["verb"], d.Details["group"], res)] = true
		}
		want := map[string]bool{}
		for _, rule := range clusterRoleFromBinary(t).Rules {
			for _, g := range rule.APIGroups {
				if g == "cilium.io" || g == "authorization.k8s.io" || g == "authentication.k8s.io" { // self reviews: every user may
					continue
				}
				for _, res := range rule.Resources {
					for _, v := range rule.Verbs {
						want[fmt.Sprintf("%s %s/%s", v, g, res)] = true
					}
				}
			}
		}
		is.Equal(missing, want)
		found := false
		for _, d := range r.Diagnostics {
			if d.Message == "missing permission: create sandboxes.agents.x-k8s.io in namespace "+h.namespace()+" (apply the ClusterRole paperclip-k8s-tenant printed by `paperclip-k8s rbac --service-account <namespace>/<name>`)" {
				found = true
			}
		}
		is.True(found) // the message names verb, resource and namespace
	})
	t.Run("unreachable", func(t *testing.T) {
		is := is.New(t)
		w := startWorker(t)
		w.initialize()
		var r probeResult
		w.mustCall("environmentProbe", map[string]any{"driverKey": "kubernetes", "companyId": "c1", "environmentId": "e1",
			"config": map[string]any{"kubeconfig": string(kubeconfigFor(t, "https://127.0.0.1:1", nil, "t"))}}, &r)
		is.True(!r.OK)
		is.Equal(len(r.Diagnostics), 1)
		is.Equal(r.Diagnostics[0].Code, "unreachable")
		// An invalid config is a result, not an error.
		w.mustCall("environmentProbe", map[string]any{"driverKey": "kubernetes", "companyId": "c1", "environmentId": "e1",
			"config": map[string]any{"backend": "nope"}}, &r)
		is.True(!r.OK)
		is.Equal(r.Summary, "Invalid Kubernetes provider configuration.")
	})
}

func TestHookAcquire(t *testing.T) {
	for _, backend := range []string{"sandbox", "job"} {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			testAcquire(t, backend)
		})
	}
}

func testAcquire(t *testing.T, backend string) {
	is := is.New(t)
	h := newHooks(t, backend, nil)
	ctx := context.Background()
	lifetime := 86400 * time.Second
	gvr, kind := gvrSandbox, "Sandbox"
	if backend == "job" {
		lifetime, gvr, kind = 3600*time.Second, gvrJob, "Job"
	}

	before := time.Now()
	l := h.acquire(nil)
	ns := h.namespace()
	is.Equal(l.meta("namespace"), ns)
	is.Equal(l.meta("backend"), backend)
	is.Equal(l.meta("remoteCwd"), "/workspace")
	is.Equal(l.meta("secretName"), l.id()+"-env")
	is.Equal(l.meta("workloadKind"), kind)
	is.Equal(l.Metadata["nativeFileSyncUnsupported"], backend == "job") // native sync needs the exec channel
	is.True(l.ExpiresAt != nil)
	exp, err := time.Parse(time.RFC3339, *l.ExpiresAt)
	is.NoErr(err)
	is.Equal(l.meta("expiresAt"), *l.ExpiresAt)
	if d := exp.Sub(before.Add(lifetime)); d < -2*time.Second || d > 2*time.Second {
		t.Errorf("expiresAt %s is not acquire time + %s", *l.ExpiresAt, lifetime)
	}

	// The tenant namespace admits only Pod Security "restricted" pods.
	nsObj, err := h.kube().CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
	is.NoErr(err)
	for _, mode := range []string{"enforce", "audit", "warn"} {
		is.Equal(nsObj.Labels["pod-security.kubernetes.io/"+mode], "restricted")
	}

	// The workload, with the UID the lease carries.
	wl, err := h.dyn().Resource(gvr).Namespace(ns).Get(ctx, l.id(), metav1.GetOptions{})
	is.NoErr(err)
	is.Equal(string(wl.GetUID()), l.meta("workloadUid"))

	// The run's Secret and scoped egress policy are owned by the workload.
	owner := func(refs []metav1.OwnerReference, controller bool) {
		t.Helper()
		is.Equal(len(refs), 1)
		r := refs[0]
		is.Equal(r.Kind, kind)
		is.Equal(r.Name, l.id())
		is.Equal(string(r.UID), l.meta("workloadUid"))
		is.Equal(r.Controller != nil && *r.Controller, controller)
	}
	sec, err := h.kube().CoreV1().Secrets(ns).Get(ctx, l.id()+"-env", metav1.GetOptions{})
	is.NoErr(err)
	owner(sec.OwnerReferences, true)
	is.Equal(len(sec.Data["BOOTSTRAP_TOKEN"]), 64)
	np, err := h.dyn().Resource(gvrNetworkPolicy).Namespace(ns).Get(ctx, l.id()+"-egress", metav1.GetOptions{})
	is.NoErr(err) // claude_local's api.anthropic.com makes a scoped grant
	owner(np.GetOwnerReferences(), false)
	is.Equal(l.meta("scopedNetworkPolicyName"), l.id()+"-egress")

	// The expiry is on the workload: the cluster ends it even if the host
	// never releases the lease.
	checkDeadline := func(l lease, wl *unstructured.Unstructured) {
		t.Helper()
		exp, err := time.Parse(time.RFC3339, *l.ExpiresAt)
		is.NoErr(err)
		if backend == "sandbox" {
			st, _, _ := unstructured.NestedString(wl.Object, "spec", "shutdownTime")
			is.Equal(st, *l.ExpiresAt)
			pol, _, _ := unstructured.NestedString(wl.Object, "spec", "shutdownPolicy")
			is.Equal(pol, "Delete")
			return
		}
		ads, _, _ := unstructured.NestedInt64(wl.Object, "spec", "activeDeadlineSeconds")
		created := wl.GetCreationTimestamp().Time
		if d := created.Add(time.Duration(ads) * time.Second).Sub(exp); d < -2*time.Second || d > 2*time.Second {
			t.Errorf("activeDeadlineSeconds %d from creation %s ends %s away from expiresAt %s", ads, created, d, exp)
		}
	}
	checkDeadline(l, wl)

	// An earlier requestedExpiresAt shortens the lease, to the second.
	requested := time.Now().Add(10*time.Minute + 500*time.Millisecond).UTC()
	l2 := h.acquire(map[string]any{"requestedExpiresAt": requested.Format(time.RFC3339Nano)})
	is.Equal(*l2.ExpiresAt, requested.Truncate(time.Second).Format(time.RFC3339))
	wl2, err := h.dyn().Resource(gvr).Namespace(ns).Get(ctx, l2.id(), metav1.GetOptions{})
	is.NoErr(err)
	checkDeadline(l2, wl2)
	if backend == "job" {
		ads, _, _ := unstructured.NestedInt64(wl2.Object, "spec", "activeDeadlineSeconds")
		is.True(ads >= 599 && ads <= 601)
	}

	// A later one cannot extend it.
	l3 := h.acquire(map[string]any{"requestedExpiresAt": time.Now().Add(lifetime + time.Hour).UTC().Format(time.RFC3339)})
	exp3, err := time.Parse(time.RFC3339, *l3.ExpiresAt)
	is.NoErr(err)
	is.True(exp3.Before(time.Now().Add(lifetime + time.Second)))

	// One in the past is refused, and nothing is created.
	e := h.w.callErr("environmentAcquireLease", h.acquireParams(map[string]any{"requestedExpiresAt": time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)}))
	is.True(strings.Contains(e.Message, "in the past"))
	list, err := h.dyn().Resource(gvr).Namespace(ns).List(ctx, metav1.ListOptions{})
	is.NoErr(err)
	is.Equal(len(list.Items), 3)
}

func TestHookResume(t *testing.T) {
	t.Run("sandbox", func(t *testing.T) {
		t.Parallel()
		is := is.New(t)
		h := newHooks(t, "sandbox", nil)
		ctx := context.Background()
		l := h.acquire(nil)
		r := h.exec(l, "true", nil) // waits for the pod
		is.Equal(r.code(), 0)

		var live lease
		h.w.mustCall("environmentResumeLease", h.leaseParams(l), &live)
		is.Equal(live.id(), l.id())
		is.Equal(live.Metadata["resumedLease"], true)
		is.Equal(live.Metadata["nativeFileSyncUnsupported"], false)
		is.Equal(live.meta("phase"), "Ready")
		is.Equal(live.meta("workloadUid"), l.meta("workloadUid"))
		is.True(live.meta("podUid") != "")
		is.Equal(*live.ExpiresAt, *l.ExpiresAt)
		pod := h.waitPod(l, "")
		is.Equal(live.meta("podUid"), string(pod.UID))

		// The pod is replaced: the controller recreates it with a new UID.
		// The lease (which remembers the old pod) is expired, both while the
		// new pod is starting and once it is ready.
		zero := int64(0)
		is.NoErr(h.kube().CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}))
		expired := func(l lease, why string) {
			t.Helper()
			m, _ := h.w.call("environmentResumeLease", h.leaseParams(l))
			if m.err != nil {
				t.Fatalf("%s: resume failed: %v", why, m.err)
			}
			if !strings.Contains(string(m.result), `"providerLeaseId":null`) {
				t.Errorf("%s: providerLeaseId must be null, not absent: %s", why, m.result)
			}
			var got lease
			is.NoErr(json.Unmarshal(m.result, &got))
			if got.ProviderLeaseID != nil || got.Metadata["expired"] != true {
				t.Fatalf("%s: want an expired lease, got %s", why, m.result)
			}
			is.True(got.meta("reason") != "")
			if why != "pod being replaced" {
				t.Logf("%s: %s", why, got.meta("reason"))
			}
		}
		expired(live, "pod deleted")
		// Resume again and again while the controller replaces the pod
		// (the Sandbox goes not-Ready, a new pod starts, the Sandbox is
		// Ready again): every answer must be "expired".
		calls := 0
		eventually(t, 60*time.Second, "the replacement pod is Ready and the Sandbox too", func() error {
			expired(live, "pod being replaced")
			calls++
			pods, err := h.podsOf(ctx, pod.Namespace, l.id())
			if err != nil || len(pods) != 1 || pods[0].UID == pod.UID {
				return fmt.Errorf("no replacement pod yet")
			}
			sb, err := h.dyn().Resource(gvrSandbox).Namespace(pod.Namespace).Get(ctx, l.id(), metav1.GetOptions{})
			if err != nil {
				return err
			}
			conds, _, _ := unstructured.NestedSlice(sb.Object, "status", "conditions")
			for _, c := range conds {
				if c, _ := c.(map[string]any); c["type"] == "Ready" && c["status"] == "True" {
					return nil
				}
			}
			return fmt.Errorf("the Sandbox is not Ready yet")
		})
		newPod := h.waitPod(l, string(pod.UID))
		is.True(newPod.UID != pod.UID)
		expired(live, "pod replaced")
		// The worker pinned the first pod at the first execute: a command
		// must not run in the replacement (its workspace is not the lease's).
		m, _ := h.w.call("environmentExecute", h.execParams(l, "true", nil))
		if m.err == nil || !strings.Contains(m.err.Message, "workspace is lost") {
			t.Fatalf("execute after the pod was replaced: want an error that the workspace is lost, got %s / %v", m.result, m.err)
		}
		t.Logf("%d resumes during the replacement, all expired", calls)

		// The workload deleted: expired.
		is.NoErr(h.dyn().Resource(gvrSandbox).Namespace(l.meta("namespace")).Delete(ctx, l.id(), metav1.DeleteOptions{}))
		eventually(t, 30*time.Second, "the Sandbox is gone", func() error {
			_, err := h.dyn().Resource(gvrSandbox).Namespace(l.meta("namespace")).Get(ctx, l.id(), metav1.GetOptions{})
			return gone(err)
		})
		expired(l, "workload deleted")

		// A lease that remembers a pod the workload does not have, resumed
		// while its workload is most likely still starting (not Ready):
		// expired too, whatever the workload's state.
		l2 := h.acquire(nil)
		l2.Metadata["podUid"] = "00000000-0000-0000-0000-000000000000"
		expired(l2, "pod unknown to the workload")

		// No lease id at all.
		var none lease
		h.w.mustCall("environmentResumeLease", h.with(map[string]any{"providerLeaseId": ""}), &none)
		is.Equal(none.Metadata["expired"], true)
	})
	t.Run("job", func(t *testing.T) {
		t.Parallel()
		is := is.New(t)
		h := newHooks(t, "job", nil)
		ctx := context.Background()
		l := h.acquire(nil)
		// kwok completes the Job's pod at once: a finished Job cannot be
		// resumed.
		eventually(t, 60*time.Second, "the Job completes", func() error {
			j, err := h.kube().BatchV1().Jobs(l.meta("namespace")).Get(ctx, l.id(), metav1.GetOptions{})
			if err != nil {
				return err
			}
			if j.Status.Succeeded == 0 {
				return fmt.Errorf("not yet succeeded")
			}
			return nil
		})
		var got lease
		h.w.mustCall("environmentResumeLease", h.leaseParams(l), &got)
		is.True(got.ProviderLeaseID == nil)
		is.Equal(got.Metadata["expired"], true)
		is.True(strings.Contains(got.meta("reason"), "Succeeded"))
	})
}

func TestHookRealizeWorkspace(t *testing.T) {
	is := is.New(t)
	w := startWorker(t)
	w.initialize()
	realize := func(cfg map[string]any, remoteCwd, remotePath string) string {
		t.Helper()
		var r struct {
			Cwd      string         `json:"cwd"`
			Metadata map[string]any `json:"metadata"`
		}
		meta := map[string]any{}
		if remoteCwd != "" {
			meta["remoteCwd"] = remoteCwd
		}
		w.mustCall("environmentRealizeWorkspace", map[string]any{
			"driverKey": "kubernetes", "companyId": "c1", "environmentId": "e1", "config": cfg,
			"lease":     map[string]any{"providerLeaseId": nil, "metadata": meta},
			"workspace": map[string]any{"localPath": "/host/ws", "remotePath": remotePath, "mode": "isolated_workspace"},
		}, &r)
		is.Equal(r.Metadata["remoteCwd"], r.Cwd)
		return r.Cwd
	}
	cfg := map[string]any{"inCluster": true, "workspacePath": "/custom/ws"}
	is.Equal(realize(cfg, "/lease/cwd", "/remote/path"), "/remote/path") // remotePath first
	is.Equal(realize(cfg, "/lease/cwd", "  "), "/lease/cwd")             // then the lease's remoteCwd
	is.Equal(realize(cfg, "", ""), "/custom/ws")                         // then workspacePath
	is.Equal(realize(map[string]any{"inCluster": true}, "", ""), "/workspace")
}

func sha(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

func TestHookExecute(t *testing.T) {
	t.Run("sandbox", func(t *testing.T) {
		t.Parallel()
		h := newHooks(t, "sandbox", nil)
		l := h.acquire(nil)
		t.Run("stdout, stderr, exit code", func(t *testing.T) {
			is := is.New(t)
			r := h.exec(l, "echo out; echo err >&2; exit 3", nil)
			is.Equal(r.Stdout, "out\n")
			is.True(strings.HasPrefix(r.Stderr, "err\n"))
			is.Equal(r.code(), 3)
			is.True(!r.TimedOut)
			is.True(r.Signal == nil)
			is.Equal(r.Metadata["workloadName"], l.id())
			is.True(r.Metadata["podName"] != "")
		})
		t.Run("args", func(t *testing.T) {
			is := is.New(t)
			r := h.exec(l, "printf", map[string]any{"args": []string{"%s|%s", "a b", "$HOME;`x`"}})
			is.Equal(r.Stdout, "a b|$HOME;`x`")
			is.Equal(r.code(), 0)
		})
		t.Run("env and cwd", func(t *testing.T) {
			is := is.New(t)
			dir := t.TempDir()
			r := h.exec(l, `printf '%s|%s|%s' "$FOO" "$QUOTED" "$(pwd -P)"`, map[string]any{
				"env": map[string]string{"FOO": "bar baz", "QUOTED": `it's "$HOME" ; $(x)`},
				"cwd": dir,
			})
			is.Equal(r.code(), 0)
			is.Equal(r.Stdout, `bar baz|it's "$HOME" ; $(x)|`+dir)
			r = h.exec(l, "pwd", map[string]any{"cwd": "/no/such/dir"})
			is.Equal(r.code(), 1)
		})
		t.Run("stdin", func(t *testing.T) {
			is := is.New(t)
			r := h.exec(l, "cat", map[string]any{"stdin": "line one\nline two\n"})
			is.Equal(r.Stdout, "line one\nline two\n")
			big := strings.Repeat("0123456789abcdef", 1<<16) // 1 MiB
			r = h.exec(l, "sha256sum", map[string]any{"stdin": big})
			is.Equal(strings.Fields(r.Stdout)[0], sha(big))
			r = h.exec(l, "wc -c", map[string]any{"stdin": ""})
			is.Equal(strings.TrimSpace(r.Stdout), "0")
		})
		t.Run("timeout", func(t *testing.T) {
			is := is.New(t)
			start := time.Now()
			r := h.exec(l, "echo started; sleep 30", map[string]any{"timeoutMs": 1500})
			took := time.Since(start)
			is.True(r.TimedOut)
			is.True(r.ExitCode == nil)
			is.True(strings.HasPrefix(r.Stdout, "started"))
			is.True(took < 10*time.Second)
			t.Logf("a 1.5 s timeout returned after %s", took.Round(time.Millisecond))
		})
		t.Run("signal", func(t *testing.T) {
			is := is.New(t)
			r := h.exec(l, "kill -9 $$", nil)
			is.Equal(r.code(), 137)
			is.True(r.Signal != nil && *r.Signal == "SIGKILL")
		})
		t.Run("execute.log", func(t *testing.T) {
			is := is.New(t)
			m, inv := h.w.call("environmentExecute", h.execParams(l, "echo one; sleep 0.2; echo two >&2; sleep 0.2; echo three", nil))
			is.True(m.err == nil)
			var r executeResult
			is.NoErr(json.Unmarshal(m.result, &r))
			is.True(inv != "")
			streamed := map[string]string{}
			notes := h.w.notifications("execute.log", inv)
			is.True(len(notes) >= 3)
			for _, n := range notes {
				is.True(n.at.Before(m.at) || n.at.Equal(m.at)) // streamed before the result
				var p struct{ Stream, Chunk string }
				is.NoErr(json.Unmarshal(n.params, &p))
				streamed[p.Stream] += p.Chunk
			}
			is.Equal(streamed["stdout"], "one\nthree\n")
			is.Equal(streamed["stdout"], r.Stdout)
			is.Equal(streamed["stderr"], r.Stderr)
		})
		t.Run("no lease id", func(t *testing.T) {
			is := is.New(t)
			r := h.exec(lease{}, "true", nil)
			is.Equal(r.code(), 1)
			is.Equal(r.Stderr, "No provider lease ID available for execution.")
		})
	})
	t.Run("job", func(t *testing.T) {
		t.Parallel()
		is := is.New(t)
		h := newHooks(t, "job", nil)
		l := h.acquire(nil)
		pod := h.waitPodAny(l)
		// What the agent shim "printed" (the node has no containers).
		is.NoErr(h.env.Node.WriteLog(pod.Namespace, pod.Name, "agent", []byte("agent says hi\nbye\n")))
		h.env.Node.EndLog(pod.Namespace, pod.Name, "agent")
		m, inv := h.w.call("environmentExecute", h.execParams(l, "ignored", nil))
		is.True(m.err == nil)
		var r executeResult
		is.NoErr(json.Unmarshal(m.result, &r))
		is.Equal(r.code(), 0)
		is.Equal(r.Stdout, "agent says hi\nbye\n")
		is.Equal(r.Metadata["phase"], "Succeeded")
		is.Equal(r.Metadata["podName"], pod.Name)
		is.True(inv != "")
	})
}

// waitPodAny waits for the run's pod to exist (any phase).
func (h *hooks) waitPodAny(l lease) corev1.Pod {
	h.t.Helper()
	var pod corev1.Pod
	eventually(h.t, 60*time.Second, "the run's pod exists", func() error {
		pods, err := h.podsOf(context.Background(), l.meta("namespace"), l.id())
		if err != nil {
			return err
		}
		if len(pods) == 0 {
			return fmt.Errorf("no pod yet")
		}
		pod = pods[0]
		return nil
	})
	return pod
}

func TestHookReleaseDestroy(t *testing.T) {
	type receipt struct {
		ProviderLeaseID string `json:"providerLeaseId"`
		State           string `json:"state"`
	}
	for _, c := range []struct{ backend, method, state string }{
		{"sandbox", "environmentReleaseLease", "stopped"},
		{"sandbox", "environmentDestroyLease", "destroyed"},
		{"job", "environmentReleaseLease", "stopped"},
		{"job", "environmentDestroyLease", "destroyed"},
	} {
		t.Run(c.backend+"/"+c.method, func(t *testing.T) {
			t.Parallel()
			is := is.New(t)
			h := newHooks(t, c.backend, nil)
			l := h.acquire(nil)
			if c.backend == "sandbox" {
				is.Equal(h.exec(l, "true", nil).code(), 0) // the pod exists
			} else {
				h.waitPodAny(l)
			}
			start := time.Now()
			for i := range 2 { // idempotent
				var r receipt
				h.w.mustCall(c.method, h.leaseParams(l), &r)
				is.Equal(r, receipt{ProviderLeaseID: l.id(), State: c.state})
				if i == 0 {
					h.waitRunGone(l, 60*time.Second)
					t.Logf("%s: workload, pod, Secret and NetworkPolicy gone %s after the call", c.method, time.Since(start).Round(time.Millisecond))
				}
			}
			// A lease without an id: nothing to do.
			res := h.w.mustCall(c.method, h.with(map[string]any{"providerLeaseId": nil}), nil)
			is.Equal(string(res), "null")
			// Executing in a released lease says the pod is gone.
			if c.backend == "sandbox" {
				m, _ := h.w.call("environmentExecute", h.execParams(l, "true", nil))
				is.True(m.err != nil)
				t.Logf("execute after %s: %s", c.method, m.err.Message)
			}
		})
	}
}

// TestHookAcquireCleanup makes acquire fail after the workload has been
// claimed and a first run object created: the tenant's ResourceQuota
// (config resourceQuota) allows no Secret, so creating the run's Secret is
// refused by the API server's quota admission. Everything the acquire
// created must be deleted again, and the error must say so.
func TestHookAcquireCleanup(t *testing.T) {
	is := is.New(t)
	h := newHooks(t, "sandbox", map[string]any{"resourceQuota": map[string]any{"secrets": "0", "pods": "10"}})
	ctx := context.Background()
	runID := "run-" + randHex(4)
	ns := h.namespace()
	sel := metav1.ListOptions{LabelSelector: "paperclip.io/run-id=" + runID}
	watches := map[string]watch.Interface{}
	events := map[string]chan []string{}
	for name, gvr := range map[string]schema.GroupVersionResource{"Sandbox": gvrSandbox, "NetworkPolicy": gvrNetworkPolicy} {
		w, err := h.dyn().Resource(gvr).Namespace(ns).Watch(ctx, sel)
		is.NoErr(err)
		watches[name] = w
		events[name] = make(chan []string, 1)
		go func() {
			var seen []string
			for ev := range w.ResultChan() {
				seen = append(seen, string(ev.Type))
			}
			events[name] <- seen
		}()
	}
	e := h.w.callErr("environmentAcquireLease", h.acquireParams(map[string]any{"runId": runID}))
	t.Logf("acquire error: %s", e.Message)
	is.Equal(e.Code, rpc.CodeWorkerError)
	is.True(strings.Contains(e.Message, "Secret"))
	is.True(strings.Contains(e.Message, "quota"))
	is.True(strings.Contains(e.Message, "was deleted"))
	is.True(!strings.Contains(e.Message, "incomplete"))

	eventually(t, 60*time.Second, "nothing of the failed acquire is left", func() error {
		if l, err := h.dyn().Resource(gvrSandbox).Namespace(ns).List(ctx, metav1.ListOptions{}); err != nil || len(l.Items) > 0 {
			return fmt.Errorf("sandboxes: %v %d", err, len(l.Items))
		}
		if l, err := h.dyn().Resource(gvrNetworkPolicy).Namespace(ns).List(ctx, sel); err != nil || len(l.Items) > 0 {
			return fmt.Errorf("scoped network policies: %v %d", err, len(l.Items))
		}
		if l, err := h.kube().CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{}); err != nil || len(l.Items) > 0 {
			return fmt.Errorf("secrets: %v %d", err, len(l.Items))
		}
		if l, err := h.kube().CoreV1().Pods(ns).List(ctx, metav1.ListOptions{}); err != nil || len(l.Items) > 0 {
			return fmt.Errorf("pods: %v %d", err, len(l.Items))
		}
		return nil
	})
	// The tenant itself stays (it is the company's, not the run's).
	_, err := h.kube().CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
	is.NoErr(err)
	// The workload and the scoped policy really were created before the
	// failure, so cleanup had a workload and a run object to delete.
	for name, w := range watches {
		w.Stop()
		seen := <-events[name]
		t.Logf("%s events: %v", name, seen)
		is.True(slices.Contains(seen, "ADDED"))
		is.True(slices.Contains(seen, "DELETED"))
	}
}

// TestHookLeaseExpiryHonoured checks that the expiry returned by acquire is
// enforced by the cluster itself: a Sandbox lease that asked to expire in
// 32 s is deleted (with its pod and Secret) at that time, without any call
// from the host, and can no longer be resumed.
func TestHookLeaseExpiryHonoured(t *testing.T) {
	t.Parallel()
	is := is.New(t)
	h := newHooks(t, "sandbox", nil)
	ctx := context.Background()
	l := h.acquire(map[string]any{"requestedExpiresAt": time.Now().Add(32 * time.Second).UTC().Format(time.RFC3339)})
	exp, err := time.Parse(time.RFC3339, *l.ExpiresAt)
	is.NoErr(err)
	is.Equal(h.exec(l, "true", nil).code(), 0) // the pod runs
	var goneAt time.Time
	eventually(t, time.Until(exp)+20*time.Second, "the Sandbox is deleted at its expiry", func() error {
		_, err := h.dyn().Resource(gvrSandbox).Namespace(l.meta("namespace")).Get(ctx, l.id(), metav1.GetOptions{})
		if err := gone(err); err != nil {
			return err
		}
		goneAt = time.Now()
		return nil
	})
	t.Logf("expiresAt %s; the Sandbox was gone %s after it", exp.Format(time.RFC3339), goneAt.Sub(exp).Round(time.Millisecond))
	if goneAt.Before(exp.Add(-time.Second)) {
		t.Errorf("the Sandbox was deleted %s before its expiry", exp.Sub(goneAt))
	}
	h.waitRunGone(l, 30*time.Second)
	var got lease
	h.w.mustCall("environmentResumeLease", h.leaseParams(l), &got)
	is.True(got.ProviderLeaseID == nil)
	is.Equal(got.Metadata["expired"], true)
}

// answerHost waits for the worker's request method to the host and answers
// it with result.
func (w *proc) answerHost(method string, result any) {
	w.t.Helper()
	var req *message
	if !w.waitUntil(callTimeout, func() bool {
		for _, m := range w.out {
			if m.method == method && m.id != nil {
				req = m
				return true
			}
		}
		return w.exited
	}) || req == nil {
		w.t.Fatalf("the worker did not ask the host %s", method)
	}
	b, err := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": req.id, "result": result})
	if err != nil {
		w.t.Fatal(err)
	}
	w.send(string(b))
}

// TestHookReleaseKeepsAReusableLease: a lease the host keeps for reuse
// (reuseLease: true in the config, the host's reusableSandboxLease scope
// in the metadata, an issue that asks to reuse the lease's execution
// workspace) keeps its Sandbox on release, so the next run resumes
// it; cancelActiveWork, and destroy, delete it.
func TestHookReleaseKeepsAReusableLease(t *testing.T) {
	is := is.New(t)
	h := newHooks(t, "sandbox", map[string]any{"reuseLease": true, "reusableLeaseIdleSec": 120})
	ctx := context.Background()
	l := h.acquire(nil)
	shutdownTime := func() time.Time {
		t.Helper()
		sb, err := h.dyn().Resource(gvrSandbox).Namespace(l.meta("namespace")).Get(ctx, l.id(), metav1.GetOptions{})
		is.NoErr(err)
		v, _, _ := unstructured.NestedString(sb.Object, "spec", "shutdownTime")
		st, err := time.Parse(time.RFC3339, v)
		is.NoErr(err)
		return st
	}
	expiresAt, err := time.Parse(time.RFC3339, *l.ExpiresAt)
	is.NoErr(err)
	is.True(shutdownTime().Equal(expiresAt))
	is.Equal(h.exec(l, "true", nil).code(), 0)
	pod := h.waitPod(l, "")
	kept := h.leaseParams(l)
	meta := maps.Clone(l.Metadata)
	meta["reusableSandboxLease"] = map[string]any{"agentId": "agent-1", "executionWorkspaceId": "ews-1"}
	kept["leaseMetadata"] = meta
	kept["issueId"] = "issue-1"

	// The release asks the host whether the lease's issue comes back to
	// its execution workspace (plugin.ReleaseLease); this one does.
	released := time.Now()
	id, _ := h.w.request("environmentReleaseLease", kept)
	h.w.answerHost("issues.get", map[string]any{"id": "issue-1", "companyId": h.company, "status": "in_progress",
		"executionWorkspaceId": "ews-1", "executionWorkspacePreference": "reuse_existing"})
	res := h.w.reply(id)
	is.True(res.err == nil)
	is.Equal(string(res.result), "null") // nothing stopped: no receipt
	// The Sandbox is still there, but ends after the idle limit unless a run
	// resumes it.
	idle := shutdownTime()
	is.True(idle.Before(expiresAt))
	is.True(!idle.Before(released.Add(119 * time.Second).Truncate(time.Second)))
	is.True(!idle.After(time.Now().Add(121 * time.Second)))
	var live lease
	h.w.mustCall("environmentResumeLease", kept, &live)
	is.Equal(live.id(), l.id())
	is.Equal(live.meta("podUid"), string(pod.UID)) // the same pod, with its workspace
	is.True(shutdownTime().Equal(expiresAt))       // the lease's own deadline is back

	// cancelActiveWork deletes it whatever the reuse scope says.
	cancel := maps.Clone(kept)
	cancel["cancelActiveWork"] = true
	h.w.mustCall("environmentReleaseLease", cancel, nil)
	h.waitRunGone(l, 60*time.Second)
}
