package paperclip

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"
)

// The driver key of the throwaway JS plugin below. Keys are global across
// plugins, so keep it unlike the real plugin's.
const testDriverKey = "e2e-harness-js"

// testWorkerJS answers the environment hooks in plain JS (no SDK) and
// appends one JSON line per request to hooks.ndjson beside itself: method
// and a few ids only. It never records env, stdin or config values: they
// carry the server's secrets. Execute really runs the command on this host,
// in the lease's directory under config.rootDir.
const testWorkerJS = `import fs from "node:fs";
import path from "node:path";
import readline from "node:readline";
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
const here = path.dirname(fileURLToPath(import.meta.url));
const LOG = path.join(here, "hooks.ndjson");
const log = (o) => fs.appendFileSync(LOG, JSON.stringify(o) + "\n");
const send = (o) => process.stdout.write(JSON.stringify({ jsonrpc: "2.0", ...o }) + "\n");
log({ method: "(start)", pid: process.pid, envKeys: Object.keys(process.env).sort(), cwd: process.cwd() });
process.stderr.write("e2e-harness worker started\n");
const supported = ["health", "shutdown", "environmentValidateConfig", "environmentProbe", "environmentAcquireLease",
  "environmentReleaseLease", "environmentRealizeWorkspace", "environmentExecute"];
const handlers = {
  initialize: () => {
    send({ method: "log", params: { level: "info", message: "e2e-harness worker initialized" } });
    send({ id: "w-1", method: "log", params: { level: "warn", message: "e2e-harness log request" } });
    return { ok: true, supportedMethods: supported };
  },
  health: () => ({ status: "ok" }),
  shutdown: () => { setImmediate(() => process.exit(0)); return null; },
  environmentValidateConfig: (p) => (typeof p.config?.rootDir === "string" && p.config.rootDir !== "")
    ? { ok: true } : { ok: false, errors: ["rootDir is required"] },
  environmentProbe: (p) => ({ ok: true, summary: "e2e-harness probe ok", metadata: { probed: true } }),
  environmentAcquireLease: (p) => {
    const id = "e2e-" + p.runId;
    const cwd = path.join(p.config.rootDir, id);
    fs.mkdirSync(cwd, { recursive: true });
    return { providerLeaseId: id, metadata: { sandboxName: id, remoteCwd: cwd } };
  },
  environmentRealizeWorkspace: (p) => ({ cwd: p.workspace?.remotePath || p.lease?.metadata?.remoteCwd, metadata: { realized: true } }),
  environmentExecute: (p) => {
    const r = spawnSync(p.command, p.args ?? [], { cwd: p.cwd || p.lease?.metadata?.remoteCwd, env: p.env, input: p.stdin ?? "",
      timeout: p.timeoutMs, encoding: "utf8", maxBuffer: 256 << 20 });
    return { exitCode: r.status, signal: r.signal ?? null, timedOut: r.error?.code === "ETIMEDOUT",
      stdout: r.stdout ?? "", stderr: r.stderr ?? (r.error ? String(r.error.message) : "") };
  },
  environmentReleaseLease: (p) => ({ providerLeaseId: p.providerLeaseId, state: "stopped" }),
};
readline.createInterface({ input: process.stdin, crlfDelay: Infinity }).on("line", (line) => {
  if (!line.trim()) return;
  let m; try { m = JSON.parse(line); } catch { return; }
  if (typeof m.method !== "string" || m.id === undefined || m.id === null) return;
  const p = m.params ?? {};
  log({ method: m.method, driverKey: p.driverKey, environmentId: p.environmentId, runId: p.runId,
    providerLeaseId: p.providerLeaseId ?? p.lease?.providerLeaseId ?? undefined,
    command: p.command, workspaceKeys: p.workspace ? Object.keys(p.workspace).length : undefined,
    invocation: Boolean(m.paperclipInvocation) });
  const h = handlers[m.method];
  if (!h) { send({ id: m.id, error: { code: -32601, message: "method not found: " + m.method } }); return; }
  try { send({ id: m.id, result: h(p) }); }
  catch (e) { send({ id: m.id, error: { code: -32000, message: String(e?.message ?? e) } }); }
}).on("close", () => process.exit(0));
`

func testManifest(id, driverKey string) map[string]any {
	return map[string]any{
		"id": id, "apiVersion": 1, "version": "0.1.0",
		"displayName": "E2E harness", "description": "Throwaway plugin of the e2e harness test", "author": "paperclip-k8s",
		"categories":   []string{"workspace"},
		"capabilities": []string{"environment.drivers.register"},
		"environmentDrivers": []any{map[string]any{
			"driverKey": driverKey, "kind": "sandbox_provider", "displayName": "E2E harness",
			"configSchema": map[string]any{"type": "object", "properties": map[string]any{"rootDir": map[string]any{"type": "string"}}},
		}},
	}
}

// fakeClaude is the agent CLI of the run test: no LLM involved.
const fakeClaude = `#!/bin/sh
if [ "$1" = "--version" ]; then echo "2.0.0 (Claude Code)"; exit 0; fi
cat > /dev/null
echo '{"type":"system","subtype":"init","session_id":"fake-session-1","model":"fake-model","tools":[]}'
echo '{"type":"assistant","session_id":"fake-session-1","message":{"role":"assistant","content":[{"type":"text","text":"Hello from the fake claude."}]}}'
echo '{"type":"result","subtype":"success","is_error":false,"result":"done (fake)","session_id":"fake-session-1","num_turns":1,"total_cost_usd":0,"usage":{"input_tokens":1,"output_tokens":1}}'
`

// hookLog reads the worker's hooks.ndjson.
type hookLog struct{ path string }

type hook struct {
	Method          string   `json:"method"`
	DriverKey       string   `json:"driverKey"`
	EnvironmentID   string   `json:"environmentId"`
	RunID           string   `json:"runId"`
	ProviderLeaseID string   `json:"providerLeaseId"`
	Command         string   `json:"command"`
	Invocation      bool     `json:"invocation"`
	PID             int      `json:"pid"`
	EnvKeys         []string `json:"envKeys"`
	Cwd             string   `json:"cwd"`
}

func (h hookLog) all(t *testing.T) []hook {
	t.Helper()
	b, err := os.ReadFile(h.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []hook
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		var x hook
		if err := json.Unmarshal(sc.Bytes(), &x); err != nil {
			t.Fatalf("hooks.ndjson: %v", err)
		}
		out = append(out, x)
	}
	return out
}

// mark returns the number of hooks so far; since(mark) the ones after it.
func (h hookLog) mark(t *testing.T) int { return len(h.all(t)) }

func (h hookLog) since(t *testing.T, mark int) []hook { return h.all(t)[mark:] }

// until polls the hooks after mark until the last one has method last: the
// host answers some HTTP calls before it releases the lease.
func (h hookLog) until(t *testing.T, mark int, last string) []hook {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		hs := h.since(t, mark)
		if len(hs) > 0 && hs[len(hs)-1].Method == last || time.Now().After(deadline) {
			return hs
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// methods compresses consecutive repeats: [a b b c] -> [a b c].
func methods(hs []hook) []string {
	var out []string
	for _, h := range hs {
		if len(out) == 0 || out[len(out)-1] != h.Method {
			out = append(out, h.Method)
		}
	}
	return out
}

func timed(t *testing.T, what string, f func()) {
	t.Helper()
	start := time.Now()
	f()
	t.Logf("timing: %s took %v", what, time.Since(start).Round(time.Millisecond))
}

// TestRealServer drives a real paperclip-server (npm paperclipai, embedded
// Postgres) with a throwaway JS sandbox-provider plugin. It installs Node 24
// and paperclipai into the machine cache first when they are missing
// (~1.5 min, ~1.6 GB); it is never skipped on Linux.
func TestRealServer(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the harness reads /proc and uses Linux process groups")
	}
	is := is.New(t)
	var dir string
	timed(t, "Install", func() {
		var err error
		dir, err = Install()
		is.NoErr(err)
	})

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var srv *Server
	timed(t, "Start", func() {
		var err error
		srv, err = Start(ctx, Options{Dir: dir})
		is.NoErr(err)
	})
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_ = srv.Stop()
		}
		if t.Failed() || os.Getenv("PAPERCLIP_E2E_KEEP") != "" {
			t.Logf("server root kept for inspection: %s (log: %s)", srv.Root, srv.LogPath)
			if t.Failed() {
				t.Logf("server log tail:\n%s", srv.LogTail(60))
			}
			return
		}
		srv.Cleanup()
	})
	t.Logf("server pid %d on %s, started in %v", srv.PID, srv.BaseURL, srv.StartDuration.Round(time.Millisecond))
	is.True(srv.Port != 3100) // a free port, not the default

	h, err := srv.Health(ctx)
	is.NoErr(err)
	is.Equal(h.Status, "ok")
	is.Equal(h.Version, PaperclipVersion)
	is.Equal(h.DeploymentMode, "local_trusted")

	// The plugin package and the sandbox root.
	pkgDir := filepath.Join(t.TempDir(), "plugin")
	is.NoErr(WritePluginPackage(pkgDir, PluginPackage{
		Name: "@paperclip-k8s/plugin-e2e-harness", Manifest: testManifest("paperclip-k8s.e2e-harness", testDriverKey), WorkerJS: testWorkerJS,
	}))
	hooks := hookLog{filepath.Join(pkgDir, "hooks.ndjson")}
	sandboxRoot := t.TempDir()
	envConfig := map[string]any{"provider": testDriverKey, "rootDir": sandboxRoot, "reuseLease": false}

	var company Company
	timed(t, "CreateCompany", func() {
		company, err = srv.CreateCompany(ctx, "e2e harness")
		is.NoErr(err)
		is.True(company.ID != "")
	})

	var plugin Plugin
	timed(t, "InstallLocalPlugin", func() {
		plugin, err = srv.InstallLocalPlugin(ctx, pkgDir)
		is.NoErr(err)
	})
	is.Equal(plugin.Status, "ready")
	is.Equal(plugin.PluginKey, "paperclip-k8s.e2e-harness")

	t.Run("worker process", func(t *testing.T) {
		is := is.New(t)
		hs := hooks.all(t)
		is.True(len(hs) >= 2)
		is.Equal(hs[0].Method, "(start)")
		is.Equal(hs[1].Method, "initialize")
		// The worker env is scrubbed: no HOME, but the plugin id.
		is.True(!slices.Contains(hs[0].EnvKeys, "HOME"))
		is.True(slices.Contains(hs[0].EnvKeys, "PAPERCLIP_PLUGIN_ID"))
		is.True(slices.Contains(hs[0].EnvKeys, "PATH"))
		t.Logf("worker env keys: %v", hs[0].EnvKeys)
		is.Equal(hs[0].Cwd, srv.Root) // cwd = the server's cwd
		ph, err := srv.PluginHealth(ctx, plugin.ID)
		is.NoErr(err)
		is.True(ph.Healthy)
	})

	var env Environment
	t.Run("create environment calls validate", func(t *testing.T) {
		is := is.New(t)
		m := hooks.mark(t)
		timed(t, "CreateEnvironment", func() {
			env, err = srv.CreateEnvironment(ctx, company.ID, "e2e", envConfig)
			is.NoErr(err)
		})
		is.Equal(env.Driver, "sandbox")
		is.Equal(env.Config["provider"], testDriverKey)
		is.Equal(methods(hooks.since(t, m)), []string{"environmentValidateConfig"})

		// A config the plugin rejects: 422 with the plugin's first error.
		m = hooks.mark(t)
		_, err := srv.CreateEnvironment(ctx, company.ID, "bad", map[string]any{"provider": testDriverKey})
		var apiErr *APIError
		is.True(errors.As(err, &apiErr))
		is.Equal(apiErr.Status, 422)
		is.Equal(apiErr.Message, "rootDir is required")
		is.Equal(methods(hooks.since(t, m)), []string{"environmentValidateConfig"})
	})
	if env.ID == "" {
		t.FailNow()
	}

	t.Run("probe-config", func(t *testing.T) {
		is := is.New(t)
		m := hooks.mark(t)
		var res ProbeResult
		timed(t, "ProbeConfig", func() {
			res, err = srv.ProbeConfig(ctx, company.ID, envConfig)
			is.NoErr(err)
		})
		is.True(res.OK)
		is.Equal(res.Summary, "e2e-harness probe ok")
		hs := hooks.since(t, m)
		is.Equal(methods(hs), []string{"environmentValidateConfig", "environmentProbe"})
		is.Equal(hs[1].EnvironmentID, "unsaved")
		is.True(hs[1].Invocation) // company-scoped calls carry paperclipInvocation
	})

	t.Run("probe saved environment", func(t *testing.T) {
		is := is.New(t)
		m := hooks.mark(t)
		var res ProbeResult
		timed(t, "ProbeEnvironment", func() {
			res, err = srv.ProbeEnvironment(ctx, company.ID, env.ID)
			is.NoErr(err)
		})
		is.True(res.OK)
		is.Equal(methods(hooks.until(t, m, "environmentReleaseLease")), []string{"environmentAcquireLease", "environmentReleaseLease"})
	})

	t.Run("codex_local test-environment lease lifecycle", func(t *testing.T) {
		is := is.New(t)
		m := hooks.mark(t)
		var res AdapterTest
		timed(t, "TestAdapterEnvironment(codex_local)", func() {
			res, err = srv.TestAdapterEnvironment(ctx, company.ID, "codex_local", nil, env.ID)
			is.NoErr(err)
		})
		is.Equal(res.AdapterType, "codex_local")
		t.Logf("adapter test status %q (codex-acp is absent from this sandbox, so fail is expected)", res.Status)
		hs := hooks.until(t, m, "environmentReleaseLease")
		is.Equal(methods(hs), []string{"environmentAcquireLease", "environmentRealizeWorkspace", "environmentExecute", "environmentReleaseLease"})
		for _, h := range hs[1:] {
			is.Equal(h.ProviderLeaseID, "e2e-"+hs[0].RunID) // every call names the acquired lease
			is.Equal(h.EnvironmentID, env.ID)
		}
		var ls []Lease
		timed(t, "Leases", func() {
			ls, err = srv.Leases(ctx, env.ID)
			is.NoErr(err)
		})
		is.True(len(ls) >= 2) // the probe's and this one
		found := false
		for _, l := range ls {
			is.True(l.Status != "active")
			if l.ProviderLeaseID != nil && *l.ProviderLeaseID == "e2e-"+hs[0].RunID {
				found = true
				is.Equal(l.LeasePolicy, "ephemeral")
			}
		}
		is.True(found)
	})

	t.Run("agent run", func(t *testing.T) {
		is := is.New(t)
		claude := filepath.Join(t.TempDir(), "claude")
		is.NoErr(os.WriteFile(claude, []byte(fakeClaude), 0o755))
		var agent Agent
		timed(t, "CreateAgent", func() {
			agent, err = srv.CreateAgent(ctx, company.ID, AgentSpec{
				Name: "e2e-agent", AdapterType: "claude_local",
				AdapterConfig:        map[string]any{"engine": "cli", "command": claude},
				DefaultEnvironmentID: env.ID,
			})
			is.NoErr(err)
		})
		m := hooks.mark(t)
		var run Run
		timed(t, "Wakeup+WaitRun", func() {
			run, err = srv.Wakeup(ctx, agent.ID, "e2e harness test")
			is.NoErr(err)
			wctx, cancel := context.WithTimeout(ctx, 90*time.Second)
			defer cancel()
			run, err = srv.WaitRun(wctx, run.ID)
			is.NoErr(err)
		})
		if run.Status != "succeeded" {
			t.Fatalf("run %s: status %q error %v code %v", run.ID, run.Status, deref(run.Error), deref(run.ErrorCode))
		}
		is.Equal(run.ResultJSON["result"], "done (fake)")
		hs := hooks.until(t, m, "environmentReleaseLease")
		ms := methods(hs)
		is.Equal(ms[0], "environmentAcquireLease")
		is.Equal(ms[len(ms)-1], "environmentReleaseLease")
		is.True(slices.Contains(ms, "environmentRealizeWorkspace"))
		is.Equal(hs[0].RunID, run.ID) // a run's lease is acquired with the heartbeat run id
		n := 0
		for _, h := range hs {
			if h.Method == "environmentExecute" {
				n++
			}
		}
		t.Logf("agent run: %d hook calls, %d executes", len(hs), n)
	})

	t.Run("update environment, restart plugin, delete environment", func(t *testing.T) {
		is := is.New(t)
		m := hooks.mark(t)
		cfg := map[string]any{"provider": testDriverKey, "rootDir": t.TempDir(), "reuseLease": false}
		var upd Environment
		timed(t, "UpdateEnvironment", func() {
			upd, err = srv.UpdateEnvironment(ctx, env.ID, cfg)
			is.NoErr(err)
		})
		is.Equal(upd.Config["rootDir"], cfg["rootDir"])
		is.Equal(methods(hooks.since(t, m)), []string{"environmentValidateConfig"})

		before := hooks.all(t)[0].PID
		m = hooks.mark(t)
		timed(t, "RestartPlugin", func() { is.NoErr(srv.RestartPlugin(ctx, plugin.ID)) })
		hs := hooks.until(t, m, "initialize")
		is.Equal(methods(hs), []string{"shutdown", "(start)", "initialize"})
		is.True(hs[1].PID != before) // a new worker process
		ph, err := srv.PluginHealth(ctx, plugin.ID)
		is.NoErr(err)
		is.Equal(ph.Status, "ready")

		scratch, err := srv.CreateEnvironment(ctx, company.ID, "scratch", envConfig)
		is.NoErr(err)
		timed(t, "DeleteEnvironment", func() { is.NoErr(srv.DeleteEnvironment(ctx, scratch.ID)) })
		_, err = srv.Leases(ctx, scratch.ID)
		var apiErr *APIError
		is.True(errors.As(err, &apiErr))
		is.Equal(apiErr.Status, 404)
	})

	t.Run("plugin logs and stderr", func(t *testing.T) {
		is := is.New(t)
		lines, err := srv.PluginLines(plugin.ID)
		is.NoErr(err)
		is.True(slices.Contains(lines, PluginLine{Level: "WARN", Source: "stderr", Message: "e2e-harness worker started"}))
		is.True(slices.Contains(lines, PluginLine{Level: "INFO", Source: "log", Message: "e2e-harness worker initialized"}))
		// Only `log` requests reach the database; the host flushes every 5 s.
		deadline := time.Now().Add(15 * time.Second)
		for {
			logs, err := srv.PluginLogs(ctx, plugin.ID, 50)
			is.NoErr(err)
			if slices.ContainsFunc(logs, func(l PluginLog) bool { return l.Message == "e2e-harness log request" && l.Level == "warn" }) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("log request not in /api/plugins/:id/logs: %+v", logs)
			}
			time.Sleep(250 * time.Millisecond)
		}
	})

	t.Run("failed install removes the stale row", func(t *testing.T) {
		is := is.New(t)
		bad := filepath.Join(t.TempDir(), "bad")
		is.NoErr(WritePluginPackage(bad, PluginPackage{
			Name: "@paperclip-k8s/plugin-e2e-bad", Manifest: testManifest("paperclip-k8s.e2e-bad", "e2e-bad"),
			WorkerJS: `process.stderr.write("bad worker exits\n"); process.exit(3);` + "\n",
		}))
		_, err := srv.InstallLocalPlugin(ctx, bad)
		var apiErr *APIError
		is.True(errors.As(err, &apiErr))
		is.Equal(apiErr.Status, 400)
		is.True(strings.Contains(apiErr.Message, "bad worker exits")) // worker stderr is attached
		ps, err := srv.ListPlugins(ctx)
		is.NoErr(err)
		for _, p := range ps {
			is.True(p.PluginKey != "paperclip-k8s.e2e-bad")
		}
	})

	t.Run("stop leaves no processes", func(t *testing.T) {
		is := is.New(t)
		procs := srv.Processes()
		var leader, postmaster, worker bool
		for _, p := range procs {
			switch {
			case p.PID == srv.PID:
				leader = true
			case strings.Contains(p.Cmdline, "/native/bin/postgres "):
				postmaster = true
			case strings.Contains(p.Cmdline, filepath.Join(pkgDir, "worker.js")):
				worker = true
			}
		}
		t.Logf("server tree before Stop: %d processes", len(procs))
		is.True(leader && postmaster && worker)
		timed(t, "Stop", func() { is.NoErr(srv.Stop()) })
		stopped = true
		is.NoErr(srv.Stop()) // idempotent
		for _, p := range procs {
			if pidAlive(p.PID) {
				t.Errorf("pid %d (%s) survived Stop", p.PID, p.Cmdline)
			}
		}
		_, err := srv.Health(ctx)
		is.True(err != nil) // nothing listens any more
	})
}

// TestStartOnBusyPort: when the requested port is taken, the server silently
// binds the next free one; Start must follow it (this also covers the race
// between picking a free port and the server binding it).
func TestStartOnBusyPort(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the harness reads /proc and uses Linux process groups")
	}
	is := is.New(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	is.NoErr(err)
	defer l.Close()
	busy := l.Addr().(*net.TCPAddr).Port
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	srv, err := Start(ctx, Options{Port: busy})
	is.NoErr(err)
	defer srv.Cleanup()
	t.Logf("requested port %d, server on %d, started in %v", busy, srv.Port, srv.StartDuration.Round(time.Millisecond))
	is.True(srv.Port != busy)
	h, err := srv.Health(ctx)
	is.NoErr(err)
	is.Equal(h.Status, "ok")
	procs := srv.Processes()
	is.NoErr(srv.Stop())
	for _, p := range procs {
		is.True(!pidAlive(p.PID))
	}
}

func TestParseStat(t *testing.T) {
	is := is.New(t)
	p, ok := parseStat("4242 (node (x) y) S 1 4242 4242 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 11 0 987654 0 0")
	is.True(ok)
	is.Equal(p, procInfo{pid: 4242, ppid: 1, pgid: 4242, state: 'S', start: 987654})
	_, ok = parseStat("garbage")
	is.True(!ok)
	self, ok := readProc(os.Getpid())
	is.True(ok)
	is.Equal(self.ppid, os.Getppid())
}

func TestWritePluginPackage(t *testing.T) {
	is := is.New(t)
	dir := t.TempDir()
	is.NoErr(WritePluginPackage(dir, PluginPackage{Name: "@x/plugin-y", Manifest: testManifest("x.y", "x-y"), WorkerJS: ExecveLauncherJS("bin/worker")}))
	var pkg map[string]any
	b, err := os.ReadFile(filepath.Join(dir, "package.json"))
	is.NoErr(err)
	is.NoErr(json.Unmarshal(b, &pkg))
	is.Equal(pkg["type"], "module")
	is.Equal(pkg["version"], "0.1.0")
	m, err := os.ReadFile(filepath.Join(dir, "manifest.js"))
	is.NoErr(err)
	is.True(strings.HasPrefix(string(m), "export default {"))
	is.True(strings.Contains(string(m), `"worker": "./worker.js"`))
	w, err := os.ReadFile(filepath.Join(dir, "worker.js"))
	is.NoErr(err)
	is.True(strings.Contains(string(w), `process.execve(bin, [bin, ...process.argv.slice(2)], process.env)`))
	is.True(strings.Contains(string(w), `"bin/worker"`))
}

func TestInstallScript(t *testing.T) {
	is := is.New(t)
	p, err := InstallScript()
	is.NoErr(err)
	is.True(filepath.IsAbs(p))
	is.True(strings.HasSuffix(p, filepath.Join("hack", "install-paperclip.sh")))
}

func TestPluginLineParse(t *testing.T) {
	is := is.New(t)
	id := "4ac5f6fb-e409-4b9d-b206-1564eb32c027"
	l, ok := parsePluginLine(`[05:09:44] WARN: [plugin stderr] a {"b"} c {"service":"plugin-worker","pluginId":"`+id+`","stream":"stderr"}`, id)
	is.True(ok)
	is.Equal(l, PluginLine{Level: "WARN", Source: "stderr", Message: `a {"b"} c`})
	l, ok = parsePluginLine(`[05:09:44] INFO: [plugin] hello {"service":"plugin-worker","pluginId":"`+id+`","pluginLogLevel":"info"}`, id)
	is.True(ok)
	is.Equal(l, PluginLine{Level: "INFO", Source: "log", Message: "hello"})
	_, ok = parsePluginLine(`[05:09:44] INFO: [plugin] hello {"pluginId":"other"}`, id)
	is.True(!ok)
	_, ok = parsePluginLine(`[05:09:44] INFO: starting plugin worker {"pluginId":"`+id+`"}`, id)
	is.True(!ok)
}

func TestTailBuffer(t *testing.T) {
	is := is.New(t)
	var b bytes.Buffer
	tb := &tailBuffer{buf: &b, max: 4}
	_, _ = tb.Write([]byte("abc"))
	_, _ = tb.Write([]byte("defg"))
	is.Equal(b.String(), "defg")
}
