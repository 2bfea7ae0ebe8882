package engine

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"

	"github.com/paperclip-k8s/paperclip-k8s/engine/resource"
)

// AwaitPod waits until a workload is Ready and has a Ready pod (FindPod),
// and returns both. w should be freshly read: the watch on it starts from
// its resourceVersion. It reads, with client-go's informers (watchSet),
// the workload and the changes of the pods of its namespace and, once a
// rule that tests events (event:) holds in every other way for the
// workload or its pod, that object's events, so what happens to any of
// them is seen as it happens:
//   - a pod whose rules say it will not start (Failed: an image that cannot
//     be pulled, a pod no node can take while nothing is adding one) ends
//     the wait with a *TerminalError naming the pod, and so does a
//     workload that ends;
//   - a workload that is deleted or replaced gives a *GoneError;
//   - a pod that is deleted or not created yet is waited for: a controller
//     may report Ready for a moment while it replaces its pod;
//   - a rule with after (a grace) is evaluated again when it comes due.
//
// A pod found through other objects (via) costs, per check, the reads of
// what may have changed: the via objects an earlier check accepted are
// remembered (viaMemo), so a pod change reads the pod only; a check that
// would end the wait or finds no pod reads them again, and a rebind (another
// name at nameFrom), a replaced via object or another pod's change walks
// the chain again.
//
// When ctx ends first, the *WaitError's Last is the pod's status when there
// is a pod (the scheduler's message, an image pull back-off), else the
// workload's, with why an object a via rule found was not used (not
// controlled by the workload, not matching the selector, absent).
func (e *Engine) AwaitPod(ctx context.Context, s *resource.Resource, w *unstructured.Unstructured) (*unstructured.Unstructured, *unstructured.Unstructured, error) {
	podRes, ok := e.Catalog.Pod()
	if !ok {
		return nil, nil, errors.New("the catalog has no file with scope pod")
	}
	ref := RefOf(s, w)
	// What the via hops resolve, kept across the checks (see viaMemo).
	memo := &viaMemo{}
	if pod, ok := e.readyNow(ctx, s, podRes, w, memo); ok {
		return w, pod, nil
	}
	wc, _, err := e.client(s, w.GetNamespace())
	if err != nil {
		return nil, nil, err
	}
	pc, _, err := e.client(podRes, w.GetNamespace())
	if err != nil {
		return nil, nil, err
	}
	// A pod change calls for a check when it touches the workload's pod
	// once found, a pod the workload controls, and until a pod is found
	// any pod; a pod found through another object (via) is controlled by
	// that object, not by the workload: such a backend's waits look at
	// every pod change of the namespace, but for the pods that carry the
	// workload's labelsFrom labels when it has them (FindPod takes no other),
	// so that the other runs' pods of a busy namespace cost no reads. Such
	// a change to a pod other than the one found drops the memo: a replaced
	// or changed via object may lead to it now.
	var mu sync.Mutex
	podUID := types.UID("")
	concernsPod := viaPodConcerns(s, w)
	if concernsPod != nil {
		carries := concernsPod
		concernsPod = func(p *unstructured.Unstructured) bool {
			if !carries(p) {
				return false
			}
			memo.podChanged(p)
			return true
		}
	} else {
		concernsPod = func(p *unstructured.Unstructured) bool {
			mu.Lock()
			defer mu.Unlock()
			if podUID == "" || p.GetUID() == podUID {
				return true
			}
			for _, r := range p.GetOwnerReferences() {
				if r.Controller != nil && *r.Controller && r.UID == ref.UID {
					return true
				}
			}
			return false
		}
	}
	workload := &source{what: ref.String(), res: s, c: wc, first: w,
		selector: fields.OneTermEqualSelector("metadata.name", ref.Name).String(),
		concerns: func(u *unstructured.Unstructured) bool { return u.GetName() == ref.Name }}
	pods := &source{what: "the pods of " + ref.String(), res: podRes, c: pc, changesOnly: true, concerns: concernsPod}
	ws := e.newWatchSet(ctx)
	defer ws.close()
	want := []resource.State{resource.Ready}
	var last resource.Status
	for _, src := range []*source{workload, pods} {
		if err := ws.add(src); err != nil {
			return nil, nil, ws.failed(err, ref, want, last)
		}
	}
	var pod *unstructured.Unstructured
	err = ws.run(func() (bool, time.Time, error) {
		cur := workload.get(ref.Namespace, ref.Name)
		if cur == nil {
			return true, time.Time{}, &GoneError{Ref: ref}
		}
		if ref.UID != "" && cur.GetUID() != ref.UID {
			return true, time.Time{}, &GoneError{Ref: ref, Replaced: true}
		}
		w = cur
		wst, err := ws.status(s, cur)
		last = wst
		if err != nil {
			return true, time.Time{}, err
		}
		if wst.State.Terminal() {
			return true, time.Time{}, &TerminalError{Ref: ref, Status: wst}
		}
		// A pod found through remembered via objects is trusted only when
		// it does not end the wait: none, or one that ends it, reads them
		// again, and the chain is walked again when one of them changed.
		for pass := 0; ; pass++ {
			ps := memo.search()
			p, err := e.findPod(ctx, s, cur, 0, ps)
			noPod := errors.Is(err, ErrNoPod)
			if err != nil && !noPod {
				return true, time.Time{}, err
			}
			var pst resource.Status
			if !noPod {
				pst, err = ws.status(podRes, p)
				last = pst // without its events when reading them failed
				if err != nil {
					return true, time.Time{}, err
				}
			}
			ends := noPod || pst.State == resource.Ready && wst.State == resource.Ready ||
				pst.State == resource.Failed || pst.State == resource.Succeeded
			if pass == 0 && ends && len(ps.served) > 0 {
				changed, err := e.reread(ctx, ps)
				if err != nil {
					return true, time.Time{}, err
				}
				if changed {
					last = wst
					continue
				}
			}
			memo.found(p)
			mu.Lock()
			podUID = ""
			if p != nil {
				podUID = p.GetUID()
			}
			mu.Unlock()
			if noPod {
				last = withNotUsed(wst, err)
				return false, wst.Recheck, nil
			}
			switch {
			case pst.State == resource.Ready && wst.State == resource.Ready:
				pod = p
				return true, time.Time{}, nil
			case pst.State == resource.Failed || pst.State == resource.Succeeded:
				return true, time.Time{}, &TerminalError{Ref: RefOf(podRes, p), Status: pst}
			}
			return false, earliest(wst.Recheck, pst.Recheck), nil
		}
	})
	if err != nil {
		return nil, nil, ws.failed(err, ref, want, last)
	}
	return w, pod, nil
}

// readyNow is AwaitPod's fast path: when w (freshly read) is Ready and
// its pod, found once (FindPod: reads, no watch), is Ready too, it returns
// that pod, and AwaitPod starts no informer (a warm pod handed over before
// the first command, a lease's pod on a worker that restarted). Anything
// else (not ready yet, a rule that wants events, an error finding the pod)
// leaves the answer to the watches, which read everything again.
//
// What it resolves through via objects is remembered in memo for the
// wait's first check.
func (e *Engine) readyNow(ctx context.Context, s, podRes *resource.Resource, w *unstructured.Unstructured, memo *viaMemo) (*unstructured.Unstructured, bool) {
	if !readyWithoutEvents(s, w) {
		return nil, false
	}
	p, err := e.findPod(ctx, s, w, 0, memo.search())
	if err != nil || !readyWithoutEvents(podRes, p) {
		memo.found(p)
		return nil, false
	}
	return p, true
}

// withNotUsed is the workload's status st with why its pod was not found
// when a via rule found objects it did not use (err a *NoPodError): the
// *WaitError of a wait that ends so says which and why.
func withNotUsed(st resource.Status, err error) resource.Status {
	var np *NoPodError
	if !errors.As(err, &np) || len(np.NotUsed) == 0 {
		return st
	}
	note := "no pod: " + strings.Join(np.NotUsed, "; ")
	if st.Message != "" {
		note = st.Message + "; " + note
	}
	st.Message = note
	return st
}

// readyWithoutEvents says whether o's rules make it Ready without a rule
// that wants its events.
func readyWithoutEvents(s *resource.Resource, o *unstructured.Unstructured) bool {
	b, err := o.MarshalJSON()
	if err != nil {
		return false
	}
	st := s.EvaluateWith(b, resource.Observed{Now: time.Now()})
	return st.State == resource.Ready && !st.WantsEvents
}

// earliest is the earlier of two recheck times, zero meaning none.
func earliest(a, b time.Time) time.Time {
	if a.IsZero() || (!b.IsZero() && b.Before(a)) {
		return b
	}
	return a
}

// viaPodConcerns is which pod changes concern a wait on w when its file
// finds pods through other objects (via): those carrying w's labelsFrom
// labels, every one when it has none; nil when the file finds no pod
// through via.
func viaPodConcerns(s *resource.Resource, w *unstructured.Unstructured) func(*unstructured.Unstructured) bool {
	if !findsVia(s) {
		return nil
	}
	var want map[string]string
	if b, err := w.MarshalJSON(); err == nil {
		want = labelsWanted(s, b)
	}
	return func(p *unstructured.Unstructured) bool { return carriesLabels(p, want) }
}

// findsVia reports whether a file finds its pods through other objects.
func findsVia(s *resource.Resource) bool {
	if s == nil || s.Pods == nil {
		return false
	}
	for _, f := range s.Pods.Find {
		if f.Via != nil {
			return true
		}
	}
	return false
}
