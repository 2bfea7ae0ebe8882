package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/tidwall/gjson"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/paperclip-k8s/paperclip-k8s/engine/resource"
)

// ErrNoPod says that a workload has no pod (yet).
var ErrNoPod = errors.New("the workload has no pod yet")

// FindPod finds the pod a workload owns, trying the resource's pod rules in
// order. A pod counts only if it carries a controller ownerReference with
// the workload's UID, or, through a via rule, with the UID of an object the
// workload controls (whose own file's pod rules find it); with labelsFrom,
// only once it carries those labels. Among the pods a rule yields, one that
// is not being deleted and is running is preferred.
func (e *Engine) FindPod(ctx context.Context, s *resource.Resource, workload *unstructured.Unstructured) (*unstructured.Unstructured, error) {
	return e.findPod(ctx, s, workload, 0)
}

// maxViaDepth bounds the hops of a pod discovery (Load refuses cycles).
const maxViaDepth = 4

// findPod is FindPod depth hops (via) away from the backend's workload.
func (e *Engine) findPod(ctx context.Context, s *resource.Resource, workload *unstructured.Unstructured, depth int) (*unstructured.Unstructured, error) {
	if s.Pods == nil {
		return nil, &resource.FileError{File: s.File, Pointer: "/pods", Problem: "has no pod rules"}
	}
	podRes, ok := e.Catalog.Pod()
	if !ok {
		return nil, errors.New("the catalog has no file with scope pod")
	}
	wjson, err := workload.MarshalJSON()
	if err != nil {
		return nil, err
	}
	want := labelsWanted(s, wjson)
	carries := func(p *unstructured.Unstructured) bool { return carriesLabels(p, want) }
	ns := workload.GetNamespace()
	for i, f := range s.Pods.Find {
		var cands []unstructured.Unstructured
		switch {
		case f.Via != nil:
			p, err := e.viaPod(ctx, s, i, f.Via, workload, wjson, depth)
			if err != nil {
				return nil, err
			}
			if p != nil && carries(p) {
				return p, nil
			}
			continue
		case f.Self:
			if p, err := e.getPod(ctx, podRes, ns, workload.GetName()); err != nil {
				return nil, err
			} else if p != nil && p.GetUID() == workload.GetUID() && carries(p) {
				return p, nil
			}
			continue
		case f.Annotation != "":
			name := workload.GetAnnotations()[f.Annotation]
			if name == "" {
				continue
			}
			p, err := e.getPod(ctx, podRes, ns, name)
			if err != nil {
				return nil, err
			}
			if p != nil {
				cands = append(cands, *p)
			}
		case f.Name != "":
			name, err := resource.Expand(f.Name, wjson)
			if err != nil {
				return nil, &resource.FileError{File: s.File, Pointer: fmt.Sprintf("/pods/find/%d/name", i), Problem: err.Error()}
			}
			p, err := e.getPod(ctx, podRes, ns, name)
			if err != nil {
				return nil, err
			}
			if p != nil {
				cands = append(cands, *p)
			}
		default:
			sel := ""
			if f.SelectorFrom != "" {
				sel = gjson.GetBytes(wjson, f.SelectorFrom).String()
			} else {
				sel, err = resource.Expand(f.Selector, wjson)
				if err != nil {
					return nil, &resource.FileError{File: s.File, Pointer: fmt.Sprintf("/pods/find/%d/selector", i), Problem: err.Error()}
				}
			}
			if sel == "" {
				continue
			}
			cands, err = e.List(ctx, podRes, ns, sel)
			if err != nil {
				return nil, err
			}
		}
		cands = slices.DeleteFunc(cands, func(p unstructured.Unstructured) bool { return !carries(&p) })
		if p := e.pickPod(podRes, workload, cands); p != nil {
			return p, nil
		}
	}
	return nil, fmt.Errorf("%s: %w", RefOf(s, workload), ErrNoPod)
}

// labelsWanted are the labels a pod of the workload (JSON wjson) must carry
// (pods.labelsFrom), nil when its file names none.
func labelsWanted(s *resource.Resource, wjson []byte) map[string]string {
	if s.Pods == nil || s.Pods.LabelsFrom == "" {
		return nil
	}
	var want map[string]string
	for k, v := range gjson.GetBytes(wjson, s.Pods.LabelsFrom).Map() {
		if want == nil {
			want = map[string]string{}
		}
		want[k] = v.String()
	}
	return want
}

// carriesLabels says whether p carries every label of want.
func carriesLabels(p *unstructured.Unstructured, want map[string]string) bool {
	l := p.GetLabels()
	for k, v := range want {
		if l[k] != v {
			return false
		}
	}
	return true
}

// viaPod follows one via rule: the object the workload names at nameFrom,
// used only when the workload controls it (by UID) and it matches the
// rule's selector, then that object's own pod rules. It returns no pod
// (and no error) when the object or its pod does not exist (yet).
func (e *Engine) viaPod(ctx context.Context, s *resource.Resource, i int, via *resource.Via, workload *unstructured.Unstructured, wjson []byte, depth int) (*unstructured.Unstructured, error) {
	ptr := fmt.Sprintf("/pods/find/%d/via", i)
	if depth >= maxViaDepth {
		return nil, &resource.FileError{File: s.File, Pointer: ptr, Problem: fmt.Sprintf("goes more than %d hops deep", maxViaDepth)}
	}
	next, ok := e.Catalog.Get(via.Resource)
	if !ok {
		return nil, &resource.FileError{File: s.File, Pointer: ptr + "/resource", Problem: fmt.Sprintf("names %q, which is not in the catalog", via.Resource)}
	}
	name := gjson.GetBytes(wjson, via.NameFrom).String()
	if name == "" {
		return nil, nil
	}
	obj, err := e.Get(ctx, Ref{Resource: next, Namespace: workload.GetNamespace(), Name: name})
	if IsGone(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if !ControlledBy(obj, workload) {
		return nil, nil // not (or no longer) the workload's
	}
	if via.Selector != "" {
		sel, err := resource.Expand(via.Selector, wjson)
		if err != nil {
			return nil, &resource.FileError{File: s.File, Pointer: ptr + "/selector", Problem: err.Error()}
		}
		ls, err := labels.Parse(sel)
		if err != nil {
			return nil, &resource.FileError{File: s.File, Pointer: ptr + "/selector", Problem: fmt.Sprintf("%q is not a label selector: %v", sel, err)}
		}
		if !ls.Matches(labels.Set(obj.GetLabels())) {
			return nil, nil
		}
	}
	pod, err := e.findPod(ctx, next, obj, depth+1)
	if errors.Is(err, ErrNoPod) {
		return nil, nil
	}
	return pod, err
}

func (e *Engine) getPod(ctx context.Context, podRes *resource.Resource, ns, name string) (*unstructured.Unstructured, error) {
	c, _, err := e.client(podRes, ns)
	if err != nil {
		return nil, err
	}
	p, err := c.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading pod %s/%s: %w", ns, name, err)
	}
	return p, nil
}

// pickPod keeps the pods controlled by the workload (by UID) and prefers a
// live, ready one.
func (e *Engine) pickPod(podRes *resource.Resource, workload *unstructured.Unstructured, pods []unstructured.Unstructured) *unstructured.Unstructured {
	var best *unstructured.Unstructured
	bestRank := -1
	for i := range pods {
		p := &pods[i]
		if !ControlledBy(p, workload) {
			continue
		}
		rank := 0
		switch e.Status(podRes, p).State {
		case resource.Ready:
			rank = 3
		case resource.Pending:
			rank = 2
		case resource.Succeeded, resource.Failed:
			rank = 1
		}
		if rank > bestRank {
			best, bestRank = p, rank
		}
	}
	return best
}

// ControlledBy reports whether o carries a controller ownerReference to
// owner's UID.
func ControlledBy(o, owner *unstructured.Unstructured) bool {
	for _, r := range o.GetOwnerReferences() {
		if r.Controller != nil && *r.Controller && r.UID == owner.GetUID() {
			return true
		}
	}
	return false
}

// Logs returns a container's log through the pod resource's log subresource.
func (e *Engine) Logs(ctx context.Context, pod *unstructured.Unstructured, container string) ([]byte, error) {
	podRes, ok := e.Catalog.Pod()
	if !ok || podRes.Logs == nil {
		return nil, errors.New("the catalog's pod file declares no logs subresource")
	}
	if e.REST == nil {
		return nil, errors.New("the engine has no REST client for logs")
	}
	r, err := e.Resolve(podRes)
	if err != nil {
		return nil, err
	}
	prefix := []string{"/apis", r.GVR.Group, r.GVR.Version}
	if r.GVR.Group == "" {
		prefix = []string{"/api", r.GVR.Version}
	}
	segs := append(prefix, "namespaces", pod.GetNamespace(), r.GVR.Resource, pod.GetName(), podRes.Logs.Subresource)
	req := e.REST.Get().AbsPath(segs...)
	if podRes.Logs.ContainerParam != "" && container != "" {
		req = req.Param(podRes.Logs.ContainerParam, container)
	}
	rc, err := req.Stream(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading the log of pod %s/%s container %q: %w", pod.GetNamespace(), pod.GetName(), container, err)
	}
	defer rc.Close()
	return io.ReadAll(rc)
}
