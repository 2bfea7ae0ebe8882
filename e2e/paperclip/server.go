package paperclip

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Options configure Start.
type Options struct {
	// Dir is the install dir returned by Install. Empty: Start calls Install.
	Dir string
	// Port is the loopback HTTP port. 0: a free port is picked.
	Port int
	// Env holds extra "KEY=VALUE" entries for the server process. They are
	// appended last, so they override the harness defaults. The server's env
	// is built from scratch (only PATH is inherited); plugin workers get a
	// scrubbed subset of it (see the package doc).
	Env []string
	// Root is the directory for the instance: data/, home/, tmp/ and
	// server.log. Empty: a new temp dir, removed by Cleanup. As root it must be
	// traversable by the postgres user (every ancestor o+x).
	Root string
	// StartTimeout bounds the wait for /api/health to report "ok".
	// 0: 3 minutes (a cold start takes ~7–20 s; much more under load).
	StartTimeout time.Duration
	// StopGrace is how long Stop waits after SIGTERM before SIGKILL. 0: 15 s.
	StopGrace time.Duration
}

// Server is a running paperclip-server (onboard --yes, embedded Postgres,
// local_trusted, loopback). The embedded *Client talks to it.
type Server struct {
	*Client

	Dir     string // install dir
	Root    string // instance root (data/, home/, tmp/, server.log)
	DataDir string // --data-dir (PAPERCLIP_HOME)
	LogPath string // combined stdout+stderr of the server: onboard, doctor, pino log, [plugin stderr]
	Port    int
	PID     int // the node process running paperclipai; leader of its process group

	// StartDuration is the time from exec to /api/health "ok".
	StartDuration time.Duration

	ownRoot  bool
	grace    time.Duration
	cmd      *exec.Cmd
	logFile  *os.File
	exited   chan struct{} // closed when cmd.Wait returns
	waitErr  error
	stopOnce sync.Once
	stopErr  error
	mu       sync.Mutex
	seen     map[int]procInfo // every descendant ever observed
}

// Start launches `paperclipai onboard --yes --no-install-service --data-dir
// <Root>/data` on a loopback port and waits until GET /api/health reports
// status "ok". On error nothing is left running.
func Start(ctx context.Context, opts Options) (*Server, error) {
	if opts.Dir == "" {
		dir, err := Install()
		if err != nil {
			return nil, err
		}
		opts.Dir = dir
	}
	if err := checkInstall(opts.Dir); err != nil {
		return nil, err
	}
	s := &Server{Dir: opts.Dir, grace: opts.StopGrace, exited: make(chan struct{}), seen: map[int]procInfo{}}
	if s.grace <= 0 {
		s.grace = 15 * time.Second
	}
	if opts.Root == "" {
		root, err := os.MkdirTemp("", "paperclip-e2e-")
		if err != nil {
			return nil, err
		}
		opts.Root, s.ownRoot = root, true
	}
	s.Root = opts.Root
	s.DataDir = filepath.Join(s.Root, "data")
	s.LogPath = filepath.Join(s.Root, "server.log")
	home, tmp := filepath.Join(s.Root, "home"), filepath.Join(s.Root, "tmp")
	dbDir := filepath.Join(s.DataDir, "instances", "default", "db")
	fail := func(err error) (*Server, error) {
		_ = s.Stop()
		s.Cleanup()
		return nil, err
	}
	for _, d := range []string{s.Root, dbDir, home, tmp} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fail(err)
		}
	}
	// MkdirTemp makes 0700 dirs; the postgres user must traverse the root and
	// read the password file initdb gets in TMPDIR.
	for _, d := range []string{s.Root, s.DataDir, tmp} {
		if err := os.Chmod(d, 0o755); err != nil {
			return fail(err)
		}
	}
	if os.Geteuid() == 0 {
		if err := preparePostgresAsRoot(opts.Dir, dbDir); err != nil {
			return fail(err)
		}
	}
	s.Port = opts.Port
	if s.Port == 0 {
		p, err := freePort()
		if err != nil {
			return fail(err)
		}
		s.Port = p
	}
	s.Client = NewClient("http://127.0.0.1:" + strconv.Itoa(s.Port))

	logFile, err := os.OpenFile(s.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fail(err)
	}
	s.logFile = logFile
	node := filepath.Join(NodeBin(opts.Dir), "node")
	cmd := exec.Command(node, cliScript(opts.Dir), "onboard", "--yes", "--no-install-service", "--data-dir", s.DataDir)
	cmd.Dir = s.Root // plugin workers inherit the server's cwd
	cmd.Env = serverEnv(opts.Dir, home, tmp, s.Port, opts.Env)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	begin := time.Now()
	if err := cmd.Start(); err != nil {
		return fail(fmt.Errorf("start paperclipai: %w", err))
	}
	s.cmd, s.PID = cmd, cmd.Process.Pid
	go func() {
		s.waitErr = cmd.Wait()
		close(s.exited)
	}()

	timeout := opts.StartTimeout
	if timeout <= 0 {
		timeout = 3 * time.Minute
	}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := s.waitHealthy(wctx); err != nil {
		return fail(fmt.Errorf("paperclip server on port %d: %w\n--- last lines of the server log ---\n%s", s.Port, err, s.LogTail(40)))
	}
	s.StartDuration = time.Since(begin)
	return s, nil
}

func (s *Server) waitHealthy(ctx context.Context) error {
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	last := "no answer"
	for {
		s.track()
		s.followListenerPort()
		actx, cancel := context.WithTimeout(ctx, 3*time.Second)
		h, err := s.Health(actx)
		cancel()
		switch {
		case err == nil && h.Status == "ok":
			return nil
		case err == nil:
			last = "health status " + strconv.Quote(h.Status)
		default:
			last = err.Error()
		}
		select {
		case <-s.exited:
			return fmt.Errorf("server exited early (%v); last health check: %s", s.waitErr, last)
		case <-ctx.Done():
			return fmt.Errorf("%w; last health check: %s", ctx.Err(), last)
		case <-tick.C:
		}
	}
}

var listenerRE = regexp.MustCompile(`Server listener bound on 127\.0\.0\.1:(\d+)`)

// followListenerPort switches to the port the server really bound: when the
// requested port is taken (a race after freePort), it silently takes the
// next free one ("Requested port is busy; using next free port").
func (s *Server) followListenerPort() {
	b, err := os.ReadFile(s.LogPath)
	if err != nil {
		return
	}
	m := listenerRE.FindSubmatch([]byte(stripANSI(string(b))))
	if m == nil {
		return
	}
	if p, _ := strconv.Atoi(string(m[1])); p != 0 && p != s.Port {
		s.Port = p
		s.Client.BaseURL = "http://127.0.0.1:" + strconv.Itoa(p)
	}
}

// serverEnv builds the server's environment from scratch: nothing of the test
// process leaks in except PATH (so a PAPERCLIP_* or DATABASE_URL of the
// caller cannot redirect the instance).
func serverEnv(dir, home, tmp string, port int, extra []string) []string {
	path := NodeBin(dir)
	if p := os.Getenv("PATH"); p != "" {
		path += string(os.PathListSeparator) + p
	} else {
		path += ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	}
	env := []string{
		"PATH=" + path,
		"HOME=" + home, // npm plugin installs go to $HOME/.paperclip/plugins
		"TMPDIR=" + tmp,
		"PORT=" + strconv.Itoa(port),
		"HOST=127.0.0.1",
		"PAPERCLIP_TELEMETRY_DISABLED=1",
		"DO_NOT_TRACK=1",
		"PAPERCLIP_NO_BROWSER=1",
		"PAPERCLIP_DISABLE_CWD_ENV_FILE=true",
		"NO_COLOR=1",
		"FORCE_COLOR=0",
		"TZ=UTC",
	}
	return append(env, extra...)
}

// preparePostgresAsRoot applies the root fix: embedded-postgres runs initdb
// and postgres as the system user "postgres" when uid is 0 and does not chown
// the data dir itself, so the user must exist, own <data>/instances/default/db
// and reach the embedded binaries.
func preparePostgresAsRoot(dir, dbDir string) error {
	if err := ensurePostgresUser(); err != nil {
		return err
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return err
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if err := os.Chown(dbDir, uid, gid); err != nil {
		return fmt.Errorf("chown postgres %s: %w", dbDir, err)
	}
	for _, p := range []string{filepath.Dir(dbDir), embeddedPostgresBin(dir)} {
		if err := checkTraversable(p); err != nil {
			return fmt.Errorf("the postgres user cannot reach %s: %w (use an install dir / Root whose ancestors are o+x)", p, err)
		}
	}
	return nil
}

var userMu sync.Mutex

// ensurePostgresUser creates the system user "postgres" if it is missing (a
// fresh Debian machine without the postgresql package has none).
func ensurePostgresUser() error {
	userMu.Lock()
	defer userMu.Unlock()
	if exec.Command("id", "postgres").Run() == nil {
		return nil
	}
	out, err := exec.Command("useradd", "--system", "--user-group", "--no-create-home",
		"--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", "postgres").CombinedOutput()
	if err != nil && exec.Command("id", "postgres").Run() != nil { // lost a race: fine
		return fmt.Errorf("useradd postgres: %w: %s", err, out)
	}
	return nil
}

// checkTraversable reports the first ancestor of p (p included) that others
// cannot search.
func checkTraversable(p string) error {
	for d := p; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return err
		}
		if fi.Mode().Perm()&0o001 == 0 {
			return fmt.Errorf("%s has mode %v", d, fi.Mode().Perm())
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Stop shuts the server down: SIGTERM to the paperclipai node process (it
// stops its plugin workers and embedded Postgres in ~0.5 s), then, after the
// grace period, SIGKILL to its process group and to every descendant it was
// seen with (Postgres' children call setsid, so the group alone misses
// them). It returns an error if any of those PIDs is still alive. Safe to
// call more than once and on a failed Start.
func (s *Server) Stop() error {
	s.stopOnce.Do(func() { s.stopErr = s.stop() })
	return s.stopErr
}

func (s *Server) stop() error {
	if s.Client != nil {
		s.Client.closeIdle()
	}
	if s.logFile != nil {
		defer s.logFile.Close()
	}
	if s.cmd == nil {
		return nil
	}
	s.track()
	_ = syscall.Kill(s.PID, syscall.SIGTERM)
	if s.waitGone(s.grace) {
		return nil
	}
	// Escalate: the group, then every descendant ever seen.
	_ = syscall.Kill(-s.PID, syscall.SIGKILL)
	for pid := range s.snapshot() {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	if s.waitGone(5 * time.Second) {
		fmt.Fprintf(os.Stderr, "paperclip: server pid %d did not stop within %v; killed\n", s.PID, s.grace)
		return nil
	}
	return fmt.Errorf("paperclip: processes left after SIGKILL: %v", s.alive())
}

// waitGone waits until the leader has been reaped and no tracked process is
// alive, tracking newly forked descendants meanwhile.
func (s *Server) waitGone(d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		s.track()
		leaderDone := false
		select {
		case <-s.exited:
			leaderDone = true
		default:
		}
		if leaderDone && len(s.alive()) == 0 {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Processes returns the server's live process tree (the node leader, its
// plugin workers, embedded Postgres and Postgres' children), sorted by PID.
func (s *Server) Processes() []Process {
	s.track()
	var out []Process
	for _, p := range s.aliveInfo() {
		out = append(out, Process{PID: p.pid, PPID: p.ppid, PGID: p.pgid, Cmdline: cmdline(p.pid)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].PID < out[j].PID })
	return out
}

// Process is one process of a Server's tree.
type Process struct {
	PID, PPID, PGID int
	Cmdline         string // argv joined by spaces (never the environment)
}

// track records every current descendant of the leader (and its group).
func (s *Server) track() {
	if s.PID == 0 {
		return
	}
	procs := readProcs()
	children := map[int][]int{}
	for _, p := range procs {
		children[p.ppid] = append(children[p.ppid], p.pid)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var walk func(pid int)
	walk = func(pid int) {
		p, ok := procs[pid]
		if !ok {
			return
		}
		if old, ok := s.seen[pid]; ok && old.start != p.start {
			return // PID reused by an unrelated process
		}
		s.seen[pid] = p
		for _, c := range children[pid] {
			walk(c)
		}
	}
	walk(s.PID)
	for _, p := range procs {
		if p.pgid == s.PID {
			walk(p.pid)
		}
	}
}

func (s *Server) snapshot() map[int]procInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := make(map[int]procInfo, len(s.seen))
	for k, v := range s.seen {
		m[k] = v
	}
	return m
}

func (s *Server) aliveInfo() []procInfo {
	var out []procInfo
	for pid, was := range s.snapshot() {
		if p, ok := readProc(pid); ok && p.start == was.start && p.state != 'Z' && p.state != 'X' {
			out = append(out, p)
		}
	}
	return out
}

func (s *Server) alive() []int {
	var pids []int
	for _, p := range s.aliveInfo() {
		pids = append(pids, p.pid)
	}
	sort.Ints(pids)
	return pids
}

// Cleanup removes Root if Start created it. Call after Stop; keep it when a
// test failed so the log and data can be inspected.
func (s *Server) Cleanup() {
	if s.ownRoot && s.Root != "" {
		_ = os.RemoveAll(s.Root)
	}
}

// Log returns the whole server log (ANSI colour codes removed).
func (s *Server) Log() (string, error) {
	b, err := os.ReadFile(s.LogPath)
	return stripANSI(string(b)), err
}

// LogTail returns the last n lines of the server log.
func (s *Server) LogTail(n int) string {
	l, _ := s.Log()
	lines := strings.Split(strings.TrimRight(l, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// PluginLine is one line the server logged for a plugin worker.
type PluginLine struct {
	Level   string // DEBUG | INFO | WARN | ERROR
	Source  string // "stderr": the worker wrote it to stderr; "log": a `log` notification/request
	Message string
	// Meta is the meta of a `log` message as JSON (what the server appends,
	// without the fields it adds: service, pluginId, pluginLogLevel,
	// pluginTimestamp); "" when there is none, and for stderr lines.
	Meta string
}

// Fields decodes Meta (nil when there is none).
func (l PluginLine) Fields() map[string]any {
	var f map[string]any
	_ = json.Unmarshal([]byte(l.Meta), &f)
	return f
}

// Text is the line as the worker's slog text handler would have written it:
// a stderr line as is; a `log` message as msg="…" then its fields, sorted,
// as key=value (nested objects as a.b=value), quoted where needed.
func (l PluginLine) Text() string {
	if l.Source != "log" {
		return l.Message
	}
	var b strings.Builder
	b.WriteString("msg=" + logfmtValue(l.Message))
	var walk func(prefix string, m map[string]any)
	walk = func(prefix string, m map[string]any) {
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if sub, ok := m[k].(map[string]any); ok {
				walk(prefix+k+".", sub)
				continue
			}
			v := fmt.Sprint(m[k])
			if f, ok := m[k].(float64); ok {
				v = strconv.FormatFloat(f, 'f', -1, 64)
			}
			b.WriteString(" " + prefix + k + "=" + logfmtValue(v))
		}
	}
	walk("", l.Fields())
	return b.String()
}

func logfmtValue(s string) string {
	if s == "" || strings.ContainsAny(s, " =\"\t\n\r") {
		return strconv.Quote(s)
	}
	return s
}

// serverAddedFields are what the server adds to a `log` message's meta.
var serverAddedFields = []string{"service", "pluginId", "pluginLogLevel", "pluginTimestamp"}

// PluginLines returns, in order, what the server logged for the plugin with
// database id pluginID (Plugin.ID): worker stderr lines (`WARN: [plugin
// stderr] <line>`) and worker `log` messages (`<LEVEL>: [plugin] <msg>`).
// Only `log` *requests* are also stored in the database (PluginLogs).
func (s *Server) PluginLines(pluginID string) ([]PluginLine, error) {
	f, err := os.Open(s.LogPath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []PluginLine
	r := bufio.NewReader(f)
	for {
		line, err := r.ReadString('\n')
		if pl, ok := parsePluginLine(stripANSI(line), pluginID); ok {
			out = append(out, pl)
		}
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
	}
}

// parsePluginLine parses "[hh:mm:ss] LEVEL: [plugin stderr] msg {json}".
func parsePluginLine(l, pluginID string) (PluginLine, bool) {
	if !strings.Contains(l, `"pluginId":"`+pluginID+`"`) {
		return PluginLine{}, false
	}
	var pl PluginLine
	var rest string
	for _, k := range []struct{ tag, src string }{{": [plugin stderr] ", "stderr"}, {": [plugin] ", "log"}} {
		if i := strings.Index(l, k.tag); i >= 0 {
			head := l[:i]
			if j := strings.LastIndexByte(head, ' '); j >= 0 {
				head = head[j+1:]
			}
			pl.Level, pl.Source, rest = head, k.src, l[i+len(k.tag):]
			break
		}
	}
	if pl.Source == "" {
		return PluginLine{}, false
	}
	rest = strings.TrimRight(rest, "\r\n")
	if i := strings.LastIndex(rest, ` {"`); i >= 0 {
		if pl.Source == "log" {
			var f map[string]any
			if json.Unmarshal([]byte(rest[i+1:]), &f) == nil {
				for _, k := range serverAddedFields {
					delete(f, k)
				}
				if len(f) > 0 {
					b, _ := json.Marshal(f)
					pl.Meta = string(b)
				}
			}
		}
		rest = rest[:i]
	}
	pl.Message = rest
	return pl, true
}

var ansiRE = regexp.MustCompile("\x1b\\[[0-9;]*[A-Za-z]")

func stripANSI(s string) string { return ansiRE.ReplaceAllString(s, "") }

// ---- /proc helpers (Linux) ----

type procInfo struct {
	pid, ppid, pgid int
	state           byte
	start           uint64 // starttime in clock ticks, guards against PID reuse
}

func readProc(pid int) (procInfo, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procInfo{}, false
	}
	return parseStat(string(b))
}

// parseStat parses /proc/<pid>/stat; comm may contain spaces and parens.
func parseStat(s string) (procInfo, bool) {
	open, close := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || close < open {
		return procInfo{}, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(s[:open]))
	if err != nil {
		return procInfo{}, false
	}
	f := strings.Fields(s[close+1:])
	// f[0]=state f[1]=ppid f[2]=pgrp ... f[19]=starttime (field 22)
	if len(f) < 20 {
		return procInfo{}, false
	}
	ppid, _ := strconv.Atoi(f[1])
	pgid, _ := strconv.Atoi(f[2])
	start, _ := strconv.ParseUint(f[19], 10, 64)
	return procInfo{pid: pid, ppid: ppid, pgid: pgid, state: f[0][0], start: start}, true
}

func readProcs() map[int]procInfo {
	ents, _ := os.ReadDir("/proc")
	m := make(map[int]procInfo, len(ents))
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if p, ok := readProc(pid); ok {
			m[pid] = p
		}
	}
	return m
}

func cmdline(pid int) string {
	b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	return strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " "))
}

// pidAlive reports whether pid exists and is not a zombie.
func pidAlive(pid int) bool {
	p, ok := readProc(pid)
	return ok && p.state != 'Z' && p.state != 'X'
}

// ---- health ----

// Health is the subset of GET /api/health the harness uses.
type Health struct {
	Status         string          `json:"status"` // "starting" during startup recovery, then "ok"
	Version        string          `json:"version"`
	DeploymentMode string          `json:"deploymentMode"`
	Raw            json.RawMessage `json:"-"`
}

// Health calls GET /api/health.
func (c *Client) Health(ctx context.Context) (Health, error) {
	var h Health
	raw, err := c.do(ctx, http.MethodGet, "/api/health", nil, &h)
	h.Raw = raw
	return h, err
}
