package podexec

import (
	"net/url"
	"sort"
	"strconv"
	"strings"
)

// minScrubLen is the shortest env value scrubbed from free text: shorter
// values cannot be told apart from ordinary words. The exec URL's query, which
// holds every value, is always scrubbed as a whole.
const minScrubLen = 4

const redacted = "[REDACTED]"

// redactor removes secrets from error text.
type redactor struct {
	secrets []string // longest first
}

func newRedactor(u *url.URL, env map[string]string) *redactor {
	seen := map[string]bool{}
	var s []string
	add := func(v string) {
		if len(v) >= minScrubLen && !seen[v] {
			seen[v] = true
			s = append(s, v)
		}
	}
	if u != nil && u.RawQuery != "" {
		add("?" + u.RawQuery)
		add(u.RawQuery)
	}
	for _, v := range env {
		if len(v) < minScrubLen {
			continue
		}
		add(v)
		add(url.QueryEscape(v))
		add(url.PathEscape(v))
		add(ShellQuote(v))
		q := strconv.Quote(v)
		add(q[1 : len(q)-1])
	}
	sort.Slice(s, func(i, j int) bool { return len(s[i]) > len(s[j]) })
	return &redactor{secrets: s}
}

func (r *redactor) scrub(msg string) string {
	for _, v := range r.secrets {
		msg = strings.ReplaceAll(msg, v, redacted)
	}
	return msg
}
