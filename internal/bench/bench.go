package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/streaming/pkg/httpstream"

	"github.com/paperclip-k8s/paperclip-k8s/engine/resource"
	"github.com/paperclip-k8s/paperclip-k8s/plugin"
)

// Options say what to measure.
type Options struct {
	// Kubeconfig is the cluster's (it goes in the provider config, as a
	// company admin's would).
	Kubeconfig []byte
	Backend    string
	// N is the number of samples per latency row and per exec figure; the
	// sustained row makes 4N acquires.
	N        int
	Parallel int
	// Worker is a paperclip-k8s binary to start as a worker for its start
	// time and idle RSS ("" skips that table).
	Worker string
	// ServerPIDs are the control plane's processes, whose CPU use the
	// sustained row reports (none: only this process's).
	ServerPIDs []int
	// Out receives the tables (Markdown), Progress one line per phase.
	Out, Progress io.Writer
	// Log is the provider's logger (nil: discarded).
	Log *slog.Logger
	// WarmPools prints only the warm-pool table instead: sandbox,
	// sandboxclaim with an empty pool and with a warm pool of PoolSize
	// (default 20), at parallelism 1 and 20 (Backend and Parallel unused).
	WarmPools bool
	PoolSize  int
}

// execTimeoutMs bounds one execute (the first waits for the pod).
const execTimeoutMs = 120000

type held struct {
	company string
	lease   plugin.Lease
	cfg     map[string]any // nil: the bench's config
}

type bench struct {
	o       Options
	p       *plugin.Provider
	counter *Counter
	spec    *resource.Resource
	cfg     map[string]any
	tag     string
	seq     atomic.Int64

	mu   sync.Mutex
	held []held

	rc   *rest.Config // the benchmark's own client (bare exec, pod lookup)
	kube kubernetes.Interface
}

// Run measures and prints. Every lease it acquires is released before it
// returns (after each phase, concurrently, outside the timings).
func Run(ctx context.Context, o Options) (err error) {
	if o.N < 1 || o.Parallel < 1 {
		return errors.New("bench: -n and -parallel must be at least 1")
	}
	if o.Log == nil {
		o.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	registerClientMetrics()
	if o.WarmPools {
		o.Backend = "sandbox" // the bench's own client setup; each row sets its backend
	}
	b := &bench{o: o, tag: fmt.Sprintf("%x", time.Now().UnixNano()&0xffffffff)}
	var out strings.Builder
	if o.WarmPools {
		fmt.Fprintf(&out, "paperclip-k8s bench -warm-pools: n=%d, pool size %d; %d CPUs, %s/%s, %s; load average at start %s\n",
			o.N, o.PoolSize, runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, runtime.Version(), loadAvg())
	} else {
		fmt.Fprintf(&out, "paperclip-k8s bench: backend %s, n=%d, parallel=%d; %d CPUs, %s/%s, %s; load average at start %s\n",
			o.Backend, o.N, o.Parallel, runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, runtime.Version(), loadAvg())
	}

	var w *workerFigures
	if o.Worker != "" {
		b.progress("worker: start and idle RSS")
		if w, err = measureWorker(ctx, o.Worker, 5); err != nil {
			return fmt.Errorf("measuring the worker process: %w", err)
		}
	}

	if b.p, err = plugin.New(o.Log); err != nil {
		return err
	}
	spec, ok := b.p.Catalog.Get(o.Backend)
	if !ok || spec.Use != resource.UseBackend {
		return fmt.Errorf("bench: -backend %q is not one of %v", o.Backend, b.p.Catalog.BackendNames())
	}
	b.spec = spec
	b.counter = NewCounter(b.p.Catalog)
	plugin.WrapTransport = b.counter.Wrap
	defer func() { plugin.WrapTransport = nil }()
	b.cfg = map[string]any{
		"kubeconfig": string(o.Kubeconfig),
		"backend":    o.Backend,
		// Room for every lease of a phase: the default quota (20 pods)
		// would have the controller refuse most pods of a burst.
		"resourceQuota": map[string]any{"pods": "10000", "requests.cpu": "10000", "requests.memory": "10000Gi", "limits.cpu": "10000", "limits.memory": "20000Gi"},
	}
	if b.rc, err = clientcmd.RESTConfigFromKubeConfig(o.Kubeconfig); err != nil {
		return fmt.Errorf("bench: the kubeconfig: %w", err)
	}
	b.rc.QPS, b.rc.Burst = -1, 0
	if b.kube, err = kubernetes.NewForConfig(b.rc); err != nil {
		return err
	}
	defer func() {
		if rerr := b.releaseAll(context.WithoutCancel(ctx)); rerr != nil && err == nil {
			err = rerr
		}
	}()

	if o.WarmPools {
		err := b.runWarmPools(ctx, &out)
		if w != nil {
			w.print(&out)
		}
		fmt.Fprint(o.Out, out.String())
		return err
	}
	warm := b.company("warm")
	phases := []func(context.Context, *strings.Builder, string) error{b.requestsPerAcquire}
	if spec.Backend != nil && spec.Backend.Mode == resource.ModeExec {
		phases = append(phases, b.executeVsBare)
	}
	phases = append(phases, b.firstCommand, b.latency, b.sustained)
	for _, ph := range phases {
		if err := ph(ctx, &out, warm); err != nil {
			fmt.Fprint(o.Out, out.String())
			return err
		}
		if err := b.releaseAll(ctx); err != nil {
			return err
		}
	}
	if spec.Backend == nil || spec.Backend.Mode != resource.ModeExec {
		fmt.Fprintf(&out, "\n(backend %s runs no commands through exec: no execute-vs-bare table)\n", o.Backend)
	}
	if w != nil {
		w.print(&out)
	}
	fmt.Fprint(o.Out, out.String())
	return nil
}

func (b *bench) progress(what string) {
	fmt.Fprintf(b.o.Progress, "bench: %s …\n", what)
}

// company returns a company id unique to this run.
func (b *bench) company(what string) string { return "bench-" + b.tag + "-" + what }

func (b *bench) base(company string) plugin.BaseParams {
	return plugin.BaseParams{DriverKey: "kubernetes", CompanyID: company, EnvironmentID: "bench", Config: b.cfg}
}

func (b *bench) acquire(ctx context.Context, company string) (plugin.Lease, time.Duration, error) {
	id := fmt.Sprintf("bench-%s-%d", b.tag, b.seq.Add(1))
	start := time.Now()
	l, err := b.p.AcquireLease(ctx, plugin.AcquireParams{BaseParams: b.base(company), RunID: id, AdapterType: "codex_local"})
	d := time.Since(start)
	if err != nil {
		return l, d, fmt.Errorf("acquiring a lease for company %s: %w", company, err)
	}
	b.mu.Lock()
	b.held = append(b.held, held{company: company, lease: l})
	b.mu.Unlock()
	return l, d, nil
}

func (b *bench) execute(ctx context.Context, company string, l plugin.Lease, command string) error {
	r, err := b.p.Execute(ctx, plugin.ExecuteParams{BaseParams: b.base(company), Lease: l, Command: command, TimeoutMs: execTimeoutMs})
	if err != nil {
		return fmt.Errorf("execute %q: %w", command, err)
	}
	if r.TimedOut || r.ExitCode == nil || *r.ExitCode != 0 {
		return fmt.Errorf("execute %q: exit %v, timed out %v: %.300s", command, r.ExitCode, r.TimedOut, r.Stderr)
	}
	return nil
}

// releaseAll releases every held lease, Parallel at a time.
func (b *bench) releaseAll(ctx context.Context) error {
	b.mu.Lock()
	hs := b.held
	b.held = nil
	b.mu.Unlock()
	if len(hs) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	var mu sync.Mutex
	var errs []error
	forEach(len(hs), b.o.Parallel, func(i int) {
		h := hs[i]
		base := b.base(h.company)
		if h.cfg != nil {
			base.Config = h.cfg
		}
		_, err := b.p.ReleaseLease(ctx, plugin.LeaseParams{BaseParams: base, ProviderLeaseID: h.lease.ProviderLeaseID, LeaseMetadata: h.lease.Metadata})
		if err != nil {
			mu.Lock()
			errs = append(errs, fmt.Errorf("releasing lease %s: %w", deref(h.lease.ProviderLeaseID), err))
			mu.Unlock()
		}
	})
	b.counter.Take()
	if len(errs) > 3 {
		errs = append(errs[:3], fmt.Errorf("and %d more", len(errs)-3))
	}
	return errors.Join(errs...)
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// forEach runs f(0..count-1) on at most parallel goroutines.
func forEach(count, parallel int, f func(i int)) {
	jobs := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < min(parallel, count); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				f(i)
			}
		}()
	}
	for i := 0; i < count; i++ {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
}

// round is count acquires on parallel goroutines.
type round struct {
	lat    []time.Duration
	wall   time.Duration
	reqs   []Request
	client clientSample // client-side limiter waits and retries
	cpu    string       // cores used per process
}

func (b *bench) round(ctx context.Context, count, parallel int, company func(i int) string) (round, error) {
	b.counter.Take()
	var r round
	r.lat = make([]time.Duration, count)
	var failed atomic.Pointer[error]
	client, cpu := readClient(), readCPU(b.o.ServerPIDs)
	start := time.Now()
	forEach(count, parallel, func(i int) {
		if failed.Load() != nil {
			return
		}
		_, d, err := b.acquire(ctx, company(i))
		r.lat[i] = d
		if err != nil {
			failed.CompareAndSwap(nil, &err)
		}
	})
	r.wall = time.Since(start)
	r.reqs = b.counter.Take()
	r.client = readClient().since(client)
	r.cpu = cpuLine(cpu, readCPU(b.o.ServerPIDs), r.wall)
	if e := failed.Load(); e != nil {
		return r, *e
	}
	return r, nil
}

// requestsPerAcquire: the first acquire of a new worker (new company), a
// new company's first acquire, and a warm acquire.
func (b *bench) requestsPerAcquire(ctx context.Context, out *strings.Builder, warm string) error {
	b.progress("API requests per acquire")
	type row struct {
		name string
		s    Summary
		d    time.Duration
	}
	var rows []row
	one := func(name, company string) error {
		b.counter.Take()
		_, d, err := b.acquire(ctx, company)
		if err != nil {
			return err
		}
		rows = append(rows, row{name, Summarize(b.counter.Take()), d})
		return nil
	}
	if err := one("first (new worker, new company)", warm); err != nil {
		return err
	}
	if err := one("cold (new company)", b.company("cold-0")); err != nil {
		return err
	}
	for i := 0; i < 2; i++ { // the third is reported
		if _, _, err := b.acquire(ctx, warm); err != nil {
			return err
		}
	}
	if err := one("warm", warm); err != nil {
		return err
	}
	fmt.Fprintf(out, "\n### API requests per acquire\n\n")
	fmt.Fprintf(out, "| acquire | requests | sequential | tenant | latency | by verb |\n|---|---:|---:|---:|---:|---|\n")
	for _, r := range rows {
		fmt.Fprintf(out, "| %s | %d | %d | %d | %s | %s |\n", r.name, r.s.Total, r.s.Sequential, r.s.Tenant, ms(r.d), r.s.Verbs())
	}
	fmt.Fprintf(out, "\nsequential: the longest chain of requests each sent after the previous one was answered; tenant: requests on the objects of the tenant files.\n")
	return nil
}

// latency: p50/p95 at parallelism 1 and Parallel, warm and cold tenants.
func (b *bench) latency(ctx context.Context, out *strings.Builder, warm string) error {
	n, par := b.o.N, b.o.Parallel
	type row struct {
		tenant string
		par    int
		r      round
	}
	var rows []row
	run := func(tenant string, count, par int, company func(int) string) error {
		b.progress(fmt.Sprintf("acquire latency: %s, %d at parallelism %d", tenant, count, par))
		r, err := b.round(ctx, count, par, company)
		if err != nil {
			return err
		}
		rows = append(rows, row{tenant, par, r})
		return b.releaseAll(ctx)
	}
	if err := run("warm", n, 1, func(int) string { return warm }); err != nil {
		return err
	}
	if err := run("warm", max(n, par), par, func(int) string { return warm }); err != nil {
		return err
	}
	if err := run("cold (a new company each)", n, 1, func(i int) string { return b.company(fmt.Sprintf("cold1-%d", i)) }); err != nil {
		return err
	}
	one := b.company("coldp")
	if err := run("cold (one new company)", par, par, func(int) string { return one }); err != nil {
		return err
	}
	fmt.Fprintf(out, "\n### Acquire latency\n\n")
	fmt.Fprintf(out, "| tenant | parallel | acquires | p50 | p95 | max | round | acquires/s | requests | tenant requests | client-throttled | 429s |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range rows {
		s := Summarize(r.r.reqs)
		fmt.Fprintf(out, "| %s | %d | %d | %s | %s | %s | %s | %.1f | %d | %d | %s | %d |\n", r.tenant, r.par, len(r.r.lat),
			ms(Percentile(r.r.lat, 50)), ms(Percentile(r.r.lat, 95)), ms(Percentile(r.r.lat, 100)), ms(r.r.wall),
			float64(len(r.r.lat))/r.r.wall.Seconds(), s.Total, s.Tenant, r.r.client.String(), s.TooMany)
	}
	fmt.Fprintf(out, "\nclient-throttled: requests that waited ≥ 1 ms in client-go's rate limiter (and their total wait).\n")
	return nil
}

// sustained: 4N warm acquires at parallelism Parallel.
func (b *bench) sustained(ctx context.Context, out *strings.Builder, warm string) error {
	count := 4 * b.o.N
	b.progress(fmt.Sprintf("sustained: %d warm acquires at parallelism %d", count, b.o.Parallel))
	r, err := b.round(ctx, count, b.o.Parallel, func(int) string { return warm })
	if err != nil {
		return err
	}
	s := Summarize(r.reqs)
	fmt.Fprintf(out, "\n### Sustained acquires (warm tenant)\n\n")
	fmt.Fprintf(out, "| acquires | parallel | wall | acquires/s | API requests/s | p50 | p95 | client-throttled | 429s |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	fmt.Fprintf(out, "| %d | %d | %s | %.1f | %.0f | %s | %s | %s | %d |\n", count, b.o.Parallel, ms(r.wall),
		float64(count)/r.wall.Seconds(), float64(s.Total)/r.wall.Seconds(), ms(Percentile(r.lat, 50)), ms(Percentile(r.lat, 95)), r.client.String(), s.TooMany)
	fmt.Fprintf(out, "\nCPU during the sustained round (cores, of %d): %s\n", runtime.NumCPU(), r.cpu)
	return nil
}

// firstCommand: acquire, then the first execute's result, in sequence.
func (b *bench) firstCommand(ctx context.Context, out *strings.Builder, warm string) error {
	k := min(b.o.N, 10)
	b.progress(fmt.Sprintf("first command: %d × acquire → execute", k))
	var acq, ex, total []time.Duration
	for i := 0; i < k; i++ {
		start := time.Now()
		l, d, err := b.acquire(ctx, warm)
		if err != nil {
			return err
		}
		t := time.Now()
		if err := b.execute(ctx, warm, l, "true"); err != nil {
			return err
		}
		acq, ex, total = append(acq, d), append(ex, time.Since(t)), append(total, time.Since(start))
	}
	fmt.Fprintf(out, "\n### First command (acquire → first execute result, %s backend)\n\n", b.o.Backend)
	fmt.Fprintf(out, "| samples | acquire p50 | first execute p50 | total p50 | total p95 |\n|---:|---:|---:|---:|---:|\n")
	fmt.Fprintf(out, "| %d | %s | %s | %s | %s |\n", k, ms(Percentile(acq, 50)), ms(Percentile(ex, 50)), ms(Percentile(total, 50)), ms(Percentile(total, 95)))
	return nil
}

// executeVsBare: the provider's execute of `true` against client-go
// remotecommand execs in the same pod, interleaved.
func (b *bench) executeVsBare(ctx context.Context, out *strings.Builder, warm string) error {
	n := b.o.N
	b.progress(fmt.Sprintf("execute `true` vs bare exec, %d each", n))
	l, _, err := b.acquire(ctx, warm)
	if err != nil {
		return err
	}
	if err := b.execute(ctx, warm, l, "true"); err != nil { // waits for the pod
		return err
	}
	ns, _ := l.Metadata["namespace"].(string)
	pod, err := b.findPod(ctx, ns, deref(l.ProviderLeaseID))
	if err != nil {
		return err
	}
	container := ""
	if b.spec.Pods != nil {
		container = b.spec.Pods.Container
	}
	bare := [][]string{{"true"}, {"/bin/sh", "-c", "true"}, {"/bin/sh", "-lc", "true"}}
	var prov []time.Duration
	bareD := make([][]time.Duration, len(bare))
	b.counter.Take()
	var provReqs int
	for i := 0; i < n; i++ {
		t := time.Now()
		if err := b.execute(ctx, warm, l, "true"); err != nil {
			return err
		}
		prov = append(prov, time.Since(t))
		provReqs += len(b.counter.Take())
		for j, argv := range bare {
			d, err := b.bareExec(ctx, ns, pod, container, argv)
			if err != nil {
				return err
			}
			bareD[j] = append(bareD[j], d)
		}
	}
	ref := Percentile(bareD[0], 50)
	fmt.Fprintf(out, "\n### Execute `true` (median of %d, same pod, interleaved)\n\n", n)
	fmt.Fprintf(out, "| exec | p50 | p95 | × bare `true` | API requests each |\n|---|---:|---:|---:|---:|\n")
	fmt.Fprintf(out, "| provider Execute `true` | %s | %s | %.2f | %.1f |\n", ms(Percentile(prov, 50)), ms(Percentile(prov, 95)),
		float64(Percentile(prov, 50))/float64(ref), float64(provReqs)/float64(n))
	for j, argv := range bare {
		fmt.Fprintf(out, "| bare remotecommand `%s` | %s | %s | %.2f | 1 |\n", strings.Join(argv, " "), ms(Percentile(bareD[j], 50)), ms(Percentile(bareD[j], 95)),
			float64(Percentile(bareD[j], 50))/float64(ref))
	}
	return nil
}

// findPod returns the running pod the workload owns (or that bears its
// name).
func (b *bench) findPod(ctx context.Context, ns, workload string) (string, error) {
	pods, err := b.kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return "", fmt.Errorf("listing the pods of namespace %s: %w", ns, err)
	}
	for _, p := range pods.Items {
		if p.Status.Phase != corev1.PodRunning || p.DeletionTimestamp != nil {
			continue
		}
		if p.Name == workload {
			return p.Name, nil
		}
		for _, o := range p.OwnerReferences {
			if o.Name == workload {
				return p.Name, nil
			}
		}
	}
	return "", fmt.Errorf("no running pod of workload %s in namespace %s", workload, ns)
}

// bareExec runs argv in the pod with client-go's executor (WebSocket, SPDY
// fallback: what the provider uses), executor construction included.
func (b *bench) bareExec(ctx context.Context, ns, pod, container string, argv []string) (time.Duration, error) {
	start := time.Now()
	u := b.kube.CoreV1().RESTClient().Post().Resource("pods").Namespace(ns).Name(pod).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{Container: container, Command: argv, Stdout: true, Stderr: true}, scheme.ParameterCodec).URL()
	ws, err := remotecommand.NewWebSocketExecutor(b.rc, "GET", u.String())
	if err != nil {
		return 0, err
	}
	spdy, err := remotecommand.NewSPDYExecutor(b.rc, "POST", u)
	if err != nil {
		return 0, err
	}
	ex, err := remotecommand.NewFallbackExecutor(ws, spdy, func(err error) bool {
		return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
	})
	if err != nil {
		return 0, err
	}
	var stdout, stderr bytes.Buffer
	if err := ex.StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: &stdout, Stderr: &stderr}); err != nil {
		return 0, fmt.Errorf("bare exec %q in pod %s/%s: %w: %.300s", argv, ns, pod, err, stderr.String())
	}
	return time.Since(start), nil
}

// loadAvg is the 1-minute load average ("?" when unknown).
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	if f := strings.Fields(string(b)); len(f) > 0 {
		return f[0]
	}
	return "?"
}
