package main

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/matryer/is"
)

// hostLog is a `log` request the worker sent (the host writes it to its log
// at its level and stores it for GET /api/plugins/:id/logs).
type hostLog struct {
	msg       *message
	index     int            // position among the stdout lines
	Level     string         `json:"level"`
	Message   string         `json:"message"`
	Meta      map[string]any `json:"meta"`
	CompanyID string         `json:"companyId"`
}

// hostLogs returns the `log` requests received so far, in order.
func (w *proc) hostLogs() []hostLog {
	w.t.Helper()
	var out []hostLog
	for i, m := range w.stdoutLines() {
		if m.method != "log" {
			continue
		}
		if m.id == nil {
			w.t.Errorf("a log notification (the host stores only log requests): %s", m.raw)
			continue
		}
		l := hostLog{msg: m, index: i}
		if err := json.Unmarshal(m.params, &l); err != nil {
			w.t.Fatalf("log params: %v: %s", err, m.raw)
		}
		out = append(out, l)
	}
	return out
}

// diagnostics returns what the worker logged, wherever it went: its stderr
// lines and its `log` requests (raw lines). Secret scans read this.
func (w *proc) diagnostics() []string {
	out := w.stderrLines()
	for _, l := range w.hostLogs() {
		out = append(out, string(l.msg.raw))
	}
	return out
}

// A failed hook is logged once through the protocol: a `log` request at
// level error with the method, the error, the company (the host's
// invocation scope), the run and the duration, sent before the reply while
// the invocation is open. Nothing of it goes to stderr, and the config's
// kubeconfig does not appear in it.
func TestWorkerLogsFailedHookToHost(t *testing.T) {
	is := is.New(t)
	w := startWorker(t)
	w.initialize()
	const secret = "SENTINEL-kubeconfig-not-yaml"
	params := map[string]any{
		"driverKey": "kubernetes", "companyId": "co-logs", "environmentId": "env-logs", "runId": "run-logs",
		"agentId": "agent-1", "adapterType": "claude_local", "workspaceMode": "isolated_workspace",
		"config": map[string]any{"kubeconfig": "apiVersion: v1\nclusters: [" + secret, "backend": "sandbox"},
	}
	id, inv := w.request("environmentAcquireLease", params)
	reply := w.reply(id)
	is.True(reply.err != nil)

	var failed []hostLog
	for _, l := range w.hostLogs() {
		if l.Meta["method"] == "environmentAcquireLease" {
			failed = append(failed, l)
		}
	}
	is.Equal(len(failed), 1) // logged once
	l := failed[0]
	is.Equal(l.Level, "error")
	is.Equal(l.Message, "environmentAcquireLease failed")
	is.Equal(l.CompanyID, "co-logs")
	is.Equal(l.msg.invID, inv) // within the hook's invocation: the host accepts the company
	is.Equal(l.Meta["error"], reply.err.Message)
	is.Equal(l.Meta["code"], float64(reply.err.Code))
	is.Equal(l.Meta["environmentId"], "env-logs")
	is.Equal(l.Meta["runId"], "run-logs")
	_, ok := l.Meta["durationMs"]
	is.True(ok)
	replyAt := slices.IndexFunc(w.stdoutLines(), func(m *message) bool { return m == reply })
	is.True(l.index < replyAt) // before the reply
	is.True(!strings.Contains(string(l.msg.raw), secret))
	for _, line := range w.stderrLines() {
		is.True(!strings.Contains(line, "environmentAcquireLease")) // the host's log, not stderr
	}
}

// The provider's own records reach the host with their company: "lease
// acquired" carries the companyId attribute, sent within the acquire's
// invocation.
func TestWorkerLogsCarryTheCompany(t *testing.T) {
	is := is.New(t)
	h := newHooks(t, "sandbox", nil)
	l := h.acquire(nil)
	var acquired []hostLog
	for _, hl := range h.w.hostLogs() {
		if hl.Message == "lease acquired" {
			acquired = append(acquired, hl)
		}
	}
	is.Equal(len(acquired), 1)
	is.Equal(acquired[0].Level, "info")
	is.Equal(acquired[0].CompanyID, h.company)
	is.True(acquired[0].msg.invID != "")
	is.True(strings.HasSuffix(acquired[0].Meta["workload"].(string), l.id()))
	h.w.mustCall("environmentDestroyLease", h.leaseParams(l), nil)
}
