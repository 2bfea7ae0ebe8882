package rpc_test

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/paperclip-k8s/paperclip-k8s/plugin/rpc"
)

// waitLimit is a generous ceiling for anything that should happen "at once";
// tests never depend on tight timing.
const waitLimit = 10 * time.Second

// fakeHost drives a Conn over pipes, like paperclip-server does over the
// worker's stdin/stdout.
type fakeHost struct {
	t     testing.TB
	in    *io.PipeWriter // worker stdin
	lines chan []byte    // worker stdout, one line each
	done  chan error     // Serve's result
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func startHost(t testing.TB, h rpc.Handler, opts rpc.Options) *fakeHost {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = quietLogger()
	}
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	fh := &fakeHost{t: t, in: inW, lines: make(chan []byte, 1024), done: make(chan error, 1)}
	go func() {
		err := rpc.Serve(context.Background(), inR, outW, h, opts)
		fh.done <- err
		outW.Close()
	}()
	fh.readLines(t, inW, outR)
	return fh
}

func (fh *fakeHost) send(line string) {
	fh.t.Helper()
	if _, err := fh.in.Write([]byte(line + "\n")); err != nil {
		fh.t.Fatalf("send: %v", err)
	}
}

// recvRaw returns the next line written by the worker.
func (fh *fakeHost) recvRaw() []byte {
	fh.t.Helper()
	select {
	case line, ok := <-fh.lines:
		if !ok {
			fh.t.Fatal("worker output closed")
		}
		if line[len(line)-1] != '\n' || strings.Count(string(line), "\n") != 1 {
			fh.t.Fatalf("not exactly one line: %q", line)
		}
		return line
	case <-time.After(waitLimit):
		fh.t.Fatal("timed out waiting for a worker message")
	}
	return nil
}

// recv returns the next message, decoded with raw values (ids stay exact).
func (fh *fakeHost) recv() map[string]json.RawMessage {
	fh.t.Helper()
	line := fh.recvRaw()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(line, &m); err != nil {
		fh.t.Fatalf("worker wrote invalid JSON %q: %v", line, err)
	}
	if string(m["jsonrpc"]) != `"2.0"` {
		fh.t.Fatalf("missing jsonrpc 2.0: %s", line)
	}
	_, hasResult := m["result"]
	_, hasErr := m["error"]
	if hasResult && hasErr {
		fh.t.Fatalf("both result and error: %s", line)
	}
	return m
}

// wait returns Serve's result, failing after waitLimit.
func (fh *fakeHost) wait() error {
	fh.t.Helper()
	select {
	case err := <-fh.done:
		return err
	case <-time.After(waitLimit):
		fh.t.Fatal("Serve did not return")
	}
	return nil
}

// noMore asserts the worker writes nothing else (call after Serve returned).
func (fh *fakeHost) noMore() {
	fh.t.Helper()
	select {
	case line, ok := <-fh.lines:
		if ok {
			fh.t.Fatalf("unexpected worker message: %s", line)
		}
	case <-time.After(waitLimit):
		fh.t.Fatal("worker output not closed")
	}
}

type rpcErr struct {
	Code    int             `json:"code"`
	Message string          `json:"message"`
	Data    json.RawMessage `json:"data"`
}

func errOf(t testing.TB, m map[string]json.RawMessage) rpcErr {
	t.Helper()
	raw, ok := m["error"]
	if !ok {
		t.Fatalf("no error in %v", m)
	}
	if _, ok := m["result"]; ok {
		t.Fatalf("error reply has a result key")
	}
	var e rpcErr
	if err := json.Unmarshal(raw, &e); err != nil {
		t.Fatal(err)
	}
	return e
}

func str(m map[string]json.RawMessage, key string) string {
	var s string
	_ = json.Unmarshal(m[key], &s)
	return s
}

// readLines feeds fh.lines with the worker's output, one line each, until
// it ends; the pipes close with the test.
func (fh *fakeHost) readLines(t testing.TB, in *io.PipeWriter, out *io.PipeReader) {
	go func() {
		br := bufio.NewReader(out)
		for {
			line, err := br.ReadBytes('\n')
			if len(line) > 0 {
				fh.lines <- line
			}
			if err != nil {
				close(fh.lines)
				return
			}
		}
	}()
	t.Cleanup(func() {
		in.Close()
		out.Close()
	})
}
