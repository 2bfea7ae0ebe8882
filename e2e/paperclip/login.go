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
