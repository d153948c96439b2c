package s3backend

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"
)

// Reach wraps an ObjectStore and keeps track of whether S3 answers, so that
// an outage costs a mount one bounded wait rather than one per request.
//
// S3 counts as unreachable once a request fails without an answer from it
// (connection refused or reset, a timeout) or with a throttling or 5xx
// answer that outlasted the SDK's retries. While it is, every request
// fails at once with ErrUnavailable (the cache then serves what it has and
// keeps writes for later), and a probe (a one-key LIST) asks every
// ProbeEvery whether it is back. The first answer makes it reachable
// again; OnChange is told both ways. A request that begins while S3 is
// reachable and gets no answer within Wait fails too: reads (HEAD, LIST,
// the first byte of a GET) are what a process waits for, and a black hole
// must not hold it.
//
// One WARN when S3 goes away and one INFO when it comes back, not one
// line per request.
type Reach struct {
	ObjectStore
	opt ReachOptions

	mu        sync.Mutex
	down      bool
	downSince time.Time
	lastOK    time.Time
	lastErr   error // why it went down
	probing   bool
	closed    bool
	stop      chan struct{}
	wg        sync.WaitGroup
}

// ReachOptions configure a Reach. Zero values get the defaults noted.
type ReachOptions struct {
	// Wait is the longest a read waits for S3 to begin answering before it
	// fails and S3 counts as unreachable (default 5s).
	Wait time.Duration
	// ProbeEvery is how often an unreachable S3 is asked again (default 1s).
	ProbeEvery time.Duration
	OnChange   func(reachable bool) // called without locks, from any goroutine
	Logger     *slog.Logger
	Clock      clockwork.Clock
}

// ErrUnreachable is the cause of the requests Reach fails at once.
var ErrUnreachable = errors.New("s3 is unreachable")

// NewReach wraps store.
func NewReach(store ObjectStore, opt ReachOptions) *Reach {
	if opt.Wait <= 0 {
		opt.Wait = 5 * time.Second
	}
	if opt.ProbeEvery <= 0 {
		opt.ProbeEvery = time.Second
	}
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	if opt.Clock == nil {
		opt.Clock = clockwork.NewRealClock()
	}
	return &Reach{ObjectStore: store, opt: opt, stop: make(chan struct{}), lastOK: opt.Clock.Now()}
}

// Close stops the probe.
func (r *Reach) Close() {
	r.mu.Lock()
	if !r.closed {
		r.closed = true
		close(r.stop)
	}
	r.mu.Unlock()
	r.wg.Wait()
}

// ReachState is what Reach knows of S3.
type ReachState struct {
	Reachable bool
	LastOK    time.Time // the last answer S3 gave (the mount's start before one)
	DownSince time.Time // when it stopped answering (zero while reachable)
	Err       error     // why it counts as unreachable
}

// State returns what Reach knows now.
func (r *Reach) State() ReachState {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := ReachState{Reachable: !r.down, LastOK: r.lastOK}
	if r.down {
		st.DownSince, st.Err = r.downSince, r.lastErr
	}
	return st
}

// outage reports whether err says S3 did not answer (as opposed to an
// answer about the request, or the caller giving up).
func outage(ctx context.Context, err error) bool {
	if err == nil || ctx.Err() != nil {
		return false
	}
	return errors.Is(err, ErrUnavailable) || errors.Is(err, ErrThrottled)
}

// begin fails a request at once while S3 is unreachable.
func (r *Reach) begin(op, key string) error {
	r.mu.Lock()
	down, since := r.down, r.downSince
	r.mu.Unlock()
	if !down {
		return nil
	}
	return &Error{Op: op, Key: key, Kind: ErrUnavailable,
		Cause: fmt.Errorf("%w since %s", ErrUnreachable, since.UTC().Format(time.RFC3339))}
}

// end records what a request says about S3: any answer, even an error
// about the request (404, 412, 403), says it is reachable; no answer says
// it is not, unless the caller gave up first.
func (r *Reach) end(ctx context.Context, err error) {
	switch {
	case err == nil:
		r.up()
	case outage(ctx, err):
		r.fail(err)
	case errors.Is(err, ErrUnavailable):
		// The caller gave up: that says nothing about S3.
	default:
		r.up()
	}
}

func (r *Reach) up() {
	r.mu.Lock()
	r.lastOK = r.opt.Clock.Now()
	was := r.down
	r.down = false
	r.mu.Unlock()
	if was {
		r.changed(true)
	}
}

func (r *Reach) fail(err error) {
	r.mu.Lock()
	if r.down || r.closed {
		r.mu.Unlock()
		return
	}
	r.down, r.downSince, r.lastErr = true, r.opt.Clock.Now(), err
	start := !r.probing
	r.probing = true
	r.mu.Unlock()
	r.opt.Logger.Warn("s3 is unreachable: serving what is cached, keeping writes in the cache until it answers again",
		"err", err)
	if start {
		r.wg.Add(1)
		go r.probe()
	}
	r.changed(false)
}

func (r *Reach) changed(up bool) {
	if up {
		r.mu.Lock()
		since := r.downSince
		r.mu.Unlock()
		r.opt.Logger.Info("s3 is reachable again", "unreachable_for", r.opt.Clock.Since(since).Round(time.Millisecond).String())
	}
	if r.opt.OnChange != nil {
		r.opt.OnChange(up)
	}
}

// probe asks S3 every ProbeEvery, while it is unreachable, with a one-key
// LIST, until it answers.
func (r *Reach) probe() {
	defer r.wg.Done()
	for {
		select {
		case <-r.stop:
			return
		case <-r.opt.Clock.After(r.opt.ProbeEvery):
		}
		ctx, cancel := context.WithTimeout(context.Background(), r.opt.Wait)
		err := r.ObjectStore.List(ctx, ListInput{MaxKeys: 1}, func(ListEntry) error { return nil })
		cancel()
		if err == nil || !(errors.Is(err, ErrUnavailable) || errors.Is(err, ErrThrottled)) {
			r.mu.Lock()
			r.probing = false
			r.mu.Unlock()
			r.up()
			return
		}
	}
}

// waitCtx is ctx with Wait for S3 to begin answering: the returned stop
// must be called once it has (the rest may take longer), and timedOut
// says whether Wait ran out first.
func (r *Reach) waitCtx(ctx context.Context) (context.Context, func() bool, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(ctx)
	t := r.opt.Clock.AfterFunc(r.opt.Wait, func() {
		cancel(fmt.Errorf("%w: no answer within %s", ErrUnreachable, r.opt.Wait))
	})
	return ctx, t.Stop, func() { cancel(nil) }
}

// timedOut turns a failure caused by Wait running out into ErrUnavailable.
func (r *Reach) timedOut(ctx context.Context, op, key string, err error) error {
	if cause := context.Cause(ctx); err != nil && cause != nil && errors.Is(cause, ErrUnreachable) {
		return &Error{Op: op, Key: key, Kind: ErrUnavailable, Cause: cause}
	}
	return err
}

func (r *Reach) Head(ctx context.Context, key string) (ObjectInfo, error) {
	if err := r.begin("HeadObject", key); err != nil {
		return ObjectInfo{}, err
	}
	wctx, stop, cancel := r.waitCtx(ctx)
	defer cancel()
	info, err := r.ObjectStore.Head(wctx, key)
	stop()
	err = r.timedOut(wctx, "HeadObject", key, err)
	r.end(ctx, err)
	return info, err
}

func (r *Reach) Get(ctx context.Context, key string, off, length int64, etag string) (io.ReadCloser, error) {
	if err := r.begin("GetObject", key); err != nil {
		return nil, err
	}
	wctx, stop, cancel := r.waitCtx(ctx)
	body, err := r.ObjectStore.Get(wctx, key, off, length, etag)
	stopped := stop()
	err = r.timedOut(wctx, "GetObject", key, err)
	r.end(ctx, err)
	if err != nil || !stopped {
		cancel()
		if err == nil {
			body.Close()
			err = &Error{Op: "GetObject", Key: key, Kind: ErrUnavailable, Cause: context.Cause(wctx)}
		}
		return nil, err
	}
	return &cancelOnClose{ReadCloser: body, cancel: cancel}, nil
}

// cancelOnClose releases a GET's context once its body is closed.
type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (c *cancelOnClose) Close() error {
	err := c.ReadCloser.Close()
	c.cancel()
	return err
}

func (r *Reach) List(ctx context.Context, in ListInput, fn func(ListEntry) error) error {
	if err := r.begin("ListObjectsV2", in.Prefix); err != nil {
		return err
	}
	// Each page must begin within Wait; a long listing may take longer.
	wctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var mu sync.Mutex
	var t clockwork.Timer
	arm := func() {
		mu.Lock()
		defer mu.Unlock()
		if t != nil {
			t.Stop()
		}
		t = r.opt.Clock.AfterFunc(r.opt.Wait, func() {
			cancel(fmt.Errorf("%w: no answer within %s", ErrUnreachable, r.opt.Wait))
		})
	}
	arm()
	err := r.ObjectStore.List(wctx, in, func(e ListEntry) error {
		arm()
		return fn(e)
	})
	mu.Lock()
	t.Stop()
	mu.Unlock()
	err = r.timedOut(wctx, "ListObjectsV2", in.Prefix, err)
	r.end(ctx, err)
	return err
}

func (r *Reach) Put(ctx context.Context, in PutInput) (string, error) {
	if err := r.begin("PutObject", in.Key); err != nil {
		return "", err
	}
	etag, err := r.ObjectStore.Put(ctx, in)
	r.end(ctx, err)
	return etag, err
}

func (r *Reach) Copy(ctx context.Context, in CopyInput) (string, error) {
	if err := r.begin("CopyObject", in.Dst); err != nil {
		return "", err
	}
	etag, err := r.ObjectStore.Copy(ctx, in)
	r.end(ctx, err)
	return etag, err
}

func (r *Reach) Delete(ctx context.Context, key string, cond Condition) error {
	if err := r.begin("DeleteObject", key); err != nil {
		return err
	}
	err := r.ObjectStore.Delete(ctx, key, cond)
	r.end(ctx, err)
	return err
}

func (r *Reach) CreateMultipart(ctx context.Context, key string, meta Metadata, contentType string) (string, error) {
	if err := r.begin("CreateMultipartUpload", key); err != nil {
		return "", err
	}
	id, err := r.ObjectStore.CreateMultipart(ctx, key, meta, contentType)
	r.end(ctx, err)
	return id, err
}

func (r *Reach) UploadPart(ctx context.Context, in UploadPartInput) (string, error) {
	if err := r.begin("UploadPart", in.Key); err != nil {
		return "", err
	}
	etag, err := r.ObjectStore.UploadPart(ctx, in)
	r.end(ctx, err)
	return etag, err
}

func (r *Reach) UploadPartCopy(ctx context.Context, in UploadPartCopyInput) (string, error) {
	if err := r.begin("UploadPartCopy", in.Key); err != nil {
		return "", err
	}
	etag, err := r.ObjectStore.UploadPartCopy(ctx, in)
	r.end(ctx, err)
	return etag, err
}

func (r *Reach) CompleteMultipart(ctx context.Context, key, uploadID string, parts []CompletedPart, cond Condition) (string, error) {
	if err := r.begin("CompleteMultipartUpload", key); err != nil {
		return "", err
	}
	etag, err := r.ObjectStore.CompleteMultipart(ctx, key, uploadID, parts, cond)
	r.end(ctx, err)
	return etag, err
}

func (r *Reach) AbortMultipart(ctx context.Context, key, uploadID string) error {
	if err := r.begin("AbortMultipartUpload", key); err != nil {
		return err
	}
	err := r.ObjectStore.AbortMultipart(ctx, key, uploadID)
	r.end(ctx, err)
	return err
}
