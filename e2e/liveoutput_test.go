package e2e_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/paperclip-k8s/paperclip-k8s/e2e/paperclip"
	"github.com/paperclip-k8s/paperclip-k8s/plugin"
)

// liveLines is how many lines the fake agents print, one at a time.
const liveLines = 5

// fakeACPAgent is an ACP agent (JSON-RPC 2.0 over NDJSON on stdio, the
// Agent Client Protocol the host's ACP engine speaks) without an LLM: it
// answers initialize and session/new, and on session/prompt sends one
// agent_message_chunk "live line N" per line, then waits until the file
// release-N exists in its release directory (the format's first argument)
// before the next one. It ends the turn with end_turn after the last line.
const fakeACPAgent = `#!/usr/bin/env node
const fs = require("fs");
const path = require("path");
const releaseDir = %[1]q;
const lines = %[2]d;
function send(m) { process.stdout.write(JSON.stringify(Object.assign({jsonrpc: "2.0"}, m)) + "\n"); }
function released(n) {
  const f = path.join(releaseDir, "release-" + n);
  return new Promise((resolve) => {
    if (fs.existsSync(f)) return resolve();
    const w = fs.watch(releaseDir, () => { if (fs.existsSync(f)) { w.close(); resolve(); } });
    if (fs.existsSync(f)) { w.close(); resolve(); }
  });
}
async function prompt(id, sessionId) {
  for (let n = 1; n <= lines; n++) {
    send({method: "session/update", params: {sessionId, update: {sessionUpdate: "agent_message_chunk", content: {type: "text", text: "live line " + n + "\n"}}}});
    if (n < lines) await released(n);
  }
  send({id, result: {stopReason: "end_turn"}});
}
let buf = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (d) => {
  buf += d;
  let i;
  while ((i = buf.indexOf("\n")) >= 0) {
    const line = buf.slice(0, i); buf = buf.slice(i + 1);
    if (!line.trim()) continue;
    let m; try { m = JSON.parse(line); } catch { continue; }
    if (m.id === undefined || m.method === undefined) continue;
    switch (m.method) {
    case "initialize":
      send({id: m.id, result: {protocolVersion: 1, agentCapabilities: {loadSession: false}, authMethods: []}}); break;
    case "session/new":
      send({id: m.id, result: {sessionId: "fake-acp-session-1"}}); break;
    case "session/prompt":
      prompt(m.id, m.params.sessionId); break;
    case "authenticate": case "session/set_mode": case "session/set_config_option": case "session/set_model":
      send({id: m.id, result: {}}); break;
    default:
      send({id: m.id, error: {code: -32601, message: "fake agent: no method " + m.method}});
    }
  }
});
process.stdin.on("end", () => process.exit(0));
`

// fakeLiveClaude is the fake claude CLI of k8s_test.go (stream-json, no
// LLM) printing one assistant message "live line N" per line and waiting,
// like fakeACPAgent, for release-N before the next one.
const fakeLiveClaude = `#!/bin/sh
if [ "$1" = "--version" ]; then echo "2.0.0 (Claude Code)"; exit 0; fi
cat > /dev/null
echo '{"type":"system","subtype":"init","session_id":"fake-session-1","model":"fake-model","tools":[]}'
n=1
while [ "$n" -le %[2]d ]; do
  echo '{"type":"assistant","session_id":"fake-session-1","message":{"role":"assistant","content":[{"type":"text","text":"live line '"$n"'"}]}}'
  if [ "$n" -lt %[2]d ]; then until [ -e %[1]q/release-"$n" ]; do sleep 0.05; done; fi
  n=$((n + 1))
done
echo '{"type":"result","subtype":"success","is_error":false,"result":"done (fake)","session_id":"fake-session-1","num_turns":1,"total_cost_usd":0,"usage":{"input_tokens":1,"output_tokens":1}}'
`

// Where the host's log says how it ran the agent.
const (
	streamedACP = "Starting streamed ACP process session bridge in sandbox (kubernetes)"
	polledACP   = "Starting ACP process session bridge in sandbox (kubernetes)"
	cliBridge   = "Starting sandbox callback bridge for claude in"
	cliTail     = "Sandbox run log streaming enabled"
)

// TestPaperclipLiveOutput: a run's output reaches Paperclip's run log while
// the agent is still running, through the real paperclip-server and the
// package as shipped, and the run ends as any run does.
//
// The fake agent prints line N, then waits for a file the test creates
// only once the run's log (GET /api/heartbeat-runs/:id/log) shows line N
// and not line N+1 (pod commands run on this machine, so the test writes
// the file directly): the log grows while the command runs, and no fixed
// sleep is involved (liveAgent). The run must then end as before:
// succeeded, exit code 0, every line exactly once in the log, the lease
// released and its objects gone, the workspace synced in and out through
// the plugin.
//
//   - acp engine: claude_local's default. Without the operator's opt-in
//     (TestPaperclipLiveOutputStreamed) the host starts the agent in the
//     background and reads its event files with short execs.
//   - cli engine, streamRunLogs false: the host does not tee the CLI's
//     output into files it tails (its default for the CLI engine); the
//     lines reach the log only through the agent command's execute.log
//     notifications, which the plugin sends as the output comes.
//   - two companies at once: ACP runs of two companies overlap on the one
//     worker and both go through (with incrementalSessionOutput declared,
//     paperclip-server 2026.916.1 stops passing execute.log for both and
//     both sessions hang: why the capability is an opt-in).
func TestPaperclipLiveOutput(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the paperclip harness reads /proc and uses Linux process groups")
	}
	s := startStack(t, stackOptions{})
	companyA, checkA := s.company(t, "e2e live output")
	t.Run("acp engine", func(t *testing.T) {
		a := startLiveAgent(t, s, companyA.ID, checkA, "acp", "acp", s.config("sandbox"))
		a.follow(t)
		a.finish(t, polledACP, streamedACP, nil)
	})
	t.Run("cli engine, streamRunLogs false", func(t *testing.T) {
		a := startLiveAgent(t, s, companyA.ID, checkA, "cli", "cli", with(s.config("sandbox"), "streamRunLogs", false))
		a.follow(t)
		a.finish(t, cliBridge, cliTail, "done (fake)")
	})
	t.Run("two companies at once", func(t *testing.T) {
		companyB, checkB := s.company(t, "e2e live output B")
		a := startLiveAgent(t, s, companyA.ID, checkA, "acp-a", "acp", s.config("sandbox"))
		a.awaitLine(t, 1)
		b := startLiveAgent(t, s, companyB.ID, checkB, "acp-b", "acp", s.config("sandbox"))
		b.awaitLine(t, 1) // while a's agent runs
		for n := 1; n < liveLines; n++ {
			a.release(t, n)
			b.release(t, n)
			a.awaitLine(t, n+1)
			b.awaitLine(t, n+1)
		}
		a.finish(t, polledACP, streamedACP, nil)
		b.finish(t, polledACP, streamedACP, nil)
	})
}

// TestPaperclipLiveOutputStreamed: with the operator's opt-in
// (PAPERCLIP_K8S_INCREMENTAL_SESSION_OUTPUT=1 when the package is built) the
// manifest declares sandboxCapabilities.incrementalSessionOutput, and the
// host's ACP engine runs the agent as one exec that lasts the whole session
// and reads its messages from the plugin's execute.log notifications
// ("Starting streamed ACP process session bridge"). Same checks as
// TestPaperclipLiveOutput.
func TestPaperclipLiveOutputStreamed(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the paperclip harness reads /proc and uses Linux process groups")
	}
	t.Setenv(plugin.IncrementalSessionOutputEnv, "1") // read by hack/build-npm.sh's `paperclip-k8s manifest`
	s := startStack(t, stackOptions{})
	company, c := s.company(t, "e2e live output streamed")
	a := startLiveAgent(t, s, company.ID, c, "acp", "acp", s.config("sandbox"))
	a.follow(t)
	a.finish(t, streamedACP, polledACP, nil)
}

// liveAgent is a claude_local agent whose fake program (fakeACPAgent for
// the acp engine, fakeLiveClaude for cli) prints liveLines lines, each one
// after the test released the previous one, and its run.
type liveAgent struct {
	s            *stack
	c            *checker
	env          paperclip.Environment
	releaseDir   string
	before       map[string]bool // the environment's lease rows before the run
	syncedBefore map[string]int
	run          paperclip.Run
	started      time.Time
}

// startLiveAgent writes the fake program, creates an environment of config
// and the agent in the company, and wakes the agent.
func startLiveAgent(t *testing.T, s *stack, companyID string, c *checker, name, engine string, config map[string]any) *liveAgent {
	t.Helper()
	is := is.New(t)
	a := &liveAgent{s: s, c: c, releaseDir: t.TempDir()}
	fake, adapterConfig := fakeACPAgent, map[string]any{"engine": "acp", "agentCommand": ""}
	prog := filepath.Join(s.sandboxBin, "fake-live-"+name)
	if engine == "cli" {
		fake, adapterConfig = fakeLiveClaude, map[string]any{"engine": "cli", "command": prog}
	} else {
		adapterConfig["agentCommand"] = prog
	}
	is.NoErr(os.WriteFile(prog, []byte(fmt.Sprintf(fake, a.releaseDir, liveLines)), 0o755))
	var err error
	a.env, err = s.srv.CreateEnvironment(s.ctx, companyID, "k8s-live-"+name, config)
	is.NoErr(err)
	agent, err := s.srv.CreateAgent(s.ctx, companyID, paperclip.AgentSpec{
		Name: "e2e-live-" + name, AdapterType: "claude_local",
		AdapterConfig: adapterConfig, DefaultEnvironmentID: a.env.ID,
	})
	is.NoErr(err)
	a.before = c.leaseIDs(s.ctx, t, a.env.ID)
	a.syncedBefore = s.fileSyncCalls(t)
	a.run, err = s.srv.Wakeup(s.ctx, agent.ID, "e2e live output "+name)
	is.NoErr(err)
	a.started = time.Now()
	return a
}

// follow waits for each line in turn and releases the next one.
func (a *liveAgent) follow(t *testing.T) {
	t.Helper()
	for n := 1; n <= liveLines; n++ {
		a.awaitLine(t, n)
		if n < liveLines {
			a.release(t, n)
		}
	}
}

// awaitLine waits until the log of the still running run shows line n,
// then checks that it does not show line n+1, which the agent prints only
// once the test released it.
func (a *liveAgent) awaitLine(t *testing.T, n int) {
	t.Helper()
	s := a.s
	want := fmt.Sprintf("live line %d", n)
	var log string
	err := waitFor(s.ctx, 3*time.Minute, func() error {
		r, err := s.srv.GetRun(s.ctx, a.run.ID)
		if err != nil {
			return err
		}
		if r.Terminal() {
			return fmt.Errorf("run %s ended (%s, error %q) before its log showed %q", a.run.ID, r.Status, deref(r.Error), want)
		}
		if log, err = runLog(s.ctx, s.srv, a.run.ID); err != nil {
			return err
		}
		if !strings.Contains(log, want) {
			return fmt.Errorf("the run's log does not show %q yet", want)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("line %d: %v\nlog so far:\n%s", n, err, log)
	}
	t.Logf("%v: the log of running run %s shows %q", time.Since(a.started).Round(time.Millisecond), a.run.ID, want)
	if next := fmt.Sprintf("live line %d", n+1); strings.Contains(log, next) {
		t.Fatalf("the log shows %q before the test released it", next)
	}
}

// release lets the agent print line n+1.
func (a *liveAgent) release(t *testing.T, n int) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(a.releaseDir, fmt.Sprintf("release-%d", n)), nil, 0o644); err != nil {
		t.Fatal(err)
	}
}

// finish waits for the run's end and checks it ended as any run does: the
// log says bridge (how the host ran the agent) and not notBridge.
func (a *liveAgent) finish(t *testing.T, bridge, notBridge string, result any) {
	t.Helper()
	is := is.New(t)
	s := a.s
	wctx, cancel := context.WithTimeout(s.ctx, 3*time.Minute)
	defer cancel()
	run, err := s.srv.WaitRun(wctx, a.run.ID)
	is.NoErr(err)
	log, err := runLog(s.ctx, s.srv, run.ID)
	is.NoErr(err)
	t.Logf("run %s: status %q error %q code %q exit %s result %v", run.ID, run.Status, deref(run.Error), deref(run.ErrorCode), exitCode(run.ExitCode), run.ResultJSON["result"])
	if run.Status != "succeeded" {
		t.Fatalf("run %s: status %q error %q code %q\nlog:\n%s", run.ID, run.Status, deref(run.Error), deref(run.ErrorCode), log)
	}
	is.Equal(exitCode(run.ExitCode), "0")
	is.Equal(run.ResultJSON["result"], result)
	if !strings.Contains(log, bridge) || strings.Contains(log, notBridge) {
		t.Errorf("the log should say %q and not %q:\n%s", bridge, notBridge, log)
	}
	for n := 1; n <= liveLines; n++ {
		is.Equal(strings.Count(log, fmt.Sprintf("live line %d", n)), 1) // once: not again at the end
	}
	ls := a.c.released(s.ctx, t, a.env.ID, a.before, "sandbox", "released")
	is.True(ls[0].HeartbeatRunID != nil && *ls[0].HeartbeatRunID == run.ID)
	execs, _ := a.c.podCalls(t, s.nodeLog, ls[0])
	t.Logf("the run's pod served %d execs", execs)
	synced := s.fileSyncCalls(t)
	is.True(synced["environmentSyncIn"] > a.syncedBefore["environmentSyncIn"])   // the workspace went in through the plugin
	is.True(synced["environmentSyncOut"] > a.syncedBefore["environmentSyncOut"]) // and came back through it
}

func with(m map[string]any, k string, v any) map[string]any {
	m[k] = v
	return m
}

func exitCode(p *int) string {
	if p == nil {
		return "<nil>"
	}
	return fmt.Sprint(*p)
}

// runLog returns the text of a run's log (GET /api/heartbeat-runs/:id/log,
// NDJSON records {ts, stream, chunk}), its chunks concatenated in order.
func runLog(ctx context.Context, srv *paperclip.Server, runID string) (string, error) {
	var raw strings.Builder
	offset := 0
	for {
		u := fmt.Sprintf("%s/api/heartbeat-runs/%s/log?offset=%d&limitBytes=1000000", srv.BaseURL, url.PathEscape(runID), offset)
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return "", err
		}
		resp, err := srv.HTTP.Do(req)
		if err != nil {
			return "", err
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return "", err
		}
		if resp.StatusCode == http.StatusNotFound {
			return "", nil // no log yet
		}
		if resp.StatusCode != http.StatusOK {
			return "", fmt.Errorf("GET %s: HTTP %d: %s", u, resp.StatusCode, body)
		}
		var page struct {
			Content    string `json:"content"`
			NextOffset *int   `json:"nextOffset"`
		}
		if err := json.Unmarshal(body, &page); err != nil {
			return "", fmt.Errorf("GET %s: %w", u, err)
		}
		raw.WriteString(page.Content)
		if page.NextOffset == nil || *page.NextOffset <= offset || page.Content == "" {
			break
		}
		offset = *page.NextOffset
	}
	var text strings.Builder
	for _, l := range strings.Split(raw.String(), "\n") {
		if strings.TrimSpace(l) == "" {
			continue
		}
		var rec struct {
			Stream string `json:"stream"`
			Chunk  string `json:"chunk"`
		}
		if err := json.Unmarshal([]byte(l), &rec); err != nil {
			continue // a record cut by the page size is read again whole on the next call
		}
		text.WriteString(rec.Chunk)
	}
	return text.String(), nil
}
