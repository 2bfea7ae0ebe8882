package sandboxctl_test

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/paperclip-k8s/paperclip-k8s/internal/devcluster"
	"github.com/paperclip-k8s/paperclip-k8s/internal/sandboxctl"
)

// The extension tests follow the research run of the real controller
// (/work/shared/research/agent-sandbox-extensions-real.md); the verbatim
// values below (hashes, messages, NetworkPolicy specs) are from there.

func mainContainer() map[string]any {
	return map[string]any{"name": "main", "image": "busybox", "command": []any{"sleep", "infinity"}}
}

// templateObj is a SandboxTemplate whose pod runs `sleep infinity`, with
// extra spec fields.
func templateObj(name string, meta map[string]any, extra map[string]any) *unstructured.Unstructured {
	pt := map[string]any{"spec": map[string]any{"restartPolicy": "Always", "containers": []any{mainContainer()}}}
	if meta != nil {
		pt["metadata"] = meta
	}
	spec := map[string]any{"podTemplate": pt}
	for k, v := range extra {
		spec[k] = v
	}
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": sandboxctl.ExtAPIVersion, "kind": sandboxctl.TemplateKind,
		"metadata": map[string]any{"name": name}, "spec": spec,
	}}
}

func poolObj(name, template string, replicas int64) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": sandboxctl.ExtAPIVersion, "kind": sandboxctl.WarmPoolKind,
		"metadata": map[string]any{"name": name},
		"spec":     map[string]any{"replicas": replicas, "sandboxTemplateRef": map[string]any{"name": template}},
	}}
}

func claimObj(name, pool string, extra map[string]any) *unstructured.Unstructured {
	spec := map[string]any{"warmPoolRef": map[string]any{"name": pool}}
	for k, v := range extra {
		spec[k] = v
	}
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": sandboxctl.ExtAPIVersion, "kind": sandboxctl.ClaimKind,
		"metadata": map[string]any{"name": name}, "spec": spec,
	}}
}

func create(t testing.TB, ctx context.Context, gvr schema.GroupVersionResource, ns string, u *unstructured.Unstructured) *unstructured.Unstructured {
	t.Helper()
	out, err := cluster.Dynamic().Resource(gvr).Namespace(ns).Create(ctx, u, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create %s %s/%s: %v", gvr.Resource, ns, u.GetName(), err)
	}
	return out
}

func mergePatch(t testing.TB, ctx context.Context, gvr schema.GroupVersionResource, ns, name string, patch any) {
	t.Helper()
	b, err := json.Marshal(patch)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cluster.Dynamic().Resource(gvr).Namespace(ns).Patch(ctx, name, types.MergePatchType, b, metav1.PatchOptions{}); err != nil {
		t.Fatalf("patch %s %s/%s: %v", gvr.Resource, ns, name, err)
	}
}

func waitFor(t testing.TB, ctx context.Context, gvr schema.GroupVersionResource, ns, name, what string, f func(*unstructured.Unstructured) bool) *unstructured.Unstructured {
	t.Helper()
	u, err := devcluster.WaitObject(ctx, cluster.Dynamic(), gvr, ns, name, f)
	if err != nil {
		t.Fatalf("waiting for %s %s/%s to be %s: %v", gvr.Resource, ns, name, what, err)
	}
	return u
}

func gone(u *unstructured.Unstructured) bool { return u == nil }

// jsonOf is v's JSON with sorted keys, for comparisons with verbatim
// values.
func jsonOf(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var m any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	b, _ = json.Marshal(m)
	return string(b)
}

func canon(t testing.TB, s string) string {
	t.Helper()
	var m any
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		t.Fatalf("%s: %v", s, err)
	}
	b, _ := json.Marshal(m)
	return string(b)
}

func readyPool(n int64) func(*unstructured.Unstructured) bool {
	return func(u *unstructured.Unstructured) bool {
		if u == nil {
			return false
		}
		r, _, _ := unstructured.NestedInt64(u.Object, "status", "replicas")
		rr, _, _ := unstructured.NestedInt64(u.Object, "status", "readyReplicas")
		return r == n && rr == n
	}
}

// poolMembers lists the Sandboxes the pool controls, by its selector.
func poolMembers(t testing.TB, ctx context.Context, ns, pool string) []unstructured.Unstructured {
	t.Helper()
	l, err := cluster.Dynamic().Resource(sandboxctl.GVR).Namespace(ns).List(ctx, metav1.ListOptions{LabelSelector: sandboxctl.PoolSelector(pool)})
	if err != nil {
		t.Fatal(err)
	}
	return l.Items
}

// claimSandbox is the name of the Sandbox a claim's status says it is bound to.
func claimSandbox(u *unstructured.Unstructured) string {
	n, _, _ := unstructured.NestedString(u.Object, "status", "sandbox", "name")
	return n
}

// readyClaim creates the claim name on pool (with extra spec fields),
// waits for Ready=True/DependenciesReady and returns it and its Sandbox's
// name.
func readyClaim(t testing.TB, ctx context.Context, ns, name, pool string, spec map[string]any) (*unstructured.Unstructured, string) {
	t.Helper()
	create(t, ctx, sandboxctl.ClaimGVR, ns, claimObj(name, pool, spec))
	got := waitFor(t, ctx, sandboxctl.ClaimGVR, ns, name, "Ready", claimReady("True", "DependenciesReady"))
	return got, claimSandbox(got)
}

func claimReady(status, reason string) func(*unstructured.Unstructured) bool {
	return func(u *unstructured.Unstructured) bool {
		c := condition(u, "Ready")
		return c.Status == status && c.Reason == reason
	}
}

func claimStatusJSON(t testing.TB, u *unstructured.Unstructured) string {
	t.Helper()
	st, _, _ := unstructured.NestedMap(u.Object, "status")
	// lastTransitionTime is a wall-clock second: blank it out.
	if cs, ok := st["conditions"].([]any); ok {
		for _, c := range cs {
			c.(map[string]any)["lastTransitionTime"] = "T"
		}
	}
	return jsonOf(t, st)
}

// claimTrace records the claim's Ready condition at every watch event,
// from its creation on.
type claimTrace struct {
	w      watch.Interface
	states []string
}

func traceClaims(t testing.TB, ctx context.Context, ns string) *claimTrace {
	t.Helper()
	cfg := cluster.RESTConfig()
	cfg.Timeout = 0
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	l, err := dyn.Resource(sandboxctl.ClaimGVR).Namespace(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	w, err := dyn.Resource(sandboxctl.ClaimGVR).Namespace(ns).Watch(ctx, metav1.ListOptions{ResourceVersion: l.GetResourceVersion()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Stop)
	return &claimTrace{w: w}
}

// until reads the named claim's events until f holds.
func (tr *claimTrace) until(t testing.TB, ctx context.Context, name, what string, f func(*unstructured.Unstructured) bool) *unstructured.Unstructured {
	t.Helper()
	for {
		select {
		case ev, ok := <-tr.w.ResultChan():
			if !ok {
				t.Fatalf("claim watch ended waiting for %s; Ready states: %v", what, tr.states)
			}
			u, ok := ev.Object.(*unstructured.Unstructured)
			if !ok || u.GetName() != name {
				continue
			}
			c := condition(u, "Ready")
			st := c.Status + "/" + c.Reason
			if !c.present {
				st = "-"
			}
			tr.states = append(tr.states, st)
			if f(u) {
				return u
			}
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v; Ready states: %v", what, ctx.Err(), tr.states)
		}
	}
}

func TestTemplateNetworkPolicy(t *testing.T) {
	is := is.New(t)
	ns := devcluster.NewNamespace(t, cluster, nil)
	ctx := ctxT(t, 60*time.Second)
	nps := cluster.Kube().NetworkingV1().NetworkPolicies(ns)
	npSpec := func(name string, cond func(*networkingv1.NetworkPolicy) bool) *networkingv1.NetworkPolicy {
		t.Helper()
		var out *networkingv1.NetworkPolicy
		u := waitFor(t, ctx, schema.GroupVersionResource{Group: "networking.k8s.io", Version: "v1", Resource: "networkpolicies"}, ns, name, "as expected",
			func(u *unstructured.Unstructured) bool {
				if u == nil {
					return cond(nil)
				}
				var np networkingv1.NetworkPolicy
				b, _ := json.Marshal(u.Object)
				_ = json.Unmarshal(b, &np)
				out = &np
				return cond(&np)
			})
		if u == nil {
			return nil
		}
		return out
	}

	tpl := create(t, ctx, sandboxctl.TemplateGVR, ns, templateObj("tpl", map[string]any{
		"labels":      map[string]any{"app": "demo", "paperclip.io/run-id": "r1", "agents.x-k8s.io/foo": "bar"},
		"annotations": map[string]any{"paperclip.io/note": "hello"},
	}, nil))
	// CRD defaults, and the controller's label on the template.
	is.Equal(jsonOf(t, tpl.Object["spec"].(map[string]any)["envVarsInjectionPolicy"]), `"Disallowed"`)
	is.Equal(jsonOf(t, tpl.Object["spec"].(map[string]any)["networkPolicyManagement"]), `"Managed"`)
	is.Equal(jsonOf(t, tpl.Object["spec"].(map[string]any)["volumeClaimTemplatesPolicy"]), `"Disallowed"`)
	waitFor(t, ctx, sandboxctl.TemplateGVR, ns, "tpl", "labelled", func(u *unstructured.Unstructured) bool {
		return u.GetLabels()[sandboxctl.TemplateRefHashLabel] == "9d22159f"
	})

	secureDefault := `{"podSelector":{"matchLabels":{"agents.x-k8s.io/sandbox-template-ref-hash":"9d22159f"}},"ingress":[{"from":[{"podSelector":{"matchLabels":{"app":"sandbox-router"}},"namespaceSelector":{"matchLabels":{"kubernetes.io/metadata.name":"agent-sandbox-system"}}}]}],"egress":[{"to":[{"ipBlock":{"cidr":"0.0.0.0/0","except":["10.0.0.0/8","172.16.0.0/12","192.168.0.0/16","169.254.0.0/16"]}},{"ipBlock":{"cidr":"::/0","except":["fc00::/7","fe80::/10"]}}]}],"policyTypes":["Ingress","Egress"]}`
	np := npSpec("tpl-network-policy", func(np *networkingv1.NetworkPolicy) bool { return np != nil })
	is.Equal(jsonOf(t, np.Spec), canon(t, secureDefault))
	is.Equal(len(np.OwnerReferences), 1)
	ref := np.OwnerReferences[0]
	is.Equal(ref.APIVersion+"/"+ref.Kind+"/"+ref.Name+"/"+string(ref.UID), sandboxctl.ExtAPIVersion+"/SandboxTemplate/tpl/"+string(tpl.GetUID()))
	is.True(*ref.Controller && *ref.BlockOwnerDeletion)

	// A hand edit is reverted.
	np.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{}
	_, err := nps.Update(ctx, np, metav1.UpdateOptions{})
	is.NoErr(err)
	np = npSpec("tpl-network-policy", func(np *networkingv1.NetworkPolicy) bool { return np != nil && np.Generation >= 3 })
	is.Equal(jsonOf(t, np.Spec), canon(t, secureDefault))

	// A custom networkPolicy: the template's rules, both policy types.
	create(t, ctx, sandboxctl.TemplateGVR, ns, templateObj("tpl-custom", nil, map[string]any{
		"networkPolicy": map[string]any{
			"egress":  []any{map[string]any{"to": []any{map[string]any{"ipBlock": map[string]any{"cidr": "0.0.0.0/0"}}}}},
			"ingress": []any{map[string]any{"from": []any{map[string]any{"podSelector": map[string]any{"matchLabels": map[string]any{"app": "client"}}}}, "ports": []any{map[string]any{"port": int64(8080), "protocol": "TCP"}}}},
		},
	}))
	np = npSpec("tpl-custom-network-policy", func(np *networkingv1.NetworkPolicy) bool { return np != nil })
	is.Equal(jsonOf(t, np.Spec), canon(t, `{"podSelector":{"matchLabels":{"agents.x-k8s.io/sandbox-template-ref-hash":"e14bf8ed"}},"ingress":[{"ports":[{"protocol":"TCP","port":8080}],"from":[{"podSelector":{"matchLabels":{"app":"client"}}}]}],"egress":[{"to":[{"ipBlock":{"cidr":"0.0.0.0/0"}}]}],"policyTypes":["Ingress","Egress"]}`))

	// Egress only: no ingress rules, and still both policy types (all
	// ingress denied).
	mergePatch(t, ctx, sandboxctl.TemplateGVR, ns, "tpl-custom", map[string]any{"spec": map[string]any{"networkPolicy": map[string]any{
		"ingress": nil, "egress": []any{map[string]any{"to": []any{map[string]any{"ipBlock": map[string]any{"cidr": "1.2.3.4/32"}}}}},
	}}})
	np = npSpec("tpl-custom-network-policy", func(np *networkingv1.NetworkPolicy) bool {
		return np != nil && len(np.Spec.Egress) == 1 && np.Spec.Egress[0].To[0].IPBlock.CIDR == "1.2.3.4/32"
	})
	is.Equal(len(np.Spec.Ingress), 0)
	is.Equal(np.Spec.PolicyTypes, []networkingv1.PolicyType{"Ingress", "Egress"})

	// Managed -> Unmanaged deletes it; back to Managed creates it again.
	mergePatch(t, ctx, sandboxctl.TemplateGVR, ns, "tpl-custom", map[string]any{"spec": map[string]any{"networkPolicyManagement": "Unmanaged"}})
	npSpec("tpl-custom-network-policy", func(np *networkingv1.NetworkPolicy) bool { return np == nil })
	mergePatch(t, ctx, sandboxctl.TemplateGVR, ns, "tpl-custom", map[string]any{"spec": map[string]any{"networkPolicyManagement": "Managed", "networkPolicy": nil}})
	np = npSpec("tpl-custom-network-policy", func(np *networkingv1.NetworkPolicy) bool { return np != nil })
	is.Equal(jsonOf(t, np.Spec.Egress), jsonOf(t, mustNP(t, secureDefault).Egress))

	// An Unmanaged template never gets one.
	create(t, ctx, sandboxctl.TemplateGVR, ns, templateObj("tpl-unmanaged", nil, map[string]any{"networkPolicyManagement": "Unmanaged"}))
	waitFor(t, ctx, sandboxctl.TemplateGVR, ns, "tpl-unmanaged", "labelled", func(u *unstructured.Unstructured) bool {
		return u.GetLabels()[sandboxctl.TemplateRefHashLabel] != ""
	})
	// (The label is written in the same reconcile that would create the
	// policy, before it: once labelled, the policy would exist.)
	_, err = nps.Get(ctx, "tpl-unmanaged-network-policy", metav1.GetOptions{})
	is.True(apierrors.IsNotFound(err))
}

func mustNP(t *testing.T, s string) networkingv1.NetworkPolicySpec {
	t.Helper()
	var spec networkingv1.NetworkPolicySpec
	if err := json.Unmarshal([]byte(s), &spec); err != nil {
		t.Fatal(err)
	}
	return spec
}

// setupPool creates the research run's template `tpl` and a pool `pool`
// of n members, and waits until they are all Ready.
func setupPool(t testing.TB, ctx context.Context, ns string, n int64) *unstructured.Unstructured {
	t.Helper()
	create(t, ctx, sandboxctl.TemplateGVR, ns, templateObj("tpl", map[string]any{
		"labels":      map[string]any{"app": "demo", "paperclip.io/run-id": "r1", "agents.x-k8s.io/foo": "bar"},
		"annotations": map[string]any{"paperclip.io/note": "hello"},
	}, nil))
	create(t, ctx, sandboxctl.WarmPoolGVR, ns, poolObj("pool", "tpl", n))
	return waitFor(t, ctx, sandboxctl.WarmPoolGVR, ns, "pool", fmt.Sprintf("%d ready", n), readyPool(n))
}

func TestWarmPoolMembers(t *testing.T) {
	is := is.New(t)
	ns := devcluster.NewNamespace(t, cluster, nil)
	ctx := ctxT(t, 90*time.Second)
	pool := setupPool(t, ctx, ns, 2)
	st, _, _ := unstructured.NestedMap(pool.Object, "status")
	is.Equal(jsonOf(t, st), `{"observedGeneration":1,"readyReplicas":2,"replicas":2,"selector":"agents.x-k8s.io/warm-pool-sandbox=91dd7983"}`)

	members := poolMembers(t, ctx, ns, "pool")
	is.Equal(len(members), 2)
	for _, m := range members {
		is.Equal(m.GetGenerateName(), "pool-")
		is.Equal(m.GetLabels(), map[string]string{
			"agents.x-k8s.io/created-by": "controller", "agents.x-k8s.io/launch-type": "warm",
			"agents.x-k8s.io/sandbox-pod-template-hash": "6826ca2f", "agents.x-k8s.io/sandbox-template-hash": "9b019d3a",
			"agents.x-k8s.io/sandbox-template-ref-hash": "9d22159f", "agents.x-k8s.io/warm-pool-sandbox": "91dd7983",
		})
		is.Equal(m.GetAnnotations(), map[string]string{"agents.x-k8s.io/pod-name": m.GetName(), "agents.x-k8s.io/sandbox-template-ref": "tpl"})
		refs := m.GetOwnerReferences()
		is.Equal(len(refs), 1)
		is.Equal(refs[0].Kind+"/"+refs[0].Name+"/"+string(refs[0].UID), "SandboxWarmPool/pool/"+string(pool.GetUID()))
		is.True(*refs[0].Controller && *refs[0].BlockOwnerDeletion)
		spec, _, _ := unstructured.NestedMap(m.Object, "spec")
		is.Equal(jsonOf(t, spec), canon(t, `{"operatingMode":"Running","podTemplate":{"metadata":{"annotations":{"cluster-autoscaler.kubernetes.io/safe-to-evict":"true","paperclip.io/note":"hello"},"labels":{"agents.x-k8s.io/foo":"bar","agents.x-k8s.io/sandbox-pod-template-hash":"6826ca2f","agents.x-k8s.io/sandbox-template-hash":"9b019d3a","agents.x-k8s.io/sandbox-template-ref-hash":"9d22159f","agents.x-k8s.io/warm-pool-sandbox":"91dd7983","app":"demo","paperclip.io/run-id":"r1"}},"spec":{"automountServiceAccountToken":false,"containers":[{"command":["sleep","infinity"],"image":"busybox","name":"main","resources":{}}],"dnsConfig":{"nameservers":["8.8.8.8","1.1.1.1"]},"dnsPolicy":"None","restartPolicy":"Always"}},"shutdownPolicy":"Retain"}`))

		pod, err := cluster.Kube().CoreV1().Pods(ns).Get(ctx, m.GetName(), metav1.GetOptions{})
		is.NoErr(err)
		is.Equal(pod.Labels, map[string]string{
			"agents.x-k8s.io/created-by": "controller", "agents.x-k8s.io/sandbox-name-hash": sandboxctl.NameHash(m.GetName()),
			"agents.x-k8s.io/sandbox-template-ref-hash": "9d22159f", "agents.x-k8s.io/warm-pool-sandbox": "91dd7983",
			"app": "demo", "paperclip.io/run-id": "r1",
		})
		is.Equal(pod.Annotations, map[string]string{
			"agents.x-k8s.io/propagated-annotations":         "cluster-autoscaler.kubernetes.io/safe-to-evict,paperclip.io/note",
			"agents.x-k8s.io/propagated-labels":              "app,paperclip.io/run-id",
			"cluster-autoscaler.kubernetes.io/safe-to-evict": "true", "paperclip.io/note": "hello",
		})
		is.Equal(pod.Spec.DNSPolicy, corev1.DNSNone)
		is.Equal(*pod.Spec.AutomountServiceAccountToken, false)
	}

	// A member deleted is replaced.
	victim := members[0].GetName()
	is.NoErr(cluster.Dynamic().Resource(sandboxctl.GVR).Namespace(ns).Delete(ctx, victim, metav1.DeleteOptions{}))
	waitFor(t, ctx, sandboxctl.GVR, ns, victim, "gone", gone)
	waitFor(t, ctx, sandboxctl.WarmPoolGVR, ns, "pool", "refilled", readyPool(2))
	members = poolMembers(t, ctx, ns, "pool")
	is.Equal(len(members), 2)
	for _, m := range members {
		is.True(m.GetName() != victim)
	}

	// Scale up through the scale subresource, down through spec.replicas.
	_, err := cluster.Dynamic().Resource(sandboxctl.WarmPoolGVR).Namespace(ns).Patch(ctx, "pool", types.MergePatchType, []byte(`{"spec":{"replicas":3}}`), metav1.PatchOptions{}, "scale")
	is.NoErr(err)
	waitFor(t, ctx, sandboxctl.WarmPoolGVR, ns, "pool", "scaled to 3", readyPool(3))
	mergePatch(t, ctx, sandboxctl.WarmPoolGVR, ns, "pool", map[string]any{"spec": map[string]any{"replicas": 1}})
	waitFor(t, ctx, sandboxctl.WarmPoolGVR, ns, "pool", "scaled to 1", readyPool(1))
	waitMembers(t, ctx, ns, "pool", 1)

	// Deleting the pool leaves its members to the garbage collector.
	is.NoErr(cluster.Dynamic().Resource(sandboxctl.WarmPoolGVR).Namespace(ns).Delete(ctx, "pool", metav1.DeleteOptions{}))
	waitMembers(t, ctx, ns, "pool", 0)
}

// waitMembers waits until the pool controls exactly n live Sandboxes.
func waitMembers(t testing.TB, ctx context.Context, ns, pool string, n int) {
	t.Helper()
	cfg := cluster.RESTConfig()
	cfg.Timeout = 0
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ri := dyn.Resource(sandboxctl.GVR).Namespace(ns)
	opts := metav1.ListOptions{LabelSelector: sandboxctl.PoolSelector(pool)}
	l, err := ri.List(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, m := range l.Items {
		have[m.GetName()] = true
	}
	if len(have) == n {
		return
	}
	opts.ResourceVersion = l.GetResourceVersion()
	w, err := ri.Watch(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	for len(have) != n {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				t.Fatalf("watch ended waiting for %d members of pool %s, have %v", n, pool, have)
			}
			u, ok := ev.Object.(*unstructured.Unstructured)
			if !ok {
				continue
			}
			if ev.Type == watch.Deleted {
				delete(have, u.GetName())
			} else {
				have[u.GetName()] = true
			}
		case <-ctx.Done():
			t.Fatalf("waiting for %d members of pool %s: %v (have %v)", n, pool, ctx.Err(), have)
		}
	}
}

func TestClaimAdoptsWarmMember(t *testing.T) {
	is := is.New(t)
	ns := devcluster.NewNamespace(t, cluster, nil)
	ctx := ctxT(t, 90*time.Second)
	pool := setupPool(t, ctx, ns, 2)
	members := poolMembers(t, ctx, ns, "pool")
	oldest := members[0]
	for _, m := range members[1:] {
		if m.GetCreationTimestamp().Time.Before(oldest.GetCreationTimestamp().Time) {
			oldest = m
		}
	}
	podBefore, err := cluster.Kube().CoreV1().Pods(ns).Get(ctx, oldest.GetName(), metav1.GetOptions{})
	is.NoErr(err)

	tr := traceClaims(t, ctx, ns)
	cl := create(t, ctx, sandboxctl.ClaimGVR, ns, claimObj("c-warm", "pool", map[string]any{
		"additionalPodMetadata": map[string]any{"labels": map[string]any{"sandbox.users.io/team": "a"}, "annotations": map[string]any{"example.com/note": "x"}},
	}))
	got := tr.until(t, ctx, "c-warm", "Ready", claimReady("True", "DependenciesReady"))
	// One status write, straight to Ready=True.
	is.Equal(tr.states[len(tr.states)-1], "True/DependenciesReady")
	for _, s := range tr.states {
		is.True(s == "-" || s == "True/DependenciesReady") // never Ready=False on the warm path
	}
	sbName := claimSandbox(got)
	is.True(sbName != "") // a member was adopted
	sameMember := sbName == oldest.GetName()
	is.True(sameMember) // the oldest member
	is.Equal(got.GetAnnotations()[sandboxctl.SandboxNameAnnotation], sbName)
	is.True(got.GetAnnotations()[sandboxctl.FirstObservedAnnotation] != "")
	is.Equal(got.GetGeneration(), int64(1))
	is.Equal(claimStatusJSON(t, got), canon(t, fmt.Sprintf(`{"conditions":[{"lastTransitionTime":"T","message":"Pod is Ready","observedGeneration":1,"reason":"DependenciesReady","status":"True","type":"Ready"}],"sandbox":{"name":%q,"podIPs":[%q]}}`, sbName, podBefore.Status.PodIP)))
	// The claim's Ready is the Sandbox's, lastTransitionTime included.
	sbNow, err := cluster.Dynamic().Resource(sandboxctl.GVR).Namespace(ns).Get(ctx, sbName, metav1.GetOptions{})
	is.NoErr(err)
	is.Equal(readyLTT(got), readyLTT(sbNow))

	// The adopted Sandbox: controlled by the claim, pool labels gone.
	adopted := waitFor(t, ctx, sandboxctl.GVR, ns, sbName, "adopted", func(u *unstructured.Unstructured) bool {
		return readyIs("True", "DependenciesReady")(u) && condition(u, "Ready").ObservedGeneration == 2
	})
	is.Equal(adopted.GetLabels(), map[string]string{
		"agents.x-k8s.io/claim-uid": string(cl.GetUID()), "agents.x-k8s.io/launch-type": "warm", "agents.x-k8s.io/sandbox-template-ref-hash": "9d22159f",
	})
	refs := adopted.GetOwnerReferences()
	is.Equal(len(refs), 1)
	is.Equal(refs[0].APIVersion+"/"+refs[0].Kind+"/"+refs[0].Name+"/"+string(refs[0].UID), sandboxctl.ExtAPIVersion+"/SandboxClaim/c-warm/"+string(cl.GetUID()))
	is.True(*refs[0].Controller && *refs[0].BlockOwnerDeletion)
	meta, _, _ := unstructured.NestedMap(adopted.Object, "spec", "podTemplate", "metadata")
	is.Equal(jsonOf(t, meta), canon(t, fmt.Sprintf(`{"annotations":{"example.com/note":"x","paperclip.io/note":"hello"},"labels":{"agents.x-k8s.io/claim-uid":%q,"agents.x-k8s.io/foo":"bar","agents.x-k8s.io/sandbox-template-ref-hash":"9d22159f","app":"demo","paperclip.io/run-id":"r1","sandbox.users.io/team":"a"}}`, cl.GetUID())))

	// The same pod, patched in place.
	pod, err := devcluster.WaitPod(ctx, cluster.Kube(), ns, sbName, func(p *corev1.Pod) bool {
		return p != nil && p.Labels["sandbox.users.io/team"] == "a"
	})
	is.NoErr(err)
	is.Equal(pod.UID, podBefore.UID)
	is.Equal(pod.Labels, map[string]string{
		"agents.x-k8s.io/sandbox-name-hash": sandboxctl.NameHash(sbName), "agents.x-k8s.io/sandbox-template-ref-hash": "9d22159f",
		"app": "demo", "paperclip.io/run-id": "r1", "sandbox.users.io/team": "a",
	})
	is.Equal(pod.Annotations, map[string]string{
		"agents.x-k8s.io/propagated-annotations": "example.com/note,paperclip.io/note",
		"agents.x-k8s.io/propagated-labels":      "app,paperclip.io/run-id,sandbox.users.io/team",
		"example.com/note":                       "x", "paperclip.io/note": "hello",
	})

	// The pool refills with a new member.
	waitFor(t, ctx, sandboxctl.WarmPoolGVR, ns, "pool", "refilled", readyPool(2))
	for _, m := range poolMembers(t, ctx, ns, "pool") {
		is.True(m.GetName() != sbName)
		is.Equal(m.GetOwnerReferences()[0].UID, pool.GetUID())
	}

	// The SandboxAdopted event.
	ev := waitEvent(t, ctx, ns, "SandboxAdopted of c-warm", func(ev *eventsv1.Event) bool {
		return ev.Reason == "SandboxAdopted" && ev.Regarding.Name == "c-warm"
	})
	is.Equal(ev.Note, fmt.Sprintf("Adopted warm pool Sandbox %q", sbName))
	is.Equal(ev.Action, "Adoption")
	is.Equal(ev.Type, "Normal")
	is.Equal(ev.ReportingController, "sandboxclaim-controller")
	is.Equal(ev.Regarding.Kind+"/"+string(ev.Regarding.UID), "SandboxClaim/"+string(cl.GetUID()))

	// A claim without additionalPodMetadata: the adoption update writes
	// spec.additionalPodMetadata {} and the generation goes to 2.
	create(t, ctx, sandboxctl.ClaimGVR, ns, claimObj("c-plain", "pool", nil))
	plain := waitFor(t, ctx, sandboxctl.ClaimGVR, ns, "c-plain", "Ready", claimReady("True", "DependenciesReady"))
	is.Equal(plain.GetGeneration(), int64(2))
	is.Equal(condition(plain, "Ready").ObservedGeneration, int64(2))
	apm, ok, _ := unstructured.NestedMap(plain.Object, "spec", "additionalPodMetadata")
	is.True(ok)
	is.Equal(len(apm), 0)
}

func readyLTT(u *unstructured.Unstructured) string {
	cs, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range cs {
		if m := c.(map[string]any); m["type"] == "Ready" {
			s, _ := m["lastTransitionTime"].(string)
			return s
		}
	}
	return ""
}

func TestClaimColdPath(t *testing.T) {
	is := is.New(t)
	ns := devcluster.NewNamespace(t, cluster, nil)
	ctx := ctxT(t, 90*time.Second)
	create(t, ctx, sandboxctl.TemplateGVR, ns, templateObj("tpl", nil, nil))
	create(t, ctx, sandboxctl.WarmPoolGVR, ns, poolObj("pool0", "tpl", 0))
	waitFor(t, ctx, sandboxctl.WarmPoolGVR, ns, "pool0", "observed", func(u *unstructured.Unstructured) bool {
		s, _, _ := unstructured.NestedString(u.Object, "status", "selector")
		return s != ""
	})

	tr := traceClaims(t, ctx, ns)
	cl := create(t, ctx, sandboxctl.ClaimGVR, ns, claimObj("c-cold", "pool0", nil))
	got := tr.until(t, ctx, "c-cold", "Ready", claimReady("True", "DependenciesReady"))
	is.Equal(tr.states[0], "-")
	first := ""
	for _, s := range tr.states {
		if s != "-" {
			first = s
			break
		}
	}
	is.Equal(first, "False/SandboxNotReady") // the first status write
	sbName := claimSandbox(got)
	is.Equal(sbName, "c-cold") // named like the claim
	_, annotated := got.GetAnnotations()[sandboxctl.SandboxNameAnnotation]
	is.True(!annotated) // no sandbox-name annotation on the cold path
	is.Equal(got.GetGeneration(), int64(1))

	sb, err := cluster.Dynamic().Resource(sandboxctl.GVR).Namespace(ns).Get(ctx, "c-cold", metav1.GetOptions{})
	is.NoErr(err)
	is.Equal(sb.GetLabels(), map[string]string{
		"agents.x-k8s.io/claim-uid": string(cl.GetUID()), "agents.x-k8s.io/launch-type": "cold", "agents.x-k8s.io/sandbox-template-ref-hash": "9d22159f",
	})
	is.Equal(sb.GetAnnotations()[sandboxctl.TemplateRefAnnotation], "tpl")
	is.Equal(metav1.GetControllerOf(sb).UID, cl.GetUID())
	meta, _, _ := unstructured.NestedMap(sb.Object, "spec", "podTemplate", "metadata")
	is.Equal(jsonOf(t, meta), canon(t, fmt.Sprintf(`{"labels":{"agents.x-k8s.io/claim-uid":%q,"agents.x-k8s.io/sandbox-template-ref-hash":"9d22159f"}}`, cl.GetUID())))
	pod, err := cluster.Kube().CoreV1().Pods(ns).Get(ctx, "c-cold", metav1.GetOptions{})
	is.NoErr(err)
	is.Equal(pod.Labels, map[string]string{"agents.x-k8s.io/sandbox-name-hash": sandboxctl.NameHash("c-cold"), "agents.x-k8s.io/sandbox-template-ref-hash": "9d22159f"})

	// The pool's status is not touched by cold claims.
	p, err := cluster.Dynamic().Resource(sandboxctl.WarmPoolGVR).Namespace(ns).Get(ctx, "pool0", metav1.GetOptions{})
	is.NoErr(err)
	st, _, _ := unstructured.NestedMap(p.Object, "status")
	is.Equal(jsonOf(t, st), `{"observedGeneration":1,"selector":"agents.x-k8s.io/warm-pool-sandbox=52a694c9"}`)
}

func TestClaimMissingPoolAndTemplate(t *testing.T) {
	is := is.New(t)
	ns := devcluster.NewNamespace(t, cluster, nil)
	ctx := ctxT(t, 90*time.Second)

	create(t, ctx, sandboxctl.ClaimGVR, ns, claimObj("g-nopool", "nopool", nil))
	got := waitFor(t, ctx, sandboxctl.ClaimGVR, ns, "g-nopool", "WarmPoolNotFound", claimReady("False", "WarmPoolNotFound"))
	is.Equal(claimStatusJSON(t, got), `{"conditions":[{"lastTransitionTime":"T","message":"SandboxWarmPool \"nopool\" not found","observedGeneration":1,"reason":"WarmPoolNotFound","status":"False","type":"Ready"}],"sandbox":{}}`)
	ltt := readyLTT(got)

	// The pool appears, its template does not: TemplateNotFound, same
	// lastTransitionTime; the pool status has no replicas.
	create(t, ctx, sandboxctl.WarmPoolGVR, ns, &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": sandboxctl.ExtAPIVersion, "kind": sandboxctl.WarmPoolKind,
		"metadata": map[string]any{"name": "nopool"}, "spec": map[string]any{"sandboxTemplateRef": map[string]any{"name": "notpl"}},
	}})
	got = waitFor(t, ctx, sandboxctl.ClaimGVR, ns, "g-nopool", "TemplateNotFound", claimReady("False", "TemplateNotFound"))
	is.Equal(condition(got, "Ready").Message, `SandboxTemplate "notpl" not found`)
	is.Equal(readyLTT(got), ltt)
	p := waitFor(t, ctx, sandboxctl.WarmPoolGVR, ns, "nopool", "observed", func(u *unstructured.Unstructured) bool {
		s, _, _ := unstructured.NestedString(u.Object, "status", "selector")
		return s != ""
	})
	st, _, _ := unstructured.NestedMap(p.Object, "status")
	is.Equal(jsonOf(t, st), `{"observedGeneration":1,"selector":"agents.x-k8s.io/warm-pool-sandbox=dcec7f38"}`)
	r, _, _ := unstructured.NestedInt64(p.Object, "spec", "replicas")
	is.Equal(r, int64(1)) // CRD default

	// The template appears: the waiting claim goes cold (a Sandbox named
	// like it) and the pool fills.
	create(t, ctx, sandboxctl.TemplateGVR, ns, templateObj("notpl", nil, nil))
	got = waitFor(t, ctx, sandboxctl.ClaimGVR, ns, "g-nopool", "Ready", claimReady("True", "DependenciesReady"))
	name := claimSandbox(got)
	is.Equal(name, "g-nopool")
	waitFor(t, ctx, sandboxctl.WarmPoolGVR, ns, "nopool", "filled", readyPool(1))
}

func TestClaimInvalidMetadata(t *testing.T) {
	is := is.New(t)
	ns := devcluster.NewNamespace(t, cluster, nil)
	ctx := ctxT(t, 90*time.Second)
	setupPool(t, ctx, ns, 1)
	long := ""
	for range 64 {
		long += "x"
	}
	for name, c := range map[string]struct {
		meta map[string]any
		msg  string
	}{
		"m-runid": {map[string]any{"labels": map[string]any{"paperclip.io/run-id": "r2"}},
			`invalid additionalPodMetadata: failed to validate label "paperclip.io/run-id": label domain "paperclip.io" is not in the allowlist`},
		"m-team": {map[string]any{"labels": map[string]any{"team": "a"}},
			`invalid additionalPodMetadata: failed to validate label "team": label "team" must have a domain prefix (e.g. 'sandbox.users.io/my-label') to prevent opting into unintended policy domains`},
		"m-agents": {map[string]any{"annotations": map[string]any{"agents.x-k8s.io/x": "y"}},
			`invalid additionalPodMetadata: failed to validate annotation "agents.x-k8s.io/x": restricted system domain: "agents.x-k8s.io/x" is not allowed in AdditionalPodMetadata`},
		"m-k8s": {map[string]any{"annotations": map[string]any{"example.kubernetes.io/x": "y"}},
			`invalid additionalPodMetadata: failed to validate annotation "example.kubernetes.io/x": restricted system domain: "example.kubernetes.io/x" is not allowed in AdditionalPodMetadata`},
		"m-long": {map[string]any{"labels": map[string]any{"sandbox.users.io/long": long}},
			fmt.Sprintf(`invalid additionalPodMetadata: failed to validate label "sandbox.users.io/long": invalid label value: %q does not match allowed pattern: must be no more than 63 bytes`, long)},
	} {
		create(t, ctx, sandboxctl.ClaimGVR, ns, claimObj(name, "pool", map[string]any{"additionalPodMetadata": c.meta}))
		got := waitFor(t, ctx, sandboxctl.ClaimGVR, ns, name, "InvalidMetadata", claimReady("False", "InvalidMetadata"))
		is.Equal(claimStatusJSON(t, got), jsonOf(t, map[string]any{
			"conditions": []any{map[string]any{"lastTransitionTime": "T", "message": c.msg, "observedGeneration": 1, "reason": "InvalidMetadata", "status": "False", "type": "Ready"}},
			"sandbox":    map[string]any{},
		}))
		_, err := cluster.Dynamic().Resource(sandboxctl.GVR).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
		is.True(apierrors.IsNotFound(err)) // no Sandbox
	}
	// No member was consumed.
	members := poolMembers(t, ctx, ns, "pool")
	is.Equal(len(members), 1)
	is.Equal(metav1.GetControllerOf(&members[0]).Kind, "SandboxWarmPool")

	// safe-to-evict is exempt, and a sandbox.users.io label is accepted.
	create(t, ctx, sandboxctl.ClaimGVR, ns, claimObj("m-ok", "pool", map[string]any{"additionalPodMetadata": map[string]any{
		"labels":      map[string]any{"sub.sandbox.users.io/x": "y"},
		"annotations": map[string]any{"cluster-autoscaler.kubernetes.io/safe-to-evict": "false"},
	}}))
	waitFor(t, ctx, sandboxctl.ClaimGVR, ns, "m-ok", "Ready", claimReady("True", "DependenciesReady"))
}

func TestClaimEnvForcesColdStart(t *testing.T) {
	is := is.New(t)
	ns := devcluster.NewNamespace(t, cluster, nil)
	ctx := ctxT(t, 90*time.Second)
	tpl := templateObj("tpl-env", nil, map[string]any{"envVarsInjectionPolicy": "Allowed", "volumeClaimTemplatesPolicy": "Allowed"})
	c := mainContainer()
	c["env"] = []any{map[string]any{"name": "BASE", "value": "base"}}
	_ = unstructured.SetNestedSlice(tpl.Object, []any{c}, "spec", "podTemplate", "spec", "containers")
	create(t, ctx, sandboxctl.TemplateGVR, ns, tpl)
	create(t, ctx, sandboxctl.WarmPoolGVR, ns, poolObj("pool-env", "tpl-env", 2))
	waitFor(t, ctx, sandboxctl.WarmPoolGVR, ns, "pool-env", "ready", readyPool(2))
	before := poolMembers(t, ctx, ns, "pool-env")

	_, name := readyClaim(t, ctx, ns, "c-env2", "pool-env", map[string]any{"env": []any{
		map[string]any{"name": "FOO", "value": "bar"}, map[string]any{"name": "SIDE", "value": "s", "containerName": "main"},
	}})
	is.Equal(name, "c-env2") // cold although warm members were ready
	sb, err := cluster.Dynamic().Resource(sandboxctl.GVR).Namespace(ns).Get(ctx, "c-env2", metav1.GetOptions{})
	is.NoErr(err)
	cs, _, _ := unstructured.NestedSlice(sb.Object, "spec", "podTemplate", "spec", "containers")
	is.Equal(jsonOf(t, cs[0].(map[string]any)["env"]), `[{"name":"BASE","value":"base"},{"name":"SIDE","value":"s"},{"name":"FOO","value":"bar"}]`)
	after := poolMembers(t, ctx, ns, "pool-env")
	is.Equal(names(after), names(before)) // no member consumed

	// Overriding a template variable under Allowed is a ReconcilerError.
	create(t, ctx, sandboxctl.ClaimGVR, ns, claimObj("c-ovr", "pool-env", map[string]any{"env": []any{map[string]any{"name": "BASE", "value": "changed"}}}))
	got := waitFor(t, ctx, sandboxctl.ClaimGVR, ns, "c-ovr", "ReconcilerError", claimReady("False", "ReconcilerError"))
	is.Equal(condition(got, "Ready").Message, `Error seen: environment variable override is not allowed by the template policy for variable "BASE"`)

	// volumeClaimTemplates force a cold start too.
	create(t, ctx, sandboxctl.ClaimGVR, ns, claimObj("c-vct2", "pool-env", map[string]any{"volumeClaimTemplates": []any{map[string]any{
		"metadata": map[string]any{"name": "data"},
		"spec":     map[string]any{"accessModes": []any{"ReadWriteOnce"}, "resources": map[string]any{"requests": map[string]any{"storage": "1Gi"}}},
	}}}))
	vsb := waitFor(t, ctx, sandboxctl.GVR, ns, "c-vct2", "created", func(u *unstructured.Unstructured) bool { return u != nil })
	vcts, _, _ := unstructured.NestedSlice(vsb.Object, "spec", "volumeClaimTemplates")
	is.Equal(len(vcts), 1)

	// With the default Disallowed policy: EnvVarsInjectionRejected and
	// VolumeClaimTemplatesError, nothing created.
	create(t, ctx, sandboxctl.TemplateGVR, ns, templateObj("tpl", nil, nil))
	create(t, ctx, sandboxctl.WarmPoolGVR, ns, poolObj("pool", "tpl", 1))
	create(t, ctx, sandboxctl.ClaimGVR, ns, claimObj("c-env", "pool", map[string]any{"env": []any{map[string]any{"name": "FOO", "value": "bar"}}}))
	got = waitFor(t, ctx, sandboxctl.ClaimGVR, ns, "c-env", "EnvVarsInjectionRejected", claimReady("False", "EnvVarsInjectionRejected"))
	is.Equal(claimStatusJSON(t, got), `{"conditions":[{"lastTransitionTime":"T","message":"environment variable injection rejected: environment variable injection is not allowed by the template policy","observedGeneration":1,"reason":"EnvVarsInjectionRejected","status":"False","type":"Ready"}],"sandbox":{}}`)
	create(t, ctx, sandboxctl.ClaimGVR, ns, claimObj("c-vct", "pool", map[string]any{"volumeClaimTemplates": []any{map[string]any{
		"metadata": map[string]any{"name": "data"},
		"spec":     map[string]any{"accessModes": []any{"ReadWriteOnce"}, "resources": map[string]any{"requests": map[string]any{"storage": "1Gi"}}},
	}}}))
	got = waitFor(t, ctx, sandboxctl.ClaimGVR, ns, "c-vct", "VolumeClaimTemplatesError", claimReady("False", "VolumeClaimTemplatesError"))
	is.Equal(condition(got, "Ready").Message, "failed to merge volume claim templates: volume claim templates are disallowed by the template")
	for _, n := range []string{"c-env", "c-vct"} {
		_, err := cluster.Dynamic().Resource(sandboxctl.GVR).Namespace(ns).Get(ctx, n, metav1.GetOptions{})
		is.True(apierrors.IsNotFound(err))
	}
}

func names(items []unstructured.Unstructured) map[string]bool {
	out := map[string]bool{}
	for _, u := range items {
		out[u.GetName()] = true
	}
	return out
}

func TestClaimLifecycle(t *testing.T) {
	is := is.New(t)
	ns := devcluster.NewNamespace(t, cluster, nil)
	ctx := ctxT(t, 120*time.Second)
	setupPool(t, ctx, ns, 4)

	// Claims with a shutdownTime a few seconds ahead (whole seconds, as
	// the API keeps them), one per policy.
	shutdown := time.Now().Add(3 * time.Second).UTC().Truncate(time.Second).Add(time.Second).Format(time.RFC3339)
	lc := func(policy string) map[string]any {
		m := map[string]any{"shutdownTime": shutdown}
		if policy != "" {
			m["shutdownPolicy"] = policy
		}
		return map[string]any{"lifecycle": m}
	}
	cls := map[string]*unstructured.Unstructured{}
	for name, policy := range map[string]string{"e-ret": "Retain", "e-def": "", "e-del": "Delete", "e-fg": "DeleteForeground"} {
		cls[name] = create(t, ctx, sandboxctl.ClaimGVR, ns, claimObj(name, "pool", lc(policy)))
	}
	def, _, _ := unstructured.NestedString(cls["e-def"].Object, "spec", "lifecycle", "shutdownPolicy")
	is.Equal(def, "Retain") // CRD default
	sbOf := map[string]string{}
	for name := range cls {
		got := waitFor(t, ctx, sandboxctl.ClaimGVR, ns, name, "Ready", func(u *unstructured.Unstructured) bool {
			return u == nil || claimReady("True", "DependenciesReady")(u) || claimReady("False", "ClaimExpired")(u)
		})
		if got != nil {
			sbOf[name] = claimSandbox(got)
		}
	}
	// The Sandboxes carry no shutdownTime: the claim controller does it all.
	for name, sb := range sbOf {
		if sb == "" {
			continue
		}
		u, err := cluster.Dynamic().Resource(sandboxctl.GVR).Namespace(ns).Get(ctx, sb, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			continue // already expired and gone
		}
		is.NoErr(err)
		_, has, _ := unstructured.NestedString(u.Object, "spec", "shutdownTime")
		is.True(!has) // no shutdownTime on the Sandbox of name
		_ = name
	}

	// Retain: the claim stays, with ClaimExpired and status.sandbox {};
	// its Sandbox is deleted.
	for _, name := range []string{"e-ret", "e-def"} {
		got := waitFor(t, ctx, sandboxctl.ClaimGVR, ns, name, "expired, Sandbox released", func(u *unstructured.Unstructured) bool {
			n := claimSandbox(u)
			return claimReady("False", "ClaimExpired")(u) && n == ""
		})
		is.Equal(condition(got, "Ready").Message, "Claim expired. Sandbox cleanup initiated.")
		st, _, _ := unstructured.NestedMap(got.Object, "status", "sandbox")
		is.Equal(len(st), 0)
		if sbOf[name] != "" {
			waitFor(t, ctx, sandboxctl.GVR, ns, sbOf[name], "deleted", gone)
		}
	}
	// Delete and DeleteForeground: the claim goes, and its Sandbox with it.
	for _, name := range []string{"e-del", "e-fg"} {
		waitFor(t, ctx, sandboxctl.ClaimGVR, ns, name, "deleted", gone)
		if sbOf[name] != "" {
			waitFor(t, ctx, sandboxctl.GVR, ns, sbOf[name], "deleted", gone)
		}
	}
	for _, want := range []string{"e-ret: Claim expired", "e-del: Claim expired", "e-del: Deleting Claim (ShutdownPolicy=Delete)", "e-fg: Deleting Claim (ShutdownPolicy=DeleteForeground)"} {
		waitEvent(t, ctx, ns, want, func(ev *eventsv1.Event) bool {
			return ev.Reason == "ClaimExpired" && ev.Regarding.Name+": "+ev.Note == want
		})
	}
}

// waitEvent waits (list, then watch) for an events.k8s.io event of the
// namespace that f accepts.
func waitEvent(t testing.TB, ctx context.Context, ns, what string, f func(*eventsv1.Event) bool) *eventsv1.Event {
	t.Helper()
	cfg := cluster.RESTConfig()
	cfg.Timeout = 0
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	evs := kube.EventsV1().Events(ns)
	l, err := evs.List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range l.Items {
		if f(&l.Items[i]) {
			return &l.Items[i]
		}
	}
	w, err := evs.Watch(ctx, metav1.ListOptions{ResourceVersion: l.ResourceVersion})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	for {
		select {
		case e, ok := <-w.ResultChan():
			if !ok {
				t.Fatalf("event watch ended waiting for %s", what)
			}
			if ev, ok := e.Object.(*eventsv1.Event); ok && f(ev) {
				return ev
			}
		case <-ctx.Done():
			t.Fatalf("waiting for the event %s: %v", what, ctx.Err())
		}
	}
}

func TestClaimRebindsWhenItsSandboxIsDeleted(t *testing.T) {
	is := is.New(t)
	ns := devcluster.NewNamespace(t, cluster, nil)
	ctx := ctxT(t, 90*time.Second)
	setupPool(t, ctx, ns, 2)
	_, first := readyClaim(t, ctx, ns, "f-sb", "pool", nil)
	firstPod, err := cluster.Kube().CoreV1().Pods(ns).Get(ctx, first, metav1.GetOptions{})
	is.NoErr(err)
	waitFor(t, ctx, sandboxctl.WarmPoolGVR, ns, "pool", "refilled", readyPool(2))

	tr := traceClaims(t, ctx, ns)
	is.NoErr(cluster.Dynamic().Resource(sandboxctl.GVR).Namespace(ns).Delete(ctx, first, metav1.DeleteOptions{}))
	got := tr.until(t, ctx, "f-sb", "rebound", func(u *unstructured.Unstructured) bool {
		n := claimSandbox(u)
		return n != "" && n != first
	})
	for _, s := range tr.states {
		is.Equal(s, "True/DependenciesReady") // Ready stays True throughout
	}
	second := claimSandbox(got)
	is.Equal(got.GetAnnotations()[sandboxctl.SandboxNameAnnotation], second)
	sb, err := cluster.Dynamic().Resource(sandboxctl.GVR).Namespace(ns).Get(ctx, second, metav1.GetOptions{})
	is.NoErr(err)
	is.Equal(metav1.GetControllerOf(sb).UID, got.GetUID())
	secondPod, err := cluster.Kube().CoreV1().Pods(ns).Get(ctx, second, metav1.GetOptions{})
	is.NoErr(err)
	is.True(secondPod.UID != firstPod.UID) // a different pod: pin the pod UID
	is.True(!reflect.DeepEqual(secondPod.Status.PodIP, "") && secondPod.Name != firstPod.Name)

	// With the pool empty, the next rebind goes cold: a Sandbox named like
	// the claim.
	mergePatch(t, ctx, sandboxctl.WarmPoolGVR, ns, "pool", map[string]any{"spec": map[string]any{"replicas": 0}})
	waitMembers(t, ctx, ns, "pool", 0)
	is.NoErr(cluster.Dynamic().Resource(sandboxctl.GVR).Namespace(ns).Delete(ctx, second, metav1.DeleteOptions{}))
	got = waitFor(t, ctx, sandboxctl.ClaimGVR, ns, "f-sb", "rebound cold", func(u *unstructured.Unstructured) bool {
		n := claimSandbox(u)
		return n == "f-sb" && claimReady("True", "DependenciesReady")(u)
	})
	_, annotated := got.GetAnnotations()[sandboxctl.SandboxNameAnnotation]
	is.True(!annotated)
}

// A burst of claims on a small pool: exactly as many go warm as there
// were members, every claim becomes Ready, no member is given twice.
func TestClaimBurstOnSmallPool(t *testing.T) {
	is := is.New(t)
	ns := devcluster.NewNamespace(t, cluster, nil)
	ctx := ctxT(t, 120*time.Second)
	setupPool(t, ctx, ns, 3)
	warmNames := names(poolMembers(t, ctx, ns, "pool"))
	const n = 8
	errs := make(chan error, n)
	for i := range n {
		go func() {
			_, err := cluster.Dynamic().Resource(sandboxctl.ClaimGVR).Namespace(ns).Create(ctx, claimObj(fmt.Sprintf("b-%d", i), "pool", nil), metav1.CreateOptions{})
			errs <- err
		}()
	}
	for range n {
		is.NoErr(<-errs)
	}
	warm, cold := 0, 0
	bound := map[string]string{}
	for i := range n {
		name := fmt.Sprintf("b-%d", i)
		got := waitFor(t, ctx, sandboxctl.ClaimGVR, ns, name, "Ready", claimReady("True", "DependenciesReady"))
		sb := claimSandbox(got)
		if other, dup := bound[sb]; dup {
			t.Fatalf("Sandbox %s bound to both %s and %s", sb, other, name)
		}
		bound[sb] = name
		switch {
		case warmNames[sb]:
			warm++
		case sb == name:
			cold++
		default:
			// A refill member that became Ready before this claim was
			// reconciled (the real controller's refill came later).
			sbo, err := cluster.Dynamic().Resource(sandboxctl.GVR).Namespace(ns).Get(ctx, sb, metav1.GetOptions{})
			is.NoErr(err)
			is.Equal(sbo.GetGenerateName(), "pool-")
			warm++
		}
	}
	is.True(warm >= 3)     // every initial member was handed out
	is.Equal(warm+cold, n) // and every claim got one Sandbox
	for name := range warmNames {
		is.True(bound[name] != "") // initial member given to a claim
	}
}

// The extension CRDs are agent-sandbox's own: their defaults and
// validation are the API server's, as observed.
func TestExtensionCRDs(t *testing.T) {
	is := is.New(t)
	ns := devcluster.NewNamespace(t, cluster, nil)
	ctx := ctxT(t, 30*time.Second)
	pools := cluster.Dynamic().Resource(sandboxctl.WarmPoolGVR).Namespace(ns)
	_, err := pools.Create(ctx, poolObj("neg", "tpl", -1), metav1.CreateOptions{})
	is.True(apierrors.IsInvalid(err)) // replicas >= 0
	is.True(err != nil && containsAll(err.Error(), "should be greater than or equal to 0"))

	claims := cluster.Dynamic().Resource(sandboxctl.ClaimGVR).Namespace(ns)
	noRef := claimObj("noref", "x", nil)
	unstructured.RemoveNestedField(noRef.Object, "spec", "warmPoolRef")
	_, err = claims.Create(ctx, noRef, metav1.CreateOptions{})
	is.True(apierrors.IsInvalid(err))
	is.True(containsAll(err.Error(), "spec.warmPoolRef: Required value"))

	old := claimObj("old", "x", map[string]any{"sandboxTemplateRef": map[string]any{"name": "tpl"}})
	_, err = claims.Create(ctx, old, metav1.CreateOptions{FieldValidation: "Strict"})
	is.True(apierrors.IsBadRequest(err))
	is.True(containsAll(err.Error(), `unknown field "spec.sandboxTemplateRef"`))

	cl := create(t, ctx, sandboxctl.ClaimGVR, ns, claimObj("defaults", "x", map[string]any{"lifecycle": map[string]any{}}))
	policy, _, _ := unstructured.NestedString(cl.Object, "spec", "lifecycle", "shutdownPolicy")
	is.Equal(policy, "Retain")
}

func containsAll(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// Under Recreate a template pod spec change replaces the unclaimed
// members; under OnReplenish (the default) members stay and a claim gets
// a stale one; a metadata-only change replaces nothing.
func TestWarmPoolUpdateStrategy(t *testing.T) {
	is := is.New(t)
	ns := devcluster.NewNamespace(t, cluster, nil)
	ctx := ctxT(t, 90*time.Second)
	create(t, ctx, sandboxctl.TemplateGVR, ns, templateObj("tpl", nil, nil))
	rec := poolObj("pool-rec", "tpl", 2)
	_ = unstructured.SetNestedField(rec.Object, "Recreate", "spec", "updateStrategy", "type")
	create(t, ctx, sandboxctl.WarmPoolGVR, ns, rec)
	create(t, ctx, sandboxctl.WarmPoolGVR, ns, poolObj("pool-onr", "tpl", 2))
	waitFor(t, ctx, sandboxctl.WarmPoolGVR, ns, "pool-rec", "ready", readyPool(2))
	waitFor(t, ctx, sandboxctl.WarmPoolGVR, ns, "pool-onr", "ready", readyPool(2))
	onr := names(poolMembers(t, ctx, ns, "pool-onr"))
	recBefore := names(poolMembers(t, ctx, ns, "pool-rec"))

	// Labels only: the blueprint hash changes but the spec does not.
	mergePatch(t, ctx, sandboxctl.TemplateGVR, ns, "tpl", map[string]any{"spec": map[string]any{"podTemplate": map[string]any{"metadata": map[string]any{"labels": map[string]any{"x": "y"}}}}})
	// A spec change: the env of the container.
	c := mainContainer()
	c["env"] = []any{map[string]any{"name": "X", "value": "1"}}
	mergePatch(t, ctx, sandboxctl.TemplateGVR, ns, "tpl", map[string]any{"spec": map[string]any{"podTemplate": map[string]any{"spec": map[string]any{"containers": []any{c}}}}})
	waitFor(t, ctx, sandboxctl.WarmPoolGVR, ns, "pool-rec", "recreated", func(u *unstructured.Unstructured) bool {
		if !readyPool(2)(u) {
			return false
		}
		for _, m := range poolMembers(t, ctx, ns, "pool-rec") {
			if recBefore[m.GetName()] || m.GetDeletionTimestamp() != nil {
				return false
			}
		}
		return true
	})
	for _, m := range poolMembers(t, ctx, ns, "pool-rec") {
		cs, _, _ := unstructured.NestedSlice(m.Object, "spec", "podTemplate", "spec", "containers")
		is.Equal(jsonOf(t, cs[0].(map[string]any)["env"]), `[{"name":"X","value":"1"}]`)
	}
	// OnReplenish: the same members (checked after Recreate acted on the
	// same template events).
	is.Equal(names(poolMembers(t, ctx, ns, "pool-onr")), onr)
	_, sbName := readyClaim(t, ctx, ns, "i-onr", "pool-onr", nil)
	is.True(onr[sbName]) // a stale member, handed out
}

// Template deleted while its pool exists: the NetworkPolicy goes, the pool
// keeps its member and a claim still adopts it; the pool does not refill,
// and the next claim gets TemplateNotFound.
func TestTemplateDeletedUnderPool(t *testing.T) {
	is := is.New(t)
	ns := devcluster.NewNamespace(t, cluster, nil)
	ctx := ctxT(t, 90*time.Second)
	setupPool(t, ctx, ns, 1)
	waitFor(t, ctx, schema.GroupVersionResource{Group: "networking.k8s.io", Version: "v1", Resource: "networkpolicies"}, ns, "tpl-network-policy", "created", func(u *unstructured.Unstructured) bool { return u != nil })
	is.NoErr(cluster.Dynamic().Resource(sandboxctl.TemplateGVR).Namespace(ns).Delete(ctx, "tpl", metav1.DeleteOptions{}))
	waitFor(t, ctx, sandboxctl.TemplateGVR, ns, "tpl", "gone", gone)
	waitFor(t, ctx, schema.GroupVersionResource{Group: "networking.k8s.io", Version: "v1", Resource: "networkpolicies"}, ns, "tpl-network-policy", "garbage-collected", gone)
	members := poolMembers(t, ctx, ns, "pool")
	is.Equal(len(members), 1)

	_, sbName := readyClaim(t, ctx, ns, "g-after", "pool", nil)
	is.Equal(sbName, members[0].GetName())
	p := waitFor(t, ctx, sandboxctl.WarmPoolGVR, ns, "pool", "emptied", func(u *unstructured.Unstructured) bool {
		_, has, _ := unstructured.NestedInt64(u.Object, "status", "replicas")
		return !has
	})
	st, _, _ := unstructured.NestedMap(p.Object, "status")
	is.Equal(jsonOf(t, st), `{"observedGeneration":1,"selector":"agents.x-k8s.io/warm-pool-sandbox=91dd7983"}`)
	create(t, ctx, sandboxctl.ClaimGVR, ns, claimObj("g-after2", "pool", nil))
	got := waitFor(t, ctx, sandboxctl.ClaimGVR, ns, "g-after2", "TemplateNotFound", claimReady("False", "TemplateNotFound"))
	is.Equal(condition(got, "Ready").Message, `SandboxTemplate "tpl" not found`)
	is.Equal(len(poolMembers(t, ctx, ns, "pool")), 0) // no refill
}

// Losing things under a claim: a deleted pod is recreated under the same
// Sandbox (the claim stays bound to it); a failed pod is mirrored as
// Finished and Ready=False PodFailed, and ttlSecondsAfterFinished then
// expires the claim; a Sandbox that expires by itself gives SandboxExpired.
func TestClaimMirrorsItsSandbox(t *testing.T) {
	is := is.New(t)
	ns := devcluster.NewNamespace(t, cluster, nil)
	ctx := ctxT(t, 90*time.Second)
	setupPool(t, ctx, ns, 2)

	_, sbName := readyClaim(t, ctx, ns, "f-pod", "pool", nil)
	pod, err := cluster.Kube().CoreV1().Pods(ns).Get(ctx, sbName, metav1.GetOptions{})
	is.NoErr(err)
	is.NoErr(cluster.Kube().CoreV1().Pods(ns).Delete(ctx, sbName, metav1.DeleteOptions{}))
	_, err = devcluster.WaitPod(ctx, cluster.Kube(), ns, sbName, func(p *corev1.Pod) bool {
		return p != nil && p.UID != pod.UID && p.Status.PodIP != ""
	})
	is.NoErr(err)
	got := waitFor(t, ctx, sandboxctl.ClaimGVR, ns, "f-pod", "Ready on the new pod", func(u *unstructured.Unstructured) bool {
		ips, _, _ := unstructured.NestedStringSlice(u.Object, "status", "sandbox", "podIPs")
		return claimReady("True", "DependenciesReady")(u) && len(ips) == 1
	})
	again := claimSandbox(got)
	is.Equal(again, sbName) // same Sandbox, same pod name

	// A pod that fails: Finished and Ready=False/PodFailed, mirrored whole;
	// ttlSecondsAfterFinished 1 with Retain then expires the claim, which
	// stays with Finished and ClaimExpired.
	failTpl := templateObj("tpl-fail", map[string]any{"labels": map[string]any{devcluster.FailLabel: "true"}}, nil)
	create(t, ctx, sandboxctl.TemplateGVR, ns, failTpl)
	create(t, ctx, sandboxctl.WarmPoolGVR, ns, poolObj("pool-fail", "tpl-fail", 0))
	create(t, ctx, sandboxctl.ClaimGVR, ns, claimObj("e-ttlret", "pool-fail", map[string]any{"lifecycle": map[string]any{"ttlSecondsAfterFinished": int64(1)}}))
	failed := waitFor(t, ctx, sandboxctl.ClaimGVR, ns, "e-ttlret", "Finished", func(u *unstructured.Unstructured) bool {
		return condition(u, "Finished").Status == "True"
	})
	is.Equal(condition(failed, "Finished").Reason, "PodFailed")
	is.True(claimReady("False", "PodFailed")(failed) || claimReady("False", "ClaimExpired")(failed))
	expired := waitFor(t, ctx, sandboxctl.ClaimGVR, ns, "e-ttlret", "expired", func(u *unstructured.Unstructured) bool {
		n := claimSandbox(u)
		return claimReady("False", "ClaimExpired")(u) && n == ""
	})
	is.Equal(claimStatusJSON(t, expired), `{"conditions":[{"lastTransitionTime":"T","message":"Pod failed","observedGeneration":1,"reason":"PodFailed","status":"True","type":"Finished"},{"lastTransitionTime":"T","message":"Claim expired. Sandbox cleanup initiated.","observedGeneration":1,"reason":"ClaimExpired","status":"False","type":"Ready"}],"sandbox":{}}`)
	waitFor(t, ctx, sandboxctl.GVR, ns, "e-ttlret", "deleted", gone)

	// The claimed Sandbox expires by itself (shutdownTime patched onto it).
	_, sbName = readyClaim(t, ctx, ns, "j-exp", "pool", nil)
	mergePatch(t, ctx, sandboxctl.GVR, ns, sbName, map[string]any{"spec": map[string]any{"shutdownTime": time.Now().Add(-time.Second).UTC().Format(time.RFC3339)}})
	got = waitFor(t, ctx, sandboxctl.ClaimGVR, ns, "j-exp", "SandboxExpired", claimReady("False", "SandboxExpired"))
	is.Equal(condition(got, "Ready").Message, "Underlying Sandbox resource has expired independently of the Claim.")
	name := claimSandbox(got)
	is.Equal(name, sbName) // not re-provisioned
}

// Warm members without a Pod IP make a claim wait (no status written) until
// two seconds after its creation (creationTimestamp, whole seconds), then
// it goes cold: a member whose pod is unschedulable is never handed out.
func TestClaimWaitsForWarmPodIPsThenGoesCold(t *testing.T) {
	is := is.New(t)
	ns := devcluster.NewNamespace(t, cluster, nil)
	ctx := ctxT(t, 60*time.Second)
	tpl := templateObj("tpl-unsched", nil, nil)
	_ = unstructured.SetNestedStringMap(tpl.Object, map[string]string{"devcluster.paperclip.io/no-such-node": "true"}, "spec", "podTemplate", "spec", "nodeSelector")
	create(t, ctx, sandboxctl.TemplateGVR, ns, tpl)
	create(t, ctx, sandboxctl.WarmPoolGVR, ns, poolObj("pool-unsched", "tpl-unsched", 1))
	waitFor(t, ctx, sandboxctl.WarmPoolGVR, ns, "pool-unsched", "a member", func(u *unstructured.Unstructured) bool {
		r, _, _ := unstructured.NestedInt64(u.Object, "status", "replicas")
		return r == 1
	})
	member := poolMembers(t, ctx, ns, "pool-unsched")[0]
	// Its pod exists and is unschedulable: no IP, ever.
	_, err := devcluster.WaitPod(ctx, cluster.Kube(), ns, member.GetName(), func(p *corev1.Pod) bool {
		if p == nil {
			return false // not created yet
		}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodScheduled && c.Reason == corev1.PodReasonUnschedulable {
				return true
			}
		}
		return false
	})
	is.NoErr(err)

	tr := traceClaims(t, ctx, ns)
	cl := create(t, ctx, sandboxctl.ClaimGVR, ns, claimObj("l-unsched", "pool-unsched", nil))
	got := tr.until(t, ctx, "l-unsched", "bound", func(u *unstructured.Unstructured) bool {
		n := claimSandbox(u)
		return n != ""
	})
	name := claimSandbox(got)
	is.Equal(name, "l-unsched") // cold, named like the claim
	for _, s := range tr.states[:len(tr.states)-1] {
		is.Equal(s, "-") // no status while waiting
	}
	is.Equal(tr.states[len(tr.states)-1], "False/SandboxNotReady")
	sb, err := cluster.Dynamic().Resource(sandboxctl.GVR).Namespace(ns).Get(ctx, "l-unsched", metav1.GetOptions{})
	is.NoErr(err)
	waited := sb.GetCreationTimestamp().Sub(cl.GetCreationTimestamp().Time)
	is.True(waited >= 2*time.Second) // created no earlier than the claim's creation second + 2 s
	m, err := cluster.Dynamic().Resource(sandboxctl.GVR).Namespace(ns).Get(ctx, member.GetName(), metav1.GetOptions{})
	is.NoErr(err)
	is.Equal(metav1.GetControllerOf(m).Kind, "SandboxWarmPool") // the member stayed in the pool
}

// Members not Ready past the readiness grace period (shortened here, as in
// the research run) are replaced when their pod failed, held when it is
// unschedulable (with a WarmPoolNotProgressing Warning on the pool, and a
// WarmPoolProgressing event once it no longer holds any).
func TestWarmPoolStuckMembers(t *testing.T) {
	is := is.New(t)
	ns := devcluster.NewNamespace(t, cluster, nil)
	ctx := ctxT(t, 90*time.Second)
	ctl := cluster.SandboxController()
	ctl.SetWarmPoolTimings(2*time.Second, 2*time.Second)
	t.Cleanup(func() { ctl.SetWarmPoolTimings(0, 0) })

	create(t, ctx, sandboxctl.TemplateGVR, ns, templateObj("tpl-fail", map[string]any{"labels": map[string]any{devcluster.FailLabel: "true"}}, nil))
	create(t, ctx, sandboxctl.WarmPoolGVR, ns, poolObj("pool-fail", "tpl-fail", 1))
	waitMembers(t, ctx, ns, "pool-fail", 1)
	first := poolMembers(t, ctx, ns, "pool-fail")[0].GetName()
	waitFor(t, ctx, sandboxctl.GVR, ns, first, "failed", readyIs("False", "PodFailed"))
	waitFor(t, ctx, sandboxctl.GVR, ns, first, "replaced", gone)
	waitFor(t, ctx, sandboxctl.WarmPoolGVR, ns, "pool-fail", "a replacement", func(u *unstructured.Unstructured) bool {
		for _, m := range poolMembers(t, ctx, ns, "pool-fail") {
			if m.GetName() != first {
				return true
			}
		}
		return false
	})
	mergePatch(t, ctx, sandboxctl.WarmPoolGVR, ns, "pool-fail", map[string]any{"spec": map[string]any{"replicas": 0}})

	tpl := templateObj("tpl-unsched", nil, nil)
	_ = unstructured.SetNestedStringMap(tpl.Object, map[string]string{"devcluster.paperclip.io/no-such-node": "true"}, "spec", "podTemplate", "spec", "nodeSelector")
	create(t, ctx, sandboxctl.TemplateGVR, ns, tpl)
	create(t, ctx, sandboxctl.WarmPoolGVR, ns, poolObj("pool-unsched", "tpl-unsched", 1))
	waitMembers(t, ctx, ns, "pool-unsched", 1)
	held := poolMembers(t, ctx, ns, "pool-unsched")[0].GetName()
	ev := waitEvent(t, ctx, ns, "WarmPoolNotProgressing", func(ev *eventsv1.Event) bool {
		return ev.Reason == "WarmPoolNotProgressing" && ev.Regarding.Name == "pool-unsched"
	})
	is.Equal(ev.Type, "Warning")
	is.Equal(ev.Action, "Reconciling")
	is.Equal(ev.ReportingController, "sandboxwarmpool-controller")
	is.Equal(ev.Note, "1/1 sandboxes are unschedulable past the 2s readiness grace period; holding them instead of replacing (replacements would be equally unschedulable)")
	_, err := cluster.Dynamic().Resource(sandboxctl.GVR).Namespace(ns).Get(ctx, held, metav1.GetOptions{})
	is.NoErr(err) // held, not replaced

	mergePatch(t, ctx, sandboxctl.WarmPoolGVR, ns, "pool-unsched", map[string]any{"spec": map[string]any{"replicas": 0}})
	ev = waitEvent(t, ctx, ns, "WarmPoolProgressing", func(ev *eventsv1.Event) bool {
		return ev.Reason == "WarmPoolProgressing" && ev.Regarding.Name == "pool-unsched"
	})
	is.Equal(ev.Note, "Warm pool is progressing again")
}
