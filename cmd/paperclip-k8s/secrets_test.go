package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/matryer/is"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestSecretsNeverLeak runs whole lifecycles through the binary with
// sentinel values wherever a secret enters the worker — the config's
// kubeconfig (and the bearer token in it), execute's env and stdin, an
// adapter API key in the worker's environment, the bootstrap token the
// worker generates — and then scans every stderr line and every stdout
// message (results, errors, notifications) for them, in plain text and in
// the usual encodings. Only the run's Secret object may hold the API key
// and the bootstrap token (that is its job). Run with and without
// PAPERCLIP_K8S_DEBUG=1.
func TestSecretsNeverLeak(t *testing.T) {
	for _, debug := range []bool{false, true} {
		name := "info"
		if debug {
			name = "debug"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			testSecretsNeverLeak(t, debug)
		})
	}
}

func testSecretsNeverLeak(t *testing.T, debug bool) {
	is := is.New(t)
	env := requireEnv(t)
	ctx := context.Background()

	kcSentinel := "SENTINEL-KUBECONFIG-" + randHex(8)
	envSentinel := "SENTINEL-ENV-" + randHex(8)
	stdinSentinel := "SENTINEL-STDIN-" + randHex(8)
	apiKey := "sk-ant-SENTINEL-" + randHex(12)
	adminToken := env.RESTConfig().BearerToken
	secrets := map[string]string{
		"kubeconfig sentinel": kcSentinel, "bearer token": adminToken, "execute env": envSentinel,
		"execute stdin": stdinSentinel, "API key": apiKey,
	}
	// A real kubeconfig, with a sentinel comment and an extra field.
	kubeconfig := string(env.KubeconfigBytes()) + "# " + kcSentinel + "-comment\nx-paperclip-test: " + kcSentinel + "-field\n"

	workerEnv := []string{"ANTHROPIC_API_KEY=" + apiKey}
	if debug {
		workerEnv = append(workerEnv, "PAPERCLIP_K8S_DEBUG=1")
	}
	h := newHooks(t, "sandbox", map[string]any{"kubeconfig": kubeconfig}, workerOpts{env: workerEnv})

	// validateConfig: the host sends the secret's id; a kubeconfig pasted
	// as a value (into its field or another one) is never echoed in errors.
	var v struct {
		OK     bool     `json:"ok"`
		Errors []string `json:"errors"`
	}
	h.w.mustCall("environmentValidateConfig", map[string]any{"driverKey": "kubernetes", "config": map[string]any{"kubeconfig": "secret-id-1"}}, &v)
	is.True(v.OK)
	h.w.mustCall("environmentValidateConfig", map[string]any{"driverKey": "kubernetes", "config": map[string]any{
		"kubeconfig": kubeconfig, "namespacePrefix": "BAD PREFIX", "companySlug": kubeconfig,
	}}, &v)
	is.True(!v.OK)

	// probe, also with an unusable kubeconfig that carries the sentinel.
	var pr probeResult
	h.w.mustCall("environmentProbe", h.base(), &pr)
	is.True(pr.OK)
	bad := h.base()
	bad["config"] = map[string]any{"kubeconfig": "apiVersion: v1\nclusters: [" + kcSentinel + "\n  token: " + adminToken}
	h.w.mustCall("environmentProbe", bad, &pr)
	is.True(!pr.OK)
	badAcquire := h.acquireParams(nil)
	badAcquire["config"] = bad["config"]
	h.w.callErr("environmentAcquireLease", badAcquire)

	// The sandbox lifecycle.
	l := h.acquire(nil)
	sec, err := h.kube().CoreV1().Secrets(l.meta("namespace")).Get(ctx, l.id()+"-env", metav1.GetOptions{})
	is.NoErr(err)
	is.Equal(string(sec.Data["ANTHROPIC_API_KEY"]), apiKey) // the Secret carries the key to the pod
	secrets["bootstrap token"] = string(sec.Data["BOOTSTRAP_TOKEN"])
	is.Equal(len(secrets["bootstrap token"]), 64)

	var resumed lease
	h.w.mustCall("environmentResumeLease", h.leaseParams(l), &resumed)
	is.Equal(resumed.id(), l.id())
	h.w.mustCall("environmentRealizeWorkspace", h.with(map[string]any{"lease": l, "workspace": map[string]any{"localPath": "/x"}}), nil)

	secretEnv := map[string]string{"PCK8S_SECRET": envSentinel, "OTHER": envSentinel + "-2"}
	// The values arrive (their hashes are printed, never the values).
	r := h.exec(l, `printf '%s' "$PCK8S_SECRET" | sha256sum; sha256sum`, map[string]any{"env": secretEnv, "stdin": stdinSentinel})
	is.Equal(r.code(), 0)
	is.Equal(strings.Fields(r.Stdout), []string{sha(envSentinel), "-", sha(stdinSentinel), "-"})
	// A failing command, a timed-out one, an invalid env value.
	r = h.exec(l, "echo failing >&2; exit 4", map[string]any{"env": secretEnv, "stdin": stdinSentinel})
	is.Equal(r.code(), 4)
	r = h.exec(l, "cat >/dev/null; sleep 5", map[string]any{"env": secretEnv, "stdin": stdinSentinel, "timeoutMs": 800})
	is.True(r.TimedOut)
	e := h.w.callErr("environmentExecute", h.execParams(l, "true", map[string]any{"env": map[string]string{"NUL_VALUE": envSentinel + "\x00"}}))
	is.True(strings.Contains(e.Message, "NUL_VALUE"))
	// A command in a pod that is gone.
	ghost := lease{ProviderLeaseID: l.ProviderLeaseID, Metadata: map[string]any{"namespace": l.meta("namespace"), "backend": "sandbox"}}
	pod := h.waitPod(l, "")
	zero := int64(0)
	is.NoErr(h.kube().CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}))
	m, _ := h.w.call("environmentExecute", h.execParams(ghost, "true", map[string]any{"env": secretEnv, "stdin": stdinSentinel}))
	_ = m // an error or a result: only what it says matters
	h.w.mustCall("environmentReleaseLease", h.leaseParams(l), nil)
	h.w.mustCall("environmentDestroyLease", h.leaseParams(l), nil)
	m, _ = h.w.call("environmentExecute", h.execParams(l, "true", map[string]any{"env": secretEnv, "stdin": stdinSentinel}))
	is.True(m.err != nil)

	// The job lifecycle.
	h.config["backend"] = "job"
	jl := h.acquire(nil)
	jsec, err := h.kube().CoreV1().Secrets(jl.meta("namespace")).Get(ctx, jl.id()+"-env", metav1.GetOptions{})
	is.NoErr(err)
	is.Equal(string(jsec.Data["ANTHROPIC_API_KEY"]), apiKey)
	secrets["job bootstrap token"] = string(jsec.Data["BOOTSTRAP_TOKEN"])
	jpod := h.waitPodAny(jl)
	is.NoErr(h.env.Node.WriteLog(jpod.Namespace, jpod.Name, "agent", []byte("job output\n")))
	h.env.Node.EndLog(jpod.Namespace, jpod.Name, "agent")
	r = h.exec(jl, "ignored", map[string]any{"env": secretEnv, "stdin": stdinSentinel})
	is.Equal(r.Stdout, "job output\n")
	h.w.mustCall("environmentDestroyLease", h.leaseParams(jl), nil)

	// Stop the worker so that everything it logged is in.
	h.w.send(`{"jsonrpc":"2.0","id":"bye","method":"shutdown","params":{}}`)
	h.w.reply(`"bye"`)
	is.True(h.w.waitExit(exitCeiling))

	stderr := h.w.stderrLines()
	stdout := h.w.stdoutLines() // replies, notifications and the `log` requests
	logs := h.w.hostLogs()
	debugLines, failedHooks := 0, 0
	for _, line := range stderr {
		if strings.Contains(line, "level=DEBUG") {
			debugLines++
		}
	}
	for _, l := range logs {
		if l.Level == "debug" {
			debugLines++
		}
		if l.Level == "error" && strings.HasSuffix(l.Message, " failed") {
			failedHooks++
		}
	}
	t.Logf("scanned %d stderr lines and %d stdout messages (%d log requests, %d debug, %d failed hooks)",
		len(stderr), len(stdout), len(logs), debugLines, failedHooks)
	if debug {
		is.True(debugLines > 0) // the debug run really logged at debug level
	}
	is.True(len(logs) > 0)
	is.True(failedHooks > 0) // the failed acquire (its config carries the kubeconfig) was logged
	for what, s := range secrets {
		for _, form := range encodings(s) {
			for i, line := range stderr {
				if strings.Contains(line, form) {
					t.Errorf("the %s appears in stderr line %d: %s", what, i+1, line)
				}
			}
			for _, msg := range stdout {
				if strings.Contains(string(msg.raw), form) {
					t.Errorf("the %s appears on stdout: %s", what, clip(msg.raw))
				}
			}
		}
	}
}

// encodings returns s as it may appear in text: plain, JSON- and
// Go-quoted, URL- and shell-escaped, base64.
func encodings(s string) []string {
	q, _ := json.Marshal(s)
	forms := []string{
		s,
		string(q[1 : len(q)-1]),
		strconv.Quote(s)[1 : len(strconv.Quote(s))-1],
		url.QueryEscape(s),
		url.PathEscape(s),
		base64.StdEncoding.EncodeToString([]byte(s)),
		base64.RawURLEncoding.EncodeToString([]byte(s)),
	}
	// Long values also by a long part of them (a truncated log line).
	if len(s) >= 32 {
		forms = append(forms, s[:24], s[len(s)-24:])
	}
	return forms
}
