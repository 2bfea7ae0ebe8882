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
	kill, present, ok := n.scanGroups(pgids, "")
	if !ok {
		return
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

// killMarked SIGKILLs the groups among pgids that have a member carrying
// this node's marker and EXECNODE_POD=key, and returns how many.
func (n *Node) killMarked(pgids map[int]struct{}, key string) int {
	if len(pgids) == 0 {
		return 0
	}
	kill, _, _ := n.scanGroups(pgids, key)
	for g := range kill {
		_ = killGroup(g)
	}
	return len(kill)
}

// scanGroups looks through /proc for members of the groups in pgids:
// present holds the groups with any member, kill those with a member whose
// environment carries this node's marker (and EXECNODE_POD=podKey unless
// podKey is empty).
func (n *Node) scanGroups(pgids map[int]struct{}, podKey string) (kill, present map[int]struct{}, ok bool) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, nil, false
	}
	needles := [][]byte{[]byte("\x00EXECNODE_INSTANCE=" + n.marker + "\x00")}
	if podKey != "" {
		needles = append(needles, []byte("\x00EXECNODE_POD="+podKey+"\x00"))
	}
	kill = map[int]struct{}{}
	present = map[int]struct{}{}
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
		if err != nil {
			continue
		}
		env = append(append([]byte{0}, env...), 0)
		match := true
		for _, nd := range needles {
			if !bytes.Contains(env, nd) {
				match = false
			}
		}
		if match {
			kill[pgid] = struct{}{}
		}
	}
	return kill, present, true
}
