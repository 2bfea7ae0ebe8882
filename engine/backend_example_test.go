package engine_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/matryer/is"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/paperclip-k8s/paperclip-k8s/engine"
	"github.com/paperclip-k8s/paperclip-k8s/engine/enginetest"
	"github.com/paperclip-k8s/paperclip-k8s/engine/resource"
	"github.com/paperclip-k8s/paperclip-k8s/internal/testutil"
	"github.com/paperclip-k8s/paperclip-k8s/resources"
)

// testdata/backends/jobexec.yaml, the README's "Writing a backend" example,
// is written with only documented features: it loads (schema and value
// paths checked), renders with the agent pod fragment, is awaited through
// the job file's rules ($use) and the generic ones, finds its pod by the
// first selector that matches, and is released, with no Go change.
func TestWrittenBackendLifecycle(t *testing.T) {
	is := is.New(t)
	f := newFixture(t, "standard-job")
	e := f.e
	ctx := context.Background()
	b := f.file(t, "jobexec")
	is.Equal(b.Backend.Mode, resource.ModeExec)

	w := f.create(t, b, nil)
	is.Equal(w.GetKind(), "Job")
	is.Equal(w.GetAPIVersion(), "batch/v1")
	deadline, _, _ := unstructured.NestedInt64(w.Object, "spec", "activeDeadlineSeconds")
	is.Equal(deadline, int64(3600)) // run.deadlineSeconds
	pod, _, _ := unstructured.NestedMap(w.Object, "spec", "template", "spec")
	is.Equal(pod["restartPolicy"], "Never")                    // bound by $use ... with
	is.Equal(pod["serviceAccountName"], "paperclip-tenant-sa") // from the fragment
	is.Equal(pod["containers"].([]any)[0].(map[string]any)["command"], []any{"/usr/bin/tini", "--", "/bin/sh", "-c", "sleep infinity"})

	waitCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	done := f.waitAsync(waitCtx, b, w, 1, resource.Ready)
	enginetest.SetStatus(t, e, w, b, map[string]any{"active": int64(1), "ready": int64(0)})
	cur := enginetest.SetStatus(t, e, w, b, map[string]any{"active": int64(1), "ready": int64(1)})
	r := <-done
	is.NoErr(r.err)
	is.Equal(r.st.State, resource.Ready)
	is.Equal(r.st.Reason, "PodReady") // the job file's rule

	// The first selector finds nothing (the pod lacks the controller-uid
	// label); the second, a gjson path with an escaped dot, finds it.
	podSpec, _ := f.c.Pod()
	res, err := e.Resolve(podSpec)
	is.NoErr(err)
	ctrl := true
	p := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "v1", "kind": "Pod",
		"metadata": map[string]any{"name": w.GetName() + "-x1", "namespace": "ns1",
			"labels": map[string]any{"paperclip.io/run-id": w.GetLabels()["paperclip.io/run-id"]}},
		"status": map[string]any{"phase": "Running", "conditions": []any{map[string]any{"type": "Ready", "status": "True"}}},
	}}
	p.SetOwnerReferences([]metav1.OwnerReference{{APIVersion: "batch/v1", Kind: "Job", Name: w.GetName(), UID: w.GetUID(), Controller: &ctrl}})
	_, err = e.Dynamic.Resource(res.GVR).Namespace("ns1").Create(ctx, p, metav1.CreateOptions{})
	is.NoErr(err)
	found, err := e.FindPod(ctx, b, cur)
	is.NoErr(err)
	is.Equal(found.GetName(), w.GetName()+"-x1")

	// Deletion is Terminating by the generic rule, before the file's own.
	cur.SetDeletionTimestamp(&metav1.Time{Time: time.Now()})
	is.Equal(e.Status(b, cur).String(), "Terminating/Terminating: the Job is being deleted")

	deleted, err := e.Release(ctx, engine.RefOf(b, w))
	is.NoErr(err)
	is.True(deleted)
	_, err = e.Get(ctx, engine.RefOf(b, w))
	is.True(engine.IsGone(err))
}

// The example in the README's "Writing a backend" is testdata's jobexec:
// it loads, and it is the same backend.
func TestReadmeBackendExampleIsJobexec(t *testing.T) {
	is := is.New(t)
	readme, err := os.ReadFile(filepath.Join("..", "README.md"))
	is.NoErr(err)
	_, section, ok := strings.Cut(string(readme), "\n## Writing a backend\n")
	is.True(ok)
	_, block, ok := strings.Cut(section, "```yaml\n")
	is.True(ok)
	block, _, ok = strings.Cut(block, "```")
	is.True(ok)
	c, err := resource.Load(resources.FS, ".", fstest.MapFS{"jobexec.yaml": {Data: []byte(block)}})
	is.NoErr(err)
	doc, _ := c.Get("jobexec")
	file, _ := testutil.TestCatalog(t).Get("jobexec")
	is.Equal(doc.Template, file.Template)
	is.Equal(doc.Health, file.Health)
	is.Equal(doc.Pods, file.Pods)
	is.Equal(doc.Backend, file.Backend)
	is.Equal(doc.API, file.API)
	is.Equal(doc.Release, file.Release)
}
