package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/matryer/is"

	"github.com/paperclip-k8s/paperclip-k8s/internal/devcluster"
)

// On the job backend a pod that will not start fails the run at once:
// the Job says nothing of it (it stays active until its deadline), so the
// wait for the Job reads its pod (job.yaml's pods.failFast). The command
// may wait 90 s, far longer than any of these needs; it answers with the
// pod's reason, not a timeout. The result names the Job, the pod, the
// kubelet's or the scheduler's message and the fix.
func TestJobRunFailsFastOnAPodThatWillNotStart(t *testing.T) {
	none := map[string]any{"nodeSelector": map[string]any{"paperclip-k8s.test/pool": "none-" + randHex(4)}}
	for _, c := range []struct {
		name       string
		config     map[string]any
		annotation map[string]string
		want       []string
	}{
		{"ErrImagePull", nil, map[string]string{devcluster.ContainerWaitingAnnotation: devcluster.WaitingErrImagePull},
			[]string{"Failed/ImagePullBackOff: ", ": Back-off pulling image", "imagePullSecrets"}},
		{"InvalidImageName", nil, map[string]string{devcluster.ContainerWaitingAnnotation: devcluster.WaitingInvalidImageName},
			[]string{"Failed/InvalidImageName: ", ": Failed to apply default image tag", "fix the adapter's runtimeImage"}},
		{"Unschedulable", none, map[string]string{"paperclip.io/unschedulable": "fail"},
			[]string{"Failed/Unschedulable: ", "didn't match Pod's node affinity/selector", "check nodeSelector, runtimeClassName and defaultResources"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			is := is.New(t)
			b, err := json.Marshal(c.annotation)
			is.NoErr(err)
			h := newHooks(t, "job", c.config, workerOpts{env: []string{"PAPERCLIP_K8S_POD_ANNOTATIONS=" + string(b)}})
			l := h.acquire(nil)
			r := h.exec(l, "true", map[string]any{"timeoutMs": 90000})
			t.Logf("stderr: %s", r.Stderr)
			is.True(!r.TimedOut)
			is.Equal(r.code(), 1)
			pods, err := h.podsOf(context.Background(), h.namespace(), l.id())
			is.NoErr(err)
			is.Equal(len(pods), 1) // the Job's one pod, still stuck
			want := append([]string{"Job " + h.namespace() + "/" + l.id(), "Pod " + h.namespace() + "/" + pods[0].Name + ": "}, c.want...)
			for _, w := range want {
				if !strings.Contains(r.Stderr, w) {
					t.Errorf("stderr %q does not contain %q", r.Stderr, w)
				}
			}
		})
	}
}
