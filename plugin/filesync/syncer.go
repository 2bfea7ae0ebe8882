package filesync

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/paperclip-k8s/paperclip-k8s/podexec"
)

const (
	// maxOutputBytes bounds what one syncOut exec may write to the host.
	maxOutputBytes int64 = 8 << 30
	// maxStderr caps the stderr kept from a sync script.
	maxStderr = 1 << 20
)

// Exec runs one command in the lease's pod; the request has no namespace,
// pod or container (Exec sets them). It returns an error when the command
// did not run to an exit status or a timeout: a *podexec.OutputLimitError or
// *podexec.StdoutWriteError as Run returns them, any other error naming the
// pod (and, if the pod is gone, saying so).
type Exec func(ctx context.Context, req podexec.Request) (*podexec.Result, error)

// Syncer runs a Plan in one pod.
type Syncer struct {
	// Exec runs the scripts and the post-upload commands in the pod.
	Exec Exec
	// Deadline bounds the whole sync; DeadlineFrom says what set it (e.g.
	// "podActivityDeadlineSec 600"), for the error when it has passed.
	Deadline     time.Time
	DeadlineFrom string
	// MaxCommandOutput caps each output stream of a post-upload command
	// (as podexec.Request's MaxStdout and MaxStderr).
	MaxCommandOutput int64
	// Log gets what is worth a line (never a path or a command).
	Log *slog.Logger
}

// session is one Run.
type session struct {
	*Syncer
	dir    Direction
	method string
	root   string
}

// Run runs the plan's operations in order, stopping at the first failure
// (then the result is empty).
func (x *Syncer) Run(ctx context.Context, p *Plan) (Result, error) {
	s := &session{Syncer: x, dir: p.dir, method: p.dir.Method(), root: p.root}
	out := Result{Operations: []OperationResult{}}
	for i, op := range p.ops {
		var st transferStats
		var err error
		if p.dir == In {
			st, err = s.syncInOperation(ctx, op, p.plans[i])
		} else {
			st, err = s.syncOutOperation(ctx, op, p.plans[i])
		}
		if err != nil {
			return Result{Operations: []OperationResult{}}, err
		}
		out.Operations = append(out.Operations, OperationResult{OperationID: op.OperationID, FilesTransferred: st.files, BytesTransferred: st.bytes})
	}
	return out, nil
}

func newSyncID() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func (s *session) remaining() time.Duration {
	return time.Until(s.Deadline)
}

// run runs a script (or, for post-upload commands, the wrapper) in the pod.
func (s *session) run(ctx context.Context, script string, args []string, stdin io.Reader, stdout io.Writer, timeout time.Duration, maxOut int64) (*podexec.Result, error) {
	if r := s.remaining(); timeout <= 0 || timeout > r {
		timeout = r
	}
	if timeout <= 0 {
		return nil, fmt.Errorf("the sync ran out of time (%s)", s.DeadlineFrom)
	}
	argv, preamble := command(script, args)
	in := io.Reader(bytes.NewReader(preamble))
	if stdin != nil {
		in = io.MultiReader(in, stdin)
	}
	req := podexec.Request{
		Command: argv[0], Args: argv[1:],
		Stdin: in, Stdout: stdout, Timeout: timeout,
		MaxStdout: maxOut, MaxStderr: maxOut,
	}
	res, err := s.Exec(ctx, req)
	if err != nil {
		return res, err
	}
	if res.TimedOut {
		return res, fmt.Errorf("timed out after %s", timeout.Round(time.Millisecond))
	}
	return res, nil
}

// scriptError turns a failed sync script into an error naming the
// operation, the mapping (its sandbox and host paths) and the reason.
func (s *session) scriptError(op Operation, mappings []plannedMapping, res *podexec.Result) error {
	code := *res.ExitCode
	reason := exitReasons[code]
	if reason == "" {
		reason = "the sync script failed"
	}
	where := ""
	f := parseScriptFailure(code, res.Stderr)
	if f != nil {
		var i int
		if _, err := fmt.Sscan(f.index, &i); err == nil && i >= 0 && i < len(mappings) {
			where = " " + describeMapping(s.dir, mappings[i])
		}
	} else if isScriptCode(code) {
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

func describeMapping(dir Direction, m plannedMapping) string {
	if dir == In {
		return fmt.Sprintf("files[%d] (%s %s → sandbox %s)", m.index, m.Kind, m.SourcePath, m.TargetPath)
	}
	return fmt.Sprintf("files[%d] (%s sandbox %s → %s)", m.index, m.Kind, m.SourcePath, m.TargetPath)
}

// syncInOperation uploads one operation's mappings in one exec, then runs
// its post-upload commands in order, stopping at the first failure.
func (s *session) syncInOperation(ctx context.Context, op Operation, plan []plannedMapping) (transferStats, error) {
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
		res, err := s.run(runCtx, syncInScript, args, pr, nil, 0, maxStderr)
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
			return total, fmt.Errorf("%s: operation %q: %s: %w", s.method, op.OperationID, describeMapping(s.dir, plan[me.index]), me.err)
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
func (s *session) postUpload(ctx context.Context, op Operation, j int, c PostUploadCommand) error {
	rel := "."
	cwd := s.root
	if c.Cwd != "" {
		rel, _ = confineRemote(s.root, c.Cwd) // checked by NewPlan
		cwd = c.Cwd
	}
	what := fmt.Sprintf("%s: operation %q: postUploadCommands[%d] (cwd %s)", s.method, op.OperationID, j, cwd)
	res, err := s.run(ctx, postUploadScript, []string{s.root, rel, c.Command}, nil, nil, time.Duration(c.TimeoutMs)*time.Millisecond, s.MaxCommandOutput)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	code := *res.ExitCode
	if code == 0 {
		return nil
	}
	if f := parseScriptFailure(code, res.Stderr); f != nil {
		// The wrapper's own failure (the command did not start).
		return fmt.Errorf("%s: the working directory was refused or the command could not start: %s (exit %d): %s", what, exitReasons[code], code, f.detail)
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
func (s *session) syncOutOperation(ctx context.Context, op Operation, plan []plannedMapping) (transferStats, error) {
	var total transferStats
	if len(op.PostUploadCommands) > 0 {
		s.Log.Warn("environmentSyncOut: postUploadCommands are ignored on a download", "operationId", op.OperationID, "count", len(op.PostUploadCommands))
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
		exclude := append([]string{alwaysExcluded, stagePrefix + "*"}, m.Exclude...)
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
// (at most maxOutputBytes) and hands the file to place.
func (s *session) download(ctx context.Context, op Operation, mappings []plannedMapping, script string, args []string, place func(*os.File) (transferStats, error)) (transferStats, error) {
	where := ""
	if len(mappings) == 1 {
		where = " " + describeMapping(s.dir, mappings[0])
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
	guard := &limitWriter{w: tmp, max: maxOutputBytes}
	res, err := s.run(ctx, script, args, nil, guard, 0, maxStderr)
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
			return fmt.Errorf("%s: %w", describeMapping(Out, m), err)
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
