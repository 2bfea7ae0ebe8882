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
// does for one object. A wait reads several at once (a workload, the pods
// of its namespace, their events), so it runs one informer per source and
// evaluates its rules on the stores after they have all synced and after
// every change that concerns it.
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
	// index, when set, indexes the store by the values it returns.
	index func(*unstructured.Unstructured) []string
	// concerns says whether a change to an object calls for a new check.
	concerns func(*unstructured.Unstructured) bool

	store cache.Indexer
}

// byKey is the name of a source's index.
const byKey = "key"

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

// indexed returns the objects whose index values include v.
func (s *source) indexed(v string) []*unstructured.Unstructured {
	objs, _ := s.store.ByIndex(byKey, v)
	out := make([]*unstructured.Unstructured, 0, len(objs))
	for _, o := range objs {
		if u, ok := o.(*unstructured.Unstructured); ok {
			out = append(out, u)
		}
	}
	return out
}

// errWaitEnded says that the context ended first; the caller makes the
// *WaitError with its last status.
var errWaitEnded = errors.New("the wait's context ended")

// watchAll runs an informer per source and calls check once they have all
// synced, after every change a source's concerns accepts, and at the
// recheck time check returns (when a rule comes due without a change). It
// returns check's error when check says done, errWaitEnded when ctx ends,
// and the error of a list or watch the server refused (an expired
// resourceVersion is relisted, not an error).
func (e *Engine) watchAll(ctx context.Context, srcs []*source, check func() (done bool, recheck time.Time, err error)) error {
	wctx, stop := context.WithCancelCause(ctx)
	var wg sync.WaitGroup
	defer func() {
		stop(nil)
		wg.Wait()
	}()
	changed := make(chan struct{}, 1)
	var synced []<-chan struct{}
	for _, src := range srcs {
		poke := func(o any) {
			if d, ok := o.(cache.DeletedFinalStateUnknown); ok {
				o = d.Obj
			}
			if u, ok := o.(*unstructured.Unstructured); ok && (src.concerns == nil || src.concerns(u)) {
				select {
				case changed <- struct{}{}:
				default:
				}
			}
		}
		lw := &listWatch{e: e, src: src, fail: stop, watching: make(chan struct{})}
		opts := cache.InformerOptions{
			ListerWatcher: lw,
			ObjectType:    &unstructured.Unstructured{},
			Handler: cache.ResourceEventHandlerFuncs{
				AddFunc:    poke,
				UpdateFunc: func(_, o any) { poke(o) },
				DeleteFunc: poke,
			},
			Indexers: cache.Indexers{byKey: func(o any) ([]string, error) {
				u, ok := o.(*unstructured.Unstructured)
				if !ok || src.index == nil {
					return nil, nil
				}
				return src.index(u), nil
			}},
		}
		store, ctrl := cache.NewInformerWithOptions(opts)
		src.store = store.(cache.Indexer)
		wg.Go(func() { ctrl.RunWithContext(wctx) })
		synced = append(synced, ctrl.HasSyncedChecker().Done())
		// The sources start one after the other, each once the one before
		// is watched: a change is never missed for want of a watch, and
		// the order is the same every time (the tests rely on it).
		select {
		case <-lw.watching:
		case <-wctx.Done():
			return ended(ctx, wctx)
		}
	}
	for _, ch := range synced {
		select {
		case <-ch:
		case <-wctx.Done():
			return ended(ctx, wctx)
		}
	}
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
		case <-changed:
		case <-due:
		case <-wctx.Done():
			return ended(ctx, wctx)
		}
	}
}

// ended is the error of a wait whose own context (wctx) ended: a source's
// failure, else errWaitEnded.
func ended(ctx, wctx context.Context) error {
	if ctx.Err() == nil {
		if cause := context.Cause(wctx); cause != nil && !errors.Is(cause, context.Canceled) {
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
	list, err := l.src.c.List(ctx, l.options(opts))
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

// eventSource is the source of the events in a namespace (about one
// object when uid is set: a field selector), indexed by the UID of the
// object each is about; nil when the catalog has no event file.
func (e *Engine) eventSource(namespace, what, uid string) (*source, error) {
	evRes, ok := e.Catalog.Event()
	if !ok {
		return nil, nil
	}
	c, _, err := e.client(evRes, namespace)
	if err != nil {
		return nil, err
	}
	src := &source{what: what, res: evRes, c: c, index: func(u *unstructured.Unstructured) []string {
		b, err := u.MarshalJSON()
		if err != nil {
			return nil
		}
		return []string{e.Catalog.EventAbout(b)}
	}}
	if uid != "" {
		src.selector = evRes.Events.About + "=" + uid
	}
	return src, nil
}

// statusWith evaluates an object against its resource's rules with the
// events about it (from an event source; nil: none read).
func (e *Engine) statusWith(s *resource.Resource, o *unstructured.Unstructured, events *source) resource.Status {
	b, err := o.MarshalJSON()
	if err != nil {
		return resource.Status{State: resource.Pending, Reason: "Unreadable", Message: err.Error()}
	}
	obs := resource.Observed{Now: time.Now()}
	if events != nil && s.UsesEvents() {
		for _, ev := range events.indexed(string(o.GetUID())) {
			if raw, err := ev.MarshalJSON(); err == nil {
				obs.Events = append(obs.Events, raw)
			}
		}
	}
	return s.EvaluateWith(b, obs)
}
