package resource

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strconv"
	"time"

	"github.com/tidwall/gjson"
)

// State is what the readiness rules make of an object.
type State string

const (
	// Pending: not ready yet, nothing has failed.
	Pending State = "Pending"
	// Ready: usable (a pod to exec into, a running job).
	Ready State = "Ready"
	// Succeeded: finished well; terminal.
	Succeeded State = "Succeeded"
	// Failed: finished badly or cannot become ready; terminal.
	Failed State = "Failed"
	// Terminating: being deleted; terminal for a waiter.
	Terminating State = "Terminating"
)

// Terminal reports whether an object in this state will not become Ready.
func (s State) Terminal() bool { return s == Succeeded || s == Failed || s == Terminating }

// Status is the evaluation of an object against its resource's rules.
type Status struct {
	State   State
	Reason  string
	Message string
	// Hint says what to do about this state (the rule's hint).
	Hint string
	// Event is the event that made the rule hold ("<source> <reason>:
	// <message>"), when the message is not already the event's.
	Event string
	// Recheck, when set, is when a rule with after comes due: the state
	// may change then without any change to the object.
	Recheck time.Time
	// WantsEvents says that the object's events were not read and a rule
	// that tests them held in every other way: read them and evaluate
	// again (a waiter reads events only for the objects that want them).
	WantsEvents bool
}

func (s Status) String() string {
	out := string(s.State)
	if s.Reason != "" {
		out += "/" + s.Reason
	}
	if s.Message != "" {
		out += ": " + s.Message
	}
	if s.Event != "" {
		out += "; " + s.Event
	}
	if s.Hint != "" {
		out += "; " + s.Hint
	}
	return out
}

// Evaluate applies the resource's readiness rules to an object (as JSON),
// now and without its events (rules with event: do not hold).
func (s *Resource) Evaluate(obj []byte) Status {
	return s.EvaluateWith(obj, Observed{Now: time.Now()})
}

// EvaluateWith applies the resource's readiness rules to an object (as
// JSON) with what else was observed: its events and the time. A condition
// counts only when its observedGeneration, if any, is not older than the
// object's metadata.generation.
func (s *Resource) EvaluateWith(obj []byte, o Observed) Status {
	if s.Health == nil {
		return Status{State: Ready, Reason: "NoRules"}
	}
	doc := gjson.ParseBytes(obj)
	if st, ok := s.generic(doc); ok {
		return st
	}
	generation := doc.Get("metadata.generation")
	var recheck time.Time
	wants := false
	for _, rule := range s.Health.Rules {
		ok, _ := matchAll(rule.Match, obj)
		if !ok {
			continue
		}
		var cond gjson.Result
		if rule.Condition != nil {
			cond = findCondition(doc.Get("status.conditions"), generation, *rule.Condition)
			if !cond.Exists() {
				continue
			}
		}
		var ev event
		if rule.Event != nil {
			if !o.EventsRead {
				wants = true
				continue
			}
			if s.catalog == nil {
				continue
			}
			if ev, ok = s.catalog.matchEvent(rule.Event, doc.Get("metadata.uid").String(), o.Events); !ok {
				continue
			}
		}
		if due, ok := comesDue(rule, cond); ok && o.Now.Before(due) {
			if recheck.IsZero() || due.Before(recheck) {
				recheck = due
			}
			continue
		}
		st := Status{State: rule.State, Hint: rule.Hint, Recheck: recheck, WantsEvents: wants}
		st.Reason = first(doc.Get(rule.ReasonFrom).String(), rule.Reason, cond.Get("reason").String(), ev.reason)
		st.Message = first(doc.Get(rule.MessageFrom).String(), rule.Message, cond.Get("message").String(), ev.message)
		if rule.Event != nil && st.Message != ev.message {
			st.Event = ev.String()
		}
		return st
	}
	return Status{State: Pending, Reason: "NoRuleMatched", Recheck: recheck, WantsEvents: wants}
}

// comesDue is when a rule with after starts to hold: its condition's
// lastTransitionTime plus after. Without a lastTransitionTime to count
// from, the rule holds at once.
func comesDue(rule Rule, cond gjson.Result) (time.Time, bool) {
	if rule.After == "" {
		return time.Time{}, false
	}
	d, err := time.ParseDuration(rule.After)
	if err != nil {
		return time.Time{}, false
	}
	since, err := time.Parse(time.RFC3339, cond.Get("lastTransitionTime").String())
	if err != nil {
		return time.Time{}, false
	}
	return since.Add(d), true
}

// generic applies the rules every object follows before its file's own
// (kstatus's checkGenericProperties): an object being deleted is
// Terminating, and one whose controller has not yet observed its latest
// spec (status.observedGeneration older than metadata.generation) is
// Pending, whatever its conditions say.
func (s *Resource) generic(doc gjson.Result) (Status, bool) {
	kind := "object"
	if s.API != nil {
		kind = s.API.Kind
	}
	if doc.Get("metadata.deletionTimestamp").Exists() {
		return Status{State: Terminating, Reason: "Terminating", Message: "the " + kind + " is being deleted"}, true
	}
	gen, seen := doc.Get("metadata.generation"), doc.Get("status.observedGeneration")
	if gen.Exists() && seen.Exists() && seen.Int() < gen.Int() {
		return Status{State: Pending, Reason: "LatestGenerationNotObserved",
			Message: fmt.Sprintf("the %s's controller has observed generation %d, not yet %d", kind, seen.Int(), gen.Int())}, true
	}
	return Status{}, false
}

func first(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}

func findCondition(conds, generation gjson.Result, m ConditionMatch) gjson.Result {
	var found gjson.Result
	conds.ForEach(func(_, c gjson.Result) bool {
		if c.Get("type").String() != m.Type {
			return true
		}
		if og := c.Get("observedGeneration"); og.Exists() && generation.Exists() && og.Int() < generation.Int() {
			return true // stale: written for an older spec
		}
		if m.Status != "" && c.Get("status").String() != m.Status {
			return true
		}
		if len(m.Reason) > 0 && !contains(m.Reason, c.Get("reason").String()) {
			return true
		}
		found = c
		return false
	})
	return found
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// matchAll reports whether every test holds for the JSON document.
func matchAll(tests []Match, doc []byte) (bool, error) {
	for _, t := range tests {
		ok, err := t.eval(gjson.GetBytes(doc, t.Path))
		if err != nil || !ok {
			return false, err
		}
	}
	return true, nil
}

func (t Match) eval(r gjson.Result) (bool, error) {
	switch {
	case t.Exists != nil:
		return r.Exists() == *t.Exists, nil
	case t.Gt != nil:
		return r.Exists() && r.Num > *t.Gt, nil
	case t.Equals != nil:
		return sameJSON(r, t.Equals)
	}
	blank := !r.Exists() || empty(r.Value()) || r.Raw == "0"
	if t.Empty != nil {
		return blank == *t.Empty, nil
	}
	return !blank, nil
}

func sameJSON(r gjson.Result, want any) (bool, error) {
	if !r.Exists() {
		return false, nil
	}
	b, err := json.Marshal(want)
	if err != nil {
		return false, fmt.Errorf("cannot compare with %v: %w", want, err)
	}
	w := gjson.ParseBytes(b)
	if w.Type == gjson.Number && r.Type == gjson.String {
		// "3100" and 3100 differ.
		return false, nil
	}
	if w.Type == gjson.Number && r.Type == gjson.Number {
		return w.Num == r.Num, nil
	}
	return reflect.DeepEqual(w.Value(), r.Value()), nil
}

// lookupString reads a gjson path as a string; numbers are formatted plainly.
func lookupString(doc []byte, path string) string {
	r := gjson.GetBytes(doc, path)
	if r.Type == gjson.Number {
		return strconv.FormatFloat(r.Num, 'f', -1, 64)
	}
	return r.String()
}
