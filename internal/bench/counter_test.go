package bench

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"
	"github.com/paperclip-k8s/paperclip-k8s/internal/testutil"
)

func TestClassify(t *testing.T) {
	is := is.New(t)
	c := NewCounter(testutil.Catalog(t))
	for _, tc := range []struct {
		method, url, contentType string
		verb, resource           string
		tenant                   bool
	}{
		{"GET", "/version", "", "discovery", "", false},
		{"GET", "/apis/agents.x-k8s.io/v1alpha1", "", "discovery", "", false},
		{"GET", "/api/v1/namespaces/t1", "", "get", "namespaces", true},
		{"POST", "/api/v1/namespaces", "", "create", "namespaces", true},
		{"PATCH", "/api/v1/namespaces/t1/limitranges/paperclip-limits?fieldManager=x", "application/apply-patch+yaml", "apply", "limitranges", true},
		{"PATCH", "/apis/rbac.authorization.k8s.io/v1/namespaces/t1/rolebindings/paperclip-k8s-provider?fieldManager=x", "application/apply-patch+yaml", "apply", "rolebindings", true},
		{"PATCH", "/apis/networking.k8s.io/v1/namespaces/t1/networkpolicies/paperclip-deny", "application/apply-patch+yaml", "apply", "networkpolicies", true},
		// The run's scoped policy is created, and named after the run.
		{"POST", "/apis/networking.k8s.io/v1/namespaces/t1/networkpolicies", "", "create", "networkpolicies", false},
		{"DELETE", "/apis/networking.k8s.io/v1/namespaces/t1/networkpolicies/pc-01abc", "", "delete", "networkpolicies", false},
		{"PATCH", "/api/v1/namespaces/t1/secrets/pc-01abc", "application/merge-patch+json", "patch", "secrets", false},
		{"GET", "/api/v1/namespaces/t1/pods?labelSelector=a", "", "list", "pods", false},
		{"GET", "/api/v1/namespaces/t1/pods?watch=true", "", "watch", "pods", false},
		{"GET", "/api/v1/namespaces/t1/pods/pc-01abc/exec?command=true", "", "exec", "pods", false},
		{"POST", "/api/v1/namespaces/t1/pods/pc-01abc/exec?command=true", "", "exec", "pods", false},
		{"PUT", "/api/v1/namespaces/t1/secrets/pc-01abc", "", "update", "secrets", false},
		{"DELETE", "/api/v1/namespaces/t1/pods", "", "deletecollection", "pods", false},
	} {
		req := httptest.NewRequest(tc.method, "https://api.example:6443"+tc.url, nil)
		if tc.contentType != "" {
			req.Header.Set("Content-Type", tc.contentType)
		}
		r := c.classify(req)
		is.Equal(r.Verb, tc.verb)         // verb of tc.method tc.url
		is.Equal(r.Resource, tc.resource) // resource of tc.url
		is.Equal(r.Tenant, tc.tenant)     // tenant request or not
	}
}

type okTransport struct{}

func (okTransport) RoundTrip(*http.Request) (*http.Response, error) {
	return &http.Response{StatusCode: 200, Body: http.NoBody}, nil
}

// The counter records each request that goes through it, and Take forgets
// what it returned.
func TestCounterTake(t *testing.T) {
	is := is.New(t)
	c := NewCounter(testutil.Catalog(t))
	rt := c.Wrap(okTransport{})
	for _, u := range []string{"/api/v1/namespaces/t1/secrets", "/version"} {
		method := "POST"
		if strings.HasSuffix(u, "version") {
			method = "GET"
		}
		resp, err := rt.RoundTrip(httptest.NewRequest(method, "https://h"+u, nil))
		is.NoErr(err)
		resp.Body.Close()
	}
	s := Summarize(c.Take())
	is.Equal(s.Total, 2)
	is.Equal(s.Verbs(), "discovery 1, create 1")
	is.Equal(len(c.Take()), 0)
}

func TestLongestChain(t *testing.T) {
	is := is.New(t)
	t0 := time.Unix(0, 0)
	at := func(a, b int) Request {
		return Request{Start: t0.Add(time.Duration(a) * time.Millisecond), End: t0.Add(time.Duration(b) * time.Millisecond)}
	}
	is.Equal(longestChain(nil), 0)
	// one, then two in parallel, then one: three round trips in sequence.
	is.Equal(longestChain([]Request{at(0, 10), at(10, 20), at(11, 19), at(20, 30)}), 3)
	// all overlapping: one.
	is.Equal(longestChain([]Request{at(0, 10), at(1, 11), at(2, 12)}), 1)
}

func TestPercentile(t *testing.T) {
	is := is.New(t)
	var ds []time.Duration
	for i := 100; i >= 1; i-- {
		ds = append(ds, time.Duration(i))
	}
	is.Equal(Percentile(ds, 50), time.Duration(50))
	is.Equal(Percentile(ds, 95), time.Duration(95))
	is.Equal(Percentile(ds, 100), time.Duration(100))
	is.Equal(Percentile([]time.Duration{7}, 95), time.Duration(7))
	is.Equal(Percentile(nil, 50), time.Duration(0))
}
