// Package sandboxctl is a small stand-in for the kubernetes-sigs/agent-sandbox
// controller (agents.x-k8s.io/v1beta1 Sandbox, and its extensions below),
// for tests against a real API server (see internal/devcluster). It uses
// client-go informers (list+watch, re-listing when a watch expires),
// rate-limited work queues and per-key timers for shutdownTime; no
// controller-runtime and no sleep loops.
//
// It copies exactly these behaviours of the real controller, as observed in
// /work/shared/research/agent-sandbox-real.md (agent-sandbox main@2fd412d5):
//
//   - The pod is named after the Sandbox, in its namespace, and carries a
//     controller ownerReference {apiVersion: agents.x-k8s.io/v1beta1, kind:
//     Sandbox, controller: true, blockOwnerDeletion: true}. Creates use field
//     manager "sandbox-controller". No finalizer on the Sandbox: deleting it
//     leaves the pod to the garbage collector.
//   - Pod label agents.x-k8s.io/sandbox-name-hash = 32-bit FNV-1a of the
//     Sandbox name as 8 lowercase, zero-padded hex digits (NameHash).
//   - Only spec.podTemplate.metadata.labels/annotations reach the pod (not the
//     Sandbox's own metadata); keys with the prefix agents.x-k8s.io/ or
//     extensions.agents.x-k8s.io/ are dropped. The pod gets the bookkeeping
//     annotations agents.x-k8s.io/propagated-labels and
//     agents.x-k8s.io/propagated-annotations (sorted, comma-joined keys; only
//     when non-empty). A later podTemplate label/annotation change patches the
//     existing pod in place. The pod spec is spec.podTemplate.spec as written.
//   - Annotation agents.x-k8s.io/pod-name=<pod name> on the Sandbox, set by a
//     metadata patch right after the pod is created, before the first status
//     write. The pod is looked up by that annotation, else by the Sandbox
//     name.
//   - status.selector = "agents.x-k8s.io/sandbox-name-hash=<hash>",
//     status.podIPs and status.nodeName from the pod.
//   - Conditions, in this order, each with observedGeneration =
//     metadata.generation and lastTransitionTime kept while the status does
//     not change:
//     Suspended False/NotSuspended "Sandbox is not suspended";
//     PodScheduled mirroring the pod's condition (reason "PodScheduled" when
//     the pod gives none; Unknown/PodSchedulingUnknown "Pod has not reported a
//     PodScheduled condition yet" when it has none), present only while a pod
//     exists;
//     Ready False/DependenciesNotReady "Pod exists with phase: <phase>" (also
//     "Pod is Running but not Ready", "Pod is Ready but has no podIPs yet")
//     until the pod is Running, Ready and has an IP, then
//     True/DependenciesReady "Pod is Ready";
//     for a terminal pod Ready False/PodFailed "Pod failed" or
//     False/PodSucceeded "Pod completed successfully" plus Finished True with
//     the same reason and message. A terminal pod is not recreated.
//   - A pod deleted while the Sandbox is live is recreated with the same
//     name, in the real controller's order: first a metadata patch removes
//     the pod-name annotation (the status is not written, so a Ready=True
//     Sandbox stays Ready=True with no pod), then the pod is created, the
//     annotation set again, and only then the status is written (Ready=False
//     "Pod exists with phase: Pending" from the created pod). Controller.Hold
//     stops it inside that sequence (after the annotation is cleared, or
//     after the replacement is created) until the test releases it, so a
//     test can act while the stale Ready=True lasts.
//   - While the pod is Terminating (deletionTimestamp set; see
//     devcluster.TerminatingForAnnotation for a pod that stays so) the
//     Sandbox keeps reporting it as it is: Ready stays True, the annotation
//     stays, nothing is recreated until the pod is gone.
//   - Pods are mapped by controller UID: pods carrying the name-hash label
//     and controlled by the Sandbox. A pod tracked by the annotation that no
//     longer exists clears the annotation (also outside the sequence above).
//     More than one controlled pod: Ready False/MultiplePods "multiple Pods
//     (N) are controlled by this Sandbox; refusing to choose or create a
//     Pod", PodScheduled Unknown/PodSchedulingUnknown "Pod state is unknown.
//     Pod scheduling cannot be determined", podIPs and nodeName cleared, no
//     pod created; and a Warning event (events.k8s.io/v1, reason
//     MultiplePods, action Reconciling, reportingController
//     sandbox-controller, note = the message) once per entry into the state
//     (after the status write that enters it). It clears when the extra
//     pods are gone.
//   - shutdownTime reached: first a status write with Ready
//     False/SandboxExpired "Sandbox has expired" (PodScheduled removed, other
//     conditions and fields kept), then the pod is deleted, then either the
//     Sandbox is deleted (shutdownPolicy Delete) or its status is cut down to
//     the conditions (Retain, the default). No pod is created once expired
//     (also when shutdownTime is already past at creation).
//   - No writes at all while the Sandbox has a deletionTimestamp.
//   - Status goes to the /status subresource as a JSON merge patch (with a
//     resourceVersion precondition, so a stale cache cannot overwrite newer
//     status).
//
// The pod also gets the real controller's extension labels from the
// Sandbox's own labels: agents.x-k8s.io/warm-pool-sandbox (while a
// SandboxWarmPool controls the Sandbox),
// agents.x-k8s.io/sandbox-template-ref-hash (while a pool or claim does)
// and agents.x-k8s.io/created-by; they are removed in place when the
// Sandbox loses them (adoption).
//
// Left out: spec.service (headless Service, status.service/serviceFQDN),
// volumeClaimTemplates (PVCs), operatingMode Suspended (reported as Ready
// False/ReconcilerError instead of suspending), adoption of unowned pods,
// Kubernetes Events other than MultiplePods, metrics.
//
// # Extensions (extensions.agents.x-k8s.io/v1beta1)
//
// When the API server serves the extensions group (devcluster installs
// agent-sandbox's own CRDs, crds/sandbox{templates,warmpools,claims}.yaml),
// the controller also runs templates, warm pools and claims, with the
// behaviour observed in /work/shared/research/agent-sandbox-extensions-real.md
// and read in the real controllers' code (extensions/controllers @2fd412d5):
//
//   - SandboxTemplate: labelled agents.x-k8s.io/sandbox-template-ref-hash =
//     NameHash(name); one NetworkPolicy <name>-network-policy with a
//     controller ownerReference, podSelector on that label, policyTypes
//     Ingress and Egress, the template's networkPolicy rules or the secure
//     default (ingress from the sandbox router only, egress to public
//     addresses only); hand edits reverted; deleted when
//     networkPolicyManagement is Unmanaged. No status.
//   - Pod specs built from a template: automountServiceAccountToken false
//     unless set; with the secure default and no dnsPolicy, dnsPolicy None
//     and nameservers 8.8.8.8, 1.1.1.1.
//   - SandboxWarmPool: spec.replicas members, generateName "<pool>-",
//     controlled by the pool, labels warm-pool-sandbox, sandbox-template-ref-hash,
//     launch-type=warm, created-by=controller, sandbox-template-hash and
//     sandbox-pod-template-hash (FNV-1a of the blueprint's and podTemplate's
//     JSON: the real values), annotation sandbox-template-ref, podTemplate
//     with the pool labels and safe-to-evict "true". Created in slow-start
//     batches (1, 2, 4, ...), refilled when one is claimed or deleted,
//     scaled down by deleting not-Ready then newest members (also through
//     the scale subresource), stale members replaced under updateStrategy
//     Recreate. Members not Ready past the readiness grace period (5m;
//     Controller.SetWarmPoolTimings) are deleted and replaced, or held when
//     their pod is unschedulable, with a Warning WarmPoolNotProgressing
//     event (and a WarmPoolProgressing one when no longer). Status
//     replicas, readyReplicas (omitted when 0), selector,
//     observedGeneration; no conditions.
//   - SandboxClaim: controller-first-observed-at annotation;
//     additionalPodMetadata validated (labels only under sandbox.users.io, annotations not in
//     kubernetes.io, k8s.io, agents.x-k8s.io except safe-to-evict, values of
//     at most 63 bytes) else Ready=False InvalidMetadata with the real
//     message; the oldest Ready member with a Pod IP is adopted (waiting
//     while members have no IP, 500 ms retries up to 2 s after the claim's
//     creation): the sandbox-name annotation by a full update (writing
//     spec.additionalPodMetadata {}, so the generation goes to 2 when it was
//     absent), one optimistically locked merge patch of the Sandbox (the
//     controller ownerReference moves to the claim, pool labels dropped,
//     claim-uid added, podTemplate metadata = template + claim, without
//     safe-to-evict), one status write Ready = the Sandbox's (its
//     lastTransitionTime, the claim's observedGeneration) with
//     sandbox {name, podIPs}, a SandboxAdopted event; the pod keeps its
//     name and UID and is patched in place. Else (empty or absent pool,
//     env or volumeClaimTemplates) the cold path: a Sandbox named like the
//     claim, launch-type=cold, no sandbox-name annotation, SandboxProvisioned
//     event, Ready SandboxNotReady then the Sandbox's. env per
//     envVarsInjectionPolicy (EnvVarsInjectionRejected, ReconcilerError on an
//     override under Allowed), volumeClaimTemplates per
//     volumeClaimTemplatesPolicy (VolumeClaimTemplatesError). Missing pool
//     or template: WarmPoolNotFound / TemplateNotFound, re-reconciled when
//     they appear. Lifecycle: at shutdownTime (or ttlSecondsAfterFinished
//     after the mirrored Finished) Ready=False ClaimExpired first, then
//     Delete / DeleteForeground delete the claim, Retain deletes only the
//     Sandbox and empties status.sandbox. A bound Sandbox that disappears
//     makes the claim rebind (warm, else cold) with Ready staying True.
//     Finished and SandboxExpired are mirrored. claim-first-ready-at is set
//     once.
//
// Events are events.k8s.io/v1, sent in the background as the real
// recorder sends them. The workers are 8 for Sandboxes and 8 for the
// extensions (the real controller: 100 Sandbox, 50 claim workers).
//
// Differences from the real controller: claim-first-ready-at is never
// overwritten with "unknown" (a race there); ClaimExpired "Claim expired"
// is recorded once per claim (the real one: once per pass that sees it);
// warm candidates are taken oldest first from the informer cache (the real
// one keeps a queue and prefers nodes); no jitter on the post-grace
// requeue; no --sandbox-warm-pool-* rate limits or replenish delay; no
// allowed-label-domains file (always sandbox.users.io); no adoption of
// orphan Sandboxes by a pool, no agents.x-k8s.io/adoptable; no legacy
// per-claim NetworkPolicy cleanup; no metrics or tracing; a port without
// protocol in a template's networkPolicy is defaulted to TCP before
// comparing (the real controller would update the policy on every pass).
// Its latency on the local control plane: BenchmarkClaimReady.
package sandboxctl
