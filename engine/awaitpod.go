package engine

import (
	"context"
	"errors"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/paperclip-k8s/paperclip-k8s/engine/resource"
)

// AwaitPod waits until a workload is Ready and has a Ready pod (FindPod),
// and returns both. w should be freshly read: the watch on it starts from
// its resourceVersion. It watches the workload and the pods of its namespace,
// so what happens to either is seen as it happens:
//   - a pod whose rules say it will not start (Failed: an image that cannot
//     be pulled, say) ends the wait with a *TerminalError naming the pod,
//     and so does a workload that ends;
//   - a workload that is deleted or replaced gives a *GoneError;
//   - a pod that is deleted or not created yet is waited for: a controller
//     may report Ready for a moment while it replaces its pod.
//
// When ctx ends first, the *WaitError's Last is the pod's status when there
// is a pod (the scheduler's message, an image pull back-off), else the
// workload's.
func (e *Engine) AwaitPod(ctx context.Context, s *resource.Resource, w *unstructured.Unstructured) (*unstructured.Unstructured, *unstructured.Unstructured, error) {
	podRes, ok := e.Catalog.Pod()
	if !ok {
		return nil, nil, errors.New("the catalog has no file with scope pod")
	}
	ref := RefOf(s, w)
	wc, _, err := e.client(s, w.GetNamespace())
	if err != nil {
		return nil, nil, err
	}
	pc, _, err := e.client(podRes, w.GetNamespace())
	if err != nil {
		return nil, nil, err
	}
	var last resource.Status
	// check says whether waiting is over, with the pod when it is Ready.
	check := func() (*unstructured.Unstructured, bool, error) {
		wst := e.Status(s, w)
		last = wst
		if wst.State.Terminal() {
			return nil, true, &TerminalError{Ref: ref, Status: wst}
		}
		pod, err := e.FindPod(ctx, s, w)
		if errors.Is(err, ErrNoPod) {
			return nil, false, nil
		}
		if err != nil {
			return nil, true, err
		}
		pst := e.Status(podRes, pod)
		last = pst
		switch {
		case pst.State == resource.Ready && wst.State == resource.Ready:
			return pod, true, nil
		case pst.State == resource.Failed || pst.State == resource.Succeeded:
			return nil, true, &TerminalError{Ref: RefOf(podRes, pod), Status: pst}
		}
		return nil, false, nil
	}
	// The workload given is used as read (callers have just read it); it
	// is read again only when the watches start over.
	for first := true; ; first = false {
		// List first: a pod created between the list and the watch is
		// still an event of the watch.
		pl, err := pc.List(ctx, metav1.ListOptions{Limit: 1})
		if err != nil {
			return nil, nil, e.waitFailed(ctx, ref, last, fmt.Errorf("listing the pods of %s: %w", ref, err))
		}
		if !first {
			cur, err := e.Get(ctx, Ref{Resource: s, Namespace: ref.Namespace, Name: ref.Name, UID: ref.UID})
			if err != nil {
				return nil, nil, e.waitFailed(ctx, ref, last, err)
			}
			w = cur
		}
		if pod, done, err := check(); done {
			return w, pod, err
		}
		pw, err := pc.Watch(ctx, metav1.ListOptions{ResourceVersion: pl.GetResourceVersion(), AllowWatchBookmarks: true})
		if err != nil {
			if apierrors.IsGone(err) || apierrors.IsResourceExpired(err) {
				continue
			}
			return nil, nil, e.waitFailed(ctx, ref, last, fmt.Errorf("watching the pods of %s: %w", ref, err))
		}
		ww, err := wc.Watch(ctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("metadata.name", ref.Name).String(),
			ResourceVersion: w.GetResourceVersion(), AllowWatchBookmarks: true})
		if err != nil {
			pw.Stop()
			if apierrors.IsGone(err) || apierrors.IsResourceExpired(err) {
				continue
			}
			return nil, nil, e.waitFailed(ctx, ref, last, fmt.Errorf("watching %s: %w", ref, err))
		}
		pod, done, err := e.awaitEvents(ctx, ref, &w, pw, ww, check)
		pw.Stop()
		ww.Stop()
		if done {
			return w, pod, err
		}
		if ctx.Err() != nil {
			return nil, nil, &WaitError{Ref: ref, Want: []resource.State{resource.Ready}, Last: last, Reason: ctx.Err()}
		}
		// A watch ended or expired: list and watch again.
	}
}

// awaitEvents reads both watches until waiting is over (done) or one of
// them ends.
func (e *Engine) awaitEvents(ctx context.Context, ref Ref, w **unstructured.Unstructured, pw, ww watch.Interface,
	check func() (*unstructured.Unstructured, bool, error)) (*unstructured.Unstructured, bool, error) {
	for {
		select {
		case <-ctx.Done():
			return nil, false, nil
		case ev, open := <-ww.ResultChan():
			if !open || ev.Type == watch.Error {
				return nil, false, nil
			}
			cur, ok := ev.Object.(*unstructured.Unstructured)
			if !ok || ev.Type == watch.Bookmark || cur.GetName() != ref.Name {
				continue
			}
			if ev.Type == watch.Deleted {
				return nil, true, &GoneError{Ref: ref}
			}
			if ref.UID != "" && cur.GetUID() != ref.UID {
				return nil, true, &GoneError{Ref: ref, Replaced: true}
			}
			*w = cur
		case ev, open := <-pw.ResultChan():
			if !open || ev.Type == watch.Error {
				return nil, false, nil
			}
			p, ok := ev.Object.(*unstructured.Unstructured)
			// A pod found through another object (via) is controlled by
			// that object, not by the workload: such a backend's waits
			// look at every pod event of the namespace.
			if !ok || ev.Type == watch.Bookmark || (!ControlledBy(p, *w) && !findsVia(ref.Resource)) {
				continue
			}
		}
		if pod, done, err := check(); done {
			return pod, true, err
		}
	}
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

func (e *Engine) waitFailed(ctx context.Context, ref Ref, last resource.Status, err error) error {
	if ctx.Err() != nil {
		return &WaitError{Ref: ref, Want: []resource.State{resource.Ready}, Last: last, Reason: ctx.Err()}
	}
	return err
}
