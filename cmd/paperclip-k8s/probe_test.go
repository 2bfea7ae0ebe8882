package main

import (
	"strings"
	"testing"

	"github.com/matryer/is"
)

// Probe on a backend that does not run commands in a pod (job: mode logs)
// is ok, with a warning that agent runs need an exec backend, naming it.
func TestProbeWarnsOnLogsBackend(t *testing.T) {
	is := is.New(t)
	h := newHooks(t, "job", nil)
	var r probeResult
	h.w.mustCall("environmentProbe", h.base(), &r)
	is.True(r.OK)
	is.Equal(len(r.Diagnostics), 1)
	d := r.Diagnostics[0]
	is.Equal(d.Severity, "warning")
	is.Equal(d.Code, "backend-not-exec")
	is.True(strings.Contains(d.Message, `backend "job" (mode logs)`))
	is.True(strings.Contains(d.Message, `use backend "sandbox"`))
	is.Equal(d.Details["execBackends"], []any{"sandbox", "sandboxclaim"})
}
