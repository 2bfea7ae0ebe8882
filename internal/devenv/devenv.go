// Package devenv starts the local development environment: the test control
// plane of package devcluster (etcd, kube-apiserver, controller-manager,
// scheduler, kwok, the stand-in Sandbox controller) with its fake node's
// kubelet endpoint served by an execnode, so pods run, exec and logs work
// through the real API server. The exec node watches the node's pods: each
// pod's files are its own (by UID, so a replacement pod starts empty) and a
// pod's processes are killed when the pod is deleted or ends. It is for tests and `paperclip-k8s demo`;
// commands "in pods" run on this machine (see package execnode).
package devenv

import (
	"context"
	"fmt"
	"io"

	"github.com/paperclip-k8s/paperclip-k8s/internal/devcluster"
	"github.com/paperclip-k8s/paperclip-k8s/internal/execnode"
)

// Env is a running development environment.
type Env struct {
	*devcluster.Cluster
	Node *execnode.Node
}

// Options tune Start.
type Options struct {
	BinDir string
	// Log receives the processes' output (nil: files in the cluster dir).
	Log io.Writer
	// NodeLog receives the exec node's log lines.
	NodeLog io.Writer
	// NodeEnv is added to the environment of every command the exec node
	// runs (KEY=value, after its own PATH/HOME/PWD/HOSTNAME, so e.g. a PATH
	// entry here replaces the host's PATH): the "image environment" of the
	// fake pods.
	NodeEnv []string
}

// Start starts an exec node and a control plane whose fake node points at
// it. ctx bounds the start only: both run until Env.Stop.
func Start(ctx context.Context, opts Options) (*Env, error) {
	node := execnode.New(execnode.Options{Log: opts.NodeLog, Env: opts.NodeEnv})
	port, err := node.Start(context.WithoutCancel(ctx))
	if err != nil {
		return nil, fmt.Errorf("starting the exec node: %w", err)
	}
	c, err := devcluster.Start(ctx, devcluster.Options{
		BinDir: opts.BinDir, Nodes: true, SandboxController: true, KubeletPort: port, Log: opts.Log,
	})
	if err != nil {
		node.Close()
		return nil, err
	}
	// The node learns its pods from the API server, as a kubelet does:
	// files by pod UID, processes killed when their pod is deleted.
	if err := node.WatchPods(ctx, c.Kube(), devcluster.NodeName); err != nil {
		c.Stop()
		node.Close()
		return nil, err
	}
	return &Env{Cluster: c, Node: node}, nil
}

// Stop stops the exec node's pod watch, the control plane, then the exec
// node.
func (e *Env) Stop() {
	e.Node.StopWatchingPods()
	e.Cluster.Stop()
	e.Node.Close()
}
