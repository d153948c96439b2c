package writeback

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"
)

// ID names a job: an inode's (Ino != 0) or a tombstone's (Ino == 0, Key
// the object to delete).
type ID struct {
	Ino uint64
	Key string
}

// Inode returns the ID of an inode's job.
func Inode(ino uint64) ID { return ID{Ino: ino} }

// Tomb returns the ID of the job that deletes key.
func Tomb(key string) ID { return ID{Key: key} }

// IsTomb reports whether id is a tombstone's job.
func (id ID) IsTomb() bool { return id.Ino == 0 }

func (id ID) String() string {
	if id.IsTomb() {
		return "delete " + id.Key
	}
	return fmt.Sprintf("inode %d", id.Ino)
}

// State is where a job is in its life; see the package documentation.
type State uint8

const (
	Pending State = iota
	Uploading
	BackingOff
	WaitingForKey
	Conflicted
	Failed
)

var stateNames = [...]string{"pending", "uploading", "backing-off", "waiting-for-key", "conflicted", "failed"}

func (s State) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return fmt.Sprintf("state(%d)", uint8(s))
}

// Outcome is how an attempt went.
type Outcome uint8

const (
	// Done: the job has nothing left to do (until it changes again).
	Done Outcome = iota
	// Again: one step of the job is done and another follows after
	// Result.After; not a failure.
	Again
	// Retry: a retryable failure (Result.Err). The job backs off.
	Retry
	// Permanent: a failure that retrying will not mend (Result.Err).
	Permanent
	// WaitKey: another job holds the object key Result.Key (Result.Holder,
	// if known) and must release it first.
	WaitKey
	// Conflict: another writer changed the object since the local edit
	// began; the next attempt saves the local version beside it.
	Conflict
)

// Result is what a Runner says about one attempt.
type Result struct {
	Outcome Outcome
	Err     error
	After   time.Duration // Again
	Key     string        // WaitKey
	Holder  ID            // WaitKey, when the holder is known
}

// Runner runs one attempt of job id. ctx ends when the scheduler stops.
type Runner func(ctx context.Context, id ID) Result

// Options configure a Scheduler. Zero values get the defaults noted.
type Options struct {
	Run     Runner
	Workers int // attempts running at once; default 4
	// Delay is how long a job waits after its last change before it runs
	// (the write-back delay); MaxDirtyAge bounds that wait for a job that
	// changes without pause (default 30s).
	//
	// QuickDelay, when set and shorter, shortens the wait of a job made
	// when its id had not finished an upload within the last Delay (a
	// file written in one go: a cp, a burst of appends): it runs once no
	// job at all has changed (Add, AddNow) for QuickDelay, if that comes
	// before its own Delay. While changes go on elsewhere (a tar x), it
	// waits as any job does, so uploads do not compete with the writer.
	// A job that changes again within Delay of its last upload (or while
	// it uploads) waits Delay: a file changed again and again is not
	// sent each time. Zero means Delay.
	Delay       time.Duration
	QuickDelay  time.Duration
	MaxDirtyAge time.Duration
	// Backoff after the n-th failure in a row: MinBackoff * 2^(n-1), at
	// most MaxBackoff, of which a random half is taken off (jitter).
	// Defaults 1s and 1m.
	MinBackoff, MaxBackoff time.Duration
	// KeyWait is how long a job waits for a key before it looks again,
	// should the release never be announced (default 5s).
	KeyWait time.Duration
	// MaxImmediate is how many Again-without-delay or Conflict outcomes in
	// a row run at once before the job is backed off (default 3).
	MaxImmediate int
	Clock        clockwork.Clock // default the real clock
	// Go starts a goroutine (default the go statement). The cache passes
	// its tracked starter, so that its Close waits for every attempt.
	Go func(func())
	// Jitter returns a number in [0, 1); default math/rand/v2.
	Jitter func() float64
}

func (o *Options) setDefaults() {
	if o.Workers <= 0 {
		o.Workers = 4
	}
	if o.MaxDirtyAge <= 0 {
		o.MaxDirtyAge = 30 * time.Second
	}
	if o.QuickDelay <= 0 || o.QuickDelay > o.Delay {
		o.QuickDelay = o.Delay
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = time.Second
	}
	if o.MaxBackoff < o.MinBackoff {
		o.MaxBackoff = max(time.Minute, o.MinBackoff)
	}
	if o.KeyWait <= 0 {
		o.KeyWait = 5 * time.Second
	}
	if o.MaxImmediate <= 0 {
		o.MaxImmediate = 3
	}
	if o.Clock == nil {
		o.Clock = clockwork.NewRealClock()
	}
	if o.Go == nil {
		o.Go = func(f func()) { go f() }
	}
	if o.Jitter == nil {
		o.Jitter = rand.Float64
	}
}

// job is one inode's or tombstone's upload life. Every field is guarded by
// Scheduler.mu.
type job struct {
	id    ID
	state State
	due   time.Time // when it may run next (queued states)
	index int       // in Scheduler.queue; -1 when not queued
	seq   uint64    // queue order among equal due times

	since       time.Time // when it was created (oldest pending)
	quick       bool      // it may run QuickDelay after the last change of any job
	firstChange time.Time // of the changes not yet attempted; zero if none
	lastChange  time.Time
	urgent      bool // skip the write-back delay (fsync, flush, pressure)
	removed     bool // Remove called while an attempt ran

	changes    uint64 // Add calls
	started    uint64 // changes when the running attempt began
	synced     uint64 // changes covered by the last successful attempt
	begun      uint64 // attempts started
	failedAt   uint64 // number of the last attempt that failed (begun at its start)
	failures   int    // failed attempts in a row
	immediate  int    // Again-without-delay or Conflict outcomes in a row
	conflicts  int    // Conflict outcomes since the last success
	err        error  // of the last failed attempt; nil after a success
	key        string // WaitingForKey: the key
	retryAfter time.Time
	cancel     context.CancelFunc
}

// Scheduler runs the jobs; see the package documentation.
type Scheduler struct {
	opt Options

	mu      sync.Mutex
	cond    *sync.Cond // on mu: a job changed state or went
	jobs    map[ID]*job
	queue   jobQueue
	waiters map[string]map[*job]bool // WaitingForKey jobs by key
	seq     uint64
	running int
	timer   clockwork.Timer
	timerAt time.Time
	// uploaded holds when each id whose job went finished its last
	// upload, for Delay (a new job of it then waits Delay, not
	// QuickDelay). Entries older than that are swept once it has grown
	// to sweepAt.
	uploaded map[ID]time.Time
	sweepAt  int
	lastAdd  time.Time // of any job
	drain    int       // Flush callers: jobs added meanwhile skip the delay
	stopped  bool
	ctx      context.Context
	stop     context.CancelFunc
}

// New returns a scheduler; it runs jobs as they come due until Stop.
func New(opt Options) *Scheduler {
	opt.setDefaults()
	s := &Scheduler{opt: opt, jobs: make(map[ID]*job), waiters: make(map[string]map[*job]bool),
		uploaded: make(map[ID]time.Time), sweepAt: minSweep}
	s.cond = sync.NewCond(&s.mu)
	s.ctx, s.stop = context.WithCancel(context.Background())
	return s
}

// Stop cancels the attempts that run, waits for them to end and runs no
// more. Jobs stay as they are (the journal keeps their work).
func (s *Scheduler) Stop() {
	s.mu.Lock()
	s.stopped = true
	if s.timer != nil {
		s.timer.Stop()
		s.timer = nil
	}
	s.stop()
	for s.running > 0 {
		s.cond.Wait()
	}
	s.cond.Broadcast()
	s.mu.Unlock()
}

// now is the clock's time (s.mu held or not).
func (s *Scheduler) now() time.Time { return s.opt.Clock.Now() }

// Add records a change of id: the job is created if needed and runs the
// write-back delay after its last change. A failed job becomes pending
// again, since the change may mend it, but not before its backoff.
func (s *Scheduler) Add(id ID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.addLocked(id, false)
}

// AddNow is Add for a job that should not wait for the write-back delay
// (work a previous run left, a change that only S3 can complete).
func (s *Scheduler) AddNow(id ID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.addLocked(id, true)
}

func (s *Scheduler) addLocked(id ID, urgent bool) {
	now := s.now()
	j := s.jobs[id]
	if j == nil {
		j = &job{id: id, state: Pending, index: -1, since: now, quick: s.opt.QuickDelay < s.opt.Delay}
		if t, ok := s.uploaded[id]; ok {
			if now.Sub(t) < s.opt.Delay {
				j.quick = false
			}
			delete(s.uploaded, id)
		}
		s.jobs[id] = j
	}
	j.changes++
	if j.firstChange.IsZero() {
		j.firstChange = now
	}
	j.lastChange = now
	s.lastAdd = now
	if urgent || s.drain > 0 {
		j.urgent = true
	}
	switch j.state {
	case Uploading:
		// finish sees changes > started and runs it again, after the
		// whole delay: the file changes again as it is sent.
		j.quick = false
	case Failed:
		j.state = Pending
		s.enqueueLocked(j, laterOf(now.Add(s.delayFor(j)), j.retryAfter))
	case Pending:
		if j.index < 0 {
			s.enqueueLocked(j, now.Add(s.delayFor(j)))
		} else if j.urgent && j.due.After(now) {
			s.enqueueLocked(j, now)
		}
	}
	// BackingOff, WaitingForKey and Conflicted keep their due time: the
	// change rides along with the attempt they wait for.
	s.cond.Broadcast()
}

func (s *Scheduler) delayFor(j *job) time.Duration {
	if j.urgent || s.drain > 0 {
		return 0
	}
	if j.quick {
		return s.opt.QuickDelay
	}
	return s.opt.Delay
}

// minSweep is the least size of Scheduler.uploaded at which it is swept.
const minSweep = 256

// noteUploadedLocked records that j's last upload finished now, as its
// job goes.
func (s *Scheduler) noteUploadedLocked(j *job, now time.Time) {
	if s.opt.QuickDelay == s.opt.Delay {
		return // every job waits Delay anyway
	}
	s.uploaded[j.id] = now
	if len(s.uploaded) < s.sweepAt {
		return
	}
	for id, t := range s.uploaded {
		if now.Sub(t) >= s.opt.Delay {
			delete(s.uploaded, id)
		}
	}
	// Swept again once it has doubled: each entry costs O(1) sweeping.
	s.sweepAt = max(minSweep, 2*len(s.uploaded))
}

func laterOf(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// Urge makes id run as soon as a worker is free, without waiting for the
// write-back delay or for a backoff to pass. A failed job stays failed:
// use Retry for that.
func (s *Scheduler) Urge(id ID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if j := s.jobs[id]; j != nil {
		s.urgeLocked(j)
	}
}

func (s *Scheduler) urgeLocked(j *job) {
	j.urgent = true
	switch j.state {
	case Pending, BackingOff, Conflicted, WaitingForKey:
		s.enqueueLocked(j, s.now())
	case Uploading:
		// The rerun, if one is due, starts at once.
	}
}

// Retry gives a failed job one more attempt now.
func (s *Scheduler) Retry(id ID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if j := s.jobs[id]; j != nil && j.state == Failed {
		j.state = Pending
		s.urgeLocked(j)
	}
}

// Remove forgets id: its inode or tombstone is gone. An attempt that runs
// finishes, and its result is dropped.
func (s *Scheduler) Remove(id ID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	j := s.jobs[id]
	if j == nil {
		return
	}
	if j.state == Uploading {
		j.removed = true
		return
	}
	s.dropLocked(j)
}

func (s *Scheduler) dropLocked(j *job) {
	s.dequeueLocked(j)
	s.unwaitLocked(j)
	if s.jobs[j.id] == j {
		delete(s.jobs, j.id)
	}
	s.cond.Broadcast()
}

// Release wakes the jobs waiting for key.
func (s *Scheduler) Release(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	for j := range s.waiters[key] {
		s.enqueueLocked(j, now)
	}
}

// Pressure makes every pending job due now: writers wait for cache space
// that only uploads can free.
func (s *Scheduler) Pressure() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, j := range s.jobs {
		if j.state == Pending {
			s.urgeLocked(j)
		}
	}
}

// Kick makes every job that backs off due now: whatever failed may work
// now (S3 answered again).
func (s *Scheduler) Kick() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, j := range s.jobs {
		if j.state == BackingOff {
			s.enqueueLocked(j, s.now())
		}
	}
}

// Flush starts a drain: every job is due now, once (failed ones get one
// more attempt, backing-off ones one attempt before their backoff ends),
// and jobs added until the returned function is called skip the
// write-back delay. Attempts that fail after that back off as usual.
func (s *Scheduler) Flush() (done func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.drain++
	for _, j := range s.jobs {
		if j.state == Failed {
			j.state = Pending
		}
		s.urgeLocked(j)
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			s.drain--
			s.mu.Unlock()
		})
	}
}

// FailedError is what Sync returns for a job that failed for good.
type FailedError struct {
	ID  ID
	Err error
}

func (e *FailedError) Error() string { return e.Err.Error() }
func (e *FailedError) Unwrap() error { return e.Err }

// Sync waits until every change of id made before the call is covered by
// a successful attempt, or id has no job (nothing to do, or it went). It
// urges the job; a job that failed for good gets one more attempt, since
// whatever failed may have been mended (credentials, a bucket policy). It
// fails with the error of an attempt that began after the call (a
// *FailedError when the job failed for good), or when ctx ends.
func (s *Scheduler) Sync(ctx context.Context, id ID) error {
	stop := context.AfterFunc(ctx, func() {
		s.mu.Lock()
		s.cond.Broadcast()
		s.mu.Unlock()
	})
	defer stop()
	s.mu.Lock()
	defer s.mu.Unlock()
	j := s.jobs[id]
	if j == nil {
		return nil
	}
	target, begun := j.changes, j.begun
	for {
		switch {
		case s.jobs[id] != j || j.removed:
			return nil
		case j.synced >= target:
			return nil
		case j.failedAt > begun && j.state == Failed:
			return &FailedError{ID: id, Err: j.err}
		case j.failedAt > begun && j.state != Uploading:
			return j.err
		case s.stopped:
			return context.Canceled
		case ctx.Err() != nil:
			return ctx.Err()
		}
		switch {
		case j.state == Uploading:
			j.urgent = true // whatever it leaves runs at once
		case j.state == Failed:
			// It failed for good before the call (the attempt began
			// earlier): one more attempt, for this call.
			j.state = Pending
			s.urgeLocked(j)
		case j.begun == begun:
			// No attempt has started since the call: make one start now.
			s.urgeLocked(j)
		}
		s.cond.Wait()
	}
}

// WaitSettled waits until no job is left but failed ones, or ctx ends.
func (s *Scheduler) WaitSettled(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() {
		s.mu.Lock()
		s.cond.Broadcast()
		s.mu.Unlock()
	})
	defer stop()
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		settled := true
		for _, j := range s.jobs {
			if j.state != Failed {
				settled = false
				break
			}
		}
		if settled {
			return nil
		}
		if s.stopped {
			return context.Canceled
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		s.cond.Wait()
	}
}

// Info describes one job for status reports.
type Info struct {
	ID       ID
	State    State
	Since    time.Time // first became pending
	Due      time.Time // next attempt (queued states)
	Attempts uint64
	Failures int   // failed attempts in a row
	Err      error // of the last failed attempt
	Key      string
}

// Jobs returns every job, oldest first.
func (s *Scheduler) Jobs() []Info {
	s.mu.Lock()
	out := make([]Info, 0, len(s.jobs))
	for _, j := range s.jobs {
		out = append(out, j.info())
	}
	s.mu.Unlock()
	sort.Slice(out, func(a, b int) bool {
		if !out[a].Since.Equal(out[b].Since) {
			return out[a].Since.Before(out[b].Since)
		}
		return out[a].ID.String() < out[b].ID.String()
	})
	return out
}

// Job returns the job of id, if there is one.
func (s *Scheduler) Job(id ID) (Info, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	j := s.jobs[id]
	if j == nil {
		return Info{}, false
	}
	return j.info(), true
}

func (j *job) info() Info {
	in := Info{ID: j.id, State: j.state, Since: j.since, Attempts: j.begun, Failures: j.failures, Err: j.err, Key: j.key}
	if j.index >= 0 {
		in.Due = j.due
	}
	return in
}

// Counts returns how many jobs are in each state.
func (s *Scheduler) Counts() map[State]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := make(map[State]int)
	for _, j := range s.jobs {
		m[j.state]++
	}
	return m
}

// Oldest is when the oldest job was created; zero when there is none.
func (s *Scheduler) Oldest() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	var t time.Time
	for _, j := range s.jobs {
		if t.IsZero() || j.since.Before(t) {
			t = j.since
		}
	}
	return t
}

// enqueueLocked puts j in the queue (or moves it) to run at due.
func (s *Scheduler) enqueueLocked(j *job, due time.Time) {
	s.unwaitLocked(j)
	j.due = due
	if j.index >= 0 {
		heap.Fix(&s.queue, j.index)
	} else {
		s.seq++
		j.seq = s.seq
		heap.Push(&s.queue, j)
	}
	s.processLocked()
}

func (s *Scheduler) dequeueLocked(j *job) {
	if j.index >= 0 {
		heap.Remove(&s.queue, j.index)
	}
}

func (s *Scheduler) unwaitLocked(j *job) {
	if j.key == "" {
		return
	}
	if w := s.waiters[j.key]; w != nil {
		delete(w, j)
		if len(w) == 0 {
			delete(s.waiters, j.key)
		}
	}
	j.key = ""
}

// processLocked starts the due jobs while workers are free, and sets the
// timer for the next one.
func (s *Scheduler) processLocked() {
	if s.stopped {
		return
	}
	now := s.now()
	for s.running < s.opt.Workers && len(s.queue) > 0 {
		j := s.queue[0]
		if j.due.After(now) {
			break
		}
		heap.Pop(&s.queue)
		if !j.urgent && s.drain == 0 && j.state == Pending && !j.firstChange.IsZero() {
			// Debounce: wait for the writer to pause, but not forever.
			// A quick job may go sooner, once nothing has changed for
			// QuickDelay. While other jobs change, it comes back here
			// about once per QuickDelay until its own Delay has passed.
			at := j.lastChange.Add(s.opt.Delay)
			if q := s.lastAdd.Add(s.opt.QuickDelay); j.quick && q.Before(at) {
				at = q
			}
			if cap := j.firstChange.Add(s.opt.MaxDirtyAge); cap.Before(at) {
				at = cap
			}
			if at.After(now) {
				j.due = at
				s.seq++
				j.seq = s.seq
				heap.Push(&s.queue, j)
				continue
			}
		}
		s.startLocked(j)
	}
	s.setTimerLocked(now)
}

func (s *Scheduler) setTimerLocked(now time.Time) {
	if s.running >= s.opt.Workers || len(s.queue) == 0 {
		if s.timer != nil {
			s.timer.Stop()
			s.timer, s.timerAt = nil, time.Time{}
		}
		return
	}
	at := s.queue[0].due
	if s.timer != nil && s.timerAt.Equal(at) {
		return
	}
	if s.timer != nil {
		s.timer.Stop()
	}
	s.timerAt = at
	// The clock is read again: time may have passed since now was read
	// (this may run on a timer's goroutine while the clock moves on).
	s.timer = s.opt.Clock.AfterFunc(at.Sub(s.now()), func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.timer, s.timerAt = nil, time.Time{}
		s.processLocked()
	})
}

func (s *Scheduler) startLocked(j *job) {
	j.state = Uploading
	j.started = j.changes
	j.begun++
	j.firstChange = time.Time{}
	j.urgent = false // a Sync still waiting sets it again
	ctx, cancel := context.WithCancel(s.ctx)
	j.cancel = cancel
	s.running++
	s.cond.Broadcast()
	s.opt.Go(func() {
		res := s.opt.Run(ctx, j.id)
		cancel()
		s.finish(j, res)
	})
}

// finish moves j to its next state after an attempt.
func (s *Scheduler) finish(j *job, res Result) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.running--
	j.cancel = nil
	defer s.cond.Broadcast()
	defer s.processLocked()
	if j.removed || s.jobs[j.id] != j {
		s.dropLocked(j)
		return
	}
	now := s.now()
	immediate := false
	switch res.Outcome {
	case Done:
		j.synced = j.started
		j.err, j.failures, j.conflicts = nil, 0, 0
		if j.changes == j.started {
			s.dropLocked(j)
			s.noteUploadedLocked(j, now)
			return
		}
		// Changed while it ran: those changes wait the whole delay (or
		// not, if someone waits for them).
		j.state = Pending
		if j.firstChange.IsZero() {
			j.firstChange = now
		}
		s.enqueueLocked(j, now.Add(s.delayFor(j)))
	case Again:
		j.state = Pending
		j.err, j.failures = nil, 0
		if res.After <= 0 {
			immediate = true
			if j.immediate >= s.opt.MaxImmediate {
				s.backOffLocked(j, fmt.Errorf("%s: no progress after %d immediate attempts", j.id, j.immediate+1))
				return
			}
		}
		s.enqueueLocked(j, now.Add(max(res.After, 0)))
	case Retry:
		s.backOffLocked(j, res.Err)
	case Permanent:
		j.failedAt = j.begun
		j.failures++
		j.err = orUnknown(res.Err)
		j.state = Failed
		j.retryAfter = now.Add(s.backoff(j.failures))
		j.urgent = false
		s.dequeueLocked(j)
	case WaitKey:
		if h := s.jobs[res.Holder]; res.Holder != (ID{}) && h != nil && h.state == Failed && h != j {
			j.failedAt = j.begun
			j.failures++
			j.err = fmt.Errorf("waits for %q, held by %s, which failed: %w", res.Key, res.Holder, h.err)
			j.state = Failed
			j.retryAfter = now.Add(s.backoff(j.failures))
			return
		}
		j.state = WaitingForKey
		s.enqueueLocked(j, now.Add(s.opt.KeyWait))
		j.key = res.Key
		if s.waiters[res.Key] == nil {
			s.waiters[res.Key] = make(map[*job]bool)
		}
		s.waiters[res.Key][j] = true
	case Conflict:
		j.conflicts++
		immediate = true
		if j.immediate >= s.opt.MaxImmediate {
			s.backOffLocked(j, fmt.Errorf("%s: %d conflicts in a row", j.id, j.conflicts))
			return
		}
		j.state = Conflicted
		s.enqueueLocked(j, now)
	default:
		s.backOffLocked(j, fmt.Errorf("%s: unknown outcome %d", j.id, res.Outcome))
	}
	if immediate {
		j.immediate++
	} else {
		j.immediate = 0
	}
}

func orUnknown(err error) error {
	if err == nil {
		return errors.New("failed (no reason given)")
	}
	return err
}

// backOffLocked schedules a retry of j after a failure.
func (s *Scheduler) backOffLocked(j *job, err error) {
	j.failedAt = j.begun
	j.failures++
	j.immediate = 0
	j.err = orUnknown(err)
	j.state = BackingOff
	s.enqueueLocked(j, s.now().Add(s.backoff(j.failures)))
}

// backoff is the wait after the n-th failure in a row: exponential from
// MinBackoff, capped at MaxBackoff, less a random part of up to a half so
// that jobs that failed together do not retry together.
func (s *Scheduler) backoff(n int) time.Duration {
	d := s.opt.MinBackoff
	for i := 1; i < n && d < s.opt.MaxBackoff; i++ {
		d *= 2
	}
	d = min(d, s.opt.MaxBackoff)
	return d - time.Duration(s.opt.Jitter()*float64(d)/2)
}

// jobQueue is a heap of jobs by due time, then by the order they were
// queued.
type jobQueue []*job

func (q jobQueue) Len() int { return len(q) }
func (q jobQueue) Less(a, b int) bool {
	if !q[a].due.Equal(q[b].due) {
		return q[a].due.Before(q[b].due)
	}
	return q[a].seq < q[b].seq
}
func (q jobQueue) Swap(a, b int) {
	q[a], q[b] = q[b], q[a]
	q[a].index, q[b].index = a, b
}
func (q *jobQueue) Push(x any) {
	j := x.(*job)
	j.index = len(*q)
	*q = append(*q, j)
}
func (q *jobQueue) Pop() any {
	old := *q
	j := old[len(old)-1]
	old[len(old)-1] = nil
	j.index = -1
	*q = old[:len(old)-1]
	return j
}
