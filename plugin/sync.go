package plugin

import (
	"context"
	"errors"
	"fmt"
	"path"
	"strings"
	"time"

	"github.com/paperclip-k8s/paperclip-k8s/engine"
	"github.com/paperclip-k8s/paperclip-k8s/engine/resource"
	"github.com/paperclip-k8s/paperclip-k8s/plugin/filesync"
	"github.com/paperclip-k8s/paperclip-k8s/plugin/rpc"
	"github.com/paperclip-k8s/paperclip-k8s/podexec"
)

// Native file sync (environmentSyncIn / environmentSyncOut) for exec-mode
// backends: the hooks find the lease's pod and hand package filesync (the
// planning, the archives and the pod scripts) an exec into it.

// SyncParams are environmentSyncIn's and environmentSyncOut's params.
type SyncParams struct {
	BaseParams
	Lease      Lease                `json:"lease"`
	Operations []filesync.Operation `json:"operations"`
}

// The host's sync types (package filesync).
type (
	SyncOperation       = filesync.Operation
	SyncFileMapping     = filesync.FileMapping
	PostUploadCommand   = filesync.PostUploadCommand
	SyncResult          = filesync.Result
	SyncOperationResult = filesync.OperationResult
)

// SyncIn copies host files and directories into the lease's pod, then runs
// each operation's post-upload commands.
func (p *Provider) SyncIn(ctx context.Context, in SyncParams) (SyncResult, error) {
	return p.sync(ctx, in, filesync.In)
}

// SyncOut copies files and directories from the lease's pod to the host.
func (p *Provider) SyncOut(ctx context.Context, in SyncParams) (SyncResult, error) {
	return p.sync(ctx, in, filesync.Out)
}

func (p *Provider) sync(ctx context.Context, in SyncParams, dir filesync.Direction) (SyncResult, error) {
	method := dir.Method()
	out := SyncResult{Operations: []SyncOperationResult{}}
	if in.Lease.ProviderLeaseID == nil || *in.Lease.ProviderLeaseID == "" {
		return out, rpc.Errorf(rpc.CodeInvalidParams, "%s: the lease has no providerLeaseId", method)
	}
	id := *in.Lease.ProviderLeaseID
	if err := requireIDs(in.BaseParams); err != nil {
		return out, err
	}
	cfg, err := p.parseConfig(in.Config)
	if err != nil {
		return out, err
	}
	m := metadataFrom(in.Lease.Metadata)
	ref, err := p.leaseTarget(cfg, in.CompanyID, id, m)
	if err != nil {
		return out, err
	}
	if ref.Resource.Backend.Mode != resource.ModeExec {
		return out, rpc.Errorf(rpc.CodeInvalidParams, "%s is not supported for the %q backend: it runs the workload to completion and has no exec channel into a pod (its leases say nativeFileSyncUnsupported, so the host uses its own transfer)", method, ref.Resource.Name)
	}
	root := strings.TrimSpace(m.RemoteCwd)
	if root == "" {
		root = cfg.WorkspacePath
	}
	if !path.IsAbs(root) || strings.ContainsAny(root, "\x00\n") {
		return out, rpc.Errorf(rpc.CodeInvalidParams, "%s: the remote root %q (lease remoteCwd, else workspacePath) is not an absolute path without NUL or newline", method, root)
	}
	root = path.Clean(root)
	filesync.LogShape(p.Log, dir, id, in.Operations)
	plan, err := filesync.NewPlan(dir, root, in.Operations)
	if err != nil {
		return out, rpc.Errorf(rpc.CodeInvalidParams, "%v", err)
	}

	cl, err := p.cluster(cfg)
	if err != nil {
		return out, err
	}
	timeout := time.Duration(cfg.PodActivityDeadlineSec) * time.Second
	deadline := time.Now().Add(timeout)
	waitCtx, cancel := context.WithDeadline(ctx, deadline)
	st, err := p.readyPod(waitCtx, cl, ref, in.BaseParams, m)
	cancel()
	if err != nil {
		return out, fmt.Errorf("%s: %w", method, err)
	}
	s := &filesync.Syncer{
		Exec:             p.syncExec(cl, ref, st),
		Deadline:         deadline,
		DeadlineFrom:     fmt.Sprintf("podActivityDeadlineSec %d", cfg.PodActivityDeadlineSec),
		MaxCommandOutput: cfg.ExecMaxOutputBytes,
		Log:              p.Log,
	}
	start := time.Now()
	out, err = s.Run(ctx, plan)
	if err != nil {
		return out, err
	}
	p.Log.Info("file sync done", "method", method, "lease", id, "operations", len(out.Operations), "took", time.Since(start).Round(time.Millisecond))
	return out, nil
}

// syncExec runs the sync's commands in the lease's pod. When an exec fails
// (other than by its output caps), the pod is checked: a pod that is gone
// or replaced is forgotten and reported as such.
func (p *Provider) syncExec(cl *cluster, ref engine.Ref, st *leaseState) filesync.Exec {
	return func(ctx context.Context, req podexec.Request) (*podexec.Result, error) {
		req.Namespace, req.Pod, req.Container = ref.Namespace, st.podName, ref.Resource.Pods.Container
		st.login.dropAhead() // files written before the first command
		res, err := cl.exec.Run(ctx, req)
		if err == nil {
			return res, nil
		}
		var limit *podexec.OutputLimitError
		var werr *podexec.StdoutWriteError
		if errors.As(err, &limit) || errors.As(err, &werr) {
			return res, err
		}
		checkCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if _, gerr := p.checkPod(checkCtx, cl, ref, st, true); gerr != nil {
			p.forget(ref)
			return res, gerr
		}
		return res, fmt.Errorf("exec in pod %s/%s: %w", ref.Namespace, st.podName, err)
	}
}
