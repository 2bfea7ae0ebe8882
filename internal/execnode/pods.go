package execnode

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// Pods: what a kubelet knows about the pods it runs.
//
// Without WatchPods the node knows no pods: commands of a pod run in
// <Root>/<namespace>/<pod> (or <Root>/.pods/<uid> when the exec path carries
// the uid), which is what lets unit tests point client-go straight at it.
//
// With WatchPods the node asks the API server which pod a request is for,
// as a kubelet does (the API server's exec path names the pod, not its
// UID), and keeps a pod's files by UID: <Root>/.pods/<uid> (cwd and HOME of
// every command; namespaces cannot start with '.'), so a replacement pod
// with the same name starts empty, like a real emptyDir. It watches its pods
// and, when a pod is deleted (gone from the API server) or ends (phase
// Succeeded or Failed: its containers are gone), SIGKILLs every process of
// that pod: the process groups of running execs, and what is left of
// finished ones (background children). A deleted pod's directory is removed.
// An exec for a pod that does not exist, or whose UID is not the one in the
// exec path, fails.

// podState is what the node tracks per pod key (the pod UID, or
// "<namespace>/<pod>" without WatchPods).
type podState struct {
	running  map[int]struct{} // process groups of execs still running
	finished map[int]struct{} // process groups of execs that returned (members may remain)
	ended    bool             // containers gone: no more execs, processes killed
	gone     bool             // deleted from the API server: directory removed
}

func (n *Node) podStateLocked(key string) *podState {
	ps := n.podsByKey[key]
	if ps == nil {
		ps = &podState{running: map[int]struct{}{}, finished: map[int]struct{}{}}
		n.podsByKey[key] = ps
	}
	return ps
}

// PodDir returns <Root>/.pods/<uid>, the directory of the pod with that UID
// (its commands' cwd and HOME once the node watches pods), creating it if it
// does not exist (best effort). It panics if uid is not a valid UID.
func (n *Node) PodDir(uid types.UID) string {
	if !validName(string(uid)) {
		panic(fmt.Sprintf("execnode: invalid pod UID %q", uid))
	}
	d := filepath.Join(n.Root(), ".pods", string(uid))
	_ = os.MkdirAll(d, 0o755)
	return d
}

// WatchPods makes the node a kubelet of nodeName for the pods the API
// server behind kube binds there (see above). ctx bounds the initial sync
// only; the watch runs until StopWatchingPods or Close.
func (n *Node) WatchPods(ctx context.Context, kube kubernetes.Interface, nodeName string) error {
	n.mu.Lock()
	if n.kube != nil {
		n.mu.Unlock()
		return errors.New("execnode: already watching pods")
	}
	if n.closed {
		n.mu.Unlock()
		return errors.New("execnode: closed")
	}
	n.mu.Unlock()
	factory := informers.NewSharedInformerFactoryWithOptions(kube, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = "spec.nodeName=" + nodeName }))
	inf := factory.Core().V1().Pods().Informer()
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		UpdateFunc: func(_, obj any) {
			if p, ok := obj.(*corev1.Pod); ok && (p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed) {
				n.podEnded(p, false)
			}
		},
		DeleteFunc: func(obj any) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			if p, ok := obj.(*corev1.Pod); ok {
				n.podEnded(p, true)
			}
		},
	}); err != nil {
		return fmt.Errorf("execnode: %w", err)
	}
	stop := make(chan struct{})
	factory.Start(stop)
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		close(stop)
		factory.Shutdown()
		return fmt.Errorf("execnode: pods of node %s not synced: %w", nodeName, ctx.Err())
	}
	n.mu.Lock()
	n.kube = kube
	n.stopWatch = func() {
		close(stop)
		factory.Shutdown()
	}
	n.mu.Unlock()
	n.logf("watching the pods of node %s", nodeName)
	return nil
}

// StopWatchingPods stops the watch WatchPods started (e.g. before the API
// server stops, so the watch does not log connection errors); the node
// keeps resolving pods through the API server. Close calls it too.
func (n *Node) StopWatchingPods() {
	n.mu.Lock()
	stop := n.stopWatch
	n.stopWatch = nil
	n.mu.Unlock()
	if stop != nil {
		stop()
	}
}

// resolvePod returns the key and directory of the pod an exec is for, as
// described above.
func (n *Node) resolvePod(ctx context.Context, ns, pod, uid string) (key, dir string, err error) {
	if uid != "" && !validName(uid) {
		return "", "", fmt.Errorf("execnode: invalid pod UID %q", uid)
	}
	n.mu.Lock()
	kube := n.kube
	n.mu.Unlock()
	if kube == nil {
		if uid != "" {
			return uid, n.PodDir(types.UID(uid)), nil
		}
		return ns + "/" + pod, n.WorkDir(ns, pod), nil
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	p, err := kube.CoreV1().Pods(ns).Get(ctx, pod, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return "", "", fmt.Errorf("pod %s/%s does not exist", ns, pod)
	case err != nil:
		return "", "", fmt.Errorf("execnode: look up pod %s/%s: %w", ns, pod, err)
	case uid != "" && string(p.UID) != uid:
		return "", "", fmt.Errorf("pod %s/%s has UID %s, not %s", ns, pod, p.UID, uid)
	}
	n.mu.Lock()
	ps := n.podsByKey[string(p.UID)]
	ended := ps != nil && (ps.ended || ps.gone)
	n.mu.Unlock()
	if ended {
		return "", "", fmt.Errorf("pod %s/%s (UID %s) has ended: its containers are gone", ns, pod, p.UID)
	}
	return string(p.UID), n.PodDir(p.UID), nil
}

// startedExec records a running exec's process group. It reports false
// when the pod ended meanwhile: the caller must kill the group.
func (n *Node) startedExec(key string, pgid int) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	ps := n.podStateLocked(key)
	ps.running[pgid] = struct{}{}
	return !ps.ended && !ps.gone
}

// finishedExec moves an exec's process group to the finished ones (its
// leader has been reaped; background members may remain).
func (n *Node) finishedExec(key string, pgid int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	ps := n.podStateLocked(key)
	delete(ps.running, pgid)
	if !ps.ended {
		ps.finished[pgid] = struct{}{}
	}
}

// podEnded kills every process of the pod; deleted also removes its
// directory.
func (n *Node) podEnded(p *corev1.Pod, deleted bool) {
	key := string(p.UID)
	n.mu.Lock()
	ps := n.podStateLocked(key)
	if ps.gone || (ps.ended && !deleted) {
		n.mu.Unlock()
		return
	}
	ps.ended = true
	ps.gone = ps.gone || deleted
	running := make([]int, 0, len(ps.running))
	for g := range ps.running {
		running = append(running, g)
	}
	finished := ps.finished
	ps.finished = map[int]struct{}{}
	n.mu.Unlock()

	// A running exec's group leader is not reaped yet, so its id cannot
	// have been reused: kill it directly. Groups of finished execs are
	// killed only where a member still carries this node's marker and the
	// pod's key.
	for _, g := range running {
		_ = killGroup(g)
	}
	killed := n.killMarked(finished, key)
	why := "ended (" + string(p.Status.Phase) + ")"
	if deleted {
		why = "deleted"
	}
	n.logf("pod %s/%s (UID %s) %s: killed %d running exec(s) and %d leftover group(s)", p.Namespace, p.Name, key, why, len(running), killed)
	if deleted {
		_ = os.RemoveAll(filepath.Join(n.Root(), ".pods", key))
	}
}
