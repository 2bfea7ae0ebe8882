package sandboxctl

import (
	"encoding/json"
	"reflect"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// conds builds a condition list in call order. lastTransitionTime is taken
// from the previous condition of the same type when its status is
// unchanged, else it is now (second resolution, as serialised).
type conds struct {
	prev []metav1.Condition
	gen  int64
	now  time.Time
	out  []metav1.Condition
}

func (cs *conds) find(t string) *metav1.Condition {
	for i := range cs.out {
		if cs.out[i].Type == t {
			return &cs.out[i]
		}
	}
	return nil
}

func (cs *conds) set(t string, status metav1.ConditionStatus, reason, message string) {
	ltt := metav1.NewTime(cs.now.UTC().Truncate(time.Second))
	for _, p := range cs.prev {
		if p.Type == t && p.Status == status {
			ltt = p.LastTransitionTime
		}
	}
	c := metav1.Condition{
		Type:               t,
		Status:             status,
		ObservedGeneration: cs.gen,
		LastTransitionTime: ltt,
		Reason:             reason,
		Message:            message,
	}
	if existing := cs.find(t); existing != nil {
		*existing = c
		return
	}
	cs.out = append(cs.out, c)
}

// statusEqual compares two statuses as they serialise.
func statusEqual(a, b sandboxStatus) bool {
	ja, err1 := json.Marshal(a)
	jb, err2 := json.Marshal(b)
	if err1 != nil || err2 != nil {
		return false
	}
	var ma, mb any
	_ = json.Unmarshal(ja, &ma)
	_ = json.Unmarshal(jb, &mb)
	return reflect.DeepEqual(ma, mb)
}
