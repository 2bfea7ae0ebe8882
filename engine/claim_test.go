package engine_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/matryer/is"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	k8stesting "k8s.io/client-go/testing"

	"github.com/paperclip-k8s/paperclip-k8s/engine"
	"github.com/paperclip-k8s/paperclip-k8s/engine/enginetest"
	"github.com/paperclip-k8s/paperclip-k8s/engine/resource"
	"github.com/paperclip-k8s/paperclip-k8s/internal/testutil"
	"github.com/paperclip-k8s/paperclip-k8s/plugin/valuestest"
	"github.com/paperclip-k8s/paperclip-k8s/resources"
)

var gvrNamespace = schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}

func namespaceObj(name string, labels map[string]string) *unstructured.Unstructured {
	o := &unstructured.Unstructured{}
	o.SetAPIVersion("v1")
	o.SetKind("Namespace")
	o.SetName(name)
	o.SetLabels(labels)
	return o
}

// Claim creates an absent namespace with the rendered labels, accepts one
// that carries them, and refuses, without changing it, one that lacks them
// or carries another company's.
func TestClaimNamespace(t *testing.T) {
	is := is.New(t)
	f := newShippedFixture(t, "standard-job")
	c, e, dyn, ns := f.c, f.e, f.dyn, f.namespace()
	ctx := context.Background()
	tenant := c.Used(resource.UseTenant)

	is.NoErr(e.Claim(ctx, tenant, ns, f.values)) // absent: created
	got, err := dyn.Resource(gvrNamespace).Get(ctx, ns, metav1.GetOptions{})
	is.NoErr(err)
	is.Equal(got.GetLabels()["paperclip.io/company-id"], "5f0c2a7e-1b7d-4c8e-9a51-3c2d1e0f9a88")
	is.Equal(got.GetLabels()["pod-security.kubernetes.io/enforce"], "restricted")
	is.NoErr(e.Claim(ctx, tenant, ns, f.values)) // ours: accepted

	for name, labels := range map[string]map[string]string{
		"unmarked":  {"team": "x"},
		"other-co":  {"paperclip.io/managed-by": "paperclip-k8s", "paperclip.io/company-id": "another"},
		"unmanaged": {"paperclip.io/company-id": "5f0c2a7e-1b7d-4c8e-9a51-3c2d1e0f9a88"},
	} {
		_, err := dyn.Resource(gvrNamespace).Create(ctx, namespaceObj(name, labels), metav1.CreateOptions{})
		is.NoErr(err)
		v := map[string]any{}
		for k, x := range f.values {
			v[k] = x
		}
		v["namespace"] = name
		err = e.Claim(ctx, tenant, name, v)
		var ce *engine.ClaimError
		is.True(errors.As(err, &ce))
		is.True(strings.Contains(err.Error(), "Namespace "+name+" exists but was not created by this provider"))
		got, err := dyn.Resource(gvrNamespace).Get(ctx, name, metav1.GetOptions{})
		is.NoErr(err)
		is.Equal(got.GetLabels(), labels) // unchanged
	}
}

// ReleaseOwned deletes only an object an ownerReference ties to the owner.
func TestReleaseOwnedChecksTheOwner(t *testing.T) {
	is := is.New(t)
	c := testutil.Catalog(t)
	e, dyn := enginetest.New(t, c)
	ctx := context.Background()
	secret, _ := c.Get("secret")
	gvr := schema.GroupVersionResource{Version: "v1", Resource: "secrets"}
	mk := func(name string, owner types.UID) {
		o := &unstructured.Unstructured{}
		o.SetAPIVersion("v1")
		o.SetKind("Secret")
		o.SetName(name)
		if owner != "" {
			o.SetOwnerReferences([]metav1.OwnerReference{{APIVersion: "batch/v1", Kind: "Job", Name: "w", UID: owner}})
		}
		_, err := dyn.Resource(gvr).Namespace("ns").Create(ctx, o, metav1.CreateOptions{})
		is.NoErr(err)
	}
	mk("mine", "uid-w")
	mk("theirs", "uid-other")
	mk("nobodys", "")

	deleted, err := e.ReleaseOwned(ctx, engine.Ref{Resource: secret, Namespace: "ns", Name: "mine"}, "uid-w")
	is.NoErr(err)
	is.True(deleted)
	for _, n := range []string{"theirs", "nobodys", "absent"} {
		deleted, err := e.ReleaseOwned(ctx, engine.Ref{Resource: secret, Namespace: "ns", Name: n}, "uid-w")
		is.NoErr(err)
		is.True(!deleted)
	}
	_, err = dyn.Resource(gvr).Namespace("ns").Get(ctx, "theirs", metav1.GetOptions{})
	is.NoErr(err)
	_, err = dyn.Resource(gvr).Namespace("ns").Get(ctx, "nobodys", metav1.GetOptions{})
	is.NoErr(err)
	_, err = e.ReleaseOwned(ctx, engine.Ref{Resource: secret, Namespace: "ns", Name: "mine"}, "")
	is.True(err != nil) // no owner to check against: refused
}

// requestsOn lists the verbs of the fake client's requests on one resource
// since the last call, and forgets them.
func requestsOn(dyn interface {
	Actions() []k8stesting.Action
	ClearActions()
}, res string) []string {
	var out []string
	for _, a := range dyn.Actions() {
		if a.GetResource().Resource == res {
			out = append(out, a.GetVerb())
		}
	}
	dyn.ClearActions()
	return out
}

// A new tenant costs one request for its namespace: the claim creates it
// (no read first) and ClaimApply does not apply what the claim just
// created. The next call reads it first (a recheck: one read, then the
// apply); another engine, which has not claimed it, tries the create and
// reads the namespace that exists.
func TestClaimApplyRequests(t *testing.T) {
	is := is.New(t)
	f := newShippedFixture(t, "standard-job")
	c, e, dyn, ns := f.c, f.e, f.dyn, f.namespace()
	ctx := context.Background()
	var tenant []*resource.Resource // the namespace, two objects in it and one not wanted (standard egress)
	for _, name := range []string{"serviceaccount", "namespace", "limitrange", "ciliumnetworkpolicy-egress"} {
		s, ok := c.Get(name)
		is.True(ok)
		tenant = append(tenant, s)
	}

	applied, err := e.ClaimApply(ctx, tenant, ns, f.values)
	is.NoErr(err)
	sa := 0
	for _, a := range dyn.Actions() {
		if a.GetResource().Resource == "serviceaccounts" && a.GetVerb() == "patch" {
			sa++
		}
	}
	is.Equal(sa, 1) // the others are applied
	for _, a := range dyn.Actions() {
		is.True(a.GetResource().Resource != "ciliumnetworkpolicies") // a new namespace holds nothing to prune
	}
	is.Equal(requestsOn(dyn, "namespaces"), []string{"create"})
	is.Equal(applied[0].Resource.Name, "namespace")
	is.Equal(applied[0].Object.GetLabels()["paperclip.io/company-id"], "5f0c2a7e-1b7d-4c8e-9a51-3c2d1e0f9a88")
	var objects int
	for _, a := range applied {
		if a.Object != nil {
			objects++
		}
	}
	is.Equal(objects, 3)

	_, err = e.ClaimApply(ctx, tenant, ns, f.values)
	is.NoErr(err)
	pruneReads := 0
	for _, a := range dyn.Actions() {
		if a.GetResource().Resource == "ciliumnetworkpolicies" && a.GetVerb() == "get" {
			pruneReads++
		}
	}
	is.Equal(pruneReads, 1) // an existing namespace: what is not wanted is pruned
	is.Equal(requestsOn(dyn, "namespaces"), []string{"get", "patch"})

	other := engine.New(c, dyn, e.Mapper, nil, nil)
	is.NoErr(other.Claim(ctx, tenant, ns, f.values))
	is.Equal(requestsOn(dyn, "namespaces"), []string{"create", "get"})

	// Gone meanwhile: read first, then created again.
	is.NoErr(dyn.Resource(gvrNamespace).Delete(ctx, ns, metav1.DeleteOptions{}))
	dyn.ClearActions()
	is.NoErr(e.Claim(ctx, tenant, ns, f.values))
	is.Equal(requestsOn(dyn, "namespaces"), []string{"get", "create"})

	// Replaced by someone else's namespace of that name: refused, even by
	// the engine that claimed it before.
	is.NoErr(dyn.Resource(gvrNamespace).Delete(ctx, ns, metav1.DeleteOptions{}))
	_, err = dyn.Resource(gvrNamespace).Create(ctx, namespaceObj(ns, map[string]string{"team": "x"}), metav1.CreateOptions{})
	is.NoErr(err)
	_, err = e.ClaimApply(ctx, tenant, ns, f.values)
	var ce *engine.ClaimError
	is.True(errors.As(err, &ce))
	got, err := dyn.Resource(gvrNamespace).Get(ctx, ns, metav1.GetOptions{})
	is.NoErr(err)
	is.Equal(got.GetLabels(), map[string]string{"team": "x"}) // unchanged
}

// When the provider may not create namespaces (an operator made them), the
// claim checks the one there; an absent one is the create's error.
func TestClaimWithoutCreate(t *testing.T) {
	is := is.New(t)
	f := newShippedFixture(t, "standard-job")
	c, e, dyn, ns := f.c, f.e, f.dyn, f.namespace()
	ctx := context.Background()
	tenant := c.Used(resource.UseTenant)
	dyn.PrependReactor("create", "namespaces", func(a k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewForbidden(gvrNamespace.GroupResource(), ns, errors.New("no create"))
	})

	err := e.Claim(ctx, tenant, ns, f.values)
	is.True(apierrors.IsForbidden(err))
	is.True(strings.Contains(err.Error(), "creating Namespace "+ns))

	nsSpec, _ := c.Get("namespace")
	want, _, _, err := e.Build(nsSpec, ns, f.values)
	is.NoErr(err)
	is.NoErr(dyn.Tracker().Add(namespaceObj(ns, want.GetLabels())))
	is.NoErr(e.Claim(ctx, tenant, ns, f.values))
}

// perTenantClusterObject is a tenant file of a cluster-scoped object the
// claim creates per company, named like the tenant namespace.
const perTenantClusterObject = `apiVersion: paperclip-k8s.io/v1alpha1
kind: Resource
name: tenant-clusterrole
description: A cluster-scoped object per tenant, named like its namespace.
scope: tenant
api: {group: rbac.authorization.k8s.io, kind: ClusterRole, resource: clusterroles, versions: [v1], clusterScoped: true}
template:
  metadata:
    name: ${namespace}
    labels: ${tenantLabels}
claim:
  labels: [paperclip.io/managed-by, paperclip.io/company-id]
`

// clusterScoped serves the kinds it names as cluster-scoped (the fake
// client's mapper serves only Namespace so).
type clusterScoped struct {
	meta.RESTMapper
	kinds map[string]bool
}

func (m clusterScoped) RESTMapping(gk schema.GroupKind, versions ...string) (*meta.RESTMapping, error) {
	r, err := m.RESTMapper.RESTMapping(gk, versions...)
	if err == nil && m.kinds[gk.Kind] {
		r.Scope = meta.RESTScopeRoot
	}
	return r, err
}

// What tells ClaimApply that the namespace is new is the file that says
// it is the tenant namespace (claim.tenantNamespace), not a name: a
// cluster-scoped object the claim has just created with the namespace's
// name, in a namespace that exists, leaves the prune reads in place.
func TestClaimApplyFreshNamespaceIsTheMarkedFile(t *testing.T) {
	is := is.New(t)
	c, err := resource.Load(resources.FS, ".", fstest.MapFS{"tenant-clusterrole.yaml": {Data: []byte(perTenantClusterObject)}})
	is.NoErr(err)
	base, dyn := enginetest.New(t, c)
	e := engine.New(c, dyn, clusterScoped{base.Mapper, map[string]bool{"ClusterRole": true}}, nil, nil)
	values := valuestest.LoadShipped(t, "standard-job").Values
	ns := values["namespace"].(string)
	ctx := context.Background()
	var tenant []*resource.Resource // the namespace, the cluster object, one object in it and one not wanted (standard egress)
	for _, name := range []string{"namespace", "tenant-clusterrole", "limitrange", "ciliumnetworkpolicy-egress"} {
		s, ok := c.Get(name)
		is.True(ok)
		tenant = append(tenant, s)
	}
	is.NoErr(e.Claim(ctx, tenant[:1], ns, values)) // the namespace exists, the cluster object not yet
	dyn.ClearActions()

	_, err = e.ClaimApply(ctx, tenant, ns, values)
	is.NoErr(err)
	var clusterroles, pruneReads []string
	for _, a := range dyn.Actions() {
		switch a.GetResource().Resource {
		case "clusterroles":
			clusterroles = append(clusterroles, a.GetVerb())
		case "ciliumnetworkpolicies":
			pruneReads = append(pruneReads, a.GetVerb())
		}
	}
	is.Equal(clusterroles, []string{"create"}) // created now, named like the namespace
	is.Equal(pruneReads, []string{"get"})      // the namespace is not new: what is not wanted is pruned
}

// A claim may say tenantNamespace only on a cluster-scoped file: Load
// refuses it on a namespaced one.
func TestTenantNamespaceIsClusterScoped(t *testing.T) {
	is := is.New(t)
	namespaced := strings.Replace(perTenantClusterObject, ", clusterScoped: true}", "}", 1) + "  tenantNamespace: true\n"
	_, err := resource.Load(resources.FS, ".", fstest.MapFS{"tenant-clusterrole.yaml": {Data: []byte(namespaced)}})
	is.True(err != nil)
	t.Log(err)
	is.True(strings.Contains(err.Error(), "tenant-clusterrole.yaml"))
	is.True(strings.Contains(err.Error(), "clusterScoped"))
}
