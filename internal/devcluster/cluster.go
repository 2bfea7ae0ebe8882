package devcluster

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/paperclip-k8s/paperclip-k8s/internal/sandboxctl"
)

// Options configures Start. The zero value starts etcd and kube-apiserver
// only, with binaries from BinDir() and a fresh temporary directory.
type Options struct {
	// BinDir holds etcd, kube-apiserver, kube-controller-manager,
	// kube-scheduler and kwok. Empty: BinDir().
	BinDir string
	// Dir is the work directory (etcd data, certs, keys, kubeconfig, logs).
	// Empty: a new os.MkdirTemp directory that Stop removes.
	Dir string
	// Nodes also starts kube-controller-manager (all default controllers,
	// including the garbage collector), kube-scheduler and kwok, and
	// registers one fake node (NodeName) that kwok manages.
	Nodes bool
	// SandboxController installs the Sandbox CRD (crds/sandbox.yaml) and
	// runs the stand-in controller of package sandboxctl in this process.
	SandboxController bool
	// KubeletPort is the port on 127.0.0.1 the fake node advertises as its
	// kubelet endpoint, so the API server sends pods/exec, pods/log, attach
	// and port-forward for pods on the node there (e.g. to an execnode
	// server). 0: the node advertises kwok's own kubelet server, which has no
	// exec or log configuration (such requests fail).
	KubeletPort int
	// Log receives the output of every child process, each line prefixed
	// with the process name, and the stand-in controller's log. nil: one
	// file per process in Dir (<name>.log).
	Log io.Writer
	// KeepDir keeps a temporary Dir after Stop (for debugging).
	KeepDir bool
}

// NodeName is the name of the fake node registered when Options.Nodes is set.
const NodeName = "devcluster-node-0"

// Labels and annotations understood by the kwok stages (kwok/stages.yaml).
const (
	// FailLabel set to "true" on a pod makes kwok fail it once Running:
	// phase Failed, every container terminated with exit code 1.
	FailLabel = "devcluster.paperclip.io/fail"
	// FailDelayAnnotation delays FailLabel's failure (Go duration, e.g. "2s").
	FailDelayAnnotation = "devcluster.paperclip.io/fail-delay"
	// CompleteDelayAnnotation delays the Running -> Succeeded step of a Job's
	// pod (Go duration, e.g. "30s"), so a test can see a Job still running.
	CompleteDelayAnnotation = "devcluster.paperclip.io/complete-delay"
)

// Cluster is a running test control plane.
type Cluster struct {
	opts   Options
	dir    string
	ownDir bool

	token      string
	host       string
	caData     []byte
	restConfig *rest.Config
	kubeconfig []byte
	kubeconfP  string
	kube       kubernetes.Interface
	dyn        dynamic.Interface

	mu    sync.Mutex
	procs []*proc
	logMu sync.Mutex
	etcd  *proc
	api   *proc
	kcm   *proc
	sched *proc
	kwok  *proc

	ctl       *sandboxctl.Controller
	ctlCancel context.CancelFunc
	ctlDone   chan struct{}

	stopOnce sync.Once
	keepDir  bool
	log      *slog.Logger
	logFile  *os.File
}

// Start starts a control plane and returns once kube-apiserver's /readyz
// answers (and, with Options.Nodes, once the fake node is Ready; with
// Options.SandboxController, once the CRD is Established and the
// controller's caches are synced). On error everything already started is
// stopped again. ctx bounds the start only, not the cluster's life.
func Start(ctx context.Context, opts Options) (_ *Cluster, err error) {
	if opts.BinDir == "" {
		if opts.BinDir, err = BinDir(); err != nil {
			return nil, err
		}
	} else if err := checkBinDir(opts.BinDir); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoBinaries, err)
	}
	c := &Cluster{opts: opts, dir: opts.Dir, keepDir: opts.KeepDir}
	if c.dir == "" {
		removeStaleDirs()
		if c.dir, err = os.MkdirTemp("", "devcluster-"); err != nil {
			return nil, err
		}
		c.ownDir = true
		if err := os.WriteFile(filepath.Join(c.dir, ownerFile), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
			return nil, err
		}
	} else if err := os.MkdirAll(c.dir, 0o755); err != nil {
		return nil, err
	}
	logOut := opts.Log
	if logOut == nil {
		f, err := os.OpenFile(filepath.Join(c.dir, "devcluster.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return nil, err
		}
		c.logFile = f
		logOut = f
	} else {
		logOut = &prefixWriter{mu: &c.logMu, w: opts.Log, prefix: []byte("[devcluster] ")}
	}
	c.log = slog.New(slog.NewTextHandler(logOut, nil))
	defer func() {
		if err != nil {
			c.Stop()
		}
	}()

	if err := c.writeCredentials(); err != nil {
		return nil, err
	}
	t0 := time.Now()
	for attempt := 1; ; attempt++ {
		err = c.startControlPlane(ctx)
		if err == nil {
			break
		}
		if !errors.Is(err, errPortInUse) || attempt == 3 {
			return nil, err
		}
		c.log.Info("port taken, retrying", "attempt", attempt, "err", err)
		c.stopProcs()
	}
	if err := c.initClients(); err != nil {
		return nil, err
	}
	c.log.Info("kube-apiserver ready", "took", time.Since(t0).Round(time.Millisecond), "host", c.host)
	// The CRD (whose first requests cost 1-2 s server-side) is installed
	// while the node stack starts.
	crdDone := make(chan error, 1)
	var beforeKCM func() error
	if opts.SandboxController {
		established := make(chan error, 1)
		go func() { crdDone <- installCRDs(ctx, c.dyn, established) }()
		// kube-controller-manager's garbage collector must know the kinds
		// from its start.
		beforeKCM = func() error { return <-established }
	}
	if opts.Nodes {
		if err := c.startNodes(ctx, beforeKCM); err != nil {
			return nil, err
		}
		c.log.Info("node ready", "node", NodeName, "took", time.Since(t0).Round(time.Millisecond))
	}
	if opts.SandboxController {
		if err := <-crdDone; err != nil {
			return nil, err
		}
		c.log.Info("Sandbox CRD established", "took", time.Since(t0).Round(time.Millisecond))
		if err := c.startSandboxController(ctx); err != nil {
			return nil, err
		}
		c.log.Info("sandbox controller synced", "took", time.Since(t0).Round(time.Millisecond))
	}
	return c, nil
}

// writeCredentials writes the service-account signing key pair and the
// static token file holding the admin token.
func (c *Cluster) writeCredentials() error {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return err
	}
	if err := os.WriteFile(c.path("sa.key"), pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(c.path("sa.pub"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644); err != nil {
		return err
	}
	tok := make([]byte, 16)
	if _, err := rand.Read(tok); err != nil {
		return err
	}
	c.token = hex.EncodeToString(tok)
	return os.WriteFile(c.path("tokens.csv"), []byte(c.token+",admin,admin-uid,system:masters\n"), 0o600)
}

func (c *Cluster) path(name string) string { return filepath.Join(c.dir, name) }

// startControlPlane starts etcd and kube-apiserver on fresh loopback ports
// and waits for /readyz.
func (c *Cluster) startControlPlane(ctx context.Context) error {
	ports, err := freePorts(3)
	if err != nil {
		return err
	}
	etcdClient, etcdPeer, apiPort := ports[0], ports[1], ports[2]
	dataDir := c.path("etcd")
	if err := os.RemoveAll(dataDir); err != nil {
		return err
	}
	clientURL := "http://127.0.0.1:" + strconv.Itoa(etcdClient)
	peerURL := "http://127.0.0.1:" + strconv.Itoa(etcdPeer)
	c.etcd, err = c.startProc("etcd", "etcd",
		"--name", "devcluster",
		"--data-dir", dataDir,
		"--listen-client-urls", clientURL,
		"--advertise-client-urls", clientURL,
		"--listen-peer-urls", peerURL,
		"--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "devcluster="+peerURL,
		"--unsafe-no-fsync",
		"--log-level", "warn",
	)
	if err != nil {
		return err
	}
	c.api, err = c.startProc("kube-apiserver", "kube-apiserver",
		"--etcd-servers", clientURL,
		"--bind-address", "127.0.0.1",
		"--advertise-address", "127.0.0.1",
		"--secure-port", strconv.Itoa(apiPort),
		"--cert-dir", c.path("certs"),
		"--token-auth-file", c.path("tokens.csv"),
		"--authorization-mode", "RBAC,Node",
		"--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file", c.path("sa.pub"),
		"--service-account-signing-key-file", c.path("sa.key"),
		"--service-cluster-ip-range", "10.96.0.0/16",
		"--allow-privileged=true",
		"--endpoint-reconciler-type", "none",
		// The fake node's Hostname address does not resolve; reach its
		// "kubelet" (exec, logs) on the InternalIP 127.0.0.1.
		"--kubelet-preferred-address-types", "InternalIP,ExternalIP,Hostname",
	)
	if err != nil {
		return err
	}
	c.host = "https://127.0.0.1:" + strconv.Itoa(apiPort)
	return c.waitReady(ctx)
}

// waitReady polls /readyz every 50 ms until it answers 200, a process
// exits, or ctx ends.
func (c *Cluster) waitReady(ctx context.Context) error {
	hc := &http.Client{
		Timeout:   2 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}, // the serving cert does not exist yet
	}
	defer hc.CloseIdleConnections()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		for _, p := range []*proc{c.etcd, c.api} {
			if p.exited() {
				if p.failedOnPort() {
					return fmt.Errorf("%w: %w", errPortInUse, p.exitError())
				}
				return p.exitError()
			}
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, c.host+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+c.token)
		if resp, err := hc.Do(req); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kube-apiserver not ready: %w\n--- last output of kube-apiserver ---\n%s", ctx.Err(), c.api.tail.Bytes())
		case <-tick.C:
		}
	}
}

// initClients builds the admin rest.Config (verifying the API server's
// self-signed serving certificate), the kubeconfig file and the clients.
func (c *Cluster) initClients() error {
	bundle, err := os.ReadFile(c.path("certs/apiserver.crt"))
	if err != nil {
		return fmt.Errorf("read serving cert: %w", err)
	}
	ca := caCerts(bundle)
	c.caData = ca
	c.restConfig = &rest.Config{
		Host:            c.host,
		BearerToken:     c.token,
		TLSClientConfig: rest.TLSClientConfig{CAData: ca},
		QPS:             100,
		Burst:           200,
		Timeout:         30 * time.Second,
	}
	kc := clientcmdapi.NewConfig()
	kc.Clusters["devcluster"] = &clientcmdapi.Cluster{Server: c.host, CertificateAuthorityData: ca}
	kc.AuthInfos["admin"] = &clientcmdapi.AuthInfo{Token: c.token}
	kc.Contexts["devcluster"] = &clientcmdapi.Context{Cluster: "devcluster", AuthInfo: "admin", Namespace: "default"}
	kc.CurrentContext = "devcluster"
	if c.kubeconfig, err = clientcmd.Write(*kc); err != nil {
		return err
	}
	c.kubeconfP = c.path("kubeconfig")
	if err := os.WriteFile(c.kubeconfP, c.kubeconfig, 0o600); err != nil {
		return err
	}
	if c.kube, err = kubernetes.NewForConfig(c.RESTConfig()); err != nil {
		return err
	}
	if c.dyn, err = dynamic.NewForConfig(c.RESTConfig()); err != nil {
		return err
	}
	// One request through the verifying client proves the CA is usable.
	if _, err := c.kube.Discovery().ServerVersion(); err != nil {
		return fmt.Errorf("talk to kube-apiserver with its serving cert as CA: %w", err)
	}
	return nil
}

// caCerts returns the CA certificates of the PEM bundle the API server
// writes to --cert-dir (its serving cert followed by the self-signed CA that
// issued it). Handing only the CA to clients matters for
// kube-controller-manager: it publishes the kubeconfig's CA data as a
// ClusterTrustBundle, which rejects a certificate without the CA bit.
func caCerts(bundle []byte) []byte {
	var out []byte
	for rest := bundle; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		if cert, err := x509.ParseCertificate(b.Bytes); err == nil && cert.IsCA {
			out = append(out, pem.EncodeToMemory(b)...)
		}
	}
	if len(out) == 0 {
		return bundle
	}
	return out
}

// RESTConfig returns a copy of the admin (system:masters) client config.
func (c *Cluster) RESTConfig() *rest.Config { return rest.CopyConfig(c.restConfig) }

// KubeconfigPath is the path of a kubeconfig file for the admin user.
func (c *Cluster) KubeconfigPath() string { return c.kubeconfP }

// KubeconfigBytes returns the admin kubeconfig.
func (c *Cluster) KubeconfigBytes() []byte { return append([]byte(nil), c.kubeconfig...) }

// Kube returns a typed admin client.
func (c *Cluster) Kube() kubernetes.Interface { return c.kube }

// Dynamic returns a dynamic admin client.
func (c *Cluster) Dynamic() dynamic.Interface { return c.dyn }

// Host is the API server URL (https://127.0.0.1:<port>).
func (c *Cluster) Host() string { return c.host }

// Dir is the cluster's work directory (logs are in <Dir>/<process>.log
// unless Options.Log is set).
func (c *Cluster) Dir() string { return c.dir }

// PIDs returns the process ids of every child process started so far,
// including ones that have exited.
func (c *Cluster) PIDs() []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]int, 0, len(c.procs))
	for _, p := range c.procs {
		out = append(out, p.pid())
	}
	return out
}

// Stop stops the stand-in controller, then kwok, kube-scheduler and
// kube-controller-manager, then kube-apiserver, then etcd: SIGTERM to each
// process group, SIGKILL after a grace period (5 s; 10 s for the API server,
// whose graceful shutdown takes ~3 s). The API server must go before etcd:
// with etcd gone first it hangs retrying for 20 s+. It then removes a
// temporary Dir. Stop is safe to call more than once and concurrently.
func (c *Cluster) Stop() {
	c.stopOnce.Do(func() {
		if c.ctlCancel != nil {
			c.ctlCancel()
			select {
			case <-c.ctlDone:
			case <-time.After(10 * time.Second):
				c.log.Warn("sandbox controller did not stop in 10s")
			}
		}
		c.stopProcs()
		if c.logFile != nil {
			_ = c.logFile.Close()
		}
		if c.ownDir && !c.keepDir {
			_ = os.RemoveAll(c.dir)
		} else if c.ownDir {
			_ = os.Remove(filepath.Join(c.dir, ownerFile)) // kept on purpose
		}
	})
}

// ownerFile in a temporary Dir holds the pid of the process that created
// it.
const ownerFile = "owner.pid"

// removeStaleDirs removes temporary Dirs left behind by test binaries that
// died without Stop (panic, timeout, SIGKILL; their children died with them
// through Pdeathsig). Only directories with an owner file naming a process
// that no longer exists are touched; kept directories have no owner file.
func removeStaleDirs() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "devcluster-*"))
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, ownerFile))
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 0 {
			continue
		}
		if errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) {
			_ = os.RemoveAll(d)
		}
	}
}

// stopProcs stops every child in dependency order.
func (c *Cluster) stopProcs() {
	c.mu.Lock()
	procs := append([]*proc(nil), c.procs...)
	c.mu.Unlock()
	var clients []*proc
	for _, p := range procs {
		if p != c.etcd && p != c.api {
			clients = append(clients, p)
		}
	}
	var wg sync.WaitGroup
	for _, p := range clients {
		wg.Go(func() { p.stop(5 * time.Second) })
	}
	wg.Wait()
	for _, p := range procs {
		if p == c.api {
			p.stop(10 * time.Second)
		}
	}
	for _, p := range procs {
		if p == c.etcd {
			p.stop(5 * time.Second)
		}
	}
}
