package paperclip

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Client is a small typed client for the paperclip-server REST API of a
// local_trusted instance (no auth). Each typed result keeps the full JSON
// body in Raw for assertions on fields the struct does not model.
type Client struct {
	BaseURL string // e.g. http://127.0.0.1:3100
	HTTP    *http.Client
}

// NewClient returns a client for baseURL that never uses a proxy.
func NewClient(baseURL string) *Client {
	return &Client{
		BaseURL: strings.TrimRight(baseURL, "/"),
		HTTP:    &http.Client{Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 4}},
	}
}

func (c *Client) closeIdle() { c.HTTP.CloseIdleConnections() }

// APIError is a non-2xx answer. Message is the server's "error" field.
type APIError struct {
	Method, Path string
	Status       int
	Message      string
	Body         string
}

func (e *APIError) Error() string {
	msg := e.Message
	if msg == "" {
		msg = e.Body
	}
	return fmt.Sprintf("%s %s: HTTP %d: %s", e.Method, e.Path, e.Status, msg)
}

// do sends body as JSON (if not nil), decodes a 2xx answer into out (if not
// nil) and returns the raw body.
func (c *Client) do(ctx context.Context, method, path string, body, out any) (json.RawMessage, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.BaseURL+path, rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode/100 != 2 {
		e := &APIError{Method: method, Path: path, Status: resp.StatusCode, Body: string(raw)}
		var m struct {
			Error any `json:"error"`
		}
		if json.Unmarshal(raw, &m) == nil && m.Error != nil {
			if s, ok := m.Error.(string); ok {
				e.Message = s
			} else if b, err := json.Marshal(m.Error); err == nil {
				e.Message = string(b)
			}
		}
		return raw, e
	}
	if out != nil && len(raw) > 0 {
		if err := json.Unmarshal(raw, out); err != nil {
			return raw, fmt.Errorf("%s %s: decode %T: %w", method, path, out, err)
		}
	}
	return raw, nil
}

// ---- companies ----

// Company is a row of POST /api/companies.
type Company struct {
	ID          string          `json:"id"`
	Name        string          `json:"name"`
	IssuePrefix string          `json:"issuePrefix"`
	Raw         json.RawMessage `json:"-"`
}

// CreateCompany calls POST /api/companies {"name":…} (201).
func (c *Client) CreateCompany(ctx context.Context, name string) (Company, error) {
	var out Company
	raw, err := c.do(ctx, http.MethodPost, "/api/companies", map[string]any{"name": name}, &out)
	out.Raw = raw
	return out, err
}

// ---- plugins ----

// Plugin is a plugin registry row.
type Plugin struct {
	ID          string          `json:"id"`        // database UUID (the worker's PAPERCLIP_PLUGIN_ID)
	PluginKey   string          `json:"pluginKey"` // manifest id
	PackageName string          `json:"packageName"`
	Version     string          `json:"version"`
	Status      string          `json:"status"` // "ready" when the worker answered initialize
	PackagePath string          `json:"packagePath"`
	LastError   *string         `json:"lastError"`
	Raw         json.RawMessage `json:"-"`
}

// InstallLocalPlugin calls POST /api/plugins/install
// {"packageName":<abs dir>,"isLocalPath":true} and expects status "ready".
// The server neither copies the folder nor runs npm; it forks the manifest's
// worker from dir. A failed install leaves a registry row behind (status
// "error"), which would block the next install of the same key: it is
// deleted here before the error is returned.
func (c *Client) InstallLocalPlugin(ctx context.Context, dir string) (Plugin, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return Plugin{}, err
	}
	if real, err := filepath.EvalSymlinks(abs); err == nil {
		abs = real
	}
	var out Plugin
	raw, err := c.do(ctx, http.MethodPost, "/api/plugins/install", map[string]any{"packageName": abs, "isLocalPath": true}, &out)
	out.Raw = raw
	if err == nil && out.Status == "ready" {
		return out, nil
	}
	if err == nil {
		err = fmt.Errorf("plugin %s installed with status %q (lastError %v)", out.PluginKey, out.Status, deref(out.LastError))
	}
	if cerr := c.deleteStalePlugin(ctx, abs, out.ID); cerr != nil {
		err = errors.Join(err, fmt.Errorf("removing the stale plugin row: %w", cerr))
	}
	return out, err
}

func (c *Client) deleteStalePlugin(ctx context.Context, path, id string) error {
	ps, err := c.ListPlugins(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, p := range ps {
		if (id != "" && p.ID == id) || p.PackagePath == path {
			if err := c.DeletePlugin(ctx, p.ID); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// ListPlugins calls GET /api/plugins.
func (c *Client) ListPlugins(ctx context.Context) ([]Plugin, error) {
	var raws []json.RawMessage
	if _, err := c.do(ctx, http.MethodGet, "/api/plugins", nil, &raws); err != nil {
		return nil, err
	}
	out := make([]Plugin, len(raws))
	for i, r := range raws {
		if err := json.Unmarshal(r, &out[i]); err != nil {
			return nil, err
		}
		out[i].Raw = r
	}
	return out, nil
}

// DeletePlugin calls DELETE /api/plugins/:id (stops the worker).
func (c *Client) DeletePlugin(ctx context.Context, id string) error {
	_, err := c.do(ctx, http.MethodDelete, "/api/plugins/"+url.PathEscape(id), nil, nil)
	return err
}

// RestartPlugin restarts a plugin's worker: POST /api/plugins/:id/disable
// then /enable (~0.6 s). The host's dev watcher does not reload local
// plugins when files change, so use this after replacing the worker binary.
func (c *Client) RestartPlugin(ctx context.Context, id string) error {
	if _, err := c.do(ctx, http.MethodPost, "/api/plugins/"+url.PathEscape(id)+"/disable", map[string]any{}, nil); err != nil {
		return err
	}
	_, err := c.do(ctx, http.MethodPost, "/api/plugins/"+url.PathEscape(id)+"/enable", map[string]any{}, nil)
	return err
}

// PluginHealth is GET /api/plugins/:id/health.
type PluginHealth struct {
	Status  string          `json:"status"`
	Healthy bool            `json:"healthy"`
	Raw     json.RawMessage `json:"-"`
}

// PluginHealth calls GET /api/plugins/:id/health.
func (c *Client) PluginHealth(ctx context.Context, id string) (PluginHealth, error) {
	var out PluginHealth
	raw, err := c.do(ctx, http.MethodGet, "/api/plugins/"+url.PathEscape(id)+"/health", nil, &out)
	out.Raw = raw
	return out, err
}

// PluginLog is a row of GET /api/plugins/:id/logs: what the worker sent with
// the `log` notification. Worker stderr is not stored here; see
// Server.PluginStderr.
type PluginLog struct {
	ID        string         `json:"id"`
	Level     string         `json:"level"`
	Message   string         `json:"message"`
	Meta      map[string]any `json:"meta"`
	CompanyID *string        `json:"companyId"`
	CreatedAt time.Time      `json:"createdAt"`
}

// PluginLogs calls GET /api/plugins/:id/logs?limit=N (newest first, N ≤ 500).
func (c *Client) PluginLogs(ctx context.Context, id string, limit int) ([]PluginLog, error) {
	var out []PluginLog
	_, err := c.do(ctx, http.MethodGet, "/api/plugins/"+url.PathEscape(id)+"/logs?limit="+strconv.Itoa(limit), nil, &out)
	return out, err
}

// ---- environments ----

// Environment is a row of /api/companies/:cid/environments.
type Environment struct {
	ID     string          `json:"id"`
	Name   string          `json:"name"`
	Driver string          `json:"driver"`
	Status string          `json:"status"`
	Config map[string]any  `json:"config"`
	Raw    json.RawMessage `json:"-"`
}

// CreateEnvironment calls POST /api/companies/:cid/environments with
// {"name":…,"driver":"sandbox","config":config}. config must carry
// "provider" (the plugin's driverKey); the host calls the plugin's
// environmentValidateConfig with config minus "provider". A rejected config
// is an *APIError with status 422 and the plugin's errors[0] as Message.
func (c *Client) CreateEnvironment(ctx context.Context, companyID, name string, config map[string]any) (Environment, error) {
	if _, ok := config["provider"]; !ok {
		return Environment{}, errors.New(`CreateEnvironment: config needs "provider" (the driverKey)`)
	}
	var out Environment
	raw, err := c.do(ctx, http.MethodPost, "/api/companies/"+url.PathEscape(companyID)+"/environments",
		map[string]any{"name": name, "driver": "sandbox", "config": config}, &out)
	out.Raw = raw
	return out, err
}

// UpdateEnvironment calls PATCH /api/environments/:id {"config":…}
// (environmentValidateConfig again).
func (c *Client) UpdateEnvironment(ctx context.Context, envID string, config map[string]any) (Environment, error) {
	var out Environment
	raw, err := c.do(ctx, http.MethodPatch, "/api/environments/"+url.PathEscape(envID), map[string]any{"config": config}, &out)
	out.Raw = raw
	return out, err
}

// DeleteEnvironment calls DELETE /api/environments/:id.
func (c *Client) DeleteEnvironment(ctx context.Context, envID string) error {
	_, err := c.do(ctx, http.MethodDelete, "/api/environments/"+url.PathEscape(envID), nil, nil)
	return err
}

// ProbeResult is the answer of both probe endpoints.
type ProbeResult struct {
	OK      bool            `json:"ok"`
	Driver  string          `json:"driver"`
	Summary string          `json:"summary"`
	Details map[string]any  `json:"details"`
	Raw     json.RawMessage `json:"-"`
}

// ProbeConfig probes an unsaved sandbox config: POST
// /api/companies/:cid/environments/probe-config {"driver":"sandbox","config":…}.
// Hooks: environmentValidateConfig → environmentProbe (environmentId "unsaved").
func (c *Client) ProbeConfig(ctx context.Context, companyID string, config map[string]any) (ProbeResult, error) {
	var out ProbeResult
	raw, err := c.do(ctx, http.MethodPost, "/api/companies/"+url.PathEscape(companyID)+"/environments/probe-config",
		map[string]any{"driver": "sandbox", "config": config}, &out)
	out.Raw = raw
	return out, err
}

// ProbeEnvironment probes a saved environment: POST
// /api/environments/:id/probe?companyId=:cid. For a sandbox environment the
// host does NOT call environmentProbe: it acquires a real lease
// (archiveOnRelease:true) and releases it.
func (c *Client) ProbeEnvironment(ctx context.Context, companyID, envID string) (ProbeResult, error) {
	var out ProbeResult
	raw, err := c.do(ctx, http.MethodPost, "/api/environments/"+url.PathEscape(envID)+"/probe?companyId="+url.QueryEscape(companyID), nil, &out)
	out.Raw = raw
	return out, err
}

// AdapterTest is the answer of the adapter test-environment endpoint.
type AdapterTest struct {
	AdapterType string          `json:"adapterType"`
	Status      string          `json:"status"` // "pass" | "warn" | "fail"
	Checks      []AdapterCheck  `json:"checks"`
	Raw         json.RawMessage `json:"-"`
}

// AdapterCheck is one check of an AdapterTest.
type AdapterCheck struct {
	Code    string `json:"code"`
	Level   string `json:"level"` // info | warn | error
	Message string `json:"message"`
	Detail  string `json:"detail"`
	Hint    string `json:"hint"`
}

// TestAdapterEnvironment calls POST
// /api/companies/:cid/adapters/:adapter/test-environment
// {"adapterConfig":…,"environmentId":…}. With adapter "codex_local" and an
// empty adapterConfig it is the cheapest full lease lifecycle: acquire →
// realizeWorkspace (workspace {}) → execute (`sh -c "command -v 'codex-acp'"`)
// → release, in ~50 ms; Status is "fail" when codex-acp is absent from the
// sandbox, which is expected. Avoid "claude_local" without a present CLI: the
// adapter then runs `npm install -g @anthropic-ai/claude-code` in the sandbox.
func (c *Client) TestAdapterEnvironment(ctx context.Context, companyID, adapter string, adapterConfig map[string]any, envID string) (AdapterTest, error) {
	if adapterConfig == nil {
		adapterConfig = map[string]any{}
	}
	var out AdapterTest
	raw, err := c.do(ctx, http.MethodPost,
		"/api/companies/"+url.PathEscape(companyID)+"/adapters/"+url.PathEscape(adapter)+"/test-environment",
		map[string]any{"adapterConfig": adapterConfig, "environmentId": envID}, &out)
	out.Raw = raw
	return out, err
}

// Lease is a row of GET /api/environments/:id/leases.
type Lease struct {
	ID              string          `json:"id"`
	EnvironmentID   string          `json:"environmentId"`
	Status          string          `json:"status"` // active|released|expired|failed|retained|pending_cleanup
	LeasePolicy     string          `json:"leasePolicy"`
	Provider        string          `json:"provider"`
	ProviderLeaseID *string         `json:"providerLeaseId"`
	HeartbeatRunID  *string         `json:"heartbeatRunId"`
	FailureReason   *string         `json:"failureReason"`
	CleanupStatus   *string         `json:"cleanupStatus"`
	Metadata        map[string]any  `json:"metadata"`
	Raw             json.RawMessage `json:"-"`
}

// Leases calls GET /api/environments/:id/leases (newest first).
func (c *Client) Leases(ctx context.Context, envID string) ([]Lease, error) {
	var raws []json.RawMessage
	if _, err := c.do(ctx, http.MethodGet, "/api/environments/"+url.PathEscape(envID)+"/leases", nil, &raws); err != nil {
		return nil, err
	}
	out := make([]Lease, len(raws))
	for i, r := range raws {
		if err := json.Unmarshal(r, &out[i]); err != nil {
			return nil, err
		}
		out[i].Raw = r
	}
	return out, nil
}

// ---- agents and runs ----

// AgentSpec is the body of CreateAgent.
type AgentSpec struct {
	Name                 string         `json:"name"`
	AdapterType          string         `json:"adapterType"` // e.g. "claude_local"
	AdapterConfig        map[string]any `json:"adapterConfig,omitempty"`
	DefaultEnvironmentID string         `json:"defaultEnvironmentId,omitempty"`
}

// Agent is an agent row.
type Agent struct {
	ID                   string          `json:"id"`
	Name                 string          `json:"name"`
	Status               string          `json:"status"`
	AdapterType          string          `json:"adapterType"`
	DefaultEnvironmentID *string         `json:"defaultEnvironmentId"`
	Raw                  json.RawMessage `json:"-"`
}

// CreateAgent calls POST /api/companies/:cid/agents. For a run through a
// sandbox plugin without any LLM: AdapterType "claude_local", AdapterConfig
// {"engine":"cli","command":<fake claude inside the sandbox>},
// DefaultEnvironmentID the sandbox environment.
func (c *Client) CreateAgent(ctx context.Context, companyID string, spec AgentSpec) (Agent, error) {
	var out Agent
	raw, err := c.do(ctx, http.MethodPost, "/api/companies/"+url.PathEscape(companyID)+"/agents", spec, &out)
	out.Raw = raw
	return out, err
}

// Run is a heartbeat run.
type Run struct {
	ID         string          `json:"id"`
	AgentID    string          `json:"agentId"`
	Status     string          `json:"status"` // queued|scheduled_retry|running|succeeded|interrupted|failed|cancelled|timed_out
	Error      *string         `json:"error"`
	ErrorCode  *string         `json:"errorCode"`
	ExitCode   *int            `json:"exitCode"`
	ResultJSON map[string]any  `json:"resultJson"`
	StartedAt  *time.Time      `json:"startedAt"`
	FinishedAt *time.Time      `json:"finishedAt"`
	Raw        json.RawMessage `json:"-"`
}

// Terminal reports whether the run has finished.
func (r Run) Terminal() bool {
	switch r.Status {
	case "succeeded", "failed", "cancelled", "timed_out", "interrupted":
		return true
	}
	return false
}

// Wakeup calls POST /api/agents/:id/wakeup
// {"source":"on_demand","triggerDetail":"manual","reason":…} (202) and
// returns the queued run.
func (c *Client) Wakeup(ctx context.Context, agentID, reason string) (Run, error) {
	var out Run
	raw, err := c.do(ctx, http.MethodPost, "/api/agents/"+url.PathEscape(agentID)+"/wakeup",
		map[string]any{"source": "on_demand", "triggerDetail": "manual", "reason": reason}, &out)
	out.Raw = raw
	if err == nil && out.ID == "" {
		err = fmt.Errorf("wakeup of agent %s returned no run: %s", agentID, raw)
	}
	return out, err
}

// GetRun calls GET /api/heartbeat-runs/:id.
func (c *Client) GetRun(ctx context.Context, runID string) (Run, error) {
	var out Run
	raw, err := c.do(ctx, http.MethodGet, "/api/heartbeat-runs/"+url.PathEscape(runID), nil, &out)
	out.Raw = raw
	return out, err
}

// WaitRun polls GET /api/heartbeat-runs/:id until the run is terminal or ctx
// ends. It returns the last state read (also on timeout).
func (c *Client) WaitRun(ctx context.Context, runID string) (Run, error) {
	for {
		r, err := c.GetRun(ctx, runID)
		if err == nil && r.Terminal() {
			return r, nil
		}
		select {
		case <-ctx.Done():
			if err == nil {
				err = fmt.Errorf("run %s still %q: %w", runID, r.Status, ctx.Err())
			}
			return r, err
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func deref(p *string) string {
	if p == nil {
		return "<nil>"
	}
	return *p
}
