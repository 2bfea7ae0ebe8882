package policy

import (
	"strings"
	"testing"

	"github.com/matryer/is"
)

var claimBackends = []string{"sandbox", "sandboxclaim", "job"}

// warmPoolSize and standbyLeases default to a small pool and one standby,
// take 0, and together must leave room in the tenant's pod quota, which
// the pods they keep count against (resources/sandboxclaim.yaml lists them
// under backend.idlePods).
func TestIdlePods(t *testing.T) {
	is := is.New(t)
	cfg, _, _, errs := Validate(map[string]any{"inCluster": true, "backend": "sandboxclaim"}, claimBackends)
	is.Equal(len(errs), 0)
	is.Equal(cfg.WarmPoolSize, 2)
	is.Equal(cfg.StandbyLeases, 1)

	cfg, _, _, errs = Validate(map[string]any{"inCluster": true, "backend": "sandboxclaim", "warmPoolSize": 0, "standbyLeases": 0}, claimBackends)
	is.Equal(len(errs), 0)
	is.Equal(cfg.WarmPoolSize, 0)
	is.Equal(cfg.StandbyLeases, 0)

	_, _, _, errs = Validate(map[string]any{"inCluster": true, "backend": "sandboxclaim", "warmPoolSize": -1}, claimBackends)
	is.Equal(len(errs), 1)
	is.Equal(errs[0].Pointer, "/warmPoolSize")

	// 4 + the default standby = 5 pods without a run: no room left in 5.
	_, _, _, errs = Validate(map[string]any{"inCluster": true, "backend": "sandboxclaim", "warmPoolSize": 4,
		"resourceQuota": map[string]any{"pods": "5"}}, claimBackends)
	is.Equal(len(errs), 1)
	is.Equal(errs[0].Pointer, "/warmPoolSize")
	is.True(strings.Contains(errs[0].Message, `(warmPoolSize 4 + standbyLeases 1 (the default)) are not fewer than the tenant ResourceQuota's pods "5"`))
	is.True(strings.Contains(errs[0].Message, "lower warmPoolSize or standbyLeases, or raise resourceQuota"))

	_, _, _, errs = Validate(map[string]any{"inCluster": true, "backend": "sandboxclaim", "warmPoolSize": 4, "standbyLeases": 0,
		"resourceQuota": map[string]any{"pods": "5"}}, claimBackends)
	is.Equal(len(errs), 0)

	// Another backend keeps no pods without a run: the rule does not apply.
	_, _, _, errs = Validate(map[string]any{"inCluster": true, "backend": "sandbox", "warmPoolSize": 5,
		"resourceQuota": map[string]any{"pods": "5"}}, claimBackends)
	is.Equal(len(errs), 0)

	// What the loaded catalog says wins over the shipped files.
	_, _, _, errs = Validate(map[string]any{"inCluster": true, "backend": "sandbox", "standbyLeases": 5,
		"resourceQuota": map[string]any{"pods": "5"}}, claimBackends, WithBackendIdlePods(map[string][]string{"sandbox": {"/standbyLeases"}}))
	is.Equal(len(errs), 1)
	is.Equal(errs[0].Pointer, "/standbyLeases")
}
