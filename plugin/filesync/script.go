package filesync

import (
	"embed"
	"fmt"
	"strings"

	"github.com/paperclip-k8s/paperclip-k8s/podexec"
)

// The pod side of the sync: POSIX sh scripts (scripts/*.sh, checked by
// shellcheck in CI), sent with their arguments ("$1"...) on stdin ahead of
// the data and run by a short bootstrap in the exec's argv (command). They
// need, in the image: sh, dd, tar, mkdir, mv, rm, chmod, cp, realpath or
// readlink -f, and /proc/self/fd (GNU coreutils/tar and BusyBox both do);
// tail only to show tar's last words when it fails.
//
// Paths are never spliced into the scripts' code: they are positional
// parameters (single-quoted words of a `set --` line). The host passes the
// remote root (as configured) and, for each mapping, its path RELATIVE to
// that root ("." is the root itself), lexically checked on the host (no
// "..", no absolute escape). The scripts resolve the root once (realpath)
// and then require every directory they use below it to resolve to exactly
// its own path: no symbolic link anywhere between the root and the entry (a
// link inside the workspace is refused too, not only one leading outside).
// Each such directory is opened and pinned as a file descriptor, re-checked
// through /proc/self/fd/N, and used only through that pin, so a directory
// swapped for a link after the check cannot redirect a write.
//
// Failures print one line "paperclip-k8s-sync:<code>:<mapping index|->: <detail>"
// on stderr and exit with <code>, one of the exit codes below. The scripts
// read the codes (and the other names both sides share) from a header this
// file writes ahead of them (scriptHeader), so each is defined here only.

// The scripts' own exit codes.
const (
	exitNoResolver = 40 // neither realpath nor readlink
	exitRoot       = 41 // the remote root is unusable
	exitEscape     = 42 // a path resolves outside the root, or through a link
	exitTar        = 43 // tar failed or the archive was incomplete
	exitMove       = 44 // moving the transferred entry into place failed
	exitSource     = 45 // the source is missing or not a regular file
	exitMkdir      = 46 // creating a directory failed
	exitOpen       = 47 // opening (pinning) a directory or file failed
	exitChmod      = 48 // chmod failed
	// exitNoScript is the bootstrap's: the script could not be read from stdin.
	exitNoScript = 125
)

// exitCodes are the codes the scripts read (as the shell variable) and what
// each one means.
var exitCodes = []struct {
	code   int
	shell  string
	reason string
}{
	{exitNoResolver, "_PC_E_NO_RESOLVER", "the image has neither realpath nor readlink"},
	{exitRoot, "_PC_E_ROOT", "the remote root cannot be created or resolved"},
	{exitEscape, "_PC_E_ESCAPE", "the path escapes the remote root (it resolves elsewhere: a symbolic link or \"..\" on the way)"},
	{exitTar, "_PC_E_TAR", "tar failed or the archive was incomplete"},
	{exitMove, "_PC_E_MOVE", "moving the transferred entry into place failed"},
	{exitSource, "_PC_E_SOURCE", "the source is missing or not a regular file"},
	{exitMkdir, "_PC_E_MKDIR", "creating a directory failed"},
	{exitOpen, "_PC_E_OPEN", "opening a directory or file failed (the sync pins them through /proc/self/fd)"},
	{exitChmod, "_PC_E_CHMOD", "chmod failed"},
}

// exitReasons says what a failed script's exit code means: the scripts'
// own codes, the bootstrap's, and the shell's for a command it cannot run.
var exitReasons = func() map[int]string {
	m := map[int]string{
		exitNoScript: "the sync script could not be read from stdin (the image needs dd)",
		126:          "a command the sync needs cannot run in the image (it needs sh, tar, mkdir, mv, rm, chmod, cp, and realpath or readlink)",
		127:          "a command the sync needs is missing from the image (it needs sh, tar, mkdir, mv, rm, chmod, cp, and realpath or readlink)",
	}
	for _, c := range exitCodes {
		m[c.code] = c.reason
	}
	return m
}()

// isScriptCode reports whether code is one of the scripts' own exit codes.
func isScriptCode(code int) bool {
	for _, c := range exitCodes {
		if c.code == code {
			return true
		}
	}
	return false
}

const (
	// failPrefix starts the failure line of the scripts.
	failPrefix = "paperclip-k8s-sync:"
	// endEntry is the last entry of an upload archive; sync-in.sh refuses
	// an archive without it (a stream cut short).
	endEntry = "paperclip-sync-end"
	// stagePrefix names the scripts' staging directories in the remote root.
	stagePrefix = ".paperclip-upload-"
	// scriptEnd ends the text command sends ahead of stdin.
	scriptEnd = "# paperclip-k8s-sync: end of script"
	// includeLine is where each script includes common.sh.
	includeLine = ". ./common.sh"
)

//go:embed scripts/*.sh
var scriptFiles embed.FS

// The scripts as they are sent: the header, common.sh, then the script.
var (
	syncInScript       = loadScript("sync-in.sh")
	syncOutFilesScript = loadScript("sync-out-files.sh")
	syncOutDirScript   = loadScript("sync-out-dir.sh")
	postUploadScript   = loadScript("post-upload.sh")
)

// scriptHeader sets the shell variables the scripts read the shared
// constants from.
func scriptHeader() string {
	var b strings.Builder
	for _, c := range exitCodes {
		fmt.Fprintf(&b, "%s=%d\n", c.shell, c.code)
	}
	for _, v := range [][2]string{{"_PC_FAIL_PREFIX", failPrefix}, {"_PC_END_ENTRY", endEntry}, {"_PC_STAGE_PREFIX", stagePrefix}} {
		fmt.Fprintf(&b, "%s=%s\n", v[0], podexec.ShellQuote(v[1]))
	}
	return b.String()
}

// loadScript returns the header, then name with its include line replaced by
// common.sh. The files are part of the binary: a malformed one is a
// programming error.
func loadScript(name string) string {
	read := func(n string) string {
		b, err := scriptFiles.ReadFile("scripts/" + n)
		if err != nil {
			panic(err)
		}
		return string(b)
	}
	body := read(name)
	if strings.Count(body, "\n"+includeLine+"\n") != 1 {
		panic(fmt.Sprintf("filesync: scripts/%s must include common.sh once, with the line %q", name, includeLine))
	}
	full := strings.Replace(body, "\n"+includeLine+"\n", "\n"+read("common.sh")+"\n", 1)
	// Comment and blank lines are dropped: the script is read with dd bs=1.
	// (No line of the scripts is inside a multi-line string.)
	var b strings.Builder
	b.WriteString(scriptHeader())
	for _, l := range strings.Split(full, "\n") {
		if t := strings.TrimSpace(l); t == "" || strings.HasPrefix(t, "#") {
			continue
		}
		b.WriteString(l)
		b.WriteString("\n")
	}
	return b.String()
}

// command returns the argv and the stdin preamble that run script with
// args in the pod. Only a short bootstrap travels in the argv (the exec
// URL: API server audit logs, proxies with short URL limits); the script
// and its arguments (paths, exclude patterns, post-upload commands, each
// quoted with ShellQuote) go first on stdin, read with dd bs=1 (which
// never reads past them: the rest of stdin is the script's) and run with
// eval in the same shell. A preamble cut short is refused (exitNoScript).
func command(script string, args []string) (argv []string, preamble []byte) {
	var b strings.Builder
	b.WriteString("set --")
	for _, a := range args {
		b.WriteString(" ")
		b.WriteString(podexec.ShellQuote(a))
	}
	b.WriteString("\n")
	b.WriteString(script)
	b.WriteString("\n")
	b.WriteString(scriptEnd)
	boot := fmt.Sprintf(`_pc_boot=$(dd bs=1 count=%d 2>/dev/null) || _pc_boot=
case $_pc_boot in *'%s') ;; *) echo "%s%d:-: could not read the sync script from stdin (the image needs dd)" >&2; exit %d ;; esac
eval "$_pc_boot"`, b.Len(), scriptEnd, failPrefix, exitNoScript, exitNoScript)
	return []string{podexec.Shell, "-c", boot, "paperclip-k8s-sync"}, []byte(b.String())
}

// scriptFailure is a sync script's own failure (one of exitCodes).
type scriptFailure struct {
	code   int
	index  string // the mapping's index in the script's args, or "-"
	detail string
}

// parseScriptFailure finds the script's failure line in stderr; what the
// commands printed before it (e.g. mv's or tar's own message) is appended
// to the detail.
func parseScriptFailure(code int, stderr []byte) *scriptFailure {
	lines := strings.Split(strings.TrimRight(string(stderr), "\n"), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		l, ok := strings.CutPrefix(lines[i], failPrefix)
		if !ok {
			continue
		}
		c, rest, _ := strings.Cut(l, ":")
		idx, detail, _ := strings.Cut(rest, ": ")
		if c != fmt.Sprint(code) {
			return nil
		}
		if before := tailString([]byte(strings.Join(lines[:i], "\n")), 1000); before != "" {
			detail += " (" + before + ")"
		}
		return &scriptFailure{code: code, index: idx, detail: detail}
	}
	return nil
}

func tailString(b []byte, n int) string {
	s := strings.TrimSpace(string(b))
	if len(s) > n {
		s = "…" + s[len(s)-n:]
	}
	return s
}
