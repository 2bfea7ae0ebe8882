//go:build !linux

package execnode

import (
	"errors"
	"io"
	"os/exec"

	"k8s.io/cri-streaming/pkg/streaming/remotecommand"
)

func startTTY(*exec.Cmd, io.Reader, io.Writer, <-chan remotecommand.TerminalSize) (func() error, error) {
	return nil, errors.New("execnode: tty is supported on Linux only")
}
