package rpc_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/paperclip-k8s/paperclip-k8s/plugin/rpc"
)

// logHost is a fakeHost whose worker logs through an rpc.LogHandler
// attached to its Conn, with a text fallback into stderr.
type logHost struct {
	*fakeHost
	log    *slog.Logger
	stderr *syncBuffer
}

// startLogHost serves h (which gets the logger through logger()) with a
// LogHandler at debug level.
func startLogHost(t *testing.T, h func(log *slog.Logger) rpc.Handler) *logHost {
	t.Helper()
	stderr := &syncBuffer{}
	lh := rpc.NewLogHandler(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelDebug}), slog.LevelDebug)
	log := slog.New(lh)
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	fh := &fakeHost{t: t, in: inW, lines: make(chan []byte, 1024), done: make(chan error, 1)}
	conn := rpc.NewConn(inR, outW, h(log), rpc.Options{Logger: log})
	lh.Attach(conn)
	go func() {
		fh.done <- conn.Serve(context.Background())
		outW.Close()
	}()
	fh.readLines(t, inW, outR)
	return &logHost{fakeHost: fh, log: log, stderr: stderr}
}

// recv returns the next message, skipping the Conn's own debug lines
// ("rpc: request done").
func (lh *logHost) recv() map[string]json.RawMessage {
	lh.t.Helper()
	for {
		m := lh.fakeHost.recv()
		if str(m, "method") != rpc.MethodLog || !strings.Contains(string(m["params"]), `"message":"rpc: request done"`) {
			return m
		}
	}
}

type logLine struct {
	ID        json.RawMessage
	InvID     string
	Level     string
	Message   string
	Meta      map[string]any
	CompanyID *string
}

// recvLog returns the next message, which must be a `log` request.
func (lh *logHost) recvLog() logLine {
	lh.t.Helper()
	m := lh.recv()
	if str(m, "method") != rpc.MethodLog {
		lh.t.Fatalf("want a log request, got %v", stringify(m))
	}
	var p struct {
		Level     string         `json:"level"`
		Message   string         `json:"message"`
		Meta      map[string]any `json:"meta"`
		CompanyID *string        `json:"companyId"`
	}
	if err := json.Unmarshal(m["params"], &p); err != nil {
		lh.t.Fatal(err)
	}
	if m["id"] == nil {
		lh.t.Fatalf("a log notification, not a request (only requests are stored by the host): %v", stringify(m))
	}
	return logLine{ID: m["id"], InvID: str(m, "paperclipInvocationId"), Level: p.Level, Message: p.Message, Meta: p.Meta, CompanyID: p.CompanyID}
}

func stringify(m map[string]json.RawMessage) string {
	b, _ := json.Marshal(m)
	return string(b)
}

const initLine = `{"jsonrpc":"2.0","id":"init","method":"initialize","params":{}}`

func initMux(log *slog.Logger, extra func(*rpc.Mux)) *rpc.Mux {
	m := &rpc.Mux{}
	m.Register(rpc.MethodInitialize, func(ctx context.Context, _ json.RawMessage) (any, error) {
		log.Info("before the handshake")
		return map[string]any{"ok": true}, nil
	})
	if extra != nil {
		extra(m)
	}
	return m
}

// Before the handshake records go to stderr; after it they go to the host
// as `log` requests at their level, with their attributes as meta, and
// nothing more goes to stderr; after shutdown stderr again.
func TestLogHandlerHandshakeAndLevels(t *testing.T) {
	is := is.New(t)
	lh := startLogHost(t, func(log *slog.Logger) rpc.Handler {
		return initMux(log, func(m *rpc.Mux) {
			m.Register(rpc.MethodHealth, func(ctx context.Context, _ json.RawMessage) (any, error) {
				log.Debug("d", "n", 1)
				log.Info("i", "took", 1500*time.Millisecond, slog.Group("pod", "name", "p1", "phase", "Running"))
				log.With("component", "client-go").WithGroup("g").Warn("w", "err", errors.New("boom"), "level", "x")
				log.Error("e", "ok", true)
				return "ok", nil
			})
		})
	})
	lh.log.Info("startup line")
	lh.send(initLine)
	is.Equal(str(lh.recv(), "result"), "")
	is.True(strings.Contains(lh.stderr.String(), "msg=\"startup line\""))
	is.True(strings.Contains(lh.stderr.String(), "msg=\"before the handshake\"")) // the reply was not written yet

	before := lh.stderr.Len()
	lh.send(`{"jsonrpc":"2.0","id":2,"method":"health","params":{}}`)
	d := lh.recvLog()
	is.Equal(d.Level, "debug")
	is.Equal(d.Message, "d")
	is.Equal(d.Meta["n"], float64(1))
	is.Equal(d.CompanyID, nil)
	is.Equal(d.InvID, "")
	i := lh.recvLog()
	is.Equal(i.Level, "info")
	is.Equal(i.Meta["took"], "1.5s")
	is.Equal(i.Meta["pod"], map[string]any{"name": "p1", "phase": "Running"})
	w := lh.recvLog()
	is.Equal(w.Level, "warn")
	is.Equal(w.Meta["component"], "client-go")
	is.Equal(w.Meta["g"], map[string]any{"err": "boom", "level_": "x"}) // the host drops "level"
	e := lh.recvLog()
	is.Equal(e.Level, "error")
	is.Equal(e.Meta["ok"], true)
	is.Equal(str(lh.recv(), "result"), "ok")
	is.Equal(lh.stderr.Len(), before) // nothing went to stderr

	// The host answers the log requests; answers are not taken for anything else.
	for _, l := range []logLine{d, i, w, e} {
		lh.send(`{"jsonrpc":"2.0","id":` + string(l.ID) + `,"result":null}`)
	}
	lh.send(`{"jsonrpc":"2.0","id":"bye","method":"shutdown","params":{}}`)
	is.Equal(str(lh.recv(), "id"), "bye")
	is.NoErr(lh.wait())
	lh.log.Warn("after shutdown")
	is.True(strings.Contains(lh.stderr.String(), "msg=\"after shutdown\""))
	is.True(!strings.Contains(lh.stderr.String(), "unknown request id")) // the answers were expected
	lh.noMore()
}

// A record's companyId travels as the message's companyId, with the
// invocation of that company the line belongs to, only while that
// invocation is open; otherwise it goes into meta.
func TestLogCompanyScope(t *testing.T) {
	is := is.New(t)
	release := make(chan struct{})
	logged := make(chan struct{})
	lh := startLogHost(t, func(log *slog.Logger) rpc.Handler {
		return initMux(log, func(m *rpc.Mux) {
			m.Register(rpc.MethodEnvironmentProbe, func(ctx context.Context, _ json.RawMessage) (any, error) {
				log.InfoContext(ctx, "with ctx")               // the invocation lends its company
				log.Info("by attribute", "companyId", "co-1")  // no ctx: the open invocation of co-1
				log.Info("other company", "companyId", "co-2") // none open for co-2
				log.InfoContext(ctx, "mismatch", "companyId", "co-2")
				close(logged)
				<-release
				return "ok", nil
			})
		})
	})
	lh.send(initLine)
	lh.recv()
	lh.send(`{"jsonrpc":"2.0","id":2,"method":"environmentProbe","params":{"companyId":"co-1"},"paperclipInvocation":{"id":"inv-1","scope":{"companyId":"co-1"}}}`)
	<-logged
	for _, want := range []string{"with ctx", "by attribute"} {
		l := lh.recvLog()
		is.Equal(l.Message, want)
		is.True(l.CompanyID != nil && *l.CompanyID == "co-1")
		is.Equal(l.InvID, "inv-1")
		is.Equal(l.Meta["companyId"], nil)
	}
	for _, want := range []string{"other company", "mismatch"} {
		l := lh.recvLog()
		is.Equal(l.Message, want)
		is.Equal(l.CompanyID, nil)
		is.Equal(l.InvID, "")
		is.Equal(l.Meta["companyId"], "co-2")
	}
	close(release)
	is.Equal(str(lh.recv(), "result"), "ok")

	// The reply closed the invocation: the company goes into meta.
	lh.log.Info("after the reply", "companyId", "co-1")
	l := lh.recvLog()
	is.Equal(l.CompanyID, nil)
	is.Equal(l.InvID, "")
	is.Equal(l.Meta["companyId"], "co-1")
}

// A log line the host refuses for its company scope (the host's request
// timed out and its invocation ended) is sent again without it.
func TestLogScopeDeniedIsResent(t *testing.T) {
	is := is.New(t)
	release := make(chan struct{})
	lh := startLogHost(t, func(log *slog.Logger) rpc.Handler {
		return initMux(log, func(m *rpc.Mux) {
			m.Register(rpc.MethodEnvironmentProbe, func(ctx context.Context, _ json.RawMessage) (any, error) {
				log.WarnContext(ctx, "late")
				<-release
				return nil, nil
			})
		})
	})
	lh.send(initLine)
	lh.recv()
	lh.send(`{"jsonrpc":"2.0","id":2,"method":"environmentProbe","params":{},"paperclipInvocation":{"id":"inv-9","scope":{"companyId":"co-9"}}}`)
	l := lh.recvLog()
	is.True(l.CompanyID != nil && *l.CompanyID == "co-9")
	lh.send(`{"jsonrpc":"2.0","id":` + string(l.ID) + `,"error":{"code":-32005,"message":"the worker referenced a missing, expired, or unknown invocation scope"}}`)
	again := lh.recvLog()
	is.Equal(again.Message, "late")
	is.Equal(again.Level, "warn")
	is.Equal(again.CompanyID, nil)
	is.Equal(again.InvID, "")
	is.Equal(again.Meta["companyId"], "co-9")
	is.True(string(again.ID) != string(l.ID))
	// Another error is not retried.
	lh.send(`{"jsonrpc":"2.0","id":` + string(again.ID) + `,"error":{"code":-32002,"message":"x"}}`)
	close(release)
	is.Equal(string(lh.recv()["id"]), "2")
}

// A failed hook is logged once, at error, before its reply (while its
// invocation is open), with the method, code, error, company, environment,
// lease and duration, and never its params.
func TestHookFailureLogged(t *testing.T) {
	is := is.New(t)
	const secret = "S3CR3T-token-in-params"
	lh := startLogHost(t, func(log *slog.Logger) rpc.Handler {
		return initMux(log, func(m *rpc.Mux) {
			m.Register(rpc.MethodEnvironmentReleaseLease, func(ctx context.Context, _ json.RawMessage) (any, error) {
				return nil, errors.New("release failed: the workload sandboxes/x is gone")
			})
			m.Register(rpc.MethodEnvironmentAcquireLease, rpc.Typed(func(ctx context.Context, p struct {
				Config map[string]any `json:"config"`
			}) (any, error) {
				return nil, rpc.Errorf(rpc.CodeInvalidParams, "invalid Kubernetes provider config: config field kubeconfig: not YAML")
			}))
			m.Register(rpc.MethodHealth, func(ctx context.Context, _ json.RawMessage) (any, error) { return "fine", nil })
		})
	})
	lh.send(initLine)
	lh.recv()

	lh.send(`{"jsonrpc":"2.0","id":5,"method":"environmentReleaseLease","params":{"companyId":"co-1","environmentId":"env-1","config":{"kubeconfig":"` + secret + `"},"lease":{"providerLeaseId":"pl-7","metadata":{"token":"` + secret + `"}}},"paperclipInvocation":{"id":"inv-5","scope":{"companyId":"co-1"}}}`)
	m := lh.recv()
	is.True(!strings.Contains(stringify(m), secret))
	is.Equal(str(m, "method"), "log")
	var p struct {
		Level     string         `json:"level"`
		Message   string         `json:"message"`
		Meta      map[string]any `json:"meta"`
		CompanyID string         `json:"companyId"`
	}
	is.NoErr(json.Unmarshal(m["params"], &p))
	is.Equal(p.Level, "error")
	is.Equal(p.Message, "environmentReleaseLease failed")
	is.Equal(p.CompanyID, "co-1")
	is.Equal(str(m, "paperclipInvocationId"), "inv-5")
	is.Equal(p.Meta["method"], "environmentReleaseLease")
	is.Equal(p.Meta["code"], float64(rpc.CodeWorkerError))
	is.Equal(p.Meta["error"], "release failed: the workload sandboxes/x is gone")
	is.Equal(p.Meta["environmentId"], "env-1")
	is.Equal(p.Meta["lease"], "pl-7")
	_, hasDuration := p.Meta["durationMs"]
	is.True(hasDuration)
	is.Equal(len(p.Meta), 6) // nothing else from the params
	reply := lh.recv()
	is.Equal(str(reply, "id"), "")
	is.Equal(string(reply["id"]), "5")

	// -32602 from Typed counts as a failure as well; the company comes from params without an invocation.
	lh.send(`{"jsonrpc":"2.0","id":6,"method":"environmentAcquireLease","params":{"companyId":"co-2","runId":"run-1","config":{"kubeconfig":"` + secret + `"}}}`)
	l := lh.recvLog()
	is.Equal(l.Level, "error")
	is.Equal(l.Meta["code"], float64(rpc.CodeInvalidParams))
	is.Equal(l.Meta["runId"], "run-1")
	is.Equal(l.Meta["companyId"], "co-2") // no invocation open for co-2: in meta
	is.Equal(string(lh.recv()["id"]), "6")

	// A hook that succeeds logs nothing.
	lh.send(`{"jsonrpc":"2.0","id":7,"method":"health","params":{}}`)
	is.Equal(str(lh.recv(), "result"), "fine")
	is.True(!strings.Contains(lh.stderr.String(), secret))
}

// Before Attach, or with no handshake, a LogHandler is its fallback.
func TestLogHandlerFallback(t *testing.T) {
	is := is.New(t)
	var buf syncBuffer
	h := rpc.NewLogHandler(slog.NewTextHandler(&buf, nil), nil)
	log := slog.New(h).With("companyId", "co-1").WithGroup("g")
	log.Debug("hidden")
	log.Info("shown", "k", "v")
	is.True(!h.Enabled(context.Background(), slog.LevelDebug))
	is.True(!strings.Contains(buf.String(), "hidden"))
	is.True(strings.Contains(buf.String(), `msg=shown companyId=co-1 g.k=v`))
	conn := rpc.NewConn(strings.NewReader(""), io.Discard, &rpc.Mux{}, rpc.Options{})
	h.Attach(conn)
	log.Info("not ready")
	is.True(strings.Contains(buf.String(), "msg=\"not ready\""))
	is.Equal(conn.Log(context.Background(), rpc.LogRecord{Level: "info", Message: "x"}), rpc.ErrNotReady)
}

func TestLogLevel(t *testing.T) {
	is := is.New(t)
	for l, want := range map[slog.Level]string{
		slog.LevelDebug - 4: "debug", slog.LevelDebug: "debug", slog.LevelInfo: "info", slog.LevelInfo + 1: "info",
		slog.LevelWarn: "warn", slog.LevelError: "error", slog.LevelError + 4: "error",
	} {
		is.Equal(rpc.LogLevel(l), want)
	}
}
