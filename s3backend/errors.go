package s3backend

import (
	"errors"
	"fmt"
)

// Sentinel errors. Every error an ObjectStore returns wraps exactly one of
// them (inside an *Error); callers decide with errors.Is.
var (
	// ErrNotFound: the key (or upload) does not exist. For reads, the file
	// is gone; for deletes it never happens (deleting nothing succeeds).
	ErrNotFound = errors.New("object not found")

	// ErrNoSuchBucket: the bucket does not exist. Fatal for a mount.
	ErrNoSuchBucket = errors.New("bucket does not exist")

	// ErrAccessDenied: the credentials are valid but the policy forbids the
	// request. Writes should surface as EACCES, not be retried.
	ErrAccessDenied = errors.New("access denied")

	// ErrInvalidCredentials: the access key is unknown, the signature does
	// not match, the token expired, or no credentials could be found.
	ErrInvalidCredentials = errors.New("invalid or missing credentials")

	// ErrNoCredentials: the credential chain found no credentials at all
	// (environment, shared files, web identity, ECS, instance metadata).
	// It comes with Kind ErrInvalidCredentials and says more: tell the
	// user to provide credentials, not that S3 rejected theirs.
	ErrNoCredentials = errors.New("no credentials found")

	// ErrPrecondition: a conditional request found the object in another
	// state (HTTP 412). The caller's view is stale: revalidate, or take the
	// conflict path for uploads.
	ErrPrecondition = errors.New("precondition failed")

	// ErrConflict: the server refused the write because of concurrent or
	// incompatible state (HTTP 409, e.g. a conditional write racing
	// another, or a posix backend that cannot hold a key beside a prefix
	// of the same name). Retry later or report.
	ErrConflict = errors.New("conflicting request")

	// ErrThrottled: the server asked us to slow down (503 SlowDown, 429)
	// and the retries ran out. Try again later.
	ErrThrottled = errors.New("throttled by server")

	// ErrUnavailable: a network error or a 5xx persisted through the
	// retries. The data is safe where it was; try again later.
	ErrUnavailable = errors.New("service unavailable")

	// ErrNotImplemented: the endpoint does not support this request or
	// header (HTTP 501, NotImplemented). Fall back or report.
	ErrNotImplemented = errors.New("not supported by endpoint")

	// ErrInvalidRange: the requested range starts past the end (HTTP 416).
	ErrInvalidRange = errors.New("invalid range")

	// ErrInvalidRequest: the server rejected the request as malformed
	// (HTTP 400 that is none of the above). A bug or an unsupported
	// combination; do not retry.
	ErrInvalidRequest = errors.New("invalid request")
)

// Error is one failed S3 request. It wraps a sentinel (Kind) and the SDK's
// error (Cause); both are visible to errors.Is and errors.As.
type Error struct {
	Op        string // "HeadObject", "PutObject", ...
	Key       string // relative key, or "" for bucket-level requests
	RequestID string
	Status    int    // HTTP status, 0 when no response arrived
	Code      string // S3 error code, e.g. "SlowDown"
	Kind      error  // one of the sentinels above
	Cause     error
}

func (e *Error) Error() string {
	s := fmt.Sprintf("s3 %s", e.Op)
	if e.Key != "" {
		s += fmt.Sprintf(" %q", e.Key)
	}
	s += ": " + e.Kind.Error()
	if e.Code != "" {
		s += " (" + e.Code
		if e.Status != 0 {
			s += fmt.Sprintf(", HTTP %d", e.Status)
		}
		s += ")"
	} else if e.Status != 0 {
		s += fmt.Sprintf(" (HTTP %d)", e.Status)
	}
	if e.RequestID != "" {
		s += ", request id " + e.RequestID
	}
	// Without a response the cause is all there is to go on ("connection
	// refused", "no credentials found"): show its innermost message.
	if e.Cause != nil && e.Code == "" && (e.Kind == ErrUnavailable || e.Kind == ErrInvalidCredentials) {
		s += ": " + rootCause(e.Cause).Error()
	}
	if e.Cause != nil && e.Status == 0 && e.Kind == ErrPrecondition { // see Store.unanswered
		s += " (no answer: " + rootCause(e.Cause).Error() + "; a HEAD shows the condition does not hold)"
	}
	return s
}

// rootCause follows single-error Unwrap chains to the innermost error.
func rootCause(err error) error {
	for {
		next := errors.Unwrap(err)
		if next == nil {
			return err
		}
		err = next
	}
}

func (e *Error) Unwrap() []error { return []error{e.Kind, e.Cause} }

// IsRetryable reports whether err is transient: trying the same request
// again later may succeed.
func IsRetryable(err error) bool {
	return errors.Is(err, ErrThrottled) || errors.Is(err, ErrUnavailable) || errors.Is(err, ErrConflict)
}
