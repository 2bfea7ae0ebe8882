package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/paperclip-k8s/paperclip-k8s/engine/resource"
	"log/slog"
	"sort"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
)

// FieldManager is the server-side apply field manager of the provider.
const FieldManager = "paperclip-k8s"

// Engine performs the generic operations on any resource of a catalog.
type Engine struct {
	Catalog *resource.Catalog
	Dynamic dynamic.Interface
	// Mapper resolves kinds to resources through discovery. When it can be
	// reset (a deferred discovery mapper), a miss resets it once, so an API
	// installed after start is found.
	Mapper meta.RESTMapper
	// REST reads subresources that return plain bytes (pod logs). Optional.
	REST rest.Interface
	Log  *slog.Logger
	// DiscoveryRefresh bounds how often a miss resets the mapper
	// (DefaultDiscoveryRefresh from New).
	DiscoveryRefresh time.Duration

	mu       sync.Mutex
	resolved map[string]Resolved
	// refreshed is when a miss last reset the mapper (refreshDiscovery).
	refreshed time.Time
}

// New returns an engine over a catalog.
func New(c *resource.Catalog, dyn dynamic.Interface, mapper meta.RESTMapper, restClient rest.Interface, log *slog.Logger) *Engine {
	if log == nil {
		log = slog.Default()
	}
	return &Engine{Catalog: c, Dynamic: dyn, Mapper: mapper, REST: restClient, Log: log, DiscoveryRefresh: DefaultDiscoveryRefresh}
}

// Resolved is a resource's API as the server serves it.
type Resolved struct {
	GVR        schema.GroupVersionResource
	GVK        schema.GroupVersionKind
	Namespaced bool
}

// APIMissingError says that the server serves none of a resource's versions.
type APIMissingError struct {
	Resource *resource.Resource
}

func (e *APIMissingError) Error() string {
	a := e.Resource.API
	msg := fmt.Sprintf("the cluster does not serve %s (group %q, versions %v) needed by %s", a.Kind, a.Group, a.Versions, e.Resource.File)
	if a.Missing != "" {
		msg += ": " + a.Missing
	}
	return msg
}

// Resolve finds the first version of the resource's API that the server serves.
func (e *Engine) Resolve(s *resource.Resource) (Resolved, error) {
	if s.API == nil {
		return Resolved{}, &resource.FileError{File: s.File, Pointer: "/api", Problem: "has no api"}
	}
	e.mu.Lock()
	r, ok := e.resolved[s.Name]
	e.mu.Unlock()
	if ok {
		return r, nil
	}
	r, err := e.resolve(s)
	if err != nil {
		var missing *APIMissingError
		if errors.As(err, &missing) && e.refreshDiscovery() {
			r, err = e.resolve(s)
		}
		if err != nil {
			return Resolved{}, err
		}
	}
	e.mu.Lock()
	if e.resolved == nil {
		e.resolved = map[string]Resolved{}
	}
	e.resolved[s.Name] = r
	e.mu.Unlock()
	return r, nil
}

func (e *Engine) resolve(s *resource.Resource) (Resolved, error) {
	gk := schema.GroupKind{Group: s.API.Group, Kind: s.API.Kind}
	for _, v := range s.API.Versions {
		m, err := e.Mapper.RESTMapping(gk, v)
		if err != nil {
			if meta.IsNoMatchError(err) {
				continue
			}
			return Resolved{}, fmt.Errorf("resolving %s %s/%s: %w", s.API.Kind, s.API.Group, v, err)
		}
		if m.Resource.Resource != s.API.Resource {
			return Resolved{}, &resource.FileError{File: s.File, Pointer: "/api/resource",
				Problem: fmt.Sprintf("is %q but the server calls %s %q; fix the file", s.API.Resource, s.API.Kind, m.Resource.Resource)}
		}
		return Resolved{GVR: m.Resource, GVK: m.GroupVersionKind, Namespaced: m.Scope.Name() == meta.RESTScopeNameNamespace}, nil
	}
	return Resolved{}, &APIMissingError{Resource: s}
}

// Ref names one object.
type Ref struct {
	Resource  *resource.Resource
	Namespace string
	Name      string
	UID       types.UID
}

func (r Ref) String() string {
	kind := "object"
	if r.Resource != nil && r.Resource.API != nil {
		kind = r.Resource.API.Kind
	}
	if r.Namespace == "" {
		return kind + " " + r.Name
	}
	return kind + " " + r.Namespace + "/" + r.Name
}

// RefOf returns the reference of an object of this resource.
func RefOf(s *resource.Resource, o *unstructured.Unstructured) Ref {
	return Ref{Resource: s, Namespace: o.GetNamespace(), Name: o.GetName(), UID: o.GetUID()}
}

func (e *Engine) client(s *resource.Resource, namespace string) (dynamic.ResourceInterface, Resolved, error) {
	r, err := e.Resolve(s)
	if err != nil {
		return nil, r, err
	}
	if !r.Namespaced {
		return e.Dynamic.Resource(r.GVR), r, nil
	}
	if namespace == "" {
		return nil, r, fmt.Errorf("%s: %s is namespaced but no namespace was given", s.File, s.API.Kind)
	}
	return e.Dynamic.Resource(r.GVR).Namespace(namespace), r, nil
}

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

// Create renders and creates one object (a claim: it fails if the name is
// taken). When the resource has an owner block and owner is given, the object
// gets an ownerReference to it. A create without a definite answer
// (OutcomeUnknown) is followed by a delete of that name, when the object
// there carries what was rendered, and fails with an *UnknownOutcomeError.
func (e *Engine) Create(ctx context.Context, s *resource.Resource, namespace string, values map[string]any, owner *unstructured.Unstructured) (*unstructured.Unstructured, error) {
	if wanted, err := s.Wanted(values); err != nil {
		return nil, err
	} else if !wanted {
		return nil, nil // not wanted: its API need not even be served
	}
	o, wanted, _, err := e.Build(s, namespace, values)
	if err != nil {
		return nil, err
	}
	if !wanted {
		return nil, nil
	}
	if s.Owner != nil {
		if owner == nil || owner.GetUID() == "" {
			return nil, fmt.Errorf("%s: %s must be owned by the workload, but no workload with a UID was given", s.File, RefOf(s, o))
		}
		t := true
		ctrl := s.Owner.Controller
		o.SetOwnerReferences([]metav1.OwnerReference{{
			APIVersion: owner.GetAPIVersion(), Kind: owner.GetKind(), Name: owner.GetName(), UID: owner.GetUID(),
			Controller: &ctrl, BlockOwnerDeletion: boolPtr(ctrl && t),
		}})
	}
	c, _, err := e.client(s, o.GetNamespace())
	if err != nil {
		return nil, err
	}
	got, err := c.Create(ctx, o, metav1.CreateOptions{FieldManager: FieldManager})
	if OutcomeUnknown(err) {
		// The object may exist (applied, then the answer was lost): delete
		// that name if it is ours, so a lost response leaks nothing.
		return nil, e.cleanupUnknownCreate(ctx, s, c, o, err)
	}
	if err != nil {
		return nil, fmt.Errorf("creating %s from %s: %w", RefOf(s, o), s.File, e.noteMissing(s, err))
	}
	if got.GetUID() == "" {
		return nil, fmt.Errorf("creating %s: the server returned no UID", RefOf(s, o))
	}
	return got, nil
}

func boolPtr(b bool) *bool { return &b }

// Get reads one object. A UID in the ref must match, else ErrReplaced.
func (e *Engine) Get(ctx context.Context, ref Ref) (*unstructured.Unstructured, error) {
	c, _, err := e.client(ref.Resource, ref.Namespace)
	if err != nil {
		return nil, err
	}
	o, err := c.Get(ctx, ref.Name, metav1.GetOptions{})
	if err != nil {
		if ResourceMissing(e.noteMissing(ref.Resource, err)) {
			return nil, fmt.Errorf("reading %s: the cluster no longer serves %s: %w", ref, ref.Resource.API.Kind, err)
		}
		if apierrors.IsNotFound(err) {
			return nil, &GoneError{Ref: ref}
		}
		return nil, fmt.Errorf("reading %s: %w", ref, err)
	}
	if ref.UID != "" && o.GetUID() != ref.UID {
		return nil, &GoneError{Ref: ref, Replaced: true}
	}
	return o, nil
}

// GoneError says that an object no longer exists, or that another object
// (another UID) now has its name.
type GoneError struct {
	Ref      Ref
	Replaced bool
}

func (e *GoneError) Error() string {
	if e.Replaced {
		return fmt.Sprintf("%s was replaced by another object of the same name (UID %s is gone)", e.Ref, e.Ref.UID)
	}
	return fmt.Sprintf("%s no longer exists", e.Ref)
}

// IsGone reports whether err says the object is gone or replaced.
func IsGone(err error) bool {
	var g *GoneError
	return errors.As(err, &g)
}

// Release deletes an object with the resource's propagation policy and, when
// the ref has a UID, a UID precondition: an object that replaced ours is
// left alone. It reports whether this call deleted something; an object
// already gone is success.
func (e *Engine) Release(ctx context.Context, ref Ref) (bool, error) {
	c, _, err := e.client(ref.Resource, ref.Namespace)
	if err != nil {
		return false, err
	}
	opts := metav1.DeleteOptions{}
	if ref.Resource.Release != nil && ref.Resource.Release.PropagationPolicy != "" {
		p := metav1.DeletionPropagation(ref.Resource.Release.PropagationPolicy)
		opts.PropagationPolicy = &p
	}
	if ref.UID != "" {
		uid := ref.UID
		opts.Preconditions = &metav1.Preconditions{UID: &uid}
	}
	err = c.Delete(ctx, ref.Name, opts)
	switch {
	case ResourceMissing(e.noteMissing(ref.Resource, err)):
		return false, fmt.Errorf("deleting %s: the cluster no longer serves %s: %w", ref, ref.Resource.API.Kind, err)
	case err == nil:
		return true, nil
	case apierrors.IsNotFound(err):
		return false, nil
	case apierrors.IsConflict(err) && ref.UID != "":
		// The precondition failed: the name now belongs to another object.
		return false, nil
	}
	return false, fmt.Errorf("deleting %s: %w", ref, err)
}

// List returns the objects of a resource matching a label selector.
func (e *Engine) List(ctx context.Context, s *resource.Resource, namespace, selector string) ([]unstructured.Unstructured, error) {
	c, _, err := e.client(s, namespace)
	if err != nil {
		return nil, err
	}
	l, err := c.List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		e.noteMissing(s, err)
		return nil, fmt.Errorf("listing %s in %q (selector %q): %w", s.API.Kind, namespace, selector, err)
	}
	return l.Items, nil
}

// Status evaluates an object against its resource's readiness rules.
func (e *Engine) Status(s *resource.Resource, o *unstructured.Unstructured) resource.Status {
	b, err := o.MarshalJSON()
	if err != nil {
		return resource.Status{State: resource.Pending, Reason: "Unreadable", Message: err.Error()}
	}
	return s.Evaluate(b)
}

// SetDeadline moves the deadline of a live workload whose backend keeps an
// absolute time at deadlinePath (e.g. a Sandbox's spec.shutdownTime). The
// patch carries the workload's UID, so the API server refuses it for an
// object that replaced ours.
func (e *Engine) SetDeadline(ctx context.Context, ref Ref, t time.Time) error {
	b := ref.Resource.Backend
	if b == nil || b.Deadline != "time" || b.DeadlinePath == "" {
		return fmt.Errorf("%s: the backend declares no deadlinePath for an absolute deadline", ref.Resource.File)
	}
	c, _, err := e.client(ref.Resource, ref.Namespace)
	if err != nil {
		return err
	}
	parts, err := resource.SplitPath(b.DeadlinePath)
	if err != nil {
		return &resource.FileError{File: ref.Resource.File, Pointer: "/backend/deadlinePath", Problem: err.Error()}
	}
	patch := map[string]any{}
	cur := patch
	for _, p := range parts[:len(parts)-1] {
		next := map[string]any{}
		cur[p] = next
		cur = next
	}
	cur[parts[len(parts)-1]] = t.UTC().Format(time.RFC3339)
	if ref.UID != "" {
		patch["metadata"] = map[string]any{"uid": string(ref.UID)}
	}
	body, err := json.Marshal(patch)
	if err != nil {
		return err
	}
	if _, err := c.Patch(ctx, ref.Name, types.MergePatchType, body, metav1.PatchOptions{FieldManager: FieldManager}); err != nil {
		if apierrors.IsNotFound(err) {
			return &GoneError{Ref: ref}
		}
		return fmt.Errorf("moving the deadline (%s) of %s: %w", b.DeadlinePath, ref, err)
	}
	return nil
}
