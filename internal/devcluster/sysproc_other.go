//go:build !linux

package devcluster

import "syscall"

// sysProcAttr: outside Linux there is no Pdeathsig; children still get their
// own process group where the platform supports it.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
