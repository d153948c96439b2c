// Package s3backend is the only part of keelfs that speaks S3. It hides the
// AWS SDK behind ObjectStore so that the cache can be tested against an
// in-memory store (package memstore) and the real one (Store, from New)
// alike, and so that every S3 quirk is dealt with in one place.
//
// Keys are relative to the configured prefix in both directions: callers
// never see or build the full S3 key.
//
// # Errors
//
// Every error a Store method returns is an *Error naming the operation, the
// relative key, the request ID and the HTTP status, and wrapping exactly one
// sentinel (ErrNotFound, ErrPrecondition, ErrThrottled...) plus the SDK's
// own error. Callers branch with errors.Is on the sentinel; they never look
// at S3 error codes. The mapping follows the S3 error code first and the
// HTTP status second, because HEAD responses have no body and so no code.
// Requests that got no response at all (connection refused or reset,
// timeouts, a body cut short, a cancelled context) are ErrUnavailable; a
// cancelled or expired context stays visible to errors.Is(err,
// context.Canceled) and context.DeadlineExceeded.
//
// A few S3 answers are folded where the filesystem does not care about the
// difference: deleting a key that is not there and aborting an upload that
// no longer exists succeed, and a Put or CompleteMultipart conditional on an
// ETag whose object has meanwhile been deleted (S3: 404 NoSuchKey) is
// ErrPrecondition, since for the caller it is the same news as a 412.
// A conditional Put or CompleteMultipart that got no answer at all is
// decided by a HEAD: if the object shows the condition does not hold (a
// 412 hidden by a reset, or the lost answer of an attempt that landed),
// it is ErrPrecondition too, not an outage.
//
// # Retries
//
// The SDK's standard retryer does the retrying, with Config.MaxAttempts
// attempts (default 5) and exponential backoff with jitter capped at
// Config.MaxBackoff (default 4s), so one request gives up within about ten
// seconds; the cache's uploader retries failed uploads on top of that, with
// its own backoff, forever. Throttling (SlowDown, 503, 429), other
// 5xx answers, connection errors and timeouts are retried; nothing else is.
// The client-side retry quota is disabled: a burst of failures across many
// parallel uploads must slow each of them down, not make the SDK refuse
// to try ("failed to get rate limit token"). Backoff sleeps end with the
// context, so a caller's deadline bounds the whole request, retries
// included.
//
// Every attempt is reported to Config.Observer (RequestDone); every retry is
// reported once to Observer.Retry, with the number of the attempt that
// failed, and logged once at WARN with the attributes op, key, request_id,
// attempt and err. A GET body that ends early is not retried here: the
// reader returns an error wrapping ErrUnavailable and the caller asks again
// for what it still needs.
//
// # Credentials
//
// Credentials come from the standard AWS chain (environment, shared
// profile, web identity, ECS task role, IMDS), or none at all with
// Config.NoSignRequest. They, the signatures and the Authorization header
// are never logged. A failure to find or refresh credentials, and the S3
// codes for a bad key, signature or token, are ErrInvalidCredentials, so
// that a mount can tell "fix your credentials" from "fix your bucket policy"
// (ErrAccessDenied); when the chain found no credentials at all, the error
// is also ErrNoCredentials. NetworkReason and RequestHost turn a request
// that got no answer into the few words a user needs ("connection
// refused", the address it went to). AWS_CA_BUNDLE and Config.CABundle are
// honoured for endpoints with a private CA. The SDK's own log lines go to
// Config.Logger at debug level, never to stderr.
package s3backend
