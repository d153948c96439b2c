package s3backend

import (
	"context"
	"time"

	awsmiddleware "github.com/aws/aws-sdk-go-v2/aws/middleware"
	"github.com/aws/smithy-go/middleware"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

// call is what the per-attempt middleware needs to know about one SDK call
// that the SDK itself does not carry: the relative key, the payload size,
// and what the previous attempt did.
type call struct {
	key      string
	up       int64 // request payload bytes, counted once per attempt that got a response
	attempts int
	lastErr  error // of the latest attempt; kept for errors that replace it (cancel during backoff)
}

type callKey struct{}

// track starts the bookkeeping for one SDK call (one page, for List).
func (s *Store) track(ctx context.Context, key string, up int64) (context.Context, *call) {
	c := &call{key: key, up: up}
	return context.WithValue(ctx, callKey{}, c), c
}

// attemptObserver sits in the Finalize step right after the SDK's retry
// middleware, so it runs once per attempt. A retry is reported when the
// attempt after it starts: only then is it certain to happen (the backoff
// sleep may end with the context instead).
type attemptObserver struct{ s *Store }

func (s *Store) addAttemptObserver(stack *middleware.Stack) error {
	return stack.Finalize.Insert(attemptObserver{s}, "Retry", middleware.After)
}

func (attemptObserver) ID() string { return "keelfsAttemptObserver" }

func (m attemptObserver) HandleFinalize(ctx context.Context, in middleware.FinalizeInput, next middleware.FinalizeHandler) (
	middleware.FinalizeOutput, middleware.Metadata, error,
) {
	op := awsmiddleware.GetOperationName(ctx)
	c, ok := ctx.Value(callKey{}).(*call)
	if !ok {
		c = &call{}
	}
	c.attempts++
	if c.attempts > 1 && c.lastErr != nil {
		m.s.retrying(op, c.key, c.attempts-1, c.lastErr)
	}
	start := time.Now()
	out, md, err := next.HandleFinalize(ctx, in)
	status := 0
	if resp, ok := awsmiddleware.GetRawResponse(md).(*smithyhttp.Response); ok && resp != nil {
		status = resp.StatusCode
	} else if st, _ := responseOf(err); st != 0 {
		status = st
	}
	m.s.obs.RequestDone(op, status, time.Since(start))
	if status != 0 && c.up > 0 {
		m.s.obs.Transferred(c.up, 0)
	}
	if err == nil || ctx.Err() == nil {
		// An attempt cut short by the caller's context says nothing
		// about the endpoint; keep what the one before it said.
		c.lastErr = err
	}
	return out, md, err
}

func (s *Store) retrying(op, key string, attempt int, err error) {
	_, rid := responseOf(err)
	s.obs.Retry(op, key, rid, attempt, classify(op, key, err))
	// Debug: a retry that works is no news, and one that does not ends in
	// an error its caller reports (or in Reach's one WARN for an outage).
	s.log.Debug("s3 request failed; retrying", "op", op, "key", key, "request_id", rid, "attempt", attempt, "err", err)
}
