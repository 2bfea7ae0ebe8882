package plugin

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/matryer/is"

	"github.com/paperclip-k8s/paperclip-k8s/engine/resource"
	"github.com/paperclip-k8s/paperclip-k8s/plugin/policy"
)

// Callers that arrive while a call for their key runs share its result;
// the call runs once.
func TestFlightsRunOneCallPerKey(t *testing.T) {
	is := is.New(t)
	var f flights
	var calls atomic.Int32
	release := make(chan struct{})
	started := make(chan struct{})
	boom := errors.New("boom")
	var wg sync.WaitGroup
	errs := make([]error, 10)
	wg.Add(1)
	go func() {
		defer wg.Done()
		errs[0] = f.do(context.Background(), "k", func() error {
			calls.Add(1)
			close(started)
			<-release
			return boom
		})
	}()
	<-started
	for i := 1; i < 10; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = f.do(context.Background(), "k", func() error { calls.Add(1); return nil })
		}()
	}
	for f.waiting.Load() < 9 { // wait until every other caller waits for the leader
		runtime.Gosched()
	}
	close(release)
	wg.Wait()
	is.Equal(calls.Load(), int32(1)) // the call ran once
	for _, err := range errs {
		is.True(errors.Is(err, boom)) // and every caller got its result
	}
	is.NoErr(f.do(context.Background(), "k", func() error { return nil })) // the key is free again
}

// The tenant key changes with what the tenant files render, not with the
// rest of the config.
func TestTenantKeyReadsOnlyWhatTheTenantFilesRender(t *testing.T) {
	is := is.New(t)
	p, err := New(nil)
	is.NoErr(err)
	specs := p.Catalog.Used(resource.UseTenant)
	key := func(raw map[string]any) string {
		cfg, err := policy.Parse(raw, p.Catalog.BackendNames())
		is.NoErr(err)
		v := p.tenantValues(cfg, "co-1", "paperclip-co-1")
		v["provider"] = map[string]any{"kind": "User", "name": "admin"}
		k, err := tenantKey(specs, "paperclip-co-1", v)
		is.NoErr(err)
		return k
	}
	base := map[string]any{"inCluster": true, "backend": "sandbox"}
	is.Equal(key(base), key(map[string]any{"inCluster": true, "backend": "job"}))
	is.True(key(base) != key(map[string]any{"inCluster": true, "backend": "sandbox", "egressAllowFqdns": []any{"example.com"}}))
}
