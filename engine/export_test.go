package engine

import "time"

// SetGrantBackoff replaces the waits of the Forbidden retry after a grant
// (tests only); the returned func restores them.
func SetGrantBackoff(d ...time.Duration) (restore func()) {
	old := grantBackoff
	grantBackoff = d
	return func() { grantBackoff = old }
}
