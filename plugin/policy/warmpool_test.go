package policy

import (
	"strings"
	"testing"

	"github.com/matryer/is"
)

var claimBackends = []string{"sandbox", "sandboxclaim", "job"}

// warmPoolSize defaults to a small pool, takes 0 (always cold), and must
// leave room in the tenant's pod quota, which warm pods count against.
func TestWarmPoolSize(t *testing.T) {
	is := is.New(t)
	cfg, _, _, errs := Validate(map[string]any{"inCluster": true, "backend": "sandboxclaim"}, claimBackends)
	is.Equal(len(errs), 0)
	is.Equal(cfg.WarmPoolSize, 2)

	cfg, _, _, errs = Validate(map[string]any{"inCluster": true, "backend": "sandboxclaim", "warmPoolSize": 0}, claimBackends)
	is.Equal(len(errs), 0)
	is.Equal(cfg.WarmPoolSize, 0)

	_, _, _, errs = Validate(map[string]any{"inCluster": true, "backend": "sandboxclaim", "warmPoolSize": -1}, claimBackends)
	is.Equal(len(errs), 1)
	is.Equal(errs[0].Pointer, "/warmPoolSize")

	_, _, _, errs = Validate(map[string]any{"inCluster": true, "backend": "sandboxclaim", "warmPoolSize": 5,
		"resourceQuota": map[string]any{"pods": "5"}}, claimBackends)
	is.Equal(len(errs), 1)
	is.Equal(errs[0].Pointer, "/warmPoolSize")
	is.True(strings.Contains(errs[0].Message, `is not smaller than the tenant ResourceQuota's pods "5"`))
	is.True(strings.Contains(errs[0].Message, "lower warmPoolSize, or raise resourceQuota"))

	// Another backend keeps no pool: the quota rule does not apply.
	_, _, _, errs = Validate(map[string]any{"inCluster": true, "backend": "sandbox", "warmPoolSize": 5,
		"resourceQuota": map[string]any{"pods": "5"}}, claimBackends)
	is.Equal(len(errs), 0)
}
