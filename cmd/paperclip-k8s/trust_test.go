package main

import (
	"context"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The tests in this file play a hostile company admin: company A's config
// and A's companyId, with company B's leases, forged lease metadata and
// configs that name namespaces A does not own. Every attempt must be
// refused with an error that says why, and leave B's objects and the
// cluster's own namespaces as they were.

// otherCompany returns hooks for a second company on the same worker (so
// what the worker remembers of B's leases is there for A to try).
func (h *hooks) otherCompany(t *testing.T) *hooks {
	t.Helper()
	b := &hooks{t: t, env: h.env, w: h.w, company: "co-" + randHex(4), config: maps.Clone(h.config)}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = h.env.Kube().CoreV1().Namespaces().Delete(ctx, b.namespace(), metav1.DeleteOptions{})
	})
	return b
}

// withConfig returns a copy of h whose config has extra keys.
func (h *hooks) withConfig(extra map[string]any) *hooks {
	c := *h
	c.config = maps.Clone(h.config)
	maps.Copy(c.config, extra)
	return &c
}

func wantErr(t *testing.T, err *rpcError, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("want an error containing %q, got none", parts)
	}
	for _, p := range parts {
		if !strings.Contains(err.Message, p) {
			t.Errorf("error %q does not contain %q", err.Message, p)
		}
	}
}

func TestTrustAnotherCompanysLeaseIsRefused(t *testing.T) {
	is := is.New(t)
	a := newHooks(t, "sandbox", nil)
	b := a.otherCompany(t)
	ctx := context.Background()

	// B acquires and uses a lease: the worker now remembers B's pod.
	lb := b.acquire(nil)
	r := b.exec(lb, "echo b-secret > b.txt && cat b.txt", nil)
	is.Equal(r.code(), 0)
	a.acquire(nil) // A's tenant exists too

	// A presents B's lease as it is (B's metadata names B's namespace).
	stolen := func(h *hooks, l lease) map[string]any {
		return h.with(map[string]any{"providerLeaseId": l.ProviderLeaseID, "leaseMetadata": l.Metadata})
	}
	const notOurs = "belongs to another company or environment"
	wantErr(t, a.w.callErr("environmentExecute", a.execParams(lb, "cat b.txt", nil)), lb.meta("namespace"), notOurs)
	wantErr(t, a.w.callErr("environmentResumeLease", stolen(a, lb)), notOurs)
	wantErr(t, a.w.callErr("environmentReleaseLease", stolen(a, lb)), notOurs)
	wantErr(t, a.w.callErr("environmentDestroyLease", stolen(a, lb)), notOurs)
	wantErr(t, a.w.callErr("environmentSyncOut", a.with(map[string]any{"lease": lb, "operations": []any{}})), notOurs)

	// Without B's metadata, the name alone resolves in A's own namespace,
	// where B's workload does not exist.
	bare := lease{ProviderLeaseID: lb.ProviderLeaseID}
	wantErr(t, a.w.callErr("environmentExecute", a.execParams(bare, "cat b.txt", nil)), "no longer exists")
	var resumed lease
	a.w.mustCall("environmentResumeLease", stolen(a, bare), &resumed)
	is.Equal(resumed.id(), "") // expired: not A's
	a.w.mustCall("environmentDestroyLease", stolen(a, bare), nil)

	// A's config aimed at B's namespace: the workload there carries B's
	// company label, so nothing is used or deleted.
	ab := a.withConfig(map[string]any{"namespacePrefix": "paperclip-", "companySlug": b.company})
	const wrongCompany = "is not a workload of this company and environment"
	wantErr(t, ab.w.callErr("environmentExecute", ab.execParams(lb, "cat b.txt", nil)), wrongCompany, "paperclip.io/company-id")
	wantErr(t, ab.w.callErr("environmentResumeLease", stolen(ab, lb)), wrongCompany)
	wantErr(t, ab.w.callErr("environmentReleaseLease", stolen(ab, lb)), wrongCompany)
	wantErr(t, ab.w.callErr("environmentDestroyLease", stolen(ab, lb)), wrongCompany)
	wantErr(t, ab.w.callErr("environmentSyncOut", ab.with(map[string]any{"lease": lb, "operations": []any{}})), wrongCompany)

	// B's own environment id is part of the check: B's company with another
	// environment's id cannot use the lease either.
	other := b.with(map[string]any{"environmentId": "env-other", "lease": lb, "command": "true", "timeoutMs": 60000})
	wantErr(t, b.w.callErr("environmentExecute", other), wrongCompany, "paperclip.io/environment-id")

	// B's lease is untouched and still works for B.
	_, err := b.dyn().Resource(gvrSandbox).Namespace(b.namespace()).Get(ctx, lb.id(), metav1.GetOptions{})
	is.NoErr(err)
	r = b.exec(lb, "cat b.txt", nil)
	is.Equal(r.Stdout, "b-secret\n")
}

func TestTrustAnotherCompanysJobIsNotDestroyed(t *testing.T) {
	is := is.New(t)
	a := newHooks(t, "job", nil)
	b := a.otherCompany(t)
	lb := b.acquire(nil)
	ab := a.withConfig(map[string]any{"companySlug": b.company})
	p := ab.with(map[string]any{"providerLeaseId": lb.ProviderLeaseID, "leaseMetadata": lb.Metadata})
	wantErr(t, ab.w.callErr("environmentDestroyLease", p), "is not a workload of this company and environment")
	_, err := b.dyn().Resource(gvrJob).Namespace(b.namespace()).Get(context.Background(), lb.id(), metav1.GetOptions{})
	is.NoErr(err) // B's Job is still there
}

func TestTrustForgedMetadataDeletesNothingElsewhere(t *testing.T) {
	is := is.New(t)
	a := newHooks(t, "sandbox", nil)
	b := a.otherCompany(t)
	ctx := context.Background()
	admin := a.kube()
	b.acquire(nil) // B's tenant, with its deny-all policy

	victim := "victim-" + randHex(4)
	_, err := admin.CoreV1().Secrets("kube-system").Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: victim}}, metav1.CreateOptions{})
	is.NoErr(err)
	t.Cleanup(func() {
		_ = admin.CoreV1().Secrets("kube-system").Delete(context.Background(), victim, metav1.DeleteOptions{})
	})

	la := a.acquire(nil)
	// A Secret in A's own namespace that no workload owns.
	_, err = admin.CoreV1().Secrets(a.namespace()).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "bystander"}}, metav1.CreateOptions{})
	is.NoErr(err)

	forged := maps.Clone(la.Metadata)
	forged["namespace"] = "kube-system"
	forged["runObjects"] = []string{"secret/" + victim}
	p := a.with(map[string]any{"providerLeaseId": la.ProviderLeaseID, "leaseMetadata": forged})
	wantErr(t, a.w.callErr("environmentDestroyLease", p), `names namespace "kube-system"`)
	wantErr(t, a.w.callErr("environmentReleaseLease", p), `names namespace "kube-system"`)

	// A workload name that is not a run name (another tenant's object).
	p = a.with(map[string]any{"providerLeaseId": "paperclip-deny-all", "leaseMetadata": map[string]any{"namespace": b.namespace()}})
	wantErr(t, a.w.callErr("environmentDestroyLease", p), "is not a lease of this provider")

	// Run objects named in the metadata are deleted only when A's workload
	// owns them: the bystander and B's policy stay.
	forged = maps.Clone(la.Metadata)
	forged["runObjects"] = []string{"secret/bystander", "networkpolicy-deny/paperclip-deny-all", "secret/" + victim}
	a.w.mustCall("environmentDestroyLease", a.with(map[string]any{"providerLeaseId": la.ProviderLeaseID, "leaseMetadata": forged}), nil)
	a.waitRunGone(la, 60*time.Second)

	_, err = admin.CoreV1().Secrets("kube-system").Get(ctx, victim, metav1.GetOptions{})
	is.NoErr(err)
	_, err = admin.CoreV1().Secrets(a.namespace()).Get(ctx, "bystander", metav1.GetOptions{})
	is.NoErr(err)
	_, err = a.dyn().Resource(gvrNetworkPolicy).Namespace(b.namespace()).Get(ctx, "paperclip-deny-all", metav1.GetOptions{})
	is.NoErr(err)
	_, err = a.dyn().Resource(gvrNetworkPolicy).Namespace(a.namespace()).Get(ctx, "paperclip-deny-all", metav1.GetOptions{})
	is.NoErr(err) // a tenant object, not a run object: never deleted by a destroy
}

func TestTrustTenantNamespaceMustBeTheCompanys(t *testing.T) {
	is := is.New(t)
	a := newHooks(t, "sandbox", nil)
	b := a.otherCompany(t)
	ctx := context.Background()
	admin := a.kube()
	b.acquire(nil)

	// Reserved namespaces are validation errors, not warnings.
	for _, c := range []struct {
		extra map[string]any
		want  string
	}{
		{map[string]any{"namespacePrefix": "kube-"}, `"kube-" starts with "kube-"`},
		{map[string]any{"namespacePrefix": "kube-", "companySlug": "system"}, `"kube-" starts with "kube-"`},
		{map[string]any{"namespacePrefix": "openshift-"}, `starts with "openshift-"`},
		{map[string]any{"namespacePrefix": "de", "companySlug": "fault"}, `"default" is a namespace the cluster owns`},
	} {
		var vr struct {
			OK     bool     `json:"ok"`
			Errors []string `json:"errors"`
		}
		cfg := maps.Clone(a.config)
		maps.Copy(cfg, c.extra)
		a.w.mustCall("environmentValidateConfig", map[string]any{"driverKey": "kubernetes", "config": cfg}, &vr)
		is.True(!vr.OK)
		if !strings.Contains(strings.Join(vr.Errors, "\n"), c.want) {
			t.Errorf("validate %v: errors %q do not contain %q", c.extra, vr.Errors, c.want)
		}
		wantErr(t, a.w.callErr("environmentAcquireLease", a.withConfig(c.extra).acquireParams(nil)), c.want)
	}
	ks, err := admin.CoreV1().Namespaces().Get(ctx, "kube-system", metav1.GetOptions{})
	is.NoErr(err)
	is.Equal(ks.Labels["pod-security.kubernetes.io/enforce"], "") // nothing was applied to kube-system

	// The worker's own namespace is never a tenant namespace.
	own := newHooks(t, "sandbox", nil, workerOpts{env: []string{"PAPERCLIP_K8S_NAMESPACE=paperclip-worker"}})
	wantErr(t, own.w.callErr("environmentAcquireLease", own.withConfig(map[string]any{"companySlug": "worker"}).acquireParams(nil)),
		`namespace "paperclip-worker" is the namespace the Paperclip worker runs in`)

	// B's namespace is B's: A's config naming it is refused, B's labels stay.
	ab := a.withConfig(map[string]any{"companySlug": b.company})
	wantErr(t, ab.w.callErr("environmentAcquireLease", ab.acquireParams(nil)),
		"Namespace "+b.namespace()+" exists but was not created by this provider", "label paperclip.io/company-id is \""+b.company+"\"")
	bns, err := admin.CoreV1().Namespaces().Get(ctx, b.namespace(), metav1.GetOptions{})
	is.NoErr(err)
	is.Equal(bns.Labels["paperclip.io/company-id"], b.company)

	// A namespace someone else created is never taken over.
	squat := "squat-" + randHex(4)
	_, err = admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "paperclip-" + squat, Labels: map[string]string{"team": "x"}}}, metav1.CreateOptions{})
	is.NoErr(err)
	t.Cleanup(func() {
		_ = admin.CoreV1().Namespaces().Delete(context.Background(), "paperclip-"+squat, metav1.DeleteOptions{})
	})
	as := a.withConfig(map[string]any{"companySlug": squat})
	wantErr(t, as.w.callErr("environmentAcquireLease", as.acquireParams(nil)), "label paperclip.io/managed-by is missing")
	sq, err := admin.CoreV1().Namespaces().Get(ctx, "paperclip-"+squat, metav1.GetOptions{})
	is.NoErr(err)
	is.Equal(sq.Labels, map[string]string{"team": "x", "kubernetes.io/metadata.name": "paperclip-" + squat})
	pols, err := a.dyn().Resource(gvrNetworkPolicy).Namespace("paperclip-"+squat).List(ctx, metav1.ListOptions{})
	is.NoErr(err)
	is.Equal(len(pols.Items), 0) // nothing was applied in it

	// A tenant namespace of the first edition (it set the same labels for
	// its company) is recognised: an upgrade keeps working.
	c := a.withConfig(nil)
	c.company = "co-" + randHex(4)
	_, err = admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: c.namespace(), Labels: map[string]string{
		"paperclip.io/managed-by": "paperclip-k8s-plugin", "paperclip.io/company-id": c.company,
	}}}, metav1.CreateOptions{})
	is.NoErr(err)
	t.Cleanup(func() {
		_ = admin.CoreV1().Namespaces().Delete(context.Background(), c.namespace(), metav1.DeleteOptions{})
	})
	c.acquire(nil)
}

func TestTrustBlankIDsAreInvalidParams(t *testing.T) {
	a := newHooks(t, "sandbox", nil)
	for _, c := range []struct {
		method string
		params map[string]any
		want   string
	}{
		{"environmentAcquireLease", a.acquireParams(map[string]any{"companyId": ""}), "companyId is required"},
		{"environmentAcquireLease", a.acquireParams(map[string]any{"companyId": "  "}), "companyId is required"},
		{"environmentAcquireLease", a.acquireParams(map[string]any{"runId": ""}), "runId is required"},
		{"environmentAcquireLease", a.acquireParams(map[string]any{"runId": nil}), "runId is required"},
		{"environmentProbe", a.with(map[string]any{"companyId": ""}), "companyId is required"},
		{"environmentExecute", a.with(map[string]any{"companyId": "", "lease": map[string]any{"providerLeaseId": "pc-01jd8x6m9q2r3s4t5v6w7x8y9z"}, "command": "true"}), "companyId is required"},
		{"environmentReleaseLease", a.with(map[string]any{"companyId": "", "providerLeaseId": "pc-01jd8x6m9q2r3s4t5v6w7x8y9z"}), "companyId is required"},
		{"environmentDestroyLease", a.with(map[string]any{"companyId": "", "providerLeaseId": "pc-01jd8x6m9q2r3s4t5v6w7x8y9z"}), "companyId is required"},
		{"environmentResumeLease", a.with(map[string]any{"companyId": "", "providerLeaseId": "pc-01jd8x6m9q2r3s4t5v6w7x8y9z"}), "companyId is required"},
	} {
		err := a.w.callErr(c.method, c.params)
		if err.Code != -32602 {
			t.Errorf("%s: code %d, want -32602 (%s)", c.method, err.Code, err.Message)
		}
		wantErr(t, err, c.want)
	}
	nss, err := a.kube().CoreV1().Namespaces().List(context.Background(), metav1.ListOptions{LabelSelector: "paperclip.io/company-id=company"})
	if err != nil || len(nss.Items) != 0 {
		t.Errorf("a namespace for a blank company exists: %v %v", nss, err)
	}
}
