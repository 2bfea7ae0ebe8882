// Package faultproxy is a fault-injecting HTTPS reverse proxy for tests,
// meant to sit in front of the dev API server (internal/devcluster): it
// terminates TLS with its own httptest certificate, passes every request
// (headers included, so the client's bearer token reaches the API server;
// upgrades such as pods/exec too) to the upstream, and applies rules set at
// runtime to the requests they match:
//
//   - Stall holds a request until the rule is released, or for a duration;
//     then it is forwarded if its client still waits (a client that gave up
//     is not forwarded for: nothing reaches the API server).
//   - DropResponse forwards the request, reads the whole response (the API
//     server has applied it), then resets the client's connection without
//     a byte of the response: "applied, then the connection was reset".
//
// It counts every request by method and path. Kubeconfig and Rewrite make
// kubeconfigs that point at the proxy.
package faultproxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"regexp"
	"sync"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Action is what a rule does with the requests it matches.
type Action int

const (
	// Stall holds the request (see Rule.For).
	Stall Action = iota + 1
	// DropResponse forwards the request and resets the client's connection
	// instead of answering.
	DropResponse
)

func (a Action) String() string {
	switch a {
	case Stall:
		return "stall"
	case DropResponse:
		return "drop-response"
	}
	return fmt.Sprintf("action(%d)", int(a))
}

// Rule says which requests get which fault.
type Rule struct {
	// Method matches the HTTP method ("" matches any).
	Method string
	// Path is a regular expression matched against the URL path ("" matches
	// any), e.g. `^/apis/batch/v1/namespaces/[^/]+/jobs$`.
	Path   string
	Action Action
	// For is how long Stall holds a request; 0 holds it until Release.
	For time.Duration
	// Limit applies the rule to the first Limit matching requests only
	// (0: to all).
	Limit int
}

// Handle is a rule added to a proxy.
type Handle struct {
	p       *Proxy
	rule    Rule
	path    *regexp.Regexp
	release chan struct{}
	once    sync.Once

	// guarded by p.mu
	matched int
	waiting int
	removed bool
}

// Request is one request the proxy received.
type Request struct {
	Method string
	Path   string
	Query  string
	// Fault is the action applied to it (0: passed through).
	Fault Action
}

// Proxy is a running fault proxy.
type Proxy struct {
	srv      *httptest.Server
	upstream *url.URL
	rp       *httputil.ReverseProxy
	toUp     *http.Transport

	mu       sync.Mutex
	rules    []*Handle
	requests []Request
	changed  chan struct{} // closed and replaced on every change
}

// New starts a proxy in front of upstream (https://host:port), trusting
// caPEM (PEM certificates; nil: the system roots) for it.
func New(upstream string, caPEM []byte) (*Proxy, error) {
	u, err := url.Parse(upstream)
	if err != nil || u.Scheme == "" || u.Host == "" {
		return nil, fmt.Errorf("faultproxy: upstream %q is not an absolute URL", upstream)
	}
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if len(caPEM) > 0 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(caPEM) {
			return nil, errors.New("faultproxy: the upstream CA data holds no PEM certificate")
		}
		tlsCfg.RootCAs = pool
	}
	// HTTP/1.1 to the upstream: upgrades (SPDY, WebSocket) need it.
	toUp := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
		TLSClientConfig:     tlsCfg,
		ForceAttemptHTTP2:   false,
		MaxIdleConnsPerHost: 32,
	}
	p := &Proxy{upstream: u, toUp: toUp, changed: make(chan struct{})}
	p.rp = &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(u)
			r.Out.Host = u.Host
		},
		Transport:     toUp,
		FlushInterval: -1, // watches and logs stream
		// An upstream failure is a 502 without a Kubernetes Status, as a
		// real load balancer answers.
		ErrorHandler: func(w http.ResponseWriter, _ *http.Request, err error) {
			http.Error(w, "faultproxy: upstream: "+err.Error(), http.StatusBadGateway)
		},
	}
	// httptest's TLS server speaks HTTP/1.1 only (EnableHTTP2 is false), so
	// a dropped response can be a reset connection.
	p.srv = httptest.NewUnstartedServer(http.HandlerFunc(p.serve))
	p.srv.StartTLS()
	return p, nil
}

// NewForKubeconfig starts a proxy in front of the server of a kubeconfig's
// current context, trusting its certificate-authority-data.
func NewForKubeconfig(kubeconfig []byte) (*Proxy, error) {
	cfg, err := clientcmd.Load(kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("faultproxy: reading the kubeconfig: %w", err)
	}
	c, err := currentCluster(cfg)
	if err != nil {
		return nil, err
	}
	return New(c.Server, c.CertificateAuthorityData)
}

func currentCluster(cfg *clientcmdapi.Config) (*clientcmdapi.Cluster, error) {
	ctx, ok := cfg.Contexts[cfg.CurrentContext]
	if !ok {
		return nil, fmt.Errorf("faultproxy: the kubeconfig's current-context %q does not exist", cfg.CurrentContext)
	}
	c, ok := cfg.Clusters[ctx.Cluster]
	if !ok {
		return nil, fmt.Errorf("faultproxy: the kubeconfig's cluster %q does not exist", ctx.Cluster)
	}
	return c, nil
}

// URL is the proxy's https URL.
func (p *Proxy) URL() string { return p.srv.URL }

// CAData is the PEM of the proxy's serving certificate (its own CA).
func (p *Proxy) CAData() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.srv.Certificate().Raw})
}

// Kubeconfig returns a kubeconfig for the proxy with a bearer token.
func (p *Proxy) Kubeconfig(token string) ([]byte, error) {
	kc := clientcmdapi.NewConfig()
	kc.Clusters["faultproxy"] = &clientcmdapi.Cluster{Server: p.URL(), CertificateAuthorityData: p.CAData()}
	kc.AuthInfos["user"] = &clientcmdapi.AuthInfo{Token: token}
	kc.Contexts["faultproxy"] = &clientcmdapi.Context{Cluster: "faultproxy", AuthInfo: "user"}
	kc.CurrentContext = "faultproxy"
	return clientcmd.Write(*kc)
}

// Rewrite returns kubeconfig with its current cluster pointed at the proxy
// (server and CA; the credentials are kept and travel through the proxy).
func (p *Proxy) Rewrite(kubeconfig []byte) ([]byte, error) {
	cfg, err := clientcmd.Load(kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("faultproxy: reading the kubeconfig: %w", err)
	}
	c, err := currentCluster(cfg)
	if err != nil {
		return nil, err
	}
	c.Server = p.URL()
	c.CertificateAuthorityData = p.CAData()
	c.CertificateAuthority = ""
	c.TLSServerName = ""
	c.InsecureSkipTLSVerify = false
	return clientcmd.Write(*cfg)
}

// Close releases every rule and stops the proxy.
func (p *Proxy) Close() {
	p.mu.Lock()
	rules := append([]*Handle(nil), p.rules...)
	p.mu.Unlock()
	for _, h := range rules {
		h.Release()
	}
	p.srv.CloseClientConnections()
	p.srv.Close()
	p.toUp.CloseIdleConnections()
}

// Add adds a rule; rules are tried in the order they were added.
func (p *Proxy) Add(r Rule) (*Handle, error) {
	if r.Action != Stall && r.Action != DropResponse {
		return nil, fmt.Errorf("faultproxy: rule has no action (Stall or DropResponse)")
	}
	h := &Handle{p: p, rule: r, release: make(chan struct{})}
	if r.Path != "" {
		re, err := regexp.Compile(r.Path)
		if err != nil {
			return nil, fmt.Errorf("faultproxy: rule path: %w", err)
		}
		h.path = re
	}
	p.mu.Lock()
	p.rules = append(p.rules, h)
	p.signal()
	p.mu.Unlock()
	return h, nil
}

// MustAdd is Add for rules known to be valid; it panics otherwise.
func (p *Proxy) MustAdd(r Rule) *Handle {
	h, err := p.Add(r)
	if err != nil {
		panic(err)
	}
	return h
}

// Release removes the rule and lets the requests it holds go on.
func (h *Handle) Release() {
	h.once.Do(func() {
		h.p.mu.Lock()
		h.removed = true
		h.p.signal()
		h.p.mu.Unlock()
		close(h.release)
	})
}

// Matched returns how many requests the rule has applied to.
func (h *Handle) Matched() int {
	h.p.mu.Lock()
	defer h.p.mu.Unlock()
	return h.matched
}

// Waiting returns how many requests the rule holds now.
func (h *Handle) Waiting() int {
	h.p.mu.Lock()
	defer h.p.mu.Unlock()
	return h.waiting
}

// WaitMatched waits until the rule has applied to at least n requests.
func (h *Handle) WaitMatched(ctx context.Context, n int) error {
	return h.p.waitFor(ctx, func() bool { return h.matched >= n }, fmt.Sprintf("%d requests matched by the %s rule", n, h.rule.Action))
}

// WaitStalled waits until the rule holds at least n requests at once.
func (h *Handle) WaitStalled(ctx context.Context, n int) error {
	return h.p.waitFor(ctx, func() bool { return h.waiting >= n }, fmt.Sprintf("%d requests held by the %s rule", n, h.rule.Action))
}

// WaitNoneStalled waits until the rule holds no request (e.g. after their
// clients went away).
func (h *Handle) WaitNoneStalled(ctx context.Context) error {
	return h.p.waitFor(ctx, func() bool { return h.waiting == 0 }, fmt.Sprintf("no request held by the %s rule", h.rule.Action))
}

// Requests returns every request received so far, in order.
func (p *Proxy) Requests() []Request {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]Request(nil), p.requests...)
}

// Count returns how many requests matched method ("" any) and the path
// regular expression ("" any).
func (p *Proxy) Count(method, path string) int {
	re := regexp.MustCompile(path)
	n := 0
	for _, r := range p.Requests() {
		if (method == "" || r.Method == method) && re.MatchString(r.Path) {
			n++
		}
	}
	return n
}

func (p *Proxy) waitFor(ctx context.Context, cond func() bool, what string) error {
	for {
		p.mu.Lock()
		ok := cond()
		ch := p.changed
		p.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("faultproxy: waiting for %s: %w", what, ctx.Err())
		}
	}
}

// signal wakes the waiters; p.mu must be held.
func (p *Proxy) signal() {
	close(p.changed)
	p.changed = make(chan struct{})
}

// match finds the first live rule for a request and counts it.
func (p *Proxy) match(r *http.Request) *Handle {
	p.mu.Lock()
	defer p.mu.Unlock()
	rec := Request{Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery}
	var hit *Handle
	for _, h := range p.rules {
		if h.removed || (h.rule.Limit > 0 && h.matched >= h.rule.Limit) {
			continue
		}
		if h.rule.Method != "" && h.rule.Method != r.Method {
			continue
		}
		if h.path != nil && !h.path.MatchString(r.URL.Path) {
			continue
		}
		h.matched++
		rec.Fault = h.rule.Action
		hit = h
		break
	}
	p.requests = append(p.requests, rec)
	p.signal()
	return hit
}

func (p *Proxy) serve(w http.ResponseWriter, r *http.Request) {
	h := p.match(r)
	if h == nil {
		p.rp.ServeHTTP(w, r)
		return
	}
	switch h.rule.Action {
	case Stall:
		// Read the body first: net/http notices a client that goes away
		// (and cancels r.Context()) only once the request body is
		// consumed. Unread, a create whose client gave up would still be
		// forwarded at the release.
		if r.Body != nil {
			body, err := io.ReadAll(r.Body)
			if err != nil {
				return // the client went away while sending
			}
			r.Body = io.NopCloser(bytes.NewReader(body))
		}
		if !h.stall(r.Context()) {
			return // the client gave up: nothing is forwarded
		}
		p.rp.ServeHTTP(w, r)
	case DropResponse:
		p.forwardAndDrop(w, r)
	}
}

// stall holds the request; false when its client went away meanwhile.
func (h *Handle) stall(ctx context.Context) bool {
	h.p.mu.Lock()
	h.waiting++
	h.p.signal()
	h.p.mu.Unlock()
	defer func() {
		h.p.mu.Lock()
		h.waiting--
		h.p.signal()
		h.p.mu.Unlock()
	}()
	var timeout <-chan time.Time
	if h.rule.For > 0 {
		t := time.NewTimer(h.rule.For)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case <-h.release:
	case <-timeout:
	case <-ctx.Done():
		return false
	}
	return ctx.Err() == nil
}

// forwardAndDrop sends the request upstream (whatever the client does
// meanwhile), reads the whole answer, then resets the client connection.
func (p *Proxy) forwardAndDrop(w http.ResponseWriter, r *http.Request) {
	out := r.Clone(context.WithoutCancel(r.Context()))
	out.RequestURI = ""
	out.URL.Scheme, out.URL.Host = p.upstream.Scheme, p.upstream.Host
	out.Host = p.upstream.Host
	if r.Body != nil {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			panic(http.ErrAbortHandler)
		}
		out.Body = io.NopCloser(bytes.NewReader(body))
		out.ContentLength = int64(len(body))
	}
	resp, err := p.toUp.RoundTrip(out)
	if err == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		panic(http.ErrAbortHandler) // closes the connection without an answer
	}
	conn, _, err := hj.Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	if tc, ok := conn.(*tls.Conn); ok {
		if tcp, ok := tc.NetConn().(*net.TCPConn); ok {
			_ = tcp.SetLinger(0) // a reset, not an orderly close
			_ = tcp.Close()
			return
		}
	}
	_ = conn.Close()
}
