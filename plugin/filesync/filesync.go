// Package filesync is the native file sync (environmentSyncIn /
// environmentSyncOut) of exec-mode backends: it checks the host's
// operations (NewPlan), builds the upload archive from host files, checks
// and extracts the archives a pod sends, and runs the POSIX sh scripts
// (scripts/*.sh) in the pod through an exec the caller provides (Syncer).
// The plugin's hooks find the lease's pod and wire the exec.
//
// The worker runs on the host's machine and reads and writes the host's
// paths directly; the pod side runs over pods/exec, one exec per syncIn
// operation (the archive streamed on stdin, see script.go) plus one per
// post-upload command, and for syncOut one exec for an operation's files
// plus one per directory (the archive streamed from stdout into a host
// temp file, checked entry by entry, then extracted). The image needs sh,
// tar and the usual utilities (see script.go).
//
// Semantics, as the host's own base64 fallback has them: a file mapping
// replaces the target file (atomically, by rename); a syncIn directory
// mapping replaces the target directory as a whole; a syncOut directory
// mapping is extracted into the host directory (merged over what it
// holds). Sandbox paths must be absolute and at or below the remote root
// (lease.metadata.remoteCwd, else the config's workspacePath); the host
// paths are trusted, but a pod's archive can never write outside them.
package filesync

import (
	"errors"
	"fmt"
	"log/slog"
	"path"
	"path/filepath"
	"strings"

	"github.com/paperclip-k8s/paperclip-k8s/plugin/rpc"
)

// Operation is the host's PluginSyncOperation.
type Operation struct {
	OperationID        string              `json:"operationId"`
	Files              []FileMapping       `json:"files"`
	PostUploadCommands []PostUploadCommand `json:"postUploadCommands,omitempty"`
}

// FileMapping is the host's PluginSyncFileMapping. Access and WritablePath
// are accepted and not used.
type FileMapping struct {
	SourcePath     string   `json:"sourcePath"`
	TargetPath     string   `json:"targetPath"`
	Kind           string   `json:"kind"`
	Mode           *int64   `json:"mode,omitempty"`
	Exclude        []string `json:"exclude,omitempty"`
	FollowSymlinks bool     `json:"followSymlinks,omitempty"`
	Access         string   `json:"access,omitempty"`
	WritablePath   string   `json:"writablePath,omitempty"`
}

// PostUploadCommand is the host's PluginPostUploadCommand.
type PostUploadCommand struct {
	Command   string `json:"command"`
	Cwd       string `json:"cwd,omitempty"`
	TimeoutMs int64  `json:"timeoutMs,omitempty"`
}

// Result is the host's PluginEnvironmentSyncResult.
type Result struct {
	Operations []OperationResult `json:"operations"`
}

// OperationResult is one operation's entry in a Result.
type OperationResult struct {
	OperationID      string `json:"operationId"`
	FilesTransferred int64  `json:"filesTransferred"`
	BytesTransferred int64  `json:"bytesTransferred"`
}

// Direction says which way a sync goes.
type Direction int

const (
	// In copies host files into the pod (environmentSyncIn).
	In Direction = iota
	// Out copies pod files to the host (environmentSyncOut).
	Out
)

// Method is the hook's name; it starts every error.
func (d Direction) Method() string {
	if d == In {
		return rpc.MethodEnvironmentSyncIn
	}
	return rpc.MethodEnvironmentSyncOut
}

// Plan is a sync's operations, checked.
type Plan struct {
	dir   Direction
	root  string
	ops   []Operation
	plans [][]plannedMapping
}

// plannedMapping is a checked mapping: the sandbox side as a path relative
// to the remote root ("." for the root itself).
type plannedMapping struct {
	FileMapping
	index int
	rel   string
}

// NewPlan checks every operation before anything moves: kinds, host paths
// (absolute), sandbox paths (absolute, no "..", at or below root, no NUL
// or newline) and post-upload working directories. root is the remote
// root: absolute and clean, without NUL or newline.
func NewPlan(dir Direction, root string, ops []Operation) (*Plan, error) {
	method := dir.Method()
	plans := make([][]plannedMapping, len(ops))
	seen := map[string]bool{}
	for i, op := range ops {
		if op.OperationID == "" {
			return nil, fmt.Errorf("%s: operation %d has no operationId", method, i)
		}
		if seen[op.OperationID] {
			return nil, fmt.Errorf("%s: operationId %q is used twice", method, op.OperationID)
		}
		seen[op.OperationID] = true
		for j, f := range op.Files {
			what := fmt.Sprintf("%s: operation %q: files[%d]", method, op.OperationID, j)
			if f.Kind != "file" && f.Kind != "directory" {
				return nil, fmt.Errorf("%s: kind %q is neither \"file\" nor \"directory\"", what, f.Kind)
			}
			hostPath, remote := f.SourcePath, f.TargetPath
			if dir == Out {
				hostPath, remote = f.TargetPath, f.SourcePath
			}
			if !filepath.IsAbs(hostPath) || strings.IndexByte(hostPath, 0) >= 0 {
				return nil, fmt.Errorf("%s: the host path %q is not an absolute path", what, hostPath)
			}
			rel, err := confineRemote(root, remote)
			if err != nil {
				return nil, fmt.Errorf("%s: the sandbox path %q %v", what, remote, err)
			}
			if rel == "." && f.Kind == "file" {
				return nil, fmt.Errorf("%s: the sandbox path %q is the remote root itself, which is not a file", what, remote)
			}
			if f.Mode != nil && (*f.Mode < 0 || *f.Mode > 0o7777) {
				return nil, fmt.Errorf("%s: mode %d is not a permission mode (0 to 07777)", what, *f.Mode)
			}
			for _, e := range f.Exclude {
				if strings.IndexByte(e, 0) >= 0 {
					return nil, fmt.Errorf("%s: an exclude pattern has a NUL byte", what)
				}
			}
			plans[i] = append(plans[i], plannedMapping{FileMapping: f, index: j, rel: rel})
		}
		for j, c := range op.PostUploadCommands {
			what := fmt.Sprintf("%s: operation %q: postUploadCommands[%d]", method, op.OperationID, j)
			if strings.TrimSpace(c.Command) == "" || strings.IndexByte(c.Command, 0) >= 0 {
				return nil, fmt.Errorf("%s: the command is empty or has a NUL byte", what)
			}
			if c.Cwd != "" {
				if _, err := confineRemote(root, c.Cwd); err != nil {
					return nil, fmt.Errorf("%s: the cwd %q %v", what, c.Cwd, err)
				}
			}
		}
	}
	return &Plan{dir: dir, root: root, ops: ops, plans: plans}, nil
}

// confineRemote returns p relative to root ("." for root itself) if p is
// absolute, has no "..", NUL or newline, and is root or below it.
func confineRemote(root, p string) (string, error) {
	switch {
	case !path.IsAbs(p):
		return "", errors.New("is not an absolute path")
	case strings.ContainsAny(p, "\x00\n"):
		return "", errors.New("has a NUL byte or a newline")
	case hasDotDot(p):
		return "", errors.New("has a \"..\" component")
	}
	c := path.Clean(p)
	if c == root {
		return ".", nil
	}
	prefix := root + "/"
	if root == "/" {
		prefix = "/"
	}
	if !strings.HasPrefix(c, prefix) {
		return "", fmt.Errorf("is outside the remote root %s", root)
	}
	return strings.TrimPrefix(c, prefix), nil
}

func hasDotDot(p string) bool {
	for _, s := range strings.Split(p, "/") {
		if s == ".." {
			return true
		}
	}
	return false
}

// LogShape logs what the host asked for, without paths or commands.
func LogShape(log *slog.Logger, dir Direction, leaseID string, ops []Operation) {
	for _, op := range ops {
		kinds := map[string]int{}
		var modes, excludes, follows int
		for _, f := range op.Files {
			kinds[f.Kind]++
			if f.Mode != nil {
				modes++
			}
			excludes += len(f.Exclude)
			if f.FollowSymlinks {
				follows++
			}
		}
		cwds := 0
		for _, c := range op.PostUploadCommands {
			if c.Cwd != "" {
				cwds++
			}
		}
		log.Info("file sync operation", "method", dir.Method(), "lease", leaseID, "operationId", op.OperationID,
			"files", kinds["file"], "directories", kinds["directory"], "withMode", modes, "excludePatterns", excludes,
			"followSymlinks", follows, "postUploadCommands", len(op.PostUploadCommands), "commandsWithCwd", cwds)
	}
}
