package bench

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/matryer/is"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// A request that waits in client-go's rate limiter is counted as
// client-throttled: with QPS 5 and burst 1, the second of two requests
// waits for a token (~200 ms, far above the 1 ms threshold).
func TestClientThrottleCounted(t *testing.T) {
	is := is.New(t)
	registerClientMetrics()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"major":"1","minor":"37","gitVersion":"v1.37.2"}`))
	}))
	defer srv.Close()
	kube, err := kubernetes.NewForConfig(&rest.Config{Host: srv.URL, QPS: 5, Burst: 1})
	is.NoErr(err)
	before := readClient()
	for i := 0; i < 2; i++ {
		_, err := kube.Discovery().RESTClient().Get().AbsPath("/version").DoRaw(context.Background())
		is.NoErr(err)
	}
	d := readClient().since(before)
	is.Equal(d.waited, int64(1)) // the second request waited in the limiter
	is.True(d.wait > 0)
}
