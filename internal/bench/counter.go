// Package bench measures the provider on a cluster (normally the embedded
// dev control plane of `paperclip-k8s bench`): API requests per acquire,
// acquire latency and throughput, execute against a bare exec, first-command
// latency and the worker's start and idle memory; with -warm-pools, the
// sandbox and sandboxclaim backends side by side (empty and warm pools):
// acquire, time to the first command's result, a bare exec in the same
// pod, API requests per run and the pool's refill time. It prints figures
// and asserts nothing.
package bench

import (
	"mime"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/paperclip-k8s/paperclip-k8s/engine/resource"
	"github.com/paperclip-k8s/paperclip-k8s/plugin/policy"
)

// Request is one API request the provider sent.
type Request struct {
	Verb     string // get, list, watch, create, apply, patch, update, delete, deletecollection, exec, log, discovery, other
	Resource string // plural resource ("" for discovery)
	Name     string // object name in the path ("" for a collection)
	Tenant   bool   // a request on a tenant object (see Counter.tenantRequest)
	Status   int    // the HTTP status (0: no response)
	Start    time.Time
	End      time.Time
}

// Counter is an http.RoundTripper wrapper that records every request.
type Counter struct {
	mu   sync.Mutex
	reqs []Request
	// tenant and run are the resources the catalog's tenant files and its
	// other files (backends, run objects, pods) use.
	tenant, run map[string]bool
}

// NewCounter returns a counter that tells tenant requests by the tenant
// files of c.
func NewCounter(c *resource.Catalog) *Counter {
	k := &Counter{tenant: map[string]bool{}, run: map[string]bool{}}
	for _, s := range c.All() {
		if s.API == nil {
			continue
		}
		switch s.Use {
		case resource.UseTenant:
			k.tenant[s.API.Resource] = true
		case resource.UseFragment:
		default:
			k.run[s.API.Resource] = true
		}
	}
	return k
}

// Wrap is a rest.Config transport wrapper (plugin.WrapTransport).
func (c *Counter) Wrap(rt http.RoundTripper) http.RoundTripper { return &counting{c: c, rt: rt} }

// Take returns the requests recorded since the last Take and forgets them.
func (c *Counter) Take() []Request {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := c.reqs
	c.reqs = nil
	return r
}

func (c *Counter) add(r Request) {
	c.mu.Lock()
	c.reqs = append(c.reqs, r)
	c.mu.Unlock()
}

type counting struct {
	c  *Counter
	rt http.RoundTripper
}

func (t *counting) RoundTrip(req *http.Request) (*http.Response, error) {
	r := t.c.classify(req)
	r.Start = time.Now()
	resp, err := t.rt.RoundTrip(req)
	r.End = time.Now()
	if resp != nil {
		r.Status = resp.StatusCode
	}
	t.c.add(r)
	return resp, err
}

func (t *counting) WrappedRoundTripper() http.RoundTripper { return t.rt }

// classify names the verb and the object of a request from its method and
// path, the way the API server's request info does.
func (c *Counter) classify(req *http.Request) Request {
	parts := strings.Split(strings.Trim(req.URL.Path, "/"), "/")
	var rest []string
	switch {
	case len(parts) >= 2 && parts[0] == "api":
		rest = parts[2:]
	case len(parts) >= 3 && parts[0] == "apis":
		rest = parts[3:]
	}
	if len(rest) == 0 { // /version, /api, /apis, /apis/g, /apis/g/v, /openapi/...
		return Request{Verb: "discovery"}
	}
	var resource, name, sub string
	if rest[0] == "namespaces" && len(rest) >= 3 {
		rest = rest[2:]
	}
	resource = rest[0]
	if len(rest) > 1 {
		name = rest[1]
	}
	if len(rest) > 2 {
		sub = rest[2]
	}
	r := Request{Resource: resource, Name: name}
	switch {
	case sub == "exec" || sub == "attach" || sub == "log":
		r.Verb = sub
	case req.Method == http.MethodGet && name == "":
		r.Verb = "list"
		if w := req.URL.Query().Get("watch"); w == "true" || w == "1" {
			r.Verb = "watch"
		}
	case req.Method == http.MethodGet:
		r.Verb = "get"
	case req.Method == http.MethodPost:
		r.Verb = "create"
	case req.Method == http.MethodPatch:
		r.Verb = "patch"
		if mt, _, _ := mime.ParseMediaType(req.Header.Get("Content-Type")); mt == "application/apply-patch+yaml" || mt == "application/apply-patch+cbor" {
			r.Verb = "apply"
		}
	case req.Method == http.MethodPut:
		r.Verb = "update"
	case req.Method == http.MethodDelete && name == "":
		r.Verb = "deletecollection"
	case req.Method == http.MethodDelete:
		r.Verb = "delete"
	default:
		r.Verb = "other"
	}
	r.Tenant = c.tenantRequest(r)
	return r
}

// tenantRequest: a request on a resource the tenant files use, except the
// run's own objects of a resource both use (a run object is created, or
// named with the run-name prefix).
func (c *Counter) tenantRequest(r Request) bool {
	if !c.tenant[r.Resource] {
		return false
	}
	if c.run[r.Resource] && (r.Verb == "create" || strings.HasPrefix(r.Name, policy.RunNamePrefix)) {
		return false
	}
	return true
}

// Summary is what a set of requests amounts to.
type Summary struct {
	Total  int
	Tenant int
	// TooMany counts 429 answers (API Priority and Fairness refusing).
	TooMany int
	// Sequential is the longest chain of requests each sent after the
	// previous one was answered: the round trips an acquire waits for one
	// after the other (a lower bound when requests overlap).
	Sequential int
	ByVerb     map[string]int
}

// Summarize counts reqs.
func Summarize(reqs []Request) Summary {
	s := Summary{Total: len(reqs), ByVerb: map[string]int{}}
	for _, r := range reqs {
		s.ByVerb[r.Verb]++
		if r.Tenant {
			s.Tenant++
		}
		if r.Status == 429 {
			s.TooMany++
		}
	}
	s.Sequential = longestChain(reqs)
	return s
}

// longestChain is the largest set of pairwise non-overlapping requests
// (earliest end first), which is the longest chain in their interval order.
func longestChain(reqs []Request) int {
	rs := append([]Request(nil), reqs...)
	sort.Slice(rs, func(i, j int) bool { return rs[i].End.Before(rs[j].End) })
	n := 0
	var last time.Time
	for _, r := range rs {
		if n == 0 || !r.Start.Before(last) {
			n++
			last = r.End
		}
	}
	return n
}

// verbOrder is the order verbs are printed in.
var verbOrder = []string{"discovery", "get", "list", "watch", "create", "apply", "patch", "update", "delete", "deletecollection", "exec", "attach", "log", "other"}

// Verbs formats ByVerb as "get 2, create 3".
func (s Summary) Verbs() string {
	var out []string
	for _, v := range verbOrder {
		if n := s.ByVerb[v]; n > 0 {
			out = append(out, v+" "+itoa(n))
		}
	}
	return strings.Join(out, ", ")
}
