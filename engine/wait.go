package engine

import (
	"context"
	"errors"
	"fmt"
	"slices"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/paperclip-k8s/paperclip-k8s/engine/resource"
)

// Wait watches an object until its status is one of want. It starts from
// the object given (its resourceVersion), re-watches when the watch ends or
// expires (410), and evaluates the rules on every event. A terminal state
// that is not wanted returns a *TerminalError at once; deletion returns a
// *GoneError.
func (e *Engine) Wait(ctx context.Context, s *resource.Resource, o *unstructured.Unstructured, want ...resource.State) (*unstructured.Unstructured, resource.Status, error) {
	ref := RefOf(s, o)
	c, _, err := e.client(s, o.GetNamespace())
	if err != nil {
		return nil, resource.Status{}, err
	}
	check := func(cur *unstructured.Unstructured) (resource.Status, bool, error) {
		st := e.Status(s, cur)
		if slices.Contains(want, st.State) {
			return st, true, nil
		}
		if st.State.Terminal() {
			return st, true, &TerminalError{Ref: ref, Status: st}
		}
		return st, false, nil
	}
	last, done, err := check(o)
	if done {
		return o, last, err
	}
	rv := o.GetResourceVersion()
	sel := fields.OneTermEqualSelector("metadata.name", o.GetName()).String()
	for {
		if ctx.Err() != nil {
			return o, last, &WaitError{Ref: ref, Want: want, Last: last, Reason: ctx.Err()}
		}
		w, err := c.Watch(ctx, metav1.ListOptions{FieldSelector: sel, ResourceVersion: rv, AllowWatchBookmarks: true})
		if err != nil {
			if ctx.Err() != nil {
				return o, last, &WaitError{Ref: ref, Want: want, Last: last, Reason: ctx.Err()}
			}
			if !apierrors.IsGone(err) && !apierrors.IsResourceExpired(err) {
				return o, last, fmt.Errorf("watching %s: %w", ref, err)
			}
			rv = "" // relist below
		} else {
			var stop bool
			o, last, rv, stop, err = e.drain(ctx, w, ref, o, last, rv, check)
			w.Stop()
			if stop {
				return o, last, err
			}
		}
		if rv == "" {
			cur, err := e.Get(ctx, ref)
			if err != nil {
				if ctx.Err() != nil {
					return o, last, &WaitError{Ref: ref, Want: want, Last: last, Reason: ctx.Err()}
				}
				return o, last, err
			}
			o, rv = cur, cur.GetResourceVersion()
			if last, done, err = check(o); done {
				return o, last, err
			}
		}
	}
}

// drain reads one watch until it ends. It returns the newest object and
// status, the resourceVersion to resume from ("" to re-read the object), and
// whether waiting is over.
func (e *Engine) drain(ctx context.Context, w watch.Interface, ref Ref, o *unstructured.Unstructured, last resource.Status, rv string,
	check func(*unstructured.Unstructured) (resource.Status, bool, error)) (*unstructured.Unstructured, resource.Status, string, bool, error) {
	for {
		var ev watch.Event
		var open bool
		select {
		case <-ctx.Done():
			return o, last, rv, false, nil
		case ev, open = <-w.ResultChan():
		}
		if !open {
			return o, last, rv, false, nil
		}
		switch ev.Type {
		case watch.Added, watch.Modified:
			cur, ok := ev.Object.(*unstructured.Unstructured)
			if !ok || cur.GetName() != ref.Name {
				continue
			}
			if ref.UID != "" && cur.GetUID() != ref.UID {
				return cur, last, rv, true, &GoneError{Ref: ref, Replaced: true}
			}
			o, rv = cur, cur.GetResourceVersion()
			st, done, err := check(o)
			last = st
			if done {
				return o, last, rv, true, err
			}
		case watch.Bookmark:
			if m, ok := ev.Object.(*unstructured.Unstructured); ok {
				rv = m.GetResourceVersion()
			}
		case watch.Deleted:
			return o, last, rv, true, &GoneError{Ref: ref}
		case watch.Error:
			err := apierrors.FromObject(ev.Object)
			if apierrors.IsGone(err) || apierrors.IsResourceExpired(err) {
				return o, last, "", false, nil
			}
			var st apierrors.APIStatus
			if errors.As(err, &st) {
				e.Log.Debug("watch error, re-watching", "object", ref.String(), "error", err)
			}
			return o, last, "", false, nil
		}
	}
}
