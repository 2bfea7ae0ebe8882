// Package execnode is a tiny stand-in for a kubelet's streaming server, for
// tests and local development only.
//
// SECURITY: a Node runs every command it is asked to run as a LOCAL process on
// the host, as the user of the test process, in an ordinary directory. It
// isolates NOTHING: no container, no namespaces, no cgroups, no seccomp, no
// user switch, no resource limits and no authentication of its callers (it
// listens on 127.0.0.1 only, but any local user who finds the port can run
// commands as you). Never run it on a machine or account you care about
// outside of tests, and never expose its port.
//
// What it serves, over HTTPS (an in-memory self-signed certificate; the
// kube-apiserver does not verify kubelet certificates when
// --kubelet-certificate-authority is unset):
//
//   - /exec/{namespace}/{pod}/{container} and
//     /exec/{namespace}/{pod}/{uid}/{container}: the kubelet exec endpoint the
//     API server proxies pods/exec to, implemented with
//     k8s.io/cri-streaming's remotecommand.ServeExec (SPDY v1–v4 and the
//     legacy v1–v4 WebSocket protocols, exactly what a kubelet speaks). It
//     also answers WebSocket v5.channel.k8s.io (the protocol with the stdin
//     CLOSE signal) itself, so client-go's WebSocket executor can be pointed
//     straight at the node in unit tests; through a real API server the
//     apiserver translates v5 WebSocket clients to SPDY and this path is not
//     used. Options.KubeletProtocolsOnly turns it off.
//   - /containerLogs/{namespace}/{pod}/{container}: the bytes written with
//     WriteLog (see logs.go for the supported query parameters).
//   - /healthz: "ok".
//
// Requests are not authenticated, and the pod, namespace and container need
// not exist anywhere: any valid names work, which is what lets unit tests
// point client-go straight at the node.
//
// Commands run with os/exec in their pod's directory (created on demand):
// <Root>/.pods/<uid> once Node.WatchPods connects the node to the API
// server, which also makes pod deletion kill the pod's processes (see
// pods.go); else WorkDir(namespace, pod) = <Root>/<ns>/<pod>. stdin is wired to the stream so the client's EOF
// reaches the process; stdout and stderr are separate; a non-zero exit status
// is returned as a k8s.io/utils/exec.ExitError so the API server reports the
// standard NonZeroExitCode status (clients see
// k8s.io/client-go/util/exec.CodeExitError). A process killed by signal N is
// reported as exit code 128+N, as container runtimes do (so `kill -9 $$`
// gives 137). Each command runs in its own process group; the group is
// SIGKILLed when the client's stream is torn down before the command ends,
// and every group still alive is killed by Close. A background grandchild
// that keeps stdout/stderr/stdin open cannot make an exec hang: output is
// cut off WaitDelay after the foreground process exits (a real container
// runtime may instead keep the exec open until the grandchild closes them).
//
// TTY (tty=1) runs the command on a new terminal (Linux; tty_linux.go), with
// resizes. Not implemented: attach, port-forward, /run, the container's image environment,
// users, and any resource accounting.
//
// The process environment is minimal and does not inherit the test process's
// environment: PATH (the host's), HOME and PWD (the pod's directory),
// HOSTNAME=<pod>, the markers EXECNODE_INSTANCE and EXECNODE_POD used to
// find leftover processes, and Options.Env.
package execnode

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"k8s.io/client-go/kubernetes"
)

// Options configures a Node.
type Options struct {
	// Root is the directory under which per-pod work directories
	// (<Root>/<namespace>/<pod>) and logs are kept. Empty means a fresh
	// temporary directory that Close removes.
	Root string
	// Log receives one line per exec and per served log request (names,
	// argv[0], argument count, exit status; never arguments, environment or
	// stdin). Nil discards.
	Log io.Writer
	// Env is added to the environment of every command (KEY=value).
	Env []string
	// WaitDelay bounds how long an exec waits for its stdio to close after
	// the foreground process has exited (a background child may hold it).
	// Zero means 2s.
	WaitDelay time.Duration
	// IdleTimeout closes a stream with no traffic for this long. Zero means
	// 4h, the kubelet's default --streaming-connection-idle-timeout.
	IdleTimeout time.Duration
	// KubeletProtocolsOnly turns off the node's own v5.channel.k8s.io
	// WebSocket handler, so the node speaks exactly what a kubelet speaks
	// (SPDY, and WebSocket v1–v4). A client offering only WebSocket v5 then
	// gets an upgrade failure (useful to test SPDY fallback).
	KubeletProtocolsOnly bool
}

// Node is a fake kubelet streaming server. See the package documentation:
// it runs commands on the host and isolates nothing.
type Node struct {
	root      string
	ownRoot   bool
	logw      io.Writer
	logMu     sync.Mutex
	env       []string
	waitDelay time.Duration
	idle      time.Duration
	noV5      bool
	marker    string

	mu        sync.Mutex
	kube      kubernetes.Interface // set by WatchPods
	stopWatch func()
	podsByKey map[string]*podState
	started   bool
	closed    bool
	srv       *http.Server
	ln        net.Listener
	conns     map[*trackedConn]struct{}
	pgids     map[int]struct{}
	endedLogs map[string]bool
	certPEM   []byte
	closeCh   chan struct{}
	serveDone chan struct{}
	wg        sync.WaitGroup // running execs
}

// New returns a Node that is not listening yet; call Start.
func New(opts Options) *Node {
	n := &Node{
		root:      opts.Root,
		logw:      opts.Log,
		env:       append([]string(nil), opts.Env...),
		waitDelay: opts.WaitDelay,
		idle:      opts.IdleTimeout,
		noV5:      opts.KubeletProtocolsOnly,
		conns:     map[*trackedConn]struct{}{},
		pgids:     map[int]struct{}{},
		podsByKey: map[string]*podState{},
		endedLogs: map[string]bool{},
		closeCh:   make(chan struct{}),
	}
	if n.logw == nil {
		n.logw = io.Discard
	}
	if n.waitDelay <= 0 {
		n.waitDelay = 2 * time.Second
	}
	if n.idle <= 0 {
		n.idle = 4 * time.Hour
	}
	var b [12]byte
	_, _ = rand.Read(b[:])
	n.marker = hex.EncodeToString(b[:])
	return n
}

// Start creates the root directory if needed, listens on 127.0.0.1 on a free
// port and serves until Close is called or ctx is done. It returns the port.
func (n *Node) Start(ctx context.Context) (int, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.started {
		return 0, errors.New("execnode: already started")
	}
	if n.closed {
		return 0, errors.New("execnode: closed")
	}
	if n.root == "" {
		d, err := os.MkdirTemp("", "execnode-")
		if err != nil {
			return 0, fmt.Errorf("execnode: %w", err)
		}
		n.root, n.ownRoot = d, true
	} else if err := os.MkdirAll(n.root, 0o755); err != nil {
		return 0, fmt.Errorf("execnode: %w", err)
	}
	abs, err := filepath.Abs(n.root)
	if err != nil {
		return 0, fmt.Errorf("execnode: %w", err)
	}
	n.root = abs

	cert, certPEM, err := selfSignedCert()
	if err != nil {
		return 0, fmt.Errorf("execnode: certificate: %w", err)
	}
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("execnode: listen: %w", err)
	}
	n.ln = tls.NewListener(&trackingListener{Listener: raw, n: n}, &tls.Config{
		Certificates: []tls.Certificate{cert},
		// HTTP/1.1 only: exec upgrades (SPDY, WebSocket) need a hijackable
		// connection.
		NextProtos: []string{"http/1.1"},
		MinVersion: tls.VersionTLS12,
	})
	n.certPEM = certPEM
	mux := http.NewServeMux()
	mux.HandleFunc("/exec/", n.handleExec)
	mux.HandleFunc("/containerLogs/", n.handleLogs)
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") })
	n.srv = &http.Server{
		Handler: mux,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if tc, ok := c.(*tls.Conn); ok {
				if t, ok := tc.NetConn().(*trackedConn); ok {
					return context.WithValue(ctx, connKey{}, t)
				}
			}
			return ctx
		},
	}
	n.serveDone = make(chan struct{})
	go func() {
		defer close(n.serveDone)
		_ = n.srv.Serve(n.ln)
	}()
	go func() {
		select {
		case <-ctx.Done():
			n.Close()
		case <-n.closeCh:
		}
	}()
	n.started = true
	port := raw.Addr().(*net.TCPAddr).Port
	n.logf("listening on 127.0.0.1:%d root=%s", port, n.root)
	return port, nil
}

// CertPEM returns the PEM encoding of the node's self-signed serving
// certificate (valid for 127.0.0.1 and localhost), for clients that want to
// verify it. Nil before Start.
func (n *Node) CertPEM() []byte {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]byte(nil), n.certPEM...)
}

// Root returns the root directory (after Start, the absolute path).
func (n *Node) Root() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.root
}

// Close stops the server, tears down every open stream (which kills the
// process groups of running commands), kills every process group this node
// started that is still alive (background helpers), waits for running execs
// to finish, and removes Root if Start created it. It is safe to call more
// than once.
func (n *Node) Close() {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return
	}
	n.closed = true
	close(n.closeCh)
	srv, started := n.srv, n.started
	conns := make([]*trackedConn, 0, len(n.conns))
	for c := range n.conns {
		conns = append(conns, c)
	}
	n.mu.Unlock()
	n.StopWatchingPods()
	if !started {
		return
	}
	_ = srv.Close() // listener and non-hijacked connections
	for _, c := range conns {
		_ = c.Close() // hijacked (streaming) connections
	}
	<-n.serveDone
	n.killLeftovers()
	n.wg.Wait()
	// Kill until no group of ours has a member left (a process caught in
	// the middle of an exec is only recognised a moment later); bounded.
	for i := 0; i < 50; i++ {
		n.killLeftovers()
		n.mu.Lock()
		left := len(n.pgids)
		n.mu.Unlock()
		if left == 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n.ownRoot {
		_ = os.RemoveAll(n.root)
	}
	n.logf("closed")
}

// nameRE accepts Kubernetes object names (DNS-1123 subdomains), which also
// covers namespaces and container names, and rules out path traversal.
var nameRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$`)

func validName(s string) bool {
	return len(s) <= 253 && nameRE.MatchString(s) && !strings.Contains(s, "..")
}

// WorkDir returns <Root>/<namespace>/<pod>, creating it if it does not exist
// (best effort). Exec'd commands run there. It panics if namespace or pod is
// not a valid Kubernetes name, or if called before Start when Root was empty.
func (n *Node) WorkDir(namespace, pod string) string {
	if !validName(namespace) || !validName(pod) {
		panic(fmt.Sprintf("execnode: invalid namespace/pod name %q/%q", namespace, pod))
	}
	root := n.Root()
	if root == "" {
		panic("execnode: WorkDir before Start with an empty Options.Root")
	}
	d := filepath.Join(root, namespace, pod)
	_ = os.MkdirAll(d, 0o755)
	return d
}

func (n *Node) logf(format string, args ...any) {
	n.logMu.Lock()
	defer n.logMu.Unlock()
	fmt.Fprintf(n.logw, "execnode: "+format+"\n", args...)
}

type connKey struct{}

// trackingListener wraps accepted connections so the node can tell when a
// hijacked (streaming) connection goes away, and close them all on Close.
type trackingListener struct {
	net.Listener
	n *Node
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	t := &trackedConn{Conn: c, done: make(chan struct{}), n: l.n}
	l.n.mu.Lock()
	closed := l.n.closed
	if !closed {
		l.n.conns[t] = struct{}{}
	}
	l.n.mu.Unlock()
	if closed {
		_ = c.Close()
		return nil, net.ErrClosed
	}
	return t, nil
}

// trackedConn closes done when the connection is closed or a read fails
// (the peer went away). After a hijack net/http no longer watches the
// connection, so this is how an exec notices a torn-down stream.
type trackedConn struct {
	net.Conn
	n    *Node
	once sync.Once
	done chan struct{}
}

func (c *trackedConn) gone() {
	c.once.Do(func() {
		close(c.done)
		c.n.mu.Lock()
		delete(c.n.conns, c)
		c.n.mu.Unlock()
	})
}

func (c *trackedConn) Read(p []byte) (int, error) {
	k, err := c.Conn.Read(p)
	// A deadline error is not the peer going away: net/http aborts its
	// background read with a past deadline when a handler hijacks.
	if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		c.gone()
	}
	return k, err
}

func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	c.gone()
	return err
}

// streamContext returns a context that is canceled when the request's
// underlying connection goes away or the node closes.
func (n *Node) streamContext(r *http.Request) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(r.Context())
	var done <-chan struct{}
	if t, ok := r.Context().Value(connKey{}).(*trackedConn); ok {
		done = t.done
	}
	go func() {
		select {
		case <-done:
			cancel()
		case <-n.closeCh:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

func selfSignedCert() (tls.Certificate, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "execnode"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(7 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key},
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}
