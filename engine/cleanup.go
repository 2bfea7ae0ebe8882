package engine

import (
	"context"
	"errors"
	"fmt"
	"github.com/paperclip-k8s/paperclip-k8s/engine/resource"
	"io"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilnet "k8s.io/apimachinery/pkg/util/net"
	"k8s.io/client-go/dynamic"
)

// Cleanup after a call whose context expired needs a context of its own:
// one detached from the expired one's cancellation, yet bounded. A caller
// with a reply deadline (a bounded hook) records it on the context with
// WithCleanupDeadline; CleanupContext then ends there.

type cleanupDeadlineKey struct{}

// DefaultCleanupTimeout bounds a cleanup whose context carries no cleanup
// deadline.
const DefaultCleanupTimeout = 10 * time.Second

// MinCleanupTimeout is the least time a cleanup gets, even when the cleanup
// deadline has (nearly) passed: deleting what a call left behind is worth a
// short overrun.
const MinCleanupTimeout = 2 * time.Second

// WithCleanupDeadline records on ctx the time by which cleanup after ctx
// is cancelled or expires must end.
func WithCleanupDeadline(ctx context.Context, t time.Time) context.Context {
	return context.WithValue(ctx, cleanupDeadlineKey{}, t)
}

// CleanupDeadline returns the cleanup deadline recorded on ctx.
func CleanupDeadline(ctx context.Context) (time.Time, bool) {
	t, ok := ctx.Value(cleanupDeadlineKey{}).(time.Time)
	return t, ok
}

// CleanupContext returns a context that keeps ctx's values but not its
// cancellation or deadline, and that ends at ctx's cleanup deadline (at
// least MinCleanupTimeout from now), or after DefaultCleanupTimeout when ctx
// carries none.
func CleanupContext(ctx context.Context) (context.Context, context.CancelFunc) {
	now := time.Now()
	end := now.Add(DefaultCleanupTimeout)
	if t, ok := CleanupDeadline(ctx); ok {
		end = t
	}
	if end.Before(now.Add(MinCleanupTimeout)) {
		end = now.Add(MinCleanupTimeout)
	}
	return context.WithDeadline(context.WithoutCancel(ctx), end)
}

// OutcomeUnknown reports whether a write failed without a definite answer
// from the API server, so that it may or may not have been applied: the
// context expired or was cancelled, the connection timed out, was reset or
// ended (EOF) after the request was sent, the server timed out (Status
// reason Timeout or ServerTimeout), or a 5xx came back without a Status
// (e.g. from a proxy). Any other API error is a definite answer.
func OutcomeUnknown(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return true
	}
	var st apierrors.APIStatus
	if errors.As(err, &st) {
		s := st.Status()
		switch {
		case s.Reason == metav1.StatusReasonTimeout, s.Reason == metav1.StatusReasonServerTimeout:
			return true
		case s.Code >= 500 && apierrors.HasStatusCause(err, metav1.CauseTypeUnexpectedServerResponse):
			return true
		}
		return false
	}
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		utilnet.IsTimeout(err) || utilnet.IsConnectionReset(err) || utilnet.IsProbableEOF(err)
}

// UnknownOutcomeError says that a create got no definite answer, and what
// the cleanup that followed found and did.
type UnknownOutcomeError struct {
	Ref   Ref    // the object (its UID when one was found)
	File  string // the data file it was rendered from
	Cause error  // the create's error
	// Deleted: the object existed and was deleted (UID-preconditioned).
	Deleted bool
	// Absent: the object did not exist when read back.
	Absent bool
	// LeftAlone says why an object of that name was not deleted (it does
	// not carry what this create rendered).
	LeftAlone string
	// CleanupErr: reading or deleting it failed.
	CleanupErr error
}

func (e *UnknownOutcomeError) Error() string {
	head := fmt.Sprintf("creating %s from %s: the outcome is unknown (%v): the resource.API server may or may not have created it", e.Ref, e.File, e.Cause)
	switch {
	case e.Deleted:
		return fmt.Sprintf("%s; it had been created (UID %s) and was deleted again", head, e.Ref.UID)
	case e.Absent:
		return head + "; it did not exist when read back, so nothing was cleaned up"
	case e.LeftAlone != "":
		return fmt.Sprintf("%s; an object of that name exists but %s, so it was left alone", head, e.LeftAlone)
	default:
		return fmt.Sprintf("%s; it could not be cleaned up (%v): if %s exists, delete it by hand", head, e.CleanupErr, e.Ref)
	}
}

// Unwrap returns the create's error.
func (e *UnknownOutcomeError) Unwrap() error { return e.Cause }

// cleanupUnknownCreate deletes the object a create with an unknown outcome
// may have made, with a context of its own: it reads the deterministic
// name, checks that the object carries every label the create rendered and,
// when the create set one, its owner's UID, then deletes it with a UID
// precondition.
func (e *Engine) cleanupUnknownCreate(ctx context.Context, s *resource.Resource, c dynamic.ResourceInterface, want *unstructured.Unstructured, cause error) error {
	ref := RefOf(s, want)
	out := &UnknownOutcomeError{Ref: ref, File: s.File, Cause: cause}
	cctx, cancel := CleanupContext(ctx)
	defer cancel()
	cur, err := c.Get(cctx, want.GetName(), metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		out.Absent = true
		return out
	case err != nil:
		out.CleanupErr = fmt.Errorf("reading it back: %v", err)
		return out
	}
	if why := notCreatedBy(want, cur); why != "" {
		out.LeftAlone = why
		return out
	}
	out.Ref.UID = cur.GetUID()
	if _, err := e.Release(cctx, out.Ref); err != nil {
		out.CleanupErr = err
		return out
	}
	out.Deleted = true
	e.Log.Warn("deleted an object whose create had an unknown outcome", "object", out.Ref.String(), "uid", string(out.Ref.UID))
	return out
}

// notCreatedBy says why cur is not the object a create of want would have
// made ("" when it is): every label of want must be on cur with the same
// value, and each owner UID of want must be among cur's. A want with
// neither labels nor owners cannot be told apart from another object.
func notCreatedBy(want, cur *unstructured.Unstructured) string {
	labels, owners := want.GetLabels(), want.GetOwnerReferences()
	if len(labels) == 0 && len(owners) == 0 {
		return "the create rendered neither labels nor an owner to recognise it by"
	}
	have := cur.GetLabels()
	for k, v := range labels {
		if got, ok := have[k]; !ok || got != v {
			return fmt.Sprintf("its label %s is %q, not %q", k, got, v)
		}
	}
	for _, o := range owners {
		found := false
		for _, h := range cur.GetOwnerReferences() {
			found = found || h.UID == o.UID
		}
		if !found {
			return fmt.Sprintf("it is not owned by UID %s", o.UID)
		}
	}
	return ""
}
