// Package devcluster runs a real Kubernetes control plane for integration
// tests: etcd 3.7.0 and kube-apiserver v1.37.2 and, on request,
// kube-controller-manager, kube-scheduler and kwok v0.8.0 with one fake node,
// plus the stand-in Sandbox controller (package sandboxctl) in-process. No
// containers run: kwok moves pods through their phases.
//
// # Usage
//
// One control plane per test package, one namespace per test:
//
//	var cluster *devcluster.Cluster
//
//	func TestMain(m *testing.M) {
//		devcluster.Main(m, devcluster.Options{Nodes: true, SandboxController: true},
//			func(c *devcluster.Cluster) { cluster = c })
//	}
//
//	func TestSomething(t *testing.T) {
//		ns := devcluster.NewNamespace(t, cluster, nil)
//		kube := cluster.Kube()            // or cluster.RESTConfig(), cluster.KubeconfigPath()
//		...
//	}
//
// StartT starts a private cluster for a single test instead (stopped in
// t.Cleanup). Start/Stop are the underlying calls.
//
// What the cluster provides:
//   - The API server listens on a free 127.0.0.1 port with a self-signed
//     serving certificate (RESTConfig verifies it), authorization RBAC,Node,
//     a static admin token (group system:masters), ServiceAccount tokens
//     signed with a key generated per cluster, and the default admission
//     plugins, so Pod Security admission is enforced: label a namespace
//     pod-security.kubernetes.io/enforce=restricted and non-compliant pods
//     are rejected.
//   - With Options.Nodes: kube-controller-manager runs every default
//     controller (Jobs, ReplicaSets, the garbage collector for ownerReference
//     cascades, namespace deletion, ServiceAccounts), kube-scheduler binds
//     pods to the node NodeName, and kwok (stages in kwok/stages.yaml) makes
//     pods Running and Ready at once. Pods owned by a Job then succeed (after
//     CompleteDelayAnnotation, if set); other pods stay Running. A pod
//     labelled FailLabel=true fails with exit code 1 once Running. Deleted
//     pods vanish at once (no grace period) unless TerminatingForAnnotation
//     keeps them Terminating. Test-only annotations (stages.go) make a pod
//     slow (ReadyAfterAnnotation) or stuck the way a kubelet reports it
//     (ContainerWaitingAnnotation: ErrImagePull/ImagePullBackOff,
//     InvalidImageName, CreateContainerConfigError); a nodeSelector that no
//     node matches makes the real scheduler report it Unschedulable.
//   - The node advertises 127.0.0.1:Options.KubeletPort as its kubelet, so
//     pods/exec and pods/log for its pods reach a server the test runs there
//     (internal/execnode).
//   - With Options.SandboxController: the project's Sandbox CRD
//     (crds/sandbox.yaml, agents.x-k8s.io/v1beta1) and agent-sandbox's own
//     extension CRDs (crds/sandbox{templates,warmpools,claims}.yaml,
//     extensions.agents.x-k8s.io/v1beta1) are installed, and sandboxctl
//     reconciles Sandboxes into pods, and templates, warm pools and claims
//     as the real controller does.
//
// # Binaries
//
// BinDir finds the binaries: $KUBE_TEST_BIN when it holds all five, else
// the directory printed by hack/build-k8s-bins.sh, which builds them from the
// Go module proxy into
// ${XDG_CACHE_HOME:-~/.cache}/paperclip-k8s/kube-bin/v1.37.2-<hash of the
// pinned go.sum files and the script>/. A cold build takes about 7.5 minutes
// on 2 cores (~5 GB of module and build cache); with a warm Go build cache it
// takes ~12 s, and 0 s when the directory exists. Build once before testing:
//
//	export KUBE_TEST_BIN=$(bash hack/build-k8s-bins.sh | tail -1)
//
// Without binaries, tests using Main/StartT/NewNamespace/Require fail when
// CI=true and are skipped with a message otherwise.
//
// # Cost
//
// Measured on 2 cores: etcd + kube-apiserver answer /readyz after ~2.9 s;
// the node stack is Ready ~0.2 s later; the four CRDs and the controller
// add ~2 s (the API server's first write of a new custom resource is slow,
// so Start pays it with a dry-run create of each kind while the node stack
// starts; kube-controller-manager alone waits until the CRDs are
// Established, so that its garbage collector knows their kinds). The
// whole stack uses ~560 MB of RSS (apiserver 290, kcm 112, scheduler 65,
// kwok 53, etcd 41). Stop takes ~1.2 s (mostly the API
// server's graceful shutdown). Every child runs in its own process group with
// Pdeathsig=SIGKILL, so a crashed or timed-out test binary cannot leak them.
// Logs are in Cluster.Dir() (kept when a test failed) or go to Options.Log.
// The temporary directory of a test binary that died without Stop is removed
// by the next Start on the machine.
package devcluster
