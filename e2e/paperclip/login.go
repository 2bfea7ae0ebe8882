package paperclip

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
)

// ---- adapter logins (the login terminal of a sandbox provider) ----

// LoginSession is an adapter device login as its owner reads it
// (codex_local, grok_local): the host acquires a fresh lease, opens the
// provider's login terminal (loginPtyOpen), parses the prompt from its
// output and, once the command exits 0, reads <sessionHome>/auth.json
// through environmentExecute and stores it in the company's scope.
type LoginSession struct {
	SessionID     string  `json:"sessionId"`
	EnvironmentID string  `json:"environmentId"`
	Status        string  `json:"status"` // starting|waiting_for_user|promoting|authenticated|failed|timed_out|cancelled
	ExpiresAt     *string `json:"expiresAt"`
	Failure       *struct {
		Reason  string  `json:"reason"`
		Message *string `json:"message"`
	} `json:"failure"`
	Prompt *struct {
		URL  string `json:"url"`
		Code string `json:"code"`
	} `json:"prompt"`
	Raw json.RawMessage `json:"-"`
}

func loginSessionsPath(companyID, adapterType string) string {
	return "/api/companies/" + url.PathEscape(companyID) + "/adapters/" + url.PathEscape(adapterType) + "/login-sessions"
}

// StartAdapterLogin calls POST /api/companies/:cid/adapters/:type/login-sessions
// {"environmentId":…} (201). The host refuses (422) a provider whose
// manifest does not declare supportsLoginPty.
func (c *Client) StartAdapterLogin(ctx context.Context, companyID, adapterType, envID string) (LoginSession, error) {
	var out LoginSession
	raw, err := c.do(ctx, http.MethodPost, loginSessionsPath(companyID, adapterType), map[string]any{"environmentId": envID}, &out)
	out.Raw = raw
	return out, err
}

// AdapterLogin calls GET /api/companies/:cid/adapters/:type/login-sessions/:id.
func (c *Client) AdapterLogin(ctx context.Context, companyID, adapterType, sessionID string) (LoginSession, error) {
	var out LoginSession
	raw, err := c.do(ctx, http.MethodGet, loginSessionsPath(companyID, adapterType)+"/"+url.PathEscape(sessionID), nil, &out)
	out.Raw = raw
	return out, err
}

// CancelAdapterLogin calls POST …/login-sessions/:id/cancel.
func (c *Client) CancelAdapterLogin(ctx context.Context, companyID, adapterType, sessionID string) (LoginSession, error) {
	var out LoginSession
	raw, err := c.do(ctx, http.MethodPost, loginSessionsPath(companyID, adapterType)+"/"+url.PathEscape(sessionID)+"/cancel", map[string]any{}, &out)
	out.Raw = raw
	return out, err
}

// ---- the Claude setup-token login (claude_local) ----

// SetupTokenLogin is a Claude setup-token login as its owner reads it. The
// host runs `claude setup-token` on the provider's login terminal (key
// "claude"), shows its authorization URL, types the browser code the owner
// submits on the terminal, captures the token the CLI prints and stores it
// as the owner's secret; POST …/completion then claims it.
type SetupTokenLogin struct {
	SessionID string          `json:"sessionId"`
	Status    string          `json:"status"` // starting|waiting_for_user|authenticated|failed|timed_out|cancelled
	Raw       json.RawMessage `json:"-"`
}

func setupTokenPath(companyID string) string {
	return "/api/companies/" + url.PathEscape(companyID) + "/setup-token-login-sessions"
}

// StartSetupTokenLogin calls POST /api/companies/:cid/setup-token-login-sessions
// {"environmentId":…,"adapterType":"claude_local"} (201).
func (c *Client) StartSetupTokenLogin(ctx context.Context, companyID, envID string) (SetupTokenLogin, error) {
	var out SetupTokenLogin
	raw, err := c.do(ctx, http.MethodPost, setupTokenPath(companyID), map[string]any{"environmentId": envID, "adapterType": "claude_local"}, &out)
	out.Raw = raw
	return out, err
}

// GetSetupTokenLogin calls GET …/setup-token-login-sessions/:id.
func (c *Client) GetSetupTokenLogin(ctx context.Context, companyID, sessionID string) (SetupTokenLogin, error) {
	var out SetupTokenLogin
	raw, err := c.do(ctx, http.MethodGet, setupTokenPath(companyID)+"/"+url.PathEscape(sessionID), nil, &out)
	out.Raw = raw
	return out, err
}

// SetupTokenPrompt calls GET …/setup-token-login-sessions/:id/prompt and
// returns the authorization URL the CLI printed (404 before it did).
func (c *Client) SetupTokenPrompt(ctx context.Context, companyID, sessionID string) (string, error) {
	var out struct {
		AuthorizationURL string `json:"authorizationUrl"`
	}
	_, err := c.do(ctx, http.MethodGet, setupTokenPath(companyID)+"/"+url.PathEscape(sessionID)+"/prompt", nil, &out)
	return out.AuthorizationURL, err
}

// SubmitSetupTokenCode calls POST …/setup-token-login-sessions/:id/code
// {"browserCode":…}: the host types it on the login terminal.
func (c *Client) SubmitSetupTokenCode(ctx context.Context, companyID, sessionID, code string) (SetupTokenLogin, error) {
	var out SetupTokenLogin
	raw, err := c.do(ctx, http.MethodPost, setupTokenPath(companyID)+"/"+url.PathEscape(sessionID)+"/code", map[string]any{"browserCode": code}, &out)
	out.Raw = raw
	return out, err
}

// CompleteSetupTokenLogin calls POST …/setup-token-login-sessions/:id/completion
// and returns the storedSessionId (an error until the token is stored).
func (c *Client) CompleteSetupTokenLogin(ctx context.Context, companyID, sessionID string) (string, error) {
	var out struct {
		StoredSessionID string `json:"storedSessionId"`
	}
	_, err := c.do(ctx, http.MethodPost, setupTokenPath(companyID)+"/"+url.PathEscape(sessionID)+"/completion", map[string]any{}, &out)
	return out.StoredSessionID, err
}
