// Package rpc is the worker side of the Paperclip plugin protocol: a JSON-RPC 2.0
// peer speaking newline-delimited JSON (NDJSON) on the worker's stdin/stdout.
//
// Wire rules it follows (see paperclip-protocol.md §1 and §3.5):
//
//   - one JSON object per "\n"-terminated line, written with one locked Write;
//     empty and whitespace-only input lines are ignored;
//   - input lines may be as large as the host's 128 MiB limit (Options.MaxLineBytes);
//     a longer line is streamed past and discarded (never buffered beyond the limit)
//     and answered with an error reply;
//   - every outgoing message carries "jsonrpc":"2.0"; a success reply carries "result"
//     (null for void) and no "error" key; an error reply carries "error" and no "result";
//     a notification has no "id" key at all;
//   - request ids are echoed byte for byte with their original JSON type
//     (9007199254740993 stays exact, "1" stays a string);
//   - each request runs in its own goroutine, so replies go out in completion order;
//   - a message with "method" is always a request or notification, never a response,
//     even if its id equals the id of one of our own pending calls;
//   - when a host request carries "paperclipInvocation", the handler's context carries
//     it ([InvocationFrom]) and every notification or nested call made with that
//     context carries the top-level "paperclipInvocationId".
//
// Nothing here logs params, results or error data: they carry secrets (kubeconfig,
// env, stdin). Logs name only methods, ids and error codes.
package rpc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
)

// JSON-RPC 2.0 error codes, and Paperclip's PLUGIN_RPC_ERROR_CODES.
const (
	CodeParseError     = -32700 // PARSE_ERROR: invalid JSON; the reply's id is null
	CodeInvalidRequest = -32600 // INVALID_REQUEST
	CodeMethodNotFound = -32601 // METHOD_NOT_FOUND: not a host→worker method
	CodeInvalidParams  = -32602 // INVALID_PARAMS
	CodeInternalError  = -32603 // INTERNAL_ERROR: e.g. a handler panicked

	CodeWorkerUnavailable     = -32000 // WORKER_UNAVAILABLE
	CodeCapabilityDenied      = -32001 // CAPABILITY_DENIED
	CodeWorkerError           = -32002 // WORKER_ERROR: default for a handler error
	CodeTimeout               = -32003 // TIMEOUT
	CodeMethodNotImplemented  = -32004 // METHOD_NOT_IMPLEMENTED: known hook, not implemented
	CodeInvocationScopeDenied = -32005 // INVOCATION_SCOPE_DENIED
	CodeCrossTenantConfig     = -32006 // CROSS_TENANT_CONFIG
	CodeUnknown               = -32099 // UNKNOWN
)

// Error is a JSON-RPC error object. A handler that returns an *Error (possibly
// wrapped) gets it sent as is; [Conn.Call] returns one when the host answers with
// an error (then Data, if present, is a json.RawMessage).
type Error struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
	Data    any    `json:"data,omitempty"`
}

func (e *Error) Error() string {
	if e == nil {
		return "rpc error: <nil>"
	}
	return fmt.Sprintf("rpc error %d: %s", e.Code, e.Message)
}

// Errorf returns an *Error with the given code and a formatted message.
func Errorf(code int, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

var (
	// ErrNotImplemented is returned (possibly wrapped) by a Handler for a known
	// host method it does not implement; the host gets -32004 METHOD_NOT_IMPLEMENTED.
	ErrNotImplemented = errors.New("rpc: method not implemented")
	// ErrClosed is returned by Notify and Call once the connection is shut down,
	// and by Call when the input side has reached EOF (no response can arrive).
	ErrClosed = errors.New("rpc: connection closed")
	// ErrNoConn is returned by the package-level Notify and Call when ctx does not
	// come from a Conn (it was not derived from a handler's context).
	ErrNoConn = errors.New("rpc: no connection in context")
)

// Handler handles host→worker requests and notifications.
//
// Handle is called in its own goroutine for each message whose method is known
// (Options.Methods, default HostMethods); unknown methods are answered with -32601
// without calling it. The result is marshalled with encoding/json (nil → null).
// Return ErrNotImplemented for a known method you do not implement (→ -32004), an
// *Error to choose the code, or any other error (→ -32002 WORKER_ERROR with
// err.Error() as the message; make it meaningful, the host matches on the text).
//
// ctx carries the Conn (for the package-level Notify and Call) and, when the request
// had one, the Invocation. It is cancelled when the connection shuts down (after the
// shutdown reply, after the stdin-EOF grace, on a write error, or when the context
// passed to Serve ends); it is NOT cancelled when Handle returns, so background work
// may keep using it.
//
// "shutdown" is handled by the Conn: Handle is called first (to clean up; the host
// waits up to 10 s for the reply), then the reply null is written whatever Handle
// returned, ctx is cancelled and Serve returns.
//
// For notifications (no id) the result is discarded and errors are only logged.
type Handler interface {
	Handle(ctx context.Context, method string, params json.RawMessage) (any, error)
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, method string, params json.RawMessage) (any, error)

// Handle calls f.
func (f HandlerFunc) Handle(ctx context.Context, method string, params json.RawMessage) (any, error) {
	return f(ctx, method, params)
}

// Invocation is the host's "paperclipInvocation" envelope field.
type Invocation struct {
	ID          string          `json:"id"`
	Scope       InvocationScope `json:"scope"`
	Traceparent string          `json:"traceparent,omitempty"`
}

// InvocationScope is the scope of an Invocation.
type InvocationScope struct {
	CompanyID string `json:"companyId"`
}

type (
	invocationKey struct{}
	connKey       struct{}
)

// WithInvocation returns ctx carrying inv: messages sent with it carry
// "paperclipInvocationId": inv.ID. Handlers get this for free; it is useful in
// tests and to re-scope background work.
func WithInvocation(ctx context.Context, inv Invocation) context.Context {
	return context.WithValue(ctx, invocationKey{}, inv)
}

// InvocationFrom returns the invocation carried by ctx, if any.
func InvocationFrom(ctx context.Context) (Invocation, bool) {
	inv, ok := ctx.Value(invocationKey{}).(Invocation)
	return inv, ok && inv.ID != ""
}

// WithConn returns ctx carrying c, for the package-level Notify and Call.
// Handler contexts already carry their Conn.
func WithConn(ctx context.Context, c *Conn) context.Context {
	return context.WithValue(ctx, connKey{}, c)
}

// Notify sends a worker→host notification on the Conn carried by ctx; see
// [Conn.Notify].
func Notify(ctx context.Context, method string, params any) error {
	c, ok := ctx.Value(connKey{}).(*Conn)
	if !ok || c == nil {
		return ErrNoConn
	}
	return c.Notify(ctx, method, params)
}

// Call makes a worker→host request on the Conn carried by ctx; see [Conn.Call].
func Call(ctx context.Context, method string, params any) (json.RawMessage, error) {
	c, ok := ctx.Value(connKey{}).(*Conn)
	if !ok || c == nil {
		return nil, ErrNoConn
	}
	return c.Call(ctx, method, params)
}
