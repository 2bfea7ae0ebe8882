package e2e_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/paperclip-k8s/paperclip-k8s/e2e/paperclip"
	"github.com/paperclip-k8s/paperclip-k8s/internal/devenv"
)

// rig is what TestPaperclipKubernetes set up, for subtests in other files.
type rig struct {
	srv       *paperclip.Server
	env       *devenv.Env
	c         *checker
	companyID string
	config    func(backend string) map[string]any
	claude    string // the fake claude CLI (a path in the "sandbox")
	pluginID  string
	// restoreIsolated: a cleanup restores enableIsolatedWorkspaces.
	restoreIsolated bool
}

// quietFor is how long an issue must have no queued or running run before a
// step counts as finished: after a successful run that leaves its issue
// in_progress the host queues one follow-up run of its own at once (a
// "successful run handoff", invocationSource "automation").
const quietFor = 5 * time.Second

// testReusableLease proves reusable leases end to end (backend sandbox,
// reuseLease: true, the default per-run runner lifecycle).
//
// When the host reuses a lease (2026.916.1, environment-runtime.js
// acquireRunLease): only for heartbeat runs with an agent AND an execution
// workspace, and only a lease row of the same environment, agent and
// execution workspace whose scope (metadata.reusableSandboxLease) and
// config fingerprint match, in status released or retained. A run without
// an issue has no execution workspace (executionWorkspaceId null: the lease
// is still stored as reuse_by_environment, but without the scope
// metadata.reusableSandboxLease, and never resumed), and a run on
// an issue gets a new execution workspace each time unless the issue asks
// for executionWorkspacePreference "reuse_existing", which the host only
// accepts with the experimental instance setting enableIsolatedWorkspaces
// (otherwise it drops the field). So the test turns that setting on, and
// runs the agent on an issue of a project that asks to reuse its workspace.
//
// What the host then does, per run (hooks as the worker logs them):
//
//	first run:    acquire → … → release (metadata has reusableSandboxLease:
//	              the plugin keeps the Sandbox) → row "released"
//	next run:     resume (same Sandbox, same pod) → … → release (kept); the
//	              previous row becomes "expired" (retired), the new row is
//	              "released" with sandboxLeaseAcquisition {outcome: resumed}
//	pod lost:     resume answers expired → destroy of the stale lease (row
//	              "expired", failureReason "not_found") → acquire of a new
//	              Sandbox (outcome {replacement, reason not_found})
//	issue closed: destroy of the kept lease (failureReason
//	              "issue_terminal_<status>"), in the PATCH request itself
//
// The host sends the same release whether it will resume the lease or not:
// it stores every lease of reuseLease: true as reuse_by_environment and
// gives every one with an execution workspace and an agent the scope
// reusableSandboxLease, also on issues that get a new execution workspace
// per run (isolated workspaces off, or no reuse_existing). So the plugin
// keeps a Sandbox on release only when the lease carries that scope
// (reuseLease on, the backend execs, no cancelActiveWork) AND the lease's
// issue, which it reads from the host (issues.get), is bound to the lease's
// execution workspace and asks to reuse it. Probe and adapter-test leases
// (policy ephemeral), issue-less runs and runs of issues that do not reuse
// their workspace are deleted at release.
//
// A released reuse_by_environment row blocks a plain environment delete
// (409, deleteBlockedReasons ["reusable_sandbox_lease"]), the issue-less
// run's row included; DELETE ?destroyReusableSandboxLeases=true destroys
// such leases (environmentDestroyLease) and deletes. The host has no idle timeout for a kept lease: it is
// destroyed when a later acquire finds it stale, when its issue closes, when
// its execution workspace is archived, when its run is cancelled (release
// status "expired"), or on a consented environment delete; otherwise only
// the Sandbox's own deadline (sandboxLifetimeSec) ends it. A failed run's
// lease is released (kept by the plugin) with row status "failed", which
// the host never resumes nor destroys: the deadline is the only bound there.
//
// Before plugin.ReleaseLease kept reusable leases, every release deleted the
// Sandbox and each run went resume → expired → destroy (nothing left to
// delete) → acquire: reuse was pure overhead.
func testReusableLease(ctx context.Context, t *testing.T, r *rig) {
	is := is.New(t)
	// Off for the first steps (the server's default); on from the issue
	// that reuses its workspace.
	r.setIsolatedWorkspaces(ctx, t, false)

	cfg := r.config("sandbox")
	cfg["reuseLease"] = true
	e, err := r.srv.CreateEnvironment(ctx, r.companyID, "k8s-sandbox-reuse", cfg)
	is.NoErr(err)
	envGone := false
	t.Cleanup(func() {
		// Whatever a failed step left: the consented delete destroys the
		// kept leases through the plugin.
		if !envGone {
			err := r.api(context.WithoutCancel(ctx), http.MethodDelete, "/api/environments/"+e.ID+"?destroyReusableSandboxLeases=true", nil, nil)
			t.Logf("cleanup: consented delete of environment %s: %v", e.ID, err)
		}
	})
	agent, err := r.srv.CreateAgent(ctx, r.companyID, paperclip.AgentSpec{
		Name: "e2e-sandbox-reuse", AdapterType: "claude_local",
		AdapterConfig:        map[string]any{"engine": "cli", "command": r.claude},
		DefaultEnvironmentID: e.ID,
	})
	is.NoErr(err)

	// Leases the host does not publish for reuse are deleted on release as
	// before: the probe's ad-hoc lease (policy ephemeral) and a run without
	// an execution workspace (policy reuse_by_environment, but no
	// reusableSandboxLease scope: the host would never resume it).
	if !t.Run("probe lease is not kept", func(t *testing.T) {
		is := is.New(t)
		before := r.c.leaseIDs(ctx, t, e.ID)
		res, err := r.srv.ProbeEnvironment(ctx, r.companyID, e.ID)
		is.NoErr(err)
		is.True(res.OK)
		ls := r.c.released(ctx, t, e.ID, before, "sandbox", "released")
		is.Equal(ls[0].LeasePolicy, "ephemeral")
	}) {
		return
	}
	var noIssue string // the workload of the run without an issue
	if !t.Run("run without an issue is not kept", func(t *testing.T) {
		is := is.New(t)
		before := r.c.leaseIDs(ctx, t, e.ID)
		run, err := r.srv.Wakeup(ctx, agent.ID, "e2e reusable lease, no issue")
		is.NoErr(err)
		wctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
		defer cancel()
		run, err = r.srv.WaitRun(wctx, run.ID)
		is.NoErr(err)
		if run.Status != "succeeded" {
			t.Fatalf("run %s: status %q error %q code %q", run.ID, run.Status, deref(run.Error), deref(run.ErrorCode))
		}
		ls := r.c.released(ctx, t, e.ID, before, "sandbox", "released")
		var l leaseRow
		is.NoErr(json.Unmarshal(ls[0].Raw, &l))
		is.Equal(ls[0].LeasePolicy, "reuse_by_environment")
		is.Equal(l.ExecutionWorkspaceID, "")
		is.Equal(ls[0].Metadata["reusableSandboxLease"], nil)
		noIssue = deref(ls[0].ProviderLeaseID)
		is.Equal((&reuseSteps{rig: r}).hooks(t, noIssue), []string{"acquired", "stopped"})
	}) {
		return
	}

	var project, issue struct {
		ID string `json:"id"`
	}
	is.NoErr(r.api(ctx, http.MethodPost, "/api/companies/"+r.companyID+"/projects", map[string]any{"name": "e2e reuse"}, &project))
	// The issues are assigned, but in backlog: no assignment wake; the test
	// wakes the agent.
	newIssue := func(t *testing.T, title string, reuse bool) string {
		body := map[string]any{"title": title, "projectId": project.ID, "assigneeAgentId": agent.ID, "status": "backlog"}
		if reuse {
			body["executionWorkspacePreference"] = "reuse_existing"
			body["executionWorkspaceSettings"] = map[string]any{"mode": "shared_workspace"}
		}
		var out struct {
			ID string `json:"id"`
		}
		if err := r.api(ctx, http.MethodPost, "/api/companies/"+r.companyID+"/issues", body, &out); err != nil {
			t.Fatal(err)
		}
		return out.ID
	}
	seenRuns := map[string]bool{}

	// Runs of a project issue whose workspace is not reused: each run gets
	// a new execution workspace, and the host still publishes its lease for
	// reuse (reuse_by_environment, with the reusableSandboxLease scope of
	// that workspace), although no run will ever resume it. The plugin asks
	// for the issue at release and deletes the Sandbox.
	notReused := func(t *testing.T, issueID string) {
		is := is.New(t)
		steps := &reuseSteps{rig: r, envID: e.ID, agentID: agent.ID, issueID: issueID, seenRuns: seenRuns}
		runs := steps.wake(ctx, t)
		var rows []leaseRow
		for _, l := range steps.rows(ctx, t) {
			if slices.Contains(runs, deref(l.HeartbeatRunID)) {
				rows = append(rows, l)
			}
		}
		is.Equal(len(rows), len(runs)) // one lease row per run
		workspaces := map[string]bool{}
		for i, l := range rows {
			name := deref(l.ProviderLeaseID)
			scope, _ := l.Metadata["reusableSandboxLease"].(map[string]any)
			t.Logf("row %d: run %s %s %s workspace %s scope %v", i, deref(l.HeartbeatRunID), l.Status, name, l.ExecutionWorkspaceID, scope)
			// What the host publishes: the same as for a lease it resumes.
			is.Equal(l.LeasePolicy, "reuse_by_environment")
			is.True(l.ExecutionWorkspaceID != "")
			is.Equal(scope["executionWorkspaceId"], l.ExecutionWorkspaceID)
			is.Equal(l.acquisition(), "created") // never resumed
			is.Equal(l.Status, "released")
			is.Equal(deref(l.CleanupStatus), "success")
			is.True(!workspaces[l.ExecutionWorkspaceID]) // a new execution workspace per run
			workspaces[l.ExecutionWorkspaceID] = true
			// What the plugin did: released the Sandbox, and said why.
			is.Equal(steps.hooks(t, name), []string{"acquired", "stopped"})
			why := steps.notKeptReason(t, name)
			t.Logf("release of %s: not kept: %s", name, why)
			is.True(strings.Contains(why, "issue "+issueID+" does not ask to reuse its execution workspace"))
			sb, ok := r.c.rec.find(gvrSandbox, r.c.tenant, name)
			is.True(ok)
			steps.gone(ctx, t, sb)
		}
	}
	// (B) Isolated workspaces off (the server's default): the server drops
	// the issue's executionWorkspacePreference and executionWorkspaceSettings.
	if !t.Run("issue that does not reuse its workspace (isolated workspaces off) is not kept", func(t *testing.T) {
		is := is.New(t)
		id := newIssue(t, "e2e reuse: isolated workspaces off", true)
		var got map[string]any
		is.NoErr(r.api(ctx, http.MethodGet, "/api/issues/"+id, nil, &got))
		is.Equal(got["executionWorkspacePreference"], nil) // dropped by the server
		notReused(t, id)
	}) {
		return
	}

	r.setIsolatedWorkspaces(ctx, t, true)
	// (B') Isolated workspaces on, but the issue does not ask to reuse its
	// workspace.
	if !t.Run("issue that does not reuse its workspace (no reuse_existing) is not kept", func(t *testing.T) {
		notReused(t, newIssue(t, "e2e reuse: no reuse_existing", false))
	}) {
		return
	}

	// (A) The issue asks to reuse its workspace: its runs share one Sandbox.
	issue.ID = newIssue(t, "e2e reusable lease", true)
	steps := &reuseSteps{rig: r, envID: e.ID, agentID: agent.ID, issueID: issue.ID, seenRuns: seenRuns}

	var first leaseRow // the last row of the first workload
	if !t.Run("two wakeups share one Sandbox", func(t *testing.T) {
		is := is.New(t)
		start := time.Now()
		runs := append(steps.wake(ctx, t), steps.wake(ctx, t)...)
		t.Logf("timing: two wakeups (%d runs) took %v", len(runs), time.Since(start).Round(time.Millisecond))
		var rows []leaseRow
		for _, l := range steps.rows(ctx, t) {
			if slices.Contains(runs, deref(l.HeartbeatRunID)) {
				rows = append(rows, l)
			}
		}
		is.Equal(len(rows), len(runs)) // one lease row per run
		name := deref(rows[0].ProviderLeaseID)
		ew := rows[0].ExecutionWorkspaceID
		is.True(ew != "")
		for i, l := range rows {
			t.Logf("row %d: run %s %s %s %s podUid %v", i, deref(l.HeartbeatRunID), l.Status, deref(l.ProviderLeaseID), l.acquisition(), l.Metadata["podUid"])
			is.Equal(l.LeasePolicy, "reuse_by_environment")
			is.Equal(l.ExecutionWorkspaceID, ew)                     // the issue's one execution workspace
			is.Equal(deref(l.ProviderLeaseID), name)                 // one Sandbox for all runs
			is.Equal(l.md("workloadUid"), rows[0].md("workloadUid")) // the same object, not a namesake
			want, status := "resumed", "expired"                     // retired by the next run's resume
			if i == 0 {
				want = "created"
			}
			if i == len(rows)-1 {
				status = "released"
			}
			is.Equal(l.acquisition(), want)
			is.Equal(l.Status, status)
			is.Equal(deref(l.CleanupStatus), "success")
			if i > 0 {
				is.Equal(l.Metadata["resumedLease"], true) // the plugin's resume answer
				is.Equal(l.md("podUid"), rows[1].md("podUid"))
				is.True(l.md("podUid") != "")
			}
		}
		// The cluster: the Sandbox and its one pod are still there, as
		// acquired; no other pod was ever created for it.
		sb := steps.liveSandbox(ctx, t, name)
		is.Equal(string(sb.UID), rows[0].md("workloadUid"))
		pod, err := r.env.Kube().CoreV1().Pods(r.c.tenant).Get(ctx, name, metav1.GetOptions{})
		is.NoErr(err)
		is.Equal(string(pod.UID), rows[1].md("podUid"))
		pods := steps.seenPods(sb)
		is.Equal(pods, []types.UID{pod.UID})
		// The worker: one acquire, a kept release per run, a resume per
		// later run, no delete.
		hooks := steps.hooks(t, name)
		want := []string{"acquired"}
		for range rows[1:] {
			want = append(want, "kept", "resumed")
		}
		want = append(want, "kept")
		is.Equal(hooks, want)
		first = rows[len(rows)-1]
	}) {
		return
	}

	var second leaseRow
	if !t.Run("lost pod: resume expires, the host destroys and acquires anew", func(t *testing.T) {
		is := is.New(t)
		name := deref(first.ProviderLeaseID)
		sb := steps.liveSandbox(ctx, t, name)
		seenBefore := r.c.rec.byRun(sb.RunID)
		oldPod := types.UID(first.md("podUid"))
		// Delete the pod; the Sandbox controller recreates it (same name,
		// new UID) and the workspace of the old one is gone.
		is.NoErr(r.env.Kube().CoreV1().Pods(r.c.tenant).Delete(ctx, name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &oldPod}}))
		err := waitFor(ctx, releaseDeadline, func() error {
			p, err := r.env.Kube().CoreV1().Pods(r.c.tenant).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if p.UID == oldPod {
				return errors.New("the old pod is still there")
			}
			return nil
		})
		is.NoErr(err)
		t.Logf("pod %s/%s deleted; the controller recreated it", r.c.tenant, name)

		start := time.Now()
		runs := steps.wake(ctx, t)
		t.Logf("timing: wakeup (%d runs) took %v", len(runs), time.Since(start).Round(time.Millisecond))
		rows := steps.rows(ctx, t)
		var fresh []leaseRow
		for _, l := range rows {
			switch {
			case l.ID == first.ID:
				// The stale lease: destroyed by the host after resume said
				// expired.
				t.Logf("stale row: %s %s failure %s cleanup %s", l.Status, deref(l.ProviderLeaseID), deref(l.FailureReason), deref(l.CleanupStatus))
				is.Equal(l.Status, "expired")
				is.Equal(deref(l.FailureReason), "not_found")
				is.Equal(deref(l.CleanupStatus), "success")
			case slices.Contains(runs, deref(l.HeartbeatRunID)):
				fresh = append(fresh, l)
			}
		}
		is.Equal(len(fresh), len(runs))
		newName := deref(fresh[0].ProviderLeaseID)
		is.True(newName != name)
		for i, l := range fresh {
			t.Logf("row %d: run %s %s %s %s", i, deref(l.HeartbeatRunID), l.Status, deref(l.ProviderLeaseID), l.acquisition())
			is.Equal(deref(l.ProviderLeaseID), newName)
			want, status := "resumed", "expired"
			if i == 0 {
				want = "replacement/not_found"
			}
			if i == len(fresh)-1 {
				status = "released"
			}
			is.Equal(l.acquisition(), want)
			is.Equal(l.Status, status)
		}
		// The worker: resume of the old lease said expired (its pod was
		// replaced), destroy deleted it; a new Sandbox was acquired.
		oldHooks := steps.hooks(t, name)
		is.True(len(oldHooks) >= 2)
		is.Equal(oldHooks[len(oldHooks)-2:], []string{"expired", "destroyed"})
		why := steps.expiredReason(t, name)
		t.Logf("resume of %s: expired: %s", name, why)
		is.True(strings.Contains(why, "was replaced") && strings.Contains(why, string(oldPod)))
		is.Equal(steps.hooks(t, newName)[0], "acquired")
		// The cluster: the old Sandbox, both of its pods, its Secret and
		// scoped NetworkPolicy are gone; the new Sandbox is there.
		var seen []string
		for _, o := range r.c.rec.byRun(sb.RunID) {
			seen = append(seen, o.String())
		}
		is.True(len(r.c.rec.byRun(sb.RunID)) > len(seenBefore)) // the recreated pod was seen too
		steps.gone(ctx, t, sb)
		t.Logf("old workload %s gone: %v", name, seen)
		steps.liveSandbox(ctx, t, newName)
		second = fresh[len(fresh)-1]
	}) {
		return
	}

	t.Run("closing the issue destroys the kept lease; the environment delete", func(t *testing.T) {
		is := is.New(t)
		name := deref(second.ProviderLeaseID)
		sb := steps.liveSandbox(ctx, t, name)
		// While the lease is kept, the environment cannot be deleted
		// without consent.
		err := r.api(ctx, http.MethodDelete, "/api/environments/"+e.ID, nil, nil)
		var apiErr *paperclip.APIError
		is.True(errors.As(err, &apiErr))
		t.Logf("plain delete: %v", err)
		is.Equal(apiErr.Status, http.StatusConflict)
		is.True(strings.Contains(apiErr.Body, "reusable_sandbox_lease"))

		// Closing the issue makes the host destroy its reusable leases.
		start := time.Now()
		is.NoErr(r.api(ctx, http.MethodPatch, "/api/issues/"+issue.ID, map[string]any{"status": "cancelled"}, nil))
		t.Logf("timing: closing the issue took %v", time.Since(start).Round(time.Millisecond))
		var last leaseRow
		err = waitFor(ctx, releaseDeadline, func() error {
			for _, l := range steps.rows(ctx, t) {
				if l.ID == second.ID {
					last = l
				}
			}
			if last.Status != "expired" {
				return fmt.Errorf("lease %s is %q", last.ID, last.Status)
			}
			return nil
		})
		is.NoErr(err)
		t.Logf("kept row: %s failure %s cleanup %s", last.Status, deref(last.FailureReason), deref(last.CleanupStatus))
		is.Equal(deref(last.FailureReason), "issue_terminal_cancelled")
		is.Equal(deref(last.CleanupStatus), "success")
		hooks := steps.hooks(t, name)
		is.Equal(hooks[len(hooks)-1], "destroyed")
		steps.gone(ctx, t, sb)

		// The rows of the run without an issue and of the issues that do not
		// reuse their workspace (released, reuse_by_environment) still block
		// a plain delete, although the host would never resume them; the
		// consented delete "destroys" them (the plugin deleted their
		// Sandboxes at release: environmentDestroyLease finds nothing).
		var del struct {
			Destroyed int `json:"destroyedReusableSandboxLeaseCount"`
		}
		blocking := 0
		for _, l := range steps.rows(ctx, t) {
			if l.LeasePolicy == "reuse_by_environment" && l.Status == "released" {
				blocking++
			}
		}
		is.True(blocking >= 3) // the issue-less run's, and at least one per issue that does not reuse
		err = r.api(ctx, http.MethodDelete, "/api/environments/"+e.ID, nil, nil)
		is.True(errors.As(err, &apiErr) && apiErr.Status == http.StatusConflict)
		is.NoErr(r.api(ctx, http.MethodDelete, "/api/environments/"+e.ID+"?destroyReusableSandboxLeases=true", nil, &del))
		envGone = true
		is.Equal(del.Destroyed, blocking)
		is.Equal(steps.hooks(t, noIssue), []string{"acquired", "stopped", "destroyed"})
		// No Sandbox of this environment is left in the tenant.
		left, err := r.env.Dynamic().Resource(gvrSandbox).Namespace(r.c.tenant).List(ctx, metav1.ListOptions{})
		is.NoErr(err)
		for _, u := range left.Items {
			if slices.Contains([]string{name, deref(first.ProviderLeaseID), noIssue}, u.GetName()) {
				t.Errorf("Sandbox %s is still there", u.GetName())
			}
		}
	})
}

// reuseSteps drives the agent on the issue and reads back what happened.
type reuseSteps struct {
	*rig
	envID, agentID, issueID string
	seenRuns                map[string]bool
}

// wake wakes the agent on the issue and waits until the issue has had no
// queued or running run for quietFor. It returns the runs that started
// since the last call (the woken one and the host's follow-ups), all of
// which must have succeeded.
func (s *reuseSteps) wake(ctx context.Context, t *testing.T) []string {
	t.Helper()
	var run paperclip.Run
	if err := s.api(ctx, http.MethodPost, "/api/agents/"+s.agentID+"/wakeup", map[string]any{
		"source": "on_demand", "triggerDetail": "manual", "reason": "e2e reusable lease",
		"payload": map[string]any{"issueId": s.issueID},
	}, &run); err != nil {
		t.Fatal(err)
	}
	if run.ID == "" {
		t.Fatal("the wakeup was skipped")
	}
	type issueRun struct {
		RunID            string     `json:"runId"`
		Status           string     `json:"status"`
		InvocationSource string     `json:"invocationSource"`
		StartedAt        *time.Time `json:"startedAt"`
		FinishedAt       *time.Time `json:"finishedAt"`
	}
	var (
		runs      []issueRun
		lastCount int
		stableAt  time.Time
	)
	err := waitFor(ctx, 3*time.Minute, func() error {
		if err := s.api(ctx, http.MethodGet, "/api/issues/"+s.issueID+"/runs", nil, &runs); err != nil {
			return err
		}
		woken := false
		for _, x := range runs {
			if x.RunID == run.ID {
				woken = true
			}
			if !(paperclip.Run{Status: x.Status}).Terminal() {
				stableAt = time.Time{}
				return fmt.Errorf("run %s is %s", x.RunID, x.Status)
			}
		}
		if !woken {
			return fmt.Errorf("run %s is not listed yet", run.ID)
		}
		if len(runs) != lastCount || stableAt.IsZero() {
			lastCount, stableAt = len(runs), time.Now()
		}
		if time.Since(stableAt) < quietFor {
			return fmt.Errorf("%d runs, quiet for %v", len(runs), time.Since(stableAt))
		}
		return nil
	})
	if err != nil {
		t.Fatalf("waiting for the runs of issue %s: %v", s.issueID, err)
	}
	var ids []string
	slices.Reverse(runs) // the host lists the newest first
	for _, x := range runs {
		if s.seenRuns[x.RunID] {
			continue
		}
		s.seenRuns[x.RunID] = true
		var took time.Duration
		if x.StartedAt != nil && x.FinishedAt != nil {
			took = x.FinishedAt.Sub(*x.StartedAt).Round(time.Millisecond)
		}
		t.Logf("run %s (%s): %s in %v", x.RunID, x.InvocationSource, x.Status, took)
		if x.Status != "succeeded" {
			full, _ := s.srv.GetRun(ctx, x.RunID)
			t.Fatalf("run %s: status %q error %q code %q", x.RunID, x.Status, deref(full.Error), deref(full.ErrorCode))
		}
		ids = append(ids, x.RunID)
	}
	return ids
}

// leaseRow is a lease row with the fields paperclip.Lease leaves in Raw.
type leaseRow struct {
	paperclip.Lease
	ExecutionWorkspaceID string    `json:"executionWorkspaceId"`
	AcquiredAt           time.Time `json:"acquiredAt"`
}

func (l leaseRow) md(k string) string { s, _ := l.Metadata[k].(string); return s }

// acquisition is the host's metadata.sandboxLeaseAcquisition: "created",
// "resumed" or "replacement/<reason>".
func (l leaseRow) acquisition() string {
	a, _ := l.Metadata["sandboxLeaseAcquisition"].(map[string]any)
	out, _ := a["outcome"].(string)
	if reason, ok := a["reason"].(string); ok {
		out += "/" + reason
	}
	return out
}

// rows returns the environment's lease rows, oldest first, once none is
// active (the host can release a run's lease after the run's status is
// final).
func (s *reuseSteps) rows(ctx context.Context, t *testing.T) []leaseRow {
	t.Helper()
	var out []leaseRow
	err := waitFor(ctx, releaseDeadline, func() error {
		ls, err := s.srv.Leases(ctx, s.envID)
		if err != nil {
			return err
		}
		out = make([]leaseRow, len(ls))
		for i, l := range ls {
			if err := json.Unmarshal(l.Raw, &out[i]); err != nil {
				return err
			}
			out[i].Lease = l
			if l.Status == "active" {
				return fmt.Errorf("lease %s is still active", l.ID)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("lease rows of environment %s: %v", s.envID, err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].AcquiredAt.Before(out[j].AcquiredAt) })
	return out
}

// liveSandbox returns the recorded Sandbox named name after checking that
// it exists now, with the recorded UID.
func (s *reuseSteps) liveSandbox(ctx context.Context, t *testing.T, name string) seenObject {
	t.Helper()
	sb, ok := s.c.rec.find(gvrSandbox, s.c.tenant, name)
	if !ok {
		t.Fatalf("no Sandbox %s/%s was ever seen", s.c.tenant, name)
	}
	u, err := s.env.Dynamic().Resource(gvrSandbox).Namespace(s.c.tenant).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the Sandbox %s: %v", name, err)
	}
	if u.GetUID() != sb.UID || u.GetDeletionTimestamp() != nil {
		t.Fatalf("the Sandbox %s is not the one acquired (UID %s, seen %s) or is being deleted", name, u.GetUID(), sb.UID)
	}
	return sb
}

// seenPods returns the UIDs of every pod ever seen for a workload's run.
func (s *reuseSteps) seenPods(w seenObject) []types.UID {
	var out []types.UID
	for _, o := range s.c.rec.byRun(w.RunID) {
		if o.GVR == gvrPod {
			out = append(out, o.UID)
		}
	}
	return out
}

// gone waits until every object seen for a workload's run is deleted (the
// Sandbox, its pods, Secret and scoped NetworkPolicy).
func (s *reuseSteps) gone(ctx context.Context, t *testing.T, w seenObject) {
	t.Helper()
	seen := s.c.rec.byRun(w.RunID)
	var kinds []string
	for _, o := range seen {
		kinds = append(kinds, o.GVR.Resource)
	}
	for _, k := range []string{"sandboxes", "pods", "secrets", "networkpolicies"} {
		if !slices.Contains(kinds, k) {
			t.Errorf("no %s of run %s was ever seen (seen: %v)", k, w.RunID, seen)
		}
	}
	var left []string
	err := waitFor(ctx, releaseDeadline, func() error {
		var err error
		if left, err = leftovers(ctx, s.env.Dynamic(), s.c.tenant, w.RunID, seen); err != nil {
			return err
		}
		if len(left) > 0 {
			return fmt.Errorf("still there: %v", left)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("the objects of %s: %v", w, err)
	}
	if _, err := s.env.Dynamic().Resource(gvrSandbox).Namespace(s.c.tenant).Get(ctx, w.Name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("the Sandbox %s: %v, want NotFound", w.Name, err)
	}
}

// hooks returns, in order, what the worker logged about the lease named
// name: acquired, kept (a release that kept the Sandbox), stopped (a
// release that deleted it), resumed, expired (resume said so), destroyed.
func (s *reuseSteps) hooks(t *testing.T, name string) []string {
	t.Helper()
	lines, err := s.srv.PluginLines(s.pluginID)
	if err != nil {
		t.Fatal(err)
	}
	workload := `workload="Sandbox ` + s.c.tenant + "/" + name + `"`
	var out []string
	for _, l := range lines {
		m := l.Text()
		var hook string
		switch {
		case strings.Contains(m, `msg="lease acquired"`) && strings.Contains(m, workload):
			hook = "acquired"
		case strings.Contains(m, `msg="lease kept for reuse"`) && strings.Contains(m, workload):
			hook = "kept"
		case strings.Contains(m, `msg="lease stopped"`) && strings.Contains(m, workload):
			hook = "stopped"
		case strings.Contains(m, `msg="lease destroyed"`) && strings.Contains(m, workload):
			hook = "destroyed"
		case strings.Contains(m, `msg="lease resumed"`) && strings.Contains(m, workload):
			hook = "resumed"
		case strings.Contains(m, `msg="lease expired"`) && strings.Contains(m, "lease="+name+" "):
			hook = "expired"
		default:
			continue
		}
		out = append(out, hook)
	}
	t.Logf("worker hooks for %s: %v", name, out)
	return out
}

// expiredReason returns the reason of the worker's last "lease expired"
// line for the lease named name.
func (s *reuseSteps) expiredReason(t *testing.T, name string) string {
	t.Helper()
	lines, err := s.srv.PluginLines(s.pluginID)
	if err != nil {
		t.Fatal(err)
	}
	var why string
	for _, l := range lines {
		if strings.Contains(l.Text(), `msg="lease expired" lease=`+name+" ") {
			_, why, _ = strings.Cut(l.Text(), " reason=")
		}
	}
	return why
}

// notKeptReason returns why the worker's last release of the lease named
// name did not keep it for reuse ("" when the line says nothing).
func (s *reuseSteps) notKeptReason(t *testing.T, name string) string {
	t.Helper()
	lines, err := s.srv.PluginLines(s.pluginID)
	if err != nil {
		t.Fatal(err)
	}
	workload := "Sandbox " + s.c.tenant + "/" + name
	var why string
	for _, l := range lines {
		f := l.Fields()
		if l.Message == "lease stopped" && f["workload"] == workload {
			why, _ = f["notKeptForReuse"].(string)
		}
	}
	return why
}

// setIsolatedWorkspaces sets the experimental instance setting
// enableIsolatedWorkspaces (see testReusableLease); the first call's
// cleanup restores the value it found.
func (r *rig) setIsolatedWorkspaces(ctx context.Context, t *testing.T, on bool) {
	t.Helper()
	var before map[string]any
	if err := r.api(ctx, http.MethodGet, "/api/instance/settings/experimental", nil, &before); err != nil {
		t.Fatal(err)
	}
	if err := r.api(ctx, http.MethodPatch, "/api/instance/settings/experimental", map[string]any{"enableIsolatedWorkspaces": on}, nil); err != nil {
		t.Fatal(err)
	}
	if r.restoreIsolated {
		return
	}
	r.restoreIsolated = true
	t.Cleanup(func() {
		prev, _ := before["enableIsolatedWorkspaces"].(bool)
		if err := r.api(context.WithoutCancel(ctx), http.MethodPatch, "/api/instance/settings/experimental", map[string]any{"enableIsolatedWorkspaces": prev}, nil); err != nil {
			t.Errorf("restoring enableIsolatedWorkspaces: %v", err)
		}
	})
}

// api calls the server's REST API with a JSON body and decodes a 2xx
// answer into out; any other answer is a *paperclip.APIError. (The typed
// client has no project, issue or instance-settings calls.)
func (r *rig) api(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, r.srv.BaseURL+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := r.srv.HTTP.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		return &paperclip.APIError{Method: method, Path: path, Status: resp.StatusCode, Body: string(b)}
	}
	if out != nil && len(b) > 0 {
		return json.Unmarshal(b, out)
	}
	return nil
}
