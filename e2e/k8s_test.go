// Package e2e_test runs the real paperclip-server (npm paperclipai, see
// package e2e/paperclip) against the plugin package hack/build-npm.sh builds,
// on the local control plane of internal/devenv.
package e2e_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/paperclip-k8s/paperclip-k8s/e2e/paperclip"
	"github.com/paperclip-k8s/paperclip-k8s/internal/devenv"
	"github.com/paperclip-k8s/paperclip-k8s/plugin"
)

// fakeCodexACP only has to exist: the codex_local adapter test resolves
// the command in the sandbox and then reports missing auth (a warning).
const fakeCodexACP = "#!/bin/sh\nexit 0\n"

// fakeClaude is the agent CLI of the run (paperclip-e2e.md §4.1): three
// stream-json lines, no LLM.
const fakeClaude = `#!/bin/sh
if [ "$1" = "--version" ]; then echo "2.0.0 (Claude Code)"; exit 0; fi
cat > /dev/null
echo '{"type":"system","subtype":"init","session_id":"fake-session-1","model":"fake-model","tools":[]}'
echo '{"type":"assistant","session_id":"fake-session-1","message":{"role":"assistant","content":[{"type":"text","text":"Hello from the fake claude."}]}}'
echo '{"type":"result","subtype":"success","is_error":false,"result":"done (fake)","session_id":"fake-session-1","num_turns":1,"total_cost_usd":0,"usage":{"input_tokens":1,"output_tokens":1}}'
`

// releaseDeadline bounds the wait for the host's release call and for the
// garbage collector: the host answers the HTTP call before it releases.
const releaseDeadline = 60 * time.Second

// TestPaperclipKubernetes: the real paperclip-server drives the plugin
// package (Go worker behind the npm/worker.js launcher) on the local control
// plane. The exec node of devenv runs "pod" commands as local processes, so
// the sandbox's paths are paths on this machine: workspacePath is a local
// directory, the fake claude CLI is a local file, and node/sh/tar/base64 are
// this machine's (Node 24 of the paperclip install first in the node's PATH).
//
// It installs what it lacks (Node 24 + paperclipai ~1.5 min, the
// control-plane binaries ~7.5 min cold) and is never skipped on Linux.
func TestPaperclipKubernetes(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the paperclip harness reads /proc and uses Linux process groups")
	}
	is := is.New(t)
	s := startStack(t, stackOptions{})
	ctx, srv, env, pkgDir, pl := s.ctx, s.srv, s.env, s.pkgDir, s.plugin
	pluginID, claude, config := pl.ID, s.claude, s.config
	var err error

	t.Run("package and worker process", func(t *testing.T) {
		is := is.New(t)
		var pkg struct {
			Name            string            `json:"name"`
			Version         string            `json:"version"`
			Type            string            `json:"type"`
			PaperclipPlugin map[string]string `json:"paperclipPlugin"`
		}
		b, err := os.ReadFile(filepath.Join(pkgDir, "package.json"))
		is.NoErr(err)
		is.NoErr(json.Unmarshal(b, &pkg))
		is.Equal(pkg.Name, "@paperclip-k8s/plugin-kubernetes")
		is.Equal(pkg.Version, plugin.Version)
		is.Equal(pkg.Type, "module")
		is.Equal(pkg.PaperclipPlugin, map[string]string{"manifest": "./manifest.js", "worker": "./worker.js"})
		is.Equal(pl.Version, plugin.Version)

		// worker.js execve'd the binary: the forked node process became
		// `bin/paperclip-k8s-linux-<arch> worker`, with HOME set although
		// the host scrubs it from the worker env.
		bin := filepath.Join(pkgDir, "bin", "paperclip-k8s-linux-"+nodeArch())
		var pid int
		for _, p := range srv.Processes() {
			if strings.HasPrefix(p.Cmdline, bin+" worker") {
				pid = p.PID
			}
		}
		if pid == 0 {
			t.Fatalf("no process runs %s worker", bin)
		}
		environ, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		is.NoErr(err)
		var keys []string
		for _, kv := range strings.Split(string(environ), "\x00") {
			if k, _, ok := strings.Cut(kv, "="); ok {
				keys = append(keys, k) // names only: values stay unread
			}
		}
		t.Logf("worker pid %d env keys: %v", pid, keys)
		is.True(slices.Contains(keys, "HOME"))
		is.True(slices.Contains(keys, "PAPERCLIP_PLUGIN_ID"))
	})

	company, c := s.company(t, "e2e kubernetes")
	tenant := c.tenant

	t.Run("probe-config", func(t *testing.T) {
		is := is.New(t)
		var res paperclip.ProbeResult
		timed(t, "ProbeConfig", func() { res, err = srv.ProbeConfig(ctx, company.ID, config("sandbox")) })
		is.NoErr(err)
		if !res.OK {
			t.Fatalf("probe-config: not ok: %s", res.Raw)
		}
		t.Logf("probe-config: %s", res.Summary)
		is.True(strings.Contains(res.Summary, "Kubernetes cluster reachable"))
		is.True(strings.Contains(res.Summary, tenant))

		// A config without credentials is refused by validateConfig (422).
		_, err := srv.ProbeConfig(ctx, company.ID, map[string]any{"provider": "kubernetes"})
		var apiErr *paperclip.APIError
		is.True(errors.As(err, &apiErr))
		t.Logf("probe-config without credentials: %v", err)
		is.Equal(apiErr.Status, 422)
		is.True(strings.Contains(apiErr.Message, "kubeconfig"))
	})

	for _, backend := range []string{"sandbox", "job"} {
		t.Run("backend "+backend, func(t *testing.T) {
			is := is.New(t)
			var e paperclip.Environment
			timed(t, "CreateEnvironment", func() { e, err = srv.CreateEnvironment(ctx, company.ID, "k8s-"+backend, config(backend)) })
			is.NoErr(err)
			is.Equal(e.Driver, "sandbox")
			is.Equal(e.Config["provider"], "kubernetes")
			t.Logf("stored kubeconfig field: %s", describeSecretField(e.Config["kubeconfig"]))

			t.Run("probe saved environment", func(t *testing.T) {
				is := is.New(t)
				before := c.leaseIDs(ctx, t, e.ID)
				var res paperclip.ProbeResult
				timed(t, "ProbeEnvironment", func() { res, err = srv.ProbeEnvironment(ctx, company.ID, e.ID) })
				is.NoErr(err)
				if !res.OK {
					t.Fatalf("probe: not ok: %s", res.Raw)
				}
				t.Logf("probe: %s", res.Summary)
				c.released(ctx, t, e.ID, before, backend, "released")
			})

			t.Run("codex_local test-environment", func(t *testing.T) {
				is := is.New(t)
				before := c.leaseIDs(ctx, t, e.ID)
				var res paperclip.AdapterTest
				timed(t, "TestAdapterEnvironment", func() {
					res, err = srv.TestAdapterEnvironment(ctx, company.ID, "codex_local", nil, e.ID)
				})
				is.NoErr(err)
				is.Equal(res.AdapterType, "codex_local")
				var codes []string
				for _, ch := range res.Checks {
					t.Logf("check %s [%s]: %s", ch.Code, ch.Level, ch.Message)
					if ch.Level == "info" {
						codes = append(codes, ch.Code)
					}
				}
				// The fake codex-acp is found in the pod; only auth is missing.
				// On the job backend the same checks pass for a different
				// reason: every command "succeeds" with the Job's log (see
				// the agent run below).
				is.Equal(res.Status, "warn")
				is.True(slices.Contains(codes, "codex_acp_command_resolvable"))
				c.released(ctx, t, e.ID, before, backend, "released")
			})

			t.Run("agent run", func(t *testing.T) {
				is := is.New(t)
				before := c.leaseIDs(ctx, t, e.ID)
				run := s.runAgent(t, company.ID, e.ID, "e2e-"+backend, 3*time.Minute)
				var ls []paperclip.Lease
				switch backend {
				case "sandbox":
					// acquire → realize → ~40 executes in the pod (git
					// context, PATH probe, the callback bridge, the fake
					// claude) with native file sync (environmentSyncIn for
					// the workspace and runtime assets, environmentSyncOut
					// for the workspace restore) → release.
					if run.Status != "succeeded" {
						t.Fatalf("run %s: status %q error %q code %q", run.ID, run.Status, deref(run.Error), deref(run.ErrorCode))
					}
					synced := s.fileSyncCalls(t)
					is.True(synced["environmentSyncIn"] >= 1)  // the host uploaded through the plugin
					is.True(synced["environmentSyncOut"] >= 1) // and restored the workspace through it
					is.Equal(run.ResultJSON["result"], "done (fake)")
					ls = c.released(ctx, t, e.ID, before, backend, "released")
					execs, logs := c.podCalls(t, s.nodeLog, ls[0])
					t.Logf("the run's pod served %d execs, %d log reads", execs, logs)
					is.True(execs >= 10) // every command went through pods/exec
				case "job":
					// The job backend cannot host an agent run, by design: its
					// execute semantics are "await the Job's completion and
					// return its pod's log" and it ignores the command. The
					// host's first command of a run is a shell script that
					// prints the workspace's Git context between markers
					// (adapter-utils execution-target.js); the Job's log does
					// not contain them, so the host fails the run during setup,
					// before the agent CLI, and still releases the lease (row
					// "failed", cleanup "success"): nothing is left behind.
					is.Equal(run.Status, "failed")
					is.Equal(deref(run.ErrorCode), "setup_failed")
					is.Equal(deref(run.Error), "Could not read execution-target Git context")
					ls = c.released(ctx, t, e.ID, before, backend, "failed")
					execs, logs := c.podCalls(t, s.nodeLog, ls[0])
					t.Logf("the run's pod served %d execs, %d log reads", execs, logs)
					is.Equal(execs, 0) // no command ran
					is.True(logs >= 1) // the Job's log was read instead
				}
				for _, l := range ls {
					is.True(l.HeartbeatRunID != nil && *l.HeartbeatRunID == run.ID) // the run's own lease
				}
			})
		})
	}

	// The provider's log in the host's plugin log (logs_test.go).
	t.Run("plugin logs", func(t *testing.T) {
		testPluginLogs(ctx, t, &rig{srv: srv, env: env, c: c, companyID: company.ID, config: config,
			claude: claude, pluginID: pluginID})
	})

	// Reusable leases (reuseLease: true): runs that share one Sandbox, a
	// lost pod, the end of a kept lease (reuse_test.go).
	t.Run("reusable lease", func(t *testing.T) {
		testReusableLease(ctx, t, &rig{srv: srv, env: env, c: c, companyID: company.ID, config: config,
			claude: claude, pluginID: pluginID})
	})

	// The other install route: a self-hosted server auto-installs the
	// package PAPERCLIP_KUBERNETES_PLUGIN_PATH names at boot, in place of the
	// bundled Kubernetes plugin (only when <path>/dist/manifest.js exists
	// and no plugin with the manifest id is installed yet).
	t.Run("PAPERCLIP_KUBERNETES_PLUGIN_PATH", func(t *testing.T) {
		is := is.New(t)
		var srv2 *paperclip.Server
		timed(t, "paperclip.Start (second server)", func() {
			srv2, err = paperclip.Start(ctx, paperclip.Options{Dir: s.pcDir, Env: []string{"PAPERCLIP_KUBERNETES_PLUGIN_PATH=" + pkgDir}})
		})
		is.NoErr(err)
		defer func() {
			if err := srv2.Stop(); err != nil {
				t.Errorf("stopping the second server: %v", err)
			}
			if t.Failed() {
				t.Logf("second server log tail:\n%s", redact(quiet(srv2.LogTail(200), 40)))
				t.Logf("second server root kept: %s", srv2.Root)
			} else {
				srv2.Cleanup()
			}
		}()
		var p2 paperclip.Plugin
		err := waitFor(ctx, 30*time.Second, func() error {
			ps, err := srv2.ListPlugins(ctx)
			if err != nil {
				return err
			}
			for _, p := range ps {
				if p.PluginKey == plugin.ManifestID && p.Status == "ready" {
					p2 = p
					return nil
				}
			}
			return fmt.Errorf("%s is not installed and ready: %d plugins", plugin.ManifestID, len(ps))
		})
		is.NoErr(err)
		real, err := filepath.EvalSymlinks(pkgDir)
		is.NoErr(err)
		is.Equal(p2.PackagePath, real)
		company2, err := srv2.CreateCompany(ctx, "e2e bundled route")
		is.NoErr(err)
		res, err := srv2.ProbeConfig(ctx, company2.ID, config("sandbox"))
		is.NoErr(err)
		if !res.OK {
			t.Fatalf("probe-config through the bundled route: %s", res.Raw)
		}
	})
}

// checker verifies, after a step, what the host and the cluster say about
// the step's leases.
type checker struct {
	srv    *paperclip.Server
	env    *devenv.Env
	rec    *recorder
	tenant string
}

// leaseIDs returns the ids of the environment's lease rows so far.
func (c *checker) leaseIDs(ctx context.Context, t *testing.T, envID string) map[string]bool {
	t.Helper()
	ls, err := c.srv.Leases(ctx, envID)
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]bool{}
	for _, l := range ls {
		ids[l.ID] = true
	}
	return ids
}

// released waits until the environment has exactly one new lease row with
// status want ("released"; "failed" with cleanup "success" when the host
// failed the step on purpose), then checks through the Kubernetes API that each
// lease's workload (of the backend's kind), pod, Secret and scoped
// NetworkPolicy existed and are gone, and that the tenant namespace and its
// ServiceAccount remain. It returns the new rows.
func (c *checker) released(ctx context.Context, t *testing.T, envID string, before map[string]bool, backend, want string) []paperclip.Lease {
	t.Helper()
	var fresh []paperclip.Lease
	err := waitFor(ctx, releaseDeadline, func() error {
		ls, err := c.srv.Leases(ctx, envID)
		if err != nil {
			return err
		}
		fresh = fresh[:0]
		var states []string
		for _, l := range ls {
			if !before[l.ID] {
				fresh = append(fresh, l)
				states = append(states, l.Status)
			}
		}
		if len(fresh) != 1 {
			return fmt.Errorf("%d new lease rows, want 1 (states %v)", len(fresh), states)
		}
		l := fresh[0]
		if l.Status != want || want != "released" && deref(l.CleanupStatus) != "success" {
			return fmt.Errorf("lease %s is %q (failure %s, cleanup %s), want %q", l.ID, l.Status, deref(l.FailureReason), deref(l.CleanupStatus), want)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("host lease rows: %v", err)
	}
	workloadGVR := gvrSandbox
	if backend == "job" {
		workloadGVR = gvrJob
	}
	dyn := c.env.Dynamic()
	for _, l := range fresh {
		if l.ProviderLeaseID == nil {
			t.Fatalf("lease %s has no providerLeaseId", l.ID)
		}
		name := *l.ProviderLeaseID
		md := func(k string) string { s, _ := l.Metadata[k].(string); return s }
		if md("namespace") != c.tenant || md("workloadName") != name || md("backend") != backend {
			t.Errorf("lease %s metadata: namespace %q workloadName %q backend %q; want %q %q %q", l.ID, md("namespace"), md("workloadName"), md("backend"), c.tenant, name, backend)
		}
		w, ok := c.rec.find(workloadGVR, c.tenant, name)
		if !ok {
			t.Fatalf("lease %s: no %s %s/%s was ever seen", l.ID, workloadGVR.Resource, c.tenant, name)
		}
		seen := c.rec.byRun(w.RunID)
		var kinds []string
		for _, o := range seen {
			kinds = append(kinds, o.GVR.Resource)
		}
		for _, k := range []string{workloadGVR.Resource, "pods", "secrets"} {
			if !slices.Contains(kinds, k) {
				t.Errorf("lease %s: no %s of run %s was ever seen (seen: %v)", l.ID, k, w.RunID, seen)
			}
		}
		if np := md("scopedNetworkPolicyName"); np != "" {
			if _, ok := c.rec.find(gvrNetworkPolicy, c.tenant, np); !ok {
				t.Errorf("lease %s: the scoped NetworkPolicy %s was never seen", l.ID, np)
			}
		}
		var left []string
		err := waitFor(ctx, releaseDeadline, func() error {
			var err error
			if left, err = leftovers(ctx, dyn, c.tenant, w.RunID, seen); err != nil {
				return err
			}
			if len(left) > 0 {
				return fmt.Errorf("still there: %v", left)
			}
			return nil
		})
		if err != nil {
			t.Errorf("lease %s (%s): run objects not deleted within %v: %v", l.ID, name, releaseDeadline, err)
		} else {
			t.Logf("lease %s: %s released; gone: %v", l.ID, name, seen)
		}
	}
	ns, err := dyn.Resource(gvrNamespace).Get(ctx, c.tenant, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the tenant namespace: %v", err)
	}
	if ns.GetDeletionTimestamp() != nil {
		t.Errorf("the tenant namespace %s is being deleted", c.tenant)
	}
	if _, err := dyn.Resource(gvrSA).Namespace(c.tenant).Get(ctx, "paperclip-tenant-sa", metav1.GetOptions{}); err != nil {
		t.Errorf("the tenant ServiceAccount: %v", err)
	}
	return fresh
}

// podCalls counts the exec node's exec and log requests for the pods of a
// lease's run (the node logs names and exit codes only).
func (c *checker) podCalls(t *testing.T, nodeLog *lockedBuffer, l paperclip.Lease) (execs, logs int) {
	t.Helper()
	name := deref(l.ProviderLeaseID)
	var w seenObject
	var ok bool
	for _, gvr := range []schema.GroupVersionResource{gvrSandbox, gvrJob} {
		if w, ok = c.rec.find(gvr, c.tenant, name); ok {
			break
		}
	}
	if !ok {
		t.Fatalf("no workload %s was seen", name)
	}
	nodeLog.mu.Lock()
	text := nodeLog.buf.String()
	nodeLog.mu.Unlock()
	for _, o := range c.rec.byRun(w.RunID) {
		if o.GVR != gvrPod {
			continue
		}
		execs += strings.Count(text, "execnode: exec "+o.Namespace+"/"+o.Name+"/")
		logs += strings.Count(text, "execnode: logs "+o.Namespace+"/"+o.Name+"/")
	}
	return execs, logs
}

// buildPackage runs hack/build-npm.sh into dir.
func buildPackage(root, dir string) error {
	var out bytes.Buffer
	cmd := exec.Command("bash", filepath.Join(root, "hack", "build-npm.sh"), dir)
	cmd.Dir = root
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("hack/build-npm.sh: %w\n%s", err, out.String())
	}
	for _, f := range []string{"package.json", "manifest.js", "worker.js", filepath.Join("bin", "paperclip-k8s-linux-"+nodeArch())} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			return fmt.Errorf("hack/build-npm.sh did not write %s: %w\n%s", f, err, out.String())
		}
	}
	return nil
}

func repoRoot() (string, error) {
	d, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d, nil
		}
		p := filepath.Dir(d)
		if p == d {
			return "", errors.New("go.mod not found above the working directory")
		}
		d = p
	}
}

// nodeArch is Node's process.arch for this machine.
func nodeArch() string {
	switch runtime.GOARCH {
	case "amd64":
		return "x64"
	case "386":
		return "ia32"
	}
	return runtime.GOARCH
}

// describeSecretField says what the host stored for a secret-ref field,
// without its value.
func describeSecretField(v any) string {
	switch v := v.(type) {
	case string:
		return fmt.Sprintf("a plain string (%d bytes)", len(v))
	case map[string]any:
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		return fmt.Sprintf("an object with keys %v (type %v)", keys, v["type"])
	}
	return fmt.Sprintf("%T", v)
}

func withoutProvider(m map[string]any) map[string]any {
	out := map[string]any{}
	for k, v := range m {
		if k != "provider" && k != "reuseLease" {
			out[k] = v
		}
	}
	return out
}

func deref(p *string) string {
	if p == nil {
		return "<nil>"
	}
	return *p
}
