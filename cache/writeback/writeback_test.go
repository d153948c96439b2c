package writeback

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
)

// The tests drive the scheduler with a fake clock and a fake Runner whose
// attempts block until the test says how they end (as rclone's writeback
// tests do): nothing here sleeps, and every wait for an attempt has a
// deadline so that a bug fails the test instead of hanging it.

type attempt struct {
	id   ID
	ctx  context.Context
	done chan Result
}

type fakeRunner struct {
	started chan *attempt
	mu      sync.Mutex
	count   map[ID]int
}

func (f *fakeRunner) run(ctx context.Context, id ID) Result {
	f.mu.Lock()
	f.count[id]++
	f.mu.Unlock()
	a := &attempt{id: id, ctx: ctx, done: make(chan Result, 1)}
	f.started <- a
	select {
	case r := <-a.done:
		return r
	case <-ctx.Done():
		return Result{Outcome: Retry, Err: ctx.Err()}
	}
}

func (f *fakeRunner) attempts(id ID) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.count[id]
}

type env struct {
	t        *testing.T
	clock    *clockwork.FakeClock
	run      *fakeRunner
	s        *Scheduler
	finished chan ID // an attempt's result has been applied
}

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func newEnv(t *testing.T, mod func(*Options)) *env {
	e := &env{t: t, clock: clockwork.NewFakeClockAt(t0), run: &fakeRunner{started: make(chan *attempt, 100), count: map[ID]int{}},
		finished: make(chan ID, 100)}
	opt := Options{Run: e.run.run, Workers: 4, Delay: time.Second, MaxDirtyAge: 30 * time.Second,
		MinBackoff: time.Second, MaxBackoff: time.Minute, KeyWait: 5 * time.Second, MaxImmediate: 3,
		Clock: e.clock, Jitter: func() float64 { return 0 },
		Go: func(f func()) {
			go func() {
				f()
				e.finished <- ID{}
			}()
		}}
	if mod != nil {
		mod(&opt)
	}
	e.s = New(opt)
	t.Cleanup(func() {
		// End whatever still runs, so Stop does not wait for the test.
		go func() {
			for a := range e.run.started {
				a.done <- Result{Outcome: Done}
			}
		}()
		e.s.Stop()
		close(e.run.started)
	})
	return e
}

// next waits for the next attempt to start.
func (e *env) next() *attempt {
	e.t.Helper()
	select {
	case a := <-e.run.started:
		return a
	case <-time.After(5 * time.Second):
		e.t.Fatalf("no attempt started; jobs: %+v", e.s.Jobs())
		return nil
	}
}

// none checks that no attempt has started.
func (e *env) none() {
	e.t.Helper()
	select {
	case a := <-e.run.started:
		e.t.Fatalf("attempt of %v started at %v, none expected", a.id, e.clock.Now().Sub(t0))
	default:
	}
}

func (e *env) state(id ID) State {
	e.t.Helper()
	in, ok := e.s.Job(id)
	if !ok {
		e.t.Fatalf("no job %v", id)
	}
	return in.State
}

func (e *env) gone(id ID) {
	e.t.Helper()
	if in, ok := e.s.Job(id); ok {
		e.t.Fatalf("job %v still there: %+v", id, in)
	}
}

// finish ends attempt a with r and waits until the scheduler applied it.
func (e *env) finish(a *attempt, r Result) {
	e.t.Helper()
	a.done <- r
	select {
	case <-e.finished:
	case <-time.After(5 * time.Second):
		e.t.Fatalf("result of %v not applied", a.id)
	}
}

var ino1, ino2, ino3 = Inode(1), Inode(2), Inode(3)

func TestRunsAfterDelay(t *testing.T) {
	e := newEnv(t, nil)
	e.s.Add(ino1)
	e.clock.Advance(999 * time.Millisecond)
	e.none()
	if st := e.state(ino1); st != Pending {
		t.Fatalf("state %v, want pending", st)
	}
	e.clock.Advance(time.Millisecond)
	a := e.next()
	if a.id != ino1 {
		t.Fatalf("started %v", a.id)
	}
	if st := e.state(ino1); st != Uploading {
		t.Fatalf("state %v, want uploading", st)
	}
	e.finish(a, Result{Outcome: Done})
	e.gone(ino1)
}

func TestDebounceAndMaxDirtyAge(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.MaxDirtyAge = 3 * time.Second })
	// A timer that fires re-arms the next one on its own goroutine: wait
	// for that before moving the clock again, or the new timer counts from
	// a later time (seen once in make test under load: no attempt at 3 s).
	advance := func(d time.Duration) {
		t.Helper()
		e.clock.Advance(d)
		bctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := e.clock.BlockUntilContext(bctx, 1); err != nil {
			t.Fatalf("the scheduler set no timer for its queued job: %v", err)
		}
	}
	e.s.Add(ino1)
	// A writer that pauses less than the delay postpones the upload...
	for i := 0; i < 5; i++ {
		advance(500 * time.Millisecond)
		e.none()
		e.s.Add(ino1)
	}
	// ...but not past MaxDirtyAge from its first change.
	advance(499 * time.Millisecond)
	e.none()
	e.clock.Advance(time.Millisecond)
	e.next()
}

func TestBackoffIsExponentialCappedAndEnds(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.MaxBackoff = 8 * time.Second })
	e.s.AddNow(ino1)
	err := errors.New("503 slow down")
	for _, want := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 8 * time.Second} {
		a := e.next()
		e.finish(a, Result{Outcome: Retry, Err: err})
		in, _ := e.s.Job(ino1)
		if in.State != BackingOff || !errors.Is(in.Err, err) {
			t.Fatalf("after a retryable failure: %+v", in)
		}
		e.clock.Advance(want - time.Millisecond)
		e.none()
		e.clock.Advance(time.Millisecond)
	}
	a := e.next()
	e.finish(a, Result{Outcome: Done})
	e.gone(ino1)
	if n := e.run.attempts(ino1); n != 6 {
		t.Fatalf("%d attempts, want 6", n)
	}
}

func TestJitterTakesUpToHalf(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.Jitter = func() float64 { return 0.999 } })
	e.s.AddNow(ino1)
	e.finish(e.next(), Result{Outcome: Retry, Err: errors.New("x")})
	in, _ := e.s.Job(ino1)
	if d := in.Due.Sub(e.clock.Now()); d < 500*time.Millisecond || d > 501*time.Millisecond {
		t.Fatalf("first backoff with full jitter %v, want just over 500ms", d)
	}
}

func TestPermanentFailureStops(t *testing.T) {
	e := newEnv(t, nil)
	e.s.AddNow(ino1)
	denied := errors.New("403 access denied")
	e.finish(e.next(), Result{Outcome: Permanent, Err: denied})
	if st := e.state(ino1); st != Failed {
		t.Fatalf("state %v, want failed", st)
	}
	// Not retried however long it waits, nor when urged.
	e.s.Urge(ino1)
	e.clock.Advance(24 * time.Hour)
	e.none()
	// Sync (fsync) gives it one attempt and answers with its failure.
	res := make(chan error, 1)
	go func() { res <- e.s.Sync(context.Background(), ino1) }()
	e.finish(e.next(), Result{Outcome: Permanent, Err: denied})
	select {
	case err := <-res:
		var fe *FailedError
		if !errors.As(err, &fe) || !errors.Is(err, denied) {
			t.Fatalf("Sync = %v, want the failure", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Sync did not return")
	}
	// Retry gives it one attempt too.
	e.s.Retry(ino1)
	e.finish(e.next(), Result{Outcome: Permanent, Err: denied})
	e.clock.Advance(time.Hour)
	e.none()
	if n := e.run.attempts(ino1); n != 3 {
		t.Fatalf("%d attempts, want 3", n)
	}
}

func TestChangeRevivesFailedJobAfterItsBackoff(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.Delay = 0 })
	e.s.AddNow(ino1)
	e.finish(e.next(), Result{Outcome: Permanent, Err: errors.New("refused")})
	e.s.Add(ino1) // a change (a rename, say) may mend it
	if st := e.state(ino1); st != Pending {
		t.Fatalf("state %v after a change, want pending", st)
	}
	e.clock.Advance(999 * time.Millisecond)
	e.none()
	e.clock.Advance(time.Millisecond)
	e.finish(e.next(), Result{Outcome: Done})
	e.gone(ino1)
}

func TestSyncWaitsForChangesMadeDuringAnAttempt(t *testing.T) {
	e := newEnv(t, nil)
	e.s.AddNow(ino1)
	a := e.next()
	e.s.Add(ino1) // after the attempt sealed its snapshot
	res := make(chan error, 1)
	go func() { res <- e.s.Sync(context.Background(), ino1) }()
	e.finish(a, Result{Outcome: Done})
	// The change is not in S3 yet: Sync waits, and has the next attempt
	// start at once rather than after the delay.
	select {
	case err := <-res:
		t.Fatalf("Sync returned %v before the change was uploaded", err)
	default:
	}
	b := e.next()
	e.finish(b, Result{Outcome: Done})
	select {
	case err := <-res:
		if err != nil {
			t.Fatalf("Sync = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Sync did not return")
	}
}

func TestSyncReturnsRetryableErrorOfItsAttempt(t *testing.T) {
	e := newEnv(t, nil)
	e.s.AddNow(ino1)
	e.finish(e.next(), Result{Outcome: Retry, Err: errors.New("first")})
	res := make(chan error, 1)
	go func() { res <- e.s.Sync(context.Background(), ino1) }()
	// Sync does not wait for the backoff: one attempt now, for it.
	a := e.next()
	e.finish(a, Result{Outcome: Retry, Err: errors.New("second")})
	select {
	case err := <-res:
		if err == nil || err.Error() != "second" {
			t.Fatalf("Sync = %v, want the error of the attempt it waited for", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Sync did not return")
	}
	// and the job backs off as before.
	if st := e.state(ino1); st != BackingOff {
		t.Fatalf("state %v", st)
	}
}

func TestSyncOfNoJobAndOfRemovedJob(t *testing.T) {
	e := newEnv(t, nil)
	if err := e.s.Sync(context.Background(), ino1); err != nil {
		t.Fatalf("Sync of nothing = %v", err)
	}
	e.s.AddNow(ino1)
	a := e.next()
	res := make(chan error, 1)
	go func() { res <- e.s.Sync(context.Background(), ino1) }()
	e.s.Remove(ino1) // the file was deleted: nothing will ever be in S3
	e.finish(a, Result{Outcome: Retry, Err: errors.New("late")})
	select {
	case err := <-res:
		if err != nil {
			t.Fatalf("Sync = %v, want nil for a removed job", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Sync did not return")
	}
	e.gone(ino1)
}

func TestSyncEndsWithContext(t *testing.T) {
	e := newEnv(t, nil)
	e.s.AddNow(ino1)
	e.next() // never finishes
	ctx, cancel := context.WithCancel(context.Background())
	res := make(chan error, 1)
	go func() { res <- e.s.Sync(ctx, ino1) }()
	cancel()
	select {
	case err := <-res:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Sync = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Sync did not end with its context")
	}
}

func TestNoSpinOnImmediateOutcomes(t *testing.T) {
	for _, out := range []Outcome{Again, Conflict} {
		e := newEnv(t, nil)
		e.s.AddNow(ino1)
		for i := 0; i < 3; i++ { // MaxImmediate runs at once
			e.finish(e.next(), Result{Outcome: out})
		}
		e.finish(e.next(), Result{Outcome: out})
		in, _ := e.s.Job(ino1)
		if in.State != BackingOff || in.Err == nil {
			t.Fatalf("%v: after 4 immediate outcomes: %+v, want backing off", out, in)
		}
		e.none()
		e.clock.Advance(time.Second)
		e.finish(e.next(), Result{Outcome: Done})
		e.gone(ino1)
	}
}

func TestConflictedRunsAtOnce(t *testing.T) {
	e := newEnv(t, nil)
	e.s.AddNow(ino1)
	e.finish(e.next(), Result{Outcome: Conflict})
	a := e.next()
	if a.id != ino1 {
		t.Fatal(a.id)
	}
	e.finish(a, Result{Outcome: Done})
	e.gone(ino1)
}

func TestAgainAfterDelay(t *testing.T) {
	e := newEnv(t, nil)
	e.s.AddNow(ino1)
	e.finish(e.next(), Result{Outcome: Again, After: 2 * time.Second})
	e.clock.Advance(1999 * time.Millisecond)
	e.none()
	e.clock.Advance(time.Millisecond)
	e.finish(e.next(), Result{Outcome: Done})
}

func TestWaitKeyReleasedOrTimedOut(t *testing.T) {
	e := newEnv(t, nil)
	e.s.AddNow(ino1)
	e.finish(e.next(), Result{Outcome: WaitKey, Key: "a/b", Holder: Tomb("a/b")})
	if st := e.state(ino1); st != WaitingForKey {
		t.Fatalf("state %v", st)
	}
	e.s.Release("other")
	e.none()
	e.s.Release("a/b")
	e.finish(e.next(), Result{Outcome: WaitKey, Key: "a/b"})
	// Nobody releases it: it looks again after KeyWait.
	e.clock.Advance(4999 * time.Millisecond)
	e.none()
	e.clock.Advance(time.Millisecond)
	e.finish(e.next(), Result{Outcome: Done})
	e.gone(ino1)
}

func TestWaitKeyOnFailedHolderFails(t *testing.T) {
	e := newEnv(t, nil)
	tomb := Tomb("k")
	e.s.AddNow(tomb)
	e.finish(e.next(), Result{Outcome: Permanent, Err: errors.New("delete refused")})
	e.s.AddNow(ino1)
	e.finish(e.next(), Result{Outcome: WaitKey, Key: "k", Holder: tomb})
	in, _ := e.s.Job(ino1)
	if in.State != Failed || !strings.Contains(in.Err.Error(), "delete refused") {
		t.Fatalf("waiting on a failed holder: %+v", in)
	}
}

func TestWorkersBound(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.Workers = 2 })
	for i := uint64(1); i <= 5; i++ {
		e.s.AddNow(Inode(i))
	}
	a, b := e.next(), e.next()
	e.none()
	e.finish(a, Result{Outcome: Done})
	c := e.next()
	e.none()
	e.finish(b, Result{Outcome: Done})
	e.finish(c, Result{Outcome: Done})
	e.finish(e.next(), Result{Outcome: Done})
	e.finish(e.next(), Result{Outcome: Done})
	e.none()
}

func TestFlushRunsEverythingOnceThenBacksOff(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.Workers = 1 })
	// ino1 fails for good, ino2 backs off, ino3 waits for its delay.
	e.s.AddNow(ino1)
	e.finish(e.next(), Result{Outcome: Permanent, Err: errors.New("denied")})
	e.s.AddNow(ino2)
	e.finish(e.next(), Result{Outcome: Retry, Err: errors.New("503")})
	e.s.Add(ino3)
	done := e.s.Flush()
	defer done()
	settled := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		settled <- e.s.WaitSettled(ctx)
	}()
	ran := map[ID]int{}
	for i := 0; i < 3; i++ {
		a := e.next()
		ran[a.id]++
		switch a.id {
		case ino1:
			e.finish(a, Result{Outcome: Permanent, Err: errors.New("denied")})
		case ino2:
			e.finish(a, Result{Outcome: Retry, Err: errors.New("503")})
		case ino3:
			e.finish(a, Result{Outcome: Done})
		}
	}
	if ran[ino1] != 1 || ran[ino2] != 1 || ran[ino3] != 1 {
		t.Fatalf("flush ran %v, want each once", ran)
	}
	// ino2 backs off: no tight loop while the drain waits.
	e.none()
	e.clock.Advance(2 * time.Second)
	e.finish(e.next(), Result{Outcome: Done})
	select {
	case err := <-settled:
		if err != nil {
			t.Fatalf("WaitSettled = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("WaitSettled did not return with only a failed job left")
	}
	jobs := e.s.Jobs()
	if len(jobs) != 1 || jobs[0].ID != ino1 || jobs[0].State != Failed {
		t.Fatalf("left: %+v", jobs)
	}
}

func TestKickRetriesBackingOff(t *testing.T) {
	e := newEnv(t, nil)
	e.s.AddNow(ino1)
	e.finish(e.next(), Result{Outcome: Retry, Err: errors.New("unreachable")})
	e.none()
	e.s.Kick()
	e.finish(e.next(), Result{Outcome: Done})
}

func TestStopCancelsAttempts(t *testing.T) {
	e := newEnv(t, nil)
	e.s.AddNow(ino1)
	a := e.next()
	stopped := make(chan struct{})
	go func() {
		e.s.Stop()
		close(stopped)
	}()
	select {
	case <-a.ctx.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("attempt not cancelled")
	}
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		t.Fatal("Stop did not return")
	}
	e.s.AddNow(ino2)
	e.none()
}

func TestChangeDuringAttemptWaitsItsDelay(t *testing.T) {
	e := newEnv(t, nil)
	e.s.AddNow(ino1)
	a := e.next()
	e.s.Add(ino1)
	e.finish(a, Result{Outcome: Done})
	if st := e.state(ino1); st != Pending {
		t.Fatalf("state %v", st)
	}
	e.clock.Advance(999 * time.Millisecond)
	e.none()
	e.clock.Advance(time.Millisecond)
	e.finish(e.next(), Result{Outcome: Done})
	e.gone(ino1)
}

func TestPressureSkipsTheDelay(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.Delay = time.Hour })
	e.s.Add(ino1)
	e.s.Add(ino2)
	e.none()
	e.s.Pressure()
	got := map[ID]bool{e.next().id: true, e.next().id: true}
	if !got[ino1] || !got[ino2] {
		t.Fatalf("pressure started %v", got)
	}
}

func TestSyncDuringAnAttemptThatFailsForGood(t *testing.T) {
	e := newEnv(t, nil)
	e.s.AddNow(ino1)
	a := e.next()
	res := make(chan error, 1)
	go func() { res <- e.s.Sync(context.Background(), ino1) }()
	// The attempt running when fsync was called fails for good: it began
	// before the call, so the call gets an attempt of its own.
	e.finish(a, Result{Outcome: Permanent, Err: errors.New("denied")})
	e.finish(e.next(), Result{Outcome: Permanent, Err: errors.New("denied again")})
	select {
	case err := <-res:
		var fe *FailedError
		if !errors.As(err, &fe) || err.Error() != "denied again" {
			t.Fatalf("Sync = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Sync waits forever on a job that failed for good")
	}
}

// TestQuickDelayUnlessUploadedLately: a file written in one go is sent
// once its writer pauses for QuickDelay; one that changes again within
// Delay of its last upload, or while it uploads, waits Delay, and so does
// a file written again and again; after Delay without a change it is
// quick again. While other files change, a quick one waits for them to
// pause, but no longer than its Delay.
func TestQuickDelayUnlessUploadedLately(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.QuickDelay = 250 * time.Millisecond })
	// advance moves the clock on and waits until the scheduler has
	// handled every job that came due (the timer's function runs on a
	// goroutine of its own): each queued job is due later than now.
	advance := func(d time.Duration) {
		t.Helper()
		e.clock.Advance(d)
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
			now, settled := e.clock.Now(), true
			for _, in := range e.s.Jobs() {
				if !in.Due.IsZero() && !in.Due.After(now) {
					settled = false
				}
			}
			if settled {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("jobs due at %v not handled: %+v", now.Sub(t0), e.s.Jobs())
			}
		}
	}
	pending := func(ids ...ID) {
		t.Helper()
		for _, id := range ids {
			if st := e.state(id); st != Pending {
				t.Fatalf("%v is %v at %v, want pending", id, st, e.clock.Now().Sub(t0))
			}
		}
	}
	// runsAfter moves the clock on by d and checks that id runs then,
	// and not 1 ms before; its attempt ends Done and the job goes.
	runsAfter := func(id ID, d time.Duration) {
		t.Helper()
		advance(d - time.Millisecond)
		pending(id)
		e.clock.Advance(time.Millisecond)
		a := e.next()
		if a.id != id {
			t.Fatalf("%v started, want %v", a.id, id)
		}
		e.finish(a, Result{Outcome: Done})
		e.gone(id)
	}
	// A burst of changes: sent QuickDelay after the last.
	e.s.Add(ino1)
	advance(200 * time.Millisecond)
	e.s.Add(ino1)
	runsAfter(ino1, 250*time.Millisecond)

	// Changed again 100 ms after that upload: it waits Delay.
	e.clock.Advance(100 * time.Millisecond)
	e.s.Add(ino1)
	runsAfter(ino1, time.Second)

	// Quiet for Delay since that upload: quick again. Another file is
	// quick meanwhile.
	e.clock.Advance(time.Second)
	e.s.Add(ino1)
	e.s.Add(ino2)
	advance(249 * time.Millisecond)
	pending(ino1, ino2)
	e.clock.Advance(time.Millisecond)
	got := map[ID]bool{}
	for i := 0; i < 2; i++ {
		a := e.next()
		got[a.id] = true
		e.finish(a, Result{Outcome: Done})
	}
	if !got[ino1] || !got[ino2] {
		t.Fatalf("attempts of %v after QuickDelay, want %v and %v", got, ino1, ino2)
	}

	// A quick job changed while it uploads waits the whole delay.
	e.clock.Advance(time.Second)
	e.s.Add(ino2)
	advance(250 * time.Millisecond)
	a := e.next()
	if a.id != ino2 {
		t.Fatalf("%v started, want %v", a.id, ino2)
	}
	e.s.Add(ino2)
	e.finish(a, Result{Outcome: Done})
	runsAfter(ino2, time.Second)

	// ino1 written once while ino3 changes every 200 ms: ino1 waits its
	// Delay; ino3 goes QuickDelay after the changes stop.
	e.clock.Advance(time.Second)
	e.s.Add(ino1)
	for i := 0; i < 4; i++ {
		e.s.Add(ino3)
		advance(200 * time.Millisecond)
		pending(ino1, ino3)
	}
	e.s.Add(ino3)
	advance(199 * time.Millisecond)
	pending(ino1, ino3)
	e.clock.Advance(time.Millisecond)
	if a := e.next(); a.id != ino1 {
		t.Fatalf("%v ran 1s after ino1's change, want %v", a.id, ino1)
	} else {
		e.finish(a, Result{Outcome: Done})
	}
	advance(49 * time.Millisecond)
	pending(ino3)
	e.clock.Advance(time.Millisecond)
	if a := e.next(); a.id != ino3 {
		t.Fatalf("%v ran QuickDelay after the last change, want %v", a.id, ino3)
	} else {
		e.finish(a, Result{Outcome: Done})
	}
}

// TestUploadedTimesAreSwept: the times kept to tell a file changed again
// soon after its upload do not pile up: those older than Delay go.
func TestUploadedTimesAreSwept(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.QuickDelay = 250 * time.Millisecond; o.Workers = 1 })
	for i := 0; i < 3*minSweep; i++ {
		e.s.AddNow(Inode(uint64(100 + i)))
		e.finish(e.next(), Result{Outcome: Done})
		e.clock.Advance(10 * time.Millisecond) // Delay spans 100 uploads
	}
	e.s.mu.Lock()
	n := len(e.s.uploaded)
	e.s.mu.Unlock()
	if n > minSweep {
		t.Fatalf("%d upload times kept after %d uploads 10 ms apart with Delay 1s; want at most %d", n, 3*minSweep, minSweep)
	}
	if n < 100 {
		t.Fatalf("%d upload times kept; the last 100 uploads are within Delay", n)
	}
}
