package faultproxy_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/matryer/is"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/paperclip-k8s/paperclip-k8s/internal/faultproxy"
)

// upstream is a TLS server that records what reached it.
type upstream struct {
	srv  *httptest.Server
	mu   sync.Mutex
	seen []string // "METHOD path auth body"
}

func newUpstream(t *testing.T) *upstream {
	u := &upstream{}
	u.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		u.mu.Lock()
		u.seen = append(u.seen, r.Method+" "+r.URL.Path+" "+r.Header.Get("Authorization")+" "+string(body))
		u.mu.Unlock()
		switch {
		case r.URL.Path == "/version":
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"major":"1","minor":"37","gitVersion":"v1.37.2"}`)
		case r.Header.Get("Upgrade") == "echo":
			conn, brw, err := w.(http.Hijacker).Hijack()
			if err != nil {
				return
			}
			defer conn.Close()
			_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
			_ = brw.Flush()
			line, _ := brw.ReadString('\n')
			_, _ = brw.WriteString("echo:" + line)
			_ = brw.Flush()
		default:
			_, _ = io.WriteString(w, "ok "+r.URL.Path)
		}
	}))
	t.Cleanup(u.srv.Close)
	return u
}

func (u *upstream) received() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.seen...)
}

func (u *upstream) ca() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: u.srv.Certificate().Raw})
}

func start(t *testing.T) (*faultproxy.Proxy, *upstream, *http.Client) {
	t.Helper()
	up := newUpstream(t)
	p, err := faultproxy.New(up.srv.URL, up.ca())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(p.CAData())
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	return p, up, c
}

func get(c *http.Client, ctx context.Context, url string) (string, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	req.Header.Set("Authorization", "Bearer tok")
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestPassThroughAndCount(t *testing.T) {
	is := is.New(t)
	p, up, c := start(t)
	body, err := get(c, ctxT(t), p.URL()+"/api/v1/pods")
	is.NoErr(err)
	is.Equal(body, "ok /api/v1/pods")
	is.Equal(up.received(), []string{"GET /api/v1/pods Bearer tok "}) // the token travels through
	is.Equal(p.Count("GET", "^/api/v1/pods$"), 1)
	is.Equal(p.Count("POST", ""), 0)
	is.Equal(p.Requests()[0].Fault, faultproxy.Action(0))
}

// A stalled request waits until the rule is released, then goes through;
// later requests are no longer stalled.
func TestStallUntilReleased(t *testing.T) {
	is := is.New(t)
	p, up, c := start(t)
	h := p.MustAdd(faultproxy.Rule{Method: "GET", Path: "^/apis/", Action: faultproxy.Stall})
	done := make(chan string, 1)
	go func() {
		b, err := get(c, ctxT(t), p.URL()+"/apis/batch/v1/jobs")
		if err != nil {
			b = "error: " + err.Error()
		}
		done <- b
	}()
	is.NoErr(h.WaitStalled(ctxT(t), 1))
	// Other requests pass meanwhile.
	b, err := get(c, ctxT(t), p.URL()+"/api/v1/pods")
	is.NoErr(err)
	is.Equal(b, "ok /api/v1/pods")
	is.Equal(len(up.received()), 1) // the stalled one has not reached the upstream
	select {
	case b := <-done:
		t.Fatalf("the stalled request answered before the release: %s", b)
	default:
	}
	h.Release()
	is.Equal(<-done, "ok /apis/batch/v1/jobs")
	b, err = get(c, ctxT(t), p.URL()+"/apis/x")
	is.NoErr(err)
	is.Equal(b, "ok /apis/x")
	is.Equal(h.Matched(), 1)
}

// A stall with a duration lets the request go on by itself.
func TestStallFor(t *testing.T) {
	is := is.New(t)
	p, _, c := start(t)
	h := p.MustAdd(faultproxy.Rule{Action: faultproxy.Stall, For: 50 * time.Millisecond})
	b, err := get(c, ctxT(t), p.URL()+"/x")
	is.NoErr(err)
	is.Equal(b, "ok /x")
	is.Equal(h.Matched(), 1)
}

// A request whose client gives up while it is stalled is never forwarded.
func TestStalledRequestOfAGoneClientIsNotForwarded(t *testing.T) {
	is := is.New(t)
	p, up, c := start(t)
	h := p.MustAdd(faultproxy.Rule{Action: faultproxy.Stall})
	ctx, cancel := context.WithCancel(ctxT(t))
	errc := make(chan error, 1)
	go func() { _, err := get(c, ctx, p.URL()+"/gone"); errc <- err }()
	is.NoErr(h.WaitStalled(ctxT(t), 1))
	cancel()
	is.True(errors.Is(<-errc, context.Canceled))
	// Once the proxy has seen the client go, the rule holds nothing.
	is.NoErr(h.WaitNoneStalled(ctxT(t)))
	h.Release()
	is.Equal(len(up.received()), 0)
}

// A dropped response: the upstream gets and answers the request (body
// and token included), the client sees its connection reset. Limit 1: the
// next request passes.
func TestDropResponse(t *testing.T) {
	is := is.New(t)
	p, up, c := start(t)
	h := p.MustAdd(faultproxy.Rule{Method: "POST", Path: "/jobs$", Action: faultproxy.DropResponse, Limit: 1})
	post := func() (string, error) {
		req, _ := http.NewRequestWithContext(ctxT(t), http.MethodPost, p.URL()+"/apis/batch/v1/namespaces/n/jobs", strings.NewReader(`{"kind":"Job"}`))
		req.Header.Set("Authorization", "Bearer tok")
		resp, err := c.Do(req)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b), nil
	}
	_, err := post()
	is.True(err != nil)
	is.True(errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF) || strings.Contains(err.Error(), "EOF"))
	is.Equal(up.received(), []string{`POST /apis/batch/v1/namespaces/n/jobs Bearer tok {"kind":"Job"}`}) // applied
	b, err := post()
	is.NoErr(err)
	is.Equal(b, "ok /apis/batch/v1/namespaces/n/jobs")
	is.Equal(h.Matched(), 1)
	is.Equal(p.Requests()[0].Fault, faultproxy.DropResponse)
}

// Upgraded connections (pods/exec) pass through.
func TestUpgradePassesThrough(t *testing.T) {
	is := is.New(t)
	p, _, _ := start(t)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(p.CAData())
	conn, err := tls.Dial("tcp", strings.TrimPrefix(p.URL(), "https://"), &tls.Config{RootCAs: pool})
	is.NoErr(err)
	defer conn.Close()
	_, err = io.WriteString(conn, "GET /exec HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	is.NoErr(err)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	is.NoErr(err)
	is.Equal(resp.StatusCode, http.StatusSwitchingProtocols)
	_, err = io.WriteString(conn, "hello\n")
	is.NoErr(err)
	line, err := br.ReadString('\n')
	is.NoErr(err)
	is.Equal(line, "echo:hello\n")
}

// Kubeconfig and Rewrite point client-go at the proxy, which it trusts.
func TestKubeconfig(t *testing.T) {
	is := is.New(t)
	p, up, _ := start(t)
	kc, err := p.Kubeconfig("tok")
	is.NoErr(err)
	rc, err := clientcmd.RESTConfigFromKubeConfig(kc)
	is.NoErr(err)
	kube, err := kubernetes.NewForConfig(rc)
	is.NoErr(err)
	v, err := kube.Discovery().ServerVersion()
	is.NoErr(err)
	is.Equal(v.GitVersion, "v1.37.2")
	is.Equal(up.received()[0], "GET /version Bearer tok ")

	other, err := faultproxy.New("https://127.0.0.1:1", nil)
	is.NoErr(err)
	defer other.Close()
	orig, err := other.Kubeconfig("tok2")
	is.NoErr(err)
	re, err := p.Rewrite(orig)
	is.NoErr(err)
	rc, err = clientcmd.RESTConfigFromKubeConfig(re)
	is.NoErr(err)
	is.Equal(rc.Host, p.URL())
	is.Equal(rc.BearerToken, "tok2")
	is.Equal(string(rc.CAData), string(p.CAData()))
}

// The same for a request with a body (a create): net/http notices the
// client going away only once the body is read, so the proxy reads it
// before it holds the request.
func TestStalledPostOfAGoneClientIsNotForwarded(t *testing.T) {
	is := is.New(t)
	p, up, c := start(t)
	h := p.MustAdd(faultproxy.Rule{Action: faultproxy.Stall})
	ctx, cancel := context.WithCancel(ctxT(t))
	errc := make(chan error, 1)
	go func() {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.URL()+"/create", strings.NewReader(`{"kind":"Sandbox"}`))
		if err != nil {
			errc <- err
			return
		}
		resp, err := c.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	is.NoErr(h.WaitStalled(ctxT(t), 1))
	cancel()
	is.True(errors.Is(<-errc, context.Canceled))
	is.NoErr(h.WaitNoneStalled(ctxT(t))) // fails without reading the body first: the proxy never sees the client go
	h.Release()
	is.Equal(len(up.received()), 0)
}
