package podexec

import (
	"bytes"
	"os/exec"
	"strings"
	"testing"

	"github.com/matryer/is"
)

// A script inlined in the wrapper sees what `/bin/sh -c script` shows it,
// under every shell an image may have as /bin/sh: $0 is the shell's path,
// no positional parameters, and none of the wrapper's own variables.
func TestInlinedScriptSeesWhatShDashCShows(t *testing.T) {
	script := `printf '%s|%s|%s' "$0" "$#" "${__paperclip_cmd-unset}${__paperclip_env-}${__paperclip_n-}${__paperclip_l-}"`
	built, err := BuildCommand(Shell, []string{"-c", script}, map[string]string{"A": "1"}, "/")
	if err != nil {
		t.Fatal(err)
	}
	for _, sh := range [][]string{{"dash"}, {"bash"}, {"busybox", "sh"}} {
		t.Run(sh[0], func(t *testing.T) {
			is := is.New(t)
			p, err := exec.LookPath(sh[0])
			is.NoErr(err)
			cmd := exec.Command(p, append(sh[1:], built.Argv[1:]...)...)
			cmd.Stdin = strings.NewReader(string(built.Preamble))
			var out bytes.Buffer
			cmd.Stdout = &out
			is.NoErr(cmd.Run())
			is.Equal(out.String(), Shell+"|0|unset")
		})
	}
}
