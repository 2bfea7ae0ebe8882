package podexec

import (
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"
)

// Shell is the shell used for command-only requests and for the env/cwd
// wrapper. It must exist in the workload image.
const Shell = "/bin/sh"

// envNameRE is a POSIX shell identifier: the only names `export` accepts.
var envNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// skippedEnvNames are never exported even though they are valid identifiers:
//   - PATH: the caller's (host's) PATH does not describe the image; the
//     container keeps its own (parity with the reference plugin);
//   - names that are read-only in bash (which is /bin/sh on some images):
//     assigning them makes `export` fail and, in POSIX mode, the shell exit,
//     so the whole command would fail.
var skippedEnvNames = map[string]bool{
	"PATH":          true,
	"PPID":          true,
	"UID":           true,
	"EUID":          true,
	"SHELLOPTS":     true,
	"BASHOPTS":      true,
	"BASH_VERSINFO": true,
}

// ShellQuote returns s as a single POSIX shell word that expands to exactly s:
// s wrapped in single quotes, with each single quote written as close-quote,
// backslash-quote, open-quote:
//
//	ShellQuote("it's") == `'it'\''s'`
//	ShellQuote("")     == `''`
//
// Inside single quotes no character is special, so newlines, $, backquotes,
// backslashes, double quotes, globs and any non-ASCII or invalid UTF-8 bytes
// are kept as they are. Shell words cannot hold NUL bytes; callers must reject
// them (BuildCommand does).
func ShellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// envReader reads the preamble's lines (%d: how many) from stdin, one
// byte at a time as the shell's read does on a pipe, evals them and checks
// the marker (%s, twice).
const envReader = `__paperclip_env= __paperclip_n=%d; while [ "$__paperclip_n" -gt 0 ] && IFS= read -r __paperclip_l; do __paperclip_env="$__paperclip_env$__paperclip_l
"; __paperclip_n=$((__paperclip_n - 1)); done; [ "$__paperclip_n" = 0 ] && eval "$__paperclip_env" && [ "${%s:-}" = 1 ] || { echo "paperclip-k8s: could not read the command's environment from stdin" >&2; exit 127; }; unset __paperclip_env __paperclip_n __paperclip_l %s; `

// ErrEmptyCommand is returned when a request has no command.
var ErrEmptyCommand = errors.New("exec: empty command")

// Command is what BuildCommand makes of a request: the argv for the
// pods/exec API, and the bytes to send on stdin before the caller's stdin.
type Command struct {
	Argv []string
	// Preamble carries the environment: it is written to the command's
	// stdin ahead of the caller's stdin, read by the wrapper and never
	// reaches the command. Empty when there is no environment to pass.
	Preamble []byte
	// Skipped lists the env names that were not exported (names only).
	Skipped []string
}

// envReady is set by the last line of the preamble; the wrapper refuses to
// run the command unless it was read completely.
const envReady = "__paperclip_env_ok"

// BuildCommand turns the host's (command, args, env, cwd) into the argv sent
// to the pods/exec API and a stdin preamble.
//
//   - command alone      → ["/bin/sh", "-lc", command] (a login shell, as the
//     reference plugin does, so /etc/profile sets up the image's PATH);
//   - command and args   → [command, args...] as given;
//   - no command         → ErrEmptyCommand (args without a command too).
//
// The exec API has no env or working-directory field, so when env (after
// filtering) or cwd is non-empty the argv is wrapped:
//
//	["/bin/sh", "-c", "<read env from stdin>; cd -- \"$1\" || exit 1; shift; exec \"$@\"",
//	 "sh", <cwd>, argv...]
//
// Env values are secret and the exec request's URL (which holds the argv)
// reaches API server audit logs and /proc/<pid>/cmdline, so the values do
// not travel in the argv: the preamble, `export K='v'` lines quoted with
// ShellQuote and a last line setting a marker, goes first on stdin; the
// wrapper reads exactly its lines with the shell's own `read -r` (which,
// on a pipe, never reads past the newline, so the rest of stdin is left for
// the command; no process is started for it), evals them, and refuses to
// run the command (exit 127, with a message) if they or the marker are
// missing. A script for the wrapper's own shell (/bin/sh -c script, as a
// command sent alone with the lease's login environment is) runs in the
// wrapper itself, without a second shell.
//
// cwd and argv travel as positional parameters and are never parsed by the
// shell. env is applied before cd so that the shell's cd sets PWD/OLDPWD
// for the command even if env carries the host's PWD. A relative cwd is
// prefixed with "./" so CDPATH and the operand "-" cannot change its
// meaning; a failed cd exits 1 with the shell's message on stderr.
//
// Env names: a name that is not a POSIX identifier ([A-Za-z_][A-Za-z0-9_]*),
// PATH, and names read-only in bash (PPID, UID, EUID, SHELLOPTS, BASHOPTS,
// BASH_VERSINFO) are skipped, not rejected, because the host passes its
// whole process environment, which is not under the caller's control; the
// skipped names (never values) are returned, sorted. A value containing a NUL
// byte cannot be passed through a shell and is an error naming the variable
// (not the value). NUL in cwd, command or args is an error too.
func BuildCommand(command string, args []string, env map[string]string, cwd string) (Command, error) {
	var c Command
	if command == "" {
		return c, ErrEmptyCommand
	}
	if strings.IndexByte(command, 0) >= 0 {
		return c, errors.New("exec: command contains a NUL byte")
	}
	for i, a := range args {
		if strings.IndexByte(a, 0) >= 0 {
			return c, fmt.Errorf("exec: args[%d] contains a NUL byte", i)
		}
	}
	if strings.IndexByte(cwd, 0) >= 0 {
		return c, errors.New("exec: cwd contains a NUL byte")
	}
	var argv []string
	if len(args) == 0 {
		argv = []string{Shell, "-lc", command}
	} else {
		argv = append([]string{command}, args...)
	}

	names := make([]string, 0, len(env))
	for k, v := range env {
		if !envNameRE.MatchString(k) || skippedEnvNames[k] {
			c.Skipped = append(c.Skipped, k)
			continue
		}
		if strings.IndexByte(v, 0) >= 0 {
			return Command{}, fmt.Errorf("exec: the value of env %s contains a NUL byte", k)
		}
		names = append(names, k)
	}
	sort.Strings(names)
	sort.Strings(c.Skipped)
	if len(names) == 0 && cwd == "" {
		c.Argv = argv
		return c, nil
	}

	var script strings.Builder
	if len(names) > 0 {
		var pre strings.Builder
		for _, k := range names {
			pre.WriteString("export ")
			pre.WriteString(k)
			pre.WriteString("=")
			pre.WriteString(ShellQuote(env[k]))
			pre.WriteString("\n")
		}
		pre.WriteString(envReady + "=1\n")
		c.Preamble = []byte(pre.String())
		fmt.Fprintf(&script, envReader, strings.Count(pre.String(), "\n"), envReady, envReady)
	}
	wrapped := []string{Shell, "-c", "", "sh"}
	if cwd != "" {
		script.WriteString(`cd -- "$1" || exit 1; shift; `)
		if !strings.HasPrefix(cwd, "/") {
			cwd = "./" + cwd
		}
		wrapped = append(wrapped, cwd)
	}
	if len(argv) == 3 && argv[0] == Shell && argv[1] == "-c" {
		// A script for this same shell runs in the wrapper itself: one
		// shell's start less on every command with an env or a cwd. It
		// sees what `/bin/sh -c script` shows it: $0 is the shell's path,
		// no positional parameters, none of the wrapper's variables.
		script.WriteString(`__paperclip_cmd=$1; shift; eval "unset __paperclip_cmd; $__paperclip_cmd"`)
		wrapped[2], wrapped[3] = script.String(), Shell
		c.Argv = append(wrapped, argv[2])
		return c, nil
	}
	script.WriteString(`exec "$@"`)
	wrapped[2] = script.String()
	c.Argv = append(wrapped, argv...)
	return c, nil
}
