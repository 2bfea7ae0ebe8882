package filesync

import (
	"io/fs"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/matryer/is"
)

// TestScriptConstants: every shared name a script reads is one the header
// sets (the scripts run with set -u, and shellcheck does not flag unset
// upper-case names), every exit code is used by some script, and every
// script includes common.sh once.
func TestScriptConstants(t *testing.T) {
	is := is.New(t)
	header := scriptHeader()
	defined := map[string]bool{}
	for _, l := range strings.Split(strings.TrimSpace(header), "\n") {
		name, _, ok := strings.Cut(l, "=")
		is.True(ok)
		defined[name] = true
	}
	for _, c := range exitCodes {
		is.True(strings.Contains(header, c.shell+"="+strconv.Itoa(c.code)+"\n"))
		is.True(exitReasons[c.code] == c.reason)
		is.True(isScriptCode(c.code))
	}
	is.True(!isScriptCode(exitNoScript))
	ref := regexp.MustCompile(`\$\{?(_PC_[A-Z_]+)`)
	used := map[string]bool{}
	names, err := fs.Glob(scriptFiles, "scripts/*.sh")
	is.NoErr(err)
	is.Equal(len(names), 5)
	for _, n := range names {
		b, err := scriptFiles.ReadFile(n)
		is.NoErr(err)
		for _, m := range ref.FindAllStringSubmatch(string(b), -1) {
			if !defined[m[1]] {
				t.Errorf("%s reads %s, which the header does not set", n, m[1])
			}
			used[m[1]] = true
		}
	}
	for name := range defined {
		if !used[name] {
			t.Errorf("the header sets %s, which no script reads", name)
		}
	}
	for name, s := range map[string]string{"sync-in": syncInScript, "sync-out-files": syncOutFilesScript, "sync-out-dir": syncOutDirScript, "post-upload": postUploadScript} {
		is.True(strings.HasPrefix(s, header))
		is.True(!strings.Contains(s, includeLine))       // replaced by common.sh
		is.True(strings.Contains(s, "\n_pc_fail() {\n")) // common.sh's functions
		is.True(!strings.Contains(s, "# shellcheck"))    // comments are not sent
		is.True(!strings.Contains(s, "\n\n"))            // nor blank lines
		t.Logf("%s: %d bytes", name, len(s))
	}
}
