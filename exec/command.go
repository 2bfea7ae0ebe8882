package exec

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

// ErrEmptyCommand is returned when a request has no command.
var ErrEmptyCommand = errors.New("exec: empty command")

// BuildCommand turns the host's (command, args, env, cwd) into the argv sent
// to the pods/exec API.
//
//   - command alone      → ["/bin/sh", "-lc", command] (a login shell, as the
//     reference plugin does, so /etc/profile sets up the image's PATH);
//   - command and args   → [command, args...] as given;
//   - no command         → ErrEmptyCommand (args without a command too).
//
// The exec API has no env or working-directory field, so when env (after
// filtering) or cwd is non-empty the argv is wrapped:
//
//	["/bin/sh", "-c", "export K1='v1' K2='v2'; cd -- \"$1\" || exit 1; shift; exec \"$@\"",
//	 "sh", <cwd>, argv...]
//
// (the cd/shift part only when cwd is set). Values are quoted with
// ShellQuote, names are sorted, cwd and argv travel as positional parameters
// and are never parsed by the shell. env is applied before cd so that the
// shell's cd sets PWD/OLDPWD for the command even if env carries the host's
// PWD. A relative cwd is prefixed with "./" so CDPATH and the operand "-"
// cannot change its meaning; a failed cd exits 1 with the shell's message on
// stderr.
//
// Env names: a name that is not a POSIX identifier ([A-Za-z_][A-Za-z0-9_]*),
// PATH, and names read-only in bash (PPID, UID, EUID, SHELLOPTS, BASHOPTS,
// BASH_VERSINFO) are skipped, not rejected, because the host passes its
// whole process environment, which is not under the caller's control; the
// skipped names (never values) are returned, sorted. A value containing a NUL
// byte cannot be passed through argv and is an error naming the variable (not
// the value). NUL in cwd, command or args is an error too.
func BuildCommand(command string, args []string, env map[string]string, cwd string) (argv, skipped []string, err error) {
	if command == "" {
		return nil, nil, ErrEmptyCommand
	}
	if strings.IndexByte(command, 0) >= 0 {
		return nil, nil, errors.New("exec: command contains a NUL byte")
	}
	for i, a := range args {
		if strings.IndexByte(a, 0) >= 0 {
			return nil, nil, fmt.Errorf("exec: args[%d] contains a NUL byte", i)
		}
	}
	if strings.IndexByte(cwd, 0) >= 0 {
		return nil, nil, errors.New("exec: cwd contains a NUL byte")
	}
	if len(args) == 0 {
		argv = []string{Shell, "-lc", command}
	} else {
		argv = append([]string{command}, args...)
	}

	names := make([]string, 0, len(env))
	for k, v := range env {
		if !envNameRE.MatchString(k) || skippedEnvNames[k] {
			skipped = append(skipped, k)
			continue
		}
		if strings.IndexByte(v, 0) >= 0 {
			return nil, nil, fmt.Errorf("exec: the value of env %s contains a NUL byte", k)
		}
		names = append(names, k)
	}
	sort.Strings(names)
	sort.Strings(skipped)
	if len(names) == 0 && cwd == "" {
		return argv, skipped, nil
	}

	var script strings.Builder
	if len(names) > 0 {
		script.WriteString("export")
		for _, k := range names {
			script.WriteString(" ")
			script.WriteString(k)
			script.WriteString("=")
			script.WriteString(ShellQuote(env[k]))
		}
		script.WriteString("; ")
	}
	wrapped := []string{Shell, "-c", "", "sh"}
	if cwd != "" {
		script.WriteString(`cd -- "$1" || exit 1; shift; `)
		if !strings.HasPrefix(cwd, "/") {
			cwd = "./" + cwd
		}
		wrapped = append(wrapped, cwd)
	}
	script.WriteString(`exec "$@"`)
	wrapped[2] = script.String()
	return append(wrapped, argv...), skipped, nil
}
