package execnode

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Container logs.
//
// The node has no containers, so "what the pod's main process printed" is
// whatever a test wrote with WriteLog; it is kept in
// <Root>/.execnode-logs/<namespace>/<pod>/<container>.log (a namespace can
// never start with '.', so this cannot collide with a work directory).
//
// GET /containerLogs/{namespace}/{pod}/{container} answers 200 with the bytes
// written so far (empty if nothing was written). Query parameters:
//   - tailLines=N: only the last N lines;
//   - limitBytes=N: at most N bytes in total;
//   - follow=true: after the current content, keep streaming bytes appended
//     later (polled every 50ms) until EndLog is called for that container
//     (the analogue of the container exiting), the client goes away, or the
//     node closes;
//   - previous=true: 400 "previous terminated container not found" (there
//     is never a previous instance);
//   - timestamps, sinceSeconds, sinceTime: accepted and ignored (no
//     timestamps are recorded).

func (n *Node) logPath(ns, pod, container string) string {
	return filepath.Join(n.Root(), ".execnode-logs", ns, pod, container+".log")
}

func logKey(ns, pod, container string) string { return ns + "/" + pod + "/" + container }

// WriteLog appends data to the log of the given container, as if the pod's
// main process had printed it. It creates the log if needed and reopens a log
// ended with EndLog. It panics on invalid names (see WorkDir).
func (n *Node) WriteLog(namespace, pod, container string, data []byte) error {
	if !validName(namespace) || !validName(pod) || !validName(container) {
		panic(fmt.Sprintf("execnode: invalid namespace/pod/container name %q/%q/%q", namespace, pod, container))
	}
	p := n.logPath(namespace, pod, container)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.endedLogs, logKey(namespace, pod, container))
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

// EndLog marks the container's log as complete: requests with follow=true
// return once they have sent everything written so far.
func (n *Node) EndLog(namespace, pod, container string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.endedLogs[logKey(namespace, pod, container)] = true
}

func (n *Node) logEnded(ns, pod, container string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.endedLogs[logKey(ns, pod, container)]
}

func (n *Node) handleLogs(w http.ResponseWriter, r *http.Request) {
	parts := strings.Split(strings.TrimPrefix(r.URL.Path, "/containerLogs/"), "/")
	if len(parts) != 3 || !validName(parts[0]) || !validName(parts[1]) || !validName(parts[2]) {
		http.Error(w, "execnode: want /containerLogs/{namespace}/{pod}/{container}", http.StatusNotFound)
		return
	}
	ns, pod, container := parts[0], parts[1], parts[2]
	q := r.URL.Query()
	if b, _ := strconv.ParseBool(q.Get("previous")); b {
		http.Error(w, fmt.Sprintf("previous terminated container %q in pod %q not found", container, pod), http.StatusBadRequest)
		return
	}
	follow, _ := strconv.ParseBool(q.Get("follow"))
	limit := int64(-1)
	if v := q.Get("limitBytes"); v != "" {
		l, err := strconv.ParseInt(v, 10, 64)
		if err != nil || l < 1 {
			http.Error(w, "execnode: invalid limitBytes", http.StatusBadRequest)
			return
		}
		limit = l
	}
	tail := int64(-1)
	if v := q.Get("tailLines"); v != "" {
		t, err := strconv.ParseInt(v, 10, 64)
		if err != nil || t < 0 {
			http.Error(w, "execnode: invalid tailLines", http.StatusBadRequest)
			return
		}
		tail = t
	}
	n.logf("logs %s/%s/%s follow=%v", ns, pod, container, follow)

	p := n.logPath(ns, pod, container)
	data, err := os.ReadFile(p)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	offset := int64(len(data))
	if tail >= 0 {
		data = tailLines(data, tail)
	}
	w.Header().Set("Content-Type", "text/plain")
	lw := &limitedWriter{w: w, left: limit}
	if _, err := lw.Write(data); err != nil || !follow {
		return
	}
	fl, _ := w.(http.Flusher)
	if fl != nil {
		fl.Flush()
	}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		ended := n.logEnded(ns, pod, container)
		more, err := readFrom(p, offset)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return
		}
		if len(more) > 0 {
			offset += int64(len(more))
			if _, err := lw.Write(more); err != nil {
				return
			}
			if fl != nil {
				fl.Flush()
			}
		}
		if ended {
			return
		}
		select {
		case <-r.Context().Done():
			return
		case <-n.closeCh:
			return
		case <-tick.C:
		}
	}
}

func readFrom(path string, offset int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return nil, err
	}
	return io.ReadAll(f)
}

// tailLines returns the last n lines of b (a final line without '\n' counts).
func tailLines(b []byte, n int64) []byte {
	if n == 0 {
		return nil
	}
	end := len(b)
	if end > 0 && b[end-1] == '\n' {
		end--
	}
	for i := end; ; {
		j := bytes.LastIndexByte(b[:i], '\n')
		if j < 0 {
			return b
		}
		if n--; n == 0 {
			return b[j+1:]
		}
		i = j
	}
}

// limitedWriter writes at most left bytes (left < 0: unlimited) and then
// reports io.EOF so the caller stops.
type limitedWriter struct {
	w    io.Writer
	left int64
}

func (l *limitedWriter) Write(p []byte) (int, error) {
	if l.left < 0 {
		return l.w.Write(p)
	}
	if l.left == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > l.left {
		p = p[:l.left]
	}
	k, err := l.w.Write(p)
	l.left -= int64(k)
	if err == nil && l.left == 0 {
		err = io.EOF
	}
	return k, err
}
