package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// newSessionHome returns a fresh sessionHome of the host's form and removes
// it at cleanup (the exec node runs pod commands on this machine, so the
// pod's /tmp is this machine's).
func newSessionHome(t *testing.T) string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	home := fmt.Sprintf("/tmp/paperclip-adapter-login/%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
	t.Cleanup(func() { _ = os.RemoveAll(home) })
	return home
}

func (h *hooks) openParams(l lease, key, home string) map[string]any {
	return map[string]any{
		"hostRouteId": "route-" + randHex(8), "driverKey": "kubernetes",
		"companyId": h.company, "environmentId": "env-" + h.company,
		"providerLeaseId": l.id(), "loginCommandKey": key, "sessionHome": home,
	}
}

// loginNotes returns the login notifications of a session.
func (w *proc) loginNotes(method, session string) []map[string]any {
	var out []map[string]any
	for _, m := range w.notifications(method, "") {
		var p map[string]any
		_ = json.Unmarshal(m.params, &p)
		if p["workerSessionId"] == session {
			out = append(out, p)
		}
	}
	return out
}

// TestLoginPty: the built worker opens a login terminal in a sandbox
// lease's pod on the real control plane (the API server's pods/exec with
// tty=true): the session home is created private, the key's fixed command
// runs (no codex CLI on this machine: the terminal says so and the exit
// code is 127), the output and the exit reach the host with its route id,
// and close acknowledges. It fails closed, with nothing run, for a lease
// of another company, an unknown command key and a job backend.
func TestLoginPty(t *testing.T) {
	if _, err := exec.LookPath("codex"); err == nil {
		t.Fatal("this test expects no codex CLI on this machine's PATH (the exec node's pods use it)")
	}
	t.Run("manifest and methods", func(t *testing.T) {
		is := is.New(t)
		out, err := exec.Command(workerBin, "manifest").Output()
		is.NoErr(err)
		var m struct {
			EnvironmentDrivers []map[string]any `json:"environmentDrivers"`
		}
		is.NoErr(json.Unmarshal(out, &m))
		is.Equal(m.EnvironmentDrivers[0]["supportsLoginPty"], true) // the shipped sandbox backend can host one
		w := startWorker(t)
		methods := w.initialize()
		for _, want := range []string{"loginPtyOpen", "loginPtyInput", "loginPtyStop", "loginPtyClose"} {
			is.True(slices.Contains(methods, want))
		}
	})

	t.Run("sandbox", func(t *testing.T) {
		t.Parallel()
		is := is.New(t)
		h := newHooks(t, "sandbox", nil)
		l := h.acquire(nil)
		home := newSessionHome(t)
		params := h.openParams(l, "codex", home)
		var opened struct {
			WorkerSessionID string `json:"workerSessionId"`
		}
		h.w.mustCall("loginPtyOpen", params, &opened)
		is.True(opened.WorkerSessionID != "")
		if !h.w.waitUntil(callTimeout, func() bool {
			for _, m := range h.w.out {
				if m.method == "loginPty.exit" && strings.Contains(string(m.params), opened.WorkerSessionID) {
					return true
				}
			}
			return false
		}) {
			t.Fatal("no loginPty.exit")
		}
		var output strings.Builder
		for _, p := range h.w.loginNotes("loginPty.output", opened.WorkerSessionID) {
			is.Equal(p["hostRouteId"], params["hostRouteId"])
			output.WriteString(p["chunk"].(string))
		}
		exits := h.w.loginNotes("loginPty.exit", opened.WorkerSessionID)
		t.Logf("terminal: %q, exit %v", output.String(), exits)
		is.Equal(len(exits), 1)
		is.Equal(exits[0]["hostRouteId"], params["hostRouteId"])
		is.Equal(exits[0]["exitCode"], float64(127))
		is.True(strings.Contains(output.String(), "codex")) // env: 'codex': No such file or directory
		for _, m := range h.w.notifications("loginPty.output", "") {
			is.Equal(m.invID, "") // login notifications carry no invocation id
		}
		st, err := os.Stat(home)
		is.NoErr(err)
		is.True(st.IsDir())
		is.Equal(st.Mode().Perm(), os.FileMode(0o700))

		// The session is over: input is refused; close acknowledges the route.
		e := h.w.callErr("loginPtyInput", map[string]any{"workerSessionId": opened.WorkerSessionID, "data": "x"})
		is.True(strings.Contains(e.Message, "no login terminal"))
		var ack map[string]any
		h.w.mustCall("loginPtyClose", map[string]any{"hostRouteId": params["hostRouteId"]}, &ack)
		is.Equal(ack["hostRouteId"], params["hostRouteId"])

		t.Run("a lease of another company", func(t *testing.T) {
			is := is.New(t)
			other := h.with(map[string]any{"companyId": "co-" + randHex(4), "runId": "run-" + randHex(4)})
			var lo lease
			h.w.mustCall("environmentAcquireLease", other, &lo)
			home := newSessionHome(t)
			e := h.w.callErr("loginPtyOpen", h.openParams(lo, "codex", home))
			t.Log(e.Message)
			is.True(strings.Contains(e.Message, "belongs to another company or environment"))
			is.True(strings.Contains(e.Message, "nothing was run"))
			_, err := os.Stat(home)
			is.True(os.IsNotExist(err)) // not even the session home
			ns := "paperclip-" + other["companyId"].(string)
			t.Cleanup(func() { _ = deleteNamespace(h, ns) })
		})
		t.Run("an unknown command key", func(t *testing.T) {
			is := is.New(t)
			home := newSessionHome(t)
			e := h.w.callErr("loginPtyOpen", h.openParams(l, "sh -c id", home))
			t.Log(e.Message)
			is.Equal(e.Code, -32602)
			is.True(strings.Contains(e.Message, `loginCommandKey "sh -c id" is not one of [claude codex grok]`))
			_, err := os.Stat(home)
			is.True(os.IsNotExist(err))
		})
		t.Run("a session home of another form", func(t *testing.T) {
			is := is.New(t)
			e := h.w.callErr("loginPtyOpen", h.openParams(l, "codex", "/tmp/paperclip-adapter-login/../x"))
			is.True(strings.Contains(e.Message, "is not of the form /tmp/paperclip-adapter-login/<uuid>"))
		})
		t.Run("release", func(t *testing.T) {
			is := is.New(t)
			h.w.mustCall("environmentReleaseLease", h.leaseParams(l), nil)
			e := h.w.callErr("loginPtyOpen", h.openParams(l, "codex", newSessionHome(t)))
			is.True(strings.Contains(e.Message, "was not acquired or resumed through this worker"))
		})
	})

	t.Run("job", func(t *testing.T) {
		t.Parallel()
		is := is.New(t)
		h := newHooks(t, "job", nil)
		l := h.acquire(nil)
		home := newSessionHome(t)
		e := h.w.callErr("loginPtyOpen", h.openParams(l, "codex", home))
		t.Log(e.Message)
		is.True(strings.Contains(e.Message, `is on backend "job", which runs no commands in its pod`))
		is.True(strings.Contains(e.Message, "nothing was run"))
		_, err := os.Stat(home)
		is.True(os.IsNotExist(err))
		is.Equal(len(h.w.notifications("loginPty.output", "")), 0)
	})
}

func deleteNamespace(h *hooks, ns string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return h.kube().CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{})
}
