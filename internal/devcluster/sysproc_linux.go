//go:build linux

package devcluster

import "syscall"

// sysProcAttr puts each child in its own process group (so Stop can signal
// the whole group and a terminal's Ctrl-C does not reach it directly) and
// asks the kernel to SIGKILL it when the test binary dies, so a panic or a
// test timeout cannot leak control-plane processes.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
