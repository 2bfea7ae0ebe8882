package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// workerFigures are the worker process's start time and memory.
type workerFigures struct {
	runs       int
	start      []time.Duration // exec → initialize reply
	rss, hwm   []int64         // bytes, after the reply
	memUnknown bool
}

// measureWorker starts bin as a worker runs times: the time from exec to
// its initialize reply, then its resident set (VmRSS, idle after the
// handshake) and peak (VmHWM).
func measureWorker(ctx context.Context, bin string, runs int) (*workerFigures, error) {
	w := &workerFigures{runs: runs}
	for i := 0; i < runs; i++ {
		if err := w.once(ctx, bin); err != nil {
			return nil, err
		}
	}
	return w, nil
}

func (w *workerFigures) once(ctx context.Context, bin string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "worker")
	cmd.Stderr = io.Discard
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	req, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": map[string]any{
		"manifest": map[string]any{"id": "paperclip.kubernetes-sandbox-provider", "apiVersion": 1},
		"config":   map[string]any{}, "apiVersion": 1,
		"instanceInfo": map[string]any{"instanceId": "bench", "hostVersion": "bench"},
	}})
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() {
		_ = stdin.Close()
		_ = cmd.Wait()
	}()
	if _, err := stdin.Write(append(req, '\n')); err != nil {
		return fmt.Errorf("writing initialize to the worker: %w", err)
	}
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for {
		if !sc.Scan() {
			return fmt.Errorf("the worker %s closed stdout before answering initialize (%v)", bin, sc.Err())
		}
		var m struct {
			ID     json.RawMessage `json:"id"`
			Result json.RawMessage `json:"result"`
			Error  json.RawMessage `json:"error"`
		}
		if json.Unmarshal(sc.Bytes(), &m) != nil || string(m.ID) != "1" {
			continue // a notification (log)
		}
		if m.Result == nil {
			return fmt.Errorf("the worker answered initialize with an error: %.300s", m.Error)
		}
		break
	}
	w.start = append(w.start, time.Since(start))
	go func() { _, _ = io.Copy(io.Discard, stdout) }()
	rss, hwm, err := procMem(cmd.Process.Pid)
	if err != nil {
		w.memUnknown = true
		return nil
	}
	w.rss, w.hwm = append(w.rss, rss), append(w.hwm, hwm)
	return nil
}

// procMem reads VmRSS and VmHWM of pid (Linux).
func procMem(pid int) (rss, hwm int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		for key, into := range map[string]*int64{"VmRSS:": &rss, "VmHWM:": &hwm} {
			if v, ok := strings.CutPrefix(line, key); ok {
				kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
				if err != nil {
					return 0, 0, err
				}
				*into = kb << 10
			}
		}
	}
	if rss == 0 {
		return 0, 0, errors.New("no VmRSS in /proc status")
	}
	return rss, hwm, nil
}

func (w *workerFigures) print(out *strings.Builder) {
	fmt.Fprintf(out, "\n### Worker process (median of %d starts)\n\n", w.runs)
	fmt.Fprintf(out, "| start (exec → initialize reply) | idle RSS | peak RSS (VmHWM) |\n|---:|---:|---:|\n")
	mem := func(v []int64) string {
		if w.memUnknown || len(v) == 0 {
			return "?"
		}
		ds := make([]time.Duration, len(v))
		for i, x := range v {
			ds[i] = time.Duration(x)
		}
		return fmt.Sprintf("%.1f MiB", float64(Percentile(ds, 50))/(1<<20))
	}
	fmt.Fprintf(out, "| %s | %s | %s |\n", ms(Percentile(w.start, 50)), mem(w.rss), mem(w.hwm))
}
