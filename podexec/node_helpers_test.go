package podexec

import (
	"context"
	"fmt"
	"net/url"
	"testing"
	"time"

	"k8s.io/client-go/rest"

	"github.com/paperclip-k8s/paperclip-k8s/internal/execnode"
)

const (
	testNS        = "ns1"
	testPod       = "pod1"
	testContainer = "agent"
)

// testNode is an execnode reached directly, without an API server.
type testNode struct {
	node *execnode.Node
	port int
}

func startTestNode(tb testing.TB, opts execnode.Options) *testNode {
	tb.Helper()
	if opts.Root == "" {
		opts.Root = tb.TempDir()
	}
	n := execnode.New(opts)
	port, err := n.Start(context.Background())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(n.Close)
	return &testNode{node: n, port: port}
}

func (tn *testNode) config() *rest.Config {
	return &rest.Config{
		Host:            fmt.Sprintf("https://127.0.0.1:%d", tn.port),
		TLSClientConfig: rest.TLSClientConfig{CAData: tn.node.CertPEM()},
	}
}

// kubeletURL is the URL the API server would proxy pods/exec to.
func (tn *testNode) kubeletURL(req *Request, argv []string) *url.URL {
	q := url.Values{}
	for _, a := range argv {
		q.Add("command", a)
	}
	if req.Stdin != nil {
		q.Set("input", "1")
	}
	q.Set("output", "1")
	q.Set("error", "1")
	return &url.URL{
		Scheme:   "https",
		Host:     fmt.Sprintf("127.0.0.1:%d", tn.port),
		Path:     "/exec/" + req.Namespace + "/" + req.Pod + "/" + req.Container,
		RawQuery: q.Encode(),
	}
}

// executor returns an Executor whose requests go straight to the node.
func (tn *testNode) executor(tb testing.TB, tr Transport) *Executor {
	tb.Helper()
	e, err := NewExecutor(tn.config(), Options{Transport: tr})
	if err != nil {
		tb.Fatal(err)
	}
	e.urlFor = func(req *Request, argv []string) (*url.URL, error) { return tn.kubeletURL(req, argv), nil }
	return e
}

func req(command string, args ...string) Request {
	return Request{Namespace: testNS, Pod: testPod, Container: testContainer, Command: command, Args: args, Timeout: 60 * time.Second}
}
