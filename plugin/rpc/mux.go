package rpc

import (
	"bytes"
	"context"
	"encoding/json"
	"slices"
)

// MethodFunc handles one method.
type MethodFunc func(ctx context.Context, params json.RawMessage) (any, error)

// Mux is a Handler dispatching on the method name. Methods without a registered
// function get ErrNotImplemented (→ -32004). Methods lists what is registered, which
// is what initialize should advertise as supportedMethods. Register everything
// before serving; the zero value is ready to use.
type Mux struct {
	funcs map[string]MethodFunc
}

// Register sets the function for method, replacing any earlier one.
func (m *Mux) Register(method string, f MethodFunc) {
	if m.funcs == nil {
		m.funcs = map[string]MethodFunc{}
	}
	m.funcs[method] = f
}

// Handle implements Handler.
func (m *Mux) Handle(ctx context.Context, method string, params json.RawMessage) (any, error) {
	f := m.funcs[method]
	if f == nil {
		return nil, ErrNotImplemented
	}
	return f(ctx, params)
}

// Methods returns the registered methods, sorted.
func (m *Mux) Methods() []string {
	out := make([]string, 0, len(m.funcs))
	for k := range m.funcs {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// Typed adapts a function taking decoded params. Params that do not decode into P
// are answered with -32602 INVALID_PARAMS (the message names the field and type,
// never the value). Absent or null params leave P at its zero value.
func Typed[P, R any](f func(ctx context.Context, params P) (R, error)) MethodFunc {
	return func(ctx context.Context, raw json.RawMessage) (any, error) {
		var p P
		if len(raw) > 0 && !bytes.Equal(raw, nullJSON) {
			if err := json.Unmarshal(raw, &p); err != nil {
				return nil, &Error{Code: CodeInvalidParams, Message: "invalid params: " + err.Error()}
			}
		}
		return f(ctx, p)
	}
}
