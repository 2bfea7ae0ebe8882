package engine

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/cache"

	"github.com/paperclip-k8s/paperclip-k8s/engine/resource"
)

// A source is one list + watch a wait reads: client-go's informer keeps
// it in a store, re-watches when a watch ends and relists when its
// resourceVersion expired (410), as watchtools.UntilWithSync (kubectl wait)
// does for one object. A wait reads several (a workload, the pods of its
// namespace, the events of an object that wants them), so a watchSet runs
// one informer per source and evaluates its rules after they have all
// synced and after every change that concerns it.
type source struct {
	// what names the source in errors ("Job ns/x", "the pods of Job ns/x").
	what string
	res  *resource.Resource
	c    dynamic.ResourceInterface
	// selector is the field selector of every list and watch ("" none).
	selector string
	// first, when set, is served as the first list (an object the caller
	// has just read), so the first watch starts from its resourceVersion
	// without a request.
	first *unstructured.Unstructured
	// changesOnly: the source is read for its changes: each list asks
	// for one item, only for the resourceVersion to watch from, and keeps
	// none, so its store holds only what changed since (the pods of a
	// namespace, which the wait reads through FindPod).
	changesOnly bool
	// concerns says whether a change to an object calls for a new check.
	concerns func(*unstructured.Unstructured) bool

	store cache.Store
}

// get returns the object of that name from the source's store.
func (s *source) get(namespace, name string) *unstructured.Unstructured {
	key := name
	if namespace != "" {
		key = namespace + "/" + name
	}
	o, ok, _ := s.store.GetByKey(key)
	if !ok {
		return nil
	}
	u, _ := o.(*unstructured.Unstructured)
	return u
}

// errWaitEnded says that the context ended first; the caller makes the
// *WaitError with its last status.
var errWaitEnded = errors.New("the wait's context ended")

// A watchSet is the informers of one wait.
type watchSet struct {
	e       *Engine
	ctx     context.Context // the caller's
	wctx    context.Context // ends with ctx, a source's failure, or close
	stop    context.CancelCauseFunc
	wg      sync.WaitGroup
	changed chan struct{}
	// events are the event sources, by the UID of the object they are about.
	events map[string]*source
}

func (e *Engine) newWatchSet(ctx context.Context) *watchSet {
	wctx, stop := context.WithCancelCause(ctx)
	return &watchSet{e: e, ctx: ctx, wctx: wctx, stop: stop, changed: make(chan struct{}, 1), events: map[string]*source{}}
}

// close stops the informers and waits for them to end.
func (ws *watchSet) close() {
	ws.stop(nil)
	ws.wg.Wait()
}

// add starts a source's informer and returns once it is watched and its
// store has synced: the sources start one after the other, so a change is
// never missed for want of a watch, and always in the same order (the
// tests rely on it). Its error is the wait's end (see ended).
func (ws *watchSet) add(src *source) error {
	poke := func(o any) {
		if d, ok := o.(cache.DeletedFinalStateUnknown); ok {
			o = d.Obj
		}
		if u, ok := o.(*unstructured.Unstructured); ok && (src.concerns == nil || src.concerns(u)) {
			select {
			case ws.changed <- struct{}{}:
			default:
			}
		}
	}
	lw := &listWatch{e: ws.e, src: src, fail: ws.stop, watching: make(chan struct{})}
	store, ctrl := cache.NewInformerWithOptions(cache.InformerOptions{
		ListerWatcher: lw,
		ObjectType:    &unstructured.Unstructured{},
		Handler: cache.ResourceEventHandlerFuncs{
			AddFunc:    poke,
			UpdateFunc: func(_, o any) { poke(o) },
			DeleteFunc: poke,
		},
	})
	src.store = store
	ws.wg.Go(func() { ctrl.RunWithContext(ws.wctx) })
	for _, ch := range []<-chan struct{}{lw.watching, ctrl.HasSyncedChecker().Done()} {
		select {
		case <-ch:
		case <-ws.wctx.Done():
			return ws.ended()
		}
	}
	return nil
}

// eventsOf returns the events about the object o, adding their source
// (a field selector on its UID) on first use; nil without an event file.
func (ws *watchSet) eventsOf(o *unstructured.Unstructured) ([][]byte, error) {
	uid := string(o.GetUID())
	src, ok := ws.events[uid]
	if !ok {
		evRes, found := ws.e.Catalog.Event()
		if !found {
			return nil, nil
		}
		c, _, err := ws.e.client(evRes, o.GetNamespace())
		if err != nil {
			return nil, err
		}
		about := func(u *unstructured.Unstructured) string {
			b, err := u.MarshalJSON()
			if err != nil {
				return ""
			}
			return ws.e.Catalog.EventAbout(b)
		}
		src = &source{what: fmt.Sprintf("the events of %s %s/%s", o.GetKind(), o.GetNamespace(), o.GetName()), res: evRes, c: c,
			selector: evRes.Events.About + "=" + uid,
			concerns: func(u *unstructured.Unstructured) bool { return about(u) == uid }}
		if err := ws.add(src); err != nil {
			return nil, err
		}
		ws.events[uid] = src
	}
	var out [][]byte
	for _, o := range src.store.List() {
		if u, ok := o.(*unstructured.Unstructured); ok && src.concerns(u) {
			if raw, err := u.MarshalJSON(); err == nil {
				out = append(out, raw)
			}
		}
	}
	return out, nil
}

// status evaluates an object against its resource's rules, with the
// events about it once a rule wants them (read from then on).
func (ws *watchSet) status(s *resource.Resource, o *unstructured.Unstructured) (resource.Status, error) {
	b, err := o.MarshalJSON()
	if err != nil {
		return resource.Status{State: resource.Pending, Reason: "Unreadable", Message: err.Error()}, nil
	}
	obs := resource.Observed{Now: time.Now()}
	_, read := ws.events[string(o.GetUID())]
	st := s.EvaluateWith(b, obs)
	if !st.WantsEvents && !read {
		return st, nil
	}
	if obs.Events, err = ws.eventsOf(o); err != nil {
		return st, err
	}
	obs.EventsRead = true
	return s.EvaluateWith(b, obs), nil
}

// run calls check until it says done, after every change a source's
// concerns accepts and at the recheck time check returns (when a rule
// comes due without a change). It returns check's error when check says
// done, errWaitEnded when ctx ends, and the error of a list or watch the
// server refused (an expired resourceVersion is relisted, not an error).
func (ws *watchSet) run(check func() (done bool, recheck time.Time, err error)) error {
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		done, recheck, err := check()
		if done {
			return err
		}
		if ws.wctx.Err() != nil {
			return ws.ended()
		}
		var due <-chan time.Time
		if !recheck.IsZero() {
			if timer == nil {
				timer = time.NewTimer(time.Until(recheck))
			} else {
				timer.Reset(time.Until(recheck))
			}
			due = timer.C
		}
		select {
		case <-ws.changed:
		case <-due:
		case <-ws.wctx.Done():
			return ws.ended()
		}
	}
}

// ended is the error of a wait whose own context ended: a source's
// failure, else errWaitEnded.
func (ws *watchSet) ended() error {
	if ws.ctx.Err() == nil {
		if cause := context.Cause(ws.wctx); cause != nil && !errors.Is(cause, context.Canceled) {
			return cause
		}
	}
	return errWaitEnded
}

// listWatch lists and watches a source for its informer. An error other
// than an expired resourceVersion ends the wait through fail (an informer
// would retry forever).
type listWatch struct {
	e      *Engine
	src    *source
	listed atomic.Bool
	fail   context.CancelCauseFunc
	// watching is closed once the first watch call has returned.
	watching chan struct{}
	once     sync.Once
}

var (
	_ cache.ListerWatcher            = (*listWatch)(nil)
	_ cache.ListerWatcherWithContext = (*listWatch)(nil)
)

// IsWatchListSemanticsUnSupported keeps the informer on list + watch: a
// first list may be served from the object in hand.
func (l *listWatch) IsWatchListSemanticsUnSupported() bool { return true }

// expired reports an error the informer recovers from by relisting.
func expired(err error) bool { return apierrors.IsGone(err) || apierrors.IsResourceExpired(err) }

func (l *listWatch) options(opts metav1.ListOptions) metav1.ListOptions {
	if l.src.selector != "" {
		opts.FieldSelector = l.src.selector
	}
	return opts
}

func (l *listWatch) ListWithContext(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
	if first := l.src.first; first != nil && !l.listed.Swap(true) {
		list := &unstructured.UnstructuredList{Object: map[string]any{"apiVersion": "v1", "kind": "List"}}
		list.SetResourceVersion(first.GetResourceVersion())
		list.Items = []unstructured.Unstructured{*first.DeepCopy()}
		return list, nil
	}
	if l.src.changesOnly {
		// The latest resourceVersion, from one item: "0" (any, from the
		// watch cache) would send them all.
		opts.Limit, opts.ResourceVersion, opts.ResourceVersionMatch = 1, "", ""
	}
	list, err := l.src.c.List(ctx, l.options(opts))
	if err == nil && l.src.changesOnly {
		list.Items = nil
		list.SetContinue("")
	}
	if err != nil && !expired(err) && ctx.Err() == nil {
		err = l.e.noteMissing(l.src.res, err)
		if ResourceMissing(err) {
			err = fmt.Errorf("reading %s: the cluster no longer serves %s: %w", l.src.what, l.src.res.API.Kind, err)
		} else {
			err = fmt.Errorf("reading %s: %w", l.src.what, err)
		}
		l.fail(err)
	}
	return list, err
}

func (l *listWatch) WatchWithContext(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	w, err := l.src.c.Watch(ctx, l.options(opts))
	if err != nil && !expired(err) && ctx.Err() == nil {
		l.fail(fmt.Errorf("watching %s: %w", l.src.what, err))
	}
	l.once.Do(func() { close(l.watching) })
	return w, err
}

func (l *listWatch) List(opts metav1.ListOptions) (runtime.Object, error) {
	return l.ListWithContext(context.Background(), opts)
}

func (l *listWatch) Watch(opts metav1.ListOptions) (watch.Interface, error) {
	return l.WatchWithContext(context.Background(), opts)
}
