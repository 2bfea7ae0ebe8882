package devcluster

import (
	"context"
	_ "embed"
	"fmt"
	"os"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"
)

// KwokStages is the kwok stage configuration passed to kwok --config.
//
//go:embed kwok/stages.yaml
var KwokStages []byte

// startNodes starts kube-scheduler and kwok, registers the fake node,
// then (once beforeKCM, if not nil, returns) kube-controller-manager, and
// waits until the node is Ready.
func (c *Cluster) startNodes(ctx context.Context, beforeKCM func() error) error {
	kc := c.kubeconfP
	var err error
	c.sched, err = c.startProc("kube-scheduler", "kube-scheduler",
		"--kubeconfig", kc,
		"--authentication-kubeconfig", kc,
		"--authorization-kubeconfig", kc,
		"--leader-elect=false",
		"--secure-port", "0",
	)
	if err != nil {
		return err
	}

	if err := os.WriteFile(c.path("kwok-stages.yaml"), KwokStages, 0o644); err != nil {
		return err
	}
	ports, err := freePorts(1)
	if err != nil {
		return err
	}
	kwokServer := ports[0]
	kubeletPort := c.opts.KubeletPort
	if kubeletPort == 0 {
		kubeletPort = kwokServer
	}
	if err := c.registerNode(ctx, kubeletPort); err != nil {
		return err
	}
	c.kwok, err = c.startProc("kwok", "kwok",
		"--kubeconfig", kc,
		"--config", c.path("kwok-stages.yaml"),
		"--manage-all-nodes=false",
		"--manage-nodes-with-annotation-selector", "kwok.x-k8s.io/node=fake",
		"--node-ip", "127.0.0.1",
		"--node-port", strconv.Itoa(kubeletPort),
		// kwok's own kubelet server must not take KubeletPort.
		"--server-address", "127.0.0.1:"+strconv.Itoa(kwokServer),
		"--cidr", "10.244.0.0/16",
		// Renew the node Lease instead of a heartbeat stage (which would
		// drop status.addresses); 40 s keeps the node inside the node
		// lifecycle controller's 50 s grace period.
		"--node-lease-duration-seconds", "40",
	)
	if err != nil {
		return err
	}
	if beforeKCM != nil {
		if err := beforeKCM(); err != nil {
			return err
		}
	}
	c.kcm, err = c.startProc("kube-controller-manager", "kube-controller-manager",
		"--kubeconfig", kc,
		"--authentication-kubeconfig", kc,
		"--authorization-kubeconfig", kc,
		"--leader-elect=false",
		"--secure-port", "0",
		"--controllers", "*",
		"--service-account-private-key-file", c.path("sa.key"),
		"--use-service-account-credentials=false",
		// No --root-ca-file with the serving cert (no CA bit): the
		// ClusterTrustBundle publisher would loop on errors. kcm falls back
		// to the kubeconfig's CA data, which holds only the CA (caCerts).
	)
	if err != nil {
		return err
	}
	return c.waitNodeReady(ctx)
}

// registerNode creates the fake node with the addresses, capacity and
// kubelet endpoint the API server and the scheduler need.
func (c *Cluster) registerNode(ctx context.Context, kubeletPort int) error {
	res := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("32"),
		corev1.ResourceMemory: resource.MustParse("64Gi"),
		corev1.ResourcePods:   resource.MustParse("110"),
	}
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name: NodeName,
			Annotations: map[string]string{
				"kwok.x-k8s.io/node":             "fake",
				"node.alpha.kubernetes.io/ttl":   "0",
				"devcluster.paperclip.io/origin": "devcluster",
			},
			Labels: map[string]string{
				"kubernetes.io/hostname": NodeName,
				"kubernetes.io/os":       "linux",
				"kubernetes.io/arch":     "amd64",
				"type":                   "kwok",
			},
		},
		Status: corev1.NodeStatus{
			Capacity:    res,
			Allocatable: res,
			Addresses: []corev1.NodeAddress{
				{Type: corev1.NodeInternalIP, Address: "127.0.0.1"},
				{Type: corev1.NodeHostName, Address: NodeName},
			},
			DaemonEndpoints: corev1.NodeDaemonEndpoints{
				KubeletEndpoint: corev1.DaemonEndpoint{Port: int32(kubeletPort)},
			},
			NodeInfo: corev1.NodeSystemInfo{OperatingSystem: "linux", Architecture: "amd64"},
		},
	}
	// Nodes accept status on create (the kubelet registers that way).
	if _, err := c.kube.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("register node: %w", err)
	}
	return nil
}

func (c *Cluster) waitNodeReady(ctx context.Context) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		select {
		case <-c.kwok.done:
			cancel(c.kwok.exitError())
		case <-ctx.Done():
		}
	}()
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", NodeName).String()
			return c.kube.CoreV1().Nodes().List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", NodeName).String()
			return c.kube.CoreV1().Nodes().Watch(ctx, o)
		},
	}
	_, err := watchtools.UntilWithSync(ctx, lw, &corev1.Node{}, nil, func(ev watch.Event) (bool, error) {
		n, ok := ev.Object.(*corev1.Node)
		if !ok {
			return false, nil
		}
		for _, cond := range n.Status.Conditions {
			if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		if cause := context.Cause(ctx); cause != nil {
			err = cause
		}
		return fmt.Errorf("wait for node %s Ready: %w\n--- last output of kwok ---\n%s", NodeName, err, c.kwok.tail.Bytes())
	}
	return nil
}
