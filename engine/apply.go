package engine

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/paperclip-k8s/paperclip-k8s/engine/resource"
)

// Build renders a resource into an object for a namespace, with apiVersion,
// kind and namespace set from the resolved API.
func (e *Engine) Build(s *resource.Resource, namespace string, values map[string]any) (*unstructured.Unstructured, bool, Resolved, error) {
	r, err := e.Resolve(s)
	if err != nil {
		return nil, false, r, err
	}
	m, wanted, err := s.Render(values)
	if err != nil {
		return nil, wanted, r, err
	}
	o := &unstructured.Unstructured{Object: m}
	o.SetAPIVersion(r.GVK.GroupVersion().String())
	o.SetKind(r.GVK.Kind)
	if r.Namespaced {
		o.SetNamespace(namespace)
	}
	if o.GetName() == "" {
		return nil, wanted, r, &resource.FileError{File: s.File, Pointer: "/template/metadata/name", Problem: "renders an empty name"}
	}
	return o, wanted, r, nil
}

// Applied reports what Apply did with one resource.
type Applied struct {
	Resource *resource.Resource
	Object   *unstructured.Unstructured // nil when pruned or absent
	Pruned   bool
}

// Apply server-side applies every resource whose conditions hold and prunes
// the objects of those whose conditions do not (only objects this field
// manager owns fields of). Cluster-scoped objects go first, so a namespace
// exists before what lives in it; then the objects that grant the provider
// its permissions in the namespace (grantsAccess), then the rest.
func (e *Engine) Apply(ctx context.Context, specs []*resource.Resource, namespace string, values map[string]any) ([]Applied, error) {
	type item struct {
		spec   *resource.Resource
		obj    *unstructured.Unstructured
		wanted bool
		res    Resolved
	}
	var items []item
	for _, s := range specs {
		o, wanted, r, err := e.Build(s, namespace, values)
		if err != nil {
			var missing *APIMissingError
			if wanted, werr := s.Wanted(values); errors.As(err, &missing) && werr == nil && !wanted {
				continue // not wanted and not served: nothing to apply or prune
			}
			return nil, err
		}
		if r.Namespaced == s.API.ClusterScoped {
			// The RBAC the provider prints splits on this flag: a wrong one
			// grants a permission in the wrong place.
			return nil, &resource.FileError{File: s.File, Pointer: "/api/clusterScoped",
				Problem: fmt.Sprintf("is %t, but the server says %s is namespaced: %t; fix the file", s.API.ClusterScoped, s.API.Kind, r.Namespaced)}
		}
		items = append(items, item{s, o, wanted, r})
	}
	rank := func(it item) int {
		switch {
		case !it.res.Namespaced:
			return 0
		case it.spec.GrantsAccess:
			return 1
		}
		return 2
	}
	sort.SliceStable(items, func(i, j int) bool { return rank(items[i]) < rank(items[j]) })
	var out []Applied
	var granted *Applied // the last grantsAccess object applied
	for _, it := range items {
		if !it.wanted {
			var pruned bool
			err := e.afterGrant(ctx, granted, func() (err error) {
				pruned, err = e.prune(ctx, it.spec, it.obj)
				return err
			})
			if err != nil {
				return out, err
			}
			out = append(out, Applied{Resource: it.spec, Pruned: pruned})
			continue
		}
		c, _, err := e.client(it.spec, it.obj.GetNamespace())
		if err != nil {
			return out, err
		}
		var got *unstructured.Unstructured
		err = e.afterGrant(ctx, granted, func() (err error) {
			got, err = c.Apply(ctx, it.obj.GetName(), it.obj, metav1.ApplyOptions{FieldManager: FieldManager, Force: true})
			return err
		})
		if err != nil {
			return out, fmt.Errorf("applying %s from %s: %w", RefOf(it.spec, it.obj), it.spec.File, err)
		}
		e.Log.Debug("applied", "object", RefOf(it.spec, got).String(), "resourceVersion", got.GetResourceVersion())
		out = append(out, Applied{Resource: it.spec, Object: got})
		if it.spec.GrantsAccess {
			g := out[len(out)-1]
			granted = &g
		}
	}
	return out, nil
}

// grantBackoff are the waits between attempts when a call is Forbidden
// right after a grantsAccess object was applied (about 5 s in all).
var grantBackoff = []time.Duration{50 * time.Millisecond, 100 * time.Millisecond, 200 * time.Millisecond,
	400 * time.Millisecond, 800 * time.Millisecond, 1600 * time.Millisecond, 1600 * time.Millisecond}

// afterGrant runs call and, once a grantsAccess object was applied, retries
// it while the API server answers Forbidden. This is the one retry of the
// engine, and why: the RBAC authorizer (and the escalation check on Roles
// and RoleBindings) reads bindings from an informer cache, so for a moment
// after the provider's RoleBinding is created the API server may still deny
// what it grants. There is no event to wait for (the provider cannot watch
// the authorizer), so the wait is a short, bounded backoff; past it the
// Forbidden is real and the error says what to check.
func (e *Engine) afterGrant(ctx context.Context, granted *Applied, call func() error) error {
	err := call()
	if granted == nil {
		return err
	}
	for i, d := range grantBackoff {
		if !apierrors.IsForbidden(err) {
			return err
		}
		e.Log.Debug("forbidden right after the provider's permissions were granted; retrying", "grant", RefOf(granted.Resource, granted.Object).String(), "attempt", i+1, "wait", d)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		err = call()
	}
	if apierrors.IsForbidden(err) {
		return fmt.Errorf("%w (still forbidden %s after %s from %s granted the provider its permissions in this namespace: check that the role it references exists and holds them; `paperclip-k8s rbac` prints it)",
			err, totalBackoff(), RefOf(granted.Resource, granted.Object), granted.Resource.File)
	}
	return err
}

func totalBackoff() time.Duration {
	var t time.Duration
	for _, d := range grantBackoff {
		t += d
	}
	return t
}

// prune deletes an unwanted object if this field manager owns part of it.
func (e *Engine) prune(ctx context.Context, s *resource.Resource, want *unstructured.Unstructured) (bool, error) {
	c, _, err := e.client(s, want.GetNamespace())
	if err != nil {
		return false, err
	}
	cur, err := c.Get(ctx, want.GetName(), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("reading %s to prune it: %w", RefOf(s, want), err)
	}
	owned := false
	for _, mf := range cur.GetManagedFields() {
		if mf.Manager == FieldManager {
			owned = true
		}
	}
	if !owned {
		e.Log.Info("not pruning an object this provider does not manage", "object", RefOf(s, cur).String())
		return false, nil
	}
	uid := cur.GetUID()
	err = c.Delete(ctx, cur.GetName(), metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
	if err != nil && !apierrors.IsNotFound(err) {
		return false, fmt.Errorf("pruning %s: %w", RefOf(s, cur), err)
	}
	e.Log.Info("pruned", "object", RefOf(s, cur).String(), "file", s.File)
	return true, nil
}
