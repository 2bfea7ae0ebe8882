package resource

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/tidwall/gjson"
)

// UseEvent describes the events the API server records about objects
// (scope: event): the engine reads them while it waits, for health rules
// with an event: match. The provider never creates them.
const UseEvent Use = "event"

// EventFields says where an event keeps what rules test (paths, gjson).
// It is declared once, in the event file (resources/event.yaml).
type EventFields struct {
	// About is the path of the UID of the object the event is about; it
	// is also a field the API server selects events by (a field selector).
	About string `json:"about"`
	// Reason, Message and Type are the paths of the event's reason, its
	// message and its type (Normal or Warning).
	Reason  string `json:"reason"`
	Message string `json:"message"`
	Type    string `json:"type"`
	// Source lists the paths of the component that reported the event;
	// the first one set counts.
	Source []string `json:"source,omitempty"`
	// Time lists the paths of the event's time (RFC 3339), the first one
	// set counts: of the events a rule matches, the newest decides.
	Time []string `json:"time,omitempty"`
}

// EventMatch selects the events about an object that make a health rule
// hold: one is enough.
type EventMatch struct {
	// Reason lists the event reasons that match (any of them).
	Reason []string `json:"reason"`
	// Type is Normal or Warning; empty: either.
	Type string `json:"type,omitempty"`
	// Message is a glob the event's message must match (* is any text).
	Message string `json:"message,omitempty"`
	// Source lists the reporting components that match; empty: any.
	Source []string `json:"source,omitempty"`
}

// Event returns the file that describes events (scope: event).
func (c *Catalog) Event() (*Resource, bool) {
	e := c.Used(UseEvent)
	if len(e) == 0 {
		return nil, false
	}
	return e[0], true
}

// UsesEvents reports whether any of the file's health rules tests events,
// so a waiter must read the object's events.
func (s *Resource) UsesEvents() bool {
	if s.Health == nil {
		return false
	}
	for _, r := range s.Health.Rules {
		if r.Event != nil {
			return true
		}
	}
	return false
}

// EventAbout returns the UID of the object an event (JSON) is about, by
// the catalog's event file ("" without one).
func (c *Catalog) EventAbout(ev []byte) string {
	f, ok := c.Event()
	if !ok {
		return ""
	}
	return gjson.GetBytes(ev, f.Events.About).String()
}

// checkHealth verifies what the schema cannot about health rules and the
// event file: one event file at most; rules with event: need one; after
// is a positive duration.
func (c *Catalog) checkHealth(s *Resource) []error {
	var errs []error
	if s.Use == UseEvent {
		if f, _ := c.Event(); f != s {
			errs = append(errs, &FileError{File: s.File, Pointer: "/scope", Problem: "only one file may describe events (" + f.File + " does)"})
		}
	}
	if s.Health == nil {
		return errs
	}
	for i, r := range s.Health.Rules {
		ptr := fmt.Sprintf("/health/rules/%d", i)
		if r.Event != nil {
			if _, ok := c.Event(); !ok {
				errs = append(errs, &FileError{File: s.File, Pointer: ptr + "/event", Problem: "tests events, but no file in the catalog describes them (scope: event, e.g. resources/event.yaml)"})
			}
		}
		if r.After != "" {
			// The schema requires a condition with it (the time is counted
			// from its lastTransitionTime).
			if d, err := time.ParseDuration(r.After); err != nil || d <= 0 {
				errs = append(errs, &FileError{File: s.File, Pointer: ptr + "/after", Problem: fmt.Sprintf("is %q, not a positive duration such as 30s", r.After)})
			}
		}
	}
	return errs
}

// Observed is what a health rule may test besides the object itself.
type Observed struct {
	// EventsRead says that Events are the events about the object (JSON):
	// a rule with event: holds only when one of them matches. Without
	// them (Evaluate) such a rule does not hold, and the status says
	// whether they were wanted (Status.WantsEvents).
	EventsRead bool
	Events     [][]byte
	// Now is the time a rule's after is measured against.
	Now time.Time
}

// matchEvent returns the newest of the events about the object uid that m
// selects, and whether there is one.
func (c *Catalog) matchEvent(m *EventMatch, uid string, events [][]byte) (event, bool) {
	f, ok := c.Event()
	if !ok {
		return event{}, false
	}
	var found []event
	for _, raw := range events {
		doc := gjson.ParseBytes(raw)
		if doc.Get(f.Events.About).String() != uid {
			continue
		}
		ev := event{
			reason:  doc.Get(f.Events.Reason).String(),
			message: doc.Get(f.Events.Message).String(),
			typ:     doc.Get(f.Events.Type).String(),
			source:  firstSet(doc, f.Events.Source),
		}
		if !contains(m.Reason, ev.reason) || (m.Type != "" && ev.typ != m.Type) || (len(m.Source) > 0 && !contains(m.Source, ev.source)) {
			continue
		}
		if m.Message != "" && !glob(m.Message, ev.message) {
			continue
		}
		ev.at, _ = time.Parse(time.RFC3339Nano, firstSet(doc, f.Events.Time))
		found = append(found, ev)
	}
	if len(found) == 0 {
		return event{}, false
	}
	sort.SliceStable(found, func(i, j int) bool { return found[i].at.After(found[j].at) })
	return found[0], true
}

type event struct {
	reason, message, typ, source string
	at                           time.Time
}

// String is how a status shows the event: "<source> <reason>: <message>".
func (e event) String() string {
	out := e.reason
	if e.source != "" {
		out = e.source + " " + out
	}
	if e.message != "" {
		out += ": " + e.message
	}
	return out
}

func firstSet(doc gjson.Result, paths []string) string {
	for _, p := range paths {
		if v := doc.Get(p).String(); v != "" {
			return v
		}
	}
	return ""
}

// glob reports whether s matches pattern, in which * stands for any text
// (nothing else is special).
func glob(pattern, s string) bool {
	parts := strings.Split(pattern, "*")
	if len(parts) == 1 {
		return s == pattern
	}
	if !strings.HasPrefix(s, parts[0]) {
		return false
	}
	s = s[len(parts[0]):]
	last := parts[len(parts)-1]
	for _, p := range parts[1 : len(parts)-1] {
		i := strings.Index(s, p)
		if i < 0 {
			return false
		}
		s = s[i+len(p):]
	}
	return strings.HasSuffix(s, last)
}
