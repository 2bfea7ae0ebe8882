package main

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// kubeconfigFor returns a kubeconfig for one server and bearer token.
func kubeconfigFor(t testing.TB, server string, caData []byte, token string) []byte {
	t.Helper()
	kc := clientcmdapi.NewConfig()
	kc.Clusters["cluster"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: caData}
	kc.AuthInfos["user"] = &clientcmdapi.AuthInfo{Token: token}
	kc.Contexts["ctx"] = &clientcmdapi.Context{Cluster: "cluster", AuthInfo: "user"}
	kc.CurrentContext = "ctx"
	b, err := clientcmd.Write(*kc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// gatedAPI is a fake API server whose GET <prefix>/version blocks until the
// test opens the gate of that prefix (the "token"; client-go sends no bearer
// token over plain HTTP, so the server URL's path tells the callers apart):
// an environmentProbe using the kubeconfig of a token stays in flight as
// long as the test wants. <prefix>/api answers APIVersions (the worker
// checks both before it uses a server); every other path answers 404 at once.
type gatedAPI struct {
	srv *httptest.Server

	mu      sync.Mutex
	gates   map[string]chan struct{}
	waiting map[string]int // token -> requests blocked now
	changed chan struct{}
}

func newGatedAPI(t testing.TB) *gatedAPI {
	g := &gatedAPI{gates: map[string]chan struct{}{}, waiting: map[string]int{}, changed: make(chan struct{})}
	g.srv = httptest.NewServer(http.HandlerFunc(g.serve))
	t.Cleanup(func() {
		g.openAll()
		g.srv.CloseClientConnections()
		g.srv.Close()
	})
	return g
}

func (g *gatedAPI) gate(token string) chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	ch, ok := g.gates[token]
	if !ok {
		ch = make(chan struct{})
		g.gates[token] = ch
	}
	return ch
}

func (g *gatedAPI) serve(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	if strings.HasSuffix(r.URL.Path, "/api") { // the worker checks /version and /api before using a server
		_, _ = w.Write([]byte(`{"kind":"APIVersions","versions":["v1"]}`))
		return
	}
	if !strings.HasSuffix(r.URL.Path, "/version") {
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte(`{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}`))
		return
	}
	token := strings.Trim(strings.TrimSuffix(r.URL.Path, "/version"), "/")
	ch := g.gate(token)
	g.mu.Lock()
	g.waiting[token]++
	close(g.changed)
	g.changed = make(chan struct{})
	g.mu.Unlock()
	defer func() {
		g.mu.Lock()
		g.waiting[token]--
		g.mu.Unlock()
	}()
	select {
	case <-ch:
	case <-r.Context().Done():
		return
	}
	_, _ = w.Write([]byte(`{"major":"1","minor":"37","gitVersion":"v1.37.2-fake"}`))
}

// open lets the requests of token through.
func (g *gatedAPI) open(token string) {
	ch := g.gate(token)
	g.mu.Lock()
	defer g.mu.Unlock()
	select {
	case <-ch:
	default:
		close(ch)
	}
}

func (g *gatedAPI) openAll() {
	g.mu.Lock()
	var tokens []string
	for tok := range g.gates {
		tokens = append(tokens, tok)
	}
	g.mu.Unlock()
	for _, tok := range tokens {
		g.open(tok)
	}
}

// waitBlocked waits until a request of each token is blocked at the gate.
func (g *gatedAPI) waitBlocked(t testing.TB, d time.Duration, tokens ...string) {
	t.Helper()
	deadline := time.After(d)
	for {
		g.mu.Lock()
		all := true
		for _, tok := range tokens {
			if g.waiting[tok] == 0 {
				all = false
			}
		}
		ch := g.changed
		g.mu.Unlock()
		if all {
			return
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("the API server did not see blocked requests for all of %v within %s", tokens, d)
		}
	}
}

// kubeconfig returns a kubeconfig for this server with the given token.
func (g *gatedAPI) kubeconfig(t testing.TB, token string) string {
	return string(kubeconfigFor(t, g.srv.URL+"/"+token, nil, token))
}

// slowProbe is an environmentProbe whose /version call waits at the gate.
func (g *gatedAPI) slowProbe(t testing.TB, token string) map[string]any {
	return map[string]any{
		"driverKey": "kubernetes", "companyId": "co-" + token, "environmentId": "env-1",
		"config": map[string]any{"kubeconfig": g.kubeconfig(t, token)},
	}
}
