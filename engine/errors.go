package engine

import (
	"context"
	"errors"
	"fmt"
	"io"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilnet "k8s.io/apimachinery/pkg/util/net"

	"github.com/paperclip-k8s/paperclip-k8s/engine/resource"
)

// APIMissingError says that the server serves none of a resource's versions.
type APIMissingError struct {
	Resource *resource.Resource
}

func (e *APIMissingError) Error() string {
	a := e.Resource.API
	msg := fmt.Sprintf("the cluster does not serve %s (group %q, versions %v) needed by %s", a.Kind, a.Group, a.Versions, e.Resource.File)
	if a.Missing != "" {
		msg += ": " + a.Missing
	}
	return msg
}

// GoneError says that an object no longer exists, or that another object
// (another UID) now has its name.
type GoneError struct {
	Ref      Ref
	Replaced bool
}

func (e *GoneError) Error() string {
	if e.Replaced {
		return fmt.Sprintf("%s was replaced by another object of the same name (UID %s is gone)", e.Ref, e.Ref.UID)
	}
	return fmt.Sprintf("%s no longer exists", e.Ref)
}

// IsGone reports whether err says the object is gone or replaced.
func IsGone(err error) bool {
	var g *GoneError
	return errors.As(err, &g)
}

// TerminalError says that an object reached a state it will not leave
// before reaching the state waited for.
type TerminalError struct {
	Ref    Ref
	Status resource.Status
}

func (e *TerminalError) Error() string {
	return fmt.Sprintf("%s is %s", e.Ref, e.Status)
}

// WaitError says that the context ended before the wanted state.
type WaitError struct {
	Ref    Ref
	Want   []resource.State
	Last   resource.Status
	Reason error
}

func (e *WaitError) Error() string {
	return fmt.Sprintf("%s did not become %v: %v (last status: %s)", e.Ref, e.Want, e.Reason, e.Last)
}

func (e *WaitError) Unwrap() error { return e.Reason }

// ClaimError says that an object a claim names exists but is not ours.
type ClaimError struct {
	Ref     Ref
	File    string
	Problem string
}

func (e *ClaimError) Error() string {
	return fmt.Sprintf("%s exists but was not created by this provider for these values (%s): %s; the provider changes nothing in it. "+
		"Choose other names in the config (e.g. namespacePrefix or companySlug), or have an operator delete it if it is a leftover",
		e.Ref, e.File, e.Problem)
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
