package podexec

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/matryer/is"
	"github.com/paperclip-k8s/paperclip-k8s/internal/testutil"
)

// target is somewhere to run the stream matrix: an execnode directly, or a
// pod on the execnode's kwok node through a real kube-apiserver.
type target struct {
	executor func(t testing.TB, tr Transport) *Executor
	// base carries Namespace, Pod and Container.
	base Request
	// wantTransport maps the configured transport to the one that should
	// carry the stream.
	wantTransport map[Transport]string
}

func (tg target) req(command string, args ...string) Request {
	r := tg.base
	r.Command, r.Args = command, args
	if r.Timeout == 0 {
		r.Timeout = 60 * time.Second
	}
	return r
}

func (tg target) run(t testing.TB, tr Transport, r Request) *Result {
	t.Helper()
	res, err := tg.executor(t, tr).Run(context.Background(), r)
	if err != nil {
		t.Fatalf("Run(%q %q): %v", r.Command, r.Args, err)
	}
	return res
}

func randomBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// runMatrix runs every stream check for each transport.
func runMatrix(t *testing.T, tg target, transports []Transport) {
	for _, tr := range transports {
		t.Run(tr.String(), func(t *testing.T) {
			t.Run("split", func(t *testing.T) { testSplit(t, tg, tr) })
			t.Run("stdin", func(t *testing.T) { testStdin(t, tg, tr) })
			t.Run("upload", func(t *testing.T) { testUpload(t, tg, tr) })
			t.Run("exit", func(t *testing.T) { testExitCodes(t, tg, tr) })
			t.Run("timeout", func(t *testing.T) { testTimeout(t, tg, tr) })
			t.Run("caps", func(t *testing.T) { testCaps(t, tg, tr) })
			t.Run("concurrent", func(t *testing.T) { testConcurrent(t, tg, tr) })
			t.Run("live", func(t *testing.T) { testLive(t, tg, tr) })
			t.Run("background", func(t *testing.T) { testBackground(t, tg, tr) })
			t.Run("envcwd", func(t *testing.T) { testEnvCwd(t, tg, tr) })
			t.Run("canceled", func(t *testing.T) { testCanceled(t, tg, tr) })
		})
	}
}

func testSplit(t *testing.T, tg target, tr Transport) {
	is := is.New(t)
	res := tg.run(t, tr, tg.req("echo out; echo err >&2; printf '\\377\\000\\001'"))
	is.Equal(*res.ExitCode, 0)
	is.Equal(res.Signal, "")
	is.True(!res.TimedOut)
	is.Equal(res.Stdout, []byte("out\n\xff\x00\x01")) // binary-safe
	is.Equal(string(res.Stderr), "err\n")
	is.Equal(res.Transport, tg.wantTransport[tr])
	is.True(res.Duration > 0)
}

func testStdin(t *testing.T, tg target, tr Transport) {
	for _, n := range []int{0, 1, 10 << 20} {
		t.Run(strconv.Itoa(n), func(t *testing.T) {
			is := is.New(t)
			in := randomBytes(t, n)
			r := tg.req("cat")
			r.Stdin = bytes.NewReader(in)
			res := tg.run(t, tr, r)
			is.Equal(*res.ExitCode, 0)
			is.Equal(len(res.Stdout), n)
			is.True(bytes.Equal(res.Stdout, in)) // stdin came back byte for byte, then EOF
			is.Equal(len(res.Stderr), 0)
		})
	}
}

// testUpload mimics the host's chunked upload: base64 on stdin appended with
// `base64 -d >> file`, two chunks of ~300 KB, then reads the file back.
func testUpload(t *testing.T, tg target, tr Transport) {
	is := is.New(t)
	raw := randomBytes(t, 450_000)
	file := "upload-" + tr.String() + ".bin"
	r := tg.req("sh", "-c", "rm -f "+ShellQuote(file))
	is.Equal(*tg.run(t, tr, r).ExitCode, 0)
	for _, part := range [][]byte{raw[:225_000], raw[225_000:]} {
		b64 := base64.StdEncoding.EncodeToString(part)
		is.Equal(len(b64), 300_000)
		r := tg.req("sh", "-c", "base64 -d >> "+ShellQuote(file))
		r.Stdin = strings.NewReader(b64)
		res := tg.run(t, tr, r)
		is.Equal(*res.ExitCode, 0)
		is.Equal(string(res.Stderr), "")
	}
	res := tg.run(t, tr, tg.req("cat", file))
	is.True(bytes.Equal(res.Stdout, raw))
}

func testExitCodes(t *testing.T, tg target, tr Transport) {
	cases := []struct {
		script string
		code   int
		signal string
		hint   string
	}{
		{"exit 0", 0, "", ""},
		{"exit 1", 1, "", ""},
		{"echo partial >&2; exit 42", 42, "", ""},
		{"printf 'no newline' >&2; kill -9 $$", 137, "SIGKILL", "memory limit"},
		{"kill -TERM $$", 143, "SIGTERM", "SIGTERM"},
	}
	for _, c := range cases {
		t.Run(strconv.Itoa(c.code), func(t *testing.T) {
			is := is.New(t)
			var streamed bytes.Buffer
			r := tg.req(c.script)
			r.OnOutput = func(s string, b []byte) {
				if s == "stderr" {
					streamed.Write(b)
				}
			}
			res := tg.run(t, tr, r)
			is.True(res.ExitCode != nil)
			is.Equal(*res.ExitCode, c.code)
			is.Equal(res.Signal, c.signal)
			is.True(!res.TimedOut)
			if c.hint != "" {
				is.True(strings.Contains(string(res.Stderr), c.hint))                                     // hint in stderr
				is.True(strings.HasPrefix(string(res.Stderr), "no newline\n[paperclip") || c.code != 137) // hint on its own line
			}
			if c.code == 42 {
				is.Equal(string(res.Stderr), "partial\n")
			}
			is.Equal(streamed.String(), string(res.Stderr)) // hint streamed too
		})
	}
}

func testTimeout(t *testing.T, tg target, tr Transport) {
	is := is.New(t)
	pidc := make(chan int, 1)
	r := tg.req("echo $$; exec sleep 120")
	r.Timeout = 1500 * time.Millisecond
	r.OnOutput = func(_ string, b []byte) {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			pidc <- pid
		}
	}
	res := tg.run(t, tr, r)
	is.True(res.TimedOut)
	is.True(res.ExitCode == nil)
	is.True(res.Duration < 60*time.Second)
	is.True(strings.Contains(string(res.Stderr), "timed out"))
	select {
	case pid := <-pidc:
		// Through an execnode the stream teardown kills the process group.
		gone, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		testutil.WaitGone(t, gone, pid)
	default:
		t.Log("the command had not printed its pid before the timeout; kill check skipped")
	}
}

func testCaps(t *testing.T, tg target, tr Transport) {
	is := is.New(t)
	ex := tg.executor(t, tr)

	r := tg.req("head -c 5000 /dev/zero; sleep 60")
	r.MaxStdout = 1000
	res, err := ex.Run(context.Background(), r)
	var le *OutputLimitError
	is.True(errors.As(err, &le))
	is.Equal(le.Stream, "stdout")
	is.Equal(le.Limit, int64(1000))
	is.True(strings.Contains(err.Error(), "MaxStdout cap of 1000 bytes"))
	is.True(res.ExitCode == nil)
	is.True(res.Duration < 50*time.Second) // torn down, did not wait for sleep

	r = tg.req("head -c 5000 /dev/zero >&2")
	r.MaxStderr = 1000
	_, err = ex.Run(context.Background(), r)
	is.True(errors.As(err, &le))
	is.Equal(le.Stream, "stderr")
	is.True(strings.Contains(err.Error(), "MaxStderr"))

	r = tg.req("head -c 1000 /dev/zero")
	r.MaxStdout = 1000 // exactly at the cap is fine
	res, err = ex.Run(context.Background(), r)
	is.NoErr(err)
	is.Equal(len(res.Stdout), 1000)

	r = tg.req("head -c 3000000 /dev/zero")
	r.MaxStdout = -1 // no cap
	var chunks, biggest int
	r.OnOutput = func(_ string, b []byte) {
		chunks++
		biggest = max(biggest, len(b))
	}
	res, err = ex.Run(context.Background(), r)
	is.NoErr(err)
	is.Equal(len(res.Stdout), 3000000)
	is.True(biggest <= MaxChunk)
	is.True(chunks >= 3)
}

func testConcurrent(t *testing.T, tg target, tr Transport) {
	ex := tg.executor(t, tr)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Go(func() {
			in := randomBytes(t, 200_000+i)
			r := tg.req("cat; echo done-" + strconv.Itoa(i) + " >&2")
			r.Stdin = bytes.NewReader(in)
			res, err := ex.Run(context.Background(), r)
			switch {
			case err != nil:
				errs <- err
			case *res.ExitCode != 0 || !bytes.Equal(res.Stdout, in) || string(res.Stderr) != "done-"+strconv.Itoa(i)+"\n":
				errs <- fmt.Errorf("exec %d: exit %d, %d stdout bytes, stderr %q", i, *res.ExitCode, len(res.Stdout), res.Stderr)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// testLive proves output is delivered while the command runs: the command
// prints "a", then blocks reading stdin, which the test only feeds after it
// has received "a" through OnOutput.
func testLive(t *testing.T, tg target, tr Transport) {
	is := is.New(t)
	pr, pw := io.Pipe()
	first := make(chan string, 1)
	var mu sync.Mutex
	var streamed []byte
	r := tg.req("echo a; read x; echo \"b $x\"; echo e >&2")
	r.Stdin = pr
	r.OnOutput = func(s string, b []byte) {
		mu.Lock()
		if s == "stdout" {
			if len(streamed) == 0 {
				first <- string(b)
			}
			streamed = append(streamed, b...)
		}
		mu.Unlock()
	}
	type outcome struct {
		res *Result
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		res, err := tg.executor(t, tr).Run(context.Background(), r)
		done <- outcome{res, err}
	}()
	select {
	case c := <-first:
		is.Equal(c, "a\n")
	case o := <-done:
		t.Fatalf("Run returned before any live output: %+v %v", o.res, o.err)
	}
	_, err := pw.Write([]byte("go\n"))
	is.NoErr(err)
	is.NoErr(pw.Close())
	o := <-done
	is.NoErr(o.err)
	is.Equal(string(o.res.Stdout), "a\nb go\n")
	is.Equal(string(o.res.Stderr), "e\n")
	mu.Lock()
	is.Equal(string(streamed), string(o.res.Stdout)) // chunks add up to the Result
	mu.Unlock()
}

// testBackground: a helper started with nohup and redirected output does not
// keep the call open, and keeps running after it.
func testBackground(t *testing.T, tg target, tr Transport) {
	is := is.New(t)
	r := tg.req("nohup sleep 120 >/dev/null 2>&1 & echo $!")
	r.Stdin = strings.NewReader("unused stdin")
	res := tg.run(t, tr, r)
	is.Equal(*res.ExitCode, 0)
	pid, err := strconv.Atoi(strings.TrimSpace(string(res.Stdout)))
	is.NoErr(err)
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	is.True(testutil.Alive(pid)) // still running after Run returned
}

// testEnvCwd round-trips tricky env values and a tricky cwd through the
// wrapper, the exec API and the remote shell.
func testEnvCwd(t *testing.T, tg target, tr Transport) {
	is := is.New(t)
	dir := "sub dir 'q' $x `y` ✓ " + tr.String()
	res := tg.run(t, tr, tg.req("mkdir", "-p", "--", dir))
	is.Equal(*res.ExitCode, 0)
	home := tg.run(t, tr, tg.req("pwd", "-P"))
	wantDir := strings.TrimSuffix(string(home.Stdout), "\n") + "/" + dir

	env := trickyEnv()
	command, args, names := envRequest(env)
	r := tg.req(command, args...)
	r.Env = env
	r.Cwd = dir
	res = tg.run(t, tr, r)
	is.Equal(*res.ExitCode, 0)
	is.Equal(res.SkippedEnv, []string{"NOT-VALID", "PATH"})
	checkEnvOutput(t, res.Stdout, env, names, wantDir)

	// Command-only form (/bin/sh -lc) with env and an absolute cwd.
	r = tg.req(`printf '%s|%s' "$V_C" "$(pwd -P)"`)
	r.Env = map[string]string{"V_C": "it's $HOME"}
	r.Cwd = wantDir
	res = tg.run(t, tr, r)
	is.Equal(string(res.Stdout), "it's $HOME|"+wantDir)

	// A missing cwd: exit 1 and the shell's message.
	r = tg.req("true")
	r.Cwd = "/nonexistent/dir"
	res = tg.run(t, tr, r)
	is.Equal(*res.ExitCode, 1)
	is.True(len(res.Stderr) > 0)
}

func testCanceled(t *testing.T, tg target, tr Transport) {
	is := is.New(t)
	ctx, cancel := context.WithCancel(context.Background())
	r := tg.req("echo started; sleep 120")
	r.OnOutput = func(string, []byte) { cancel() }
	res, err := tg.executor(t, tr).Run(ctx, r)
	is.True(errors.Is(err, context.Canceled))
	is.True(!res.TimedOut)
	is.True(res.ExitCode == nil)
}
