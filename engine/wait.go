package engine

import (
	"context"
	"errors"
	"slices"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"

	"github.com/paperclip-k8s/paperclip-k8s/engine/resource"
)

// Wait watches an object until its status is one of want, with client-go's
// informers (watchAll: what watchtools.UntilWithSync, kubectl wait, does):
// it re-watches when a watch ends and relists when it expires (410). It
// starts from the object given (its resourceVersion) and evaluates the
// rules on every change. Once a rule that tests events (event:) holds in
// every other way, the events about the object are read too (a field
// selector on its UID); a rule with after is evaluated again when it
// comes due. A terminal state that is not wanted returns a *TerminalError
// at once; deletion, or another object under the name, returns a
// *GoneError; the context's end a *WaitError.
//
// When the file declares pods.failFast, the wait also reads the changes of
// the pods of the namespace and evaluates the object's pod (FindPod) with
// the pod file's rules: a pod they say is Failed and that passes
// failFast's tests (one that will not start) ends the wait with a
// *TerminalError naming the pod, and the status returned is the pod's,
// its message naming the pod; so is a *WaitError's Last while the object
// is Pending and its pod is not Ready (the scheduler's message, an image
// pull back-off).
func (e *Engine) Wait(ctx context.Context, s *resource.Resource, o *unstructured.Unstructured, want ...resource.State) (*unstructured.Unstructured, resource.Status, error) {
	ref := RefOf(s, o)
	judge := func(st resource.Status) (bool, error) {
		if slices.Contains(want, st.State) {
			return true, nil
		}
		if st.State.Terminal() {
			return true, &TerminalError{Ref: ref, Status: st}
		}
		return false, nil
	}
	c, _, err := e.client(s, o.GetNamespace())
	if err != nil {
		return nil, resource.Status{}, err
	}
	// Done already, without a request (unless events are wanted)?
	last := e.Status(s, o)
	if done, err := judge(last); done && !last.WantsEvents {
		return o, last, err
	}
	ws := e.newWatchSet(ctx)
	defer ws.close()
	obj := &source{what: ref.String(), res: s, c: c, first: o,
		selector: fields.OneTermEqualSelector("metadata.name", ref.Name).String(),
		concerns: func(u *unstructured.Unstructured) bool { return u.GetName() == ref.Name }}
	if err := ws.add(obj); err != nil {
		return o, last, ws.failed(err, ref, want, last)
	}
	pods, err := e.failFastPods(ws, s, o)
	if err != nil {
		return o, last, ws.failed(err, ref, want, last)
	}
	err = ws.run(func() (bool, time.Time, error) {
		cur := obj.get(ref.Namespace, ref.Name)
		if cur == nil {
			return true, time.Time{}, &GoneError{Ref: ref}
		}
		if ref.UID != "" && cur.GetUID() != ref.UID {
			o = cur
			return true, time.Time{}, &GoneError{Ref: ref, Replaced: true}
		}
		o = cur
		st, err := ws.status(s, cur)
		last = st
		if err != nil {
			return true, time.Time{}, err
		}
		done, err := judge(last)
		if done || pods == nil {
			return done, last.Recheck, err
		}
		return pods.check(ctx, ws, cur, &last)
	})
	return o, last, ws.failed(err, ref, want, last)
}

// failFastPods is what a wait on a workload whose file declares
// pods.failFast reads of its pods: the changes of the pods of its
// namespace (those it controls, or, found through other objects (via),
// those carrying its labelsFrom labels), then its pod (FindPod) and, when
// it controls its pods itself, every pod it controls that changed during
// the wait, evaluated with the pod file's rules. FindPod picks one pod, an
// ended one maybe: a Job that replaced a failed pod has both.
type failFastPods struct {
	e        *Engine
	res      *resource.Resource // the workload's file
	podRes   *resource.Resource
	failFast *resource.PodFailFast
	src      *source
	// owned says whether the workload controls its pods (no via): the
	// changed pods it controls are its pods too.
	owned bool
}

// failFastPods starts the pods' source of a wait on w; nil when its file
// declares no pods.failFast.
func (e *Engine) failFastPods(ws *watchSet, s *resource.Resource, w *unstructured.Unstructured) (*failFastPods, error) {
	if s.Pods == nil || s.Pods.FailFast == nil {
		return nil, nil
	}
	podRes, ok := e.Catalog.Pod()
	if !ok {
		return nil, errors.New("the catalog has no file with scope pod")
	}
	pc, _, err := e.client(podRes, w.GetNamespace())
	if err != nil {
		return nil, err
	}
	f := &failFastPods{e: e, res: s, podRes: podRes, failFast: s.Pods.FailFast}
	concerns := viaPodConcerns(s, w)
	if concerns == nil {
		f.owned = true
		concerns = func(p *unstructured.Unstructured) bool { return p.GetUID() == w.GetUID() || ControlledBy(p, w) }
	}
	f.src = &source{what: "the pods of " + RefOf(s, w).String(), res: podRes, c: pc, changesOnly: true, concerns: concerns}
	if err := ws.add(f.src); err != nil {
		return nil, err
	}
	return f, nil
}

// check evaluates the pods of w (whose status is *last, neither wanted nor
// terminal): a Failed pod that passes failFast ends the wait with a
// *TerminalError naming it; *last becomes that pod's status, or FindPod's
// pod's while w is Pending and that pod is not Ready.
func (f *failFastPods) check(ctx context.Context, ws *watchSet, w *unstructured.Unstructured, last *resource.Status) (bool, time.Time, error) {
	p, err := f.e.FindPod(ctx, f.res, w)
	if err != nil && !errors.Is(err, ErrNoPod) {
		return true, time.Time{}, err
	}
	recheck := last.Recheck
	pending := *last
	for i, q := range f.candidates(p, w) {
		st, err := ws.status(f.podRes, q)
		ref := RefOf(f.podRes, q)
		named := st
		named.Message = ref.String()
		if st.Message != "" {
			named.Message += ": " + st.Message
		}
		if i == 0 && p != nil && last.State == resource.Pending && st.State != resource.Ready {
			pending = named
		}
		if err != nil {
			*last = pending // without its events when reading them failed
			return true, time.Time{}, err
		}
		if st.State == resource.Failed {
			if b, err := q.MarshalJSON(); err == nil && f.failFast.Holds(b) {
				*last = named
				return true, time.Time{}, &TerminalError{Ref: ref, Status: st}
			}
		}
		recheck = earliest(recheck, st.Recheck)
	}
	*last = pending
	return false, recheck, nil
}

// candidates are the pods check evaluates: p (FindPod's, when there is
// one) first, then, when w controls its pods, the others it controls (and
// that carry its labelsFrom labels) that changed during the wait.
func (f *failFastPods) candidates(p, w *unstructured.Unstructured) []*unstructured.Unstructured {
	var out []*unstructured.Unstructured
	if p != nil {
		out = append(out, p)
	}
	if !f.owned {
		return out
	}
	var want map[string]string
	if b, err := w.MarshalJSON(); err == nil {
		want = labelsWanted(f.res, b)
	}
	for _, o := range f.src.store.List() {
		q, ok := o.(*unstructured.Unstructured)
		if ok && ControlledBy(q, w) && carriesLabels(q, want) && (p == nil || q.GetUID() != p.GetUID()) {
			out = append(out, q)
		}
	}
	return out
}

// failed is the error a wait returns for err: a *WaitError when the
// caller's context ended (a list or watch that failed because of it
// included), else err.
func (ws *watchSet) failed(err error, ref Ref, want []resource.State, last resource.Status) error {
	if err == nil || IsGone(err) {
		return err
	}
	var te *TerminalError
	if errors.As(err, &te) {
		return err
	}
	if err == errWaitEnded || ws.ctx.Err() != nil {
		return &WaitError{Ref: ref, Want: want, Last: last, Reason: ws.ctx.Err()}
	}
	return err
}
