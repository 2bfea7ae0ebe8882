package devcluster

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"log/slog"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"
	"sigs.k8s.io/yaml"

	"github.com/paperclip-k8s/paperclip-k8s/internal/sandboxctl"
)

// SandboxCRD is the project's own CustomResourceDefinition for
// sandboxes.agents.x-k8s.io (v1beta1 only), as YAML.
//
//go:embed crds/sandbox.yaml
var SandboxCRD []byte

// ExtensionCRDs are agent-sandbox's own CustomResourceDefinitions for its
// extensions API (extensions.agents.x-k8s.io/v1beta1: SandboxTemplate,
// SandboxWarmPool, SandboxClaim), as YAML, keyed by file name.
//
//go:embed crds/sandboxtemplates.yaml crds/sandboxwarmpools.yaml crds/sandboxclaims.yaml
var extensionCRDs embed.FS

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// InstallSandboxCRD creates (or updates) the Sandbox CRD and the extension
// CRDs (SandboxTemplate, SandboxWarmPool, SandboxClaim) in parallel, waits
// until each is Established and until the API server serves them.
func InstallSandboxCRD(ctx context.Context, dyn dynamic.Interface) error {
	return installCRDs(ctx, dyn, nil)
}

// installCRDs is InstallSandboxCRD; established (if not nil) receives
// nil once every CRD is Established (before the warm-ups), or the error.
// kube-controller-manager starts only then, so its garbage collector knows
// the new kinds from the start (it discovers new resources only every
// 30 s: a claim's Sandbox or a pool's members would outlive their owner
// that long).
func installCRDs(ctx context.Context, dyn dynamic.Interface, established chan<- error) error {
	files := []string{"crds/sandbox.yaml", "crds/sandboxtemplates.yaml", "crds/sandboxwarmpools.yaml", "crds/sandboxclaims.yaml"}
	data := map[string][]byte{"crds/sandbox.yaml": SandboxCRD}
	warmUps := map[string]func(context.Context, dynamic.Interface) error{"crds/sandbox.yaml": sandboxWarmUp}
	for _, f := range files[1:] {
		b, err := extensionCRDs.ReadFile(f)
		if err != nil {
			return err
		}
		data[f] = b
		warmUps[f] = extensionWarmUp[f]
	}
	run := func(step func(string) error) error {
		errs := make(chan error, len(files))
		for _, f := range files {
			go func() { errs <- step(f) }()
		}
		var all error
		for range files {
			all = errors.Join(all, <-errs)
		}
		return all
	}
	err := run(func(f string) error { return installCRD(ctx, dyn, f, data[f]) })
	if established != nil {
		established <- err
	}
	if err != nil {
		return err
	}
	return run(func(f string) error { return warmUps[f](ctx, dyn) })
}

// extensionWarmUp dry-run creates one object of each extension kind, as
// sandboxWarmUp does for Sandboxes.
var extensionWarmUp = map[string]func(context.Context, dynamic.Interface) error{
	"crds/sandboxtemplates.yaml": dryRunCreate(sandboxctl.TemplateGVR, sandboxctl.TemplateKind, map[string]any{
		"podTemplate": map[string]any{"spec": map[string]any{"containers": []any{map[string]any{"name": "c", "image": "busybox"}}}},
	}),
	"crds/sandboxwarmpools.yaml": dryRunCreate(sandboxctl.WarmPoolGVR, sandboxctl.WarmPoolKind, map[string]any{
		"sandboxTemplateRef": map[string]any{"name": "devcluster-warm-up"},
	}),
	"crds/sandboxclaims.yaml": dryRunCreate(sandboxctl.ClaimGVR, sandboxctl.ClaimKind, map[string]any{
		"warmPoolRef": map[string]any{"name": "devcluster-warm-up"},
	}),
}

func dryRunCreate(gvr schema.GroupVersionResource, kind string, spec map[string]any) func(context.Context, dynamic.Interface) error {
	return func(ctx context.Context, dyn dynamic.Interface) error {
		obj := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": gvr.GroupVersion().String(),
			"kind":       kind,
			"metadata":   map[string]any{"name": "devcluster-warm-up"},
			"spec":       spec,
		}}
		if _, err := dyn.Resource(gvr).Namespace("default").Create(ctx, obj, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("dry-run create of a %s after install: %w", kind, err)
		}
		return nil
	}
}

// sandboxWarmUp pays the first-request cost of a new resource.
func sandboxWarmUp(ctx context.Context, dyn dynamic.Interface) error {
	// The first requests for a new resource are slow (a list ~1 s, the first
	// create ~2 s) while the API server sets up storage and admission for
	// it; pay that here with a dry-run create rather than in a test.
	warm := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": sandboxctl.APIVersion,
		"kind":       sandboxctl.Kind,
		"metadata":   map[string]any{"name": "devcluster-warm-up"},
		"spec": map[string]any{"podTemplate": map[string]any{"spec": map[string]any{
			"containers": []any{map[string]any{"name": "c", "image": "busybox"}},
		}}},
	}}
	if _, err := dyn.Resource(sandboxctl.GVR).Namespace("default").Create(ctx, warm, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("dry-run create of a %s after install: %w", sandboxctl.Kind, err)
	}
	return nil
}

// installCRD creates (or updates) one CRD and waits until it is
// Established.
func installCRD(ctx context.Context, dyn dynamic.Interface, file string, data []byte) error {
	obj := &unstructured.Unstructured{}
	if err := yaml.Unmarshal(data, &obj.Object); err != nil {
		return fmt.Errorf("parse %s: %w", file, err)
	}
	crds := dyn.Resource(crdGVR)
	if _, err := crds.Create(ctx, obj, metav1.CreateOptions{}); apierrors.IsAlreadyExists(err) {
		cur, err := crds.Get(ctx, obj.GetName(), metav1.GetOptions{})
		if err != nil {
			return err
		}
		obj.SetResourceVersion(cur.GetResourceVersion())
		if _, err := crds.Update(ctx, obj, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("update CRD %s: %w", obj.GetName(), err)
		}
	} else if err != nil {
		return fmt.Errorf("create CRD %s: %w", obj.GetName(), err)
	}
	name := obj.GetName()
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", name).String()
			return crds.List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", name).String()
			return crds.Watch(ctx, o)
		},
	}
	_, err := watchtools.UntilWithSync(ctx, lw, &unstructured.Unstructured{}, nil, func(ev watch.Event) (bool, error) {
		u, ok := ev.Object.(*unstructured.Unstructured)
		if !ok {
			return false, nil
		}
		conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
		for _, c := range conds {
			m, _ := c.(map[string]any)
			if m["type"] == "Established" && m["status"] == "True" {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		return fmt.Errorf("wait for CRD %s Established: %w", name, err)
	}
	return nil
}

// startSandboxController runs sandboxctl in this process until Stop.
func (c *Cluster) startSandboxController(ctx context.Context) error {
	logger := c.log.With("component", "sandboxctl")
	if c.opts.Log != nil {
		logger = slog.New(slog.NewTextHandler(&prefixWriter{mu: &c.logMu, w: c.opts.Log, prefix: []byte("[sandboxctl] ")}, nil))
	}
	ctl := sandboxctl.New(c.dyn, c.kube, logger)
	c.ctl = ctl
	runCtx, cancel := context.WithCancel(context.Background())
	c.ctlCancel = cancel
	c.ctlDone = make(chan struct{})
	go func() {
		defer close(c.ctlDone)
		if err := ctl.Run(runCtx); err != nil {
			logger.Error("sandbox controller stopped", "err", err)
		}
	}()
	select {
	case <-ctl.Synced():
		return nil
	case <-c.ctlDone:
		return fmt.Errorf("sandbox controller exited before its caches synced")
	case <-ctx.Done():
		return fmt.Errorf("sandbox controller caches not synced: %w", ctx.Err())
	case <-time.After(time.Minute):
		return fmt.Errorf("sandbox controller caches not synced after 1m")
	}
}

// SandboxController returns the stand-in Sandbox controller running in this
// process (nil without Options.SandboxController), e.g. to Hold it inside
// the vanished-pod sequence of one Sandbox.
func (c *Cluster) SandboxController() *sandboxctl.Controller { return c.ctl }
