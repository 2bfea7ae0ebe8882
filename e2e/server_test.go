package e2e_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/paperclip-k8s/paperclip-k8s/e2e/paperclip"
	"github.com/paperclip-k8s/paperclip-k8s/internal/devenv"
	"github.com/paperclip-k8s/paperclip-k8s/plugin"
	"github.com/paperclip-k8s/paperclip-k8s/plugin/policy"
)

// stackOptions tunes startStack; the zero value is what most tests want.
type stackOptions struct {
	// WorkerEnv is the operator's worker settings (PAPERCLIP_K8S_*=…), baked
	// into the package's launcher before the plugin is installed (see
	// bakeWorkerEnv: the host scrubs the worker's environment).
	WorkerEnv map[string]string
	// Timeout bounds the test's context (stack.ctx); 0 means 8 minutes.
	Timeout time.Duration
}

// stack is what startStack set up: the local control plane with an exec
// node, a real paperclip-server, and our plugin package installed in it.
type stack struct {
	// ctx bounds the test; it is cancelled after the server and the
	// control plane have stopped (the test's cleanups).
	ctx context.Context

	pcDir  string // the paperclipai install (paperclip.Install)
	pkgDir string // the plugin package hack/build-npm.sh built

	// The "sandbox image" (sandboxImage): pod commands run as local
	// processes, so these are local paths.
	workspace  string // workspacePath of the environments (config)
	sandboxBin string // first in the pods' PATH, then Node 24 of pcDir
	claude     string // the fake claude CLI of agent runs

	env        *devenv.Env
	rec        *recorder     // every object with paperclip.io/managed-by the API server sent
	nodeLog    *lockedBuffer // the exec node's log (names and exit codes: see checker.podCalls)
	clusterLog *lockedBuffer

	srv    *paperclip.Server
	plugin paperclip.Plugin // installed and ready; plugin.ID names it in srv.PluginLines
}

// startStack starts, for one test, the real paperclip-server with our
// plugin package installed (status ready) on the local control plane, and
// registers cleanups that stop both. When the test has failed they first log
// the tails of the server log (successful GETs dropped), the plugin worker's
// log, the exec node's log and the control plane's log, secret-looking lines
// withheld, and keep the server root (PAPERCLIP_E2E_KEEP=1 keeps it always).
// It installs what it lacks (see prerequisites) and fails the test on any
// error.
//
// Usage:
//
//	func TestPaperclipSomething(t *testing.T) {
//		if runtime.GOOS != "linux" {
//			t.Skip("the paperclip harness reads /proc and uses Linux process groups")
//		}
//		s := startStack(t, stackOptions{})
//		company, c := s.company(t, "e2e something")
//		e, err := s.srv.CreateEnvironment(s.ctx, company.ID, "k8s-something", s.config("sandbox"))
//		…
//		run := s.runAgent(t, company.ID, e.ID, "e2e-something", 3*time.Minute)
//		ls := c.released(s.ctx, t, e.ID, before, "sandbox", "released")
//	}
func startStack(t *testing.T, opts stackOptions) *stack {
	t.Helper()
	s := &stack{nodeLog: &lockedBuffer{}, clusterLog: &lockedBuffer{}}
	var binDir string
	s.pcDir, binDir, s.pkgDir = prerequisites(t)
	if len(opts.WorkerEnv) > 0 {
		if err := bakeWorkerEnv(s.pkgDir, opts.WorkerEnv); err != nil {
			t.Fatal(err)
		}
	}
	if opts.Timeout == 0 {
		opts.Timeout = 8 * time.Minute
	}

	// ctx outlives the test function: the cleanups below stop the server,
	// then the control plane, then cancel it (cleanups run last-in first-out).
	ctx, cancel := context.WithTimeout(context.Background(), opts.Timeout)
	t.Cleanup(cancel)
	s.ctx = ctx

	s.workspace, s.sandboxBin, s.claude = sandboxImage(t)

	// The control plane. Pod commands get the fake CLIs and Node 24 first in
	// PATH (the host's PATH is never exported into a pod).
	var err error
	podPath := strings.Join([]string{s.sandboxBin, paperclip.NodeBin(s.pcDir), os.Getenv("PATH")}, string(os.PathListSeparator))
	timed(t, "devenv.Start", func() {
		s.env, err = devenv.Start(ctx, devenv.Options{BinDir: binDir, Log: s.clusterLog, NodeLog: s.nodeLog, NodeEnv: []string{"PATH=" + podPath}})
	})
	if err != nil {
		t.Fatalf("devenv.Start: %v", err)
	}
	t.Cleanup(s.env.Stop) // after the server's cleanup below: the worker may still call the cluster
	if s.rec, err = startRecorder(ctx, s.env.Dynamic()); err != nil {
		t.Fatalf("the object recorder: %v", err)
	}

	// The server.
	timed(t, "paperclip.Start", func() { s.srv, err = paperclip.Start(ctx, paperclip.Options{Dir: s.pcDir}) })
	if err != nil {
		t.Fatalf("paperclip.Start: %v", err)
	}
	t.Cleanup(func() { s.stopServer(t) })
	t.Logf("paperclip-server %s on %s (started in %v), API server %s", paperclip.PaperclipVersion, s.srv.BaseURL,
		s.srv.StartDuration.Round(time.Millisecond), s.env.Host())

	timed(t, "InstallLocalPlugin", func() { s.plugin, err = s.srv.InstallLocalPlugin(ctx, s.pkgDir) })
	if err != nil {
		t.Fatalf("installing the plugin package %s: %v", s.pkgDir, err)
	}
	if s.plugin.PluginKey != plugin.ManifestID || s.plugin.Status != "ready" {
		t.Fatalf("installed plugin %s is %q with status %q, want %q ready", s.plugin.ID, s.plugin.PluginKey, s.plugin.Status, plugin.ManifestID)
	}
	return s
}

// stopServer is startStack's cleanup: it dumps the logs when the test has
// failed, stops the server and removes its root unless it is kept.
func (s *stack) stopServer(t *testing.T) {
	if t.Failed() {
		t.Logf("server log tail (successful GETs dropped, secret-looking lines withheld):\n%s", redact(quiet(s.srv.LogTail(400), 80)))
		if s.plugin.ID != "" {
			if lines, err := s.srv.PluginLines(s.plugin.ID); err == nil {
				var b strings.Builder
				for _, l := range lines {
					fmt.Fprintf(&b, "%s %s: %s\n", l.Level, l.Source, l.Message)
				}
				t.Logf("plugin worker log tail:\n%s", redact(tailLines(b.String(), 60)))
			}
		}
		t.Logf("exec node log tail:\n%s", s.nodeLog.tail(40))
		t.Logf("control plane log tail:\n%s", redact(s.clusterLog.tail(20)))
	}
	err := s.srv.Stop()
	if t.Failed() || os.Getenv("PAPERCLIP_E2E_KEEP") != "" {
		t.Logf("server root kept: %s (log %s)", s.srv.Root, s.srv.LogPath)
	} else {
		s.srv.Cleanup()
	}
	if err != nil {
		t.Errorf("stopping the server: %v", err)
	}
}

// config is an environment config of the stack's cluster for backend
// ("sandbox", "job"): the kubeconfig of the control plane, the sandbox
// image's workspace, no lease reuse. Callers may change the map.
func (s *stack) config(backend string) map[string]any {
	return map[string]any{
		"provider":      "kubernetes",
		"kubeconfig":    string(s.env.KubeconfigBytes()),
		"backend":       backend,
		"workspacePath": s.workspace,
		"reuseLease":    false,
	}
}

// company creates a company on the server and returns it with a checker
// for its tenant namespace (the namespace config("sandbox") gives it).
func (s *stack) company(t *testing.T, name string) (paperclip.Company, *checker) {
	t.Helper()
	company, err := s.srv.CreateCompany(s.ctx, name)
	if err != nil {
		t.Fatalf("creating company %q: %v", name, err)
	}
	cfg, err := policy.Parse(withoutProvider(s.config("sandbox")), nil)
	if err != nil {
		t.Fatalf("the stack's environment config: %v", err)
	}
	tenant, err := cfg.Namespace(company.ID)
	if err != nil {
		t.Fatalf("the tenant namespace of company %s: %v", company.ID, err)
	}
	return company, &checker{srv: s.srv, env: s.env, rec: s.rec, tenant: tenant}
}

// runAgent creates a claude_local agent (the fake claude CLI) named name on
// environment envID, wakes it and waits up to wait for its run to end. It
// fails the test on an API error only: the caller checks the run's status.
func (s *stack) runAgent(t *testing.T, companyID, envID, name string, wait time.Duration) paperclip.Run {
	t.Helper()
	agent, err := s.srv.CreateAgent(s.ctx, companyID, paperclip.AgentSpec{
		Name: name, AdapterType: "claude_local",
		AdapterConfig:        map[string]any{"engine": "cli", "command": s.claude},
		DefaultEnvironmentID: envID,
	})
	if err != nil {
		t.Fatalf("creating agent %s: %v", name, err)
	}
	var run paperclip.Run
	timed(t, "Wakeup+WaitRun", func() {
		run, err = s.srv.Wakeup(s.ctx, agent.ID, name)
		if err != nil {
			return
		}
		wctx, cancel := context.WithTimeout(s.ctx, wait)
		defer cancel()
		run, err = s.srv.WaitRun(wctx, run.ID)
	})
	if err != nil {
		t.Fatalf("the run of agent %s: %v", name, err)
	}
	t.Logf("run %s: status %q error %q code %q result %v", run.ID, run.Status, deref(run.Error), deref(run.ErrorCode), run.ResultJSON["result"])
	return run
}

// fileSyncCalls counts the plugin's "file sync done" log lines by hook:
// environmentSyncIn (the host uploaded the workspace through the plugin) and
// environmentSyncOut (it restored the workspace through it).
func (s *stack) fileSyncCalls(t *testing.T) map[string]int {
	t.Helper()
	lines, err := s.srv.PluginLines(s.plugin.ID)
	if err != nil {
		t.Fatalf("the plugin's log lines: %v", err)
	}
	synced := map[string]int{}
	for _, l := range lines {
		if strings.Contains(l.Text(), `msg="file sync done"`) {
			for _, m := range []string{"environmentSyncIn", "environmentSyncOut"} {
				if strings.Contains(l.Text(), "method="+m+" ") {
					synced[m]++
				}
			}
		}
	}
	t.Logf("native file sync calls: %v", synced)
	return synced
}

// bakeWorkerEnv writes the operator's worker settings where the package's
// launcher reads them: paperclip-k8s.env next to worker.js. Paperclip
// 2026.916.1 gives a plugin worker only a fixed list of variables, so an
// operator's PAPERCLIP_K8S_* setting cannot come from the server's
// environment.
func bakeWorkerEnv(pkgDir string, env map[string]string) error {
	src := "# e2e (stackOptions.WorkerEnv): the operator's worker settings\n"
	for k, v := range env {
		src += k + "=" + v + "\n"
	}
	return os.WriteFile(filepath.Join(pkgDir, "paperclip-k8s.env"), []byte(src), 0o644)
}
