//go:build linux

package execnode

import (
	"bytes"
	"os"
	"strconv"
	"syscall"
)

// sysProcAttr gives each command its own process group (so a torn-down stream
// can kill it and its children) and SIGKILLs the direct child if the test
// process dies.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// killLeftovers SIGKILLs every process group this node started that still has
// a member carrying this node's EXECNODE_INSTANCE marker. Checking the marker
// (instead of killing every recorded group id) rules out hitting an unrelated
// group whose id was reused after ours died out.
func (n *Node) killLeftovers() {
	n.mu.Lock()
	pgids := make(map[int]struct{}, len(n.pgids))
	for g := range n.pgids {
		pgids[g] = struct{}{}
	}
	n.mu.Unlock()
	if len(pgids) == 0 {
		return
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return
	}
	needle := []byte("EXECNODE_INSTANCE=" + n.marker + "\x00")
	kill := map[int]struct{}{}
	present := map[int]struct{}{}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		pgid, err := syscall.Getpgid(pid)
		if err != nil {
			continue
		}
		if _, ours := pgids[pgid]; !ours {
			continue
		}
		present[pgid] = struct{}{}
		if _, done := kill[pgid]; done {
			continue
		}
		env, err := os.ReadFile("/proc/" + e.Name() + "/environ")
		if err != nil || !bytes.Contains(append(env, 0), needle) {
			continue
		}
		kill[pgid] = struct{}{}
	}
	for g := range kill {
		_ = killGroup(g)
	}
	// Forget only groups with no member left: a member caught in the middle
	// of an exec (its environ briefly unreadable) is found by a later pass.
	n.mu.Lock()
	for g := range pgids {
		if _, alive := present[g]; !alive {
			delete(n.pgids, g)
		}
	}
	n.mu.Unlock()
}
