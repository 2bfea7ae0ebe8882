package plugin

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/matryer/is"

	"github.com/paperclip-k8s/paperclip-k8s/podexec"
)

// localRunner runs what podexec would send to a pod on this machine: the
// argv and stdin preamble of podexec.BuildCommand, in a "container"
// environment of its own, with shell standing for /bin/sh when set.
type localRunner struct {
	env   []string
	shell string
}

func (r *localRunner) Run(ctx context.Context, req podexec.Request) (*podexec.Result, error) {
	built, err := podexec.BuildCommand(req.Command, req.Args, req.Env, req.Cwd)
	if err != nil {
		return nil, err
	}
	argv := built.Argv
	if r.shell != "" {
		argv = slices.Clone(argv)
		for i, a := range argv {
			if a == podexec.Shell {
				argv[i] = r.shell
			}
		}
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var stdin io.Reader = bytes.NewReader(built.Preamble)
	if req.Stdin != nil {
		stdin = io.MultiReader(stdin, req.Stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr, cmd.Env = stdin, &stdout, &stderr, r.env
	err = cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		return nil, err
	}
	return &podexec.Result{ExitCode: &code, Stdout: stdout.Bytes(), Stderr: stderr.Bytes()}, nil
}

// loginHome makes a HOME whose ~/.profile (read by login shells after
// /etc/profile) exports, unsets and prints things and counts its runs, and
// a program in ~/bin that only its PATH finds.
func loginHome(t *testing.T) string {
	t.Helper()
	home := t.TempDir()
	profile := `echo run >> "$HOME/profile-runs"
echo "a banner from the profile"
export FOO='from the profile'
export NL='two
lines'
export HOSTWINS=profile
export LOGIN_SECRET='login-only-value'
unset GONE
umask 027
export PATH="$HOME/bin:$PATH"
`
	if err := os.WriteFile(filepath.Join(home, ".profile"), []byte(profile), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(home, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(home, "bin", "hello-login"), []byte("#!/bin/sh\necho hello\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return home
}

func profileRuns(t *testing.T, home string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(home, "profile-runs"))
	if errors.Is(err, os.ErrNotExist) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), "run\n")
}

// loginShells are the pod shells the capture is tested with: /bin/sh with
// this machine's tools, and BusyBox's sh with BusyBox applets.
func loginShells(t *testing.T) map[string]*localRunner {
	t.Helper()
	env := []string{"GONE=1", "KEEP=same"}
	out := map[string]*localRunner{"sh": {env: append([]string{"PATH=/usr/bin:/bin"}, env...)}}
	bb, err := exec.LookPath("busybox")
	if err != nil {
		if ci := os.Getenv("CI"); ci == "true" || ci == "1" {
			t.Fatal("CI=true and busybox is missing (hack/test.sh installs busybox-static)")
		}
		t.Log("busybox is not installed: the capture is tested with /bin/sh only")
		return out
	}
	bin := t.TempDir()
	for _, applet := range []string{"sh", "cat", "dd", "id"} {
		if err := os.Symlink(bb, filepath.Join(bin, applet)); err != nil {
			t.Fatal(err)
		}
	}
	out["busybox"] = &localRunner{shell: filepath.Join(bin, "sh"), env: append([]string{"PATH=" + bin}, env...)}
	return out
}

// forEachLoginShell runs test as a subtest with each of loginShells.
func forEachLoginShell(t *testing.T, test func(*testing.T, *localRunner)) {
	for name, r := range loginShells(t) {
		t.Run(name, func(t *testing.T) { test(t, r) })
	}
}

// withLoginHome gives r a loginHome as its HOME and returns it.
func withLoginHome(t *testing.T, r *localRunner) string {
	t.Helper()
	home := loginHome(t)
	r.env = append(r.env, "HOME="+home)
	return home
}

// The capture, with each shell: what ~/.profile exports, unsets and its
// umask, and nothing both shells share or each sets for itself.
func TestLoginCaptureLocalShell(t *testing.T) {
	forEachLoginShell(t, testLoginCapture)
}

func testLoginCapture(t *testing.T, r *localRunner) {
	is := is.New(t)
	home := withLoginHome(t, r)
	d, err := captureLogin(context.Background(), r, podexec.Request{})
	is.NoErr(err)
	is.Equal(profileRuns(t, home), 1)
	is.Equal(d.set["FOO"], "from the profile")
	is.Equal(d.set["NL"], "two\nlines")
	is.Equal(d.set["HOSTWINS"], "profile")
	is.True(strings.HasPrefix(d.set["PATH"], home+"/bin:"))
	is.Equal(d.unset, []string{"GONE"})
	is.Equal(d.umask, "0027")
	for _, k := range []string{"KEEP", "HOME", "PWD", "OLDPWD", "SHLVL", "_"} {
		_, ok := d.set[k]
		is.True(!ok) // shared, or the shell's own
	}
}

// Commands run in a plain shell with the captured login environment: they
// see what the profile exports and find what its PATH finds, the host's env
// wins, the profile does not run again, and no login value but PATH is in
// the argv.
func TestLoginEnvAppliedWithoutLoginShell(t *testing.T) {
	forEachLoginShell(t, testLoginEnvApplied)
}

func testLoginEnvApplied(t *testing.T, r *localRunner) {
	is := is.New(t)
	home := withLoginHome(t, r)
	d, err := captureLogin(context.Background(), r, podexec.Request{})
	is.NoErr(err)

	script := `printf '%s|%s|%s|%s|%s|%s|' "$FOO" "$NL" "$HOSTWINS" "${GONE-unset}" "$KEEP" "$(umask)"; hello-login`
	for _, host := range []map[string]string{nil, {"HOSTWINS": "host", "HOST_SECRET": "host-secret-value", "PATH": "/host/path"}} {
		var before map[string]string
		if host != nil {
			before = map[string]string{}
			for k, v := range host {
				before[k] = v
			}
		}
		command, args, env := d.command(script, nil, host)
		is.Equal(command, "/bin/sh")
		is.Equal(len(args), 2)
		is.True(!strings.Contains(args[1], "from the profile")) // values travel on stdin
		is.True(!strings.Contains(args[1], "login-only-value"))
		is.True(!strings.Contains(args[1], "host-secret-value"))
		is.Equal(host, before) // the host's map is not changed
		res, err := r.Run(context.Background(), podexec.Request{Command: command, Args: args, Env: env})
		is.NoErr(err)
		is.Equal(*res.ExitCode, 0)
		want := "from the profile|two\nlines|profile|unset|same|0027|hello\n"
		if host != nil {
			want = "from the profile|two\nlines|host|unset|same|0027|hello\n"
		}
		is.Equal(string(res.Stdout), want)
	}
	is.Equal(profileRuns(t, home), 1) // the capture's run only

	// A changed profile is not read again during the lease; a command that
	// wants it sources it.
	is.NoErr(os.WriteFile(filepath.Join(home, ".profile"), []byte("export FOO=changed\n"), 0o644))
	for c, want := range map[string]string{`printf %s "$FOO"`: "from the profile", `. "$HOME/.profile"; printf %s "$FOO"`: "changed"} {
		command, args, env := d.command(c, nil, nil)
		res, err := r.Run(context.Background(), podexec.Request{Command: command, Args: args, Env: env})
		is.NoErr(err)
		is.Equal(string(res.Stdout), want)
	}

	// A command with args runs as sent.
	command, args, env := d.command("sh", []string{"-c", "true"}, map[string]string{"A": "b"})
	is.Equal(command, "sh")
	is.Equal(args, []string{"-c", "true"})
	is.Equal(env, map[string]string{"A": "b"})
}

// A login shell that gives nothing more than a plain one: the command runs
// in `/bin/sh -c` as sent, with nothing added.
func TestLoginEnvNothingToApply(t *testing.T) {
	is := is.New(t)
	d, err := parseLoginCapture([]byte("\x00M\x000022\n\x00PATH=/bin\x00PWD=/a\x00\x00M\x00banner\n\x00M\x000022\n\x00PATH=/bin\x00PWD=/b\x00SHLVL=2\x00"), "M")
	is.NoErr(err)
	command, args, env := d.command("true", nil, nil)
	is.Equal(command, "/bin/sh")
	is.Equal(args, []string{"-c", "true"})
	is.Equal(env, nil)
}

// Output the capture cannot trust is an error (the lease keeps the login
// shell), never a partial environment.
func TestLoginCaptureMalformed(t *testing.T) {
	is := is.New(t)
	for _, out := range []string{
		"",
		"\x00M\x000022\n\x00A=1\x00", // the login shell never ran
		"\x00M\x000022\n\x00A=1\x00\x00M\x00\x00M\x00",                // no umask
		"\x00M\x00zz\n\x00A=1\x00\x00M\x00\x00M\x000022\n\x00A=1\x00", // not a umask
		"\x00M\x000022\n\x00\x00M\x00\x00M\x000022\n\x00\x00M\x00x",   // a frame too many
	} {
		_, err := parseLoginCapture([]byte(out), "M")
		is.True(err != nil)
	}
	r := &localRunner{env: []string{"PATH=/nonexistent"}} // no cat
	_, err := captureLogin(context.Background(), r, podexec.Request{})
	is.True(err != nil)
	is.True(strings.Contains(err.Error(), "needs cat and /proc"))
}

// One capture per lease: concurrent commands wait for the one in flight; a
// capture cut short by its caller's context is tried again by the next
// command; a failed one is not (the lease keeps the login shell).
func TestLoginEnvCapturedOnce(t *testing.T) {
	is := is.New(t)
	var l loginEnv
	release := make(chan struct{})
	started := make(chan struct{})
	calls := 0
	want := &loginDiff{set: map[string]string{"A": "1"}}
	capture := func(ctx context.Context) (*loginDiff, error) {
		calls++
		close(started)
		<-release
		return want, nil
	}
	var wg sync.WaitGroup
	got := make([]*loginDiff, 3)
	wg.Add(1)
	go func() { defer wg.Done(); got[0] = l.get(context.Background(), capture) }()
	<-started
	for i := 1; i < 3; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); got[i] = l.get(context.Background(), capture) }()
	}
	close(release)
	wg.Wait()
	is.Equal(calls, 1)
	for _, g := range got {
		is.Equal(g, want)
	}

	var cut loginEnv
	ctx, cancel := context.WithCancel(context.Background())
	is.Equal(cut.get(ctx, func(ctx context.Context) (*loginDiff, error) { cancel(); return nil, ctx.Err() }), (*loginDiff)(nil))
	is.Equal(cut.get(context.Background(), func(context.Context) (*loginDiff, error) { return want, nil }), want)

	var failed loginEnv
	fails := 0
	fail := func(context.Context) (*loginDiff, error) { fails++; return nil, errors.New("no cat") }
	is.Equal(failed.get(context.Background(), fail), (*loginDiff)(nil))
	is.Equal(failed.get(context.Background(), fail), (*loginDiff)(nil))
	is.Equal(fails, 1)
}

// The lease's first command sent alone is its capture too (one exec): it
// sees what the later commands see (the profile's variables, umask and
// PATH, the host's env winning, the command's cwd and stdin, not the
// profile's banner), its stdout and stderr are its own, the profile runs
// once, no value travels in the argv, and the capture equals a separate
// one's.
func TestLoginEnvFusedWithTheFirstCommand(t *testing.T) {
	forEachLoginShell(t, testLoginEnvFused)
}

func testLoginEnvFused(t *testing.T, r *localRunner) {
	is := is.New(t)
	home := withLoginHome(t, r)
	// A profile that moves and reads stdin: neither reaches the command.
	f, err := os.OpenFile(filepath.Join(home, ".profile"), os.O_APPEND|os.O_WRONLY, 0)
	is.NoErr(err)
	_, err = f.WriteString("cd /\nread -r stolen || true\necho 'profile noise' >&2\n")
	is.NoErr(err)
	is.NoErr(f.Close())
	cwd := t.TempDir()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))

	var l loginEnv
	script := `printf '%s|%s|%s|%s|%s|%s|%s|' "$FOO" "$NL" "$HOSTWINS" "${GONE-unset}" "$KEEP" "$(umask)" "$PWD"; hello-login; cat; echo to-stderr >&2`
	fu := l.fuse(log, podexec.Request{}, script, nil)
	is.True(fu != nil)
	is.True(l.fuse(log, podexec.Request{}, script, nil) == nil) // one capture per lease
	is.True(l.fuse(log, podexec.Request{}, "sh", []string{"-c", "true"}) == nil)
	host := map[string]string{"HOSTWINS": "host", "HOST_SECRET": "host-secret-value"}
	command, args := fu.argv(script, host)
	for _, a := range args {
		is.True(!strings.Contains(a, "host-secret-value"))
	}
	res, err := r.Run(context.Background(), podexec.Request{Command: command, Args: args, Env: host, Cwd: cwd, Stdin: strings.NewReader("the stdin\n")})
	is.NoErr(err)
	out, rerun := fu.end(context.Background(), res, err)
	is.True(!rerun)
	is.Equal(*out.ExitCode, 0)
	is.Equal(string(out.Stdout), "from the profile|two\nlines|host|unset|same|0027|"+cwd+"|hello\nthe stdin\n")
	is.Equal(string(out.Stderr), "to-stderr\n")
	is.Equal(profileRuns(t, home), 1)

	// Streamed: stderr from past the frames only, however it is cut.
	var streamed [2]strings.Builder
	send := fu.output(func(stream string, b []byte) {
		streamed[map[string]int{"stdout": 0, "stderr": 1}[stream]].Write(b)
	})
	for i := range res.Stderr {
		send("stderr", res.Stderr[i:i+1])
	}
	send("stdout", res.Stdout)
	is.Equal(streamed[0].String(), string(out.Stdout))
	is.Equal(streamed[1].String(), "to-stderr\n")

	// The lease's later commands get the capture, which equals a separate one.
	d := l.forCommand(context.Background(), log, r, podexec.Request{}, "true", nil)
	is.True(d != nil)
	is.Equal(profileRuns(t, home), 1)
	sep, err := captureLogin(context.Background(), r, podexec.Request{})
	is.NoErr(err)
	is.Equal(d.set, sep.set)
	is.Equal(d.unset, sep.unset)
	is.Equal(d.umask, sep.umask)
}

// A profile that exits ends the fused exec before the command: the command
// did not run, end says to run it again, and the lease's commands run in
// a login shell (no capture is tried again).
func TestLoginEnvFusedProfileExits(t *testing.T) {
	is := is.New(t)
	r := loginShells(t)["sh"]
	home := withLoginHome(t, r)
	is.NoErr(os.WriteFile(filepath.Join(home, ".profile"), []byte("echo run >> \"$HOME/profile-runs\"\nexit 0\n"), 0o644))
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	var l loginEnv
	script := `touch "$HOME/ran"`
	fu := l.fuse(log, podexec.Request{}, script, nil)
	command, args := fu.argv(script, nil)
	res, err := r.Run(context.Background(), podexec.Request{Command: command, Args: args})
	_, rerun := fu.end(context.Background(), res, err)
	is.True(rerun)
	_, err = os.Stat(filepath.Join(home, "ran"))
	is.True(errors.Is(err, os.ErrNotExist)) // the command did not run
	is.Equal(l.forCommand(context.Background(), log, r, podexec.Request{}, script, nil), (*loginDiff)(nil))
	is.True(l.fuse(log, podexec.Request{}, script, nil) == nil)
	is.Equal(profileRuns(t, home), 1)
}

// The fused exec runs with its stderr cap raised by fusedFrameAllowance
// for the frames; when the command's own stderr goes past it, the error
// names the configured cap (execMaxOutputBytes), not the raised one. A
// stdout cap, never raised, is left as it is.
func TestLoginEnvFusedOutputCapIsTheConfiguredOne(t *testing.T) {
	is := is.New(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	const configured = 4096
	for _, tc := range []struct {
		stream    string
		limit     int64 // what the exec ran with
		wantLimit int64
	}{
		{"stderr", configured + fusedFrameAllowance, configured},
		{"stdout", configured, configured},
	} {
		var l loginEnv
		fu := l.fuse(log, podexec.Request{Namespace: "t", Pod: "p"}, "yes >&2", nil)
		is.True(fu != nil)
		// What podexec returns when a stream goes past its cap.
		var err error = &podexec.OutputLimitError{Stream: tc.stream, Limit: tc.limit}
		_, rerun := fu.end(context.Background(), &podexec.Result{}, err)
		is.True(!rerun)
		var limit *podexec.OutputLimitError
		is.True(errors.As(err, &limit))
		is.Equal(limit.Limit, tc.wantLimit)
		is.True(strings.Contains(err.Error(), fmt.Sprintf("cap of %d bytes", configured)))
	}
}
