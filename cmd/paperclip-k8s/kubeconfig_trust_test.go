package main

import (
	"encoding/pem"
	"errors"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/matryer/is"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// A kubeconfig from a company admin's config is data: the worker never runs
// a program it names, never reads a host file it names, only talks to API
// servers the operator allows, and never relays what a server that is not
// a Kubernetes API server answers. These tests need no control plane: the
// "API servers" are httptest servers.

// recordingAPI is a fake API server: GET /version and /api answer as a
// Kubernetes API server does (unless body is set), everything else 404 with
// a Status. It records the Authorization header of every request.
type recordingAPI struct {
	srv *httptest.Server
	// answer, when set, answers every request instead.
	answer http.HandlerFunc
	// errors, when set, answers every request but /version and /api.
	errors http.HandlerFunc

	mu   sync.Mutex
	auth []string
	hits int
}

func newRecordingAPI(t *testing.T, tls bool, answer, errs http.HandlerFunc) *recordingAPI {
	a := &recordingAPI{answer: answer, errors: errs}
	if tls {
		a.srv = httptest.NewTLSServer(http.HandlerFunc(a.serve))
	} else {
		a.srv = httptest.NewServer(http.HandlerFunc(a.serve))
	}
	t.Cleanup(a.srv.Close)
	return a
}

func (a *recordingAPI) serve(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	a.hits++
	a.auth = append(a.auth, r.Header.Get("Authorization"))
	a.mu.Unlock()
	if a.answer != nil {
		a.answer(w, r)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	switch r.URL.Path {
	case "/version":
		_, _ = w.Write([]byte(`{"major":"1","minor":"37","gitVersion":"v1.37.2-fake"}`))
		return
	case "/api":
		_, _ = w.Write([]byte(`{"kind":"APIVersions","versions":["v1"]}`))
		return
	}
	if a.errors != nil {
		a.errors(w, r)
		return
	}
	w.WriteHeader(http.StatusNotFound)
	_, _ = w.Write([]byte(`{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}`))
}

func (a *recordingAPI) requests() (hits int, auth []string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.hits, append([]string(nil), a.auth...)
}

// kubeconfig returns a kubeconfig for this server with the given user (and
// the server's CA inline when it serves TLS).
func (a *recordingAPI) kubeconfig(t *testing.T, user *clientcmdapi.AuthInfo) string {
	t.Helper()
	kc := clientcmdapi.NewConfig()
	cl := &clientcmdapi.Cluster{Server: a.srv.URL}
	if a.srv.TLS != nil {
		cl.CertificateAuthorityData = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: a.srv.Certificate().Raw})
	}
	kc.Clusters["cluster"] = cl
	kc.AuthInfos["user"] = user
	kc.Contexts["ctx"] = &clientcmdapi.Context{Cluster: "cluster", AuthInfo: "user"}
	kc.CurrentContext = "ctx"
	b, err := clientcmd.Write(*kc)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// trustHooks is a worker and a config with the given kubeconfig, for hooks
// that never reach a real cluster.
func trustHooks(t *testing.T, kubeconfig string, opts ...workerOpts) *hooks {
	w := startWorker(t, opts...)
	w.initialize()
	return &hooks{t: t, w: w, company: "co-" + randHex(4), config: map[string]any{"kubeconfig": kubeconfig, "backend": "job"}}
}

type validateResult struct {
	OK     bool     `json:"ok"`
	Errors []string `json:"errors"`
}

func (h *hooks) validate() validateResult {
	h.t.Helper()
	var r validateResult
	h.w.mustCall("environmentValidateConfig", map[string]any{"driverKey": "kubernetes", "config": h.config}, &r)
	return r
}

func (h *hooks) probe() (probeResult, string) {
	h.t.Helper()
	var r probeResult
	raw := h.w.mustCall("environmentProbe", h.base(), &r)
	return r, string(raw)
}

func (h *hooks) release() *message {
	h.t.Helper()
	id := "pc-" + randHex(13) // the shape of the provider's lease ids
	m, _ := h.w.call("environmentReleaseLease", h.leaseParams(lease{ProviderLeaseID: &id}))
	return m
}

// refusedEverywhere asserts that validate, probe, acquire and release all
// refuse the config with an error naming want (a kubeconfig path).
func refusedEverywhere(t *testing.T, h *hooks, want string) {
	t.Helper()
	is := is.New(t)
	v := h.validate()
	is.True(!v.OK)
	is.Equal(len(v.Errors), 1)
	is.True(strings.HasPrefix(v.Errors[0], "/kubeconfig: "+want)) // validation names the field

	p, _ := h.probe()
	is.True(!p.OK)
	is.Equal(p.Summary, "Invalid Kubernetes provider configuration.")
	errs, _ := p.Metadata["errors"].([]any)
	is.Equal(len(errs), 1)
	is.True(strings.Contains(errs[0].(string), want))

	aerr := h.w.callErr("environmentAcquireLease", h.acquireParams(nil))
	is.Equal(aerr.Code, -32602)
	is.True(strings.Contains(aerr.Message, "/kubeconfig: "+want))

	m := h.release()
	is.True(m.err != nil) // release refuses too
	is.True(strings.Contains(m.err.Message, "/kubeconfig: "+want))
}

func TestKubeconfigExecNeverRuns(t *testing.T) {
	api := newRecordingAPI(t, true, nil, nil)
	dir := t.TempDir()
	marker := filepath.Join(dir, "ran")
	user := &clientcmdapi.AuthInfo{Exec: &clientcmdapi.ExecConfig{
		APIVersion: "client.authentication.k8s.io/v1", Command: "/bin/sh",
		Args:            []string{"-c", `touch "$0"; printf '%s' '{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{"token":"exec-plugin-token"}}'`, marker},
		InteractiveMode: clientcmdapi.NeverExecInteractiveMode,
	}}
	kubeconfig := api.kubeconfig(t, user)

	t.Run("refused", func(t *testing.T) {
		is := is.New(t)
		h := trustHooks(t, kubeconfig)
		refusedEverywhere(t, h, "users[0].user.exec runs a program on the Paperclip host")
		_, err := os.Stat(marker)
		is.True(errors.Is(err, fs.ErrNotExist)) // the command never ran
		hits, _ := api.requests()
		is.Equal(hits, 0) // nothing was sent to the server
	})
	// The operator's switch allows it: the command runs (which is what the
	// refusal above prevents).
	t.Run("allowed by the operator", func(t *testing.T) {
		is := is.New(t)
		h := trustHooks(t, kubeconfig, workerOpts{env: []string{"PAPERCLIP_K8S_ALLOW_KUBECONFIG_CREDENTIAL_PLUGINS=true"}})
		is.True(h.validate().OK)
		p, _ := h.probe()
		is.Equal(p.Metadata["serverVersion"], "v1.37.2-fake")
		_, err := os.Stat(marker)
		is.NoErr(err) // the plugin ran
		_, auth := api.requests()
		is.True(len(auth) > 0 && auth[0] == "Bearer exec-plugin-token")
	})
}

func TestKubeconfigTokenFileNeverRead(t *testing.T) {
	api := newRecordingAPI(t, true, nil, nil)
	secret := "HOST-FILE-SECRET-" + randHex(8)
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(secret), 0o600); err != nil {
		t.Fatal(err)
	}
	kubeconfig := api.kubeconfig(t, &clientcmdapi.AuthInfo{TokenFile: tokenFile})
	sawSecret := func() bool {
		_, auth := api.requests()
		for _, a := range auth {
			if strings.Contains(a, secret) {
				return true
			}
		}
		return false
	}

	t.Run("refused", func(t *testing.T) {
		is := is.New(t)
		h := trustHooks(t, kubeconfig)
		refusedEverywhere(t, h, "users[0].user.tokenFile reads a file on the Paperclip host")
		is.True(!sawSecret()) // the file's content never reached the server
		for _, line := range h.w.diagnostics() {
			is.True(!strings.Contains(line, secret))
		}
	})
	t.Run("allowed by the operator", func(t *testing.T) {
		is := is.New(t)
		h := trustHooks(t, kubeconfig, workerOpts{env: []string{"PAPERCLIP_K8S_ALLOW_KUBECONFIG_CREDENTIAL_PLUGINS=true"}})
		is.True(h.validate().OK)
		p, _ := h.probe()
		is.Equal(p.Metadata["serverVersion"], "v1.37.2-fake")
		is.True(sawSecret()) // what the refusal above prevents
	})
}

func TestKubeconfigServerBodiesNeverEchoed(t *testing.T) {
	secret := "BODY-SECRET-" + randHex(8)
	html := func(code int) http.HandlerFunc {
		return func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			w.WriteHeader(code)
			_, _ = w.Write([]byte("<html><body>internal page " + secret + "</body></html>"))
		}
	}
	jsonNoKind := func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"metadata":{"name":"x"},"data":"` + secret + `","gitVersion":""}`))
	}
	cases := []struct {
		name          string
		answer, errs  http.HandlerFunc
		probeMessage  string // in the probe's diagnostic
		notKubernetes bool
	}{
		{"text/html page", html(200), nil, "did not answer /version as a Kubernetes API server (HTTP 200)", true},
		{"text/html error", html(500), nil, "did not answer /version as a Kubernetes API server (HTTP 500)", true},
		{"JSON object without kind", jsonNoKind, nil, "did not answer /version as a Kubernetes API server (HTTP 200)", true},
		// A server that answers /version and /api but sends HTML errors
		// (e.g. a proxy in front of it): the bodies are dropped.
		{"HTML errors of an API server", nil, html(500), "", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			is := is.New(t)
			api := newRecordingAPI(t, false, c.answer, c.errs)
			h := trustHooks(t, string(kubeconfigFor(t, api.srv.URL, nil, "t")))
			is.True(h.validate().OK) // nothing to refuse in the kubeconfig itself
			var replies []string

			p, raw := h.probe()
			is.True(!p.OK)
			replies = append(replies, raw)
			if c.probeMessage != "" {
				is.Equal(len(p.Diagnostics), 1)
				is.Equal(p.Diagnostics[0].Code, "unreachable")
				is.True(strings.Contains(p.Diagnostics[0].Message, "server "+strings.TrimPrefix(api.srv.URL, "http://")+" "+c.probeMessage))
			}

			hits, _ := api.requests()
			m, _ := h.w.call("environmentAcquireLease", h.acquireParams(nil))
			is.True(m.err != nil)
			replies = append(replies, string(m.raw))
			if c.notKubernetes {
				is.True(strings.Contains(m.err.Message, c.probeMessage))
			}
			m = h.release()
			replies = append(replies, string(m.raw))
			if c.notKubernetes {
				is.True(m.err != nil && strings.Contains(m.err.Message, c.probeMessage))
			}
			after, _ := api.requests()
			is.True(after > hits) // acquire and release did talk to the server

			for _, r := range append(replies, h.w.diagnostics()...) {
				if strings.Contains(r, secret) || strings.Contains(r, "internal page") {
					t.Errorf("a server's answer was relayed: %s", r)
				}
			}
			t.Logf("probe: %s", clip([]byte(raw)))
		})
	}
}

func TestKubeconfigAllowedAPIServers(t *testing.T) {
	api := newRecordingAPI(t, false, nil, nil)
	kubeconfig := string(kubeconfigFor(t, api.srv.URL, nil, "t"))

	t.Run("not listed", func(t *testing.T) {
		is := is.New(t)
		h := trustHooks(t, kubeconfig, workerOpts{env: []string{"PAPERCLIP_K8S_ALLOWED_API_SERVERS=api.example.com,*.k8s.example.com,10.0.0.0/8"}})
		refusedEverywhere(t, h, "clusters[0].cluster.server names an API server host (")
		v := h.validate()
		is.True(strings.Contains(v.Errors[0], "PAPERCLIP_K8S_ALLOWED_API_SERVERS does not allow")) // names the variable
		hits, _ := api.requests()
		is.Equal(hits, 0) // nothing was sent to the server
	})
	t.Run("listed", func(t *testing.T) {
		is := is.New(t)
		h := trustHooks(t, kubeconfig, workerOpts{env: []string{"PAPERCLIP_K8S_ALLOWED_API_SERVERS=api.example.com, 127.0.0.0/8"}})
		is.True(h.validate().OK)
		p, _ := h.probe()
		is.Equal(p.Metadata["serverVersion"], "v1.37.2-fake")
	})
}

func TestKubeconfigNoRedirectToAnotherHost(t *testing.T) {
	is := is.New(t)
	secret := "INTERNAL-SECRET-" + randHex(8)
	internal := newRecordingAPI(t, false, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"kind":"APIGroupList","groups":[{"name":"` + secret + `"}],"secret":"` + secret + `"}`))
	}, nil)
	// An API server (it answers /version and /api) that redirects every
	// other request to an internal endpoint.
	api := newRecordingAPI(t, false, nil, func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, internal.srv.URL+r.URL.Path, http.StatusFound)
	})
	h := trustHooks(t, string(kubeconfigFor(t, api.srv.URL, nil, "t")))
	_, raw := h.probe()
	m, _ := h.w.call("environmentAcquireLease", h.acquireParams(nil))
	is.True(m.err != nil)
	is.True(strings.Contains(m.err.Message, "redirected the worker to another host"))
	hits, _ := internal.requests()
	is.Equal(hits, 0) // the internal endpoint was never asked
	for _, r := range append([]string{raw, string(m.raw)}, h.w.diagnostics()...) {
		if strings.Contains(r, secret) {
			t.Errorf("the internal endpoint's answer was relayed: %s", r)
		}
	}
}
