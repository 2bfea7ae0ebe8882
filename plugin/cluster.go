package plugin

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sync"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/paperclip-k8s/paperclip-k8s/engine"
	pexec "github.com/paperclip-k8s/paperclip-k8s/exec"
	"github.com/paperclip-k8s/paperclip-k8s/plugin/policy"
)

// cluster holds the clients for one API server, built once per distinct
// credentials and reused by every call (discovery is cached in memory).
type cluster struct {
	config *rest.Config
	kube   kubernetes.Interface
	engine *engine.Engine
	exec   *pexec.Executor
	// tenants remembers which tenant values were applied when.
	tenants sync.Map
}

type clusters struct {
	mu sync.Mutex
	m  map[string]*cluster
}

// RESTConfig builds the client config a provider config names: in-cluster
// credentials, or the inline kubeconfig.
func RESTConfig(cfg policy.Config) (*rest.Config, error) {
	var rc *rest.Config
	var err error
	switch {
	case cfg.InCluster:
		rc, err = rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("inCluster is true but the in-cluster credentials are not usable (%v); run the worker in a pod with a ServiceAccount, or set kubeconfig instead", err)
		}
	case cfg.Kubeconfig.Reveal() != "":
		rc, err = clientcmd.RESTConfigFromKubeConfig([]byte(cfg.Kubeconfig.Reveal()))
		if err != nil {
			// The parser's message may quote the document: do not pass it on.
			return nil, fmt.Errorf("config field kubeconfig: the value is not a usable kubeconfig; give a complete kubeconfig YAML whose current-context names a cluster and a user")
		}
	default:
		return nil, fmt.Errorf("config: neither inCluster nor kubeconfig is set; set kubeconfig to a kubeconfig YAML, or inCluster: true when the worker runs in a pod")
	}
	rc.QPS, rc.Burst = 50, 100
	rc.UserAgent = "paperclip-k8s"
	return rc, nil
}

func (p *Provider) cluster(cfg policy.Config) (*cluster, error) {
	key := "in-cluster"
	if !cfg.InCluster {
		sum := sha256.Sum256([]byte(cfg.Kubeconfig.Reveal()))
		key = hex.EncodeToString(sum[:])
	}
	p.clusters.mu.Lock()
	defer p.clusters.mu.Unlock()
	if c, ok := p.clusters.m[key]; ok {
		return c, nil
	}
	rc, err := RESTConfig(cfg)
	if err != nil {
		return nil, err
	}
	c, err := p.newCluster(rc)
	if err != nil {
		return nil, err
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
	ex, err := pexec.NewExecutor(rc, pexec.Options{Transport: p.Transport})
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
