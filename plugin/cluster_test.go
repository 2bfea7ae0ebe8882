package plugin

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/matryer/is"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/paperclip-k8s/paperclip-k8s/plugin/policy"
	"github.com/paperclip-k8s/paperclip-k8s/podexec"
)

func testKubeconfig(t *testing.T, server string) policy.Secret {
	t.Helper()
	kc := clientcmdapi.NewConfig()
	kc.Clusters["c"] = &clientcmdapi.Cluster{Server: server}
	kc.AuthInfos["u"] = &clientcmdapi.AuthInfo{Token: "t"}
	kc.Contexts["x"] = &clientcmdapi.Context{Cluster: "c", AuthInfo: "u"}
	kc.CurrentContext = "x"
	b, err := clientcmd.Write(*kc)
	if err != nil {
		t.Fatal(err)
	}
	return policy.Secret(b)
}

// The exec transports (WebSocket, SPDY) do not use rest.Config.WrapTransport;
// the gate reaches them through rest.Config.Proxy: a server that is not a
// Kubernetes API server gets no exec request, and its answer is not relayed.
func TestGateCoversExec(t *testing.T) {
	for _, tr := range []podexec.Transport{podexec.TransportWebSocket, podexec.TransportSPDY} {
		t.Run(tr.String(), func(t *testing.T) {
			is := is.New(t)
			const secret = "GATE-BODY-SECRET"
			var execHits atomic.Int32
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if strings.Contains(r.URL.Path, "/exec") {
					execHits.Add(1)
				}
				w.Header().Set("Content-Type", "text/html")
				w.WriteHeader(http.StatusBadRequest)
				_, _ = io.WriteString(w, "<html>"+secret+"</html>")
			}))
			defer srv.Close()
			p, err := New(slog.New(slog.NewTextHandler(io.Discard, nil)))
			is.NoErr(err)
			p.Transport = tr
			cl, err := p.cluster(policy.Config{Kubeconfig: testKubeconfig(t, srv.URL)})
			is.NoErr(err)
			_, err = cl.exec.Run(context.Background(), podexec.Request{Namespace: "ns", Pod: "pod", Command: "true"})
			is.True(err != nil)
			is.True(strings.Contains(err.Error(), "did not answer /version as a Kubernetes API server (HTTP 400)"))
			is.True(!strings.Contains(err.Error(), secret))
			is.Equal(execHits.Load(), int32(0)) // the exec request never went out
		})
	}
}

// The gate's verification is cached per cluster: a second request does not
// ask /version again.
func TestGateVerifiesOnce(t *testing.T) {
	is := is.New(t)
	var versions atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch r.URL.Path {
		case "/version":
			versions.Add(1)
			_, _ = io.WriteString(w, `{"major":"1","minor":"37","gitVersion":"v1.37.2"}`)
		case "/api":
			_, _ = io.WriteString(w, `{"kind":"APIVersions","versions":["v1"]}`)
		default:
			w.WriteHeader(http.StatusNotFound)
			_, _ = io.WriteString(w, `{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}`)
		}
	}))
	defer srv.Close()
	p, err := New(slog.New(slog.NewTextHandler(io.Discard, nil)))
	is.NoErr(err)
	cfg := policy.Config{Kubeconfig: testKubeconfig(t, srv.URL)}
	cl, err := p.cluster(cfg)
	is.NoErr(err)
	v, err := cl.kube.Discovery().ServerVersion()
	is.NoErr(err)
	is.Equal(v.GitVersion, "v1.37.2")
	is.Equal(versions.Load(), int32(2)) // the check, then the call
	cl2, err := p.cluster(cfg)
	is.NoErr(err)
	is.True(cl2 == cl)
	_, err = cl2.kube.Discovery().ServerVersion()
	is.NoErr(err)
	is.Equal(versions.Load(), int32(3)) // no second check
}
