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
		return done, last.Recheck, err
	})
	return o, last, ws.failed(err, ref, want, last)
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
