package rpc_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/paperclip-k8s/paperclip-k8s/plugin/rpc"
)

// TestMain lets the test binary act as a worker process (real stdin/stdout),
// the way paperclip-server runs the plugin binary.
func TestMain(m *testing.M) {
	if os.Getenv("RPC_TEST_WORKER") == "1" {
		var mux rpc.Mux
		mux.Register(rpc.MethodInitialize, func(context.Context, json.RawMessage) (any, error) {
			return map[string]any{"ok": true, "supportedMethods": mux.Methods()}, nil
		})
		mux.Register(rpc.MethodHealth, func(context.Context, json.RawMessage) (any, error) {
			return map[string]string{"status": "ok"}, nil
		})
		if err := rpc.Serve(context.Background(), os.Stdin, os.Stdout, &mux, rpc.Options{}); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func startWorker(t *testing.T) (*exec.Cmd, *bufio.Writer, *bufio.Reader, func() error) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "RPC_TEST_WORKER=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	return cmd, bufio.NewWriter(stdin), bufio.NewReader(stdout), stdin.Close
}

func TestProcessLifecycle(t *testing.T) {
	t.Run("shutdown: reply, then exit 0 promptly", func(t *testing.T) {
		is := is.New(t)
		cmd, in, out, _ := startWorker(t)
		send := func(s string) {
			_, _ = in.WriteString(s + "\n")
			is.NoErr(in.Flush())
		}
		send(`{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"manifest":{},"config":{},"apiVersion":1}}`)
		line, err := out.ReadString('\n')
		is.NoErr(err)
		is.Equal(line, `{"jsonrpc":"2.0","id":1,"result":{"ok":true,"supportedMethods":["health","initialize"]}}`+"\n")
		send(`{"jsonrpc":"2.0","id":33,"method":"shutdown","params":{}}`)
		line, err = out.ReadString('\n')
		is.NoErr(err)
		replied := time.Now()
		is.Equal(line, `{"jsonrpc":"2.0","id":33,"result":null}`+"\n")
		waited := make(chan error, 1)
		go func() { waited <- cmd.Wait() }()
		select {
		case err := <-waited:
			is.NoErr(err) // exit status 0
			t.Logf("worker exited %v after the shutdown reply (host allows 500ms)", time.Since(replied))
		case <-time.After(waitLimit):
			t.Fatal("worker did not exit after shutdown")
		}
	})
	t.Run("stdin EOF: exit 0", func(t *testing.T) {
		is := is.New(t)
		cmd, in, out, closeIn := startWorker(t)
		_, _ = in.WriteString(`{"jsonrpc":"2.0","id":1,"method":"health"}` + "\n")
		is.NoErr(in.Flush())
		line, err := out.ReadString('\n')
		is.NoErr(err)
		is.True(strings.Contains(line, `"status":"ok"`))
		is.NoErr(closeIn())
		waited := make(chan error, 1)
		go func() { waited <- cmd.Wait() }()
		select {
		case err := <-waited:
			is.NoErr(err)
		case <-time.After(waitLimit):
			t.Fatal("worker did not exit on EOF")
		}
	})
}
