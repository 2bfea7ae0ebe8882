package plugin

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/paperclip-k8s/paperclip-k8s/engine"
	pexec "github.com/paperclip-k8s/paperclip-k8s/exec"
	"github.com/paperclip-k8s/paperclip-k8s/plugin/policy"
	"github.com/paperclip-k8s/paperclip-k8s/plugin/rpc"
)

// Native file sync (environmentSyncIn / environmentSyncOut) for exec-mode
// backends. The worker runs on the host's machine and reads and writes the
// host's paths directly; the pod side runs over pods/exec, one exec per
// syncIn operation (the archive streamed on stdin, see sync_scripts.go)
// plus one per post-upload command, and for syncOut one exec for an
// operation's files plus one per directory (the archive streamed from
// stdout into a host temp file, checked entry by entry, then extracted).
// The image needs sh, tar and the usual utilities (see sync_scripts.go).
//
// Semantics, as the host's own base64 fallback has them: a file mapping
// replaces the target file (atomically, by rename); a syncIn directory
// mapping replaces the target directory as a whole; a syncOut directory
// mapping is extracted into the host directory (merged over what it
// holds). Sandbox paths must be absolute and at or below the remote root
// (lease.metadata.remoteCwd, else the config's workspacePath); the host
// paths are trusted, but a pod's archive can never write outside them.

const (
	// maxSyncOutputBytes bounds what one syncOut exec may write to the host.
	maxSyncOutputBytes int64 = 8 << 30
	// maxSyncStderr caps the stderr kept from a sync script.
	maxSyncStderr = 1 << 20
	// syncErrorPrefix starts the failure line of the scripts.
	syncErrorPrefix = "paperclip-k8s-sync:"
)

// syncExitReasons are the scripts' exit codes (sync_scripts.go).
var syncExitReasons = map[int]string{
	40:  "the image has neither realpath nor readlink",
	41:  "the remote root cannot be created or resolved",
	42:  "the path escapes the remote root (it resolves elsewhere: a symbolic link or \"..\" on the way)",
	43:  "tar failed or the archive was incomplete",
	44:  "moving the transferred entry into place failed",
	45:  "the source is missing or not a regular file",
	46:  "creating a directory failed",
	47:  "opening a directory or file failed (the sync pins them through /proc/self/fd)",
	48:  "chmod failed",
	125: "the sync script could not be read from stdin (the image needs dd)",
	126: "a command the sync needs cannot run in the image (it needs sh, tar, mkdir, mv, rm, chmod, cp, and realpath or readlink)",
	127: "a command the sync needs is missing from the image (it needs sh, tar, mkdir, mv, rm, chmod, cp, and realpath or readlink)",
}

// SyncParams are environmentSyncIn's and environmentSyncOut's params.
type SyncParams struct {
	BaseParams
	Lease      Lease           `json:"lease"`
	Operations []SyncOperation `json:"operations"`
}

// SyncOperation is the host's PluginSyncOperation.
type SyncOperation struct {
	OperationID        string              `json:"operationId"`
	Files              []SyncFileMapping   `json:"files"`
	PostUploadCommands []PostUploadCommand `json:"postUploadCommands,omitempty"`
}

// SyncFileMapping is the host's PluginSyncFileMapping. Access and
// WritablePath are accepted and not used.
type SyncFileMapping struct {
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

// SyncResult is the host's PluginEnvironmentSyncResult.
type SyncResult struct {
	Operations []SyncOperationResult `json:"operations"`
}

// SyncOperationResult is one operation's entry in a SyncResult.
type SyncOperationResult struct {
	OperationID      string `json:"operationId"`
	FilesTransferred int64  `json:"filesTransferred"`
	BytesTransferred int64  `json:"bytesTransferred"`
}

// SyncIn copies host files and directories into the lease's pod, then runs
// each operation's post-upload commands.
func (p *Provider) SyncIn(ctx context.Context, in SyncParams) (SyncResult, error) {
	return p.sync(ctx, in, rpc.MethodEnvironmentSyncIn)
}

// SyncOut copies files and directories from the lease's pod to the host.
func (p *Provider) SyncOut(ctx context.Context, in SyncParams) (SyncResult, error) {
	return p.sync(ctx, in, rpc.MethodEnvironmentSyncOut)
}

// syncer carries one sync call.
type syncer struct {
	p        *Provider
	method   string
	cl       *cluster
	ref      engine.Ref
	st       *leaseState
	root     string // the remote root as configured (clean, absolute)
	cfg      policy.Config
	deadline time.Time
	leaseID  string
}

// plannedMapping is a checked mapping: the sandbox side as a path relative
// to the remote root ("." for the root itself).
type plannedMapping struct {
	SyncFileMapping
	index int
	rel   string
}

func (p *Provider) sync(ctx context.Context, in SyncParams, method string) (SyncResult, error) {
	out := SyncResult{Operations: []SyncOperationResult{}}
	if in.Lease.ProviderLeaseID == nil || *in.Lease.ProviderLeaseID == "" {
		return out, rpc.Errorf(rpc.CodeInvalidParams, "%s: the lease has no providerLeaseId", method)
	}
	id := *in.Lease.ProviderLeaseID
	if err := requireIDs(in.BaseParams); err != nil {
		return out, err
	}
	cfg, err := p.parseConfig(in.Config)
	if err != nil {
		return out, err
	}
	m := metadataFrom(in.Lease.Metadata)
	ref, err := p.leaseTarget(cfg, in.CompanyID, id, m)
	if err != nil {
		return out, err
	}
	if ref.Spec.Backend.Mode != engine.ModeExec {
		return out, rpc.Errorf(rpc.CodeInvalidParams, "%s is not supported for the %q backend: it runs the workload to completion and has no exec channel into a pod (its leases say nativeFileSyncUnsupported, so the host uses its own transfer)", method, ref.Spec.Name)
	}
	root := strings.TrimSpace(m.RemoteCwd)
	if root == "" {
		root = cfg.WorkspacePath
	}
	if !path.IsAbs(root) || strings.ContainsAny(root, "\x00\n") {
		return out, rpc.Errorf(rpc.CodeInvalidParams, "%s: the remote root %q (lease remoteCwd, else workspacePath) is not an absolute path without NUL or newline", method, root)
	}
	root = path.Clean(root)
	p.logSyncShape(method, id, in.Operations)
	plans, err := planSync(method, root, in.Operations)
	if err != nil {
		return out, rpc.Errorf(rpc.CodeInvalidParams, "%v", err)
	}

	cl, err := p.cluster(cfg)
	if err != nil {
		return out, err
	}
	timeout := time.Duration(cfg.PodActivityDeadlineSec) * time.Second
	s := &syncer{p: p, method: method, cl: cl, ref: ref, root: root, cfg: cfg, deadline: time.Now().Add(timeout), leaseID: id}
	waitCtx, cancel := context.WithDeadline(ctx, s.deadline)
	s.st, err = p.readyPod(waitCtx, cl, ref, in.BaseParams, m)
	cancel()
	if err != nil {
		return out, fmt.Errorf("%s: %w", method, err)
	}
	start := time.Now()
	for i, op := range in.Operations {
		var st transferStats
		if method == rpc.MethodEnvironmentSyncIn {
			st, err = s.syncInOperation(ctx, op, plans[i])
		} else {
			st, err = s.syncOutOperation(ctx, op, plans[i])
		}
		if err != nil {
			return SyncResult{Operations: []SyncOperationResult{}}, err
		}
		out.Operations = append(out.Operations, SyncOperationResult{OperationID: op.OperationID, FilesTransferred: st.files, BytesTransferred: st.bytes})
	}
	p.Log.Info("file sync done", "method", method, "lease", id, "operations", len(out.Operations), "took", time.Since(start).Round(time.Millisecond))
	return out, nil
}

// logSyncShape logs what the host asked for, without paths or commands.
func (p *Provider) logSyncShape(method, id string, ops []SyncOperation) {
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
		p.Log.Info("file sync operation", "method", method, "lease", id, "operationId", op.OperationID,
			"files", kinds["file"], "directories", kinds["directory"], "withMode", modes, "excludePatterns", excludes,
			"followSymlinks", follows, "postUploadCommands", len(op.PostUploadCommands), "commandsWithCwd", cwds)
	}
}

// planSync checks every operation before anything moves: kinds, host paths
// (absolute), sandbox paths (absolute, no "..", at or below root, no NUL
// or newline) and post-upload working directories.
func planSync(method, root string, ops []SyncOperation) ([][]plannedMapping, error) {
	in := method == rpc.MethodEnvironmentSyncIn
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
			if !in {
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
			plans[i] = append(plans[i], plannedMapping{SyncFileMapping: f, index: j, rel: rel})
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
	return plans, nil
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

func newSyncID() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func (s *syncer) remaining() time.Duration {
	return time.Until(s.deadline)
}

// scriptFailure is a sync script's own failure (one of syncExitReasons).
type scriptFailure struct {
	code   int
	index  string // the mapping's index in the script's args, or "-"
	detail string
}

// parseScriptFailure finds the script's failure line in stderr; what the
// commands printed before it (e.g. mv's or tar's own message) is appended
// to the detail.
func parseScriptFailure(code int, stderr []byte) *scriptFailure {
	lines := strings.Split(strings.TrimRight(string(stderr), "\n"), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		l, ok := strings.CutPrefix(lines[i], syncErrorPrefix)
		if !ok {
			continue
		}
		c, rest, _ := strings.Cut(l, ":")
		idx, detail, _ := strings.Cut(rest, ": ")
		if c != fmt.Sprint(code) {
			return nil
		}
		if before := tailString([]byte(strings.Join(lines[:i], "\n")), 1000); before != "" {
			detail += " (" + before + ")"
		}
		return &scriptFailure{code: code, index: idx, detail: detail}
	}
	return nil
}

func tailString(b []byte, n int) string {
	s := strings.TrimSpace(string(b))
	if len(s) > n {
		s = "…" + s[len(s)-n:]
	}
	return s
}

// syncScriptEnd ends the text syncCommand sends ahead of stdin.
const syncScriptEnd = "# paperclip-k8s-sync: end of script"

// syncCommand returns the argv and the stdin preamble that run script with
// args in the pod. Only a short bootstrap travels in the argv (the exec
// URL: API server audit logs, proxies with short URL limits); the script
// and its arguments (paths, exclude patterns, post-upload commands, each
// quoted with ShellQuote) go first on stdin, read with dd bs=1 (which
// never reads past them: the rest of stdin is the script's) and run with
// eval in the same shell. A preamble cut short is refused (exit 125).
func syncCommand(script string, args []string) (argv []string, preamble []byte) {
	var b strings.Builder
	b.WriteString("set --")
	for _, a := range args {
		b.WriteString(" ")
		b.WriteString(pexec.ShellQuote(a))
	}
	b.WriteString("\n")
	b.WriteString(script)
	b.WriteString("\n")
	b.WriteString(syncScriptEnd)
	boot := fmt.Sprintf(`_pc_boot=$(dd bs=1 count=%d 2>/dev/null) || _pc_boot=
case $_pc_boot in *'%s') ;; *) echo "%s125:-: could not read the sync script from stdin (the image needs dd)" >&2; exit 125 ;; esac
eval "$_pc_boot"`, b.Len(), syncScriptEnd, syncErrorPrefix)
	return []string{pexec.Shell, "-c", boot, "paperclip-k8s-sync"}, []byte(b.String())
}

// run runs a script (or, for post-upload commands, the wrapper) in the pod.
func (s *syncer) run(ctx context.Context, script string, args []string, stdin io.Reader, stdout io.Writer, timeout time.Duration, maxOut int64) (*pexec.Result, error) {
	if r := s.remaining(); timeout <= 0 || timeout > r {
		timeout = r
	}
	if timeout <= 0 {
		return nil, fmt.Errorf("the sync ran out of time (podActivityDeadlineSec %d)", s.cfg.PodActivityDeadlineSec)
	}
	argv, preamble := syncCommand(script, args)
	in := io.Reader(bytes.NewReader(preamble))
	if stdin != nil {
		in = io.MultiReader(in, stdin)
	}
	req := pexec.Request{
		Namespace: s.ref.Namespace, Pod: s.st.podName, Container: s.ref.Spec.Pods.Container,
		Command: argv[0], Args: argv[1:],
		Stdin: in, Stdout: stdout, Timeout: timeout,
		MaxStdout: maxOut, MaxStderr: maxOut,
	}
	res, err := s.cl.exec.Run(ctx, req)
	if err != nil {
		var limit *pexec.OutputLimitError
		var werr *pexec.StdoutWriteError
		if errors.As(err, &limit) || errors.As(err, &werr) {
			return res, err
		}
		checkCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if _, gerr := s.p.checkPod(checkCtx, s.cl, s.ref, s.st, true); gerr != nil {
			s.p.forget(s.ref)
			return res, gerr
		}
		return res, fmt.Errorf("exec in pod %s/%s: %w", s.ref.Namespace, s.st.podName, err)
	}
	if res.TimedOut {
		return res, fmt.Errorf("timed out after %s", timeout.Round(time.Millisecond))
	}
	return res, nil
}

// scriptError turns a failed sync script into an error naming the
// operation, the mapping (its sandbox and host paths) and the reason.
func (s *syncer) scriptError(op SyncOperation, mappings []plannedMapping, res *pexec.Result) error {
	code := *res.ExitCode
	reason := syncExitReasons[code]
	if reason == "" {
		reason = "the sync script failed"
	}
	where := ""
	f := parseScriptFailure(code, res.Stderr)
	if f != nil {
		var i int
		if _, err := fmt.Sscan(f.index, &i); err == nil && i >= 0 && i < len(mappings) {
			where = " " + describeMapping(s.method, mappings[i])
		}
	} else if code >= 40 && code <= 48 {
		reason = "the sync script failed"
	}
	detail := tailString(res.Stderr, 2000)
	if f != nil {
		detail = f.detail
	}
	msg := fmt.Sprintf("%s: operation %q:%s: %s (exit %d)", s.method, op.OperationID, where, reason, code)
	if detail != "" {
		msg += ": " + detail
	}
	return errors.New(msg)
}

func describeMapping(method string, m plannedMapping) string {
	if method == rpc.MethodEnvironmentSyncIn {
		return fmt.Sprintf("files[%d] (%s %s → sandbox %s)", m.index, m.Kind, m.SourcePath, m.TargetPath)
	}
	return fmt.Sprintf("files[%d] (%s sandbox %s → %s)", m.index, m.Kind, m.SourcePath, m.TargetPath)
}

// syncInOperation uploads one operation's mappings in one exec, then runs
// its post-upload commands in order, stopping at the first failure.
func (s *syncer) syncInOperation(ctx context.Context, op SyncOperation, plan []plannedMapping) (transferStats, error) {
	var total transferStats
	if len(plan) > 0 {
		items := make([]uploadItem, len(plan))
		args := []string{s.root, newSyncID()}
		for i, m := range plan {
			items[i] = uploadItem{kind: m.Kind, source: m.SourcePath, mode: m.Mode, exclude: m.Exclude, followSymlinks: m.FollowSymlinks}
			mode := "-"
			if m.Mode != nil {
				mode = fmt.Sprintf("%04o", *m.Mode&0o7777)
			}
			args = append(args, m.Kind, m.rel, mode)
		}
		pr, pw := io.Pipe()
		type built struct {
			stats []transferStats
			err   error
		}
		done := make(chan built, 1)
		runCtx, cancel := context.WithCancel(ctx)
		go func() {
			stats, err := writeUpload(pw, items)
			if err != nil {
				// Tear the exec down before the pod can see the end of
				// stdin (the end entry is missing anyway).
				cancel()
			}
			pw.CloseWithError(err)
			done <- built{stats, err}
		}()
		res, err := s.run(runCtx, syncInScript, args, pr, nil, 0, maxSyncStderr)
		cancel()
		pr.CloseWithError(errUploadStopped)
		b := <-done
		// A writer error of its own (not the pipe closed after the exec) is
		// the cause, whatever the exec says: it tore the exec down. Exit 0
		// means the pod read the end entry: the upload is complete even if
		// the writer was still flushing the archive's last blocks.
		hostErr := b.err != nil && !errors.Is(b.err, errUploadStopped)
		var me *mappingError
		switch {
		case hostErr && errors.As(b.err, &me):
			return total, fmt.Errorf("%s: operation %q: %s: %w", s.method, op.OperationID, describeMapping(s.method, plan[me.index]), me.err)
		case hostErr:
			return total, fmt.Errorf("%s: operation %q: building the upload: %w", s.method, op.OperationID, b.err)
		case err != nil:
			return total, fmt.Errorf("%s: operation %q: %w", s.method, op.OperationID, err)
		case *res.ExitCode != 0:
			return total, s.scriptError(op, plan, res)
		}
		for _, st := range b.stats {
			total.add(st)
		}
	}
	for j, c := range op.PostUploadCommands {
		if err := s.postUpload(ctx, op, j, c); err != nil {
			return total, err
		}
	}
	return total, nil
}

// postUpload runs one post-upload command verbatim with /bin/sh -c, in its
// cwd (default: the remote root), with its own timeout (default: what is
// left of the sync's).
func (s *syncer) postUpload(ctx context.Context, op SyncOperation, j int, c PostUploadCommand) error {
	rel := "."
	cwd := s.root
	if c.Cwd != "" {
		rel, _ = confineRemote(s.root, c.Cwd) // checked by planSync
		cwd = c.Cwd
	}
	what := fmt.Sprintf("%s: operation %q: postUploadCommands[%d] (cwd %s)", s.method, op.OperationID, j, cwd)
	res, err := s.run(ctx, postUploadScript, []string{s.root, rel, c.Command}, nil, nil, time.Duration(c.TimeoutMs)*time.Millisecond, s.cfg.ExecMaxOutputBytes)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	code := *res.ExitCode
	if code == 0 {
		return nil
	}
	if f := parseScriptFailure(code, res.Stderr); f != nil {
		// The wrapper's own failure (the command did not start).
		return fmt.Errorf("%s: the working directory was refused or the command could not start: %s (exit %d): %s", what, syncExitReasons[code], code, f.detail)
	}
	msg := fmt.Sprintf("%s: the command exited with code %d; the remaining commands were not run", what, code)
	if t := tailString(res.Stderr, 4000); t != "" {
		msg += "; stderr: " + t
	} else if t := tailString(res.Stdout, 4000); t != "" {
		msg += "; stdout: " + t
	}
	return errors.New(msg)
}

// syncOutOperation downloads one operation's files (one exec for all of
// them) and directories (one exec each).
func (s *syncer) syncOutOperation(ctx context.Context, op SyncOperation, plan []plannedMapping) (transferStats, error) {
	var total transferStats
	if len(op.PostUploadCommands) > 0 {
		s.p.Log.Warn("environmentSyncOut: postUploadCommands are ignored on a download", "operationId", op.OperationID, "count", len(op.PostUploadCommands))
	}
	var files []plannedMapping
	for _, m := range plan {
		if m.Kind == "file" {
			files = append(files, m)
		}
	}
	if len(files) > 0 {
		args := []string{s.root, newSyncID()}
		for _, m := range files {
			args = append(args, m.rel)
		}
		st, err := s.download(ctx, op, files, syncOutFilesScript, args, func(tmp *os.File) (transferStats, error) {
			return placeDownloadedFiles(tmp, files)
		})
		if err != nil {
			return total, err
		}
		total.add(st)
	}
	for _, m := range plan {
		if m.Kind != "directory" {
			continue
		}
		follow := "0"
		if m.FollowSymlinks {
			follow = "1"
		}
		exclude := append([]string{alwaysExcluded, ".paperclip-upload-*"}, m.Exclude...)
		args := []string{s.root, m.rel, follow}
		for _, e := range exclude {
			args = append(args, "--exclude="+e)
		}
		st, err := s.download(ctx, op, []plannedMapping{m}, syncOutDirScript, args, func(tmp *os.File) (transferStats, error) {
			if err := scanArchive(tmp, exclude, nil); err != nil {
				return transferStats{}, err
			}
			if _, err := tmp.Seek(0, io.SeekStart); err != nil {
				return transferStats{}, err
			}
			st, err := extractArchive(tmp, exclude, m.TargetPath)
			if err == nil && m.Mode != nil {
				err = os.Chmod(m.TargetPath, os.FileMode(*m.Mode&0o777))
			}
			return st, err
		})
		if err != nil {
			return total, err
		}
		total.add(st)
	}
	return total, nil
}

// download runs a syncOut script, streams its stdout into a host temp file
// (at most maxSyncOutputBytes) and hands the file to place.
func (s *syncer) download(ctx context.Context, op SyncOperation, mappings []plannedMapping, script string, args []string, place func(*os.File) (transferStats, error)) (transferStats, error) {
	where := ""
	if len(mappings) == 1 {
		where = " " + describeMapping(s.method, mappings[0])
	}
	fail := func(err error) (transferStats, error) {
		return transferStats{}, fmt.Errorf("%s: operation %q:%s: %w", s.method, op.OperationID, where, err)
	}
	tmp, err := os.CreateTemp("", "paperclip-k8s-sync-out-*.tar")
	if err != nil {
		return fail(err)
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	guard := &limitWriter{w: tmp, max: maxSyncOutputBytes}
	res, err := s.run(ctx, script, args, nil, guard, 0, maxSyncStderr)
	if err != nil {
		return fail(err)
	}
	if *res.ExitCode != 0 {
		return transferStats{}, s.scriptError(op, mappings, res)
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return fail(err)
	}
	st, err := place(tmp)
	if err != nil {
		return fail(err)
	}
	return st, nil
}

// limitWriter fails once more than max bytes were written.
type limitWriter struct {
	w   io.Writer
	n   int64
	max int64
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if l.n+int64(len(p)) > l.max {
		return 0, fmt.Errorf("the download exceeds the %d-byte limit of one sync", l.max)
	}
	n, err := l.w.Write(p)
	l.n += int64(n)
	return n, err
}

// placeDownloadedFiles checks the archive of a syncOut files exec (entries
// "0".."n-1", regular files only) and renames each file onto its host
// target: written next to it, given its mode (the mapping's, else the
// pod's permission bits), then renamed, so a target is never truncated.
func placeDownloadedFiles(tmp *os.File, files []plannedMapping) (transferStats, error) {
	var st transferStats
	want := map[string]int{}
	for i := range files {
		want[fmt.Sprint(i)] = i
	}
	check := func(e archiveEntry) (int, error) {
		i, ok := want[e.name]
		if !ok || e.kind != tar.TypeReg {
			return 0, &unsafeArchiveError{entry: e.hdr.Name, reason: "is not one of the requested files"}
		}
		return i, nil
	}
	if err := scanArchive(tmp, nil, func(e archiveEntry, _ io.Reader) error { _, err := check(e); return err }); err != nil {
		return st, err
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return st, err
	}
	got := map[int]bool{}
	err := scanArchive(tmp, nil, func(e archiveEntry, body io.Reader) error {
		i, err := check(e)
		if err != nil {
			return err
		}
		m := files[i]
		mode := os.FileMode(e.hdr.Mode) & os.ModePerm
		if m.Mode != nil {
			mode = os.FileMode(*m.Mode & 0o777)
		}
		dir := filepath.Dir(m.TargetPath)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		f, err := os.CreateTemp(dir, "."+filepath.Base(m.TargetPath)+".paperclip-download-*")
		if err != nil {
			return err
		}
		n, err := io.Copy(f, body)
		if err == nil {
			err = f.Chmod(mode)
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = os.Rename(f.Name(), m.TargetPath)
		}
		if err != nil {
			os.Remove(f.Name())
			return fmt.Errorf("%s: %w", describeMapping(rpc.MethodEnvironmentSyncOut, m), err)
		}
		got[i] = true
		st.files++
		st.bytes += n
		return nil
	})
	if err != nil {
		return st, err
	}
	if len(got) != len(files) {
		return st, errors.New("the archive from the pod lacks some of the requested files")
	}
	return st, nil
}

// errUploadStopped ends an upload whose exec has returned.
var errUploadStopped = errors.New("the upload was stopped (the pod side ended)")
