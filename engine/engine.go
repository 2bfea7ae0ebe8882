package engine

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"

	"github.com/paperclip-k8s/paperclip-k8s/engine/resource"
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
	// claimed holds the objects a claim of this engine created or found
	// ours (Ref.String() -> true): they are read first next time (claim.go).
	claimed sync.Map
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

// Status evaluates an object against its resource's readiness rules.
func (e *Engine) Status(s *resource.Resource, o *unstructured.Unstructured) resource.Status {
	b, err := o.MarshalJSON()
	if err != nil {
		return resource.Status{State: resource.Pending, Reason: "Unreadable", Message: err.Error()}
	}
	return s.Evaluate(b)
}
