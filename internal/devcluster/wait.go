package devcluster

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"
)

// waitNamed lists+watches one named object and returns the first state for
// which cond holds; cond gets nil when the object does not exist (or was
// deleted). It re-lists when a watch expires.
func waitNamed[T runtime.Object](ctx context.Context, lw *cache.ListWatch, example T, key string, cond func(T) bool) (T, error) {
	var zero, last T
	check := func(obj any) bool {
		t, ok := obj.(T)
		if !ok {
			t = zero
		}
		last = t
		return cond(t)
	}
	pre := func(store cache.Store) (bool, error) {
		obj, exists, err := store.GetByKey(key)
		if err != nil {
			return false, err
		}
		if !exists {
			return check(nil), nil
		}
		return check(obj), nil
	}
	_, err := watchtools.UntilWithSync(ctx, lw, example, pre, func(ev watch.Event) (bool, error) {
		if ev.Type == watch.Deleted {
			return check(nil), nil
		}
		return check(ev.Object), nil
	})
	if err != nil {
		return last, fmt.Errorf("wait for %s: %w (last state: %s)", key, err, describe(last))
	}
	return last, nil
}

func describe(obj runtime.Object) string {
	if obj == nil {
		return "absent"
	}
	switch o := obj.(type) {
	case *unstructured.Unstructured:
		if o == nil {
			return "absent"
		}
		st, _, _ := unstructured.NestedFieldNoCopy(o.Object, "status")
		return fmt.Sprintf("rv %s status %v", o.GetResourceVersion(), st)
	case *corev1.Pod:
		if o == nil {
			return "absent"
		}
		return fmt.Sprintf("rv %s phase %s", o.ResourceVersion, o.Status.Phase)
	}
	return fmt.Sprintf("%T", obj)
}

// WaitPod waits until cond holds for pod ns/name and returns that state
// (nil: the pod does not exist). Bound it with ctx.
func WaitPod(ctx context.Context, kube kubernetes.Interface, ns, name string, cond func(*corev1.Pod) bool) (*corev1.Pod, error) {
	sel := fields.OneTermEqualSelector("metadata.name", name).String()
	pods := kube.CoreV1().Pods(ns)
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.FieldSelector = sel
			return pods.List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.FieldSelector = sel
			return pods.Watch(ctx, o)
		},
	}
	return waitNamed(ctx, lw, &corev1.Pod{}, ns+"/"+name, cond)
}

// WaitObject waits until cond holds for the object ns/name of resource gvr
// (ns "" for cluster-scoped; nil: the object does not exist) and returns that
// state. Bound it with ctx.
func WaitObject(ctx context.Context, dyn dynamic.Interface, gvr schema.GroupVersionResource, ns, name string, cond func(*unstructured.Unstructured) bool) (*unstructured.Unstructured, error) {
	sel := fields.OneTermEqualSelector("metadata.name", name).String()
	var ri dynamic.ResourceInterface = dyn.Resource(gvr)
	key := name
	if ns != "" {
		ri = dyn.Resource(gvr).Namespace(ns)
		key = ns + "/" + name
	}
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.FieldSelector = sel
			return ri.List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.FieldSelector = sel
			return ri.Watch(ctx, o)
		},
	}
	return waitNamed(ctx, lw, &unstructured.Unstructured{}, key, cond)
}
