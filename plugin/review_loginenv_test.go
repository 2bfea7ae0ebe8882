package plugin

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/matryer/is"

	"github.com/paperclip-k8s/paperclip-k8s/podexec"
)

// A fused exec that times out while the profile runs returns no frame: the
// plain shell's frame is the whole environment (the host's env and the run
// Secret's data), which must not reach the run's stderr.
func TestLoginEnvFusedTimeoutKeepsTheFramesOut(t *testing.T) {
	is := is.New(t)
	r := loginShells(t)["sh"]
	home := loginHome(t)
	r.env = append(r.env, "HOME="+home)
	// The profile ends the login shell before its frame, as a profile
	// still running at the exec's timeout leaves it.
	is.NoErr(os.WriteFile(filepath.Join(home, ".profile"), []byte("exit 0\n"), 0o644))
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	var l loginEnv
	script := `echo ran`
	fu := l.fuse(log, podexec.Request{Namespace: "t", Pod: "p"}, script, nil)
	is.True(fu != nil)
	env := map[string]string{"RUN_SECRET": "s3cret-run-value"}
	command, args := fu.argv(script, env)
	res, err := r.Run(context.Background(), podexec.Request{Command: command, Args: args, Env: env})
	is.NoErr(err)
	is.True(strings.Contains(string(res.Stderr), "s3cret-run-value")) // the frame holds it
	res.TimedOut = true
	out, rerun := fu.end(context.Background(), res, nil)
	is.True(!rerun)
	is.True(out.TimedOut)
	is.True(!strings.Contains(string(out.Stderr), "s3cret-run-value"))
	is.True(!strings.Contains(string(out.Stderr), fu.mark))
	is.True(strings.Contains(string(out.Stderr), "pod t/p"))
}
