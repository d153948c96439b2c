package cache

import (
	"context"
	"sort"
	"sync"
	"time"
)

// uploader brings S3 up to date with the journal: inodes with pending
// work, and tombstones. It runs MaxUploads jobs at once. An inode is due
// WriteBackDelay after its last change once no writer holds it open, or at
// once when fsync, cache pressure or a drain asks. Failed jobs are retried
// with backoff, forever: nothing in the journal is dropped.
//
// Lock order: uploader.mu is a leaf.
type uploader struct {
	c *Cache

	mu       sync.Mutex
	cond     *sync.Cond
	due      map[uint64]time.Time // inodes with work, and when
	tombDue  map[string]time.Time // tombstones, and when
	running  map[uint64]bool
	tombBusy map[string]bool
	urgent   map[uint64]bool // skip the write-back delay
	failures map[uint64]int  // consecutive failures, for backoff
	tombFail map[string]int
	waiters  map[string][]uint64  // inodes waiting for a key to be released
	drain    bool                 // everything is due now
	since    map[uint64]time.Time // when each pending inode first became pending
	tombFrom map[string]time.Time // same for tombstones
	stopped  bool

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func newUploader(c *Cache) *uploader {
	u := &uploader{c: c, due: make(map[uint64]time.Time), tombDue: make(map[string]time.Time),
		running: make(map[uint64]bool), tombBusy: make(map[string]bool), urgent: make(map[uint64]bool),
		failures: make(map[uint64]int), tombFail: make(map[string]int), waiters: make(map[string][]uint64),
		since: make(map[uint64]time.Time), tombFrom: make(map[string]time.Time)}
	u.cond = sync.NewCond(&u.mu)
	u.ctx, u.cancel = context.WithCancel(context.Background())
	return u
}

func (u *uploader) start() {
	for i := 0; i < u.c.opt.MaxUploads; i++ {
		u.wg.Add(1)
		go u.worker()
	}
	u.wg.Add(1)
	go u.ticker()
}

func (u *uploader) stop() {
	u.mu.Lock()
	u.stopped = true
	u.cond.Broadcast()
	u.mu.Unlock()
	u.cancel()
	u.wg.Wait()
}

// ticker wakes the workers so that due times are noticed.
func (u *uploader) ticker() {
	defer u.wg.Done()
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-u.ctx.Done():
			return
		case <-t.C:
			u.mu.Lock()
			u.cond.Broadcast()
			u.mu.Unlock()
		}
	}
}

// notify says ino has (or may have) pending work.
func (u *uploader) notify(ino uint64) {
	u.mu.Lock()
	defer u.mu.Unlock()
	when := time.Now().Add(u.c.opt.WriteBackDelay)
	u.markLocked(ino)
	if d, ok := u.due[ino]; !ok || when.Before(d) {
		u.due[ino] = when
	}
	u.cond.Broadcast()
}

// now makes ino due immediately (fsync, flush, pressure).
func (u *uploader) now(ino uint64) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.markLocked(ino)
	u.due[ino] = time.Now()
	u.urgent[ino] = true
	delete(u.failures, ino)
	u.cond.Broadcast()
}

func (u *uploader) notifyTomb(key string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if _, ok := u.tombDue[key]; !ok {
		u.tombDue[key] = time.Now()
	}
	if _, ok := u.tombFrom[key]; !ok {
		u.tombFrom[key] = time.Now()
	}
	u.cond.Broadcast()
}

// pressure is called when writers wait for cache space: upload everything
// dirty now, open or not.
func (u *uploader) pressure() {
	u.mu.Lock()
	defer u.mu.Unlock()
	now := time.Now()
	for ino := range u.due {
		u.due[ino] = now
		u.urgent[ino] = true
	}
	u.cond.Broadcast()
}

// setDrain makes everything due at once, for flush and shutdown.
func (u *uploader) setDrain(on bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.drain = on
	if on {
		for ino := range u.due {
			delete(u.failures, ino)
		}
		for k := range u.tombDue {
			delete(u.tombFail, k)
		}
	}
	u.cond.Broadcast()
}

// idle reports whether nothing is pending or running.
func (u *uploader) idle() bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.due) == 0 && len(u.tombDue) == 0 && len(u.running) == 0 && len(u.tombBusy) == 0
}

// pendingCount returns the number of inodes and tombstones waiting.
func (u *uploader) pendingCount() (inodes, tombs int) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.due) + len(u.running), len(u.tombDue) + len(u.tombBusy)
}

// markLocked notes when ino started to be pending, for OldestPending.
func (u *uploader) markLocked(ino uint64) {
	if _, ok := u.since[ino]; !ok {
		u.since[ino] = time.Now()
	}
}

// oldest returns how long the oldest pending job has been waiting.
func (u *uploader) oldest() time.Duration {
	u.mu.Lock()
	defer u.mu.Unlock()
	var first time.Time
	for _, t := range u.since {
		if first.IsZero() || t.Before(first) {
			first = t
		}
	}
	for _, t := range u.tombFrom {
		if first.IsZero() || t.Before(first) {
			first = t
		}
	}
	if first.IsZero() {
		return 0
	}
	return time.Since(first)
}

// waitKey parks ino until key is released (or a while passes).
func (u *uploader) waitKey(ino uint64, key string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.waiters[key] = append(u.waiters[key], ino)
	u.due[ino] = time.Now().Add(5 * time.Second)
}

// released wakes the inodes waiting for key.
func (u *uploader) released(key string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	now := time.Now()
	for _, ino := range u.waiters[key] {
		if _, ok := u.due[ino]; ok {
			u.due[ino] = now
		}
	}
	delete(u.waiters, key)
	u.cond.Broadcast()
}

type jobKind int

const (
	jobInode jobKind = iota
	jobTomb
)

type job struct {
	kind jobKind
	ino  uint64
	key  string
}

// next blocks until a job is due and returns it.
func (u *uploader) next() (job, bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for {
		if u.stopped {
			return job{}, false
		}
		now := time.Now()
		var best job
		var bestAt time.Time
		found := false
		for ino, at := range u.due {
			if u.running[ino] || (!u.drain && at.After(now)) {
				continue
			}
			if !found || at.Before(bestAt) {
				best, bestAt, found = job{kind: jobInode, ino: ino}, at, true
			}
		}
		for key, at := range u.tombDue {
			if u.tombBusy[key] || (!u.drain && at.After(now)) {
				continue
			}
			if !found || at.Before(bestAt) {
				best, bestAt, found = job{kind: jobTomb, key: key}, at, true
			}
		}
		if found {
			if best.kind == jobInode {
				delete(u.due, best.ino)
				u.running[best.ino] = true
			} else {
				delete(u.tombDue, best.key)
				u.tombBusy[best.key] = true
			}
			return best, true
		}
		u.cond.Wait()
	}
}

// outcome of one job.
type outcome struct {
	retryAfter time.Duration // >0: run again after this long
	failed     bool          // the attempt failed: back off
	waitKey    string        // blocked until this key is released
}

func (u *uploader) worker() {
	defer u.wg.Done()
	for {
		j, ok := u.next()
		if !ok {
			return
		}
		switch j.kind {
		case jobInode:
			u.mu.Lock()
			urgent := u.urgent[j.ino] || u.drain
			u.mu.Unlock()
			out := u.c.reconcile(u.ctx, j.ino, urgent)
			u.finishInode(j.ino, out)
		case jobTomb:
			out := u.c.processTomb(u.ctx, j.key)
			u.finishTomb(j.key, out)
		}
	}
}

func (u *uploader) finishInode(ino uint64, out outcome) {
	u.mu.Lock()
	defer u.mu.Unlock()
	delete(u.running, ino)
	switch {
	case out.waitKey != "":
		u.waiters[out.waitKey] = append(u.waiters[out.waitKey], ino)
		u.due[ino] = time.Now().Add(5 * time.Second)
	case out.failed:
		u.failures[ino]++
		u.due[ino] = time.Now().Add(backoff(u.failures[ino]))
	case out.retryAfter > 0:
		delete(u.failures, ino)
		if d, ok := u.due[ino]; !ok || d.After(time.Now().Add(out.retryAfter)) {
			u.due[ino] = time.Now().Add(out.retryAfter)
		}
	default:
		delete(u.failures, ino)
		if _, again := u.due[ino]; !again {
			delete(u.urgent, ino)
			delete(u.since, ino)
		} else {
			// Changes made during the upload are younger than it.
			u.since[ino] = time.Now()
		}
	}
	u.cond.Broadcast()
}

func (u *uploader) finishTomb(key string, out outcome) {
	u.mu.Lock()
	defer u.mu.Unlock()
	delete(u.tombBusy, key)
	switch {
	case out.failed:
		u.tombFail[key]++
		u.tombDue[key] = time.Now().Add(backoff(u.tombFail[key]))
	case out.retryAfter > 0:
		u.tombDue[key] = time.Now().Add(out.retryAfter)
	default:
		delete(u.tombFail, key)
		if _, again := u.tombDue[key]; !again {
			delete(u.tombFrom, key)
		}
	}
	u.cond.Broadcast()
}

// backoff grows from 1s to 2 minutes.
func backoff(failures int) time.Duration {
	d := time.Second << min(failures-1, 7)
	return min(d, 2*time.Minute)
}

// tombBusyLocked reports whether a delete of key is in flight; the caller
// holds nsMu.
func (u *uploader) tombRunning(key string) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.tombBusy[key]
}

// Drain uploads everything pending, now, and waits until the journal is
// empty or ctx ends. It returns the paths still pending on timeout.
func (c *Cache) Drain(ctx context.Context) ([]string, error) {
	c.flushAllBuffers()
	if err := c.blocks.sync(); err != nil {
		return nil, err
	}
	c.up.setDrain(true)
	defer c.up.setDrain(false)
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		if c.up.idle() {
			if left := c.Pending(); len(left) == 0 {
				return nil, nil
			}
		}
		select {
		case <-ctx.Done():
			return c.Pending(), ctx.Err()
		case <-t.C:
		}
	}
}

// Pending lists what the journal still holds: paths of inodes with pending
// uploads and keys waiting to be deleted, sorted.
func (c *Cache) Pending() []string {
	var out []string
	c.scanJournal(func(n *Inode) {
		p := n.Path
		if n.Unlinked {
			p = "(deleted) " + n.RemoteKey
		}
		out = append(out, p)
	}, func(key string, _ tombstone) {
		out = append(out, "(delete) "+key)
	})
	sort.Strings(out)
	return out
}

// OldestPending is how long the oldest pending upload or delete has been
// waiting; 0 when nothing is pending.
func (c *Cache) OldestPending() time.Duration { return c.up.oldest() }

// PendingCount returns how many inodes and deletes are waiting.
func (c *Cache) PendingCount() (inodes, deletes int) { return c.up.pendingCount() }
