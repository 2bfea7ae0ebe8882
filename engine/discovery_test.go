package engine_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/matryer/is"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/restmapper"

	"github.com/paperclip-k8s/paperclip-k8s/engine"
	"github.com/paperclip-k8s/paperclip-k8s/engine/resource"
	"github.com/paperclip-k8s/paperclip-k8s/resources"
)

const gadgetFile = `apiVersion: paperclip-k8s.io/v1alpha1
kind: Resource
name: gadget
description: A run object of a CRD the test installs and removes.
scope: run
api: {group: test.paperclip-k8s.io, kind: Gadget, resource: gadgets, versions: [v1], missing: install the gadget CRD}
template:
  metadata:
    name: ${run.name}
  spec: {}
`

var gvrCRD = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

func gadgetCRD() *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
		"metadata": map[string]any{"name": "gadgets.test.paperclip-k8s.io"},
		"spec": map[string]any{
			"group": "test.paperclip-k8s.io", "scope": "Namespaced",
			"names": map[string]any{"plural": "gadgets", "singular": "gadget", "kind": "Gadget", "listKind": "GadgetList"},
			"versions": []any{map[string]any{"name": "v1", "served": true, "storage": true,
				"schema": map[string]any{"openAPIV3Schema": map[string]any{"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}},
		},
	}}
}

// gadgetsServed waits until a list of gadgets succeeds (want true) or says
// the resource is not served (want false).
func gadgetsServed(t *testing.T, ns string, want bool) {
	t.Helper()
	gvr := schema.GroupVersionResource{Group: "test.paperclip-k8s.io", Version: "v1", Resource: "gadgets"}
	err := wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := env.Dynamic().Resource(gvr).Namespace(ns).List(ctx, metav1.ListOptions{})
		if want {
			return err == nil, nil
		}
		return engine.ResourceMissing(err), nil
	})
	if err != nil {
		t.Fatalf("gadgets served=%t: %v", want, err)
	}
}

// An API removed while the worker runs is noticed on the first call that
// meets it (NotFound about the resource), and one installed later is found
// without a restart: the engine forgets what it resolved.
func TestClusterAPIRemovedThenInstalled(t *testing.T) {
	requireCluster(t)
	is := is.New(t)
	ctx := context.Background()
	c, err := resource.Load(resources.FS, ".", fstest.MapFS{"gadget.yaml": {Data: []byte(gadgetFile)}})
	is.NoErr(err)
	disc, err := discovery.NewDiscoveryClientForConfig(env.RESTConfig())
	is.NoErr(err)
	e := engine.New(c, env.Dynamic(), restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(disc)), nil, nil)
	e.DiscoveryRefresh = 0 // every miss asks again (the interval is tested with a fake mapper)
	ns, values := clusterValues(t, "standard-job")
	_, err = env.Kube().CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	is.NoErr(err)
	gadget, _ := c.Get("gadget")

	_, err = env.Dynamic().Resource(gvrCRD).Create(ctx, gadgetCRD(), metav1.CreateOptions{})
	is.NoErr(err)
	t.Cleanup(func() {
		_ = env.Dynamic().Resource(gvrCRD).Delete(context.Background(), "gadgets.test.paperclip-k8s.io", metav1.DeleteOptions{})
	})
	gadgetsServed(t, ns, true)
	o, err := e.Create(ctx, gadget, ns, values, nil)
	is.NoErr(err)
	ref := engine.RefOf(gadget, o)

	is.NoErr(env.Dynamic().Resource(gvrCRD).Delete(ctx, "gadgets.test.paperclip-k8s.io", metav1.DeleteOptions{}))
	gadgetsServed(t, ns, false)
	_, err = e.Get(ctx, ref)
	is.True(err != nil && strings.Contains(err.Error(), "the cluster no longer serves Gadget"))
	_, err = e.Resolve(gadget)
	var missing *engine.APIMissingError
	is.True(errors.As(err, &missing)) // asked the server again
	is.True(strings.Contains(err.Error(), "install the gadget CRD"))

	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := env.Dynamic().Resource(gvrCRD).Create(ctx, gadgetCRD(), metav1.CreateOptions{})
		return err == nil, nil // AlreadyExists while the old one is being removed
	})
	is.NoErr(err)
	gadgetsServed(t, ns, true)
	_, err = e.Create(ctx, gadget, ns, values, nil)
	is.NoErr(err) // found without a restart
	_, err = e.Get(ctx, ref)
	is.True(engine.IsGone(err)) // the first gadget went with the old CRD
}
