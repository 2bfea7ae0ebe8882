package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"

	"github.com/tidwall/gjson"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"

	"github.com/paperclip-k8s/paperclip-k8s/engine/resource"
)

// ErrNoPod says that a workload has no pod (yet).
var ErrNoPod = errors.New("the workload has no pod yet")

// A NoPodError is FindPod's ErrNoPod (errors.Is holds): the workload, and
// why each object it names on the way to its pod (pods.find via) was not
// used: absent, or not trusted.
type NoPodError struct {
	Workload Ref
	// NotUsed says which object was found and why it was not used, with
	// what to do ("Sandbox ns/x named by status.sandbox.name of
	// SandboxClaim ns/y is not controlled by it …").
	NotUsed []string
}

func (e *NoPodError) Error() string {
	msg := fmt.Sprintf("%s: %v", e.Workload, ErrNoPod)
	if len(e.NotUsed) > 0 {
		msg += ": " + strings.Join(e.NotUsed, "; ")
	}
	return msg
}

// Is makes errors.Is(err, ErrNoPod) hold.
func (e *NoPodError) Is(target error) bool { return target == ErrNoPod }

// FindPod finds the pod a workload owns, trying the resource's pod rules in
// order. A pod counts only if it carries a controller ownerReference with
// the workload's UID, or, through a via rule, with the UID of an object the
// workload controls (whose own file's pod rules find it); with labelsFrom,
// only once it carries those labels. Among the pods a rule yields, one that
// is not being deleted and is running is preferred.
//
// When it finds none, the error is a *NoPodError (errors.Is(err,
// ErrNoPod)) that says which objects a via rule found and did not use.
func (e *Engine) FindPod(ctx context.Context, s *resource.Resource, workload *unstructured.Unstructured) (*unstructured.Unstructured, error) {
	return e.findPod(ctx, s, workload, 0, &podSearch{})
}

// A podSearch is one FindPod: what its via hops found and did not use
// (for the *NoPodError) and, within a wait (AwaitPod), the via objects
// earlier checks accepted (memo), so that a check need not read them
// again.
type podSearch struct {
	memo *viaMemo
	// gen is the memo's generation when the search started: what it reads
	// is remembered only while no pod change has dropped the memo since.
	gen     int
	notUsed []string
	// served are the memo's entries this search used without reading them.
	served []*viaEntry
}

// A viaMemo is what the via hops of one wait's checks resolved: each via
// object read and accepted (controlled by the object that names it), by
// hop, and the pod the last check found. A later check that finds the same
// name at the hop uses the object remembered instead of reading it again;
// it still checks the owner and the selector, and its pod rules read the
// pods anew. The wait trusts it only for a pod that does not end the wait:
// no pod, or a pod that ends it (Ready, Failed), reads the served objects
// again (reread) and walks again when one changed. A change to a pod other
// than the one found (one a replaced or changed via object now leads to)
// drops it all (podChanged).
type viaMemo struct {
	mu      sync.Mutex
	entries map[string]*viaEntry
	pod     types.UID
	gen     int // how often it was dropped
}

// search starts a podSearch that uses m (nil: none).
func (m *viaMemo) search() *podSearch {
	if m == nil {
		return &podSearch{}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return &podSearch{memo: m, gen: m.gen}
}

// A viaEntry is one remembered via object.
type viaEntry struct {
	key string
	res *resource.Resource
	obj *unstructured.Unstructured
}

// recall returns the object remembered at key when it has that name.
func (m *viaMemo) recall(key, name string) *viaEntry {
	if m == nil {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if v := m.entries[key]; v != nil && v.obj.GetName() == name {
		return v
	}
	return nil
}

// remember keeps obj (of file res) at key, unless the memo was dropped
// since generation gen (a search that began before a pod change must not
// bring back what the change dropped); forget drops the key.
func (m *viaMemo) remember(gen int, key string, res *resource.Resource, obj *unstructured.Unstructured) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if gen != m.gen {
		return
	}
	if m.entries == nil {
		m.entries = map[string]*viaEntry{}
	}
	m.entries[key] = &viaEntry{key: key, res: res, obj: obj}
}

func (m *viaMemo) forget(key string) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.entries, key)
}

// found records the pod a check found (nil: none).
func (m *viaMemo) found(p *unstructured.Unstructured) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.pod = ""
	if p != nil {
		m.pod = p.GetUID()
	}
}

// podChanged is told of each pod change that concerns the wait: one to a
// pod other than the one found drops every entry (the next check walks the
// whole chain).
func (m *viaMemo) podChanged(p *unstructured.Unstructured) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if p.GetUID() != m.pod {
		m.entries = nil
		m.gen++
	}
}

// reread reads the served entries again and says whether one changed (is
// gone, or has another UID or resourceVersion); a changed one is replaced
// by what was read (or dropped when gone), so that the walk that follows
// reads it no more.
func (e *Engine) reread(ctx context.Context, ps *podSearch) (bool, error) {
	m := ps.memo
	changed := false
	for _, v := range ps.served {
		cur, err := e.Get(ctx, Ref{Resource: v.res, Namespace: v.obj.GetNamespace(), Name: v.obj.GetName()})
		switch {
		case IsGone(err):
			m.forget(v.key)
			changed = true
		case err != nil:
			return false, err
		case cur.GetUID() != v.obj.GetUID() || cur.GetResourceVersion() != v.obj.GetResourceVersion():
			m.remember(ps.gen, v.key, v.res, cur)
			changed = true
		}
	}
	return changed, nil
}

// maxViaDepth bounds the hops of a pod discovery (Load refuses cycles).
const maxViaDepth = 4

// findPod is FindPod depth hops (via) away from the backend's workload.
func (e *Engine) findPod(ctx context.Context, s *resource.Resource, workload *unstructured.Unstructured, depth int, ps *podSearch) (*unstructured.Unstructured, error) {
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
			p, err := e.viaPod(ctx, s, i, f.Via, workload, wjson, depth, ps)
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
	return nil, &NoPodError{Workload: RefOf(s, workload), NotUsed: ps.notUsed}
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
// (and no error) when the object or its pod does not exist (yet); an
// object that exists and is not used is noted in ps (why, and what to do).
// Within a wait, the object comes from ps's memo when it holds one of that
// name at this hop.
func (e *Engine) viaPod(ctx context.Context, s *resource.Resource, i int, via *resource.Via, workload *unstructured.Unstructured, wjson []byte, depth int, ps *podSearch) (*unstructured.Unstructured, error) {
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
	ref := Ref{Resource: next, Namespace: workload.GetNamespace(), Name: name}
	named := fmt.Sprintf("%s named by %s of %s", ref, via.NameFrom, RefOf(s, workload))
	key := fmt.Sprintf("%s#%d@%s", s.File, i, workload.GetUID())
	var obj *unstructured.Unstructured
	if v := ps.memo.recall(key, name); v != nil {
		obj = v.obj
		ps.served = append(ps.served, v)
	} else {
		o, err := e.Get(ctx, ref)
		if IsGone(err) {
			ps.memo.forget(key)
			ps.notUsed = append(ps.notUsed, named+" does not exist (yet)")
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		obj = o
	}
	// The trust checks, on a remembered object too (they read nothing).
	fix := fmt.Sprintf("the provider uses only an object that %s controls and that its file (%s) selects, so that a run never gets another's pod: "+
		"check the controller that writes %s (its logs and version), or release the run and acquire again", RefOf(s, workload), s.File, via.NameFrom)
	if !ControlledBy(obj, workload) {
		ps.memo.forget(key)
		ps.notUsed = append(ps.notUsed, fmt.Sprintf("%s is not controlled by it (uid %s; %s), so neither it nor its pods are used; %s",
			named, workload.GetUID(), controllerOf(obj), fix))
		return nil, nil
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
			ps.memo.forget(key)
			ps.notUsed = append(ps.notUsed, fmt.Sprintf("%s does not match the selector %s of %s (%s), so neither it nor its pods are used; %s",
				named, sel, s.File, labelsOf(obj, ls), fix))
			return nil, nil
		}
	}
	ps.memo.remember(ps.gen, key, next, obj)
	pod, err := e.findPod(ctx, next, obj, depth+1, ps)
	if errors.Is(err, ErrNoPod) {
		return nil, nil
	}
	return pod, err
}

// controllerOf says which object controls o, for an error.
func controllerOf(o *unstructured.Unstructured) string {
	for _, r := range o.GetOwnerReferences() {
		if r.Controller != nil && *r.Controller {
			return fmt.Sprintf("its controller is %s %s, uid %s", r.Kind, r.Name, r.UID)
		}
	}
	return "it has no controller"
}

// labelsOf gives the values o has for the labels sel tests, for an error.
func labelsOf(o *unstructured.Unstructured, sel labels.Selector) string {
	reqs, _ := sel.Requirements()
	var out []string
	for _, r := range reqs {
		if v, ok := o.GetLabels()[r.Key()]; ok {
			out = append(out, fmt.Sprintf("%s is %q", r.Key(), v))
		} else {
			out = append(out, r.Key()+" is not set")
		}
	}
	return "its label " + strings.Join(out, ", ")
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
