package bench

import (
	"context"
	"fmt"
	"maps"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

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
}

type wpRow struct {
	sc      wpScenario
	par     int
	acq     []time.Duration
	ttfc    []time.Duration // acquire start -> first execute result
	bare    []time.Duration // bare exec `true` in the same pod, after it
	reqs    int             // provider requests, acquire + first execute
	runs    int
	refill  []time.Duration // last acquire of a round -> pool full again
	warmRun int             // runs whose pod was made before the run
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
		{"sandbox", "sandbox", -1, nil},
		{"sandboxclaim, empty pool", "sandboxclaim", 0, nil},
		{fmt.Sprintf("sandboxclaim, warm pool of %d", size), "sandboxclaim", size, nil},
	}
	if drain := max(1, size/4); drain < WarmPoolLevels[len(WarmPoolLevels)-1] {
		// A burst larger than the pool: the pool drains, the rest go cold.
		scenarios = append(scenarios, wpScenario{fmt.Sprintf("sandboxclaim, warm pool of %d (drained)", drain), "sandboxclaim", drain, WarmPoolLevels[len(WarmPoolLevels)-1:]})
	}
	var rows []wpRow
	for si, sc := range scenarios {
		cfg := maps.Clone(b.cfg)
		cfg["backend"] = sc.backend
		cfg["adapterType"] = "codex_local"
		if sc.pool >= 0 {
			cfg["warmPoolSize"] = sc.pool
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
			if _, err := waitPoolsFull(ctx, dyn, poolGVR, ns); err != nil {
				return err
			}
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
				var last time.Time
				if err := b.wpRound(ctx, &row, company, cfg, par, &last); err != nil {
					return err
				}
				if sc.pool > 0 {
					fullAt, err := waitPoolsFull(ctx, dyn, poolGVR, ns)
					if err != nil {
						return err
					}
					row.refill = append(row.refill, fullAt.Sub(last))
				}
				if err := b.releaseAll(ctx); err != nil {
					return err
				}
			}
			rows = append(rows, row)
		}
	}

	fmt.Fprintf(out, "\n### Warm pools: acquire → first command (`true`) → bare exec in the same pod\n\n")
	fmt.Fprintf(out, "%d CPUs, %s/%s; load average %s. Every run: acquire, execute `true` (time to first command = from the acquire's start to that result), then one bare client-go exec of `true` in the same pod.\n\n",
		runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, loadAvg())
	fmt.Fprintf(out, "| backend | parallel | runs | warm | acquire p50 | acquire p95 | first command p50 | first command p95 | bare exec p50 | first command ÷ bare | API requests / run | pool refill p50 | pool refill max |\n")
	fmt.Fprintf(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range rows {
		refill50, refillMax := "–", "–"
		if len(r.refill) > 0 {
			refill50, refillMax = ms(Percentile(r.refill, 50)), ms(Percentile(r.refill, 100))
		}
		warm := "–"
		if r.sc.pool >= 0 {
			warm = itoa(r.warmRun)
		}
		ratio := float64(Percentile(r.ttfc, 50)) / float64(max(Percentile(r.bare, 50), 1))
		fmt.Fprintf(out, "| %s | %d | %d | %s | %s | %s | %s | %s | %s | %.1f× | %.1f | %s | %s |\n",
			r.sc.name, r.par, r.runs, warm, ms(Percentile(r.acq, 50)), ms(Percentile(r.acq, 95)),
			ms(Percentile(r.ttfc, 50)), ms(Percentile(r.ttfc, 95)), ms(Percentile(r.bare, 50)), ratio,
			float64(r.reqs)/float64(max(r.runs, 1)), refill50, refillMax)
	}
	fmt.Fprintf(out, "\nwarm: runs whose pod was created before the run's acquire (a pool member). API requests: the provider's, for the acquire and the first command. Pool refill: from the last acquire of a round to the pool's readyReplicas back at its size (the provider's figures and the controller's; on the local control plane the controller is the stand-in, internal/sandboxctl, and pods start in milliseconds).\n")
	return nil
}

// wpRound runs par runs at once and adds them to row.
// lastAcquire is set to when the round's last acquire returned.
func (b *bench) wpRound(ctx context.Context, row *wpRow, company string, cfg map[string]any, par int, lastAcquire *time.Time) error {
	b.counter.Take()
	var mu sync.Mutex
	var failed atomic.Pointer[error]
	type sample struct {
		acq, ttfc time.Duration
		pod, ns   string
		warm      bool // the pod is not named after the workload: made before
	}
	samples := make([]sample, par)
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
			samples[i] = sample{acq: d, ttfc: time.Since(start), pod: pod, ns: ns, warm: pod != deref(l.ProviderLeaseID)}
		}
		if err != nil {
			failed.CompareAndSwap(nil, &err)
		}
	})
	reqs := len(b.counter.Take())
	if e := failed.Load(); e != nil {
		return *e
	}
	container := ""
	if spec, ok := b.p.Catalog.Get(row.sc.backend); ok && spec.Pods != nil {
		container = spec.Pods.Container
	}
	// The bare exec, in the same pods, at the same parallelism.
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
		if s.warm {
			row.warmRun++
		}
	})
	if e := failed.Load(); e != nil {
		return *e
	}
	for _, s := range samples {
		row.acq = append(row.acq, s.acq)
		row.ttfc = append(row.ttfc, s.ttfc)
	}
	row.reqs += reqs
	row.runs += par
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

// waitPoolsFull waits (with a watch) until every warm pool of the
// namespace has status.readyReplicas == spec.replicas, and returns when it
// saw that (the list's time when they already were).
func waitPoolsFull(ctx context.Context, dyn dynamic.Interface, gvr schema.GroupVersionResource, ns string) (time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	ri := dyn.Resource(gvr).Namespace(ns)
	l, err := ri.List(ctx, metav1.ListOptions{})
	if err != nil {
		return time.Time{}, fmt.Errorf("listing the %s of namespace %s: %w", gvr.Resource, ns, err)
	}
	short := map[string]bool{}
	full := func(u *unstructured.Unstructured) bool {
		want, _, _ := unstructured.NestedInt64(u.Object, "spec", "replicas")
		ready, _, _ := unstructured.NestedInt64(u.Object, "status", "readyReplicas")
		have, _, _ := unstructured.NestedInt64(u.Object, "status", "replicas")
		return ready >= want && have == want
	}
	for i := range l.Items {
		if !full(&l.Items[i]) {
			short[l.Items[i].GetName()] = true
		}
	}
	if len(short) == 0 {
		return time.Now(), nil
	}
	w, err := ri.Watch(ctx, metav1.ListOptions{ResourceVersion: l.GetResourceVersion()})
	if err != nil {
		return time.Time{}, err
	}
	defer w.Stop()
	for len(short) > 0 {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				return time.Time{}, fmt.Errorf("the watch on %s of namespace %s ended", gvr.Resource, ns)
			}
			u, ok := ev.Object.(*unstructured.Unstructured)
			if !ok {
				continue
			}
			if ev.Type == watch.Deleted || full(u) {
				delete(short, u.GetName())
			}
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("waiting for the warm pools of namespace %s to fill: %w", ns, ctx.Err())
		}
	}
	return time.Now(), nil
}
