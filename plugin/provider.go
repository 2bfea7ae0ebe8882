// Package plugin is the Paperclip environment provider: it answers the
// host's environment hooks (validate, probe, acquire, resume, release,
// destroy, realize, execute, file sync) with the engine, the exec layer and the
// provider policy. Nothing here knows a Kubernetes kind: backends are data
// files and say how they are used.
package plugin

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/paperclip-k8s/paperclip-k8s/engine/resource"
	"github.com/paperclip-k8s/paperclip-k8s/plugin/policy"
	"github.com/paperclip-k8s/paperclip-k8s/plugin/rpc"
	"github.com/paperclip-k8s/paperclip-k8s/podexec"
	"github.com/paperclip-k8s/paperclip-k8s/resources"
)

// Provider implements the hooks. Its zero value is not usable; use New.
type Provider struct {
	Catalog *resource.Catalog
	Log     *slog.Logger
	// Getenv reads the worker's environment (adapter API keys).
	Getenv func(string) string
	Now    func() time.Time
	// Transport is the exec transport (auto: WebSocket, then SPDY).
	Transport podexec.Transport

	clusters clusters
	leases   sync.Map       // providerLeaseId -> *leaseState
	login    loginTerminals // loginpty.go
}

// New returns a provider over the embedded resource files.
func New(log *slog.Logger) (*Provider, error) {
	c, err := resource.Load(resources.FS, ".")
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return &Provider{Catalog: c, Log: log, Getenv: os.Getenv, Now: time.Now}, nil
}

// Methods registers every implemented hook on a mux.
func (p *Provider) Methods() *rpc.Mux {
	m := &rpc.Mux{}
	m.Register(rpc.MethodInitialize, func(ctx context.Context, _ json.RawMessage) (any, error) {
		return map[string]any{"ok": true, "supportedMethods": m.Methods()}, nil
	})
	m.Register(rpc.MethodHealth, func(context.Context, json.RawMessage) (any, error) {
		return map[string]any{"status": "ok", "message": "Kubernetes sandbox provider (paperclip-k8s) healthy"}, nil
	})
	m.Register(rpc.MethodShutdown, func(ctx context.Context, _ json.RawMessage) (any, error) {
		p.closeAllLoginSessions(ctx)
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		p.dropAllStandbys(sctx)
		return nil, nil
	})
	m.Register(rpc.MethodConfigChanged, func(context.Context, json.RawMessage) (any, error) { return nil, nil })
	m.Register(rpc.MethodEnvironmentValidateConfig, rpc.Typed(p.ValidateConfig))
	// The lease hooks and the probe answer within the time the host waits
	// for them (see budget.go); execute and the syncs have their own
	// timeouts.
	m.Register(rpc.MethodEnvironmentProbe, rpc.Typed(bounded(p, rpc.MethodEnvironmentProbe, p.Probe, probeLate)))
	m.Register(rpc.MethodEnvironmentAcquireLease, rpc.Typed(loginLeaseHook(p, bounded(p, rpc.MethodEnvironmentAcquireLease, p.AcquireLease, nil))))
	m.Register(rpc.MethodEnvironmentResumeLease, rpc.Typed(loginLeaseHook(p, bounded(p, rpc.MethodEnvironmentResumeLease, p.ResumeLease, nil))))
	m.Register(rpc.MethodEnvironmentReleaseLease, rpc.Typed(loginReleaseHook(p, bounded(p, rpc.MethodEnvironmentReleaseLease, p.ReleaseLease, nil))))
	m.Register(rpc.MethodEnvironmentDestroyLease, rpc.Typed(loginReleaseHook(p, bounded(p, rpc.MethodEnvironmentDestroyLease, p.DestroyLease, nil))))
	m.Register(rpc.MethodEnvironmentRealizeWorkspace, rpc.Typed(bounded(p, rpc.MethodEnvironmentRealizeWorkspace, p.RealizeWorkspace, nil)))
	m.Register(rpc.MethodEnvironmentExecute, rpc.Typed(p.Execute))
	// Native file sync needs an exec channel into a pod: it is offered when
	// a loaded backend has one (a lease of another backend gets an error,
	// and carries nativeFileSyncUnsupported so the host does not ask).
	if p.hasExecBackend() {
		m.Register(rpc.MethodEnvironmentSyncIn, rpc.Typed(p.SyncIn))
		m.Register(rpc.MethodEnvironmentSyncOut, rpc.Typed(p.SyncOut))
		// The login terminal too (loginpty.go).
		m.Register(rpc.MethodLoginPtyOpen, rpc.Typed(p.LoginPtyOpen))
		m.Register(rpc.MethodLoginPtyInput, rpc.Typed(p.LoginPtyInput))
		m.Register(rpc.MethodLoginPtyStop, rpc.Typed(p.LoginPtyStop))
		m.Register(rpc.MethodLoginPtyClose, rpc.Typed(p.LoginPtyClose))
	}
	return m
}

// hasExecBackend reports whether a loaded backend runs commands through
// pods/exec.
func (p *Provider) hasExecBackend() bool {
	for _, name := range p.Catalog.BackendNames() {
		if s, err := p.backend(name); err == nil && s.Backend.Mode == resource.ModeExec {
			return true
		}
	}
	return false
}

// BaseParams are sent with every environment hook.
type BaseParams struct {
	DriverKey     string         `json:"driverKey"`
	CompanyID     string         `json:"companyId"`
	EnvironmentID string         `json:"environmentId"`
	IssueID       *string        `json:"issueId,omitempty"`
	Config        map[string]any `json:"config"`
}

// parseConfig validates the config of a runtime hook.
func (p *Provider) parseConfig(raw map[string]any) (policy.Config, error) {
	cfg, err := configs.parse(raw, p.Catalog.BackendNames(), p.backendAliases(), p.Getenv) // policy.Parse, cached (configcache.go)
	if err != nil {
		return cfg, rpc.Errorf(rpc.CodeInvalidParams, "invalid Kubernetes provider config: %v", err)
	}
	return cfg, nil
}

// policyOptions are the options of every policy.Validate and Parse: the
// worker environment, and the aliases the loaded backends' files declare.
func (p *Provider) policyOptions() []policy.Option {
	return []policy.Option{policy.WithGetenv(p.Getenv), policy.WithBackendAliases(p.backendAliases()), policy.WithBackendIdlePods(p.backendIdlePods())}
}

// backend returns the backend a name (or an alias) selects.
func (p *Provider) backend(name string) (*resource.Resource, error) {
	s, ok := p.Catalog.Get(name)
	if !ok || s.Use != resource.UseBackend {
		return nil, fmt.Errorf("config field backend: %q is not one of the loaded backends %v; pick one of them, or add a resources/ file for it", name, p.Catalog.BackendNames())
	}
	return s, nil
}
