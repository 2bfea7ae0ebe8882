package engine

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"

	"github.com/paperclip-k8s/paperclip-k8s/engine/resource"
)

// Wait watches an object until its status is one of want, with client-go's
// watchtools.UntilWithSync (what kubectl wait uses): an informer on the
// object's name that re-watches when a watch ends and relists when it
// expires (410). It starts from the object given (its resourceVersion) and
// evaluates the rules on every event. A terminal state that is not wanted
// returns a *TerminalError at once; deletion, or another object under the
// name, returns a *GoneError; the context's end a *WaitError.
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

	wctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	lw := &objectWatch{e: e, s: s, ref: ref, c: c, first: o, fail: stop}
	var condErr error
	_, err = watchtools.UntilWithSync(wctx, lw, &unstructured.Unstructured{}, nil, func(ev watch.Event) (bool, error) {
		cur, ok := ev.Object.(*unstructured.Unstructured)
		if !ok || cur.GetName() != ref.Name {
			return false, nil
		}
		if ev.Type == watch.Deleted {
			condErr = &GoneError{Ref: ref}
			return true, condErr
		}
		if ref.UID != "" && cur.GetUID() != ref.UID {
			o, condErr = cur, &GoneError{Ref: ref, Replaced: true}
			return true, condErr
		}
		o = cur
		st, done, err := check(cur)
		last, condErr = st, err
		return done, err
	})
	switch {
	case condErr != nil:
		return o, last, condErr
	case err == nil:
		return o, last, nil
	case ctx.Err() != nil:
		return o, last, &WaitError{Ref: ref, Want: want, Last: last, Reason: ctx.Err()}
	}
	if cause := context.Cause(wctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return o, last, cause
	}
	return o, last, fmt.Errorf("watching %s: %w", ref, err)
}

// objectWatch lists and watches one object by name for Wait's informer.
// Its first list is the object Wait was given, so the first watch starts
// from that object's resourceVersion without a request; later lists (after
// a 410) ask the server. An error other than an expired resourceVersion
// ends the wait through fail (the informer itself would retry forever).
type objectWatch struct {
	e      *Engine
	s      *resource.Resource
	ref    Ref
	c      dynamic.ResourceInterface
	first  *unstructured.Unstructured
	listed atomic.Bool
	fail   context.CancelCauseFunc
}

var (
	_ cache.ListerWatcher            = (*objectWatch)(nil)
	_ cache.ListerWatcherWithContext = (*objectWatch)(nil)
)

// IsWatchListSemanticsUnSupported keeps the informer on list + watch: its
// first list is served from the object in hand (see objectWatch).
func (l *objectWatch) IsWatchListSemanticsUnSupported() bool { return true }

func (l *objectWatch) selector(opts metav1.ListOptions) metav1.ListOptions {
	opts.FieldSelector = fields.OneTermEqualSelector("metadata.name", l.ref.Name).String()
	return opts
}

// expired reports an error the informer recovers from by relisting.
func expired(err error) bool { return apierrors.IsGone(err) || apierrors.IsResourceExpired(err) }

func (l *objectWatch) ListWithContext(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
	if !l.listed.Swap(true) {
		list := &unstructured.UnstructuredList{Object: map[string]any{"apiVersion": "v1", "kind": "List"}}
		list.SetResourceVersion(l.first.GetResourceVersion())
		list.Items = []unstructured.Unstructured{*l.first.DeepCopy()}
		return list, nil
	}
	list, err := l.c.List(ctx, l.selector(opts))
	if err != nil && !expired(err) && ctx.Err() == nil {
		err = l.e.noteMissing(l.s, err)
		if ResourceMissing(err) {
			err = fmt.Errorf("reading %s: the cluster no longer serves %s: %w", l.ref, l.s.API.Kind, err)
		} else {
			err = fmt.Errorf("reading %s: %w", l.ref, err)
		}
		l.fail(err)
	}
	return list, err
}

func (l *objectWatch) WatchWithContext(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	w, err := l.c.Watch(ctx, l.selector(opts))
	if err != nil && !expired(err) && ctx.Err() == nil {
		l.fail(fmt.Errorf("watching %s: %w", l.ref, err))
	}
	return w, err
}

func (l *objectWatch) List(opts metav1.ListOptions) (runtime.Object, error) {
	return l.ListWithContext(context.Background(), opts)
}

func (l *objectWatch) Watch(opts metav1.ListOptions) (watch.Interface, error) {
	return l.WatchWithContext(context.Background(), opts)
}
