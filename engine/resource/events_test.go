package resource_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/matryer/is"

	"github.com/paperclip-k8s/paperclip-k8s/engine/resource"
	"github.com/paperclip-k8s/paperclip-k8s/internal/testutil"
)

// unschedulable is a pod the scheduler gave up on at since, with the
// given annotations and nominatedNodeName.
func unschedulable(t *testing.T, since time.Time, annotations map[string]string, nominated string) []byte {
	t.Helper()
	status := map[string]any{"phase": "Pending", "conditions": []any{map[string]any{
		"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
		"message":            "0/3 nodes are available: 3 Insufficient cpu.",
		"lastTransitionTime": since.UTC().Format(time.RFC3339),
	}}}
	if nominated != "" {
		status["nominatedNodeName"] = nominated
	}
	b, err := json.Marshal(map[string]any{
		"apiVersion": "v1", "kind": "Pod",
		"metadata": map[string]any{"name": "pc-x", "namespace": "ns", "uid": "u-pod", "annotations": annotations},
		"status":   status,
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// event is a core/v1 Event about uid.
func event(t *testing.T, uid, typ, reason, component, message string) []byte {
	t.Helper()
	b, err := json.Marshal(map[string]any{
		"apiVersion": "v1", "kind": "Event",
		"metadata":       map[string]any{"name": "e-" + reason, "namespace": "ns", "creationTimestamp": "2026-11-30T10:00:00Z"},
		"involvedObject": map[string]any{"kind": "Pod", "uid": uid},
		"type":           typ, "reason": reason, "message": message,
		"source":        map[string]any{"component": component},
		"lastTimestamp": "2026-11-30T10:00:01Z",
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// An Unschedulable pod fails only when nothing is coming to help: the
// scheduler preempting (nominatedNodeName) or an autoscaler scaling up
// keep it Pending; an autoscaler that says it cannot, or 15 s with no
// word from one, fail it with the scheduler's message and the fix; the
// operator's annotation waits always, or fails without the 15 s.
func TestUnschedulableFailsWhenNothingHelps(t *testing.T) {
	c := testutil.Catalog(t)
	pod, _ := c.Pod()
	now := time.Date(2026, 11, 30, 10, 0, 10, 0, time.UTC)
	recent, old := now.Add(-10*time.Second), now.Add(-16*time.Second)
	scaleUp := event(t, "u-pod", "Normal", "TriggeredScaleUp", "cluster-autoscaler", "pod triggered scale-up: [{pool-a 1->2 (max: 5)}]")
	nominated := event(t, "u-pod", "Normal", "Nominated", "karpenter", "Pod should schedule on: nodeclaim/default-x8v2k")
	noScaleUp := event(t, "u-pod", "Normal", "NotTriggerScaleUp", "cluster-autoscaler", "pod didn't trigger scale-up: 1 max node group size reached")
	karpenterNo := event(t, "u-pod", "Warning", "FailedScheduling", "karpenter", "Failed to schedule pod, incompatible with nodepool \"default\"")
	schedulerNo := event(t, "u-pod", "Warning", "FailedScheduling", "default-scheduler", "0/3 nodes are available: 3 Insufficient cpu.")
	otherPod := event(t, "u-other", "Normal", "TriggeredScaleUp", "cluster-autoscaler", "pod triggered scale-up")
	for _, c := range []struct {
		name                  string
		obj                   []byte
		events                [][]byte
		state                 resource.State
		reason, event, inHint string
		recheck               time.Time
	}{
		{"within the grace", unschedulable(t, recent, nil, ""), [][]byte{schedulerNo}, resource.Pending, "Unschedulable", "", "15 s", recent.Add(15 * time.Second)},
		{"after the grace", unschedulable(t, old, nil, ""), [][]byte{schedulerNo}, resource.Failed, "Unschedulable", "", "nothing is adding one", time.Time{}},
		{"another pod's scale-up", unschedulable(t, old, nil, ""), [][]byte{otherPod}, resource.Failed, "Unschedulable", "", "paperclip.io/unschedulable=wait", time.Time{}},
		{"preempting", unschedulable(t, old, nil, "node-2"), nil, resource.Pending, "Preempting", "", "preempting", time.Time{}},
		{"cluster-autoscaler scales up", unschedulable(t, old, nil, ""), [][]byte{schedulerNo, noScaleUp, scaleUp}, resource.Pending, "ScaleUp",
			"cluster-autoscaler TriggeredScaleUp: pod triggered scale-up: [{pool-a 1->2 (max: 5)}]", "adding a node", time.Time{}},
		{"karpenter nominates", unschedulable(t, old, nil, ""), [][]byte{nominated}, resource.Pending, "ScaleUp", "karpenter Nominated: Pod should schedule on: nodeclaim/default-x8v2k", "adding a node", time.Time{}},
		{"cluster-autoscaler cannot", unschedulable(t, recent, nil, ""), [][]byte{noScaleUp}, resource.Failed, "Unschedulable",
			"cluster-autoscaler NotTriggerScaleUp: pod didn't trigger scale-up: 1 max node group size reached", "maximum sizes", time.Time{}},
		{"karpenter cannot", unschedulable(t, recent, nil, ""), [][]byte{karpenterNo}, resource.Failed, "Unschedulable", `karpenter FailedScheduling: Failed to schedule pod, incompatible with nodepool "default"`, "node groups", time.Time{}},
		{"the operator waits", unschedulable(t, old, map[string]string{"paperclip.io/unschedulable": "wait"}, ""), [][]byte{noScaleUp}, resource.Pending, "Unschedulable", "", "keeps the run waiting", time.Time{}},
		{"the operator fails at once", unschedulable(t, recent, map[string]string{"paperclip.io/unschedulable": "fail"}, ""), nil, resource.Failed, "Unschedulable", "", "nothing is adding one", time.Time{}},
	} {
		t.Run(c.name, func(t *testing.T) {
			is := is.New(t)
			st := pod.EvaluateWith(c.obj, resource.Observed{EventsRead: true, Events: c.events, Now: now})
			is.Equal(st.State, c.state)
			is.Equal(st.Reason, c.reason)
			is.Equal(st.Message, "0/3 nodes are available: 3 Insufficient cpu.") // the scheduler's
			is.Equal(st.Event, c.event)
			is.Equal(st.Recheck, c.recheck)
			if !strings.Contains(st.Hint, c.inHint) {
				t.Errorf("hint %q does not contain %q", st.Hint, c.inHint)
			}
			if c.event != "" {
				is.True(strings.Contains(st.String(), "3 Insufficient cpu.; "+c.event+"; ")) // message; event; hint
			}
		})
	}
	// Without its events (Evaluate), a rule with event: does not hold, and
	// the status says they are wanted; a scheduled pod wants none.
	st := pod.Evaluate(unschedulable(t, time.Now(), nil, ""))
	is := is.New(t)
	is.Equal(st.Reason, "Unschedulable")
	is.True(st.WantsEvents)
	is.True(!pod.Evaluate([]byte(`{"metadata":{"uid":"u"},"status":{"phase":"Pending","conditions":[{"type":"PodScheduled","status":"True"}]}}`)).WantsEvents)
}

// The Job controller reports a quota refusal only as a FailedCreate
// event on the Job: while the Job has no pod that fails it, with the
// controller's message and the fix.
func TestJobQuotaRefusalIsAnEvent(t *testing.T) {
	is := is.New(t)
	c := testutil.Catalog(t)
	job, _ := c.Get("job")
	obj := []byte(`{"apiVersion":"batch/v1","kind":"Job","metadata":{"name":"pc-x","uid":"u-job","generation":1},"status":{"startTime":"2026-11-30T10:00:00Z"}}`)
	quota := event(t, "u-job", "Warning", "FailedCreate", "job-controller",
		`Error creating: pods "pc-x-7k2lq" is forbidden: exceeded quota: paperclip-quota, requested: pods=1, used: pods=1, limited: pods=1`)
	other := event(t, "u-job", "Warning", "FailedCreate", "job-controller", `Error creating: pods "pc-x-7k2lq" is forbidden: error looking up service account`)
	now := time.Now()
	st := job.EvaluateWith(obj, resource.Observed{EventsRead: true, Events: [][]byte{other, quota}, Now: now})
	is.Equal(st.State, resource.Failed)
	is.Equal(st.Reason, "QuotaExceeded")
	is.True(strings.HasPrefix(st.Message, `Error creating: pods "pc-x-7k2lq" is forbidden: exceeded quota: paperclip-quota`))
	is.Equal(st.Event, "") // the message is the event's
	is.True(strings.Contains(st.String(), "resourceQuota in the environment config"))
	is.Equal(job.EvaluateWith(obj, resource.Observed{EventsRead: true, Events: [][]byte{other}, Now: now}).State, resource.Pending)

	active := []byte(`{"apiVersion":"batch/v1","kind":"Job","metadata":{"name":"pc-x","uid":"u-job","generation":1},"status":{"active":1}}`)
	is.Equal(job.EvaluateWith(active, resource.Observed{EventsRead: true, Events: [][]byte{quota}, Now: now}).State, resource.Pending) // the pod was made after all
}

// A file may test events only when the catalog describes them, after
// needs a condition and a duration, and only one file describes events.
func TestEventRulesAreChecked(t *testing.T) {
	is := is.New(t)
	ev := header + "name: %s\ndescription: d\nscope: event\napi: {group: '', kind: Event, resource: events, versions: [v1]}\nevents: {about: involvedObject.uid, reason: reason, message: message, type: type}\n"
	pod := header + "name: p\ndescription: d\nscope: pod\napi: {group: '', kind: Pod, resource: pods, versions: [v1]}\nhealth: {rules: [%s]}\n"
	load := func(files map[string]string) error {
		fs := fstest.MapFS{}
		for n, d := range files {
			fs[n] = &fstest.MapFile{Data: []byte(d)}
		}
		_, err := resource.Load(fs, ".")
		return err
	}
	err := load(map[string]string{"p.yaml": fmt.Sprintf(pod, "{state: Failed, event: {reason: [X]}}")})
	is.True(err != nil)
	is.True(strings.Contains(err.Error(), "p.yaml: /health/rules/0/event: tests events, but no file in the catalog describes them"))

	err = load(map[string]string{"e.yaml": fmt.Sprintf(ev, "e"), "f.yaml": fmt.Sprintf(ev, "f"),
		"p.yaml": fmt.Sprintf(pod, "{state: Failed, condition: {type: A}, after: 0s}")})
	is.True(err != nil)
	is.True(strings.Contains(err.Error(), "f.yaml: /scope: only one file may describe events (e.yaml does)"))
	is.True(strings.Contains(err.Error(), `p.yaml: /health/rules/0/after: is "0s", not a positive duration such as 30s`))

	err = load(map[string]string{"p.yaml": fmt.Sprintf(pod, "{state: Failed, condition: {type: PodScheduled}, after: 30x}")})
	is.True(err != nil)
	is.True(strings.Contains(err.Error(), "p.yaml: /health/rules/0/after: does not match pattern"))

	err = load(map[string]string{"p.yaml": fmt.Sprintf(pod, "{state: Failed, after: 30s}")})
	is.True(err != nil)
	is.True(strings.Contains(err.Error(), "p.yaml: /health/rules/0: property 'condition' is required, if 'after' property exists"))

	is.NoErr(load(map[string]string{"e.yaml": fmt.Sprintf(ev, "e"), "p.yaml": fmt.Sprintf(pod, "{state: Failed, event: {reason: [X], message: '*quota*'}}")}))
}
