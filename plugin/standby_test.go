package plugin

import (
	"context"
	"testing"

	"github.com/matryer/is"
)

// A login environment read ahead (a standby's) serves the lease's first
// command sent alone; any other command first drops it, and the next
// command sent alone captures again.
func TestLoginEnvReadAhead(t *testing.T) {
	is := is.New(t)
	ctx := context.Background()
	captures := 0
	capture := func(context.Context) (*loginDiff, error) {
		captures++
		return &loginDiff{set: map[string]string{"FOO": "profile"}}, nil
	}

	var used loginEnv
	used.readAhead(ctx, capture)
	used.use()       // the first command, sent alone
	used.dropAhead() // a later command with args: the capture is the lease's now
	is.Equal(used.get(ctx, capture).set["FOO"], "profile")
	is.Equal(captures, 1)

	var dropped loginEnv
	dropped.readAhead(ctx, capture)
	dropped.dropAhead() // a command with args ran first
	done, run := dropped.begin()
	is.True(run) // the next command sent alone captures (fused) again
	close(done)
	is.Equal(captures, 2)
}
