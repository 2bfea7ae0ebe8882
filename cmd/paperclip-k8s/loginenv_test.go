package main

import (
	"fmt"
	"strings"
	"testing"

	"github.com/matryer/is"
)

// TestLoginEnvironmentOncePerLease: a command sent alone sees what a login
// shell gives it (the PATH /etc/profile and ~/.profile set, their
// variables, their umask) while the profile runs once per lease, not once
// per command; the host's env wins over the profile's; a profile changed
// during the lease is not read again (a command can source it). Through
// the binary and the exec node (the pod's HOME is its own directory).
func TestLoginEnvironmentOncePerLease(t *testing.T) {
	is := is.New(t)
	h := newHooks(t, "sandbox", nil)
	l := h.acquire(nil)

	profile := `echo run >> "$HOME/profile-runs"
echo "a banner from the profile"
export FOO='from the profile'
export HOSTWINS=profile
umask 027
export PATH="$HOME/bin:$PATH"
`
	// Commands with args run as sent: no login shell, nothing captured.
	r := h.exec(l, "sh", map[string]any{"stdin": profile, "args": []string{"-c",
		`cat > "$HOME/.profile" && mkdir -p "$HOME/bin" && printf '#!/bin/sh\necho hello\n' > "$HOME/bin/hello-login" && chmod +x "$HOME/bin/hello-login"`}})
	is.Equal(r.code(), 0)
	runs := func() string {
		r := h.exec(l, "sh", map[string]any{"args": []string{"-c", `if [ -f "$HOME/profile-runs" ]; then wc -l < "$HOME/profile-runs"; else echo 0; fi`}})
		is.Equal(r.code(), 0)
		return strings.TrimSpace(r.Stdout)
	}
	is.Equal(runs(), "0")

	// What a login shell of the pod has, for comparison.
	r = h.exec(l, "/bin/sh", map[string]any{"args": []string{"-lc", `printf '%s' "$PATH"`}})
	is.Equal(r.code(), 0)
	loginPath := r.Stdout[strings.LastIndex(r.Stdout, "\n")+1:] // after the banner
	is.True(strings.HasSuffix(strings.SplitN(loginPath, ":", 2)[0], "/bin"))
	is.Equal(runs(), "1")

	for i := 0; i < 3; i++ {
		r = h.exec(l, `printf '%s|%s|%s|%s|' "$FOO" "$HOSTWINS" "$(umask)" "$PATH"; hello-login`,
			map[string]any{"env": map[string]string{"HOSTWINS": "host", "PATH": "/the/host/path"}})
		is.Equal(r.code(), 0)
		is.Equal(r.Stdout, "from the profile|host|0027|"+loginPath+"|hello\n")
		is.Equal(r.Stderr, "")
	}
	is.Equal(runs(), "2") // the comparison's login shell, and the lease's capture

	// Changed during the lease: not read again, unless a command sources it.
	r = h.exec(l, "sh", map[string]any{"args": []string{"-c", `echo 'export FOO=changed' >> "$HOME/.profile"`}})
	is.Equal(r.code(), 0)
	r = h.exec(l, `printf '%s' "$FOO"`, nil)
	is.Equal(r.Stdout, "from the profile")
	r = h.exec(l, `. "$HOME/.profile" >/dev/null; printf '%s' "$FOO"`, nil)
	is.Equal(r.Stdout, "changed")
}

// TestLoginEnvironmentFusedOutputCap: a lease's first command sent alone
// carries the login-environment capture in its exec, whose stderr cap is
// raised for the capture's frames; a command whose own stderr goes over
// the cap is reported with the configured execMaxOutputBytes, as any later
// command is, and the frames still do not count against a command under
// the cap. Through the binary and the exec node.
func TestLoginEnvironmentFusedOutputCap(t *testing.T) {
	is := is.New(t)
	const limit = 4096
	h := newHooks(t, "sandbox", map[string]any{"execMaxOutputBytes": limit})
	want := fmt.Sprintf("exec: stderr exceeded the MaxStderr cap of %d bytes; the command was stopped (raise execMaxOutputBytes in the provider config)", limit)
	over := `head -c 1100000 /dev/zero | tr '\0' x >&2` // past the cap and the frames' allowance

	l := h.acquire(nil)
	r := h.exec(l, over, nil) // the fused first command
	is.Equal(r.code(), 1)
	is.Equal(r.Stderr, want)
	r = h.exec(l, over, nil) // a later one, with the capture applied
	is.Equal(r.code(), 1)
	is.Equal(r.Stderr, want)

	// Under the cap: the frames (the environment, twice) come on top of it.
	r = h.exec(h.acquire(nil), `head -c 4000 /dev/zero | tr '\0' y >&2`, nil)
	is.Equal(r.code(), 0)
	is.Equal(r.Stderr, strings.Repeat("y", 4000))
}
