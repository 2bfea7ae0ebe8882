package execnode

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"
	"github.com/paperclip-k8s/paperclip-k8s/internal/testutil"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/remotecommand"
	utilexec "k8s.io/client-go/util/exec"
)

func startNode(t *testing.T) (*Node, int) {
	t.Helper()
	n := New(Options{Root: t.TempDir()})
	port, err := n.Start(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Close)
	return n, port
}

func mustTLS(t *testing.T, n *Node) *tls.Config {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(n.CertPEM()) {
		t.Fatal("bad cert PEM")
	}
	return &tls.Config{RootCAs: pool}
}

func restConfig(n *Node, port int) *rest.Config {
	return &rest.Config{
		Host:            fmt.Sprintf("https://127.0.0.1:%d", port),
		TLSClientConfig: rest.TLSClientConfig{CAData: n.CertPEM()},
	}
}

func execURL(port int, ns, pod, container string, stdin bool, argv ...string) *url.URL {
	q := url.Values{}
	for _, a := range argv {
		q.Add("command", a)
	}
	if stdin {
		q.Set("input", "1")
	}
	q.Set("output", "1")
	q.Set("error", "1")
	return &url.URL{
		Scheme:   "https",
		Host:     fmt.Sprintf("127.0.0.1:%d", port),
		Path:     "/exec/" + ns + "/" + pod + "/" + container,
		RawQuery: q.Encode(),
	}
}

type transport string

func executor(t *testing.T, n *Node, port int, tr transport, u *url.URL) remotecommand.Executor {
	t.Helper()
	cfg := restConfig(n, port)
	var (
		ex  remotecommand.Executor
		err error
	)
	switch tr {
	case "spdy":
		ex, err = remotecommand.NewSPDYExecutor(cfg, "POST", u)
	case "websocket":
		ex, err = remotecommand.NewWebSocketExecutor(cfg, "GET", u.String())
	}
	if err != nil {
		t.Fatal(err)
	}
	return ex
}

func run(t *testing.T, n *Node, port int, tr transport, stdin io.Reader, argv ...string) (string, string, error) {
	t.Helper()
	u := execURL(port, "ns1", "pod1", "main", stdin != nil, argv...)
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := executor(t, n, port, tr, u).StreamWithContext(ctx, remotecommand.StreamOptions{Stdin: stdin, Stdout: &out, Stderr: &errb})
	return out.String(), errb.String(), err
}

func TestExecBothTransports(t *testing.T) {
	n, port := startNode(t)
	for _, tr := range []transport{"spdy", "websocket"} {
		t.Run(string(tr), func(t *testing.T) {
			is := is.New(t)

			out, errs, err := run(t, n, port, tr, nil, "/bin/sh", "-c", "echo out; echo err >&2; pwd")
			is.NoErr(err)
			is.Equal(out, "out\n"+n.WorkDir("ns1", "pod1")+"\n")
			is.Equal(errs, "err\n")

			out, _, err = run(t, n, port, tr, strings.NewReader("line1\nline2\n"), "cat")
			is.NoErr(err)
			is.Equal(out, "line1\nline2\n") // stdin EOF reached cat

			for _, code := range []int{1, 42, 137, 143} {
				script := "exit " + strconv.Itoa(code)
				switch code {
				case 137:
					script = "kill -9 $$"
				case 143:
					script = "kill -TERM $$"
				}
				_, _, err = run(t, n, port, tr, nil, "/bin/sh", "-c", script)
				var ce utilexec.CodeExitError
				is.True(errors.As(err, &ce)) // exit status arrives as CodeExitError
				is.Equal(ce.Code, code)
			}

			_, _, err = run(t, n, port, tr, nil, "/nonexistent/binary")
			is.True(err != nil)
			var ce utilexec.CodeExitError
			is.True(!errors.As(err, &ce))
			is.True(strings.Contains(err.Error(), "Internal error"))
		})
	}
}

func TestTornDownStreamKillsProcessGroup(t *testing.T) {
	for _, tr := range []transport{"spdy", "websocket"} {
		t.Run(string(tr), func(t *testing.T) {
			is := is.New(t)
			n, port := startNode(t)
			u := execURL(port, "ns1", "pod1", "main", false, "/bin/sh", "-c", "sleep 300 & echo $! > child.pid; echo $$ > sh.pid; echo ready; wait")
			ctx, cancel := context.WithCancel(context.Background())
			ready := make(chan struct{})
			errc := make(chan error, 1)
			go func() {
				errc <- executor(t, n, port, tr, u).StreamWithContext(ctx, remotecommand.StreamOptions{
					Stdout: &notifyWriter{ch: ready}, Stderr: io.Discard,
				})
			}()
			<-ready
			wd := n.WorkDir("ns1", "pod1")
			shPid := readPid(t, filepath.Join(wd, "sh.pid"))
			childPid := readPid(t, filepath.Join(wd, "child.pid"))
			is.True(testutil.Alive(shPid))
			is.True(testutil.Alive(childPid))
			cancel()
			<-errc
			testutil.WaitGone(t, within(t, 20*time.Second), shPid)
			testutil.WaitGone(t, within(t, 20*time.Second), childPid)
		})
	}
}

func TestCloseKillsBackgroundHelpers(t *testing.T) {
	is := is.New(t)
	n, port := startNode(t)
	out, _, err := run(t, n, port, "spdy", nil, "/bin/sh", "-c", "nohup sleep 300 >/dev/null 2>&1 & echo $!")
	is.NoErr(err) // returned although the background child still runs
	pid, err := strconv.Atoi(strings.TrimSpace(out))
	is.NoErr(err)
	is.True(testutil.Alive(pid))
	n.Close()
	testutil.WaitGone(t, within(t, 20*time.Second), pid)
}

func TestBackgroundChildHoldingStdoutDoesNotHang(t *testing.T) {
	is := is.New(t)
	n, port := startNode(t)
	start := time.Now()
	out, _, err := run(t, n, port, "spdy", nil, "/bin/sh", "-c", "sleep 300 & echo fg")
	is.NoErr(err)
	is.Equal(out, "fg\n")
	is.True(time.Since(start) < 60*time.Second)
}

func TestLogs(t *testing.T) {
	is := is.New(t)
	n, port := startNode(t)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: mustTLS(t, n)}}
	get := func(q string) (int, string) {
		resp, err := client.Get(fmt.Sprintf("https://127.0.0.1:%d/containerLogs/ns1/pod1/main?%s", port, q))
		is.NoErr(err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		is.NoErr(err)
		return resp.StatusCode, string(b)
	}
	code, body := get("")
	is.Equal(code, 200)
	is.Equal(body, "")

	is.NoErr(n.WriteLog("ns1", "pod1", "main", []byte("one\ntwo\nthree\n")))
	_, body = get("")
	is.Equal(body, "one\ntwo\nthree\n")
	_, body = get("tailLines=2")
	is.Equal(body, "two\nthree\n")
	_, body = get("limitBytes=5")
	is.Equal(body, "one\nt")
	code, _ = get("previous=true")
	is.Equal(code, 400)

	// follow: streams what is appended until EndLog.
	resp, err := client.Get(fmt.Sprintf("https://127.0.0.1:%d/containerLogs/ns1/pod1/main?follow=true&tailLines=1", port))
	is.NoErr(err)
	defer resp.Body.Close()
	buf := make([]byte, 6)
	_, err = io.ReadFull(resp.Body, buf)
	is.NoErr(err)
	is.Equal(string(buf), "three\n")
	is.NoErr(n.WriteLog("ns1", "pod1", "main", []byte("four\n")))
	n.EndLog("ns1", "pod1", "main")
	rest, err := io.ReadAll(resp.Body)
	is.NoErr(err)
	is.Equal(string(rest), "four\n")
}

func TestBadPaths(t *testing.T) {
	is := is.New(t)
	n, port := startNode(t)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: mustTLS(t, n)}}
	for _, p := range []string{"/exec/ns1/pod1", "/exec/../x/y?command=true", "/exec/NS/p/c?command=true", "/containerLogs/a/b", "/containerLogs/a/../b"} {
		resp, err := client.Post(fmt.Sprintf("https://127.0.0.1:%d%s", port, p), "", nil)
		is.NoErr(err)
		resp.Body.Close()
		is.True(resp.StatusCode >= 400)
	}
}

type notifyWriter struct {
	ch   chan struct{}
	done bool
}

func (w *notifyWriter) Write(p []byte) (int, error) {
	if !w.done && len(p) > 0 {
		w.done = true
		close(w.ch)
	}
	return len(p), nil
}

func readPid(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// within is a context that ends after d, or with the test.
func within(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
