package podexec

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"testing"

	"github.com/matryer/is"
	"k8s.io/client-go/rest"

	"github.com/paperclip-k8s/paperclip-k8s/internal/execnode"
)

func nodeTarget(tn *testNode, want map[Transport]string) target {
	return target{
		executor:      tn.executor,
		base:          Request{Namespace: testNS, Pod: testPod, Container: testContainer},
		wantTransport: want,
	}
}

// TestNodeMatrix runs the stream matrix straight against an execnode (no API
// server), over each transport.
func TestNodeMatrix(t *testing.T) {
	tn := startTestNode(t, execnode.Options{})
	runMatrix(t, nodeTarget(tn, map[Transport]string{
		TransportWebSocket: "websocket",
		TransportSPDY:      "spdy",
		TransportAuto:      "websocket",
	}), []Transport{TransportWebSocket, TransportSPDY, TransportAuto})
}

// TestFallbackToSPDY: against a server without WebSocket v5 (what a kubelet
// serves), auto falls back to SPDY and websocket-only fails.
func TestFallbackToSPDY(t *testing.T) {
	is := is.New(t)
	tn := startTestNode(t, execnode.Options{KubeletProtocolsOnly: true})
	tg := nodeTarget(tn, map[Transport]string{TransportAuto: "spdy"})
	t.Run("split", func(t *testing.T) { testSplit(t, tg, TransportAuto) })
	t.Run("stdin", func(t *testing.T) { testStdin(t, tg, TransportAuto) })

	res, err := tn.executor(t, TransportWebSocket).Run(context.Background(), req("true"))
	is.True(errors.Is(err, ErrTransport))
	is.True(res.ExitCode == nil)
}

const (
	secretEnv   = "s3cr3t-env-value/with+chars=&?"
	secretStdin = "stdin-secret-payload-0123456789"
)

func assertNoSecrets(t *testing.T, err error) {
	t.Helper()
	msg := err.Error()
	for _, s := range []string{secretEnv, url.QueryEscape(secretEnv), url.PathEscape(secretEnv), "s3cr3t", secretStdin, "stdin-secret"} {
		if strings.Contains(msg, s) {
			t.Fatalf("error leaks a secret (%q): %s", s, msg)
		}
	}
}

// TestSecretsNotInErrors provokes transport errors whose raw text would carry
// the exec URL (and so the env values) and checks they are scrubbed.
func TestSecretsNotInErrors(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedPort := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	tn := startTestNode(t, execnode.Options{KubeletProtocolsOnly: true})

	for _, tr := range []Transport{TransportWebSocket, TransportSPDY, TransportAuto} {
		t.Run(tr.String(), func(t *testing.T) {
			is := is.New(t)
			r := req("echo", "hi")
			r.Env = map[string]string{"TOKEN": secretEnv, "SHORT": "abc"}
			r.Stdin = strings.NewReader(secretStdin)

			// Nothing listening: dial errors usually quote the URL.
			e, err := NewExecutor(&rest.Config{Host: fmt.Sprintf("https://127.0.0.1:%d", closedPort), TLSClientConfig: rest.TLSClientConfig{Insecure: true}}, Options{Transport: tr})
			is.NoErr(err)
			_, err = e.Run(context.Background(), r)
			is.True(errors.Is(err, ErrTransport))
			assertNoSecrets(t, err)
			is.True(strings.Contains(err.Error(), "ns1/pod1")) // says what failed

			// Server answers with an error status (bad container name: 404).
			r.Container = "Bad_Name"
			_, err = tn.executor(t, tr).Run(context.Background(), r)
			is.True(err != nil)
			assertNoSecrets(t, err)
		})
	}
}

func TestRedactor(t *testing.T) {
	is := is.New(t)
	u, _ := url.Parse("https://h/api/v1/namespaces/n/pods/p/exec?command=export+T%3D%27tok-1234%27&stdout=true")
	r := newRedactor(u, map[string]string{"T": "tok-1234", "S": "ab", "Q": "it's secret"})
	msg := r.scrub(`Post "https://h/api/v1/namespaces/n/pods/p/exec?command=export+T%3D%27tok-1234%27&stdout=true": EOF; tok-1234 'it'\''s secret' it%27s+secret "it's secret" ab`)
	is.True(!strings.Contains(msg, "tok-1234"))
	is.True(!strings.Contains(msg, "secret"))
	is.True(strings.Contains(msg, "https://h/api/v1/namespaces/n/pods/p/exec[REDACTED]"))
	is.True(strings.HasSuffix(msg, " ab")) // values under 4 bytes are not scrubbed from free text
}

func TestRequestValidation(t *testing.T) {
	is := is.New(t)
	e, err := NewExecutor(&rest.Config{Host: "https://127.0.0.1:1"}, Options{})
	is.NoErr(err)
	_, err = e.Run(context.Background(), Request{Namespace: "n", Pod: "p"})
	is.True(errors.Is(err, ErrEmptyCommand))
	_, err = e.Run(context.Background(), Request{Command: "true"})
	is.True(err != nil)
	_, err = NewExecutor(&rest.Config{Host: "https://127.0.0.1:1"}, Options{Transport: Transport(9)})
	is.True(err != nil)

	// The default URL is the pods/exec subresource with the argv as command=.
	u, err := e.podExecURL(&Request{Namespace: "n", Pod: "p", Container: "agent", Stdin: strings.NewReader("")}, []string{"sh", "-c", "x y"})
	is.NoErr(err)
	is.Equal(u.Path, "/api/v1/namespaces/n/pods/p/exec")
	q := u.Query()
	is.Equal(q["command"], []string{"sh", "-c", "x y"})
	is.Equal(q.Get("container"), "agent")
	is.Equal(q.Get("stdin"), "true")
	is.Equal(q.Get("stdout"), "true")
	is.Equal(q.Get("stderr"), "true")
}
