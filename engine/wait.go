package engine

import (
	"context"
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
// rules on every change. When the object's file has rules that test
// events (event:) and the object is not Ready to begin with, the events
// about it are read too, and a rule with after is evaluated again when it
// comes due. A terminal state that is not wanted returns a *TerminalError
// at once; deletion, or another object under the name, returns a
// *GoneError; the context's end a *WaitError.
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
	last := e.Status(s, o)
	if done, err := judge(last); done {
		return o, last, err
	}
	c, _, err := e.client(s, o.GetNamespace())
	if err != nil {
		return nil, last, err
	}
	obj := &source{what: ref.String(), res: s, c: c, first: o,
		selector: fields.OneTermEqualSelector("metadata.name", ref.Name).String(),
		concerns: func(u *unstructured.Unstructured) bool { return u.GetName() == ref.Name }}
	srcs := []*source{obj}
	var events *source
	if s.UsesEvents() && last.State != resource.Ready {
		if events, err = e.eventSource(o.GetNamespace(), "the events of "+ref.String(), string(o.GetUID())); err != nil {
			return nil, last, err
		}
		if events != nil {
			uid := string(o.GetUID())
			events.concerns = func(u *unstructured.Unstructured) bool { return slices.Contains(events.index(u), uid) }
			srcs = append(srcs, events)
		}
	}
	err = e.watchAll(ctx, srcs, func() (bool, time.Time, error) {
		cur := obj.get(ref.Namespace, ref.Name)
		if cur == nil {
			return true, time.Time{}, &GoneError{Ref: ref}
		}
		if ref.UID != "" && cur.GetUID() != ref.UID {
			o = cur
			return true, time.Time{}, &GoneError{Ref: ref, Replaced: true}
		}
		o = cur
		last = e.statusWith(s, cur, events)
		done, err := judge(last)
		return done, last.Recheck, err
	})
	if err == errWaitEnded {
		return o, last, &WaitError{Ref: ref, Want: want, Last: last, Reason: ctx.Err()}
	}
	return o, last, err
}
