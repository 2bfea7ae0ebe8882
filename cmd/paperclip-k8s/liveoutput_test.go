package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/matryer/is"
)

// TestWorkerExecuteLogLive: a command's output reaches the host as
// execute.log notifications while the command still runs, and no chunk ends
// inside a UTF-8 sequence (the host keeps the streamed text only if it is a
// prefix of the final stdout; a split "é" would reach it as U+FFFD). The
// command prints "caf" and the first byte of "é", then waits for a file the
// test creates only once the first chunk has arrived (pod commands run on
// this machine), then prints the rest. The execute env's secret value is
// never in a notification.
func TestWorkerExecuteLogLive(t *testing.T) {
	is := is.New(t)
	h := newHooks(t, "sandbox", nil)
	l := h.acquire(nil)
	h.exec(l, "true", nil) // wait for the pod once

	gate := filepath.Join(t.TempDir(), "go-on")
	secret := "SENTINEL-LIVE-" + randHex(8)
	cmd := fmt.Sprintf(`printf 'caf\303'; printf 'err ' >&2; until [ -e %q ]; do sleep 0.02; done; printf '\251 done\n'; printf 'end\n' >&2`, gate)
	id, inv := h.w.request("environmentExecute", h.execParams(l, cmd, map[string]any{"env": map[string]string{"LIVE_SECRET": secret}}))
	is.True(inv != "")

	// chunks reads the call's notifications; the caller holds h.w.mu.
	chunks := func() (out []string) {
		for _, m := range h.w.out {
			if m.method == "execute.log" && m.id == nil && m.invID == inv {
				var p struct{ Stream, Chunk string }
				is.NoErr(json.Unmarshal(m.params, &p))
				out = append(out, p.Stream+":"+p.Chunk)
			}
		}
		return out
	}
	var first []string
	ok := h.w.waitUntil(time.Minute, func() bool {
		first = chunks()
		return strings.Contains(strings.Join(first, "|"), "stdout:caf")
	})
	if !ok {
		t.Fatalf("no stdout chunk while the command waits: %q", first)
	}
	is.True(!h.w.hasReply(id)) // the command is still waiting for the gate
	t.Logf("while the command waits: %q", first)
	for _, c := range first {
		is.True(utf8.ValidString(c))            // "\303" is held back,
		is.True(!strings.Contains(c, "\ufffd")) // not sent as U+FFFD
	}
	is.NoErr(os.WriteFile(gate, nil, 0o644))

	m := h.w.reply(id)
	is.True(m.err == nil)
	var r executeResult
	is.NoErr(json.Unmarshal(m.result, &r))
	is.Equal(r.code(), 0)
	is.Equal(r.Stdout, "café done\n")
	streamed := map[string]string{}
	h.w.mu.Lock()
	all := chunks()
	h.w.mu.Unlock()
	for _, c := range all {
		stream, chunk, _ := strings.Cut(c, ":")
		streamed[stream] += chunk
	}
	is.Equal(streamed["stdout"], r.Stdout)
	is.Equal(streamed["stderr"], r.Stderr)
	is.Equal(r.Stderr, "err end\n")
	for _, msg := range h.w.stdoutLines() {
		if strings.Contains(string(msg.raw), secret) {
			t.Errorf("the execute env's value appears on stdout: %s", clip(msg.raw))
		}
	}
}
