package rpc

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"
)

// LogHandler is a slog.Handler that sends records to the host's plugin log
// ([Conn.Log]) once the Conn it is attached to has done the handshake.
// Before that, after the connection closed, and when a record cannot be
// sent, records go to the fallback handler (stderr: the host logs each
// stderr line at WARN as "[plugin stderr] …", and keeps the last ones for
// crash reports).
//
// A record's level maps to debug (< Info), info, warn or error. Its
// attributes become meta (groups as nested objects); a top-level string
// attribute "companyId" becomes the message's companyId instead (see
// [Conn.Log] for when the host accepts it). Values are JSON: durations as
// strings ("1.5s"), errors and Stringers as their text, times as RFC 3339.
type LogHandler struct {
	s        *logShared
	fallback slog.Handler
	attrs    []scopedAttr // from WithAttrs, in order
	groups   []string     // from WithGroup
}

type logShared struct {
	level slog.Leveler
	conn  atomic.Pointer[Conn]
}

type scopedAttr struct {
	groups []string
	attr   slog.Attr
}

// NewLogHandler returns a handler writing to fallback until Attach; level
// (nil: Info) is the minimum level of both.
func NewLogHandler(fallback slog.Handler, level slog.Leveler) *LogHandler {
	if level == nil {
		level = slog.LevelInfo
	}
	return &LogHandler{s: &logShared{level: level}, fallback: fallback}
}

// Attach sends records through c from its handshake on. It applies to every
// handler derived from h (With, WithGroup) before or after.
func (h *LogHandler) Attach(c *Conn) { h.s.conn.Store(c) }

// Enabled implements slog.Handler.
func (h *LogHandler) Enabled(_ context.Context, l slog.Level) bool {
	return l >= h.s.level.Level()
}

// WithAttrs implements slog.Handler.
func (h *LogHandler) WithAttrs(as []slog.Attr) slog.Handler {
	if len(as) == 0 {
		return h
	}
	h2 := *h
	h2.attrs = append([]scopedAttr(nil), h.attrs...)
	for _, a := range as {
		h2.attrs = append(h2.attrs, scopedAttr{groups: h.groups, attr: a})
	}
	h2.fallback = h.fallback.WithAttrs(as)
	return &h2
}

// WithGroup implements slog.Handler.
func (h *LogHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	h2 := *h
	h2.groups = append(append([]string(nil), h.groups...), name)
	h2.fallback = h.fallback.WithGroup(name)
	return &h2
}

// Handle implements slog.Handler.
func (h *LogHandler) Handle(ctx context.Context, r slog.Record) error {
	c := h.s.conn.Load()
	if c == nil || !c.ready.Load() {
		return h.fallback.Handle(ctx, r)
	}
	rec := LogRecord{Level: LogLevel(r.Level), Message: r.Message}
	meta := map[string]any{}
	put := func(groups []string, a slog.Attr) {
		if len(groups) == 0 && a.Key == "companyId" {
			if v := a.Value.Resolve(); v.Kind() == slog.KindString && v.String() != "" {
				rec.CompanyID = v.String()
				return
			}
		}
		addAttr(meta, groups, a)
	}
	for _, sa := range h.attrs {
		put(sa.groups, sa.attr)
	}
	r.Attrs(func(a slog.Attr) bool {
		put(h.groups, a)
		return true
	})
	if len(meta) > 0 {
		rec.Meta = meta
	}
	if err := c.Log(ctx, rec); err != nil {
		return h.fallback.Handle(ctx, r)
	}
	return nil
}

// LogLevel is the protocol level of a slog level.
func LogLevel(l slog.Level) string {
	switch {
	case l < slog.LevelInfo:
		return LogDebug
	case l < slog.LevelWarn:
		return LogInfo
	case l < slog.LevelError:
		return LogWarn
	default:
		return LogError
	}
}

// reservedMetaKeys are dropped by the host's logger (pino): renamed.
var reservedMetaKeys = map[string]bool{"level": true, "time": true, "pid": true, "hostname": true, "msg": true, "v": true}

const maxMetaString = 8 << 10 // bytes of one string value in meta

// addAttr puts a (resolved) into m under the group path.
func addAttr(m map[string]any, groups []string, a slog.Attr) {
	v := a.Value.Resolve()
	if a.Equal(slog.Attr{}) || (v.Kind() == slog.KindGroup && len(v.Group()) == 0) {
		return // slog's rules: empty attrs and empty groups are dropped
	}
	for _, g := range groups {
		sub, ok := m[g].(map[string]any)
		if !ok {
			sub = map[string]any{}
			m[g] = sub
		}
		m = sub
	}
	if v.Kind() == slog.KindGroup {
		if a.Key == "" { // inlined
			for _, ga := range v.Group() {
				addAttr(m, nil, ga)
			}
			return
		}
		for _, ga := range v.Group() {
			addAttr(m, []string{a.Key}, ga)
		}
		return
	}
	k := a.Key
	if reservedMetaKeys[k] {
		k += "_"
	}
	m[k] = metaValue(v)
}

func metaValue(v slog.Value) (out any) {
	defer func() {
		if p := recover(); p != nil { // a nil pointer's Error or String
			out = fmt.Sprintf("!PANIC: %v", p)
		}
	}()
	switch v.Kind() {
	case slog.KindString:
		return clip(v.String(), maxMetaString)
	case slog.KindInt64:
		return v.Int64()
	case slog.KindUint64:
		return v.Uint64()
	case slog.KindFloat64:
		return v.Float64()
	case slog.KindBool:
		return v.Bool()
	case slog.KindDuration:
		return v.Duration().String()
	case slog.KindTime:
		return v.Time().Format(time.RFC3339Nano)
	}
	switch x := v.Any().(type) {
	case nil:
		return nil
	case error:
		return clip(x.Error(), maxMetaString)
	case fmt.Stringer:
		return clip(x.String(), maxMetaString)
	case json.Marshaler, []string, []any, map[string]any, []int, []int64, []float64, []bool, map[string]string:
		if b, err := json.Marshal(x); err == nil && len(b) <= maxMetaString {
			return json.RawMessage(b)
		}
	}
	return clip(fmt.Sprint(v.Any()), maxMetaString)
}
