package plugin

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/version"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/paperclip-k8s/paperclip-k8s/engine"
	"github.com/paperclip-k8s/paperclip-k8s/plugin/policy"
	"github.com/paperclip-k8s/paperclip-k8s/podexec"
)

// cluster holds the clients for one API server, built once per distinct
// credentials and reused by every call (discovery is cached in memory).
type cluster struct {
	config *rest.Config
	kube   kubernetes.Interface
	engine *engine.Engine
	exec   *podexec.Executor
	// gate verifies, once, that a kubeconfig's server is a Kubernetes API
	// server before anything else is sent to it (nil for inCluster).
	gate *apiGate
	// tenants remembers which tenant values were applied when.
	tenants sync.Map
	// tenantKeys maps a hash of tenant values to their tenantKey.
	tenantKeys sync.Map
	// tenantFlights keeps one tenant apply per tenant in flight.
	tenantFlights flights
	// identity is who the provider is here (providerIdentity).
	identity atomic.Value // Identity
	// standbys are the standby leases held on this cluster (standby.go).
	standbys standbys
}

// WrapTransport, when set, wraps the transports of clusters built afterwards (under the apiGate): `paperclip-k8s bench` counts requests with it.
var WrapTransport func(http.RoundTripper) http.RoundTripper

type clusters struct {
	mu sync.Mutex
	m  map[string]*cluster
	// fixed, when set, is the cluster of every config, with no credentials
	// read: the hooks' unit tests set it to a cluster over
	// engine/enginetest's fake (hooks_test.go). Nothing else sets it.
	fixed *cluster
}

// RESTConfig builds the client config a provider config names: in-cluster
// credentials, or the inline kubeconfig. The kubeconfig is data: a field
// that runs a program, reads a host file or picks a proxy is refused, and
// its server must be one the worker's environment (getenv, nil: none)
// allows; see policy.LoadKubeconfig. Its requests go through the apiGate.
func RESTConfig(cfg policy.Config, getenv func(string) string) (*rest.Config, error) {
	var rc *rest.Config
	var err error
	switch {
	case cfg.InCluster:
		rc, err = rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("inCluster is true but the in-cluster credentials are not usable (%v); run the worker in a pod with a ServiceAccount, or set kubeconfig instead", err)
		}
	case cfg.Kubeconfig.Reveal() != "":
		kc, problems, err := policy.LoadKubeconfig([]byte(cfg.Kubeconfig.Reveal()), policy.KubeconfigTrustFromEnv(getenv))
		if err == nil && len(problems) > 0 {
			return nil, policy.KubeconfigError(problems)
		}
		if err == nil {
			if why := policy.KubeconfigUnusable(kc); why != "" {
				return nil, fmt.Errorf("config field kubeconfig: the kubeconfig is not usable: %s", why)
			}
		}
		if err == nil {
			// The same parse that was checked (clientcmd.RESTConfigFromKubeConfig
			// is Load, then this).
			rc, err = clientcmd.NewDefaultClientConfig(*kc, &clientcmd.ConfigOverrides{}).ClientConfig()
		}
		if err != nil {
			// The parser's message may quote the document: do not pass it on.
			return nil, fmt.Errorf("config field kubeconfig: the value is not a usable kubeconfig; give a complete kubeconfig YAML whose current-context names a cluster and a user")
		}
		if rc.ExecProvider != nil || rc.AuthProvider != nil || rc.BearerTokenFile != "" || rc.CertFile != "" || rc.KeyFile != "" || rc.CAFile != "" || rc.Proxy != nil {
			if !policy.KubeconfigTrustFromEnv(getenv).AllowCredentialPlugins {
				// LoadKubeconfig checks every field these come from.
				return nil, fmt.Errorf("config field kubeconfig: the kubeconfig makes the worker run a program, read a host file or use a proxy; use a token or client-certificate-data/client-key-data")
			}
		}
	default:
		return nil, fmt.Errorf("config: neither inCluster nor kubeconfig is set; set kubeconfig to a kubeconfig YAML, or inCluster: true when the worker runs in a pod")
	}
	// No client-side rate limit: a burst of runs goes at the API server's
	// pace, which API Priority and Fairness sets (`paperclip-k8s rbac`
	// prints a FlowSchema for the provider); client-go retries 429s after
	// the server's Retry-After.
	rc.QPS, rc.Burst = -1, 0
	rc.UserAgent = "paperclip-k8s"
	rc.Wrap(WrapTransport)
	return rc, nil
}

// all returns the clusters built so far.
func (cs *clusters) all() []*cluster {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	out := make([]*cluster, 0, len(cs.m)+1)
	if cs.fixed != nil {
		out = append(out, cs.fixed)
	}
	for _, c := range cs.m {
		out = append(out, c)
	}
	return out
}

func (p *Provider) cluster(cfg policy.Config) (*cluster, error) {
	key := "in-cluster"
	if !cfg.InCluster {
		sum := sha256.Sum256([]byte(cfg.Kubeconfig.Reveal()))
		key = hex.EncodeToString(sum[:])
	}
	p.clusters.mu.Lock()
	defer p.clusters.mu.Unlock()
	if p.clusters.fixed != nil {
		return p.clusters.fixed, nil
	}
	if c, ok := p.clusters.m[key]; ok {
		return c, nil
	}
	rc, err := RESTConfig(cfg, p.Getenv)
	if err != nil {
		return nil, err
	}
	var gate *apiGate
	if !cfg.InCluster {
		if gate, err = guard(rc); err != nil {
			return nil, err
		}
	}
	c, err := p.newCluster(rc)
	if err != nil {
		return nil, err
	}
	if gate != nil {
		if gate.client, err = rest.HTTPClientFor(rc); err != nil {
			return nil, fmt.Errorf("building an HTTP client: %w", err)
		}
		gate.client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
		c.gate = gate
	}
	if p.clusters.m == nil {
		p.clusters.m = map[string]*cluster{}
	}
	p.clusters.m[key] = c
	return c, nil
}

func (p *Provider) newCluster(rc *rest.Config) (*cluster, error) {
	kube, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("building a Kubernetes client: %w", err)
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("building a dynamic client: %w", err)
	}
	disc, err := discovery.NewDiscoveryClientForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("building a discovery client: %w", err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(disc))
	ex, err := podexec.NewExecutor(rc, podexec.Options{Transport: p.Transport})
	if err != nil {
		return nil, err
	}
	return &cluster{
		config: rc,
		kube:   kube,
		engine: engine.New(p.Catalog, dyn, mapper, kube.CoreV1().RESTClient(), p.Log),
		exec:   ex,
	}, nil
}

func typesUID(s string) types.UID { return types.UID(s) }

// The server of a kubeconfig is chosen by the company admin: it may be any
// HTTP endpoint the Paperclip host can reach. client-go puts response
// bodies in its errors ("an error on the server (\"<body>\") has prevented
// the request", "Object 'Kind' is missing in '<body>'"), so such a server
// would have its answers relayed to the tenant. The apiGate stops that:
//
//   - before the first request of a cluster's clients goes out, GET /version
//     must decode as version.Info with a gitVersion and GET /api as
//     APIVersions (sent through the cluster's own transport, credentials
//     and all); until then nothing else is sent, and the failure says only
//     the host and the HTTP status;
//   - a request to another host than the server (a redirect) is refused;
//   - an answer outside 2xx (and 101) whose Content-Type is not a Kubernetes
//     one has its body dropped.
//
// The gate sits in rest.Config.WrapTransport, which client-go applies to the
// REST transports and to the exec upgraders (SPDY, WebSocket) alike
// (TestGateCoversExec).
type apiGate struct {
	base     *url.URL // the server URL (with its path prefix, if any)
	origin   string   // scheme://host:port of base
	host     string   // host:port of base, for messages
	verified atomic.Bool
	sem      chan struct{} // one verification at a time
	client   *http.Client  // the cluster's own transport (set by cluster())
}

// verifyTimeout bounds one verification.
const verifyTimeout = 30 * time.Second

type verifyingKey struct{}

// guard installs an apiGate on rc.
func guard(rc *rest.Config) (*apiGate, error) {
	base, _, err := rest.DefaultServerUrlFor(rc)
	if err != nil {
		return nil, fmt.Errorf("config field kubeconfig: the cluster's server is not a URL; give https://host[:port]")
	}
	origin, hostPort := originOf(base)
	g := &apiGate{base: base, origin: origin, host: hostPort, sem: make(chan struct{}, 1)}
	rc.Wrap(func(rt http.RoundTripper) http.RoundTripper { return &gateTransport{g: g, rt: rt} })
	return g, nil
}

// originOf returns scheme://host:port (ws and wss read as http and https,
// the port made explicit) and host:port.
func originOf(u *url.URL) (origin, hostPort string) {
	scheme := strings.ToLower(u.Scheme)
	switch scheme {
	case "ws":
		scheme = "http"
	case "wss":
		scheme = "https"
	}
	port := u.Port()
	if port == "" {
		port = "443"
		if scheme == "http" {
			port = "80"
		}
	}
	hostPort = net.JoinHostPort(strings.TrimSuffix(strings.ToLower(u.Hostname()), "."), port)
	return scheme + "://" + hostPort, hostPort
}

// admit lets a request through once the server is verified (verifying it
// on first use) and when it goes to the server itself.
func (g *apiGate) admit(req *http.Request) error {
	if o, _ := originOf(req.URL); o != g.origin {
		return fmt.Errorf("the API server %s redirected the worker to another host; the worker only talks to the server the kubeconfig names", g.host)
	}
	ctx := req.Context()
	if g.verified.Load() || ctx.Value(verifyingKey{}) != nil {
		return nil
	}
	select {
	case g.sem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-g.sem }()
	if g.verified.Load() {
		return nil
	}
	if err := g.verify(ctx); err != nil {
		return err
	}
	g.verified.Store(true)
	return nil
}

// verify checks that the server answers /version and /api as a Kubernetes
// API server. Its errors never carry what the server sent.
func (g *apiGate) verify(ctx context.Context) error {
	if g.client == nil {
		return errors.New("internal error: the API server check has no client")
	}
	ctx, cancel := context.WithTimeout(context.WithValue(ctx, verifyingKey{}, true), verifyTimeout)
	defer cancel()
	get := func(path string, into any, ok func() bool) error {
		u := g.base.JoinPath(path)
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
		if err != nil {
			return err
		}
		req.Header.Set("Accept", "application/json")
		resp, err := g.client.Do(req)
		if err != nil {
			return g.transportError(ctx, path, err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
		if err != nil || resp.StatusCode != http.StatusOK || mt != "application/json" || json.Unmarshal(body, into) != nil || !ok() {
			msg := fmt.Sprintf("server %s did not answer /%s as a Kubernetes API server (HTTP %d)", g.host, path, resp.StatusCode)
			if resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden {
				msg += "; if it is one, it refused the kubeconfig's credentials"
			}
			return errors.New(msg)
		}
		return nil
	}
	var v version.Info
	if err := get("version", &v, func() bool { return v.GitVersion != "" }); err != nil {
		return err
	}
	var av metav1.APIVersions
	return get("api", &av, func() bool { return av.Kind == "APIVersions" && len(av.Versions) > 0 })
}

// transportError describes a failed verification request without anything
// the server sent (Go's HTTP client quotes a malformed response's first
// line, and a certificate error lists the names the certificate is for).
func (g *apiGate) transportError(ctx context.Context, path string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("server %s did not answer /%s: %w", g.host, path, ctx.Err())
	}
	var dnsErr *net.DNSError
	var opErr *net.OpError
	var certErr *tls.CertificateVerificationError
	var unknownCA x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var invalid x509.CertificateInvalidError
	switch {
	case errors.As(err, &certErr), errors.As(err, &unknownCA), errors.As(err, &hostErr), errors.As(err, &invalid):
		return fmt.Errorf("server %s: its TLS certificate is not valid for it with the kubeconfig's certificate-authority-data and tls-server-name", g.host)
	case errors.As(err, &dnsErr):
		return fmt.Errorf("server %s: cannot resolve the host name: %w", g.host, dnsErr)
	case errors.As(err, &opErr) && opErr.Op == "dial":
		return fmt.Errorf("server %s: %w", g.host, opErr)
	}
	return fmt.Errorf("server %s did not answer /%s as a Kubernetes API server (no valid HTTP response)", g.host, path)
}

// gateTransport is the apiGate in the REST transports.
type gateTransport struct {
	g  *apiGate
	rt http.RoundTripper
}

func (t *gateTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if err := t.g.admit(req); err != nil {
		if req.Body != nil {
			_ = req.Body.Close()
		}
		return nil, err
	}
	resp, err := t.rt.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	if (resp.StatusCode < 200 || resp.StatusCode >= 300) && resp.StatusCode != http.StatusSwitchingProtocols && !kubernetesContentType(resp.Header.Get("Content-Type")) {
		_ = resp.Body.Close()
		resp.Body = http.NoBody
		resp.ContentLength = 0
		resp.Header = resp.Header.Clone()
		resp.Header.Set("Content-Length", "0")
	}
	return resp, nil
}

func (t *gateTransport) WrappedRoundTripper() http.RoundTripper { return t.rt }

// kubernetesContentType reports whether an API server sends errors in ct.
func kubernetesContentType(ct string) bool {
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		return false
	}
	switch mt {
	case "application/json", "application/vnd.kubernetes.protobuf", "application/yaml":
		return true
	}
	return false
}
