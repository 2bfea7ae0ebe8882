package policy

import (
	"fmt"
	"strings"
	"time"
)

// MinLeaseRemaining is the shortest lease LeaseDeadline grants: a requested
// expiry closer than this fails (fail closed), as in the reference.
const MinLeaseRemaining = 30 * time.Second

// LeaseDeadline returns the deadline of a new lease: now+lifetimeSec, or the
// requested expiry when that is earlier — never later than what the caller
// asked for. The result is in UTC, rounded down to a whole second (the
// precision of Kubernetes timestamps, so writing it never extends it).
//
// requestedExpiresAt is optional ("" or blank means none). When given it
// must be an RFC 3339 timestamp with a zone ("Z" or ±hh:mm) at least 30 s
// after now; anything else is an error, and the caller must not create the
// lease. lifetimeSec must be positive.
func LeaseDeadline(now time.Time, requestedExpiresAt string, lifetimeSec int) (time.Time, error) {
	if lifetimeSec <= 0 {
		return time.Time{}, fmt.Errorf("sandboxLifetimeSec must be a positive number of seconds, got %d", lifetimeSec)
	}
	deadline := now.Add(time.Duration(lifetimeSec) * time.Second)
	if req := strings.TrimSpace(requestedExpiresAt); req != "" {
		t, err := parseRFC3339Zoned(req)
		if err != nil {
			return time.Time{}, err
		}
		if t.Before(deadline) {
			deadline = t
		}
	}
	deadline = deadline.UTC().Truncate(time.Second)
	if left := deadline.Sub(now); left < MinLeaseRemaining {
		if requestedExpiresAt != "" && deadline.Before(now) {
			return time.Time{}, fmt.Errorf("requestedExpiresAt %s is in the past (now is %s): refusing to create a lease that is already expired",
				requestedExpiresAt, now.UTC().Format(time.RFC3339))
		}
		return time.Time{}, fmt.Errorf("lease deadline %s leaves %s, less than the minimum %s: ask for a later requestedExpiresAt",
			deadline.Format(time.RFC3339), left.Round(time.Second), MinLeaseRemaining)
	}
	return deadline, nil
}

// parseRFC3339Zoned parses a strict RFC 3339 date-time, which always has a
// zone: "Z" or a numeric offset.
func parseRFC3339Zoned(s string) (time.Time, error) {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("requestedExpiresAt %q is not an RFC 3339 timestamp with a zone, e.g. 2026-09-30T12:00:00Z", s)
	}
	return t, nil
}
