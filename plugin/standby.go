package plugin

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"reflect"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/paperclip-k8s/paperclip-k8s/engine"
	"github.com/paperclip-k8s/paperclip-k8s/engine/resource"
	"github.com/paperclip-k8s/paperclip-k8s/plugin/policy"
	"github.com/paperclip-k8s/paperclip-k8s/podexec"
)

// Standby leases. A backend whose workloads hold nothing of a run but their
// labels and deadline (backend.standby: a SandboxClaim, whose pod comes from
// a warm pool) can have them made before the run: the worker keeps
// standbyLeases of them per environment, bound and Ready, and an acquire
// takes one (engine.Take: one patch of the labels and the deadline) instead
// of making one and leaving the first command to wait for the controller's
// handover. The worker remembers the standby's pod, so that first command
// runs at once.
//
// A standby is made after an acquire of its environment (the first one
// makes none in time for itself) with a deadline standbyIdle away, so one
// nobody takes ends by itself, also when the worker is gone; the worker
// deletes the ones it holds when the host shuts it down. Standbys are kept
// per cluster, namespace, company, environment, backend and config: a
// config change leaves the old ones untaken (they are deleted at the next
// acquire).
const (
	// standbyIdle is a standby's lifetime until a run takes it.
	standbyIdle = 10 * time.Minute
	// standbyMinLeft: a standby closer than this to its deadline is not
	// taken; its controller may delete it while the take is on its way.
	standbyMinLeft = time.Minute
	// standbyReady bounds the wait for a new standby's pod.
	standbyReady = 2 * time.Minute
)

// standbyKey says which acquires a standby serves.
type standbyKey struct {
	namespace, companyID, environmentID, backend string
	config                                       [sha256.Size]byte
}

// sameEnvironment reports whether two keys differ at most in the config.
func (k standbyKey) sameEnvironment(o standbyKey) bool {
	k.config, o.config = [sha256.Size]byte{}, [sha256.Size]byte{}
	return k == o
}

func newStandbyKey(ns, companyID, environmentID string, backend *resource.Resource, cfg policy.Config) standbyKey {
	b, _ := json.Marshal(cfg) // the kubeconfig is never in it; the cluster keys the set
	return standbyKey{namespace: ns, companyID: companyID, environmentID: environmentID, backend: backend.Name, config: sha256.Sum256(b)}
}

// A standby is one workload made ahead of its run.
type standby struct {
	key    standbyKey
	obj    *unstructured.Unstructured // as last read
	values map[string]any             // what it was made from (engine.Take compares)
	ends   time.Time                  // its deadline
	// runObjs are its run objects (the run Secret, the scoped policy),
	// made with it and owned by it, indexed like the catalog's run files
	// (nil: not wanted).
	runObjs []*unstructured.Unstructured
	// pod is its Ready pod once found, followed (watched) while it waits:
	// a pod lost in the meantime is not handed to a run as ready.
	pod *leaseState
}

// standbys are a cluster's standby leases.
type standbys struct {
	mu     sync.Mutex
	idle   map[standbyKey][]*standby
	making map[standbyKey]int
	// settled is closed when a making ends (nil: nobody waits).
	settled chan struct{}
}

// take removes and returns the oldest standby of key that is not about to
// end (nil: none); the ones about to end are dropped.
func (s *standbys) take(key standbyKey, now time.Time) *standby {
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.idle[key]) > 0 {
		sb := s.idle[key][0]
		s.idle[key] = s.idle[key][1:]
		if sb.ends.Sub(now) >= standbyMinLeft {
			return sb
		}
		sb.stopFollowing()
	}
	return nil
}

// due says how many standbys of key to start making now (and counts them
// as in the making), and takes out the standbys of the same environment
// made under another config, for the caller to delete.
func (s *standbys) due(key standbyKey, want int) (n int, stale []*standby) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.idle == nil {
		s.idle, s.making = map[standbyKey][]*standby{}, map[standbyKey]int{}
	}
	for k, l := range s.idle {
		if k != key && k.sameEnvironment(key) {
			stale = append(stale, l...)
			delete(s.idle, k)
		}
	}
	n = max(0, want-len(s.idle[key])-s.making[key])
	s.making[key] += n
	return n, stale
}

// made ends the making of one standby of key; sb (nil when making failed)
// becomes one to take.
func (s *standbys) made(key standbyKey, sb *standby) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.making[key]--
	if sb != nil {
		s.idle[key] = append(s.idle[key], sb)
	}
	if s.settled != nil {
		close(s.settled)
		s.settled = nil
	}
}

// busy returns a channel closed when a making ends, nil when none runs.
func (s *standbys) busy() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, m := range s.making {
		n += m
	}
	if n == 0 {
		return nil
	}
	if s.settled == nil {
		s.settled = make(chan struct{})
	}
	return s.settled
}

// StandbysSettled waits until the worker makes no standby lease: the ones
// asked for are Ready to take (or failed). For the bench and the tests, whose
// runs come back to back where a host's come seconds apart.
func (p *Provider) StandbysSettled(ctx context.Context) error {
	for {
		var wait <-chan struct{}
		for _, cl := range p.clusters.all() {
			if ch := cl.standbys.busy(); ch != nil {
				wait = ch
				break
			}
		}
		if wait == nil {
			return nil
		}
		select {
		case <-wait:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// putBack returns a standby take handed out and the run did not use.
func (s *standbys) putBack(sb *standby) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.idle[sb.key] = append([]*standby{sb}, s.idle[sb.key]...)
}

// drain takes every standby out of the set.
func (s *standbys) drain() []*standby {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*standby
	for k, l := range s.idle {
		out = append(out, l...)
		delete(s.idle, k)
	}
	return out
}

func (sb *standby) stopFollowing() {
	if sb.pod != nil && sb.pod.stop != nil {
		sb.pod.stop()
	}
}

// standbyValues are what a standby is made from: a run of the
// environment's default adapter with no run id yet (so none of a run's
// labels), no task grant, its pod labelled with the lease's name, a fresh
// BOOTSTRAP_TOKEN and a deadline standbyIdle away. Its run objects are
// made from them too.
func (p *Provider) standbyValues(cfg policy.Config, companyID, environmentID, ns string, backend *resource.Resource) (map[string]any, time.Time, error) {
	now := p.Now()
	name := policy.NewRunName()
	tok := make([]byte, 32)
	if _, err := rand.Read(tok); err != nil {
		return nil, time.Time{}, err
	}
	token := hex.EncodeToString(tok)
	v, run, err := BuildValues(cfg, ValuesInput{CompanyID: companyID, Namespace: ns, Getenv: p.Getenv, Run: &RunInput{
		EnvironmentID: environmentID, RequestedExpiresAt: now.Add(standbyIdle).UTC().Format(time.RFC3339),
		Mode: backend.Backend.Mode, PodLabel: backend.Backend.PodLabel(), PodLabelValue: name, Now: now, Name: name, Token: token}})
	if err != nil {
		return nil, time.Time{}, err
	}
	return v.Map(), run.Deadline, nil
}

// token is the BOOTSTRAP_TOKEN of the standby's run Secret (its values'
// run.env): a run it serves keeps it.
func (sb *standby) token() string {
	run, _ := sb.values["run"].(map[string]any)
	env, _ := run["env"].(map[string]any)
	t, _ := env["BOOTSTRAP_TOKEN"].(string)
	return t
}

// standbyFits reports whether a run's run objects render as the
// standby's did (their labels aside): then the standby's serve the run.
// A run with a task egress grant, say, has another Secret and policy.
func standbyFits(specs []*resource.Resource, standbyValues, runValues map[string]any) (bool, string) {
	for _, s := range specs {
		was, wasWanted, err := s.Render(standbyValues)
		if err != nil {
			return false, err.Error()
		}
		want, wanted, err := s.Render(runValues)
		if err != nil {
			return false, err.Error()
		}
		if wasWanted != wanted {
			return false, s.File + " is wanted for one and not the other"
		}
		if !wanted {
			continue
		}
		unstructured.RemoveNestedField(was, "metadata", "labels")
		unstructured.RemoveNestedField(want, "metadata", "labels")
		if !reflect.DeepEqual(was, want) {
			return false, s.File + " differs (a task egress grant, another adapter's keys)"
		}
	}
	return true, ""
}

// refillStandbys starts making the standbys key lacks (up to
// cfg.StandbyLeases, in the background) and deletes the environment's
// standbys made under another config.
func (p *Provider) refillStandbys(cl *cluster, key standbyKey, cfg policy.Config, companyID, environmentID string, backend *resource.Resource) {
	n, stale := cl.standbys.due(key, cfg.StandbyLeases)
	for _, sb := range stale {
		go p.dropStandby(cl, backend, sb, "the environment's config changed", nil)
	}
	for range n {
		go func() {
			sb := p.makeStandby(cl, key, cfg, companyID, environmentID, backend)
			cl.standbys.made(key, sb)
			if sb != nil {
				p.Log.Info("standby lease ready", "workload", engine.RefOf(backend, sb.obj).String(), "pod", sb.pod.podName, "ends", sb.ends.UTC().Format(time.RFC3339))
			}
		}()
	}
}

// makeStandby creates one standby and waits for its pod; it returns nil
// (and deletes what it made) when that fails. Only a standby whose pod is
// Ready is there to take: one still on its way would save a run little.
func (p *Provider) makeStandby(cl *cluster, key standbyKey, cfg policy.Config, companyID, environmentID string, backend *resource.Resource) *standby {
	ctx, cancel := context.WithTimeout(context.Background(), standbyReady)
	defer cancel()
	values, ends, err := p.standbyValues(cfg, companyID, environmentID, key.namespace, backend)
	if err != nil {
		p.Log.Warn("standby lease: not made", "namespace", key.namespace, "environmentId", environmentID, "error", err)
		return nil
	}
	w, err := cl.engine.Create(ctx, backend, key.namespace, values, nil)
	if err != nil {
		p.Log.Warn("standby lease: not made", "namespace", key.namespace, "environmentId", environmentID, "error", err)
		return nil
	}
	sb := &standby{key: key, obj: w, values: values, ends: ends}
	// Its run objects, owned by it: a run it serves makes none.
	if sb.runObjs, _, err = p.createRunObjects(ctx, cl, p.Catalog.Used(resource.UseRun), key.namespace, values, w); err != nil {
		p.dropStandby(cl, backend, sb, "its run objects were not made: "+err.Error(), nil)
		return nil
	}
	w2, pod, err := cl.engine.AwaitPod(ctx, backend, w)
	if err != nil {
		p.dropStandby(cl, backend, sb, "its pod did not become ready: "+err.Error(), nil)
		return nil
	}
	sb.obj = w2
	st := &leaseState{workloadUID: string(w2.GetUID()), podName: pod.GetName(), podUID: string(pod.GetUID())}
	// The login environment is the pod's (its image's profile), not a
	// run's: read it now, and a run whose first command is one sent alone
	// runs it alone (another command first drops it: loginEnv.dropAhead).
	st.login.readAhead(ctx, captureFunc(p.Log, cl.exec, podexec.Request{Namespace: key.namespace, Pod: pod.GetName(), Container: backend.Pods.Container}))
	podSpec, _ := p.Catalog.Pod()
	// It follows the pod for as long as a lease's would (execute.go).
	fctx, stop := context.WithTimeout(context.Background(), 24*time.Hour+time.Duration(cfg.SandboxLifetimeSec)*time.Second)
	st.stop = stop
	st.follow(fctx, cl.engine, podSpec, pod)
	sb.pod = st
	return sb
}

// dropStandby deletes a standby nobody took (UID-pinned; its run objects
// go with it), unless a run took it since (it carries a run id). ours, when not nil, are the
// labels of a run whose take of it failed: one that carries them was taken
// by that take all the same (its answer was lost), and that run uses a
// workload of its own, so it is deleted too.
func (p *Provider) dropStandby(cl *cluster, backend *resource.Resource, sb *standby, why string, ours map[string]string) {
	sb.stopFollowing()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ref := engine.RefOf(backend, sb.obj)
	cur, err := cl.engine.Get(ctx, ref)
	if err != nil || cur.GetUID() != sb.obj.GetUID() {
		return // gone
	}
	if _, taken := cur.GetLabels()[policy.LabelRunID]; taken && (ours == nil || !hasLabels(cur, ours)) {
		return // another run's now
	}
	if _, err := cl.engine.Release(ctx, ref); err != nil && !engine.IsGone(err) {
		p.Log.Warn("standby lease: not deleted; it ends at its deadline", "workload", ref.String(), "error", err)
		return
	}
	p.Log.Info("standby lease deleted", "workload", ref.String(), "reason", why)
}

// dropAllStandbys deletes every standby the worker holds (the host is
// shutting it down), within ctx.
func (p *Provider) dropAllStandbys(ctx context.Context) {
	var wg sync.WaitGroup
	for _, cl := range p.clusters.all() {
		for _, sb := range cl.standbys.drain() {
			backend, err := p.backend(sb.key.backend)
			if err != nil {
				continue
			}
			wg.Go(func() { p.dropStandby(cl, backend, sb, "the worker is shutting down", nil) })
		}
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	}
}

// takeStandby hands a standby to the run whose values are runValues (its
// labels runLabels); when it cannot be taken, it says why (and deletes the
// standby unless another run took it: one this take relabelled although
// its answer was lost is deleted too). The pod UID is pinned on the
// workload in the same patch when the pod is known.
func (p *Provider) takeStandby(ctx context.Context, cl *cluster, backend *resource.Resource, sb *standby, runValues map[string]any, runLabels map[string]string) (*unstructured.Unstructured, error) {
	var ann map[string]string
	if sb.pod != nil {
		ann = map[string]string{policy.AnnotationPodUID: sb.pod.podUID}
	}
	w, err := cl.engine.Take(ctx, backend, sb.obj, sb.values, runValues, ann)
	if err != nil {
		ref := engine.RefOf(backend, sb.obj)
		p.Log.Info("standby lease not taken; acquiring a workload of the run's own", "workload", ref.String(), "reason", err.Error())
		go p.dropStandby(cl, backend, sb, "it could not be taken: "+err.Error(), runLabels)
		return nil, err
	}
	return w, nil
}

// hasLabels reports whether o carries every label of want.
func hasLabels(o *unstructured.Unstructured, want map[string]string) bool {
	got := o.GetLabels()
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			return false
		}
	}
	return true
}

// rememberStandbyPod makes the pod of a standby just taken the lease's, as
// a first command would (readyPod): the owner it was checked against, the
// pod followed since the standby was made, the run's environment from the
// standby's own run object (made with it, owned by it). The lease's
// metadata names the pod. A pod lost meanwhile is not remembered: the
// first command looks for it as usual.
//
// It returns whether it did; afterFirst then runs after the lease's first
// command (or when the worker forgets the lease).
func (p *Provider) rememberStandbyPod(ref engine.Ref, base BaseParams, sb *standby, runSpecs []*resource.Resource, objs []*unstructured.Unstructured, meta *LeaseMetadata, afterFirst func()) bool {
	st := sb.pod
	if st == nil {
		return false
	}
	if lost, following := st.status(); lost != nil || !following {
		sb.stopFollowing()
		return false
	}
	if re := ref.Resource.Backend.RunEnv; re != nil {
		found := false
		for i, o := range objs {
			if o == nil || runSpecs[i].Name != re.Resource {
				continue
			}
			env, err := decodeRunEnv(ref, runSpecs[i], o)
			if err != nil {
				p.Log.Warn("standby lease: the run's environment is not readable from the standby's run object; the first command reads it again", "workload", ref.String(), "error", err)
				sb.stopFollowing()
				return false
			}
			st.env, found = env, true
		}
		if !found {
			sb.stopFollowing() // the first command says what is missing
			return false
		}
	}
	st.owner = [2]string{base.CompanyID, base.EnvironmentID}
	st.afterFirst = afterFirst
	meta.PodName, meta.PodUID = st.podName, st.podUID
	if old, loaded := p.leases.Swap(leaseKey(ref), st); loaded {
		old.(*leaseState).stop()
	}
	return true
}
