package plugin

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"maps"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/paperclip-k8s/paperclip-k8s/engine"
	"github.com/paperclip-k8s/paperclip-k8s/engine/resource"
	"github.com/paperclip-k8s/paperclip-k8s/plugin/policy"
	"github.com/paperclip-k8s/paperclip-k8s/plugin/rpc"
	"github.com/paperclip-k8s/paperclip-k8s/podexec"
)

// ExecuteParams are environmentExecute's params. Env and Stdin are secret.
type ExecuteParams struct {
	BaseParams
	Lease         Lease             `json:"lease"`
	Command       string            `json:"command"`
	Args          []string          `json:"args,omitempty"`
	Cwd           string            `json:"cwd,omitempty"`
	Env           map[string]string `json:"env,omitempty"`
	Stdin         *string           `json:"stdin,omitempty"`
	TimeoutMs     int64             `json:"timeoutMs,omitempty"`
	BypassSession bool              `json:"bypassSession,omitempty"`
}

// ExecuteResult is environmentExecute's result.
type ExecuteResult struct {
	ExitCode *int           `json:"exitCode"`
	Signal   *string        `json:"signal"`
	TimedOut bool           `json:"timedOut"`
	Stdout   string         `json:"stdout"`
	Stderr   string         `json:"stderr"`
	Metadata map[string]any `json:"metadata,omitempty"`
}

// leaseState is what the worker remembers of a lease between calls: the
// pod it found ready, pinned by UID, and a watch on that pod that records
// when it is deleted, replaced or terminal — so a command never runs in a
// pod that replaced the lease's, without an API call per command.
type leaseState struct {
	// owner is the company and environment the workload was checked
	// against (ownedBy); another caller gets no shortcut through this state.
	owner       [2]string
	workloadUID string
	podName     string
	podUID      string
	// env is the run's environment for a backend whose pod was made
	// before the run (backend.runEnv): it goes with every command.
	env map[string]string
	// login is what a login shell exports in the pod, applied to the
	// commands sent alone (loginenv.go).
	login loginEnv

	stop context.CancelFunc
	// afterFirst, when set, runs once after the lease's first command (or
	// when the worker forgets the lease first): a standby taken makes the
	// next one then, not while the run's first command runs.
	afterFirst     func()
	afterFirstOnce sync.Once
	mu             sync.Mutex
	// lost is why the pod can no longer be used; following says whether
	// the watch is still running (when it is not and lost is nil, the pod
	// is checked with a read instead).
	lost      error
	following bool
}

// follow watches the lease's pod until it is gone, replaced or terminal,
// or until ctx ends.
func (st *leaseState) follow(ctx context.Context, e *engine.Engine, podSpec *resource.Resource, pod *unstructured.Unstructured) {
	st.following = true
	go func() {
		_, _, err := e.Wait(ctx, podSpec, pod) // no state is wanted: follow to the end
		st.mu.Lock()
		defer st.mu.Unlock()
		st.following = false
		var te *engine.TerminalError
		if engine.IsGone(err) || errors.As(err, &te) {
			st.lost = err
		}
	}()
}

// firstDone runs afterFirst, once.
func (st *leaseState) firstDone() {
	if st.afterFirst != nil {
		st.afterFirstOnce.Do(st.afterFirst) // it only starts goroutines
	}
}

func (st *leaseState) status() (lost error, following bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.lost, st.following
}

// Execute runs a command in the lease's pod (exec backends), or awaits the
// workload and returns its log (logs backends).
func (p *Provider) Execute(ctx context.Context, in ExecuteParams) (ExecuteResult, error) {
	if in.Lease.ProviderLeaseID == nil || *in.Lease.ProviderLeaseID == "" {
		one := 1
		return ExecuteResult{ExitCode: &one, Stderr: "No provider lease ID available for execution."}, nil
	}
	id := *in.Lease.ProviderLeaseID
	if err := requireIDs(in.BaseParams); err != nil {
		return ExecuteResult{}, err
	}
	cfg, err := p.parseConfig(in.Config)
	if err != nil {
		return ExecuteResult{}, err
	}
	m := metadataFrom(in.Lease.Metadata)
	ref, err := p.leaseTarget(cfg, in.CompanyID, id, m)
	if err != nil {
		return ExecuteResult{}, err
	}
	cl, err := p.cluster(cfg)
	if err != nil {
		return ExecuteResult{}, err
	}
	timeout := time.Duration(in.TimeoutMs) * time.Millisecond
	if timeout <= 0 {
		timeout = time.Duration(cfg.PodActivityDeadlineSec) * time.Second
	}
	start := time.Now()
	// waitCtx bounds the waits for the workload and its pod. The command
	// itself is bounded by the exec request's own Timeout instead, so that
	// its expiry is reported as timedOut (with the output so far) rather
	// than as a cancelled call.
	waitCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	meta := map[string]any{"provider": "kubernetes", "backend": ref.Resource.Name, "namespace": ref.Namespace, "workloadName": ref.Name}
	if ref.Resource.Backend.Mode == resource.ModeLogs {
		return p.awaitLogs(waitCtx, cl, ref, in.BaseParams, meta)
	}

	st, err := p.readyPod(waitCtx, cl, ref, in.BaseParams, m)
	if err != nil {
		var we *engine.WaitError
		if errors.As(err, &we) && errors.Is(err, context.DeadlineExceeded) {
			return ExecuteResult{TimedOut: true, Stderr: fmt.Sprintf("%s did not become ready within %s (last status: %s)", ref, timeout, we.Last), Metadata: meta}, nil
		}
		return ExecuteResult{}, err
	}
	meta["podName"] = st.podName
	pod := podexec.Request{Namespace: ref.Namespace, Pod: st.podName, Container: ref.Resource.Pods.Container}
	// The lease's first command sent alone captures the login environment
	// in its own exec (fused); the later ones get the capture. A capture
	// read before the run (a standby) serves only when no other command
	// ran first.
	if commandOnly(in.Command, in.Args) {
		st.login.use()
	} else {
		st.login.dropAhead()
	}
	fu := st.login.fuse(p.Log, pod, in.Command, in.Args)
	var login *loginDiff
	if fu == nil {
		login = st.login.forCommand(waitCtx, p.Log, cl.exec, pod, in.Command, in.Args)
	}
	remaining := timeout - time.Since(start)
	if remaining <= 0 {
		return ExecuteResult{TimedOut: true, Stderr: fmt.Sprintf("[paperclip-k8s] timed out after %v waiting for %s to become ready; the command was not run.\n", timeout, ref), Metadata: meta}, nil
	}
	env := in.Env
	if len(st.env) > 0 {
		// The run's own environment, under the command's (which wins).
		env = maps.Clone(st.env)
		maps.Copy(env, in.Env)
	}
	live := &liveOutput{notify: func(stream string, b []byte) {
		_ = rpc.Notify(ctx, rpc.MethodExecuteLog, map[string]any{"stream": stream, "chunk": string(b)})
	}}
	command, args, env := login.command(in.Command, in.Args, env)
	req := podexec.Request{
		Namespace: ref.Namespace, Pod: st.podName, Container: ref.Resource.Pods.Container,
		Command: command, Args: args, Env: env, Cwd: in.Cwd,
		Timeout:   remaining,
		MaxStdout: cfg.ExecMaxOutputBytes, MaxStderr: cfg.ExecMaxOutputBytes,
		OnOutput: live.send,
	}
	if fu != nil {
		req.Command, req.Args = fu.argv(in.Command, env)
		req.OnOutput = fu.output(live.send)
		if req.MaxStderr > 0 {
			req.MaxStderr += fusedFrameAllowance
		}
	}
	if in.Stdin != nil {
		req.Stdin = strings.NewReader(*in.Stdin)
	}
	res, err := cl.exec.Run(ctx, req)
	st.firstDone()
	if fu != nil {
		var rerun bool
		if res, rerun = fu.end(ctx, res, err); rerun {
			// The capture failed before the command ran: run it in a
			// login shell, as every command of this lease now will.
			req.Command, req.Args, req.OnOutput, req.MaxStderr = in.Command, in.Args, live.send, cfg.ExecMaxOutputBytes
			if req.Timeout = timeout - time.Since(start); req.Timeout <= 0 {
				req.Timeout = time.Millisecond // report it timed out
			}
			if in.Stdin != nil {
				req.Stdin = strings.NewReader(*in.Stdin)
			}
			res, err = cl.exec.Run(ctx, req)
		}
	}
	live.flush()
	if err != nil {
		var limit *podexec.OutputLimitError
		if errors.As(err, &limit) {
			one := 1
			return ExecuteResult{ExitCode: &one, Stderr: err.Error() + " (raise execMaxOutputBytes in the provider config)", Metadata: meta}, nil
		}
		// The pod may be gone: say so rather than a bare transport error.
		checkCtx, cancelCheck := context.WithTimeout(ctx, 10*time.Second)
		defer cancelCheck()
		if _, gerr := p.checkPod(checkCtx, cl, ref, st, true); gerr != nil {
			p.forget(ref)
			return ExecuteResult{}, gerr
		}
		return ExecuteResult{}, fmt.Errorf("running the command in pod %s/%s: %w", ref.Namespace, st.podName, err)
	}
	out := ExecuteResult{ExitCode: res.ExitCode, TimedOut: res.TimedOut, Stdout: string(res.Stdout), Stderr: string(res.Stderr), Metadata: meta}
	if res.Signal != "" {
		out.Signal = &res.Signal
	}
	out.Stderr = policy.AppendEgressDenyHint(out.Stderr, m.ScopedNetworkEgress)
	return out, nil
}

// readyPod returns the lease's pod, waiting (by watch) for the workload and
// its pod to be ready on the first call and remembering the pod by UID.
// Later calls check that the same pod (same UID) is still there, so a
// command never runs in a pod that replaced the lease's.
func (p *Provider) readyPod(ctx context.Context, cl *cluster, ref engine.Ref, base BaseParams, m LeaseMetadata) (*leaseState, error) {
	owner := [2]string{base.CompanyID, base.EnvironmentID}
	if v, ok := p.leases.Load(leaseKey(ref)); ok && v.(*leaseState).owner == owner {
		st := v.(*leaseState)
		return p.checkPod(ctx, cl, ref, st, false)
	}
	t0 := time.Now()
	ref, w, err := p.workload(ctx, cl, ref, base)
	if err != nil {
		return nil, err
	}
	t1 := time.Now()
	pinned := pinnedPodUID(m, w)
	w, pod, err := cl.engine.AwaitPod(ctx, ref.Resource, w)
	if err != nil {
		var te *engine.TerminalError
		if errors.As(err, &te) {
			return nil, fmt.Errorf("%s cannot be used: %w", ref, err)
		}
		return nil, err
	}
	if pinned != "" && string(pod.GetUID()) != pinned {
		return nil, fmt.Errorf("the pod of %s was replaced (pod UID %s is gone, %s is a new pod); its workspace is lost, acquire a new lease", ref, pinned, pod.GetName())
	}
	t2 := time.Now()
	st := &leaseState{owner: owner, workloadUID: string(w.GetUID()), podName: pod.GetName(), podUID: string(pod.GetUID())}
	// The pin and the run's environment do not depend on each other: one
	// round trip, not two.
	var pinErr error
	var wg sync.WaitGroup
	if pinned == "" {
		// Pin the pod on the workload, where the first resume of a lease
		// kept for reuse reads it (the host's metadata of that lease is
		// the one acquire returned, without a pod).
		wg.Add(1)
		go func() {
			defer wg.Done()
			pinErr = cl.engine.Annotate(ctx, ref, policy.AnnotationPodUID, string(pod.GetUID()))
		}()
	}
	env, err := p.runEnv(ctx, cl, ref, w, m)
	wg.Wait()
	if pinErr != nil {
		return nil, pinErr
	}
	if err != nil {
		return nil, err
	}
	st.env = env
	p.Log.Debug("first use of a lease: its pod is ready", "workload", ref.String(), "pod", st.podName,
		"readWorkload", t1.Sub(t0), "awaitPod", t2.Sub(t1), "pinAndRunEnv", time.Since(t2))
	podSpec, _ := p.Catalog.Pod()
	// The watch lives until the pod ends, the lease is released, or a day
	// past the lease's expiry at the latest.
	life := 24 * time.Hour
	if exp, err := time.Parse(time.RFC3339, m.ExpiresAt); err == nil {
		life += time.Until(exp)
	}
	fctx, stop := context.WithTimeout(context.Background(), life)
	st.stop = stop
	st.follow(fctx, cl.engine, podSpec, pod)
	if old, loaded := p.leases.Swap(leaseKey(ref), st); loaded {
		old.(*leaseState).stop()
	}
	return st, nil
}

// runEnv reads the run's environment for a backend whose pod was made
// before the run (backend.runEnv): the map at the file's path in the run
// object of that file (a Secret's data), which must be controlled by the
// workload's UID. The object's name comes from the lease's runObjects; the
// owner check is what makes it the lease's. nil when the backend's pod has
// the environment itself.
func (p *Provider) runEnv(ctx context.Context, cl *cluster, ref engine.Ref, w *unstructured.Unstructured, m LeaseMetadata) (map[string]string, error) {
	re := ref.Resource.Backend.RunEnv
	if re == nil {
		return nil, nil
	}
	s, ok := p.Catalog.Get(re.Resource)
	if !ok {
		return nil, fmt.Errorf("%s: backend.runEnv names %q, which is not in the catalog", ref.Resource.File, re.Resource)
	}
	name := ""
	for _, ro := range m.RunObjects {
		if file, obj, ok := strings.Cut(ro, "/"); ok && file == s.Name {
			name = obj
		}
	}
	if name == "" {
		return nil, fmt.Errorf("lease %s: its metadata lists no %s run object (runObjects), which holds the run's environment for %s; the lease cannot run commands, acquire a new one", ref.Name, s.Name, ref)
	}
	o, err := cl.engine.Get(ctx, engine.Ref{Resource: s, Namespace: ref.Namespace, Name: name})
	if err != nil {
		return nil, fmt.Errorf("reading the run's environment of %s: %w", ref, err)
	}
	if !engine.ControlledBy(o, w) {
		return nil, fmt.Errorf("%s %s/%s is not controlled by %s; refusing to use it as the run's environment (it was replaced since the lease was acquired): release the lease and acquire a new one", s.API.Kind, ref.Namespace, name, ref)
	}
	return decodeRunEnv(ref, s, o)
}

// decodeRunEnv is the run's environment in o, the run object of file s
// that backend.runEnv names.
func decodeRunEnv(ref engine.Ref, s *resource.Resource, o *unstructured.Unstructured) (map[string]string, error) {
	re, name := ref.Resource.Backend.RunEnv, o.GetName()
	keys, err := resource.SplitPath(re.Path)
	if err != nil {
		return nil, &resource.FileError{File: ref.Resource.File, Pointer: "/backend/runEnv/path", Problem: err.Error()}
	}
	raw, _, _ := unstructured.NestedMap(o.Object, keys...)
	env := make(map[string]string, len(raw))
	for k, v := range raw {
		val, _ := v.(string)
		if re.Base64 {
			b, err := base64.StdEncoding.DecodeString(val)
			if err != nil {
				return nil, fmt.Errorf("%s %s/%s: %s.%s is not base64 (it was changed since the lease was acquired): release the lease and acquire a new one", s.API.Kind, ref.Namespace, name, re.Path, k)
			}
			val = string(b)
		}
		env[k] = val
	}
	return env, nil
}

// checkPod verifies that the remembered pod still exists with its UID and
// is not terminating: from the pod's watch when it runs, else with a read.
// With read set, it reads the pod whatever the watch says.
func (p *Provider) checkPod(ctx context.Context, cl *cluster, ref engine.Ref, st *leaseState, read bool) (*leaseState, error) {
	lost, following := st.status()
	if lost != nil {
		return nil, fmt.Errorf("the pod of %s can no longer be used (%v); its workspace is lost, acquire a new lease", ref, lost)
	}
	if following && !read {
		return st, nil
	}
	podSpec, _ := p.Catalog.Pod()
	pod, err := cl.engine.Get(ctx, engine.Ref{Resource: podSpec, Namespace: ref.Namespace, Name: st.podName, UID: typesUID(st.podUID)})
	if err != nil {
		if engine.IsGone(err) {
			return nil, fmt.Errorf("the pod of %s is gone or was replaced (%v); its workspace is lost, acquire a new lease", ref, err)
		}
		return nil, err
	}
	if s := cl.engine.Status(podSpec, pod); s.State.Terminal() {
		return nil, fmt.Errorf("the pod %s/%s of %s is %s; acquire a new lease", ref.Namespace, st.podName, ref, s)
	}
	return st, nil
}

// awaitLogs waits for a run-to-completion workload and returns its pod's log.
func (p *Provider) awaitLogs(ctx context.Context, cl *cluster, ref engine.Ref, base BaseParams, meta map[string]any) (ExecuteResult, error) {
	ref, w, err := p.workload(ctx, cl, ref, base)
	if err != nil {
		return ExecuteResult{}, err
	}
	w, st, err := cl.engine.Wait(ctx, ref.Resource, w, resource.Succeeded, resource.Failed)
	meta["phase"] = string(st.State)
	if err != nil {
		var we *engine.WaitError
		if errors.As(err, &we) && errors.Is(err, context.DeadlineExceeded) {
			return ExecuteResult{TimedOut: true, Stderr: fmt.Sprintf("%s did not finish in time (last status: %s)", ref, we.Last), Metadata: meta}, nil
		}
		var te *engine.TerminalError
		if !errors.As(err, &te) {
			return ExecuteResult{}, err
		}
	}
	code := 0
	if st.State != resource.Succeeded {
		code = 1
	}
	out := ExecuteResult{ExitCode: &code, Metadata: meta}
	if st.State != resource.Succeeded {
		out.Stderr = fmt.Sprintf("%s finished as %s\n", ref, st)
	}
	pod, err := cl.engine.FindPod(ctx, ref.Resource, w)
	if err != nil {
		out.Stderr += "no pod to read the log from: " + err.Error() + "\n"
		return out, nil
	}
	meta["podName"] = pod.GetName()
	logs, err := cl.engine.Logs(ctx, pod, ref.Resource.Pods.Container)
	if err != nil {
		out.Stderr += err.Error() + "\n"
		return out, nil
	}
	out.Stdout = string(logs)
	return out, nil
}

// pinnedPodUID is the UID of the pod a lease was pinned to: the lease's
// metadata (from a resume), else the workload's annotation (set by the
// first command). "" when the lease has not used a pod yet.
func pinnedPodUID(m LeaseMetadata, w *unstructured.Unstructured) string {
	if m.PodUID != "" {
		return m.PodUID
	}
	return w.GetAnnotations()[policy.AnnotationPodUID]
}

// leaseKey keys what the worker remembers of a lease.
func leaseKey(ref engine.Ref) string { return ref.Namespace + "/" + ref.Name }

// forget drops what the worker remembers of a lease and stops its watch.
func (p *Provider) forget(ref engine.Ref) {
	if v, ok := p.leases.LoadAndDelete(leaseKey(ref)); ok {
		v.(*leaseState).firstDone()
		v.(*leaseState).stop()
	}
}

// liveOutput passes a command's output to notify (execute.log) while it
// runs: the host appends it to the run's log and, on its ACP engine, reads
// the agent's messages from it (sandboxCapabilities.incrementalSessionOutput).
// At the end the host appends the rest of the final stdout and stderr past
// the streamed text, or all of it again when the streamed text is not a
// prefix of it, so a chunk never ends inside a UTF-8 sequence (JSON would
// turn its bytes into U+FFFD): that tail is held back and sent with the
// stream's next chunk, or by flush. Calls are serialised by podexec.
type liveOutput struct {
	notify func(stream string, b []byte)
	held   [2][]byte // stdout, stderr
}

func (l *liveOutput) send(stream string, chunk []byte) {
	i := 0
	if stream == "stderr" {
		i = 1
	}
	b := chunk // aliases the result's buffer: sliced, never written
	if len(l.held[i]) > 0 {
		b = append(l.held[i], chunk...)
	}
	n := len(b) - heldUTF8Tail(b)
	for n > 0 {
		// At most podexec.MaxChunk bytes, hence at most as many UTF-16
		// units, the host's limit per chunk; cut at a rune start.
		cut := n
		if cut > podexec.MaxChunk {
			cut = podexec.MaxChunk
			for k := 0; k < utf8.UTFMax-1 && !utf8.RuneStart(b[cut]); k++ {
				cut--
			}
		}
		l.notify(stream, b[:cut])
		b, n = b[cut:], n-cut
	}
	l.held[i] = append([]byte(nil), b...)
}

// flush sends what send held back (a stream that ended inside a sequence).
func (l *liveOutput) flush() {
	for i, stream := range []string{"stdout", "stderr"} {
		if len(l.held[i]) > 0 {
			l.notify(stream, l.held[i])
			l.held[i] = nil
		}
	}
}

// heldUTF8Tail is how many bytes at the end of b start a UTF-8 sequence that
// b does not complete (0 when b ends at a rune boundary or in invalid bytes,
// which decode the same in any chunking).
func heldUTF8Tail(b []byte) int {
	for i := 1; i < utf8.UTFMax && i <= len(b); i++ {
		if c := b[len(b)-i]; utf8.RuneStart(c) {
			if !utf8.FullRune(b[len(b)-i:]) {
				return i
			}
			return 0
		}
	}
	return 0
}
