package devcluster

// Test-only pod annotations the kwok stages understand (kwok/stages.yaml).
// They make a pod slow or stuck the way a real kubelet reports it, so code
// that waits for pods can be tested against every way a pod fails to start.
// They are read from the pod, so a workload must put them on its pod
// template (a Sandbox's spec.podTemplate.metadata.annotations, a Job's
// spec.template.metadata.annotations). Stuck pods stay stuck until deleted.
const (
	// ReadyAfterAnnotation (a Go duration, e.g. "20s") keeps the pod Pending
	// with every container waiting with reason ContainerCreating (Ready and
	// ContainersReady False/ContainersNotReady "containers with unready
	// status: [<names>]"), then makes it Running and Ready that long after
	// it entered ContainerCreating. The wait restarts if the pod object
	// changes meanwhile.
	ReadyAfterAnnotation = "paperclip-k8s.test/ready-after"

	// ContainerWaitingAnnotation keeps the pod Pending with every container
	// waiting with the reason given as its value:
	//   - WaitingErrImagePull ("ErrImagePull"): the message of a registry's
	//     "not found" ("rpc error: code = NotFound desc = failed to pull and
	//     unpack image ..."); 1 s later ImagePullBackOff with the kubelet's
	//     back-off message ("Back-off pulling image \"<image>\": ErrImagePull:
	//     <pull error>"), 10 s after that ErrImagePull again, and so on.
	//   - WaitingInvalidImageName ("InvalidImageName"): "Failed to apply
	//     default image tag \"<image>\": couldn't parse image name
	//     \"<image>\": invalid reference format".
	//   - WaitingCreateContainerConfigError ("CreateContainerConfigError"):
	//     "secret \"<name>\" not found" for the first envFrom secretRef of
	//     the pod's containers (the kubelet's message when that Secret is
	//     missing), else the kubelet's runAsNonRoot message.
	// Ready and ContainersReady are False/ContainersNotReady; the pod has
	// its IP (the sandbox exists) and PodReadyToStartContainers=True.
	ContainerWaitingAnnotation = "paperclip-k8s.test/container-waiting"
	// ContainerWaitingMessageAnnotation replaces the waiting message of
	// ContainerWaitingAnnotation (the back-off message still wraps it).
	ContainerWaitingMessageAnnotation = "paperclip-k8s.test/container-waiting-message"

	// TerminatingForAnnotation keeps a deleted pod Terminating (its
	// deletionTimestamp set, its status unchanged) for a Go duration, or
	// until its deletionTimestamp when the value is "grace" (the whole grace
	// period, like a kubelet whose container ignores SIGTERM). Without it a
	// deleted pod is removed at once. The wait restarts whenever the pod
	// changes: patching the annotation to "0s" ends a long one.
	TerminatingForAnnotation = "paperclip-k8s.test/terminating-for"
)

// An Unschedulable pod needs no annotation: a nodeSelector that no node
// matches (the config's nodeSelector) makes the real kube-scheduler set
// PodScheduled=False/Unschedulable with its message; labelling NodeName to
// match brings "a new node" (the scheduler retries on the node change).
// A node autoscaler is played by the test: it records the autoscaler's
// event about the pod (cluster-autoscaler TriggeredScaleUp or
// NotTriggerScaleUp, Karpenter Nominated) with the core/v1 Events API.

// The values of ContainerWaitingAnnotation, named after the kubelet's
// container waiting reasons.
const (
	WaitingErrImagePull               = "ErrImagePull"
	WaitingInvalidImageName           = "InvalidImageName"
	WaitingCreateContainerConfigError = "CreateContainerConfigError"
)
