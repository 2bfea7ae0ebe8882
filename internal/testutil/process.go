package testutil

import (
	"context"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Alive reports whether pid exists and is not a zombie (Linux: it reads
// /proc/<pid>/stat).
func Alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] != 'Z'
}

// WaitGone waits until pid has ended, failing the test when ctx ends
// first. A process's end sends no event a test can watch, so this polls
// /proc; the bound is ctx's, not a guess at how long it takes.
func WaitGone(tb testing.TB, ctx context.Context, pid int) {
	tb.Helper()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for Alive(pid) {
		select {
		case <-tick.C:
		case <-ctx.Done():
			tb.Fatalf("process %d is still alive: %v", pid, ctx.Err())
		}
	}
}
