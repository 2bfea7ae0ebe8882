package bench

import (
	"context"
	"fmt"
	"maps"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"

	"github.com/paperclip-k8s/paperclip-k8s/plugin"
)

// WarmPoolLevels are the parallelism levels of the warm-pool table.
var WarmPoolLevels = []int{1, 20}

// The warm-pool comparison: the same runs (acquire, then the first
// command's result, then a bare exec of `true` in the same pod) on the
// sandbox backend, on sandboxclaim with an empty pool and on sandboxclaim
// with a warm pool of PoolSize.
type wpScenario struct {
	name    string
	backend string
	pool    int   // warmPoolSize; -1: not a pool backend
	levels  []int // parallelism levels (nil: WarmPoolLevels)
	standby int   // standbyLeases
}

type wpRow struct {
	sc      wpScenario
	par     int
	acq     []time.Duration
	ttfc    []time.Duration // acquire start -> first execute result
	exec1   []time.Duration // acquire return -> first execute result
	bare    []time.Duration // bare exec `true` in the same pod, after it
	reqs    int             // provider requests, acquire + first execute
	runs    int
	refill  []time.Duration // how long the pool was below its size in a round
	warmRun int             // runs whose pod was made before the run
	standby int             // runs that took a standby with its pod known
}

// runWarmPools prints the warm-pool table.
func (b *bench) runWarmPools(ctx context.Context, out *strings.Builder) error {
	size := b.o.PoolSize
	poolSpec, hasPool := b.p.Catalog.Get("sandboxwarmpool")
	if _, ok := b.p.Catalog.Get("sandboxclaim"); !ok || !hasPool || poolSpec.API == nil {
		return fmt.Errorf("bench: -warm-pools needs the sandboxclaim backend and the sandboxwarmpool tenant file in the catalog")
	}
	poolGVR := schema.GroupVersionResource{Group: poolSpec.API.Group, Version: poolSpec.API.Versions[0], Resource: poolSpec.API.Resource}
	dyn, err := dynamic.NewForConfig(b.rc)
	if err != nil {
		return err
	}
	scenarios := []wpScenario{
		{"sandbox", "sandbox", -1, nil, 0},
		{"sandboxclaim, empty pool", "sandboxclaim", 0, nil, 0},
		{fmt.Sprintf("sandboxclaim, warm pool of %d", size), "sandboxclaim", size, nil, 0},
		// A claim the worker made and saw Ready before the run: the run
		// takes it with one patch and its pod is known.
		{fmt.Sprintf("sandboxclaim, warm pool of %d, 1 standby lease", size), "sandboxclaim", size, WarmPoolLevels[:1], 1},
	}
	if drain := max(1, size/4); drain < WarmPoolLevels[len(WarmPoolLevels)-1] {
		// A burst larger than the pool: the pool drains, the rest go cold.
		scenarios = append(scenarios, wpScenario{fmt.Sprintf("sandboxclaim, warm pool of %d (drained)", drain), "sandboxclaim", drain, WarmPoolLevels[len(WarmPoolLevels)-1:], 0})
	}
	var rows []wpRow
	for si, sc := range scenarios {
		cfg := maps.Clone(b.cfg)
		cfg["backend"] = sc.backend
		cfg["adapterType"] = "codex_local"
		if sc.pool >= 0 {
			cfg["warmPoolSize"] = sc.pool
			cfg["standbyLeases"] = sc.standby
		}
		company := b.company(fmt.Sprintf("wp%d", si))
		// The tenant (and its pool) is made by the first acquire: do one,
		// outside the figures, and wait for the pool to fill.
		b.progress(fmt.Sprintf("warm pools: %s: tenant", sc.name))
		l, _, err := b.acquireWith(ctx, company, cfg)
		if err != nil {
			return err
		}
		ns, _ := l.Metadata["namespace"].(string)
		if err := b.releaseAll(ctx); err != nil {
			return err
		}
		if sc.pool > 0 {
			pw, err := watchPools(ctx, dyn, poolGVR, ns) // returns once full
			if err != nil {
				return err
			}
			pw.stop()
		}
		levels := sc.levels
		if levels == nil {
			levels = WarmPoolLevels
		}
		for _, par := range levels {
			runs := max(b.o.N, par)
			if par > 1 {
				runs = max(par, (b.o.N/par)*par)
			}
			b.progress(fmt.Sprintf("warm pools: %s: %d runs at parallelism %d", sc.name, runs, par))
			row := wpRow{sc: sc, par: par}
			for done := 0; done < runs; done += par {
				var pw *poolWatch
				if sc.pool > 0 {
					if pw, err = watchPools(ctx, dyn, poolGVR, ns); err != nil {
						return err
					}
				}
				// The standbys the last round's acquires asked for are
				// Ready (runs come seconds apart, not back to back).
				if err := b.p.StandbysSettled(ctx); err != nil {
					return err
				}
				var last time.Time
				samples, err := b.wpRound(ctx, &row, company, cfg, par, &last)
				if err == nil && pw != nil {
					var d time.Duration
					// A round that took a member must see the pool go below
					// its size and back.
					if d, err = pw.refill(ctx, warmRuns(samples) > 0); err == nil && d > 0 {
						row.refill = append(row.refill, d)
					}
				}
				if err == nil {
					// The bare execs once the pool is full again and the
					// standbys asked for are made: nothing competes with them.
					err = b.wpBare(ctx, &row, samples, par)
				}
				if pw != nil {
					pw.stop()
				}
				if err != nil {
					return err
				}
				if err := b.releaseAll(ctx); err != nil {
					return err
				}
				// Runs come seconds apart: the next round does not compete
				// with these pods' deletion.
				if err := b.waitPodsGone(ctx, samples); err != nil {
					return err
				}
			}
			rows = append(rows, row)
		}
	}

	fmt.Fprintf(out, "\n### Warm pools: acquire → first command (`true`) → bare exec in the same pod\n\n")
	fmt.Fprintf(out, "%d CPUs, %s/%s; load average %s. Every run: acquire, execute `true` (time to first command = from the acquire's start to that result); once the round's runs have their first results, the pool has refilled and the worker's standbys are made, one bare client-go exec of `true` in each run's pod.\n\n",
		runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, loadAvg())
	fmt.Fprintf(out, "| backend | parallel | runs | warm | standby | acquire p50 | acquire p95 | first execute p50 | first command p50 | first command p95 | bare exec p50 | first command ÷ bare | API requests / run | pool refill p50 | pool refill max |\n")
	fmt.Fprintf(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range rows {
		refill50, refillMax := "–", "–"
		if len(r.refill) > 0 {
			refill50, refillMax = ms(Percentile(r.refill, 50)), ms(Percentile(r.refill, 100))
		}
		warm, standby := "–", "–"
		if r.sc.pool >= 0 {
			warm, standby = itoa(r.warmRun), itoa(r.standby)
		}
		ratio := float64(Percentile(r.ttfc, 50)) / float64(max(Percentile(r.bare, 50), 1))
		fmt.Fprintf(out, "| %s | %d | %d | %s | %s | %s | %s | %s | %s | %s | %s | %.1f× | %.1f | %s | %s |\n",
			r.sc.name, r.par, r.runs, warm, standby, ms(Percentile(r.acq, 50)), ms(Percentile(r.acq, 95)),
			ms(Percentile(r.exec1, 50)), ms(Percentile(r.ttfc, 50)), ms(Percentile(r.ttfc, 95)), ms(Percentile(r.bare, 50)), ratio,
			float64(r.reqs)/float64(max(r.runs, 1)), refill50, refillMax)
	}
	fmt.Fprintf(out, "\nwarm: runs whose pod was created before the run's acquire (a pool member); standby: runs that took a standby lease (a claim the worker made and saw Ready before the run, standbyLeases; before each round the bench waits for the worker's standbys to be Ready, as runs seconds apart find them). First execute: from the acquire's return to the first command's result (it waits for the pod); first command: from the acquire's start. API requests: the provider's, for the acquire and the first command. Pool refill: how long the pool stayed below its size in a round (from the first status with fewer ready members than spec.replicas to the status with all of them ready again, as watched). These are the provider's figures and the controller's; on the local control plane the controller is the stand-in (internal/sandboxctl) and kwok makes pods Ready in milliseconds, so a real cluster adds image pull and start to every cold row and to the refill.\n")
	return nil
}

// wpSample is one run of a round.
type wpSample struct {
	acq, ttfc, exec1 time.Duration
	pod, ns          string
	warm             bool // the pod is not named after the workload: made before
	standby          bool // the lease names its pod at acquire: a standby taken
}

// warmRuns counts the samples whose pod was made before the run.
func warmRuns(samples []wpSample) int {
	n := 0
	for _, s := range samples {
		if s.warm {
			n++
		}
	}
	return n
}

// wpRound runs par runs at once (acquire, first command) and adds them to
// row; wpBare adds their bare execs. lastAcquire is set to when the
// round's last acquire returned.
func (b *bench) wpRound(ctx context.Context, row *wpRow, company string, cfg map[string]any, par int, lastAcquire *time.Time) ([]wpSample, error) {
	b.counter.Take()
	var failed atomic.Pointer[error]
	samples := make([]wpSample, par)
	var lastMu sync.Mutex
	forEach(par, par, func(i int) {
		start := time.Now()
		l, d, err := b.acquireWith(ctx, company, cfg)
		lastMu.Lock()
		if t := start.Add(d); t.After(*lastAcquire) {
			*lastAcquire = t
		}
		lastMu.Unlock()
		if err == nil {
			var pod string
			pod, err = b.executeWith(ctx, company, cfg, l, "true")
			ns, _ := l.Metadata["namespace"].(string)
			ttfc := time.Since(start)
			samples[i] = wpSample{acq: d, ttfc: ttfc, exec1: ttfc - d, pod: pod, ns: ns, warm: pod != deref(l.ProviderLeaseID), standby: l.Metadata["podUid"] != nil}
		}
		if err != nil {
			failed.CompareAndSwap(nil, &err)
		}
	})
	reqs := len(b.counter.Take())
	if e := failed.Load(); e != nil {
		return nil, *e
	}
	for _, s := range samples {
		row.acq = append(row.acq, s.acq)
		row.ttfc = append(row.ttfc, s.ttfc)
		row.exec1 = append(row.exec1, s.exec1)
		if s.warm {
			row.warmRun++
		}
		if s.standby {
			row.standby++
		}
	}
	row.reqs += reqs
	row.runs += par
	return samples, nil
}

// waitPodsGone waits (list, then watch) until none of the samples' pods
// exists.
func (b *bench) waitPodsGone(ctx context.Context, samples []wpSample) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	byNS := map[string]map[string]bool{}
	for _, s := range samples {
		if byNS[s.ns] == nil {
			byNS[s.ns] = map[string]bool{}
		}
		byNS[s.ns][s.pod] = true
	}
	for ns, names := range byNS {
		for {
			l, err := b.kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
			if err != nil {
				return fmt.Errorf("waiting for the released runs' pods to go: %w", err)
			}
			left := map[string]bool{}
			for _, p := range l.Items {
				if names[p.Name] {
					left[p.Name] = true
				}
			}
			if len(left) == 0 {
				break
			}
			w, err := b.kube.CoreV1().Pods(ns).Watch(ctx, metav1.ListOptions{ResourceVersion: l.ResourceVersion})
			if err != nil {
				return fmt.Errorf("waiting for the released runs' pods to go: %w", err)
			}
			for ev := range w.ResultChan() {
				if p, ok := ev.Object.(*corev1.Pod); ok && ev.Type == watch.Deleted {
					delete(left, p.Name)
				}
				if len(left) == 0 {
					break
				}
			}
			w.Stop()
			if len(left) == 0 {
				break
			}
			if ctx.Err() != nil {
				return fmt.Errorf("the released runs' pods %v are still there: %w", slices.Sorted(maps.Keys(left)), ctx.Err())
			}
		}
	}
	return nil
}

// wpBare runs a bare exec of `true` in each sample's pod, at the round's
// parallelism, once the standbys the round asked for are made.
func (b *bench) wpBare(ctx context.Context, row *wpRow, samples []wpSample, par int) error {
	if err := b.p.StandbysSettled(ctx); err != nil {
		return err
	}
	container := ""
	if spec, ok := b.p.Catalog.Get(row.sc.backend); ok && spec.Pods != nil {
		container = spec.Pods.Container
	}
	var mu sync.Mutex
	var failed atomic.Pointer[error]
	forEach(par, par, func(i int) {
		s := &samples[i]
		d, err := b.bareExec(ctx, s.ns, s.pod, container, []string{"true"})
		if err != nil {
			failed.CompareAndSwap(nil, &err)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		row.bare = append(row.bare, d)
	})
	if e := failed.Load(); e != nil {
		return *e
	}
	return nil
}

func (b *bench) acquireWith(ctx context.Context, company string, cfg map[string]any) (plugin.Lease, time.Duration, error) {
	id := fmt.Sprintf("bench-%s-%d", b.tag, b.seq.Add(1))
	base := plugin.BaseParams{DriverKey: "kubernetes", CompanyID: company, EnvironmentID: "bench", Config: cfg}
	start := time.Now()
	l, err := b.p.AcquireLease(ctx, plugin.AcquireParams{BaseParams: base, RunID: id, AdapterType: "codex_local"})
	d := time.Since(start)
	if err != nil {
		return l, d, fmt.Errorf("acquiring a lease for company %s (backend %v): %w", company, cfg["backend"], err)
	}
	b.mu.Lock()
	b.held = append(b.held, held{company: company, lease: l, cfg: cfg})
	b.mu.Unlock()
	return l, d, nil
}

// executeWith runs command and returns the pod it ran in.
func (b *bench) executeWith(ctx context.Context, company string, cfg map[string]any, l plugin.Lease, command string) (string, error) {
	base := plugin.BaseParams{DriverKey: "kubernetes", CompanyID: company, EnvironmentID: "bench", Config: cfg}
	r, err := b.p.Execute(ctx, plugin.ExecuteParams{BaseParams: base, Lease: l, Command: command, TimeoutMs: execTimeoutMs})
	if err != nil {
		return "", fmt.Errorf("execute %q: %w", command, err)
	}
	if r.TimedOut || r.ExitCode == nil || *r.ExitCode != 0 {
		return "", fmt.Errorf("execute %q: exit %v, timed out %v: %.300s", command, r.ExitCode, r.TimedOut, r.Stderr)
	}
	pod, _ := r.Metadata["podName"].(string)
	if pod == "" {
		return "", fmt.Errorf("execute %q: the result names no pod", command)
	}
	return pod, nil
}

// poolWatch watches the warm pools of a namespace and records when they
// were first seen below their size and when they were all full again.
type poolWatch struct {
	w    watch.Interface
	done chan struct{}

	mu        sync.Mutex
	belowAt   time.Time // first status below size
	fullAt    time.Time // status all full again after the last drop
	changed   chan struct{}
	closeOnce sync.Once
}

func poolFull(u *unstructured.Unstructured) bool {
	want, _, _ := unstructured.NestedInt64(u.Object, "spec", "replicas")
	ready, _, _ := unstructured.NestedInt64(u.Object, "status", "readyReplicas")
	have, _, _ := unstructured.NestedInt64(u.Object, "status", "replicas")
	return ready >= want && have == want
}

// watchPools waits until the pools are full, then watches them.
func watchPools(ctx context.Context, dyn dynamic.Interface, gvr schema.GroupVersionResource, ns string) (*poolWatch, error) {
	ri := dyn.Resource(gvr).Namespace(ns)
	l, err := ri.List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing the %s of namespace %s: %w", gvr.Resource, ns, err)
	}
	state := map[string]bool{}
	for i := range l.Items {
		state[l.Items[i].GetName()] = poolFull(&l.Items[i])
	}
	w, err := ri.Watch(ctx, metav1.ListOptions{ResourceVersion: l.GetResourceVersion()})
	if err != nil {
		return nil, err
	}
	pw := &poolWatch{w: w, done: make(chan struct{}), changed: make(chan struct{}, 1)}
	allFull := func() bool {
		for _, f := range state {
			if !f {
				return false
			}
		}
		return true
	}
	// Not full yet (an earlier round's refill): ready once it is.
	wasFull := allFull()
	ready := make(chan struct{})
	var readyOnce sync.Once
	if wasFull {
		readyOnce.Do(func() { close(ready) })
	}
	go func() {
		defer close(pw.done)
		for ev := range w.ResultChan() {
			u, ok := ev.Object.(*unstructured.Unstructured)
			if !ok {
				continue
			}
			if ev.Type == watch.Deleted {
				delete(state, u.GetName())
			} else {
				state[u.GetName()] = poolFull(u)
			}
			full := allFull()
			now := time.Now()
			pw.mu.Lock()
			switch {
			case full && !wasFull:
				select {
				case <-ready:
					if pw.fullAt.IsZero() {
						pw.fullAt = now
					}
				default:
					readyOnce.Do(func() { close(ready) })
				}
			case !full && wasFull:
				select {
				case <-ready:
					if pw.belowAt.IsZero() {
						pw.belowAt = now
					}
					pw.fullAt = time.Time{} // below again: until the last refill
				default:
				}
			}
			pw.mu.Unlock()
			wasFull = full
			select {
			case pw.changed <- struct{}{}:
			default:
			}
		}
	}()
	select {
	case <-ready:
		return pw, nil
	case <-pw.done:
		return nil, fmt.Errorf("the watch on %s of namespace %s ended", gvr.Resource, ns)
	case <-time.After(5 * time.Minute):
		pw.stop()
		return nil, fmt.Errorf("the warm pools of namespace %s did not fill within 5m", ns)
	case <-ctx.Done():
		pw.stop()
		return nil, ctx.Err()
	}
}

// refill waits until the pools, having been below size since watchPools
// (when taken, they must have been), are full again, and returns how long
// they were below (0: never seen below).
func (pw *poolWatch) refill(ctx context.Context, taken bool) (time.Duration, error) {
	timeout := time.After(5 * time.Minute)
	for {
		pw.mu.Lock()
		below, full := pw.belowAt, pw.fullAt
		pw.mu.Unlock()
		switch {
		case below.IsZero() && !taken:
			return 0, nil
		case below.IsZero():
		case !full.IsZero():
			return full.Sub(below), nil
		}
		select {
		case <-pw.changed:
		case <-pw.done:
			return 0, fmt.Errorf("the warm pool watch ended before the pool refilled")
		case <-timeout:
			return 0, fmt.Errorf("the warm pool did not refill within 5m")
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}

func (pw *poolWatch) stop() {
	pw.closeOnce.Do(func() {
		pw.w.Stop()
		<-pw.done
	})
}
