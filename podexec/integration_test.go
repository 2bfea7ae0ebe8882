package podexec

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/paperclip-k8s/paperclip-k8s/internal/devcluster"
	"github.com/paperclip-k8s/paperclip-k8s/internal/execnode"
)

// TestIntegrationMatrix runs the stream matrix THROUGH a real kube-apiserver
// (internal/devcluster): the pod runs on the kwok node, whose kubelet
// endpoint is an execnode that speaks only what a kubelet speaks (SPDY and
// WebSocket v1–v4). WebSocket v5 clients are therefore translated to SPDY by
// the API server, as in a real cluster. Skipped (failed with CI=true) when
// the control-plane binaries are missing; skipped with -short.
func TestIntegrationMatrix(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test (starts a control plane)")
	}
	node := execnode.New(execnode.Options{Root: t.TempDir(), KubeletProtocolsOnly: true})
	port, err := node.Start(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(node.Close)
	cluster := devcluster.StartT(t, devcluster.Options{Nodes: true, KubeletPort: port})
	ns := devcluster.NewNamespace(t, cluster, nil)

	const pod, container = "agent-pod", "agent"
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	kube := cluster.Kube()
	_, err = kube.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: pod},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: container, Image: "busybox", Command: []string{"sleep", "infinity"},
		}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := devcluster.WaitPod(ctx, kube, ns, pod, func(p *corev1.Pod) bool {
		return p != nil && p.Status.Phase == corev1.PodRunning
	}); err != nil {
		t.Fatal(err)
	}

	tg := target{
		executor: func(tb testing.TB, tr Transport) *Executor {
			e, err := NewExecutor(cluster.RESTConfig(), Options{Transport: tr})
			if err != nil {
				tb.Fatal(err)
			}
			return e
		},
		base: Request{Namespace: ns, Pod: pod, Container: container},
		wantTransport: map[Transport]string{
			TransportWebSocket: "websocket",
			TransportSPDY:      "spdy",
			TransportAuto:      "websocket", // the API server speaks v5
		},
	}
	runMatrix(t, tg, []Transport{TransportWebSocket, TransportSPDY, TransportAuto})

	t.Run("tty", func(t *testing.T) {
		ttg := ttyTarget{executor: tg.executor, ns: ns, pod: pod, container: container}
		for _, tr := range []Transport{TransportWebSocket, TransportSPDY} {
			t.Run(tr.String(), func(t *testing.T) { testTTY(t, ttg, tr, tr.String()) })
		}
	})

	t.Run("errors", func(t *testing.T) {
		is := is.New(t)
		ex := tg.executor(t, TransportAuto)
		r := tg.req("true")
		r.Env = map[string]string{"TOKEN": secretEnv}
		r.Pod = "no-such-pod"
		res, err := ex.Run(ctx, r)
		is.True(errors.Is(err, ErrTransport))
		is.True(apierrors.IsNotFound(err)) // the API server's status is kept (WebSocket)
		is.True(strings.Contains(err.Error(), "not found"))
		is.True(res.ExitCode == nil)
		assertNoSecrets(t, err)

		_, err = tg.executor(t, TransportSPDY).Run(ctx, r)
		is.True(errors.Is(err, ErrTransport))
		is.True(strings.Contains(err.Error(), "not found")) // SPDY: message only
		assertNoSecrets(t, err)

		r = tg.req("true")
		r.Container = "no-such-container"
		_, err = ex.Run(ctx, r)
		is.True(err != nil)
	})

	t.Run("logs", func(t *testing.T) {
		is := is.New(t)
		is.NoErr(node.WriteLog(ns, pod, container, []byte("hello\nworld\n")))
		body, err := kube.CoreV1().Pods(ns).GetLogs(pod, &corev1.PodLogOptions{Container: container}).DoRaw(ctx)
		is.NoErr(err)
		is.Equal(string(body), "hello\nworld\n")
		tail := int64(1)
		body, err = kube.CoreV1().Pods(ns).GetLogs(pod, &corev1.PodLogOptions{Container: container, TailLines: &tail}).DoRaw(ctx)
		is.NoErr(err)
		is.Equal(string(body), "world\n")
	})
}
