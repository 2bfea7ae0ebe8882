// Package enginetest is the engine over the fake dynamic client, for the
// unit tests of the engine and of its callers (the plugin's hooks). Only
// tests import it. What the fake cannot do (field ownership, merge
// semantics, garbage collection, admission) is tested against a real API
// server (internal/devcluster).
package enginetest

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	dynfake "k8s.io/client-go/dynamic/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/paperclip-k8s/paperclip-k8s/engine"
	"github.com/paperclip-k8s/paperclip-k8s/engine/resource"
)

// New returns an engine over the fake dynamic client, with a RESTMapper
// built from the catalog's own API blocks (Namespace is cluster-scoped,
// every other kind namespaced; the API groups in omit are not served) and
// reactors that give created objects a UID, a resourceVersion and a
// generation, as the API server does, and upsert a server-side applied
// manifest.
func New(tb testing.TB, c *resource.Catalog, omit ...string) (*engine.Engine, *dynfake.FakeDynamicClient) {
	tb.Helper()
	clusterScoped := map[string]bool{"Namespace": true}
	omitted := map[string]bool{}
	for _, o := range omit {
		omitted[o] = true
	}
	var gvs []schema.GroupVersion
	listKinds := map[schema.GroupVersionResource]string{}
	for _, s := range c.All() {
		if s.API == nil {
			continue
		}
		for _, v := range s.API.Versions {
			gvs = append(gvs, schema.GroupVersion{Group: s.API.Group, Version: v})
		}
	}
	mapper := meta.NewDefaultRESTMapper(gvs)
	for _, s := range c.All() {
		if s.API == nil || omitted[s.API.Group] {
			continue
		}
		v := s.API.Versions[0]
		gvk := schema.GroupVersionKind{Group: s.API.Group, Version: v, Kind: s.API.Kind}
		scope := meta.RESTScopeNamespace
		if clusterScoped[s.API.Kind] {
			scope = meta.RESTScopeRoot
		}
		mapper.AddSpecific(gvk, schema.GroupVersionResource{Group: s.API.Group, Version: v, Resource: s.API.Resource},
			schema.GroupVersionResource{Group: s.API.Group, Version: v, Resource: strings.ToLower(s.API.Kind)}, scope)
		listKinds[schema.GroupVersionResource{Group: s.API.Group, Version: v, Resource: s.API.Resource}] = s.API.Kind + "List"
	}
	dyn := dynfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), listKinds)
	var n atomic.Int64
	dyn.PrependReactor("create", "*", func(a k8stesting.Action) (bool, runtime.Object, error) {
		o := a.(k8stesting.CreateAction).GetObject().(*unstructured.Unstructured)
		id := n.Add(1)
		o.SetUID(types.UID(fmt.Sprintf("uid-%d", id)))
		o.SetResourceVersion(fmt.Sprint(id))
		o.SetGeneration(1)
		return false, nil, nil
	})
	// The fake tracker cannot server-side apply an absent object; this
	// reactor upserts the applied manifest. Field ownership and merge
	// semantics are tested against a real API server (internal/devcluster).
	dyn.PrependReactor("patch", "*", func(a k8stesting.Action) (bool, runtime.Object, error) {
		p := a.(k8stesting.PatchAction)
		if p.GetPatchType() != types.ApplyPatchType {
			return false, nil, nil
		}
		o := &unstructured.Unstructured{}
		if err := o.UnmarshalJSON(p.GetPatch()); err != nil {
			return true, nil, err
		}
		o.SetManagedFields([]metav1.ManagedFieldsEntry{{Manager: engine.FieldManager, Operation: metav1.ManagedFieldsOperationApply}})
		tr := dyn.Tracker()
		if _, err := tr.Get(p.GetResource(), p.GetNamespace(), p.GetName()); err != nil {
			o.SetUID(types.UID(fmt.Sprintf("uid-%d", n.Add(1))))
			return true, o, tr.Create(p.GetResource(), o, p.GetNamespace())
		}
		return true, o, tr.Update(p.GetResource(), o, p.GetNamespace())
	})
	return engine.New(c, dyn, mapper, nil, nil), dyn
}

// WatchStarts reports each watch the fake client starts, once the watcher
// is registered with the tracker: the fake tracker does not replay events,
// so a test must not change an object before the engine watches it.
func WatchStarts(dyn *dynfake.FakeDynamicClient) <-chan struct{} {
	ch := make(chan struct{}, 16)
	dyn.PrependWatchReactor("*", func(a k8stesting.Action) (bool, watch.Interface, error) {
		w, err := dyn.Tracker().Watch(a.GetResource(), a.GetNamespace())
		ch <- struct{}{}
		return true, w, err
	})
	return ch
}

// SetStatus replaces the status of o (an object of the data file spec) as
// its controller would, and returns the object as updated.
func SetStatus(tb testing.TB, e *engine.Engine, o *unstructured.Unstructured, spec *resource.Resource, status map[string]any) *unstructured.Unstructured {
	tb.Helper()
	r, err := e.Resolve(spec)
	if err != nil {
		tb.Fatal(err)
	}
	cur, err := e.Dynamic.Resource(r.GVR).Namespace(o.GetNamespace()).Get(context.Background(), o.GetName(), metav1.GetOptions{})
	if err != nil {
		tb.Fatal(err)
	}
	cur.Object["status"] = status
	got, err := e.Dynamic.Resource(r.GVR).Namespace(o.GetNamespace()).Update(context.Background(), cur, metav1.UpdateOptions{})
	if err != nil {
		tb.Fatal(err)
	}
	return got
}
