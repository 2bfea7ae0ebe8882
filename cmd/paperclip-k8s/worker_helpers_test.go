package main

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// callTimeout bounds the wait for one reply.
const callTimeout = 2 * time.Minute

// rpcError is a JSON-RPC error object as the worker sends it.
type rpcError struct {
	Code    int             `json:"code"`
	Message string          `json:"message"`
	Data    json.RawMessage `json:"data,omitempty"`
}

func (e *rpcError) Error() string { return fmt.Sprintf("rpc error %d: %s", e.Code, e.Message) }

// message is one line the worker wrote on stdout.
type message struct {
	raw    []byte
	at     time.Time
	id     json.RawMessage // nil when the line has no "id"
	method string
	params json.RawMessage
	result json.RawMessage // nil when the line has no "result"
	err    *rpcError
	invID  string // top-level paperclipInvocationId
}

// idKey is how replies are looked up: the id's JSON text.
func (m *message) idKey() string { return string(m.id) }

// proc is the built binary running as a plugin worker, driven through its
// stdin and stdout the way paperclip-server drives it. Every stdout line is
// checked against the protocol's envelope rules; every stdout and stderr
// line is kept (for the secrets scan).
type proc struct {
	t     testing.TB
	cmd   *exec.Cmd
	stdin io.WriteCloser
	wmu   sync.Mutex
	ids   atomic.Int64

	mu       sync.Mutex
	changed  chan struct{} // closed and replaced on every new line or exit
	out      []*message
	replies  map[string]*message
	invalid  []string
	stderr   []string
	exited   bool
	exitErr  error
	exitAt   time.Time
	exitCode int

	readers sync.WaitGroup
}

type workerOpts struct {
	env []string // extra KEY=VALUE entries
}

// startWorker runs the binary with no arguments (the worker) and stops it
// in t.Cleanup (stdin closed, then killed if it does not exit). At cleanup
// it fails the test if any stdout line was not a protocol message.
func startWorker(t testing.TB, opts ...workerOpts) *proc {
	t.Helper()
	var o workerOpts
	if len(opts) > 0 {
		o = opts[0]
	}
	cmd := exec.Command(workerBin)
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PAPERCLIP_K8S_DEBUG=") || strings.HasSuffix(strings.SplitN(kv, "=", 2)[0], "_API_KEY") {
			continue
		}
		cmd.Env = append(cmd.Env, kv)
	}
	cmd.Env = append(cmd.Env, o.env...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	w := &proc{t: t, cmd: cmd, stdin: stdin, changed: make(chan struct{}), replies: map[string]*message{}}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.readers.Add(2)
	go w.readStdout(stdout)
	go w.readStderr(stderr)
	go func() {
		w.readers.Wait()
		err := cmd.Wait()
		w.mu.Lock()
		w.exited, w.exitErr, w.exitAt = true, err, time.Now()
		w.exitCode = cmd.ProcessState.ExitCode()
		w.signal()
		w.mu.Unlock()
	}()
	t.Cleanup(func() {
		_ = w.stdin.Close()
		if !w.waitExit(5 * time.Second) {
			_ = cmd.Process.Kill()
			w.waitExit(5 * time.Second)
		}
		w.mu.Lock()
		defer w.mu.Unlock()
		for _, bad := range w.invalid {
			t.Errorf("stdout carried a line that is not a valid protocol message: %s", bad)
		}
		if t.Failed() {
			t.Logf("worker stderr (%d lines):\n%s", len(w.stderr), tail(strings.Join(w.stderr, "\n"), 8000))
		}
	})
	return w
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}

// signal wakes every waiter; w.mu must be held.
func (w *proc) signal() {
	close(w.changed)
	w.changed = make(chan struct{})
}

func (w *proc) readStdout(r io.Reader) {
	defer w.readers.Done()
	br := bufio.NewReaderSize(r, 1<<20)
	for {
		line, err := br.ReadBytes('\n')
		if len(line) > 0 {
			w.addStdout(line, err == nil)
		}
		if err != nil {
			return
		}
	}
}

func (w *proc) readStderr(r io.Reader) {
	defer w.readers.Done()
	br := bufio.NewReaderSize(r, 1<<20)
	for {
		line, err := br.ReadString('\n')
		if line != "" {
			w.mu.Lock()
			w.stderr = append(w.stderr, strings.TrimSuffix(line, "\n"))
			w.mu.Unlock()
		}
		if err != nil {
			return
		}
	}
}

func (w *proc) addStdout(line []byte, terminated bool) {
	m, problem := parseLine(line)
	if !terminated && problem == "" {
		problem = "line not terminated by \\n"
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if problem != "" {
		w.invalid = append(w.invalid, fmt.Sprintf("%s: %.300q", problem, line))
	}
	if m != nil {
		w.out = append(w.out, m)
		if m.method == "" && m.id != nil && m.idKey() != "null" {
			if _, dup := w.replies[m.idKey()]; dup {
				w.invalid = append(w.invalid, "two replies with the id "+m.idKey())
			}
			w.replies[m.idKey()] = m
		}
	}
	w.signal()
}

// parseLine checks one stdout line against the envelope rules the host
// applies (paperclip-protocol.md §1.1, §3.5) and returns the message, or a
// description of the problem.
func parseLine(line []byte) (*message, string) {
	m := &message{raw: append([]byte(nil), line...), at: time.Now()}
	var env map[string]json.RawMessage
	if err := json.Unmarshal(line, &env); err != nil {
		return nil, "not a JSON object (" + err.Error() + ")"
	}
	for k := range env {
		switch k {
		case "jsonrpc", "id", "method", "params", "result", "error", "paperclipInvocationId":
		default:
			return m, "unexpected top-level key " + strconv.Quote(k)
		}
	}
	if string(env["jsonrpc"]) != `"2.0"` {
		return m, `"jsonrpc" is not "2.0"`
	}
	if inv, ok := env["paperclipInvocationId"]; ok {
		if err := json.Unmarshal(inv, &m.invID); err != nil || m.invID == "" {
			return m, "paperclipInvocationId is not a non-empty string"
		}
	}
	id, hasID := env["id"]
	if hasID {
		m.id = id
	}
	if rawMethod, ok := env["method"]; ok {
		if err := json.Unmarshal(rawMethod, &m.method); err != nil || m.method == "" {
			return m, `"method" is not a non-empty string`
		}
		m.params = env["params"]
		if _, ok := env["result"]; ok {
			return m, "a request or notification carries result"
		}
		if _, ok := env["error"]; ok {
			return m, "a request or notification carries error"
		}
		if hasID && string(id) == "null" {
			return m, "a worker request has a null id"
		}
		if len(m.params) > 0 && m.params[0] != '{' {
			return m, "params is not an object"
		}
		return m, ""
	}
	if !hasID {
		return m, `neither "method" nor "id"`
	}
	result, hasResult := env["result"]
	rawErr, hasErr := env["error"]
	switch {
	case hasResult && hasErr:
		return m, "a reply carries both result and error"
	case hasResult:
		m.result = result
	case hasErr:
		var e rpcError
		dec := json.NewDecoder(bytes.NewReader(rawErr))
		if err := dec.Decode(&e); err != nil || string(rawErr) == "null" {
			return m, "error is not an object"
		}
		var shape map[string]json.RawMessage
		_ = json.Unmarshal(rawErr, &shape)
		if _, ok := shape["code"]; !ok {
			return m, "error has no code"
		}
		if _, ok := shape["message"]; !ok {
			return m, "error has no message"
		}
		m.err = &e
	default:
		return m, "a reply carries neither result nor error"
	}
	return m, ""
}

// waitUntil waits until cond (called with w.mu held) is true or d passes.
func (w *proc) waitUntil(d time.Duration, cond func() bool) bool {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		w.mu.Lock()
		if cond() {
			w.mu.Unlock()
			return true
		}
		ch := w.changed
		w.mu.Unlock()
		select {
		case <-ch:
		case <-deadline.C:
			w.mu.Lock()
			ok := cond()
			w.mu.Unlock()
			return ok
		}
	}
}

// waitExit waits for the process to exit.
func (w *proc) waitExit(d time.Duration) bool {
	return w.waitUntil(d, func() bool { return w.exited })
}

// exit returns the exit code and time (valid after waitExit).
func (w *proc) exit() (code int, at time.Time, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.exitCode, w.exitAt, w.exitErr
}

// send writes one line (a "\n" is appended).
func (w *proc) send(line string) {
	w.t.Helper()
	w.wmu.Lock()
	defer w.wmu.Unlock()
	if _, err := io.WriteString(w.stdin, line+"\n"); err != nil {
		w.t.Fatalf("writing to the worker: %v", err)
	}
}

// sendFrom streams r to stdin (holding the write lock: nothing interleaves).
func (w *proc) sendFrom(r io.Reader) error {
	w.wmu.Lock()
	defer w.wmu.Unlock()
	_, err := io.Copy(w.stdin, r)
	return err
}

func newInvocationID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return "inv-" + hex.EncodeToString(b)
}

// request sends a request with a fresh numeric id. When params carry a
// companyId the request carries a paperclipInvocation (as the host's does)
// and its id is returned.
func (w *proc) request(method string, params any) (id, invID string) {
	w.t.Helper()
	id = strconv.FormatInt(w.ids.Add(1), 10)
	env := map[string]any{"jsonrpc": "2.0", "id": json.RawMessage(id), "method": method}
	if params != nil {
		env["params"] = params
		if company := companyOf(params); company != "" {
			invID = newInvocationID()
			env["paperclipInvocation"] = map[string]any{"id": invID, "scope": map[string]any{"companyId": company}}
		}
	}
	b, err := json.Marshal(env)
	if err != nil {
		w.t.Fatal(err)
	}
	w.send(string(b))
	return id, invID
}

func companyOf(params any) string {
	b, err := json.Marshal(params)
	if err != nil {
		return ""
	}
	var p struct {
		CompanyID string `json:"companyId"`
	}
	_ = json.Unmarshal(b, &p)
	return p.CompanyID
}

// reply waits for the reply with the given id (its JSON text).
func (w *proc) reply(id string) *message {
	w.t.Helper()
	var m *message
	ok := w.waitUntil(callTimeout, func() bool {
		m = w.replies[id]
		return m != nil || w.exited
	})
	if !ok || m == nil {
		w.t.Fatalf("no reply to request %s (worker exited: %v)", id, w.hasExited())
	}
	return m
}

func (w *proc) hasExited() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.exited
}

// hasReply reports whether the reply with that id has arrived.
func (w *proc) hasReply(id string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.replies[id] != nil
}

// call sends a request and waits for its reply.
func (w *proc) call(method string, params any) (*message, string) {
	w.t.Helper()
	id, inv := w.request(method, params)
	return w.reply(id), inv
}

// mustCall calls and decodes the result into out (nil: ignore it); an
// error reply fails the test.
func (w *proc) mustCall(method string, params, out any) json.RawMessage {
	w.t.Helper()
	m, _ := w.call(method, params)
	if m.err != nil {
		w.t.Fatalf("%s: %v", method, m.err)
	}
	if out != nil {
		if err := json.Unmarshal(m.result, out); err != nil {
			w.t.Fatalf("%s: decoding the result %s: %v", method, clip(m.result), err)
		}
	}
	return m.result
}

// callErr calls and returns the error reply; a success fails the test.
func (w *proc) callErr(method string, params any) *rpcError {
	w.t.Helper()
	m, _ := w.call(method, params)
	if m.err == nil {
		w.t.Fatalf("%s: want an error, got the result %s", method, clip(m.result))
	}
	return m.err
}

func clip(b []byte) string {
	if len(b) > 2000 {
		return string(b[:2000]) + "…"
	}
	return string(b)
}

// notifications returns the notifications received so far carrying invID
// ("" = all).
func (w *proc) notifications(method, invID string) []*message {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []*message
	for _, m := range w.out {
		if m.method == method && m.id == nil && (invID == "" || m.invID == invID) {
			out = append(out, m)
		}
	}
	return out
}

// stdoutLines returns every stdout line so far.
func (w *proc) stdoutLines() []*message {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]*message(nil), w.out...)
}

// stderrLines returns every stderr line so far.
func (w *proc) stderrLines() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.stderr...)
}

// initialize performs the handshake and returns the supported methods.
func (w *proc) initialize() []string {
	w.t.Helper()
	var res struct {
		OK               bool     `json:"ok"`
		SupportedMethods []string `json:"supportedMethods"`
	}
	w.mustCall("initialize", map[string]any{
		"manifest": map[string]any{"id": "paperclip.kubernetes-sandbox-provider", "apiVersion": 1},
		"config":   map[string]any{}, "apiVersion": 1,
		"instanceInfo": map[string]any{"instanceId": "test", "hostVersion": "2026.916.1"},
	}, &res)
	if !res.OK {
		w.t.Fatal("initialize: ok is not true")
	}
	return res.SupportedMethods
}

// vmHWM returns the worker's peak resident set size in bytes (Linux).
func (w *proc) vmHWM() (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", w.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.New("no VmHWM in /proc status")
}

// sigterm sends SIGTERM to the worker.
func (w *proc) sigterm() error { return w.cmd.Process.Signal(syscall.SIGTERM) }
