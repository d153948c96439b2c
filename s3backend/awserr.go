package s3backend

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/smithy-go"
)

// wrap turns an SDK error into an *Error. When the final error says less
// than the last attempt did (the context ended during a backoff sleep, and
// the SDK returns only that), the last attempt's error is kept in the
// Cause so that "connection refused" is not lost behind "deadline
// exceeded".
func (s *Store) wrap(ctx context.Context, c *call, op, key string, err error) error {
	if err == nil {
		return nil
	}
	e := classify(op, key, err)
	if e.Status == 0 && c != nil && c.lastErr != nil && !errors.Is(err, c.lastErr) {
		e.Cause = fmt.Errorf("%w (last attempt: %w)", err, c.lastErr)
	}
	if ctxErr := ctx.Err(); ctxErr != nil && e.Status == 0 && !errors.Is(e.Cause, ctxErr) {
		// Some transports report a cancelled request as a bare network
		// error; the caller must still see the context's own error.
		e.Cause = fmt.Errorf("%w: %w", ctxErr, e.Cause)
		e.Kind = ErrUnavailable
	}
	return e
}

// classify maps one SDK error to its sentinel; see the package doc.
func classify(op, key string, err error) *Error {
	e := &Error{Op: op, Key: key, Cause: err}
	e.Status, e.RequestID = responseOf(err)
	var api smithy.APIError
	if errors.As(err, &api) {
		e.Code = api.ErrorCode()
	}
	var cred *credentialsError
	switch {
	case errors.As(err, &cred):
		// The credential chain's own HTTP errors (STS, IMDS) say nothing
		// about S3. A chain cut off by the deadline (instance metadata
		// that never answers) found no credentials in time: that, not
		// an unreachable S3, is the news.
		e.Status, e.RequestID, e.Code = 0, "", ""
		e.Kind = ErrInvalidCredentials
	case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
		e.Kind = ErrUnavailable
	default:
		e.Kind = kindOf(e.Status, e.Code)
	}
	return e
}

func kindOf(status int, code string) error {
	switch code {
	case "NotFound", "NoSuchKey", "NoSuchUpload":
		return ErrNotFound
	case "NoSuchBucket":
		return ErrNoSuchBucket
	case "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "TokenRefreshRequired",
		"XAdminUserNotFound": // versitygw's answer (404!) to an unknown access key
		return ErrInvalidCredentials
	case "AccessDenied":
		return ErrAccessDenied
	case "PreconditionFailed":
		return ErrPrecondition
	case "ConditionalRequestConflict", "OperationAborted", "ObjectParentIsFile":
		return ErrConflict
	case "NotImplemented":
		return ErrNotImplemented
	case "InvalidRange":
		return ErrInvalidRange
	case "RequestTimeout": // 400, but S3 means "your connection stalled"
		return ErrUnavailable
	}
	if _, ok := retry.DefaultThrottleErrorCodes[code]; ok {
		return ErrThrottled
	}
	switch {
	case status == http.StatusNotFound:
		return ErrNotFound
	case status == http.StatusForbidden:
		return ErrAccessDenied
	case status == http.StatusPreconditionFailed:
		return ErrPrecondition
	case status == http.StatusConflict:
		return ErrConflict
	case status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable:
		return ErrThrottled
	case status == http.StatusNotImplemented:
		return ErrNotImplemented
	case status == http.StatusRequestedRangeNotSatisfiable:
		return ErrInvalidRange
	case status >= 500:
		return ErrUnavailable
	case status >= 300:
		// 3xx from S3 is a wrong region or endpoint: no retry will help.
		return ErrInvalidRequest
	}
	// No response, or a 2xx whose body could not be read.
	return ErrUnavailable
}

func responseOf(err error) (status int, requestID string) {
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		return re.HTTPStatusCode(), re.ServiceRequestID()
	}
	return 0, ""
}

// markedCredentials tags errors from the credential chain. The SDK wraps
// them in plain fmt errors, and some (an STS AccessDenied while assuming a
// role) would otherwise look like S3 answers.
type markedCredentials struct{ aws.CredentialsProvider }

func (p markedCredentials) Retrieve(ctx context.Context) (aws.Credentials, error) {
	c, err := p.CredentialsProvider.Retrieve(ctx)
	if err != nil {
		return c, &credentialsError{err}
	}
	return c, nil
}

type credentialsError struct{ err error }

func (e *credentialsError) Error() string { return "retrieve credentials: " + e.err.Error() }
func (e *credentialsError) Unwrap() error { return e.err }

// Is makes a chain that ended at instance metadata ErrNoCredentials: the
// SDK asks IMDS last, once the environment, the shared files, web identity
// and the ECS endpoint had nothing, so its failure (no role, IMDS disabled
// or refusing) means no credentials anywhere. A chain cut off by a
// deadline says only that the context ended, so it is not this.
func (e *credentialsError) Is(target error) bool {
	if target != ErrNoCredentials {
		return false
	}
	var op *smithy.OperationError
	return errors.As(e.err, &op) && op.ServiceID == "ec2imds"
}
