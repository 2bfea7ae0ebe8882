package podexec

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/matryer/is"
)

// trickyValues are round-tripped through real shells.
var trickyValues = []string{
	"",
	"plain",
	"it's",
	"'",
	"''",
	`'\''`,
	`"double" quotes`,
	"new\nline",
	"trailing newline\n",
	"\n",
	"$HOME ${HOME} $(echo pwned) $$",
	"`echo pwned`",
	`back\slash \\ \n \'`,
	"héllo ✓ 日本語 🚀",
	"\xff\xfe invalid utf-8",
	"a b  c\ttab",
	"* ? [a-z] ~",
	"-n",
	"--",
	"; exit 3; #",
	"&& false || true",
	"!event",
	"%s %d",
	strings.Repeat("long'$`\n", 2000),
}

func TestShellQuoteTable(t *testing.T) {
	is := is.New(t)
	cases := []struct{ in, want string }{
		{"", `''`},
		{"abc", `'abc'`},
		{"it's", `'it'\''s'`},
		{"'", `''\'''`},
		{"a\nb", "'a\nb'"},
		{"$x`y`", "'$x`y`'"},
	}
	for _, c := range cases {
		is.Equal(ShellQuote(c.in), c.want)
	}
}

// TestShellQuoteRoundTripsThroughSh: `printf %s <quoted>` prints exactly the
// value for every tricky value.
func TestShellQuoteRoundTripsThroughSh(t *testing.T) {
	for _, v := range trickyValues {
		out, err := exec.Command("/bin/sh", "-c", "printf '%s' "+ShellQuote(v)).Output()
		if err != nil {
			t.Fatalf("value %q: %v", v, err)
		}
		if string(out) != v {
			t.Fatalf("round trip: got %q want %q", out, v)
		}
	}
}

func TestBuildCommandShapes(t *testing.T) {
	is := is.New(t)
	cases := []struct {
		name    string
		command string
		args    []string
		env     map[string]string
		cwd     string
		want    []string
		skipped []string
		stdin   string
	}{
		{name: "command alone", command: "echo hi", want: []string{"/bin/sh", "-lc", "echo hi"}},
		{name: "argv", command: "sh", args: []string{"-c", "echo hi"}, want: []string{"sh", "-c", "echo hi"}},
		{name: "empty arg kept", command: "printf", args: []string{""}, want: []string{"printf", ""}},
		{
			name: "env only", command: "sh", args: []string{"-c", "x"},
			env:   map[string]string{"B": "2", "A": "it's"},
			want:  []string{"/bin/sh", "-c", envScript("export A='it'\\''s'\nexport B='2'\n__paperclip_env_ok=1\n") + `exec "$@"`, "sh", "sh", "-c", "x"},
			stdin: "export A='it'\\''s'\nexport B='2'\n__paperclip_env_ok=1\n",
		},
		{
			name: "cwd only", command: "pwd", cwd: "/work dir",
			want: []string{"/bin/sh", "-c", `cd -- "$1" || exit 1; shift; exec "$@"`, "sh", "/work dir", "/bin/sh", "-lc", "pwd"},
		},
		{
			name: "relative cwd", command: "pwd", cwd: "-",
			want: []string{"/bin/sh", "-c", `cd -- "$1" || exit 1; shift; exec "$@"`, "sh", "./-", "/bin/sh", "-lc", "pwd"},
		},
		{
			name: "skipped names", command: "true", args: []string{},
			env:     map[string]string{"PATH": "/host/bin", "1BAD": "x", "BAD-NAME": "x", "A=B": "x", "": "x", "UID": "0", "OK_1": "y"},
			want:    []string{"/bin/sh", "-c", envScript("export OK_1='y'\n__paperclip_env_ok=1\n") + `exec "$@"`, "sh", "/bin/sh", "-lc", "true"},
			stdin:   "export OK_1='y'\n__paperclip_env_ok=1\n",
			skipped: []string{"", "1BAD", "A=B", "BAD-NAME", "PATH", "UID"},
		},
		{
			name: "a script for this shell runs in the wrapper", command: "/bin/sh", args: []string{"-c", "x"},
			env: map[string]string{"A": "1"}, cwd: "/w",
			want: []string{"/bin/sh", "-c", envScript("export A='1'\n__paperclip_env_ok=1\n") + `cd -- "$1" || exit 1; shift; __paperclip_cmd=$1; shift; eval "unset __paperclip_cmd; $__paperclip_cmd"`,
				"/bin/sh", "/w", "x"},
			stdin: "export A='1'\n__paperclip_env_ok=1\n",
		},
		{
			name: "everything skipped, no wrapper", command: "true",
			env:     map[string]string{"PATH": "/x"},
			want:    []string{"/bin/sh", "-lc", "true"},
			skipped: []string{"PATH"},
		},
	}
	for _, c := range cases {
		cmd, err := BuildCommand(c.command, c.args, c.env, c.cwd)
		argv, skipped := cmd.Argv, cmd.Skipped
		is.NoErr(err)
		is.Equal(argv, c.want)       // argv
		is.Equal(skipped, c.skipped) // skipped names
		is.Equal(string(cmd.Preamble), c.stdin)
	}
}

// envScript is the wrapper's env reader for a preamble of n bytes.
func envScript(pre string) string {
	return fmt.Sprintf(envReader, strings.Count(pre, "\n"), "__paperclip_env_ok", "__paperclip_env_ok")
}

func TestBuildCommandErrors(t *testing.T) {
	is := is.New(t)
	_, err := BuildCommand("", nil, nil, "")
	is.True(errors.Is(err, ErrEmptyCommand))
	_, err = BuildCommand("", []string{"x"}, nil, "")
	is.True(errors.Is(err, ErrEmptyCommand))
	_, err = BuildCommand("a\x00b", nil, nil, "")
	is.True(err != nil)
	_, err = BuildCommand("sh", []string{"-c", "\x00"}, nil, "")
	is.True(err != nil)
	_, err = BuildCommand("sh", nil, nil, "/a\x00")
	is.True(err != nil)
	_, err = BuildCommand("sh", nil, map[string]string{"SECRET": "top\x00secret-value"}, "")
	is.True(err != nil)
	is.True(strings.Contains(err.Error(), "SECRET"))        // names the variable
	is.True(!strings.Contains(err.Error(), "secret-value")) // never the value
}

// envRequest is a request whose command prints each env name's value
// NUL-terminated, then the working directory.
func envRequest(env map[string]string) (command string, args []string, names []string) {
	for k := range env {
		if envNameRE.MatchString(k) && !skippedEnvNames[k] {
			names = append(names, k)
		}
	}
	sort.Strings(names)
	script := `for n in "$@"; do eval "printf '%s\\0' \"\${$n}\""; done; pwd -P`
	return "/bin/sh", append([]string{"-c", script, "sh"}, names...), names
}

func trickyEnv() map[string]string {
	env := map[string]string{"PATH": "/host/only", "NOT-VALID": "x"}
	for i, v := range trickyValues {
		env["V_"+string(rune('A'+i%26))+strings.Repeat("X", i/26)] = v
	}
	return env
}

// checkEnvOutput verifies the output of an envRequest command.
func checkEnvOutput(t *testing.T, out []byte, env map[string]string, names []string, wantDir string) {
	t.Helper()
	parts := bytes.Split(out, []byte{0})
	if len(parts) != len(names)+1 {
		t.Fatalf("got %d parts, want %d", len(parts), len(names)+1)
	}
	for i, n := range names {
		if string(parts[i]) != env[n] {
			t.Fatalf("env %s: got %q want %q", n, parts[i], env[n])
		}
	}
	if got := strings.TrimSuffix(string(parts[len(names)]), "\n"); got != wantDir {
		t.Fatalf("cwd: got %q want %q", got, wantDir)
	}
}

// TestBuildCommandRoundTripLocalShell runs the built argv with the local
// /bin/sh: every value arrives exactly, PATH is not exported, cwd applies.
func TestBuildCommandRoundTripLocalShell(t *testing.T) {
	is := is.New(t)
	base := t.TempDir()
	dirName := "dir with 'quotes' $x `y` ✓\nnewline"
	dir := filepath.Join(base, dirName)
	is.NoErr(os.MkdirAll(dir, 0o755))
	env := trickyEnv()
	command, args, names := envRequest(env)

	for _, cwd := range []string{dir, dirName} { // absolute and relative
		built, err := BuildCommand(command, args, env, cwd)
		is.NoErr(err)
		is.Equal(built.Skipped, []string{"NOT-VALID", "PATH"})
		for _, v := range env {
			if len(v) >= 4 {
				is.True(!strings.Contains(strings.Join(built.Argv, " "), v)) // values never in the argv
			}
		}
		cmd := exec.Command(built.Argv[0], built.Argv[1:]...)
		cmd.Stdin = bytes.NewReader(built.Preamble)
		cmd.Dir = base
		cmd.Env = []string{"PATH=/usr/bin:/bin"}
		out, err := cmd.Output()
		is.NoErr(err)
		checkEnvOutput(t, out, env, names, dir)
	}

	// PATH was not exported: the command sees the caller's PATH.
	built, err := BuildCommand("/bin/sh", []string{"-c", `printf %s "$PATH"`}, map[string]string{"PATH": "/host/only", "X": "1"}, "")
	is.NoErr(err)
	cmd := exec.Command(built.Argv[0], built.Argv[1:]...)
	cmd.Stdin = bytes.NewReader(built.Preamble)
	cmd.Env = []string{"PATH=/usr/bin:/bin"}
	out, err := cmd.Output()
	is.NoErr(err)
	is.Equal(string(out), "/usr/bin:/bin")

	// A missing cwd fails with exit status 1 and the shell's message.
	built, err = BuildCommand("true", nil, nil, filepath.Join(base, "missing"))
	is.NoErr(err)
	cmd = exec.Command(built.Argv[0], built.Argv[1:]...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err = cmd.Run()
	var ee *exec.ExitError
	is.True(errors.As(err, &ee))
	is.Equal(ee.ExitCode(), 1)
	is.True(stderr.Len() > 0)
}

// A script for the wrapper's own shell (/bin/sh -c script: a command sent
// alone with the login environment) runs in the wrapper, and sees what it
// would see in a shell of its own: the env, the cwd, no positional
// parameters, the caller's stdin after the preamble, its exit status.
func TestBuildCommandScriptRunsInTheWrapper(t *testing.T) {
	is := is.New(t)
	dir := t.TempDir()
	script := `read -r line; printf '%s|%s|%s|%s|%s' "$line" "$#" "$*" "$A" "$(pwd -P)"; exit 3`
	built, err := BuildCommand(Shell, []string{"-c", script}, map[string]string{"A": "it's"}, dir)
	is.NoErr(err)
	is.Equal(built.Argv[len(built.Argv)-1], script) // inlined: no second shell in the argv
	cmd := exec.Command(built.Argv[0], built.Argv[1:]...)
	cmd.Stdin = io.MultiReader(bytes.NewReader(built.Preamble), strings.NewReader("from stdin\n"))
	cmd.Env = []string{"PATH=/usr/bin:/bin"}
	out, err := cmd.Output()
	var exit *exec.ExitError
	is.True(errors.As(err, &exit))
	is.Equal(exit.ExitCode(), 3)
	real, err := filepath.EvalSymlinks(dir)
	is.NoErr(err)
	is.Equal(string(out), "from stdin|0||it's|"+real)
}

// The wrapper's env reader works the same under the shells images have as
// /bin/sh (dash, bash, BusyBox ash): every tricky value arrives exactly,
// and the caller's stdin after the preamble is left whole for the command.
func TestEnvReaderShells(t *testing.T) {
	shells := map[string][]string{"dash": {"/bin/sh"}}
	if p, err := exec.LookPath("bash"); err == nil {
		shells["bash"] = []string{p}
	}
	if p, err := exec.LookPath("busybox"); err == nil {
		shells["busybox"] = []string{p, "sh"}
	} else if os.Getenv("CI") == "true" {
		t.Fatal("CI=true and busybox is missing (hack/test.sh installs busybox-static)")
	}
	env := trickyEnv()
	command, args, names := envRequest(env)
	// The command prints the values, then what is left of stdin.
	args[1] += `; printf '\0'; cat`
	built, err := BuildCommand(command, args, env, "")
	if err != nil {
		t.Fatal(err)
	}
	rest := "the caller's stdin\nline two, no newline at the end"
	for name, sh := range shells {
		t.Run(name, func(t *testing.T) {
			is := is.New(t)
			cmd := exec.Command(sh[0], append(sh[1:], built.Argv[1:]...)...)
			cmd.Stdin = io.MultiReader(bytes.NewReader(built.Preamble), strings.NewReader(rest))
			cmd.Env = []string{"PATH=/usr/bin:/bin"}
			cmd.Dir = t.TempDir()
			out, err := cmd.Output()
			is.NoErr(err)
			i := bytes.LastIndexByte(out, 0)
			is.True(i > 0)
			is.Equal(string(out[i+1:]), rest)
			dir, err := filepath.EvalSymlinks(cmd.Dir)
			is.NoErr(err)
			checkEnvOutput(t, out[:i], env, names, dir)
		})
	}
}
