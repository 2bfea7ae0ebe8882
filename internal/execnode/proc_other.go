//go:build unix && !linux

package execnode

import "syscall"

func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}

// killLeftovers kills the process groups this node started. Without /proc the
// EXECNODE_INSTANCE marker cannot be checked, so a recorded group id is killed
// only while its leader has not been reaped by someone else; best effort.
func (n *Node) killLeftovers() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for g := range n.pgids {
		_ = killGroup(g)
		delete(n.pgids, g)
	}
}

// killMarked kills the given groups (best effort, as killLeftovers) and
// returns how many it signalled.
func (n *Node) killMarked(pgids map[int]struct{}, _ string) int {
	for g := range pgids {
		_ = killGroup(g)
	}
	return len(pgids)
}
