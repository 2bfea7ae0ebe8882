package plugin

import (
	"context"
	"encoding/base64"
	"strings"
	"testing"

	"github.com/matryer/is"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/paperclip-k8s/paperclip-k8s/engine"
)

// The sandboxclaim backend's decisions in process (the controller's part
// runs on the real control plane: cmd/paperclip-k8s/warmpool_test.go).

func warmConfig() map[string]any {
	cfg := hookConfig()
	cfg["backend"] = "sandboxclaim"
	cfg["warmPoolSize"] = 3
	// No controller runs here: standby leases are tested on the real
	// control plane (cmd/paperclip-k8s/standby_test.go).
	cfg["standbyLeases"] = 0
	return cfg
}

// acquireWarm acquires acme's lease with warmConfig on f; it returns the
// params it sent and the lease's metadata.
func acquireWarm(t *testing.T, f *fakeCluster) (AcquireParams, LeaseMetadata) {
	t.Helper()
	in := acquireParams("acme")
	in.Config = warmConfig()
	l, err := f.p.AcquireLease(context.Background(), in)
	if err != nil {
		t.Fatal(err)
	}
	return in, metadataFrom(l.Metadata)
}

var gvrSecret = schema.GroupVersionResource{Version: "v1", Resource: "secrets"}

// warmRunSecret acquires a warm lease and sets its run Secret's data to
// what data returns for it: the claim's ref, the claim, the lease's
// metadata and the updated Secret.
func warmRunSecret(t *testing.T, f *fakeCluster, data func(*unstructured.Unstructured) map[string]any) (engine.Ref, *unstructured.Unstructured, LeaseMetadata, *unstructured.Unstructured) {
	t.Helper()
	is := is.New(t)
	ctx := context.Background()
	_, m := acquireWarm(t, f)
	claims, _ := f.p.Catalog.Get("sandboxclaim")
	ref := engine.Ref{Resource: claims, Namespace: m.Namespace, Name: m.WorkloadName}
	w, err := f.e.Get(ctx, ref)
	is.NoErr(err)
	sc := f.dyn.Resource(gvrSecret).Namespace(m.Namespace)
	sec, err := sc.Get(ctx, m.SecretName, metav1.GetOptions{})
	is.NoErr(err)
	is.NoErr(unstructured.SetNestedMap(sec.Object, data(sec), "data"))
	sec, err = sc.Update(ctx, sec, metav1.UpdateOptions{})
	is.NoErr(err)
	return ref, w, m, sec
}

// A run Secret whose data is not base64 (changed after acquire) is refused
// with the field and the fix, and without the value.
func TestRunEnvNotBase64SaysTheFix(t *testing.T) {
	is := is.New(t)
	f := fakeProvider(t)
	ref, w, m, _ := warmRunSecret(t, f, func(*unstructured.Unstructured) map[string]any {
		return map[string]any{"API_KEY": "sk-secret-value!"}
	})
	_, err := f.p.runEnv(context.Background(), f.cl, ref, w, m)
	is.True(err != nil)
	is.True(strings.Contains(err.Error(), "data.API_KEY is not base64"))
	is.True(strings.Contains(err.Error(), "acquire a new one"))
	is.True(!strings.Contains(err.Error(), "sk-secret-value"))
}

// Acquire applies the tenant's template and pool (warmPoolSize) with the
// tenant, and creates a claim on that pool whose pod label is the one the
// run's scoped policy selects on; a run of another adapter than the pool's
// is refused before anything is created, with the file's refusal.
func TestSandboxClaimAcquireInProcess(t *testing.T) {
	is := is.New(t)
	f := fakeProvider(t)
	ctx := context.Background()
	in, m := acquireWarm(t, f)
	is.Equal(m.Backend, "sandboxclaim")
	is.Equal(m.WorkloadKind, "SandboxClaim")

	get := func(file, name string) *unstructured.Unstructured {
		t.Helper()
		s, ok := f.p.Catalog.Get(file)
		is.True(ok)
		o, err := f.e.Get(ctx, engine.Ref{Resource: s, Namespace: m.Namespace, Name: name})
		is.NoErr(err)
		return o
	}
	pool := get("sandboxwarmpool", "paperclip-agent")
	replicas, _, _ := unstructured.NestedInt64(pool.Object, "spec", "replicas")
	is.Equal(replicas, int64(3))
	tpl := get("sandboxtemplate", "paperclip-agent")
	sa, _, _ := unstructured.NestedString(tpl.Object, "spec", "podTemplate", "spec", "serviceAccountName")
	is.Equal(sa, TenantServiceAccount)
	claim := get("sandboxclaim", m.WorkloadName)
	ref, _, _ := unstructured.NestedString(claim.Object, "spec", "warmPoolRef", "name")
	is.Equal(ref, "paperclip-agent")
	labels, _, _ := unstructured.NestedStringMap(claim.Object, "spec", "additionalPodMetadata", "labels")
	// A claim may be made before its run: its pod's label is the lease's name.
	is.Equal(labels, map[string]string{"sandbox.users.io/paperclip-run-id": m.WorkloadName})
	np := get("networkpolicy-scoped", m.ScopedNetworkPolicyName)
	sel, _, _ := unstructured.NestedStringMap(np.Object, "spec", "podSelector", "matchLabels")
	is.Equal(sel, labels)

	// Another adapter: refused, nothing created.
	claims, _ := f.p.Catalog.Get("sandboxclaim")
	before, err := f.e.List(ctx, claims, m.Namespace, "")
	is.NoErr(err)
	in.AdapterType = "codex_local"
	_, err = f.p.AcquireLease(ctx, in)
	is.True(err != nil)
	is.True(strings.Contains(err.Error(), `backend "sandboxclaim" cannot serve this run (adapter "codex_local"): the sandboxclaim backend runs the config's default adapter (adapterType)`))
	after, err := f.e.List(ctx, claims, m.Namespace, "")
	is.NoErr(err)
	is.Equal(len(after), len(before))
}

// The run's environment of a warm lease is its run Secret's data, read
// only when the Secret is controlled by the lease's claim.
func TestSandboxClaimRunEnv(t *testing.T) {
	is := is.New(t)
	f := fakeProvider(t)
	ctx := context.Background()
	// The API server turns stringData into data; the fake does not.
	var sd map[string]string
	ref, w, m, sec := warmRunSecret(t, f, func(sec *unstructured.Unstructured) map[string]any {
		sd, _, _ = unstructured.NestedStringMap(sec.Object, "stringData")
		data := map[string]any{}
		for k, v := range sd {
			data[k] = base64.StdEncoding.EncodeToString([]byte(v))
		}
		return data
	})
	sc := f.dyn.Resource(gvrSecret).Namespace(m.Namespace)

	env, err := f.p.runEnv(ctx, f.cl, ref, w, m)
	is.NoErr(err)
	is.Equal(env["BOOTSTRAP_TOKEN"], sd["BOOTSTRAP_TOKEN"])
	is.Equal(len(env["BOOTSTRAP_TOKEN"]), 64)
	is.Equal(env["PAPERCLIP_EGRESS_POLICY"], sd["PAPERCLIP_EGRESS_POLICY"])

	// A lease whose metadata names no Secret cannot run commands.
	none := m
	none.RunObjects = nil
	_, err = f.p.runEnv(ctx, f.cl, ref, w, none)
	is.True(err != nil && strings.Contains(err.Error(), "lists no secret run object"))

	// A Secret the claim does not control is never used.
	sec.SetOwnerReferences([]metav1.OwnerReference{{APIVersion: "v1", Kind: "ConfigMap", Name: "other", UID: "uid-other", Controller: new(true)}})
	_, err = sc.Update(ctx, sec, metav1.UpdateOptions{})
	is.NoErr(err)
	_, err = f.p.runEnv(ctx, f.cl, ref, w, m)
	is.True(err != nil && strings.Contains(err.Error(), "is not controlled by SandboxClaim paperclip-acme/"+m.WorkloadName))

	// A backend whose pod has the environment itself reads nothing.
	sb, _ := f.p.Catalog.Get("sandbox")
	env, err = f.p.runEnv(ctx, f.cl, engine.Ref{Resource: sb, Namespace: m.Namespace, Name: m.WorkloadName}, w, m)
	is.NoErr(err)
	is.Equal(env, map[string]string(nil))
}
