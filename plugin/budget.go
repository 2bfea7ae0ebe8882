package plugin

import (
	"context"
	"fmt"
	"math"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/paperclip-k8s/paperclip-k8s/engine"
	"github.com/paperclip-k8s/paperclip-k8s/plugin/rpc"
)

// Hook budgets. The host waits for the reply to a lease hook (acquire,
// resume, release, destroy, realize, probe) for
//
//	max(timeoutMs, bridgeRequestTimeoutMs) + 30 s
//
// (the host-owned keys of the environment config; only positive numbers
// count, as the host reads them), or 30 s when neither is set. A reply that
// comes later is lost: the host has given up, and an acquire that then
// succeeds leaves a workload nobody knows about. So each of these hooks
// answers within its budget less a margin of max(10 %, 3 s) (for the pipe,
// the host's own bookkeeping and clock skew between the two timers):
//
//   - the hook's context ends earlier still, at the reply deadline less a
//     cleanup reserve (a fifth of it, between 1 s and 10 s), so every
//     Kubernetes call it makes fails in time, and
//   - the context carries the reply deadline as the cleanup deadline
//     (engine.WithCleanupDeadline): cleanup after the expiry (undoing an
//     acquire, deleting a create whose answer was lost) runs with
//     engine.CleanupContext, detached from the expired context and ending
//     there.
//
// If the hook still has not returned at the reply deadline (a call that
// takes no context, such as discovery), the reply is an error (probe: a
// failed result) and the hook is left to end on its own: its context has
// expired, so it can start nothing new.
//
// environmentExecute and the file syncs are not bounded here: they carry
// their own timeouts (timeoutMs in their params).

// The host's constants (paperclip-server: RPC_OVERHEAD_BUFFER_MS and
// DEFAULT_RPC_TIMEOUT_MS).
const (
	hostRPCOverhead       = 30 * time.Second
	hostDefaultRPCTimeout = 30 * time.Second
)

// EnvTestHookOverheadMs is TEST-ONLY: when set in the worker's environment
// to a positive number of milliseconds, it replaces the host's 30 s (the
// overhead added to the config's timeouts, and the budget when the config
// sets none), so that tests of the budgets need not wait 30 s per case. An
// operator has no reason to set it: the host's waits do not change with it.
const EnvTestHookOverheadMs = "PAPERCLIP_K8S_TEST_HOOK_OVERHEAD_MS"

// hookBudget is the time one hook call may take, from its start.
type hookBudget struct {
	Host   time.Duration // how long the host waits for the reply
	Margin time.Duration // kept free before the host's deadline
	Reply  time.Duration // Host - Margin: the reply is sent by then
	Work   time.Duration // the hook's context deadline: Reply less the cleanup reserve
	// Basis says how Host was computed (for error messages).
	Basis string
}

// budgetFor computes the budget of a hook from its raw config; overhead is
// the host's 30 s (or the test override).
func budgetFor(raw map[string]any, overhead time.Duration) hookBudget {
	var base time.Duration
	var keys []string
	for _, k := range []string{"timeoutMs", "bridgeRequestTimeoutMs"} {
		if ms, ok := positiveMs(raw[k]); ok {
			keys = append(keys, k)
			if d := time.Duration(ms) * time.Millisecond; d > base {
				base = d
			}
		}
	}
	b := hookBudget{}
	if len(keys) == 0 {
		b.Host = overhead
		b.Basis = fmt.Sprintf("%s, its default: the config sets neither timeoutMs nor bridgeRequestTimeoutMs", b.Host)
	} else {
		b.Host = base + overhead
		b.Basis = fmt.Sprintf("max(%s) + %s = %s", strings.Join(keys, ", "), overhead, b.Host)
	}
	b.Margin = max(b.Host/10, 3*time.Second)
	b.Reply = max(b.Host-b.Margin, time.Second)
	reserve := min(max(b.Reply/5, time.Second), 10*time.Second)
	b.Work = max(b.Reply-reserve, b.Reply/2)
	return b
}

// positiveMs reads a host timeout as the host does: a finite number > 0,
// truncated to whole milliseconds.
func positiveMs(v any) (int64, bool) {
	var f float64
	switch n := v.(type) {
	case float64:
		f = n
	case int:
		f = float64(n)
	case int64:
		f = float64(n)
	default:
		return 0, false
	}
	if math.IsNaN(f) || math.IsInf(f, 0) || f < 1 || f > math.MaxInt64/float64(time.Millisecond) {
		return 0, false
	}
	return int64(f), true
}

// hookOverhead is the host's 30 s, unless the test-only variable is set.
func (p *Provider) hookOverhead() time.Duration {
	if p.Getenv != nil {
		if v := strings.TrimSpace(p.Getenv(EnvTestHookOverheadMs)); v != "" {
			if ms, err := strconv.ParseInt(v, 10, 64); err == nil && ms > 0 {
				return time.Duration(ms) * time.Millisecond
			}
		}
	}
	return hostRPCOverhead
}

// configured is implemented by the params of every bounded hook (through
// the embedded BaseParams).
type configured interface{ hostConfig() map[string]any }

func (b BaseParams) hostConfig() map[string]any { return b.Config }

// bounded wraps a hook so that it answers within its budget (see above).
// late, when set, makes the reply after an expired budget (the probe
// reports a failed result rather than an error).
func bounded[P configured, R any](p *Provider, method string, f func(context.Context, P) (R, error), late func(error) R) func(context.Context, P) (R, error) {
	return boundedWith(p, method, func(in P) hookBudget { return budgetFor(in.hostConfig(), p.hookOverhead()) }, f, late)
}

func boundedWith[P any, R any](p *Provider, method string, budget func(P) hookBudget, f func(context.Context, P) (R, error), late func(error) R) func(context.Context, P) (R, error) {
	return func(ctx context.Context, in P) (R, error) {
		b := budget(in)
		start := time.Now()
		replyAt := start.Add(b.Reply)
		hctx, cancel := context.WithDeadline(engine.WithCleanupDeadline(ctx, replyAt), start.Add(b.Work))
		type result struct {
			r   R
			err error
		}
		done := make(chan result, 1)
		go func() {
			var res result
			defer func() {
				cancel()
				if v := recover(); v != nil {
					msg := fmt.Sprint(v)
					p.Log.Error("hook panicked", "method", method, "panic", msg, "stack", string(debug.Stack()))
					res = result{err: &rpc.Error{Code: rpc.CodeInternalError, Message: "internal error: " + method + " handler panicked: " + msg}}
				}
				done <- res
			}()
			res.r, res.err = f(hctx, in)
		}()
		timer := time.NewTimer(time.Until(replyAt))
		defer timer.Stop()
		select {
		case res := <-done:
			if res.err != nil && ctx.Err() == nil && hctx.Err() == context.DeadlineExceeded {
				res.err = fmt.Errorf("%s did not finish within its time budget of %s (%s): %w", method, b.Reply.Round(time.Millisecond), b.describe(), res.err)
			}
			return res.r, res.err
		case <-timer.C:
			err := fmt.Errorf("%s did not finish within its time budget of %s (%s): the Kubernetes API server did not answer in time; "+
				"the call was abandoned, its context has expired so it starts nothing more, and what it had started is deleted by its own cleanup",
				method, b.Reply.Round(time.Millisecond), b.describe())
			p.Log.Warn("hook over its time budget", "method", method, "budget", b.Reply.String())
			if late != nil {
				return late(err), nil
			}
			var zero R
			return zero, err
		}
	}
}

func (b hookBudget) describe() string {
	return fmt.Sprintf("the host waits %s, less a margin of %s", b.Basis, b.Margin)
}

// probeLate is the probe's result when its budget expired.
func probeLate(err error) ProbeResult {
	return ProbeResult{OK: false, Summary: "Kubernetes cluster probe failed.",
		Diagnostics: []Diagnostic{{Severity: "error", Code: "timeout", Message: err.Error()}},
		Metadata:    map[string]any{"provider": "kubernetes"}}
}
