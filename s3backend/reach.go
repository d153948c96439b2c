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
	checking  bool // a check for a write under way asks S3 (see check)
	closed    bool
	// stopped ends with Close. It stops the probe, and its request into a
	// black hole too, which must not hold Close (and a stopping mount)
	// for Wait.
	stopped context.Context
	halt    context.CancelFunc
	wg      sync.WaitGroup
	// inflight cancels the requests under way. When S3 goes away, those
	// that began before are cut short: into a black hole they would wait
	// for the connection's idle timeout, holding their upload job.
	inflight map[*inflightReq]struct{}
	probeMu  sync.Mutex // one Probe at a time
}

type inflightReq struct{ cancel context.CancelCauseFunc }

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

// ErrUnreachable is the cause of the requests Reach fails at once, or cuts
// short because S3 stopped answering (errors.Is finds it).
var ErrUnreachable = errors.New("s3 is unreachable")

// unreachable is an ErrUnreachable that says more: it is the innermost
// error, so the message users see is its own.
type unreachable struct{ msg string }

func (e unreachable) Error() string        { return e.msg }
func (e unreachable) Is(target error) bool { return target == ErrUnreachable }

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
	stopped, halt := context.WithCancel(context.Background())
	return &Reach{ObjectStore: store, opt: opt, stopped: stopped, halt: halt,
		lastOK: opt.Clock.Now(), inflight: make(map[*inflightReq]struct{})}
}

// track registers a request under way; done must be called when it ends.
func (r *Reach) track(ctx context.Context) (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(ctx)
	q := &inflightReq{cancel: cancel}
	r.mu.Lock()
	r.inflight[q] = struct{}{}
	r.mu.Unlock()
	return ctx, func() {
		r.mu.Lock()
		delete(r.inflight, q)
		r.mu.Unlock()
		cancel(nil)
	}
}

// DialFailed makes S3 unreachable at once: a connection to it was
// refused or has no route (Config.DialFailed), so no answer is coming and
// the requests under way need not wait out Wait, nor the SDK's retries.
func (r *Reach) DialFailed(err error) {
	r.fail(&Error{Op: "connect", Kind: ErrUnavailable, Cause: err})
}

// Close stops the probe, ending a request of it under way.
func (r *Reach) Close() {
	r.mu.Lock()
	if !r.closed {
		r.closed = true
		r.halt()
	}
	r.mu.Unlock()
	r.wg.Wait()
}

// Reachable reports whether S3 answers, as far as Reach knows.
func (r *Reach) Reachable() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return !r.down
}

// Probe asks S3 at once, while it counts as unreachable, whether it
// answers again (a one-key LIST, within Wait), rather than leaving that
// to the next periodic probe; it returns whether S3 is reachable. An fsync
// or a flush, which exist to reach S3, call it. Concurrent callers share
// one request.
func (r *Reach) Probe(ctx context.Context) bool {
	r.probeMu.Lock()
	defer r.probeMu.Unlock()
	if r.Reachable() {
		return true
	}
	pctx, cancel := context.WithTimeout(ctx, r.opt.Wait)
	err := r.ObjectStore.List(pctx, ListInput{MaxKeys: 1}, func(ListEntry) error { return nil })
	cancel()
	if err == nil || !(errors.Is(err, ErrUnavailable) || errors.Is(err, ErrThrottled)) {
		r.up()
	}
	return r.Reachable()
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
		Cause: unreachable{"s3 is unreachable since " + since.UTC().Format(time.RFC3339)}}
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

func (r *Reach) fail(err error) { r.failUnlessAnswered(err, time.Time{}) }

// failUnlessAnswered is fail, unless S3 answered a request after since
// (under the same lock, so that an answer arriving meanwhile wins): a
// check's LIST that got no answer while other requests did is no outage.
func (r *Reach) failUnlessAnswered(err error, since time.Time) {
	r.mu.Lock()
	if r.down || r.closed || (!since.IsZero() && r.lastOK.After(since)) {
		r.mu.Unlock()
		return
	}
	r.down, r.downSince, r.lastErr = true, r.opt.Clock.Now(), err
	start := !r.probing
	r.probing = true
	if start {
		// Under mu, so that a Close that has not yet set closed waits
		// for this probe (wg.Add must happen before wg.Wait).
		r.wg.Add(1)
	}
	cut := unreachable{fmt.Sprintf("cut short when s3 stopped answering (%v)", err)}
	for q := range r.inflight {
		q.cancel(cut)
	}
	r.mu.Unlock()
	r.opt.Logger.Warn("s3 is unreachable: serving what is cached, keeping writes in the cache until it answers again",
		"err", err)
	if start {
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
		case <-r.stopped.Done():
			return
		case <-r.opt.Clock.After(r.opt.ProbeEvery):
		}
		ctx, cancel := context.WithTimeout(r.stopped, r.opt.Wait)
		err := r.ObjectStore.List(ctx, ListInput{MaxKeys: 1}, func(ListEntry) error { return nil })
		cancel()
		if r.stopped.Err() != nil {
			return // closed meanwhile: the answer, if any, is nobody's news
		}
		if err == nil || !(errors.Is(err, ErrUnavailable) || errors.Is(err, ErrThrottled)) {
			r.mu.Lock()
			r.probing = false
			r.mu.Unlock()
			r.up()
			return
		}
	}
}

// request is one request under way through Reach.
type request struct {
	r      *Reach
	op     string
	key    string
	outer  context.Context // the caller's
	ctx    context.Context // cancelled by Wait running out or S3 going away
	cancel context.CancelCauseFunc
	done   func()
	timer  clockwork.Timer
	over   bool // released: no timer is set again (watch)
	mu     sync.Mutex
}

// start begins a request: it fails at once while S3 is unreachable.
func (r *Reach) start(ctx context.Context, op, key string) (*request, error) {
	if err := r.begin(op, key); err != nil {
		return nil, err
	}
	q := &request{r: r, op: op, key: key, outer: ctx}
	q.ctx, q.done = r.track(ctx)
	q.ctx, q.cancel = context.WithCancelCause(q.ctx)
	return q, nil
}

// arm gives S3 Wait to begin answering (again, for each page of a list).
func (q *request) arm() {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.timer != nil {
		q.timer.Stop()
	}
	q.timer = q.r.opt.Clock.AfterFunc(q.r.opt.Wait, func() {
		q.cancel(unreachable{fmt.Sprintf("no answer from s3 within %s", q.r.opt.Wait)})
	})
}

// answered stops the Wait; it reports false if Wait had run out.
func (q *request) answered() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.timer == nil {
		return true
	}
	return q.timer.Stop()
}

// finish records what the request said about S3 and returns its error,
// made ErrUnavailable if Reach cut it short (still naming the multipart
// upload a cut copy left, for the caller to abort). release frees it (a
// GET's body is read after finish).
func (q *request) finish(err error) error {
	if cause := context.Cause(q.ctx); err != nil && cause != nil && errors.Is(cause, ErrUnreachable) {
		cut := &Error{Op: q.op, Key: q.key, Kind: ErrUnavailable, Cause: cause}
		if left := (*UploadLeft)(nil); errors.As(err, &left) {
			err = &UploadLeft{Key: left.Key, UploadID: left.UploadID, Err: cut}
		} else {
			err = cut
		}
	}
	q.r.end(q.outer, err)
	return err
}

func (q *request) release() {
	q.mu.Lock()
	q.over = true
	q.mu.Unlock()
	q.answered()
	q.cancel(nil)
	q.done()
}

func (r *Reach) Head(ctx context.Context, key string) (ObjectInfo, error) {
	q, err := r.start(ctx, "HeadObject", key)
	if err != nil {
		return ObjectInfo{}, err
	}
	defer q.release()
	q.arm()
	info, err := r.ObjectStore.Head(q.ctx, key)
	q.answered()
	return info, q.finish(err)
}

func (r *Reach) Get(ctx context.Context, key string, off, length int64, etag string) (io.ReadCloser, error) {
	q, err := r.start(ctx, "GetObject", key)
	if err != nil {
		return nil, err
	}
	q.arm()
	body, err := r.ObjectStore.Get(q.ctx, key, off, length, etag)
	inTime := q.answered()
	if err == nil && !inTime {
		body.Close()
		err = context.Cause(q.ctx)
	}
	if err = q.finish(err); err != nil {
		q.release()
		return nil, err
	}
	// The answer began in time; reading the body may take longer.
	return &releaseOnClose{ReadCloser: body, release: q.release}, nil
}

// releaseOnClose releases a GET's request once its body is closed.
type releaseOnClose struct {
	io.ReadCloser
	release func()
	once    sync.Once
}

func (b *releaseOnClose) Close() error {
	err := b.ReadCloser.Close()
	b.once.Do(b.release)
	return err
}

func (r *Reach) List(ctx context.Context, in ListInput, fn func(ListEntry) error) error {
	q, err := r.start(ctx, "ListObjectsV2", in.Prefix)
	if err != nil {
		return err
	}
	defer q.release()
	// Each page must begin within Wait; a long listing may take longer.
	q.arm()
	err = r.ObjectStore.List(q.ctx, in, func(e ListEntry) error {
		q.arm()
		return fn(e)
	})
	q.answered()
	return q.finish(err)
}

// write runs a request that sends data: it has no Wait (the body takes
// what it takes), but is cut short if S3 goes away meanwhile; and while it
// runs, S3 is asked every Wait whether it still answers (watch).
func (r *Reach) write(ctx context.Context, op, key string, f func(ctx context.Context) error) error {
	q, err := r.start(ctx, op, key)
	if err != nil {
		return err
	}
	defer q.release()
	q.watch()
	return q.finish(f(q.ctx))
}

// watch asks S3, every Wait while the write runs, whether it still
// answers (check). A write has no Wait of its own, so into a black hole it
// would wait for its connection's idle timeout (2 minutes), once for each
// of the SDK's attempts, with S3 counted as reachable throughout: found by
// hand, an fsync waited ten minutes for an upload whose server had stopped
// answering, and `keelfs status` said reachable.
// It reports whether it armed the timer (not once the request is over).
func (q *request) watch() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.over {
		return false
	}
	q.timer = q.r.opt.Clock.AfterFunc(q.r.opt.Wait, func() {
		if q.watch() {
			q.r.check()
		}
	})
	return true
}

// check asks S3 for one key, within Wait, on behalf of the writes under
// way: no answer makes S3 unreachable, which cuts them short; an answer
// says they are only slow. It asks only if S3 answered nothing for Wait
// (a bulk upload whose parts land asks nothing, and all the writes under
// way share one check per Wait), and a check without an answer counts
// only if nothing else was answered meanwhile: a LIST stuck behind a
// saturated uplink, or slow on a busy server, while parts still land, is
// no outage, and cutting every request short would only send them again.
func (r *Reach) check() {
	r.mu.Lock()
	if r.down || r.closed || r.checking || r.opt.Clock.Since(r.lastOK) < r.opt.Wait {
		r.mu.Unlock()
		return
	}
	began := r.lastOK
	r.checking = true
	r.wg.Add(1) // under mu, as in fail: Close waits for it
	r.mu.Unlock()
	defer r.wg.Done()
	ctx, cancel := context.WithCancelCause(r.stopped)
	noAnswer := unreachable{fmt.Sprintf("no answer from s3 within %s while an upload was under way", r.opt.Wait)}
	timer := r.opt.Clock.AfterFunc(r.opt.Wait, func() { cancel(noAnswer) })
	err := r.ObjectStore.List(ctx, ListInput{MaxKeys: 1}, func(ListEntry) error { return nil })
	timer.Stop()
	cause := context.Cause(ctx)
	cancel(nil)
	r.mu.Lock()
	r.checking = false
	r.mu.Unlock()
	switch {
	case r.stopped.Err() != nil:
		// Closed meanwhile: the answer, if any, is nobody's news.
	case err == nil || !(errors.Is(cause, ErrUnreachable) || outage(context.Background(), err)):
		r.up()
	case errors.Is(cause, ErrUnreachable):
		r.failUnlessAnswered(&Error{Op: "ListObjectsV2", Kind: ErrUnavailable, Cause: cause}, began)
	default:
		r.failUnlessAnswered(err, began)
	}
}

func (r *Reach) Put(ctx context.Context, in PutInput) (etag string, err error) {
	err = r.write(ctx, "PutObject", in.Key, func(ctx context.Context) (err error) {
		etag, err = r.ObjectStore.Put(ctx, in)
		return err
	})
	return etag, err
}

func (r *Reach) Copy(ctx context.Context, in CopyInput) (etag string, err error) {
	err = r.write(ctx, "CopyObject", in.Dst, func(ctx context.Context) (err error) {
		etag, err = r.ObjectStore.Copy(ctx, in)
		return err
	})
	return etag, err
}

func (r *Reach) Delete(ctx context.Context, key string, cond Condition) error {
	return r.write(ctx, "DeleteObject", key, func(ctx context.Context) error {
		return r.ObjectStore.Delete(ctx, key, cond)
	})
}

func (r *Reach) CreateMultipart(ctx context.Context, key string, meta Metadata, contentType string) (id string, err error) {
	err = r.write(ctx, "CreateMultipartUpload", key, func(ctx context.Context) (err error) {
		id, err = r.ObjectStore.CreateMultipart(ctx, key, meta, contentType)
		return err
	})
	return id, err
}

func (r *Reach) UploadPart(ctx context.Context, in UploadPartInput) (etag string, err error) {
	err = r.write(ctx, "UploadPart", in.Key, func(ctx context.Context) (err error) {
		etag, err = r.ObjectStore.UploadPart(ctx, in)
		return err
	})
	return etag, err
}

func (r *Reach) UploadPartCopy(ctx context.Context, in UploadPartCopyInput) (etag string, err error) {
	err = r.write(ctx, "UploadPartCopy", in.Key, func(ctx context.Context) (err error) {
		etag, err = r.ObjectStore.UploadPartCopy(ctx, in)
		return err
	})
	return etag, err
}

func (r *Reach) CompleteMultipart(ctx context.Context, key, uploadID string, parts []CompletedPart, cond Condition) (etag string, err error) {
	err = r.write(ctx, "CompleteMultipartUpload", key, func(ctx context.Context) (err error) {
		etag, err = r.ObjectStore.CompleteMultipart(ctx, key, uploadID, parts, cond)
		return err
	})
	return etag, err
}

func (r *Reach) AbortMultipart(ctx context.Context, key, uploadID string) error {
	return r.write(ctx, "AbortMultipartUpload", key, func(ctx context.Context) error {
		return r.ObjectStore.AbortMultipart(ctx, key, uploadID)
	})
}
