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

// TestPaperclipLiveOutput: a run's output reaches Paperclip's run log while
// the agent is still running, through the real paperclip-server, and the
// run ends as any run does.
//
// The fake agent prints line N, then waits for a file the test creates
// only once the run's log (GET /api/heartbeat-runs/:id/log) shows line N
// and not line N+1 (pod commands run on this machine, so the test writes
// the file directly): the log grows while the command runs, and no fixed
// sleep is involved. The run must then end as before: succeeded, exit code
// 0, every line exactly once in the log, the lease released and its
// objects gone, the workspace synced in and out through the plugin.
//
//   - acp engine: claude_local's default engine. The manifest declares
//     sandboxCapabilities.incrementalSessionOutput, so the host runs the
//     agent as one long exec whose output the plugin streams as execute.log
//     notifications ("Starting streamed ACP process session bridge"),
//     instead of starting it in the background and reading its event files
//     with an exec every 100 ms.
//   - cli engine, streamRunLogs false: the host does not tee the CLI's
//     output into files it tails with an exec every 250 ms (its default for
//     the CLI engine, which needs no capability); the lines reach the log
//     only through the agent command's execute.log notifications.
func TestPaperclipLiveOutput(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the paperclip harness reads /proc and uses Linux process groups")
	}
	s := startStack(t, stackOptions{})
	company, c := s.company(t, "e2e live output")
	for _, tc := range []struct {
		name, engine string
		fake         string // the agent's program, a format of (release dir, lines)
		config       map[string]any
		bridge       string // what the log must say about how the agent ran
		notBridge    string // and must not say
		result       any    // resultJson.result
	}{
		{name: "acp engine", engine: "acp", fake: fakeACPAgent, config: s.config("sandbox"),
			bridge: "Starting streamed ACP process session bridge in sandbox (kubernetes)", notBridge: "Starting ACP process session bridge"},
		{name: "cli engine, streamRunLogs false", engine: "cli", fake: fakeLiveClaude,
			config: with(s.config("sandbox"), "streamRunLogs", false), result: "done (fake)",
			bridge: "Starting sandbox callback bridge for claude in", notBridge: "Sandbox run log streaming enabled"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			is := is.New(t)
			releaseDir := t.TempDir()
			prog := filepath.Join(s.sandboxBin, "fake-live-"+tc.engine)
			is.NoErr(os.WriteFile(prog, []byte(fmt.Sprintf(tc.fake, releaseDir, liveLines)), 0o755))
			e, err := s.srv.CreateEnvironment(s.ctx, company.ID, "k8s-live-"+tc.engine, tc.config)
			is.NoErr(err)
			adapterConfig := map[string]any{"engine": tc.engine, "agentCommand": prog}
			if tc.engine == "cli" {
				adapterConfig = map[string]any{"engine": tc.engine, "command": prog}
			}
			agent, err := s.srv.CreateAgent(s.ctx, company.ID, paperclip.AgentSpec{
				Name: "e2e-live-" + tc.engine, AdapterType: "claude_local",
				AdapterConfig: adapterConfig, DefaultEnvironmentID: e.ID,
			})
			is.NoErr(err)
			before := c.leaseIDs(s.ctx, t, e.ID)
			syncedBefore := s.fileSyncCalls(t)
			run, err := s.srv.Wakeup(s.ctx, agent.ID, "e2e live output "+tc.engine)
			is.NoErr(err)
			started := time.Now()

			for n := 1; n <= liveLines; n++ {
				want := fmt.Sprintf("live line %d", n)
				var log string
				err := waitFor(s.ctx, 3*time.Minute, func() error {
					r, err := s.srv.GetRun(s.ctx, run.ID)
					if err != nil {
						return err
					}
					if r.Terminal() {
						return fmt.Errorf("run %s ended (%s, error %q) before its log showed %q", run.ID, r.Status, deref(r.Error), want)
					}
					if log, err = runLog(s.ctx, s.srv, run.ID); err != nil {
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
				t.Logf("%v: the log of running run %s shows %q", time.Since(started).Round(time.Millisecond), run.ID, want)
				if next := fmt.Sprintf("live line %d", n+1); strings.Contains(log, next) {
					t.Fatalf("the log shows %q before the test released it", next)
				}
				if n < liveLines {
					is.NoErr(os.WriteFile(filepath.Join(releaseDir, fmt.Sprintf("release-%d", n)), nil, 0o644))
				}
			}

			wctx, cancel := context.WithTimeout(s.ctx, 3*time.Minute)
			defer cancel()
			run, err = s.srv.WaitRun(wctx, run.ID)
			is.NoErr(err)
			log, err := runLog(s.ctx, s.srv, run.ID)
			is.NoErr(err)
			t.Logf("run %s: status %q error %q code %q exit %s result %v", run.ID, run.Status, deref(run.Error), deref(run.ErrorCode), exitCode(run.ExitCode), run.ResultJSON["result"])
			if run.Status != "succeeded" {
				t.Fatalf("run %s: status %q error %q code %q\nlog:\n%s", run.ID, run.Status, deref(run.Error), deref(run.ErrorCode), log)
			}
			t.Logf("run log:\n%s", log)
			is.Equal(exitCode(run.ExitCode), "0")
			is.Equal(run.ResultJSON["result"], tc.result)
			is.True(strings.Contains(log, tc.bridge))     // how the host ran the agent
			is.True(!strings.Contains(log, tc.notBridge)) // and not the other way
			for n := 1; n <= liveLines; n++ {
				is.Equal(strings.Count(log, fmt.Sprintf("live line %d", n)), 1) // once: not again at the end
			}
			ls := c.released(s.ctx, t, e.ID, before, "sandbox", "released")
			is.True(ls[0].HeartbeatRunID != nil && *ls[0].HeartbeatRunID == run.ID)
			execs, _ := c.podCalls(t, s.nodeLog, ls[0])
			t.Logf("the run's pod served %d execs", execs)
			synced := s.fileSyncCalls(t)
			is.True(synced["environmentSyncIn"] > syncedBefore["environmentSyncIn"])   // the workspace went in through the plugin
			is.True(synced["environmentSyncOut"] > syncedBefore["environmentSyncOut"]) // and came back through it
		})
	}

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
