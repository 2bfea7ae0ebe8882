package plugin

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/paperclip-k8s/paperclip-k8s/podexec"
)

// A command the host sends alone (no args) is a shell script, and it used
// to run in a login shell (`/bin/sh -lc`, as the reference plugin does) so
// that what the image's /etc/profile and ~/.profile export (PATH above
// all) applies. Sourcing the profile on every command costs milliseconds
// (a fork of id(1) in Debian's /etc/profile, a scan of /etc/profile.d), so
// the login shell runs once per lease instead: the lease's first such
// command captures what a login shell exports on top of a plain shell's
// environment (and its umask), and every command of the lease then runs in
// a plain `/bin/sh -c` with that applied:
//
//   - PATH, when the login shell changes it, is set by the script itself
//     (`export PATH='…'; ` ahead of the command, on its first line): a
//     search path is not a secret, and the common case then needs no
//     wrapper shell. podexec never exports the host's PATH (it does not
//     describe the image), so the login PATH always applies, as before;
//   - every other variable travels with the host's env on the command's
//     stdin (podexec's preamble, never in the exec request's URL), and a
//     variable the host sends keeps the host's value;
//   - a variable the login shell drops is unset (unless the host sends it),
//     and a different umask is set.
//
// Functions, aliases, shell options and unexported variables that a
// profile defines are not carried (a plain shell cannot receive them); a
// command that needs them sources the profile itself (`. /etc/profile`).
// The profile is read once: a change to it during the lease is seen by the
// next lease's commands (and by a command that sources it). A command with
// args runs as given, without the login environment, as before. When the
// capture fails (no cat, no /proc), the lease's commands keep the login
// shell. Two differences from a login shell per command: the host's env
// now wins over the profile's (the profile ran after it), and what the
// profile prints (a banner) is no longer ahead of each command's output.

// loginEnv is a lease's login environment, captured on its first
// command-only execute (leaseState.login).
type loginEnv struct {
	mu sync.Mutex
	// done is closed when the capture in flight ends; nil when none has
	// started, or the last one was cut short by its caller's context.
	done chan struct{}
	diff *loginDiff // nil until captured, or when the capture failed
	// ahead: the capture was read before the lease's run (a standby's
	// pod, standby.go) and no command has used it yet.
	ahead bool
}

// readAhead captures the login environment before the lease has a run
// (a standby's pod, whose profile is its image's): the run's first command
// sent alone is then the command alone. Any other command that runs on the
// lease first drops it (dropAhead), since it may change the profile.
func (l *loginEnv) readAhead(ctx context.Context, capture func(context.Context) (*loginDiff, error)) {
	if l.get(ctx, capture) == nil {
		return // failed or cut short: the first command captures, as always
	}
	l.mu.Lock()
	l.ahead = true
	l.mu.Unlock()
}

// dropAhead forgets a capture read ahead that no command used yet: the
// lease's first command sent alone captures again, as on any lease. A
// command that uses the capture keeps it (use).
func (l *loginEnv) dropAhead() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ahead {
		l.ahead, l.done, l.diff = false, nil, nil
	}
}

// use marks a capture read ahead as the lease's own.
func (l *loginEnv) use() {
	l.mu.Lock()
	l.ahead = false
	l.mu.Unlock()
}

// loginDiff is what a login shell exports on top of a plain shell.
type loginDiff struct {
	set   map[string]string // names a login shell exports with another value, or only it exports
	unset []string          // names only the plain shell exports, sorted
	umask string            // the login shell's umask when it differs, else ""
}

// loginCaptureTimeout bounds the capture (the profile runs in it).
const loginCaptureTimeout = 30 * time.Second

// loginCaptureScript prints, framed by the marker ($1) between NUL bytes,
// the umask and the environment (/proc/self/environ: NUL-separated, exact)
// of a plain shell, then of a login shell ($0, the shell itself). What the
// profile prints lands between the frames and is ignored.
const loginCaptureScript = `printf '\000%s\000' "$1"; umask; printf '\000'; cat /proc/self/environ || exit 1; ` +
	`printf '\000%s\000' "$1"; exec "$0" -lc 'printf "\000%s\000" "$1"; umask; printf "\000"; exec cat /proc/self/environ' sh "$1"`

// forCommand returns the lease's login environment for a command-only
// execute (capturing it on the lease's first, or waiting for the capture
// in flight), nil for a command with args or when it is not known
// (the command then runs in a login shell). pod names the lease's pod
// (Namespace, Pod, Container).
func (l *loginEnv) forCommand(ctx context.Context, log *slog.Logger, ex loginRunner, pod podexec.Request, command string, args []string) *loginDiff {
	if !commandOnly(command, args) {
		return nil
	}
	return l.get(ctx, captureFunc(log, ex, pod))
}

// commandOnly says whether a command is a script sent alone, the commands
// that get the login environment.
func commandOnly(command string, args []string) bool { return len(args) == 0 && command != "" }

// captureFunc captures the login environment of pod, logging a failure.
func captureFunc(log *slog.Logger, ex loginRunner, pod podexec.Request) func(context.Context) (*loginDiff, error) {
	return func(ctx context.Context) (*loginDiff, error) {
		d, err := captureLogin(ctx, ex, pod)
		if err != nil && ctx.Err() == nil {
			// The capture's errors hold neither its output nor values.
			log.Info("reading the login environment of a lease's pod failed; its commands run in a login shell",
				"namespace", pod.Namespace, "pod", pod.Pod, "error", err)
		}
		return d, err
	}
}

// get returns the login environment, capturing it first if no capture ran
// yet; concurrent callers wait for the one in flight. nil when the capture
// failed, or ctx ended first (the next call then captures again).
func (l *loginEnv) get(ctx context.Context, capture func(context.Context) (*loginDiff, error)) *loginDiff {
	done, run := l.begin()
	if run {
		l.capture(ctx, done, capture)
	}
	select {
	case <-done:
	case <-ctx.Done():
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.diff
}

// begin returns the channel closed when the capture ends, and whether the
// caller is to run it (none ran or is in flight).
func (l *loginEnv) begin() (done chan struct{}, run bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done != nil {
		return l.done, false
	}
	l.done = make(chan struct{})
	return l.done, true
}

// capture runs the capture begin handed to the caller, and closes done.
func (l *loginEnv) capture(ctx context.Context, done chan struct{}, capture func(context.Context) (*loginDiff, error)) {
	d, err := capture(ctx)
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case err == nil:
		l.diff = d
	case ctx.Err() != nil:
		l.done = nil // cut short by this caller, not the pod's answer
	}
	close(done)
}

// loginRunner runs a command in a pod (podexec.Executor).
type loginRunner interface {
	Run(ctx context.Context, req podexec.Request) (*podexec.Result, error)
}

// captureLogin runs loginCaptureScript in the pod of req and compares its
// two environments.
func captureLogin(ctx context.Context, ex loginRunner, req podexec.Request) (*loginDiff, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, err
	}
	mark := "paperclip-login-" + hex.EncodeToString(b[:])
	req.Command, req.Args = podexec.Shell, []string{"-c", loginCaptureScript, podexec.Shell, mark}
	req.Timeout, req.MaxStdout, req.MaxStderr = loginCaptureTimeout, 4<<20, 64<<10
	res, err := ex.Run(ctx, req)
	switch {
	case err != nil:
		return nil, fmt.Errorf("running the login shell: %w", err)
	case res.TimedOut:
		return nil, fmt.Errorf("the login shell did not finish within %s", loginCaptureTimeout)
	case res.ExitCode == nil || *res.ExitCode != 0:
		code := -1
		if res.ExitCode != nil {
			code = *res.ExitCode
		}
		return nil, fmt.Errorf("the login shell exited with status %d (the image needs cat and /proc)", code)
	}
	return parseLoginCapture(res.Stdout, mark)
}

// parseLoginCapture reads loginCaptureScript's output.
func parseLoginCapture(out []byte, mark string) (*loginDiff, error) {
	parts := strings.Split(string(out), "\x00"+mark+"\x00")
	if len(parts) != 4 || parts[0] != "" {
		return nil, errors.New("the login shell's output is not in the expected frames (does the profile exec another program?)")
	}
	plainMask, plain, err := parseEnvBlock(parts[1])
	if err != nil {
		return nil, fmt.Errorf("the plain shell's environment: %w", err)
	}
	loginMask, login, err := parseEnvBlock(parts[3])
	if err != nil {
		return nil, fmt.Errorf("the login shell's environment: %w", err)
	}
	d := &loginDiff{set: map[string]string{}}
	for k, v := range login {
		if old, ok := plain[k]; (!ok || old != v) && carried(k) {
			d.set[k] = v
		}
	}
	for k := range plain {
		if _, ok := login[k]; !ok && carried(k) {
			d.unset = append(d.unset, k)
		}
	}
	sort.Strings(d.unset)
	if loginMask != plainMask {
		d.umask = loginMask
	}
	return d, nil
}

var umaskRE = regexp.MustCompile(`^[0-7]{3,4}$`)

// parseEnvBlock reads "<umask>\n\0K=V\0K=V\0…". The first of two entries
// of a name wins, as for getenv(3).
func parseEnvBlock(b string) (string, map[string]string, error) {
	mask, rest, ok := strings.Cut(b, "\x00")
	mask = strings.TrimSpace(mask)
	if !ok || !umaskRE.MatchString(mask) {
		return "", nil, errors.New("no umask")
	}
	env := map[string]string{}
	for _, e := range strings.Split(rest, "\x00") {
		k, v, ok := strings.Cut(e, "=")
		if !ok || k == "" {
			continue
		}
		if _, dup := env[k]; !dup {
			env[k] = v
		}
	}
	return mask, env, nil
}

var shellNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// carried says whether a login shell's change of a variable is applied to
// commands: shell names only, not what each shell sets for itself (PWD,
// OLDPWD, SHLVL, _), and not bash's read-only names (assigning or unsetting
// them would end the command's shell).
func carried(name string) bool {
	if strings.HasPrefix(name, fusedAside) {
		return false // what podexec and the fused script keep aside
	}
	switch name {
	case "PWD", "OLDPWD", "SHLVL", "_", "PPID", "UID", "EUID", "SHELLOPTS", "BASHOPTS", "BASH_VERSINFO":
		return false
	}
	return shellNameRE.MatchString(name)
}

// command returns the command, args and env that run the host's command
// alone in a plain shell with the login environment applied; env (the
// host's) keeps precedence. A nil d returns them as they are.
func (d *loginDiff) command(command string, args []string, env map[string]string) (string, []string, map[string]string) {
	if d == nil || !commandOnly(command, args) {
		return command, args, env
	}
	var pre strings.Builder
	if d.umask != "" {
		pre.WriteString("umask " + d.umask + "; ")
	}
	var unset []string
	for _, k := range d.unset {
		if _, host := env[k]; !host {
			unset = append(unset, k)
		}
	}
	if len(unset) > 0 {
		pre.WriteString("unset " + strings.Join(unset, " ") + "; ")
	}
	if path, ok := d.set["PATH"]; ok {
		pre.WriteString("export PATH=" + podexec.ShellQuote(path) + "; ")
	}
	merged := env
	for k, v := range d.set {
		if _, host := env[k]; host || k == "PATH" {
			continue
		}
		if len(merged) == len(env) { // first login variable: copy, the host's map is not changed
			merged = make(map[string]string, len(env)+len(d.set))
			maps.Copy(merged, env)
		}
		merged[k] = v
	}
	return podexec.Shell, []string{"-c", pre.String() + command}, merged
}

// The lease's first command-only execute does not wait for a capture of
// its own: it runs in one exec that is both the capture and the command
// (fusedScript), so the login environment costs the lease no extra round
// trip. A plain shell prints its frames on stderr, then a login shell
// (stdin, stdout and stderr kept aside on fds 5, 3 and 4 while the profile
// runs, so what the profile prints is dropped and it cannot read the
// command's stdin) prints its frames and a closing marker on stderr,
// restores the streams, the working directory and the host's env (which
// wins over the profile's, as in a plain shell with the captured
// environment applied: each host variable is kept aside in
// __paperclip_host_<name> for the profile's run), and execs a plain shell
// with the command. The command thus sees what the later commands of the
// lease see. The worker strips the frames from the head of stderr
// (fusedOutput) and reads the capture from them. Without the closing
// marker the command did not run (the profile exited or exec'd, no cat or
// /proc): the capture has failed and the command runs again in a login
// shell, as when a capture fails.

// fusedFrameAllowance is what the frames may add to the command's stderr
// cap: the caller raises the fused exec's MaxStderr by it (whenever the
// cap is set, as a provider config's execMaxOutputBytes always is), and
// end reports an exceeded cap as the caller's own (configuredLimit).
const fusedFrameAllowance = 1 << 20

// fusedAside prefixes what the fused script keeps aside across the profile.
const fusedAside = "__paperclip_"

// fused is the lease's first command-only execute, which captures the
// login environment in its own exec; nil when the lease's capture already
// ran or is in flight.
type fused struct {
	l    *loginEnv
	done chan struct{}
	mark string
	log  *slog.Logger
	pod  podexec.Request
}

// fuse returns a fused run when the command is sent alone and the lease
// has not started its capture (the caller then owns it and must call
// end); otherwise nil, and forCommand answers.
func (l *loginEnv) fuse(log *slog.Logger, pod podexec.Request, command string, args []string) *fused {
	if !commandOnly(command, args) {
		return nil
	}
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil
	}
	done, run := l.begin()
	if !run {
		return nil
	}
	return &fused{l: l, done: done, mark: "paperclip-login-" + hex.EncodeToString(b[:]), log: log, pod: pod}
}

// argv returns the command and args of the fused exec for the host's
// command and env (names only: the values travel on stdin, as always).
func (f *fused) argv(command string, env map[string]string) (string, []string) {
	var aside, restore strings.Builder
	aside.WriteString(`export ` + fusedAside + `cwd="$PWD"`)
	restore.WriteString(`cd -- "$` + fusedAside + `cwd" || exit 1; unset ` + fusedAside + `cwd`)
	names := make([]string, 0, len(env))
	for k := range env {
		if carried(k) && k != "PATH" && !strings.HasPrefix(k, fusedAside) {
			names = append(names, k)
		}
	}
	sort.Strings(names)
	for _, k := range names {
		aside.WriteString(" " + fusedAside + "host_" + k + `="$` + k + `"`)
		restore.WriteString("; export " + k + `="$` + fusedAside + "host_" + k + `"; unset ` + fusedAside + "host_" + k)
	}
	login := `{ printf "\000%s\000" "$1"; umask; printf "\000"; cat /proc/self/environ && printf "\000%s\000" "$1"; } >&4 || exit 1; ` +
		`exec 1>&3 2>&4 0<&5 3>&- 4>&- 5<&-; ` + restore.String() + `; exec "$0" -c "$2"`
	script := `{ printf '\000%s\000' "$1"; umask; printf '\000'; cat /proc/self/environ && printf '\000%s\000' "$1"; } >&2 || exit 1; ` +
		aside.String() + `; exec "$0" -lc ` + podexec.ShellQuote(login) + ` "$0" "$1" "$2" 3>&1 4>&2 5<&0 </dev/null >/dev/null 2>&1`
	return podexec.Shell, []string{"-c", script, podexec.Shell, f.mark, command}
}

// frameEnd is where the frames end in stderr (past the closing marker),
// -1 while they are not complete.
func (f *fused) frameEnd(stderr []byte) int {
	m := []byte("\x00" + f.mark + "\x00")
	at := 0
	for i := 0; i < 4; i++ {
		j := bytes.Index(stderr[at:], m)
		if j < 0 {
			return -1
		}
		at += j + len(m)
	}
	return at
}

// output wraps the command's OnOutput: stderr is held back until the
// frames are complete, and only what follows them is passed on.
func (f *fused) output(send func(stream string, chunk []byte)) func(string, []byte) {
	var held []byte
	passing := false
	return func(stream string, chunk []byte) {
		if stream != "stderr" || passing {
			send(stream, chunk)
			return
		}
		held = append(held, chunk...)
		if end := f.frameEnd(held); end >= 0 {
			passing = true
			if rest := held[end:]; len(rest) > 0 {
				send(stream, rest)
			}
			held = nil
		}
	}
}

// end reads the capture from the fused exec's result and records it for
// the lease, and returns the result with the frames stripped from stderr.
// ran is false when the command did not run (the capture failed before
// it and the exec did not time out): the caller runs it again without
// the fused script. ctx is the exec's; err its error.
func (f *fused) end(ctx context.Context, res *podexec.Result, err error) (out *podexec.Result, rerun bool) {
	configuredLimit(err)
	var diff *loginDiff
	var cerr error
	end := -1
	if err == nil {
		end = f.frameEnd(res.Stderr)
	}
	switch {
	case err != nil:
		cerr = fmt.Errorf("running the command with the login shell: %w", err)
	case end < 0:
		cerr = errors.New("the login shell's output is not in the expected frames (the image needs cat and /proc; does the profile exit or exec another program?)")
	default:
		diff, cerr = parseLoginCapture(res.Stderr[:end-len(f.mark)-2], f.mark)
	}
	if cerr != nil && err == nil {
		// The capture's errors hold neither its output nor values.
		f.log.Info("reading the login environment of a lease's pod failed; its commands run in a login shell",
			"namespace", f.pod.Namespace, "pod", f.pod.Pod, "error", cerr)
	}
	f.l.mu.Lock()
	switch {
	case cerr == nil:
		f.l.diff = diff
	case err != nil || ctx.Err() != nil || res.TimedOut:
		f.l.done = nil // not the pod's answer: the next command captures again
	}
	close(f.done)
	f.l.mu.Unlock()
	if err == nil && end < 0 && res.TimedOut {
		// The command did not run and is not run again: stderr holds only
		// the frames so far, the environment (the run's secrets among it),
		// never the command's output.
		cut := *res
		cut.Stderr = []byte(fmt.Sprintf("[paperclip-k8s] the login shell of pod %s/%s (the image's /etc/profile, ~/.profile) did not finish within the command's timeout; the command was not run. Fix the profile or raise the command's timeout.\n", f.pod.Namespace, f.pod.Pod))
		return &cut, false
	}
	if err != nil || end < 0 {
		return res, err == nil && !res.TimedOut
	}
	stripped := *res
	stripped.Stderr = res.Stderr[end:]
	return &stripped, false
}

// configuredLimit makes a fused exec's exceeded stderr cap name the cap
// the caller configured (execMaxOutputBytes) rather than the raised one
// the exec ran with: the frames' allowance is the worker's, not a limit
// the operator set or can look up. err is the exec's own error (podexec
// returns a new *OutputLimitError per Run), so it is corrected in place,
// and the caller's message (built from err) is right as it stands.
func configuredLimit(err error) {
	var limit *podexec.OutputLimitError
	if errors.As(err, &limit) && limit.Stream == "stderr" && limit.Limit > fusedFrameAllowance {
		limit.Limit -= fusedFrameAllowance
	}
}
