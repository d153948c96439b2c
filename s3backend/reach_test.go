package s3backend_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/keelfs/keelfs/s3backend"
	"github.com/keelfs/keelfs/s3backend/memstore"
)

type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) count(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.b.String(), s)
}

// reachEnv is a memstore behind a Reach, with a fake clock and a switch
// that makes every request fail as an unreachable endpoint does.
type reachEnv struct {
	store   *memstore.Store
	r       *s3backend.Reach
	clock   *clockwork.FakeClock
	log     *logBuf
	down    atomic.Bool
	changes chan bool
}

func newReachEnv(t *testing.T) *reachEnv {
	e := &reachEnv{store: memstore.New(), clock: clockwork.NewFakeClock(), log: &logBuf{}, changes: make(chan bool, 10)}
	e.store.SetHook(func(op, key string) error {
		if e.down.Load() {
			return &s3backend.Error{Op: op, Key: key, Kind: s3backend.ErrUnavailable, Cause: errors.New("connect: connection refused")}
		}
		return nil
	})
	e.r = s3backend.NewReach(e.store, s3backend.ReachOptions{Wait: 3 * time.Second, ProbeEvery: time.Second, Clock: e.clock,
		Logger: slog.New(slog.NewTextHandler(e.log, nil)), OnChange: func(up bool) { e.changes <- up }})
	t.Cleanup(e.r.Close)
	return e
}

func (e *reachEnv) change(t *testing.T, want bool) {
	t.Helper()
	select {
	case got := <-e.changes:
		if got != want {
			t.Fatalf("reachability went to %v, want %v", got, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("no change of reachability to %v", want)
	}
}

func TestReachFailsFastWhileDownAndProbesBack(t *testing.T) {
	ctx := context.Background()
	e := newReachEnv(t)
	e.store.PutObject("a", []byte("x"), nil)
	if _, err := e.r.Head(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	e.down.Store(true)
	if _, err := e.r.Head(ctx, "a"); !errors.Is(err, s3backend.ErrUnavailable) {
		t.Fatalf("head with the endpoint down: %v", err)
	}
	e.change(t, false)
	if st := e.r.State(); st.Reachable || st.Err == nil {
		t.Fatalf("state %+v", st)
	}
	// While down, requests do not reach the endpoint.
	before := e.store.Counts()["Put"]
	for i := 0; i < 10; i++ {
		if _, err := e.r.Put(ctx, s3backend.PutInput{Key: "b", Body: bytes.NewReader(nil)}); !errors.Is(err, s3backend.ErrUnreachable) {
			t.Fatalf("put while down: %v", err)
		}
	}
	if n := e.store.Counts()["Put"] - before; n != 0 {
		t.Fatalf("%d PUTs reached the endpoint while it was down", n)
	}
	// The probe asks every second: once in vain, then the endpoint
	// answers again.
	bctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := e.clock.BlockUntilContext(bctx, 1); err != nil {
		t.Fatal("no probe waiting")
	}
	e.clock.Advance(time.Second)
	if err := e.clock.BlockUntilContext(bctx, 1); err != nil {
		t.Fatal("the probe did not wait again after a failure")
	}
	e.down.Store(false)
	e.clock.Advance(time.Second)
	e.change(t, true)
	if _, err := e.r.Head(ctx, "a"); err != nil {
		t.Fatalf("head once back: %v", err)
	}
	if n := e.log.count("level=WARN"); n != 1 {
		t.Fatalf("%d WARN lines for one outage", n)
	}
	if n := e.log.count("level=INFO"); n != 1 {
		t.Fatalf("%d INFO lines for one recovery", n)
	}
}

func TestReachAnswersAreNotOutages(t *testing.T) {
	ctx := context.Background()
	e := newReachEnv(t)
	if _, err := e.r.Head(ctx, "missing"); !errors.Is(err, s3backend.ErrNotFound) {
		t.Fatal(err)
	}
	// A caller that gives up says nothing about S3.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	e.store.SetHook(func(op, key string) error {
		return &s3backend.Error{Op: op, Key: key, Kind: s3backend.ErrUnavailable, Cause: context.Canceled}
	})
	e.r.Head(cctx, "a")
	if !e.r.State().Reachable {
		t.Fatal("a cancelled request made S3 unreachable")
	}
}

// blackHole accepts HEADs and never answers them, until the request's
// context ends (as the real store reports a cancelled request).
type blackHole struct{ s3backend.ObjectStore }

func (blackHole) Head(ctx context.Context, key string) (s3backend.ObjectInfo, error) {
	<-ctx.Done()
	return s3backend.ObjectInfo{}, &s3backend.Error{Op: "HeadObject", Key: key, Kind: s3backend.ErrUnavailable, Cause: ctx.Err()}
}

func TestReachBoundsTheWaitOfReads(t *testing.T) {
	ctx := context.Background()
	clock := clockwork.NewFakeClock()
	changes := make(chan bool, 1)
	r := s3backend.NewReach(blackHole{memstore.New()}, s3backend.ReachOptions{Wait: 3 * time.Second, Clock: clock,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), OnChange: func(up bool) { changes <- up }})
	defer r.Close()
	done := make(chan error, 1)
	go func() {
		_, err := r.Head(ctx, "a")
		done <- err
	}()
	bctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := clock.BlockUntilContext(bctx, 1); err != nil {
		t.Fatal("the read does not wait on the clock")
	}
	clock.Advance(3 * time.Second)
	select {
	case err := <-done:
		if !errors.Is(err, s3backend.ErrUnavailable) || !errors.Is(err, s3backend.ErrUnreachable) {
			t.Fatalf("head of a black hole: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a read waited past Wait")
	}
	select {
	case up := <-changes:
		if up {
			t.Fatal("reachable after a black hole")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a black hole did not make S3 unreachable")
	}
}

func TestReachGetBodyOutlivesTheWait(t *testing.T) {
	ctx := context.Background()
	e := newReachEnv(t)
	e.store.PutObject("big", bytes.Repeat([]byte("x"), 1<<20), nil)
	body, err := e.r.Get(ctx, "big", 0, -1, "")
	if err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(time.Minute) // the answer began in time; reading it may take long
	b, err := io.ReadAll(body)
	body.Close()
	if err != nil || len(b) != 1<<20 {
		t.Fatalf("read %d bytes: %v", len(b), err)
	}
}

// hangingPut is a store whose PUTs hang until their context ends: an
// upload under way into a black hole.
type hangingPut struct {
	s3backend.ObjectStore
	started chan struct{}
}

func (h hangingPut) Put(ctx context.Context, in s3backend.PutInput) (string, error) {
	h.started <- struct{}{}
	<-ctx.Done()
	return "", &s3backend.Error{Op: "PutObject", Key: in.Key, Kind: s3backend.ErrUnavailable, Cause: ctx.Err()}
}

func TestReachCutsRequestsUnderWayWhenS3GoesAway(t *testing.T) {
	ctx := context.Background()
	store := memstore.New()
	var down atomic.Bool
	store.SetHook(func(op, key string) error {
		if down.Load() {
			return &s3backend.Error{Op: op, Key: key, Kind: s3backend.ErrUnavailable, Cause: errors.New("connection refused")}
		}
		return nil
	})
	h := hangingPut{ObjectStore: store, started: make(chan struct{}, 1)}
	r := s3backend.NewReach(h, s3backend.ReachOptions{Clock: clockwork.NewFakeClock(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	defer r.Close()
	done := make(chan error, 1)
	go func() {
		_, err := r.Put(ctx, s3backend.PutInput{Key: "big", Body: bytes.NewReader(nil)})
		done <- err
	}()
	<-h.started
	down.Store(true)
	r.Head(ctx, "other") // finds S3 gone
	select {
	case err := <-done:
		if !errors.Is(err, s3backend.ErrUnavailable) || !errors.Is(err, s3backend.ErrUnreachable) {
			t.Fatalf("the PUT under way: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("an upload under way kept waiting after S3 went away")
	}
}

// TestReachDialFailedRacingClose: a dial the HTTP transport began before
// the mount ended can report its failure while Reach closes. Close must
// not race the probe it starts (seen by the race detector in CI).
func TestReachDialFailedRacingClose(t *testing.T) {
	for i := 0; i < 200; i++ {
		r := s3backend.NewReach(memstore.New(), s3backend.ReachOptions{Clock: clockwork.NewFakeClock(),
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		failed := make(chan struct{})
		go func() {
			defer close(failed)
			r.DialFailed(errors.New("connect: connection refused"))
		}()
		r.Close()
		<-failed
		r.Close() // a probe started by the late failure is stopped too
	}
}

// hangingList is a store whose LISTs hang until their context ends: the
// probe's request into a black hole.
type hangingList struct {
	s3backend.ObjectStore
	started chan struct{}
}

func (h hangingList) List(ctx context.Context, in s3backend.ListInput, fn func(s3backend.ListEntry) error) error {
	h.started <- struct{}{}
	<-ctx.Done()
	return &s3backend.Error{Op: "ListObjectsV2", Kind: s3backend.ErrUnavailable, Cause: ctx.Err()}
}

// TestReachCloseEndsAProbeUnderWay: a mount that stops during an outage
// closes Reach while its probe waits on a black hole. Close must end that
// request, not wait out Wait: SIGTERM's --shutdown-timeout was overrun by
// up to --s3-timeout (seen in TestOutage/blackhole: 5.04 s for a 3 s
// timeout, 2 s of it in Close).
func TestReachCloseEndsAProbeUnderWay(t *testing.T) {
	clock := clockwork.NewFakeClock()
	h := hangingList{ObjectStore: memstore.New(), started: make(chan struct{}, 1)}
	r := s3backend.NewReach(h, s3backend.ReachOptions{Wait: time.Hour, Clock: clock,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	r.DialFailed(errors.New("connect: connection refused"))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := clock.BlockUntilContext(ctx, 1); err != nil {
		t.Fatal("no probe waiting")
	}
	clock.Advance(time.Second)
	select {
	case <-h.started:
	case <-ctx.Done():
		t.Fatal("the probe did not ask")
	}
	closed := make(chan struct{})
	go func() { r.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Close waited for the probe's request into a black hole")
	}
}

// silentStore is a store whose PUTs hang until their context ends, and whose
// LISTs do too while hole is set: a server that stopped answering.
type silentStore struct {
	s3backend.ObjectStore
	hole     atomic.Bool
	lists    atomic.Int32 // LISTs asked
	answered atomic.Int32 // LISTs answered
	ended    atomic.Int32 // LISTs returned, answered or not
	puts     chan struct{}
	free     chan struct{} // closing it lets the PUTs under way succeed
}

func (b *silentStore) Put(ctx context.Context, in s3backend.PutInput) (string, error) {
	b.puts <- struct{}{}
	select {
	case <-ctx.Done():
		return "", &s3backend.Error{Op: "PutObject", Key: in.Key, Kind: s3backend.ErrUnavailable, Cause: ctx.Err()}
	case <-b.free:
		return "etag", nil
	}
}

func (b *silentStore) List(ctx context.Context, in s3backend.ListInput, fn func(s3backend.ListEntry) error) error {
	b.lists.Add(1)
	defer b.ended.Add(1)
	if b.hole.Load() {
		<-ctx.Done()
		return &s3backend.Error{Op: "ListObjectsV2", Kind: s3backend.ErrUnavailable, Cause: ctx.Err()}
	}
	defer b.answered.Add(1)
	return b.ObjectStore.List(ctx, in, fn)
}

// A write into a black hole is cut short, and S3 counted unreachable,
// within two Waits: one for the write to be overdue, one for the check's
// LIST to get no answer. Found by hand: the upload waited for its
// connection's idle timeout on each of the SDK's attempts, and an fsync
// with it ten minutes, with S3 counted reachable throughout.
func TestReachChecksOnAWriteIntoABlackHole(t *testing.T) {
	b := newSilentStore()
	b.hole.Store(true)
	log := &logBuf{}
	p := startSlowPut(t, b, s3backend.ReachOptions{Logger: slog.New(slog.NewTextHandler(log, nil))})
	r, clock, done, ctx := p.r, p.clock, p.done, p.ctx
	p.firstCheck()
	if err := clock.BlockUntilContext(ctx, 2); err != nil { // the check's Wait, the write's next watch
		t.Fatal(err)
	}
	clock.Advance(5 * time.Second)
	select {
	case err := <-done:
		if !errors.Is(err, s3backend.ErrUnavailable) || !errors.Is(err, s3backend.ErrUnreachable) {
			t.Fatalf("the write into the black hole: %v, want it cut short as unreachable", err)
		}
	case <-ctx.Done():
		t.Fatal("a write into a black hole still waits after two Waits")
	}
	if r.Reachable() {
		t.Fatal("S3 still counts as reachable")
	}
	for log.count("s3 is unreachable") == 0 && ctx.Err() == nil { // logged after the cut
		time.Sleep(time.Millisecond)
	}
	if n := log.count("s3 is unreachable"); n != 1 {
		t.Fatalf("%d WARNs that S3 is unreachable, want 1", n)
	}
}

// A slow write to an S3 that answers is left alone: the checks find S3
// there, and the write ends as it would have.
func TestReachLeavesASlowWriteAlone(t *testing.T) {
	b := newSilentStore()
	p := startSlowPut(t, b, s3backend.ReachOptions{})
	r, clock, done, ctx := p.r, p.clock, p.done, p.ctx
	for i := int32(1); i <= 3; i++ {
		if err := clock.BlockUntilContext(ctx, 1); err != nil {
			t.Fatalf("check %d: the write set no timer", i)
		}
		clock.Advance(5 * time.Second)
		// Until the check is over: its answer recorded now (and its
		// Wait stopped), so that the next Advance starts the next one.
		for b.answered.Load() < i || !r.State().LastOK.Equal(clock.Now()) {
			if ctx.Err() != nil {
				t.Fatalf("no check %d of S3 while the write ran", i)
			}
			time.Sleep(time.Millisecond)
		}
	}
	if !r.Reachable() {
		t.Fatal("a slow write made S3 count as unreachable")
	}
	close(b.free)
	if err := <-done; err != nil {
		t.Fatalf("the slow write: %v", err)
	}
}

// A check without an answer is no outage when another request was
// answered meanwhile: a LIST stuck behind a saturated uplink, or slow on a
// busy server, while the other requests still get answers (found in
// review: the check would have cut every upload short, again and again).
func TestReachCheckWithoutAnswerWhileOthersAreAnswered(t *testing.T) {
	b := newSilentStore()
	b.hole.Store(true) // LISTs only
	changes := make(chan bool, 10)
	p := startSlowPut(t, b, s3backend.ReachOptions{OnChange: func(up bool) { changes <- up }})
	r, clock, done, ctx := p.r, p.clock, p.done, p.ctx
	p.firstCheck()
	if _, err := r.Head(context.Background(), "nothing"); !errors.Is(err, s3backend.ErrNotFound) { // an answer
		t.Fatalf("HEAD: %v", err)
	}
	if err := clock.BlockUntilContext(ctx, 2); err != nil { // the check's Wait, the write's next watch
		t.Fatal(err)
	}
	clock.Advance(5 * time.Second) // the check's Wait runs out
	for b.ended.Load() == 0 {
		if ctx.Err() != nil {
			t.Fatal("the check's LIST did not end with its Wait")
		}
		time.Sleep(time.Millisecond)
	}
	select {
	case up := <-changes:
		t.Fatalf("reachability went to %v although a HEAD was answered while the check waited", up)
	case <-time.After(200 * time.Millisecond): // what the check decides, it decides at once
	}
	close(b.free)
	if err := <-done; err != nil {
		t.Fatalf("the slow write: %v", err)
	}
}

func newSilentStore() *silentStore {
	return &silentStore{ObjectStore: memstore.New(), puts: make(chan struct{}, 1), free: make(chan struct{})}
}

// slowPut is a PUT under way through a Reach over a silentStore, with a
// Wait of 5 s on a fake clock.
type slowPut struct {
	t     *testing.T
	b     *silentStore
	r     *s3backend.Reach
	clock *clockwork.FakeClock
	done  chan error      // the PUT's result
	ctx   context.Context // the test's bound on each wait
}

// startSlowPut starts the PUT and returns once the store has it. opt's
// Wait, Clock and (if nil) Logger are set here.
func startSlowPut(t *testing.T, b *silentStore, opt s3backend.ReachOptions) *slowPut {
	p := &slowPut{t: t, b: b, clock: clockwork.NewFakeClock(), done: make(chan error, 1)}
	opt.Wait, opt.Clock = 5*time.Second, p.clock
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	p.r = s3backend.NewReach(b, opt)
	t.Cleanup(p.r.Close)
	go func() {
		_, err := p.r.Put(context.Background(), s3backend.PutInput{Key: "f", Body: bytes.NewReader(nil)})
		p.done <- err
	}()
	<-b.puts
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	p.ctx = ctx
	return p
}

// firstCheck moves the clock past the PUT's first Wait and returns once
// the check it starts has asked for its LIST.
func (p *slowPut) firstCheck() {
	p.t.Helper()
	if err := p.clock.BlockUntilContext(p.ctx, 1); err != nil { // the write's watch
		p.t.Fatal("the write set no timer")
	}
	p.clock.Advance(5 * time.Second)
	for p.b.lists.Load() == 0 {
		if p.ctx.Err() != nil {
			p.t.Fatal("no check of S3 while the write was overdue")
		}
		time.Sleep(time.Millisecond)
	}
}

// leavingCopy is a store whose Copy waits until it is cut short and then
// reports the multipart upload it leaves, as a multipart copy does.
type leavingCopy struct {
	s3backend.ObjectStore
	copying chan struct{}
}

func (s *leavingCopy) Copy(ctx context.Context, in s3backend.CopyInput) (string, error) {
	close(s.copying)
	<-ctx.Done()
	return "", &s3backend.UploadLeft{Key: in.Dst, UploadID: "up-1",
		Err: &s3backend.Error{Op: "UploadPartCopy", Key: in.Dst, Kind: s3backend.ErrUnavailable, Cause: ctx.Err()}}
}

// A multipart copy that Reach cuts short when S3 goes away still names the
// upload it leaves, for the caller to abort later.
func TestReachCutShortKeepsTheUploadLeft(t *testing.T) {
	b := &leavingCopy{ObjectStore: memstore.New(), copying: make(chan struct{})}
	r := s3backend.NewReach(b, s3backend.ReachOptions{Wait: 5 * time.Second, Clock: clockwork.NewFakeClock(),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	t.Cleanup(r.Close)
	done := make(chan error, 1)
	go func() {
		_, err := r.Copy(context.Background(), s3backend.CopyInput{Src: "a", Dst: "b", SrcSize: 6 << 30})
		done <- err
	}()
	<-b.copying
	r.DialFailed(errors.New("connect: connection refused"))
	var err error
	select {
	case err = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the copy was not cut short")
	}
	var left *s3backend.UploadLeft
	if !errors.As(err, &left) || left.Key != "b" || left.UploadID != "up-1" || !errors.Is(err, s3backend.ErrUnavailable) {
		t.Fatalf("copy cut short: %v, want an unavailable error naming the upload left", err)
	}
}
