package engine_test

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/matryer/is"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	k8stesting "k8s.io/client-go/testing"

	"github.com/paperclip-k8s/paperclip-k8s/engine"
	"github.com/paperclip-k8s/paperclip-k8s/engine/enginetest"
	"github.com/paperclip-k8s/paperclip-k8s/engine/resource"
	"github.com/paperclip-k8s/paperclip-k8s/internal/testutil"
	"github.com/paperclip-k8s/paperclip-k8s/plugin/valuestest"
)

// Only the Namespace is cluster-scoped: everything else (subresources
// included) is granted per tenant namespace.
func TestPermissionsSayWhatIsClusterScoped(t *testing.T) {
	is := is.New(t)
	var cluster []string
	for _, p := range testutil.TestCatalog(t).Permissions() {
		if p.ClusterScoped {
			cluster = append(cluster, p.Group+"/"+p.Resource)
		}
	}
	is.Equal(cluster, []string{"/namespaces"})
}

// The provider's RoleBinding binds the tenant ClusterRole to the identity
// the provider learnt: a ServiceAccount, or a User; to nobody when unknown.
func TestProviderRoleBindingSubject(t *testing.T) {
	is := is.New(t)
	c := testutil.Catalog(t)
	s, ok := c.Get("provider-rolebinding")
	is.True(ok)
	is.True(s.GrantsAccess)
	is.Equal(len(c.Grants()), 1)
	name, err := s.GrantName()
	is.NoErr(err)
	is.Equal(name, "paperclip-k8s-provider")
	vc := valuestest.LoadShipped(t, "standard-job")
	subjects := func(provider map[string]any) any {
		vc.Values["provider"] = provider
		obj, wanted, err := s.Render(vc.Values)
		is.NoErr(err)
		is.True(wanted)
		is.Equal(obj["roleRef"], map[string]any{"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "paperclip-k8s-tenant"})
		return obj["subjects"]
	}
	is.Equal(subjects(map[string]any{"kind": "ServiceAccount", "name": "paperclip-k8s", "namespace": "paperclip", "username": "system:serviceaccount:paperclip:paperclip-k8s"}),
		[]any{map[string]any{"kind": "ServiceAccount", "name": "paperclip-k8s", "namespace": "paperclip"}})
	is.Equal(subjects(map[string]any{"kind": "User", "name": "paperclip", "namespace": "", "username": "paperclip"}),
		[]any{map[string]any{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "paperclip"}})
	is.Equal(subjects(nil), []any{}) // grants nothing

	// A grant must have a literal name: RBAC grants on it by name.
	bad, err := resource.Parse("resources/grant.yaml", []byte("apiVersion: paperclip-k8s.io/v1alpha1\nkind: Resource\nname: grant\ndescription: d\nscope: tenant\ngrantsAccess: true\napi: {group: rbac.authorization.k8s.io, kind: RoleBinding, resource: rolebindings, versions: [v1]}\ntemplate: {metadata: {name: \"${namespace}-x\"}}\n"))
	is.NoErr(err)
	_, err = bad.GrantName()
	is.True(err != nil)
	is.True(strings.Contains(err.Error(), "resources/grant.yaml: /template/metadata/name: "))
	_, err = resource.Parse("resources/grant.yaml", []byte("apiVersion: paperclip-k8s.io/v1alpha1\nkind: Resource\nname: grant\ndescription: d\nscope: run\ngrantsAccess: true\napi: {group: g, kind: K, resource: ks, versions: [v1]}\ntemplate: {}\n"))
	is.True(err != nil) // only a tenant object can grant
	is.True(strings.Contains(err.Error(), "resources/grant.yaml: /scope: "))
}

// forbidAfterGrant makes the fake API server refuse the first n applies of
// a namespaced object other than the grant, as the RBAC authorizer does for
// a moment after a RoleBinding is created; it records what was applied.
func forbidAfterGrant(dyn interface {
	PrependReactor(string, string, k8stesting.ReactionFunc)
}, n int64) (order *[]string, refused *atomic.Int64) {
	order = &[]string{}
	refused = &atomic.Int64{}
	dyn.PrependReactor("patch", "*", func(a k8stesting.Action) (bool, runtime.Object, error) {
		res := a.GetResource().Resource
		*order = append(*order, res)
		if res == "namespaces" || res == "rolebindings" && a.(k8stesting.PatchAction).GetName() == "paperclip-k8s-provider" {
			return false, nil, nil
		}
		if refused.Load() < n {
			refused.Add(1)
			return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: res}, a.(k8stesting.PatchAction).GetName(), errNotYet)
		}
		return false, nil, nil
	})
	return order, refused
}

var errNotYet = &notYet{}

type notYet struct{}

func (*notYet) Error() string { return "the authorizer has not seen the binding yet" }

// Apply applies the Namespace, then the provider's RoleBinding, then the
// rest; a Forbidden right after the grant is retried.
func TestApplyGrantFirstThenRetriesForbidden(t *testing.T) {
	is := is.New(t)
	f := newFixture(t, "standard-job")
	order, refused := forbidAfterGrant(f.dyn, 3)
	applied, err := f.e.Apply(context.Background(), f.c.Used(resource.UseTenant), "paperclip-acme", f.values)
	is.NoErr(err)
	is.Equal(refused.Load(), int64(3))
	is.Equal(applied[0].Resource.Name, "namespace")
	is.Equal(applied[1].Resource.Name, "provider-rolebinding")
	is.Equal((*order)[:2], []string{"namespaces", "rolebindings"}) // the grant right after the namespace
	for _, a := range applied[2:] {
		is.True(!a.Resource.GrantsAccess)
	}
}

// A Forbidden that lasts past the backoff is an error naming the grant and
// what to check; one before any grant is not retried at all.
func TestApplyForbiddenAfterGrantGivesUp(t *testing.T) {
	is := is.New(t)
	defer engine.SetGrantBackoff(time.Millisecond, time.Millisecond)()
	f := newFixture(t, "standard-job")
	c := f.c
	_, refused := forbidAfterGrant(f.dyn, 1000)
	_, err := f.e.Apply(context.Background(), c.Used(resource.UseTenant), "paperclip-acme", f.values)
	is.True(err != nil)
	is.True(apierrors.IsForbidden(err))
	is.Equal(refused.Load(), int64(3)) // the first try and two retries
	is.True(strings.Contains(err.Error(), "still forbidden 2ms after RoleBinding paperclip-acme/paperclip-k8s-provider from provider-rolebinding.yaml granted the provider its permissions in this namespace"))

	e2, dyn2 := enginetest.New(t, c)
	var calls atomic.Int64
	dyn2.PrependReactor("patch", "namespaces", func(a k8stesting.Action) (bool, runtime.Object, error) {
		calls.Add(1)
		return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "namespaces"}, "paperclip-acme", errNotYet)
	})
	_, err = e2.Apply(context.Background(), c.Used(resource.UseTenant), "paperclip-acme", f.values)
	is.True(apierrors.IsForbidden(err))
	is.Equal(calls.Load(), int64(1))
	is.True(!strings.Contains(err.Error(), "still forbidden"))
}

// A file whose clusterScoped disagrees with the server is refused: the
// RBAC would grant its permissions in the wrong place.
func TestApplyChecksClusterScoped(t *testing.T) {
	is := is.New(t)
	c := testutil.TestCatalog(t)
	ns, _ := c.Get("namespace")
	ns.API.ClusterScoped = false
	e, _ := enginetest.New(t, c)
	vc := valuestest.LoadShipped(t, "standard-job")
	_, err := e.Apply(context.Background(), c.Used(resource.UseTenant), "paperclip-acme", vc.Values)
	is.True(err != nil)
	is.True(strings.Contains(err.Error(), "namespace.yaml: /api/clusterScoped: is false, but the server says Namespace is namespaced: false"))
}
