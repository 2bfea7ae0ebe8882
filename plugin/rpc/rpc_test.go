package rpc_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/paperclip-k8s/paperclip-k8s/plugin/rpc"
)

func TestHandshake(t *testing.T) {
	is := is.New(t)
	var mux rpc.Mux
	mux.Register(rpc.MethodEnvironmentExecute, func(context.Context, json.RawMessage) (any, error) { return nil, nil })
	mux.Register(rpc.MethodHealth, func(context.Context, json.RawMessage) (any, error) {
		return map[string]string{"status": "ok"}, nil
	})
	mux.Register(rpc.MethodInitialize, func(ctx context.Context, p json.RawMessage) (any, error) {
		return map[string]any{"ok": true, "supportedMethods": mux.Methods()}, nil
	})
	fh := startHost(t, &mux, rpc.Options{})

	fh.send(`{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"manifest":{"id":"x","apiVersion":1},"config":{},"instanceInfo":{"instanceId":"i","hostVersion":"2026.916.1"},"apiVersion":1}}`)
	is.Equal(string(fh.recvRaw()),
		`{"jsonrpc":"2.0","id":1,"result":{"ok":true,"supportedMethods":["environmentExecute","health","initialize"]}}`+"\n")

	fh.send(`{"jsonrpc":"2.0","id":2,"method":"environmentProbe","params":{"companyId":"c"}}`)
	e := errOf(t, fh.recv())
	is.Equal(e.Code, rpc.CodeMethodNotImplemented)

	// void result: "result":null, and no "error" key
	fh.send(`{"jsonrpc":"2.0","id":3,"method":"environmentExecute","params":{}}`)
	is.Equal(string(fh.recvRaw()), `{"jsonrpc":"2.0","id":3,"result":null}`+"\n")

	fh.send(`{"jsonrpc":"2.0","id":4,"method":"shutdown","params":{}}`)
	is.Equal(string(fh.recvRaw()), `{"jsonrpc":"2.0","id":4,"result":null}`+"\n")
	is.NoErr(fh.wait())
	fh.noMore()
}

func TestConcurrentOutOfOrder(t *testing.T) {
	is := is.New(t)
	release := make(chan struct{})
	h := rpc.HandlerFunc(func(ctx context.Context, method string, _ json.RawMessage) (any, error) {
		if method == rpc.MethodEnvironmentExecute {
			<-release
			return "slow", nil
		}
		return "fast", nil
	})
	fh := startHost(t, h, rpc.Options{})
	fh.send(`{"jsonrpc":"2.0","id":1,"method":"environmentExecute","params":{}}`)
	fh.send(`{"jsonrpc":"2.0","id":2,"method":"health","params":{}}`)
	m := fh.recv()
	is.Equal(string(m["id"]), "2") // the fast reply overtakes the slow one
	is.Equal(string(m["result"]), `"fast"`)
	close(release)
	m = fh.recv()
	is.Equal(string(m["id"]), "1")
	is.Equal(string(m["result"]), `"slow"`)
}

func TestIDTypesEchoedExactly(t *testing.T) {
	is := is.New(t)
	h := rpc.HandlerFunc(func(context.Context, string, json.RawMessage) (any, error) { return true, nil })
	fh := startHost(t, h, rpc.Options{})
	for _, id := range []string{
		`9007199254740993`, // > 2^53: must not go through float64
		`1`, `0`, `-7`, `1.5`, `1e3`, `123456789012345678901234567890`,
		`"1"`, `"abc"`, `""`, `"\u00e9\n"`,
	} {
		fh.send(`{"jsonrpc":"2.0","id":` + id + `,"method":"health"}`)
		is.Equal(string(fh.recvRaw()), `{"jsonrpc":"2.0","id":`+id+`,"result":true}`+"\n")
	}
	// whitespace around tokens is fine; the echoed id is the bare token
	fh.send(`  { "jsonrpc" : "2.0" , "id" :  42 , "method" : "health" }  `)
	is.Equal(string(fh.recvRaw()), `{"jsonrpc":"2.0","id":42,"result":true}`+"\n")
}

func TestInvocationScope(t *testing.T) {
	is := is.New(t)
	type seen struct {
		inv rpc.Invocation
		ok  bool
	}
	seenCh := make(chan seen, 4)
	h := rpc.HandlerFunc(func(ctx context.Context, method string, _ json.RawMessage) (any, error) {
		inv, ok := rpc.InvocationFrom(ctx)
		seenCh <- seen{inv, ok}
		if method == rpc.MethodOnEvent {
			return nil, nil
		}
		if err := rpc.Notify(ctx, rpc.MethodExecuteLog, map[string]string{"stream": "stdout", "chunk": "hi\n"}); err != nil {
			return nil, err
		}
		res, err := rpc.Call(ctx, rpc.MethodStateGet, map[string]string{"scopeKind": "instance", "stateKey": "k"})
		if err != nil {
			return nil, err
		}
		return map[string]json.RawMessage{"state": res}, nil
	})
	fh := startHost(t, h, rpc.Options{})

	fh.send(`{"jsonrpc":"2.0","id":1,"method":"environmentExecute","params":{"companyId":"c1"},` +
		`"paperclipInvocation":{"id":"inv-1","scope":{"companyId":"c1"},"traceparent":"00-aa-bb-01"}}`)
	s := <-seenCh
	is.True(s.ok)
	is.Equal(s.inv, rpc.Invocation{ID: "inv-1", Scope: rpc.InvocationScope{CompanyID: "c1"}, Traceparent: "00-aa-bb-01"})

	n := fh.recv() // execute.log notification
	_, hasID := n["id"]
	is.True(!hasID) // a notification has no id key at all
	is.Equal(str(n, "method"), "execute.log")
	is.Equal(str(n, "paperclipInvocationId"), "inv-1")
	is.Equal(string(n["params"]), `{"chunk":"hi\n","stream":"stdout"}`)

	c := fh.recv() // nested state.get request
	is.Equal(str(c, "method"), "state.get")
	is.Equal(str(c, "paperclipInvocationId"), "inv-1")
	callID := string(c["id"])
	is.Equal(callID, "1") // the worker's own counter

	// A host request reusing the same id is a request, not the response.
	fh.send(`{"jsonrpc":"2.0","id":` + callID + `,"method":"health","params":{}}`)
	s = <-seenCh
	is.True(!s.ok) // no invocation on that request
	n = fh.recv()
	_, hasInv := n["paperclipInvocationId"]
	is.True(!hasInv) // unscoped handler → unscoped messages
	c2 := fh.recv()
	is.Equal(str(c2, "method"), "state.get")
	fh.send(`{"jsonrpc":"2.0","id":` + string(c2["id"]) + `,"result":"other"}`)
	r := fh.recv()
	is.Equal(string(r["id"]), callID) // reply to the host's request id 1
	is.Equal(string(r["result"]), `{"state":"other"}`)

	// Now the response to the first nested call.
	fh.send(`{"jsonrpc":"2.0","id":` + callID + `,"result":{"value":42}}`)
	r = fh.recv()
	is.Equal(string(r["id"]), "1")
	is.Equal(string(r["result"]), `{"state":{"value":42}}`)

	// A host notification with a scope reaches the handler with it, and gets no reply.
	fh.send(`{"jsonrpc":"2.0","method":"onEvent","params":{"event":{}},"paperclipInvocation":{"id":"inv-2","scope":{"companyId":"c2"}}}`)
	s = <-seenCh
	is.Equal(s.inv.ID, "inv-2")
	fh.in.Close()
	is.NoErr(fh.wait())
	fh.noMore()
}

func TestConcurrentInvocationsKeepTheirOwnScope(t *testing.T) {
	is := is.New(t)
	const n = 20
	var start sync.WaitGroup
	start.Add(n)
	h := rpc.HandlerFunc(func(ctx context.Context, _ string, p json.RawMessage) (any, error) {
		start.Done()
		start.Wait() // all handlers run at once
		inv, _ := rpc.InvocationFrom(ctx)
		for range 5 {
			if err := rpc.Notify(ctx, rpc.MethodExecuteLog, map[string]string{"stream": "stdout", "chunk": inv.ID}); err != nil {
				return nil, err
			}
		}
		return inv.ID, nil
	})
	fh := startHost(t, h, rpc.Options{})
	for i := range n {
		fh.send(fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"environmentExecute","paperclipInvocation":{"id":"inv-%d","scope":{"companyId":"c"}}}`, i, i))
	}
	for range n * 6 {
		m := fh.recv()
		if _, ok := m["id"]; ok {
			is.Equal(string(m["result"]), `"inv-`+string(m["id"])+`"`)
			continue
		}
		var p struct{ Chunk string }
		is.NoErr(json.Unmarshal(m["params"], &p))
		is.Equal(str(m, "paperclipInvocationId"), p.Chunk)
	}
}

func TestCallErrorsAndTimeouts(t *testing.T) {
	is := is.New(t)
	results := make(chan error, 4)
	h := rpc.HandlerFunc(func(ctx context.Context, method string, _ json.RawMessage) (any, error) {
		_, err := rpc.Call(ctx, rpc.MethodSecretsResolve, map[string]string{"secretRef": "r"})
		results <- err
		return nil, err
	})
	fh := startHost(t, h, rpc.Options{CallTimeout: 100 * time.Millisecond})

	// host answers with an error: Call returns *rpc.Error, the reply passes it on
	fh.send(`{"jsonrpc":"2.0","id":1,"method":"environmentProbe","params":{}}`)
	c := fh.recv()
	fh.send(`{"jsonrpc":"2.0","id":` + string(c["id"]) + `,"error":{"code":-32001,"message":"capability denied","data":{"need":"secrets.read-ref"}}}`)
	err := <-results
	var re *rpc.Error
	is.True(errors.As(err, &re))
	is.Equal(re.Code, rpc.CodeCapabilityDenied)
	is.Equal(string(re.Data.(json.RawMessage)), `{"need":"secrets.read-ref"}`)
	e := errOf(t, fh.recv())
	is.Equal(e.Code, rpc.CodeCapabilityDenied)
	is.Equal(string(e.Data), `{"need":"secrets.read-ref"}`)

	// host never answers: the call times out (wrapping DeadlineExceeded)
	fh.send(`{"jsonrpc":"2.0","id":2,"method":"environmentProbe","params":{}}`)
	c = fh.recv()
	err = <-results
	is.True(errors.Is(err, context.DeadlineExceeded))
	e = errOf(t, fh.recv())
	is.Equal(e.Code, rpc.CodeWorkerError)
	// a late response is dropped without trouble
	fh.send(`{"jsonrpc":"2.0","id":` + string(c["id"]) + `,"result":"late"}`)

	// stdin EOF while a call is pending: it fails with ErrClosed at once
	fh.send(`{"jsonrpc":"2.0","id":3,"method":"environmentProbe","params":{}}`)
	fh.recv()
	fh.in.Close()
	is.True(errors.Is(<-results, rpc.ErrClosed))
	is.Equal(errOf(t, fh.recv()).Code, rpc.CodeWorkerError)
	is.NoErr(fh.wait())
	fh.noMore()

	_, err = rpc.Call(context.Background(), "x", nil)
	is.Equal(err, rpc.ErrNoConn)
	is.Equal(rpc.Notify(context.Background(), "x", nil), rpc.ErrNoConn)
}

func TestShutdown(t *testing.T) {
	is := is.New(t)
	cancelled := make(chan error, 1)
	stuck := make(chan struct{})
	defer close(stuck)
	hookCalled := make(chan struct{}, 1)
	var mux rpc.Mux
	mux.Register(rpc.MethodEnvironmentExecute, func(ctx context.Context, _ json.RawMessage) (any, error) {
		<-ctx.Done()
		cancelled <- ctx.Err()
		return nil, ctx.Err()
	})
	mux.Register(rpc.MethodEnvironmentProbe, func(context.Context, json.RawMessage) (any, error) {
		<-stuck // ignores ctx entirely
		return nil, nil
	})
	mux.Register(rpc.MethodShutdown, func(ctx context.Context, _ json.RawMessage) (any, error) {
		hookCalled <- struct{}{}
		return nil, errors.New("cleanup failed") // still answered with null
	})
	fh := startHost(t, &mux, rpc.Options{})
	fh.send(`{"jsonrpc":"2.0","id":1,"method":"environmentExecute","params":{}}`)
	fh.send(`{"jsonrpc":"2.0","id":2,"method":"environmentProbe","params":{}}`)
	fh.send(`{"jsonrpc":"2.0","id":33,"method":"shutdown","params":{}}`)
	is.Equal(string(fh.recvRaw()), `{"jsonrpc":"2.0","id":33,"result":null}`+"\n")
	replied := time.Now()
	is.NoErr(fh.wait())
	took := time.Since(replied)
	t.Logf("Serve returned %v after the shutdown reply", took)
	is.True(took < 2*time.Second) // the host allows 500 ms; generous ceiling against CI noise
	<-hookCalled
	is.Equal(<-cancelled, context.Canceled) // in-flight handlers learn via ctx
	fh.noMore()                             // nothing after the shutdown reply
}

func TestEOF(t *testing.T) {
	t.Run("in-flight handler finishes and replies", func(t *testing.T) {
		is := is.New(t)
		release := make(chan struct{})
		h := rpc.HandlerFunc(func(context.Context, string, json.RawMessage) (any, error) {
			<-release
			return "done", nil
		})
		fh := startHost(t, h, rpc.Options{EOFGrace: time.Minute})
		fh.send(`{"jsonrpc":"2.0","id":1,"method":"health"}`)
		fh.in.Close()
		select {
		case <-fh.done:
			t.Fatal("Serve returned before the in-flight handler finished")
		default:
		}
		close(release)
		is.Equal(string(fh.recv()["result"]), `"done"`)
		is.NoErr(fh.wait())
		fh.noMore()
	})
	t.Run("stuck handler is abandoned after the grace", func(t *testing.T) {
		is := is.New(t)
		stuck := make(chan struct{})
		defer close(stuck)
		cancelled := make(chan struct{})
		h := rpc.HandlerFunc(func(ctx context.Context, method string, _ json.RawMessage) (any, error) {
			if method == rpc.MethodHealth {
				<-stuck
			} else {
				<-ctx.Done()
				close(cancelled)
			}
			return nil, nil
		})
		fh := startHost(t, h, rpc.Options{EOFGrace: 20 * time.Millisecond})
		fh.send(`{"jsonrpc":"2.0","id":1,"method":"health"}`)
		fh.send(`{"jsonrpc":"2.0","id":2,"method":"environmentExecute"}`)
		start := time.Now()
		fh.in.Close()
		is.NoErr(fh.wait())
		t.Logf("Serve returned %v after EOF (grace 20ms + 250ms)", time.Since(start))
		<-cancelled
	})
	t.Run("last line without newline", func(t *testing.T) {
		is := is.New(t)
		var out bytes.Buffer
		h := rpc.HandlerFunc(func(context.Context, string, json.RawMessage) (any, error) { return 1, nil })
		err := rpc.Serve(context.Background(), strings.NewReader("\n  \r\n"+`{"jsonrpc":"2.0","id":5,"method":"health"}`), &out, h, rpc.Options{Logger: quietLogger()})
		is.NoErr(err)
		is.Equal(out.String(), `{"jsonrpc":"2.0","id":5,"result":1}`+"\n")
	})
	t.Run("empty input", func(t *testing.T) {
		is := is.New(t)
		var out bytes.Buffer
		is.NoErr(rpc.Serve(context.Background(), strings.NewReader(""), &out, &rpc.Mux{}, rpc.Options{Logger: quietLogger()}))
		is.Equal(out.Len(), 0)
	})
}

func TestBadLines(t *testing.T) {
	is := is.New(t)
	var mux rpc.Mux
	mux.Register(rpc.MethodHealth, func(context.Context, json.RawMessage) (any, error) { return "ok", nil })
	mux.Register(rpc.MethodEnvironmentExecute, rpc.Typed(func(ctx context.Context, p struct {
		TimeoutMs int `json:"timeoutMs"`
	}) (int, error) {
		return p.TimeoutMs, nil
	}))
	fh := startHost(t, &mux, rpc.Options{})
	for _, tc := range []struct {
		line string
		code int
		id   string
	}{
		{`not json`, rpc.CodeParseError, "null"},
		{`{"jsonrpc":"2.0","id":1,"method":"health"`, rpc.CodeParseError, "null"},
		{`{"jsonrpc":"1.0","id":3,"method":"health"}`, rpc.CodeInvalidRequest, "3"},
		{`{"id":"x","method":"health"}`, rpc.CodeInvalidRequest, `"x"`},
		{`{"jsonrpc":2,"id":4,"method":"health"}`, rpc.CodeInvalidRequest, "4"},
		{`{"jsonrpc":"2.0","id":5,"method":7}`, rpc.CodeInvalidRequest, "5"},
		{`{"jsonrpc":"2.0","id":null,"method":"health"}`, rpc.CodeInvalidRequest, "null"},
		{`{"jsonrpc":"2.0","id":{"a":1},"method":"health"}`, rpc.CodeInvalidRequest, "null"},
		{`{"jsonrpc":"2.0","id":true,"method":"health"}`, rpc.CodeInvalidRequest, "null"},
		{`{"jsonrpc":"2.0","id":6}`, rpc.CodeInvalidRequest, "6"},
		{`{}`, rpc.CodeInvalidRequest, "null"},
		{`[]`, rpc.CodeInvalidRequest, "null"},
		{`[{"jsonrpc":"2.0","id":1,"method":"health"}]`, rpc.CodeInvalidRequest, "null"},
		{`null`, rpc.CodeInvalidRequest, "null"},
		{`"str"`, rpc.CodeInvalidRequest, "null"},
		{`{"jsonrpc":"2.0","id":7,"method":"nope"}`, rpc.CodeMethodNotFound, "7"},
		{`{"jsonrpc":"2.0","id":8,"method":"environmentProbe"}`, rpc.CodeMethodNotImplemented, "8"},
		{`{"jsonrpc":"2.0","id":9,"method":"environmentExecute","params":{"timeoutMs":"x"}}`, rpc.CodeInvalidParams, "9"},
		{`{"jsonrpc":"2.0","method":"health"` + "\x00", rpc.CodeParseError, "null"},
	} {
		fh.send(tc.line)
		m := fh.recv()
		if e := errOf(t, m); string(m["id"]) != tc.id || e.Code != tc.code || e.Message == "" {
			t.Errorf("%q: got id %s, error %+v; want id %s, code %d", tc.line, m["id"], e, tc.id, tc.code)
		}
	}
	// ignored: blank lines, notifications for unknown methods, stray responses
	fh.send("")
	fh.send(" \t\r")
	fh.send("\u00a0\ufeff")
	fh.send(`{"jsonrpc":"2.0","method":"nope","params":{}}`)
	fh.send(`{"jsonrpc":"2.0","id":99,"result":{}}`)
	fh.send(`{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"x"}}`)
	fh.send(`{"jsonrpc":"2.0","method":"environmentProbe"}`) // unimplemented notification
	fh.send(`{"jsonrpc":"2.0","id":10,"method":"environmentExecute","params":{"timeoutMs":15000}}`)
	m := fh.recv()
	is.Equal(string(m["id"]), "10")
	is.Equal(string(m["result"]), "15000")
	fh.in.Close()
	is.NoErr(fh.wait())
	fh.noMore()
}

func TestHandlerErrors(t *testing.T) {
	is := is.New(t)
	var mux rpc.Mux
	mux.Register(rpc.MethodEnvironmentProbe, func(context.Context, json.RawMessage) (any, error) {
		return nil, errors.New("pod not ready: connection reset")
	})
	mux.Register(rpc.MethodEnvironmentExecute, func(context.Context, json.RawMessage) (any, error) {
		return nil, fmt.Errorf("wrapped: %w", &rpc.Error{Code: rpc.CodeCrossTenantConfig, Message: "other tenant", Data: map[string]int{"n": 1}})
	})
	mux.Register(rpc.MethodEnvironmentSyncIn, func(context.Context, json.RawMessage) (any, error) {
		return nil, fmt.Errorf("sync in: %w", rpc.ErrNotImplemented)
	})
	mux.Register(rpc.MethodEnvironmentSyncOut, func(context.Context, json.RawMessage) (any, error) {
		return make(chan int), nil // cannot be encoded
	})
	mux.Register(rpc.MethodHealth, func(context.Context, json.RawMessage) (any, error) {
		return "<&>", nil // no HTML escaping
	})
	fh := startHost(t, &mux, rpc.Options{})

	fh.send(`{"jsonrpc":"2.0","id":1,"method":"environmentProbe"}`)
	e := errOf(t, fh.recv())
	is.Equal(e, rpcErr{Code: rpc.CodeWorkerError, Message: "pod not ready: connection reset"})

	fh.send(`{"jsonrpc":"2.0","id":2,"method":"environmentExecute"}`)
	e = errOf(t, fh.recv())
	is.Equal(e.Code, rpc.CodeCrossTenantConfig)
	is.Equal(e.Message, "other tenant")
	is.Equal(string(e.Data), `{"n":1}`)

	fh.send(`{"jsonrpc":"2.0","id":3,"method":"environmentSyncIn"}`)
	is.Equal(errOf(t, fh.recv()).Code, rpc.CodeMethodNotImplemented)

	fh.send(`{"jsonrpc":"2.0","id":4,"method":"environmentSyncOut"}`)
	is.Equal(errOf(t, fh.recv()).Code, rpc.CodeInternalError)

	fh.send(`{"jsonrpc":"2.0","id":5,"method":"health"}`)
	is.Equal(string(fh.recvRaw()), `{"jsonrpc":"2.0","id":5,"result":"<&>"}`+"\n")
}

func TestPanicRecovery(t *testing.T) {
	is := is.New(t)
	h := rpc.HandlerFunc(func(_ context.Context, method string, _ json.RawMessage) (any, error) {
		switch method {
		case rpc.MethodEnvironmentProbe, rpc.MethodOnEvent:
			var m map[string]int
			//lint:ignore SA5000 the handler panics on purpose: this tests the recovery
			m["boom"] = 1 // nil map write
		case rpc.MethodEnvironmentExecute:
			return panickyJSON{}, nil // panics while the reply is encoded
		case rpc.MethodEnvironmentSyncIn:
			return nil, panickyErr{}
		case rpc.MethodEnvironmentSyncOut:
			var e *rpc.Error
			return nil, e // typed nil
		}
		return "alive", nil
	})
	fh := startHost(t, h, rpc.Options{})
	fh.send(`{"jsonrpc":"2.0","method":"onEvent","params":{}}`) // panicking notification: no reply
	fh.send(`{"jsonrpc":"2.0","id":1,"method":"environmentProbe"}`)
	e := errOf(t, fh.recv())
	is.Equal(e.Code, rpc.CodeInternalError)
	is.True(strings.Contains(e.Message, "panicked"))
	for i, m := range []string{"environmentExecute", "environmentSyncIn"} {
		fh.send(fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":%q}`, 10+i, m))
		is.Equal(errOf(t, fh.recv()).Code, rpc.CodeInternalError)
	}
	fh.send(`{"jsonrpc":"2.0","id":12,"method":"environmentSyncOut"}`)
	is.Equal(errOf(t, fh.recv()).Code, rpc.CodeWorkerError)
	fh.send(`{"jsonrpc":"2.0","id":2,"method":"health"}`)
	is.Equal(string(fh.recv()["result"]), `"alive"`)
}

type panickyJSON struct{}

func (panickyJSON) MarshalJSON() ([]byte, error) { panic("marshal boom") }

type panickyErr struct{}

func (panickyErr) Error() string { panic("error boom") }

// Secrets in params must never reach the log, whatever path a message takes.
func TestLogsNeverContainParams(t *testing.T) {
	is := is.New(t)
	var logs syncBuffer
	logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	h := rpc.HandlerFunc(func(ctx context.Context, method string, p json.RawMessage) (any, error) {
		switch method {
		case rpc.MethodEnvironmentProbe:
			panic("boom")
		case rpc.MethodEnvironmentExecute:
			return nil, errors.New("failed")
		case rpc.MethodEnvironmentSyncIn:
			return nil, rpc.ErrNotImplemented
		}
		return p, nil // echo: results are not logged either
	})
	fh := startHost(t, h, rpc.Options{Logger: logger, MaxLineBytes: 4 << 10})
	const secret = "S3CR3T-kubeconfig-token"
	params := `{"kubeconfig":"` + secret + `","env":{"K":"` + secret + `"}}`
	for i, m := range []string{"health", "environmentProbe", "environmentExecute", "environmentSyncIn", "nope"} {
		fh.send(fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":%q,"params":%s,"paperclipInvocation":{"id":"i","scope":{"companyId":"c"}}}`, i, m, params))
		fh.recv()
	}
	fh.send(`{"jsonrpc":"1.0","id":9,"method":"health","params":` + params + `}`)
	fh.recv()
	fh.send(`{"jsonrpc":"2.0","id":10,"method":"health","params":{"x":"` + secret + strings.Repeat("x", 8<<10) + `"}}`)
	is.Equal(errOf(t, fh.recv()).Code, rpc.CodeInvalidRequest)
	fh.send(`{"jsonrpc":"2.0","id":11,"result":"` + secret + `"}`)
	fh.send(`{"params":"` + secret + `",`)
	fh.recv()
	fh.in.Close()
	is.NoErr(fh.wait())
	is.True(logs.Len() > 0)
	is.True(!strings.Contains(logs.String(), secret)) // params leaked into logs
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func (s *syncBuffer) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Len()
}

// Many goroutines writing at once still produce whole, valid lines.
func TestConcurrentWritesStayWholeLines(t *testing.T) {
	is := is.New(t)
	chunk := strings.Repeat("x", 100<<10) // bigger than a pipe buffer
	h := rpc.HandlerFunc(func(ctx context.Context, _ string, _ json.RawMessage) (any, error) {
		for range 10 {
			if err := rpc.Notify(ctx, rpc.MethodExecuteLog, map[string]string{"stream": "stderr", "chunk": chunk}); err != nil {
				return nil, err
			}
		}
		return "ok", nil
	})
	fh := startHost(t, h, rpc.Options{})
	const n = 16
	for i := range n {
		fh.send(fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"environmentExecute"}`, i))
	}
	replies := 0
	for range n * 11 {
		m := fh.recv()
		if _, ok := m["id"]; ok {
			replies++
			continue
		}
		is.Equal(len(m["params"]), len(chunk)+len(`{"chunk":"","stream":"stderr"}`))
	}
	is.Equal(replies, n)
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("broken pipe") }

func TestWriteFailureEndsServe(t *testing.T) {
	is := is.New(t)
	inR, inW := io.Pipe()
	defer inW.Close()
	done := make(chan error, 1)
	go func() {
		done <- rpc.Serve(context.Background(), inR, failWriter{}, &rpc.Mux{}, rpc.Options{Logger: quietLogger()})
	}()
	_, err := inW.Write([]byte(`{"jsonrpc":"2.0","id":1,"method":"health"}` + "\n"))
	is.NoErr(err)
	select {
	case err := <-done:
		is.True(err != nil && strings.Contains(err.Error(), "broken pipe"))
	case <-time.After(waitLimit):
		t.Fatal("Serve did not return")
	}
}

func TestContextCancelEndsServe(t *testing.T) {
	is := is.New(t)
	inR, inW := io.Pipe()
	defer inW.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- rpc.Serve(ctx, inR, io.Discard, &rpc.Mux{}, rpc.Options{Logger: quietLogger()}) }()
	cancel()
	select {
	case err := <-done:
		is.Equal(err, context.Canceled)
	case <-time.After(waitLimit):
		t.Fatal("Serve did not return")
	}
}

// A w with a Flush method (e.g. a bufio.Writer) is flushed after every message.
type flushRecorder struct {
	bytes.Buffer
	flushes int
}

func (f *flushRecorder) Flush() error { f.flushes++; return nil }

func TestFlushingWriter(t *testing.T) {
	is := is.New(t)
	var out flushRecorder
	h := rpc.HandlerFunc(func(context.Context, string, json.RawMessage) (any, error) { return "h", nil })
	in := `{"jsonrpc":"2.0","id":1,"method":"health"}` + "\n" + `{"jsonrpc":"2.0","id":2,"method":"health"}` + "\n"
	is.NoErr(rpc.Serve(context.Background(), strings.NewReader(in), &out, h, rpc.Options{Logger: quietLogger()}))
	is.Equal(out.flushes, 2)
	is.Equal(strings.Count(out.String(), "\n"), 2)
}
