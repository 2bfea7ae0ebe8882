package rpc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

const (
	// DefaultEOFGrace is how long Serve waits, after stdin EOF, for in-flight
	// handlers to finish before cancelling their context.
	DefaultEOFGrace = time.Second
	// DefaultCallTimeout bounds a worker→host Call whose ctx has no deadline
	// (the SDK's worker-side default).
	DefaultCallTimeout = 30 * time.Second

	// cancelGrace is how long Serve still waits for handlers after cancelling
	// their context at the end of the EOF grace.
	cancelGrace = 250 * time.Millisecond

	maxErrMessage = 64 << 10 // longer error messages are truncated
	maxLogID      = 64
	maxMethodEcho = 256
)

var (
	errShutdown    = errors.New("rpc: shutdown requested")
	errInputClosed = errors.New("rpc: input closed")
)

// Options configure a Conn. The zero value is ready to use.
type Options struct {
	// Logger receives diagnostics (methods, ids, codes; never params or results).
	// Nil means a text logger on os.Stderr. Never point it at stdout.
	Logger *slog.Logger
	// Methods is the set of known host→worker methods; nil means HostMethods.
	// initialize, health and shutdown are always known.
	Methods []string
	// MaxLineBytes limits one line in both directions (excluding "\n").
	// 0 means DefaultMaxLineBytes (the host's 128 MiB limit).
	MaxLineBytes int
	// EOFGrace is how long Serve waits after stdin EOF for in-flight handlers to
	// finish before cancelling their context (then it waits 250 ms more at most).
	// 0 means DefaultEOFGrace; negative means cancel at once.
	EOFGrace time.Duration
	// CallTimeout bounds Call when its ctx has no deadline. 0 means
	// DefaultCallTimeout; negative means no bound.
	CallTimeout time.Duration
	// Ordered names the requests and notifications that must be served one
	// after the other, in the order they arrived: those it gives the same
	// key (ok true). Everything else is served concurrently. The host sends
	// a terminal's keystrokes as separate requests without waiting for each
	// reply, so they are ordered per terminal. It must be cheap: it runs on
	// the read loop.
	Ordered func(method string, params json.RawMessage) (key string, ok bool)
}

// Conn is one worker-side protocol connection. Create it with NewConn, run it
// with Serve; Notify and Call may be used from any goroutine while it runs.
type Conn struct {
	r           io.Reader
	w           io.Writer
	h           Handler
	log         *slog.Logger
	known       map[string]bool
	maxLine     int
	eofGrace    time.Duration
	callTimeout time.Duration
	ordered     func(method string, params json.RawMessage) (string, bool)

	// queues hold the messages of each Ordered key not served yet (under
	// qmu); a key has a queue only while one goroutine serves it.
	qmu    sync.Mutex
	queues map[string][]message

	started  atomic.Bool
	stopped  atomic.Bool // no more dispatching (shutdown received or Serve returned)
	base     context.Context
	cancel   context.CancelCauseFunc
	inflight sync.WaitGroup

	wmu     sync.Mutex
	wclosed bool
	werr    error

	writeFailed     chan struct{}
	writeFailedOnce sync.Once
	shutdownDone    chan struct{}
	shutdownOnce    sync.Once

	nextID    atomic.Int64
	pmu       sync.Mutex
	pending   map[int64]chan callResult
	inputDone bool

	// ready is set once the reply to initialize was written (the handshake is
	// done): from then on Log may send records to the host.
	ready atomic.Bool
	// logs are the `log` requests sent by Log whose response has not come
	// (under pmu): their responses are dropped, and one refused for its
	// company scope is sent again without it.
	logs map[int64]logParams
	// invs are the invocations of host requests whose reply is not written
	// yet (under wmu): the host accepts a company-scoped worker→host call only
	// while one of them is open.
	invs map[string]*openInvocation
}

type callResult struct {
	result json.RawMessage
	err    error
}

// NewConn returns a Conn reading requests from r and writing messages to w.
func NewConn(r io.Reader, w io.Writer, h Handler, opts Options) *Conn {
	c := &Conn{
		r:            r,
		w:            w,
		h:            h,
		log:          opts.Logger,
		known:        map[string]bool{},
		maxLine:      opts.MaxLineBytes,
		eofGrace:     opts.EOFGrace,
		callTimeout:  opts.CallTimeout,
		ordered:      opts.Ordered,
		queues:       map[string][]message{},
		writeFailed:  make(chan struct{}),
		shutdownDone: make(chan struct{}),
		pending:      map[int64]chan callResult{},
		logs:         map[int64]logParams{},
		invs:         map[string]*openInvocation{},
	}
	if c.log == nil {
		c.log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	methods := opts.Methods
	if methods == nil {
		methods = HostMethods
	}
	for _, m := range methods {
		c.known[m] = true
	}
	c.known[MethodInitialize], c.known[MethodHealth], c.known[MethodShutdown] = true, true, true
	if c.maxLine <= 0 {
		c.maxLine = DefaultMaxLineBytes
	}
	if c.eofGrace == 0 {
		c.eofGrace = DefaultEOFGrace
	}
	if c.callTimeout == 0 {
		c.callTimeout = DefaultCallTimeout
	}
	return c
}

// Serve runs NewConn(r, w, h, opts).Serve(ctx).
func Serve(ctx context.Context, r io.Reader, w io.Writer, h Handler, opts Options) error {
	return NewConn(r, w, h, opts).Serve(ctx)
}

// Serve reads and dispatches messages until one of:
//
//   - a "shutdown" request: the Handler gets "shutdown", the reply null is
//     written (nothing is written after it), handler contexts are cancelled and
//     Serve returns nil at once, without waiting for other handlers. The caller
//     should exit the process right away (the host allows 500 ms).
//   - EOF on r: Serve waits up to Options.EOFGrace (default 1 s) for in-flight
//     handlers (their replies are still written), then cancels their context and
//     waits at most 250 ms more; it returns nil. A read error other than EOF is
//     handled the same way but returned.
//   - a failed write to w (the host is gone): returns that error.
//   - ctx done: returns ctx.Err().
//
// On return, handler contexts are cancelled, pending Calls fail with ErrClosed and
// later writes are dropped. After a shutdown, a goroutine may stay blocked in
// r.Read until r is closed; it dispatches nothing more. Serve may be called once.
func (c *Conn) Serve(ctx context.Context) error {
	if !c.started.CompareAndSwap(false, true) {
		return errors.New("rpc: Serve called more than once")
	}
	base, cancel := context.WithCancelCause(ctx)
	c.base, c.cancel = WithConn(base, c), cancel

	readDone := make(chan error, 1)
	go func() { readDone <- c.readLoop() }()

	var err error
	select {
	case <-c.shutdownDone:
	case rerr := <-readDone:
		c.closeInput()
		if rerr != nil && !errors.Is(rerr, io.EOF) {
			err = fmt.Errorf("rpc: read: %w", rerr)
			c.log.Warn("rpc: read failed", "error", rerr.Error())
		}
		c.drain(ctx)
	case <-c.writeFailed:
		c.wmu.Lock()
		err = c.werr
		c.wmu.Unlock()
		err = fmt.Errorf("rpc: write: %w", err)
	case <-ctx.Done():
		err = ctx.Err()
	}
	c.stopped.Store(true)
	c.wmu.Lock()
	c.wclosed = true
	c.wmu.Unlock()
	c.cancel(ErrClosed)
	c.closeInput()
	return err
}

// drain waits for in-flight handlers after EOF; see Serve.
func (c *Conn) drain(ctx context.Context) {
	idle := make(chan struct{})
	go func() {
		c.inflight.Wait()
		close(idle)
	}()
	wait := func(d time.Duration) bool {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-idle:
		case <-c.shutdownDone:
		case <-c.writeFailed:
		case <-ctx.Done():
		case <-t.C:
			return false
		}
		return true
	}
	if c.eofGrace > 0 && wait(c.eofGrace) {
		return
	}
	c.cancel(errInputClosed)
	if !wait(cancelGrace) {
		c.log.Warn("rpc: handlers still running after stdin EOF; abandoning them")
	}
}

func (c *Conn) readLoop() error {
	lr := newLineReader(c.r, c.maxLine, recoverPrefix, readBufSize)
	for {
		line, tooLong, err := lr.next()
		if err != nil {
			return err
		}
		if c.stopped.Load() {
			return nil
		}
		if tooLong {
			c.handleTooLong(line, lr.lastLen)
			continue
		}
		if isBlank(line) {
			continue
		}
		c.dispatch(decodeMessage(line))
	}
}

func (c *Conn) dispatch(m message) {
	switch m.kind {
	case kindInvalid:
		c.log.Debug("rpc: invalid message", "id", logID(m.id), "code", m.fail.Code)
		c.reply(m.id, "", nil, m.fail)
	case kindResponse:
		c.deliver(m)
	case kindRequest, kindNotification:
		if m.badInv {
			c.log.Warn("rpc: ignoring malformed paperclipInvocation", "method", clip(m.method, maxMethodEcho), "id", logID(m.id))
		}
		if m.method == MethodShutdown {
			c.stopped.Store(true)
			c.inflight.Add(1)
			go c.serveShutdown(m)
			return
		}
		if !c.known[m.method] {
			if m.kind == kindRequest {
				c.reply(m.id, m.method, nil, &Error{Code: CodeMethodNotFound, Message: "method not found: " + clip(m.method, maxMethodEcho)})
			} else {
				c.log.Debug("rpc: dropping notification for unknown method", "method", clip(m.method, maxMethodEcho))
			}
			return
		}
		if m.kind == kindRequest && m.inv != nil {
			c.openInvocation(*m.inv)
		}
		c.inflight.Add(1)
		if c.ordered != nil {
			if key, ok := c.ordered(m.method, m.params); ok {
				c.enqueue(key, m)
				return
			}
		}
		go c.serve(m)
	}
}

// enqueue serves m after the earlier messages of its Ordered key: the first
// message of an idle key starts the goroutine that serves the key's queue
// until it is empty.
func (c *Conn) enqueue(key string, m message) {
	c.qmu.Lock()
	q, busy := c.queues[key]
	c.queues[key] = append(q, m)
	c.qmu.Unlock()
	if busy {
		return
	}
	go func() {
		for {
			c.qmu.Lock()
			q := c.queues[key]
			if len(q) == 0 {
				delete(c.queues, key)
				c.qmu.Unlock()
				return
			}
			next := q[0]
			c.queues[key] = q[1:]
			c.qmu.Unlock()
			c.serve(next)
		}
	}()
}

func (c *Conn) msgCtx(m *message) context.Context {
	if m.inv != nil {
		return WithInvocation(c.base, *m.inv)
	}
	return c.base
}

func (c *Conn) serve(m message) {
	defer c.inflight.Done()
	start := time.Now()
	res, err := c.invoke(c.msgCtx(&m), &m)
	if m.kind == kindNotification {
		if err != nil {
			c.log.Debug("rpc: notification handler failed", "method", m.method)
		}
		return
	}
	b, code := c.buildReply(&m, res, err)
	if code != 0 {
		c.logHookFailure(c.msgCtx(&m), &m, code, b, time.Since(start))
	}
	if werr := c.writeReply(b, m.inv, code == 0 && m.method == MethodInitialize); werr != nil && !errors.Is(werr, ErrClosed) {
		c.log.Warn("rpc: writing reply failed", "method", m.method, "id", logID(m.id), "error", werr.Error())
	}
	c.log.Debug("rpc: request done", "method", m.method, "id", logID(m.id), "code", code, "duration", time.Since(start))
}

// buildReply encodes the handler's outcome. User code runs here too (err.Error,
// MarshalJSON), so a panic becomes a -32603 reply as well.
func (c *Conn) buildReply(m *message, res any, err error) (b []byte, code int) {
	defer func() {
		if p := recover(); p != nil {
			c.log.Error("rpc: encoding reply panicked", "method", m.method, "id", logID(m.id), "stack", string(debug.Stack()))
			b, code = c.encodeReply(m.id, m.method, nil, &Error{Code: CodeInternalError,
				Message: "internal error: encoding the " + m.method + " reply panicked"})
		}
	}()
	var e *Error
	if err != nil {
		e = toError(m.method, err)
	}
	return c.encodeReply(m.id, m.method, res, e)
}

func (c *Conn) serveShutdown(m message) {
	defer c.inflight.Done()
	if _, err := c.invoke(c.msgCtx(&m), &m); err != nil && !errors.Is(err, ErrNotImplemented) {
		c.log.Warn("rpc: shutdown handler failed; answering null anyway")
	}
	if m.kind == kindRequest {
		b, _ := c.encodeReply(m.id, m.method, nil, nil)
		_ = c.write(b, true)
	} else {
		c.wmu.Lock()
		c.wclosed = true
		c.wmu.Unlock()
	}
	c.log.Debug("rpc: shutdown")
	c.cancel(errShutdown)
	c.shutdownOnce.Do(func() { close(c.shutdownDone) })
}

// invoke calls the handler, turning a panic into a -32603 error.
func (c *Conn) invoke(ctx context.Context, m *message) (res any, err error) {
	defer func() {
		if p := recover(); p != nil {
			msg := clip(fmt.Sprint(p), 1024)
			c.log.Error("rpc: handler panicked", "method", m.method, "id", logID(m.id), "panic", msg, "stack", string(debug.Stack()))
			res, err = nil, &Error{Code: CodeInternalError, Message: "internal error: " + m.method + " handler panicked: " + msg}
		}
	}()
	return c.h.Handle(ctx, m.method, m.params)
}

func toError(method string, err error) *Error {
	var e *Error
	if errors.As(err, &e) && e != nil {
		return e
	}
	if errors.Is(err, ErrNotImplemented) {
		return &Error{Code: CodeMethodNotImplemented, Message: "method not implemented: " + method}
	}
	msg := err.Error()
	if msg == "" {
		msg = "worker error"
	}
	return &Error{Code: CodeWorkerError, Message: msg}
}

// reply writes a reply and returns its error code (0 for success).
func (c *Conn) reply(id json.RawMessage, method string, result any, e *Error) int {
	b, code := c.encodeReply(id, method, result, e)
	if err := c.write(b, false); err != nil && !errors.Is(err, ErrClosed) {
		c.log.Warn("rpc: writing reply failed", "method", method, "id", logID(id), "error", err.Error())
	}
	return code
}

// encodeReply builds a reply line (with "\n"). A result that cannot be encoded,
// or whose line would exceed the line limit, becomes an error reply.
func (c *Conn) encodeReply(id json.RawMessage, method string, result any, e *Error) ([]byte, int) {
	if id == nil {
		id = nullJSON
	}
	var buf bytes.Buffer
	if e == nil {
		buf.WriteString(`{"jsonrpc":"2.0","id":`)
		buf.Write(id)
		buf.WriteString(`,"result":`)
		if err := encodeValue(&buf, result, nullJSON); err != nil {
			c.log.Error("rpc: cannot encode result", "method", method, "id", logID(id), "error", err.Error())
			e = &Error{Code: CodeInternalError, Message: "internal error: cannot encode result: " + err.Error()}
		} else if buf.Len()+1 > c.maxLine {
			e = &Error{Code: CodeWorkerError, Message: fmt.Sprintf(
				"result of %s too large: %d bytes exceeds the %d-byte message limit", method, buf.Len()+1, c.maxLine)}
		} else {
			buf.WriteString("}\n")
			return buf.Bytes(), 0
		}
		buf = bytes.Buffer{}
	}
	buf.WriteString(`{"jsonrpc":"2.0","id":`)
	buf.Write(id)
	buf.WriteString(`,"error":`)
	c.encodeError(&buf, e, c.maxLine-buf.Len()-2)
	buf.WriteString("}\n")
	return buf.Bytes(), e.Code
}

// encodeError writes e, truncating a huge message and dropping data that cannot
// be encoded or does not fit in room bytes.
func (c *Conn) encodeError(buf *bytes.Buffer, e *Error, room int) {
	ee := *e
	if len(ee.Message) > maxErrMessage {
		ee.Message = clip(ee.Message, maxErrMessage)
	}
	n := buf.Len()
	if ee.Data != nil {
		if err := encodeValue(buf, &ee, nil); err == nil && buf.Len()-n <= room {
			return
		}
		buf.Truncate(n)
		c.log.Warn("rpc: dropping error data (unencodable or too large)", "code", ee.Code)
		ee.Data = nil
	}
	_ = encodeValue(buf, &ee, nil) // int and string: cannot fail
}

// encodeValue appends v as compact JSON (no HTML escaping); nil v → ifNil.
func encodeValue(buf *bytes.Buffer, v any, ifNil json.RawMessage) error {
	if v == nil && ifNil != nil {
		buf.Write(ifNil)
		return nil
	}
	n := buf.Len()
	enc := json.NewEncoder(buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		buf.Truncate(n)
		return err
	}
	buf.Truncate(buf.Len() - 1) // Encode's "\n"
	return nil
}

// write sends one complete line with a single locked Write. final marks the
// last message: nothing is written after it.
func (c *Conn) write(b []byte, final bool) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.writeLocked(b, final)
}

// writeReply writes the reply to a request that carried inv (nil: none),
// closing the invocation first under the same lock: a Log line that uses it
// is written before the reply, never after. handshake marks the successful
// reply to initialize: Log sends from then on (its lines wait for the lock,
// so they follow the reply).
func (c *Conn) writeReply(b []byte, inv *Invocation, handshake bool) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if inv != nil {
		c.closeInvocationLocked(inv.ID)
	}
	if handshake {
		c.ready.Store(true)
	}
	return c.writeLocked(b, false)
}

// writeLocked is write with c.wmu held.
func (c *Conn) writeLocked(b []byte, final bool) error {
	if c.wclosed {
		return ErrClosed
	}
	if final {
		c.wclosed = true
	}
	_, err := c.w.Write(b)
	if f, ok := c.w.(interface{ Flush() error }); ok && err == nil {
		err = f.Flush()
	}
	if err != nil {
		c.wclosed = true
		c.werr = err
		c.writeFailedOnce.Do(func() { close(c.writeFailed) })
		return fmt.Errorf("rpc: write: %w", err)
	}
	return nil
}

// handleTooLong answers a line over the limit, using the id from its prefix when
// it can be recovered.
func (c *Conn) handleTooLong(prefix []byte, size int64) {
	id, method, hasMethod := recoverEnvelope(prefix)
	c.log.Warn("rpc: discarded over-long input line", "bytes", size, "limit", c.maxLine,
		"method", clip(method, maxMethodEcho), "id", logID(id))
	switch {
	case hasMethod && id != nil:
		c.reply(id, method, nil, &Error{Code: CodeInvalidRequest,
			Message: fmt.Sprintf("request too large: %d bytes exceeds the %d-byte line limit", size, c.maxLine)})
	case hasMethod: // notification: no reply
	case id != nil && c.fail(id, &Error{Code: CodeInvalidRequest,
		Message: fmt.Sprintf("response too large: %d bytes exceeds the %d-byte line limit", size, c.maxLine)}):
	default:
		c.reply(nil, "", nil, &Error{Code: CodeParseError,
			Message: fmt.Sprintf("parse error: line of %d bytes exceeds the %d-byte limit", size, c.maxLine)})
	}
}

// Notify sends a worker→host notification (no id). params nil is sent as {}.
// If ctx carries an Invocation, the message carries its id as
// "paperclipInvocationId". It returns once the line is written; it does not
// consult ctx's cancellation.
func (c *Conn) Notify(ctx context.Context, method string, params any) error {
	inv, _ := InvocationFrom(ctx)
	b, err := c.encodeOut(0, method, params, inv.ID)
	if err != nil {
		return err
	}
	return c.write(b, false)
}

// Call sends a worker→host request and waits for the host's response, returning
// its raw result, or an *Error if the host answered with one. Ids come from the
// Conn's own counter (1, 2, ...). If ctx carries an Invocation, the request
// carries "paperclipInvocationId". Without a ctx deadline the wait is bounded by
// Options.CallTimeout; a timeout or cancellation returns an error wrapping
// ctx.Err(). Once the input reached EOF or the Conn closed, it fails with
// ErrClosed.
func (c *Conn) Call(ctx context.Context, method string, params any) (json.RawMessage, error) {
	if _, ok := ctx.Deadline(); !ok && c.callTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.callTimeout)
		defer cancel()
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("rpc: call %s: %w", method, err)
	}
	id := c.nextID.Add(1)
	inv, _ := InvocationFrom(ctx)
	b, err := c.encodeOut(id, method, params, inv.ID)
	if err != nil {
		return nil, err
	}
	ch := make(chan callResult, 1)
	c.pmu.Lock()
	if c.inputDone {
		c.pmu.Unlock()
		return nil, ErrClosed
	}
	c.pending[id] = ch
	c.pmu.Unlock()
	defer func() {
		c.pmu.Lock()
		delete(c.pending, id)
		c.pmu.Unlock()
	}()
	if err := c.write(b, false); err != nil {
		return nil, err
	}
	select {
	case r := <-ch:
		return r.result, r.err
	case <-ctx.Done():
		return nil, fmt.Errorf("rpc: call %s: %w", method, ctx.Err())
	}
}

// encodeOut builds a request (id > 0) or notification line.
func (c *Conn) encodeOut(id int64, method string, params any, invID string) ([]byte, error) {
	var buf bytes.Buffer
	buf.WriteString(`{"jsonrpc":"2.0",`)
	if id > 0 {
		buf.WriteString(`"id":`)
		buf.WriteString(strconv.FormatInt(id, 10))
		buf.WriteByte(',')
	}
	buf.WriteString(`"method":`)
	_ = encodeValue(&buf, method, nil)
	buf.WriteString(`,"params":`)
	n := buf.Len()
	if err := encodeValue(&buf, params, emptyJSON); err != nil {
		return nil, fmt.Errorf("rpc: encode %s params: %w", method, err)
	}
	if bytes.Equal(buf.Bytes()[n:], nullJSON) {
		buf.Truncate(n)
		buf.Write(emptyJSON)
	}
	if invID != "" {
		buf.WriteString(`,"paperclipInvocationId":`)
		_ = encodeValue(&buf, invID, nil)
	}
	buf.WriteString("}\n")
	if buf.Len()-1 > c.maxLine {
		return nil, fmt.Errorf("rpc: %s message too large: %d bytes exceeds the %d-byte line limit", method, buf.Len()-1, c.maxLine)
	}
	return buf.Bytes(), nil
}

// deliver hands a response to the Call waiting for its id.
func (c *Conn) deliver(m message) {
	r := callResult{result: m.result}
	switch {
	case m.badRPC:
		r = callResult{err: &Error{Code: CodeInvalidRequest, Message: `invalid response: "jsonrpc" must be "2.0"`}}
	case m.rerr != nil:
		r = callResult{err: m.rerr}
	}
	if m.id == nil || !c.complete(m.id, r) {
		c.log.Warn("rpc: response for unknown request id", "id", logID(m.id))
	}
}

// fail completes the pending call with id with e; it reports whether one was pending.
func (c *Conn) fail(id json.RawMessage, e *Error) bool {
	return c.complete(id, callResult{err: e})
}

func (c *Conn) complete(rawID json.RawMessage, r callResult) bool {
	id, ok := parseCallID(rawID)
	if !ok {
		return false
	}
	c.pmu.Lock()
	ch := c.pending[id]
	delete(c.pending, id)
	lp, isLog := c.logs[id]
	delete(c.logs, id)
	c.pmu.Unlock()
	if isLog {
		c.logAnswered(lp, r)
		return true
	}
	if ch == nil {
		return false
	}
	ch <- r // buffered; the only sender since it was removed under the lock
	return true
}

// closeInput fails pending calls: no response can arrive any more.
func (c *Conn) closeInput() {
	c.pmu.Lock()
	defer c.pmu.Unlock()
	c.inputDone = true
	clear(c.logs)
	for id, ch := range c.pending {
		delete(c.pending, id)
		ch <- callResult{err: ErrClosed}
	}
}

func logID(id json.RawMessage) string {
	if id == nil {
		return "null"
	}
	return clip(string(id), maxLogID)
}

// clip truncates s to at most n bytes on a rune boundary.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}
