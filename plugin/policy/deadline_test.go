package policy

import (
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"
)

func TestLeaseDeadline(t *testing.T) {
	now := time.Date(2026, 9, 30, 12, 0, 0, 500_000_000, time.UTC) // half a second past
	tests := []struct {
		name      string
		requested string
		lifetime  int
		want      time.Time
		errHas    string
	}{
		{name: "no request: now + lifetime, rounded down", lifetime: 86400, want: time.Date(2026, 10, 1, 12, 0, 0, 0, time.UTC)},
		{name: "blank request", requested: "  ", lifetime: 3600, want: time.Date(2026, 9, 30, 13, 0, 0, 0, time.UTC)},
		{name: "earlier request wins", requested: "2026-09-30T12:10:00Z", lifetime: 86400, want: time.Date(2026, 9, 30, 12, 10, 0, 0, time.UTC)},
		{name: "later request is capped", requested: "2026-10-05T00:00:00Z", lifetime: 3600, want: time.Date(2026, 9, 30, 13, 0, 0, 0, time.UTC)},
		{name: "offset zone", requested: "2026-09-30T14:10:00+02:00", lifetime: 86400, want: time.Date(2026, 9, 30, 12, 10, 0, 0, time.UTC)},
		{name: "fraction rounded down, never extended", requested: "2026-09-30T12:10:00.999Z", lifetime: 86400, want: time.Date(2026, 9, 30, 12, 10, 0, 0, time.UTC)},
		{name: "exactly 30 s left", requested: "2026-09-30T12:00:31Z", lifetime: 86400, want: time.Date(2026, 9, 30, 12, 0, 31, 0, time.UTC)},
		{name: "too close", requested: "2026-09-30T12:00:20Z", lifetime: 86400, errHas: "less than the minimum 30s"},
		{name: "past", requested: "2026-09-30T11:00:00Z", lifetime: 86400, errHas: "is in the past"},
		{name: "no zone", requested: "2026-09-30T13:00:00", lifetime: 86400, errHas: "RFC 3339"},
		{name: "date only", requested: "2026-09-30", lifetime: 86400, errHas: "RFC 3339"},
		{name: "not a time", requested: "tomorrow", lifetime: 86400, errHas: "RFC 3339"},
		{name: "unix seconds", requested: "1790000000", lifetime: 86400, errHas: "RFC 3339"},
		{name: "zero lifetime", lifetime: 0, errHas: "positive"},
		{name: "tiny lifetime", lifetime: 10, errHas: "less than the minimum"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			is := is.New(t)
			got, err := LeaseDeadline(now, tt.requested, tt.lifetime)
			if tt.errHas != "" {
				is.True(err != nil)
				is.True(strings.Contains(err.Error(), tt.errHas))
				is.True(got.IsZero())
				return
			}
			is.NoErr(err)
			is.True(got.Equal(tt.want))
			is.Equal(got.Location(), time.UTC)
			if tt.requested != "" && strings.TrimSpace(tt.requested) != "" {
				req, _ := time.Parse(time.RFC3339Nano, tt.requested)
				is.True(!got.After(req)) // never extends the caller's deadline
			}
		})
	}
}
