package e2e_test

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/paperclip-k8s/paperclip-k8s/e2e/paperclip"
	"github.com/paperclip-k8s/paperclip-k8s/internal/testutil"
)

// The fake codex CLI's credential: a subscription auth.json as the host's
// promotion accepts it (tokens with an account id), no real secret.
const fakeCodexAuth = `{"auth_mode":"chatgpt","tokens":{"account_id":"acct-e2e-login","access_token":"e2e-access-token","refresh_token":"e2e-refresh-token","id_token":"e2e-id-token"}}`

// fakeCodex is `codex login --device-auth` as the host's parser knows it:
// it prints the device URL and a one-time code on the terminal, then waits
// for the user to approve in the browser (here: a line on the approval
// FIFO, which the test writes once it has read the code from the host),
// writes $CODEX_HOME/auth.json and exits 0. It records where CODEX_HOME
// was, and its process id. %[1]s: the record file, %[2]s: the FIFO, %[3]s: the credential.
const fakeCodex = `#!/bin/sh
if [ "$1 $2" != "login --device-auth" ]; then echo "fake codex: unexpected arguments: $*" >&2; exit 2; fi
if [ ! -t 0 ] || [ ! -t 1 ]; then echo "fake codex: not on a terminal" >&2; exit 3; fi
printf '%%s\n%%s\n' "$CODEX_HOME" "$$" > '%[1]s'
printf 'Welcome to Codex\n\nFollow these steps to sign in with ChatGPT using device code authorization:\n\n'
printf '1. Open this link in your browser and sign in to your account\n   https://auth.openai.com/codex/device\n\n'
printf '2. Enter this one-time code (expires in 15 minutes)\n   WXYZ-98765\n\n'
read approval < '%[2]s'
if [ "$approval" != approved ]; then echo "fake codex: not approved" >&2; exit 4; fi
printf '%%s' '%[3]s' > "$CODEX_HOME/auth.json"
echo "Successfully logged in"
`

// fakeClaudeSetupToken is `claude setup-token` as the host's parser knows
// it: the authorization URL, the code prompt; it reads the browser code the
// owner submits (the host types it on the terminal), records it in RECORD
// and prints the long-lived token between its two anchor lines.
const fakeClaudeSetupToken = `#!/bin/sh
if [ "$1" != setup-token ]; then echo "fake claude: unexpected arguments: $*" >&2; exit 2; fi
if [ ! -t 0 ] || [ ! -t 1 ]; then echo "fake claude: not on a terminal" >&2; exit 3; fi
printf 'Welcome to Claude Code\n\nBrowser didn'"'"'t open? Use the url below to sign in (c to copy)\n\n%s\n\n\nPaste code here if prompted > ' 'AUTHURL'
read code
printf '%s' "$code" > 'RECORD'
printf '\n\nLong-lived authentication token created successfully!\n\nYour OAuth token (valid for 1 year):\n\n%s\n\nStore this token securely. You won'"'"'t be able to see it again.\n\nUse this token by setting: export CLAUDE_CODE_OAUTH_TOKEN=<token>\n' 'TOKEN'
`

// The fake's authorization URL (every query key the host's parser wants)
// and token (the form of a long-lived token, no real secret).
const (
	fakeClaudeAuthURL = "https://claude.ai/oauth/authorize?code=true&client_id=9d1c250a-e61b-44d9-88ed-5944d1962f5e&response_type=code" +
		"&redirect_uri=https%3A%2F%2Fplatform.claude.com%2Foauth%2Fcode%2Fcallback&scope=org%3Acreate_api_key+user%3Aprofile+user%3Ainference" +
		"&code_challenge=e2eChallenge0123456789abcdefghijklmnopqrstuv&code_challenge_method=S256&state=e2eState0123456789abcdef"
	fakeClaudeToken = "sk-ant-oat01-e2e_fake_token_0123456789abcdefghijklmnop"
)

var sessionHomeForm = regexp.MustCompile(`^/tmp/paperclip-adapter-login/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// waitLogin polls the owner's view of a login session until done says
// it is there; a terminal status that done does not accept fails at once.
func waitLogin(ctx context.Context, t *testing.T, srv *paperclip.Server, companyID, adapterType, id string, done func(paperclip.LoginSession) bool) paperclip.LoginSession {
	t.Helper()
	var got paperclip.LoginSession
	var final bool
	err := waitFor(ctx, 3*time.Minute, func() error {
		var err error
		if got, err = srv.AdapterLogin(ctx, companyID, adapterType, id); err != nil {
			return err
		}
		if done(got) {
			return nil
		}
		switch got.Status {
		case "authenticated", "failed", "timed_out", "cancelled":
			final = true
			return nil
		}
		return fmt.Errorf("login session %s is %q", id, got.Status)
	})
	if err != nil || final {
		t.Fatalf("login session %s: %v (last: %s)", id, err, got.Raw)
	}
	return got
}

// TestLoginTerminal: an operator logs an agent CLI in from Paperclip, the
// whole flow through the real paperclip-server (2026.916.1) and the plugin
// package on the local control plane.
//
// What the host does (services/device-login-service.js, routes/agents.js,
// plugin-worker-manager.js): POST /api/companies/:cid/adapters/codex_local/
// login-sessions {environmentId} is refused unless the provider's manifest
// declares supportsLoginPty; it acquires a fresh lease (no reuse), calls
// loginPtyOpen with the key "codex" and sessionHome /tmp/paperclip-adapter-
// login/<session uuid>, parses the device URL and one-time code from the
// loginPty.output chunks and shows them to the owner (GET …/login-sessions/
// :id, status waiting_for_user). When loginPty.exit says 0 it reads
// <sessionHome>/auth.json with one environmentExecute (`node -e <helper>`,
// bypassSession: no symlink anywhere on the path, a regular file of the
// exec user, mode exactly 0600, at most 64 KiB), copies it out into the
// company's own Codex home on the server, marks the session authenticated
// and releases the lease.
//
// The Claude login (POST /api/companies/:cid/setup-token-login-sessions)
// opens the terminal with the key "claude", shows the URL `claude
// setup-token` prints (GET …/prompt), types the browser code the owner
// submits (POST …/code: loginPtyInput, then a carriage return), takes the
// token the CLI prints from the output and stores it as the owner's secret
// (POST …/completion claims it). Nothing is read from the session home.
func TestLoginTerminal(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the paperclip harness reads /proc and uses Linux process groups")
	}
	s := startStack(t, stackOptions{})
	ctx, srv := s.ctx, s.srv

	// The "agent image" gets the fake codex CLI (the pods' PATH starts
	// with sandboxBin).
	scratch := t.TempDir()
	record, fifo := filepath.Join(scratch, "codex-home"), filepath.Join(scratch, "approve")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(s.sandboxBin, "codex"), []byte(fmt.Sprintf(fakeCodex, record, fifo, fakeCodexAuth)), 0o755); err != nil {
		t.Fatal(err)
	}

	claudeRecord := filepath.Join(scratch, "browser-code")
	claude := strings.NewReplacer("AUTHURL", fakeClaudeAuthURL, "RECORD", claudeRecord, "TOKEN", fakeClaudeToken).Replace(fakeClaudeSetupToken)
	if err := os.WriteFile(s.claude, []byte(claude), 0o755); err != nil {
		t.Fatal(err)
	}

	company, c := s.company(t, "e2e login")
	// newEnv creates the environment name on backend and returns it with
	// the leases it has before the login.
	newEnv := func(t *testing.T, name, backend string) (paperclip.Environment, map[string]bool) {
		t.Helper()
		env, err := srv.CreateEnvironment(ctx, company.ID, name, s.config(backend))
		if err != nil {
			t.Fatal(err)
		}
		return env, c.leaseIDs(ctx, t, env.ID)
	}

	// The Claude setup-token login: the owner's browser code goes through
	// the host (POST …/code → loginPtyInput) onto the terminal's keyboard.
	t.Run("claude setup-token", func(t *testing.T) {
		is := is.New(t)
		env, before := newEnv(t, "k8s-login-claude", "sandbox")
		started, err := srv.StartSetupTokenLogin(ctx, company.ID, env.ID)
		is.NoErr(err)
		t.Logf("setup-token session: %s", started.Raw)
		var authURL string
		is.NoErr(waitFor(ctx, time.Minute, func() error {
			authURL, err = srv.SetupTokenPrompt(ctx, company.ID, started.SessionID)
			return err
		}))
		is.Equal(authURL, fakeClaudeAuthURL) // the terminal's output reached the host
		const browserCode = "e2e-browser-code#e2eState0123456789abcdef"
		_, err = srv.SubmitSetupTokenCode(ctx, company.ID, started.SessionID, browserCode)
		is.NoErr(err)
		var stored string
		is.NoErr(waitFor(ctx, time.Minute, func() error {
			stored, err = srv.CompleteSetupTokenLogin(ctx, company.ID, started.SessionID)
			return err
		}))
		t.Logf("stored session %s", stored)
		got, err := srv.GetSetupTokenLogin(ctx, company.ID, started.SessionID)
		is.NoErr(err)
		t.Logf("setup-token session: %s", got.Raw)
		is.Equal(got.Status, "authenticated")
		typed, err := os.ReadFile(claudeRecord)
		is.NoErr(err)
		is.Equal(string(typed), browserCode) // the input was delivered, as typed
		c.released(ctx, t, env.ID, before, "sandbox", "released")
	})

	t.Run("codex device login", func(t *testing.T) {
		is := is.New(t)
		env, before := newEnv(t, "k8s-login", "sandbox")
		started, err := srv.StartAdapterLogin(ctx, company.ID, "codex_local", env.ID)
		is.NoErr(err)
		t.Logf("login session %s: %s", started.SessionID, started.Raw)

		// The terminal's output reached the host: it parsed the prompt.
		got := waitLogin(ctx, t, srv, company.ID, "codex_local", started.SessionID, func(l paperclip.LoginSession) bool {
			return l.Status == "waiting_for_user" && l.Prompt != nil
		})
		is.Equal(got.Prompt.URL, "https://auth.openai.com/codex/device")
		is.Equal(got.Prompt.Code, "WXYZ-98765")

		// The user approves in the browser: the CLI reads its line.
		f, err := os.OpenFile(fifo, os.O_WRONLY, 0)
		is.NoErr(err)
		_, err = f.WriteString("approved\n")
		is.NoErr(err)
		is.NoErr(f.Close())

		got = waitLogin(ctx, t, srv, company.ID, "codex_local", started.SessionID, func(l paperclip.LoginSession) bool {
			return l.Status == "authenticated"
		})
		t.Logf("login session: %s", got.Raw)

		// The credential is where the host expects it: CODEX_HOME was the
		// session home the host chose, auth.json there is private.
		b, err := os.ReadFile(record)
		is.NoErr(err)
		home, _, _ := strings.Cut(string(b), "\n")
		t.Cleanup(func() { _ = os.RemoveAll(home) })
		is.True(sessionHomeForm.MatchString(home))
		st, err := os.Lstat(filepath.Join(home, "auth.json"))
		is.NoErr(err)
		is.True(st.Mode().IsRegular())
		is.Equal(st.Mode().Perm(), os.FileMode(0o600))
		dir, err := os.Lstat(home)
		is.NoErr(err)
		is.Equal(dir.Mode().Perm(), os.FileMode(0o700))

		// The host copied it out of the sandbox into the company's scope.
		var copies []string
		is.NoErr(filepath.WalkDir(srv.Root, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || d.Name() != "auth.json" {
				return nil
			}
			if b, err := os.ReadFile(p); err == nil && bytes.Equal(b, []byte(fakeCodexAuth)) {
				copies = append(copies, p)
			}
			return nil
		}))
		t.Logf("the credential on the server: %v", copies)
		is.True(len(copies) >= 1)
		for _, p := range copies {
			is.True(strings.Contains(p, company.ID)) // the company's own home
		}

		// The lease was released and its objects are gone; the terminal
		// ran in its pod (the open, then the host's credential read).
		ls := c.released(ctx, t, env.ID, before, "sandbox", "released")
		execs, _ := c.podCalls(t, s.nodeLog, ls[0])
		is.True(execs >= 2)
		lines, err := srv.PluginLines(s.plugin.ID)
		is.NoErr(err)
		var opened, ended bool
		for _, l := range lines {
			txt := l.Text()
			opened = opened || strings.Contains(txt, `msg="login terminal opened"`) && strings.Contains(txt, "command=codex")
			ended = ended || strings.Contains(txt, `msg="login terminal ended"`) && strings.Contains(txt, "exitCode=0")
		}
		is.True(opened)
		is.True(ended)
	})

	// The owner cancels while the CLI waits for the approval: the host
	// closes the terminal (loginPtyClose), which ends the CLI in the pod
	// (its process is gone), and releases the lease.
	t.Run("codex login cancelled", func(t *testing.T) {
		is := is.New(t)
		is.NoErr(os.Remove(record)) // the last login's
		env, before := newEnv(t, "k8s-login-cancel", "sandbox")
		started, err := srv.StartAdapterLogin(ctx, company.ID, "codex_local", env.ID)
		is.NoErr(err)
		waitLogin(ctx, t, srv, company.ID, "codex_local", started.SessionID, func(l paperclip.LoginSession) bool {
			return l.Status == "waiting_for_user" && l.Prompt != nil
		})
		// The CLI waits for the approval.
		b, err := os.ReadFile(record)
		is.NoErr(err)
		fields := strings.Fields(string(b))
		is.Equal(len(fields), 2)
		pid, err := strconv.Atoi(fields[1])
		is.NoErr(err)
		is.True(testutil.Alive(pid))
		got, err := srv.CancelAdapterLogin(ctx, company.ID, "codex_local", started.SessionID)
		is.NoErr(err)
		t.Logf("cancelled: %s", got.Raw)
		c.released(ctx, t, env.ID, before, "sandbox", "released")
		// The CLI is gone: the terminal was closed under it.
		wctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		testutil.WaitGone(t, wctx, pid)
		lines, err := srv.PluginLines(s.plugin.ID)
		is.NoErr(err)
		var closed bool
		for _, l := range lines {
			closed = closed || strings.Contains(l.Text(), `msg="login terminal closed"`)
		}
		is.True(closed)
	})

	// A job backend cannot host a terminal: the host's login fails, the
	// plugin says why, nothing ran in the Job's pod, the lease is released.
	t.Run("job backend", func(t *testing.T) {
		is := is.New(t)
		env, before := newEnv(t, "k8s-login-job", "job")
		started, err := srv.StartAdapterLogin(ctx, company.ID, "codex_local", env.ID)
		is.NoErr(err)
		got := waitLogin(ctx, t, srv, company.ID, "codex_local", started.SessionID, func(l paperclip.LoginSession) bool {
			return l.Status == "failed"
		})
		t.Logf("login session: %s", got.Raw)
		is.True(got.Prompt == nil)
		ls := c.released(ctx, t, env.ID, before, "job", "released")
		execs, _ := c.podCalls(t, s.nodeLog, ls[0])
		is.Equal(execs, 0)
		// The host logs the plugin's refusal (its error field on a line of
		// its own in the server log).
		log, err := os.ReadFile(srv.LogPath)
		is.NoErr(err)
		is.True(bytes.Contains(log, []byte(`loginPtyOpen: lease `+deref(ls[0].ProviderLeaseID)+` is on backend \"job\", which runs no commands in its pod`)))
	})
}
