package devenv_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/matryer/is"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/remotecommand"
	utilexec "k8s.io/client-go/util/exec"

	"github.com/paperclip-k8s/paperclip-k8s/internal/devcluster"
	"github.com/paperclip-k8s/paperclip-k8s/internal/devenv"
	"github.com/paperclip-k8s/paperclip-k8s/internal/testutil"
)

var (
	env     *devenv.Env
	skipMsg string
)

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	binDir, err := devcluster.BinDir()
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), devcluster.StartTimeout)
		env, err = devenv.Start(ctx, devenv.Options{BinDir: binDir})
		cancel()
	}
	switch {
	case errors.Is(err, devcluster.ErrNoBinaries) && !devcluster.InCI():
		skipMsg = err.Error()
	case err != nil:
		fmt.Fprintf(os.Stderr, "FAIL: devenv: start: %v\n", err)
		return 1
	default:
		defer env.Stop()
	}
	return m.Run()
}

func requireEnv(t *testing.T) {
	t.Helper()
	if env == nil {
		t.Skip(skipMsg)
	}
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

func runningPod(t *testing.T, ctx context.Context, ns, name string) *corev1.Pod {
	t.Helper()
	_, err := env.Kube().CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: "agent", Image: "busybox", Command: []string{"sleep", "infinity"},
		}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p, err := devcluster.WaitPod(ctx, env.Kube(), ns, name, func(p *corev1.Pod) bool { return p != nil && p.Status.Phase == corev1.PodRunning })
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// podExec runs argv in the pod's agent container through the API server's
// pods/exec, as the plugin does.
func podExec(ctx context.Context, ns, pod string, stdout io.Writer, argv ...string) (string, error) {
	req := env.Kube().CoreV1().RESTClient().Post().Resource("pods").Namespace(ns).Name(pod).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{Container: "agent", Command: argv, Stdout: true, Stderr: true}, scheme.ParameterCodec)
	ex, err := remotecommand.NewSPDYExecutor(env.RESTConfig(), "POST", req.URL())
	if err != nil {
		return "", err
	}
	var out, errb bytes.Buffer
	w := io.Writer(&out)
	if stdout != nil {
		w = io.MultiWriter(&out, stdout)
	}
	err = ex.StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: w, Stderr: &errb})
	if err != nil && errb.Len() > 0 {
		err = fmt.Errorf("%w (stderr: %s)", err, strings.TrimSpace(errb.String()))
	}
	return out.String(), err
}

func deleteAndWaitGone(t *testing.T, ctx context.Context, ns, name string) {
	t.Helper()
	if err := env.Kube().CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := devcluster.WaitPod(ctx, env.Kube(), ns, name, func(p *corev1.Pod) bool { return p == nil }); err != nil {
		t.Fatal(err)
	}
}

// A pod's files are its own: a replacement pod with the same name starts
// with an empty directory, like a real emptyDir.
func TestReplacementPodStartsEmpty(t *testing.T) {
	requireEnv(t)
	is := is.New(t)
	ns := devcluster.NewNamespace(t, env.Cluster, nil)
	ctx := ctxT(t, 60*time.Second)
	old := runningPod(t, ctx, ns, "ws")
	out, err := podExec(ctx, ns, "ws", nil, "/bin/sh", "-c", `echo work > file && mkdir -p sub && pwd && echo "$HOME" && ls -A`)
	is.NoErr(err)
	is.Equal(out, fmt.Sprintf("%[1]s\n%[1]s\nfile\nsub\n", env.Node.PodDir(old.UID)))
	out, err = podExec(ctx, ns, "ws", nil, "cat", "file")
	is.NoErr(err)
	is.Equal(out, "work\n") // the same pod keeps its files

	deleteAndWaitGone(t, ctx, ns, "ws")
	repl := runningPod(t, ctx, ns, "ws")
	is.True(repl.UID != old.UID)
	out, err = podExec(ctx, ns, "ws", nil, "/bin/sh", "-c", `pwd && ls -A`)
	is.NoErr(err)
	is.Equal(out, env.Node.PodDir(repl.UID)+"\n") // empty: nothing of the old pod's
	_, err = podExec(ctx, ns, "ws", nil, "cat", "file")
	var ce utilexec.CodeExitError
	is.True(errors.As(err, &ce)) // cat: file: No such file or directory
	is.Equal(ce.Code, 1)
}

// notify closes ch at the first write.
type notify struct {
	once sync.Once
	ch   chan struct{}
}

func (n *notify) Write(p []byte) (int, error) {
	n.once.Do(func() { close(n.ch) })
	return len(p), nil
}

// Deleting a pod cuts off its running execs (as a container's processes die
// with it) and kills what its earlier execs left in the background.
func TestPodDeletionCutsOffExec(t *testing.T) {
	requireEnv(t)
	is := is.New(t)
	ns := devcluster.NewNamespace(t, env.Cluster, nil)
	ctx := ctxT(t, 60*time.Second)
	runningPod(t, ctx, ns, "busy")

	// A helper left running by an exec that has returned.
	out, err := podExec(ctx, ns, "busy", nil, "/bin/sh", "-c", "nohup sleep 300 >/dev/null 2>&1 & echo $!")
	is.NoErr(err)
	helper, err := strconv.Atoi(strings.TrimSpace(out))
	is.NoErr(err)
	is.True(testutil.Alive(helper))

	// A command still running: it prints its pid, then sleeps.
	started := &notify{ch: make(chan struct{})}
	var res struct {
		out string
		err error
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		res.out, res.err = podExec(ctx, ns, "busy", started, "/bin/sh", "-c", "echo $$; exec sleep 90")
	}()
	select {
	case <-started.ch:
	case <-done:
		t.Fatalf("the exec returned before the pod was deleted: %q, %v", res.out, res.err)
	case <-ctx.Done():
		t.Fatal(ctx.Err())
	}
	is.NoErr(env.Kube().CoreV1().Pods(ns).Delete(ctx, "busy", metav1.DeleteOptions{}))
	select {
	case <-done:
	case <-ctx.Done():
		t.Fatalf("the exec of `sleep 90` still runs after its pod was deleted: %v", ctx.Err())
	}
	t.Logf("exec ended with: %v", res.err)
	is.True(res.err != nil) // not a success
	var ce utilexec.CodeExitError
	if errors.As(res.err, &ce) {
		is.Equal(ce.Code, 137) // SIGKILL, as a container runtime reports it
	}
	pid, err := strconv.Atoi(strings.TrimSpace(res.out))
	is.NoErr(err)
	is.True(!testutil.Alive(pid)) // reaped before the exec returned
	testutil.WaitGone(t, ctx, helper)

	// The pod is gone: an exec for it fails at the API server.
	_, err = podExec(ctx, ns, "busy", nil, "true")
	is.True(err != nil)
}
