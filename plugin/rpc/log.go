package rpc

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"time"
)

// Log levels of the protocol's `log` message.
const (
	LogDebug = "debug"
	LogInfo  = "info"
	LogWarn  = "warn"
	LogError = "error"
)

// ErrNotReady is returned by [Conn.Log] before the handshake (the reply to
// initialize) is done.
var ErrNotReady = errors.New("rpc: handshake not done")

// LogRecord is one record for the host's plugin log.
type LogRecord struct {
	Level   string         // LogDebug, LogInfo, LogWarn or LogError
	Message string         // the host keeps 10,000 characters
	Meta    map[string]any // JSON-encodable; the host keeps 50,000 characters of it
	// CompanyID scopes the record to a company (the host stores it with the
	// line). The host accepts a company only inside an open invocation of
	// that company: when there is none, the id goes into Meta instead.
	CompanyID string
}

// logParams is the wire form of a `log` message.
type logParams struct {
	Level     string         `json:"level"`
	Message   string         `json:"message"`
	Meta      map[string]any `json:"meta,omitempty"`
	CompanyID string         `json:"companyId,omitempty"`
}

// openInvocation is a host request's invocation whose reply is not written.
type openInvocation struct {
	inv Invocation
	n   int // requests carrying it (the host mints one per request)
}

func (c *Conn) openInvocation(inv Invocation) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if o := c.invs[inv.ID]; o != nil {
		o.n++
		return
	}
	c.invs[inv.ID] = &openInvocation{inv: inv, n: 1}
}

func (c *Conn) closeInvocationLocked(id string) {
	if o := c.invs[id]; o != nil {
		if o.n--; o.n <= 0 {
			delete(c.invs, id)
		}
	}
}

// scopeLocked picks the invocation a `log` line for company travels with:
// ctx's own if it is still open and of that company, else any open one of
// that company. "" means none is open: the company cannot be sent. With
// company "" ctx's open invocation lends its company.
func (c *Conn) scopeLocked(ctx context.Context, company string) (invID, companyID string) {
	inv, ok := InvocationFrom(ctx)
	if ok && c.invs[inv.ID] != nil && inv.Scope.CompanyID != "" && (company == "" || company == inv.Scope.CompanyID) {
		return inv.ID, inv.Scope.CompanyID
	}
	if company == "" {
		return "", ""
	}
	for id, o := range c.invs {
		if o.inv.Scope.CompanyID == company {
			return id, company
		}
	}
	return "", ""
}

// Log sends rec to the host's plugin log: a `log` request, which the host
// writes to its log at rec.Level and stores (GET /api/plugins/:id/logs; a
// `log` notification is only written to the server's log). It does not wait
// for the answer. It fails with ErrNotReady before the handshake, and with
// ErrClosed once the connection is closed: log elsewhere then.
//
// The record carries rec.CompanyID (or, when that is empty, the company of
// ctx's invocation) only while an invocation of that company is open, since
// the host refuses a company-scoped call outside one; otherwise the company id
// goes into meta.companyId.
func (c *Conn) Log(ctx context.Context, rec LogRecord) error {
	if !c.ready.Load() {
		return ErrNotReady
	}
	p := logParams{Level: rec.Level, Message: rec.Message, Meta: rec.Meta}
	id := c.nextID.Add(1)
	c.pmu.Lock()
	if c.inputDone {
		c.pmu.Unlock()
		return ErrClosed
	}
	c.pmu.Unlock()

	c.wmu.Lock()
	invID, company := c.scopeLocked(ctx, rec.CompanyID)
	if company != "" {
		p.CompanyID = company
	} else if rec.CompanyID != "" {
		p.Meta = withMeta(p.Meta, "companyId", rec.CompanyID)
	}
	b, err := c.encodeOut(id, MethodLog, p, invID)
	if err != nil {
		// Too large or not encodable: say so, without the meta.
		p.Meta = map[string]any{"logError": clip(err.Error(), 512)}
		p.Message = clip(p.Message, 8<<10)
		b, err = c.encodeOut(id, MethodLog, p, invID)
	}
	if err == nil {
		c.pmu.Lock()
		c.logs[id] = p
		c.pmu.Unlock()
		err = c.writeLocked(b, false)
	}
	c.wmu.Unlock()
	if err != nil {
		c.pmu.Lock()
		delete(c.logs, id)
		c.pmu.Unlock()
	}
	return err
}

// logAnswered handles the host's answer to a `log` request: a refusal of its
// company scope (the invocation ended before the host read the line) is sent
// again without it; anything else is dropped.
func (c *Conn) logAnswered(p logParams, r callResult) {
	var e *Error
	if !errors.As(r.err, &e) || e.Code != CodeInvocationScopeDenied || p.CompanyID == "" {
		return
	}
	_ = c.Log(context.Background(), LogRecord{Level: p.Level, Message: p.Message,
		Meta: withMeta(p.Meta, "companyId", p.CompanyID)})
}

func withMeta(meta map[string]any, k string, v any) map[string]any {
	out := make(map[string]any, len(meta)+1)
	for mk, mv := range meta {
		out[mk] = mv
	}
	out[k] = v
	return out
}

// Ready reports whether the handshake is done and the connection still writes.
func (c *Conn) Ready() bool {
	if !c.ready.Load() {
		return false
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return !c.wclosed
}

const maxLogField = 256 // bytes of an id from params kept in a log line

// logHookFailure logs a failed host request once: method, code, error
// message, the ids that say which company, environment, run and lease it was
// for, and how long it took. Params are never logged (they carry the
// kubeconfig, env values and stdin): only those ids are read from them, and
// the company comes from the host's invocation scope when there is one. The
// error message is the one of the reply (what the host gets).
func (c *Conn) logHookFailure(ctx context.Context, m *message, code int, reply []byte, took time.Duration) {
	var r struct {
		Error struct {
			Message string `json:"message"`
		} `json:"error"`
	}
	_ = json.Unmarshal(reply, &r)
	msg := r.Error.Message
	ids := hookIDsOf(m.params)
	company := ids.CompanyID
	if m.inv != nil && m.inv.Scope.CompanyID != "" {
		company = m.inv.Scope.CompanyID
	}
	attrs := []slog.Attr{
		slog.String("method", clip(m.method, maxMethodEcho)),
		slog.Int("code", code),
		slog.String("error", clip(msg, 4<<10)),
	}
	for _, kv := range [][2]string{{"companyId", company}, {"environmentId", ids.EnvironmentID},
		{"runId", ids.RunID}, {"lease", ids.LeaseID}} {
		if kv[1] != "" {
			attrs = append(attrs, slog.String(kv[0], clip(kv[1], maxLogField)))
		}
	}
	attrs = append(attrs, slog.Int64("durationMs", took.Milliseconds()))
	c.log.LogAttrs(ctx, slog.LevelError, m.method+" failed", attrs...)
}

type hookIDs struct {
	CompanyID, EnvironmentID, RunID, LeaseID string
}

// hookIDsOf reads the ids of a hook's params (environment hooks: companyId,
// environmentId, runId, lease.providerLeaseId). Anything else is not read;
// values of another type are skipped.
func hookIDsOf(params json.RawMessage) hookIDs {
	var out hookIDs
	var top map[string]json.RawMessage
	if json.Unmarshal(params, &top) != nil {
		return out
	}
	str := func(raw json.RawMessage) string {
		var s string
		if json.Unmarshal(raw, &s) != nil {
			return ""
		}
		return s
	}
	out.CompanyID = str(top["companyId"])
	out.EnvironmentID = str(top["environmentId"])
	out.RunID = str(top["runId"])
	var lease map[string]json.RawMessage
	if json.Unmarshal(top["lease"], &lease) == nil {
		out.LeaseID = str(lease["providerLeaseId"])
	}
	return out
}
