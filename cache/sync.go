package cache

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/keelfs/keelfs/cache/writeback"
	"github.com/keelfs/keelfs/s3backend"
)

// Waiting for S3: fsync of a file or a directory, a drain (flush,
// shutdown), and what is still pending and why. Every wait ends: with
// success, with the reason a job failed, or with its context.

// uploadFailed is what fsync reports for a failed upload: ErrUploadFailed
// (EIO), except when S3 refused the credentials or a policy forbids the
// write. Then the S3 error itself (EACCES) says what is wrong: retrying
// will not help until someone changes the credentials or the policy.
func uploadFailed(err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	if errors.Is(err, s3backend.ErrAccessDenied) || errors.Is(err, s3backend.ErrInvalidCredentials) {
		return fmt.Errorf("upload to s3 refused: %w", err)
	}
	return fmt.Errorf("%w: %w", ErrUploadFailed, err)
}

// syncJob waits until job id has no change older than the call that is
// not in S3. work says whether the record needs work: a job is then made
// if there is none, so that the wait cannot pass for want of one.
func (c *Cache) syncJob(ctx context.Context, id writeback.ID, work bool) error {
	c.probeS3(ctx)
	if work {
		if _, ok := c.wb.Job(id); !ok {
			c.wb.AddNow(id)
		}
	}
	if err := c.wb.Sync(ctx, id); err != nil {
		return uploadFailed(err)
	}
	return nil
}

// syncFile waits until the file's changes up to now are in S3. An
// unlinked file has nothing to wait for: it will never be in S3, and the
// delete of its old object waits for the last close, which may be the
// caller's own.
func (c *Cache) syncFile(ctx context.Context, st *inodeState) error {
	st.mu.Lock()
	rec := st.rec
	if rec == nil || rec.Unlinked {
		st.mu.Unlock()
		return nil
	}
	work := rec.needsWork()
	st.mu.Unlock()
	return c.syncJob(ctx, writeback.Inode(st.ino), work)
}

// SyncDir makes the namespace changes in directory ino durable (fsync of
// a directory): at once in the local journal, against a power cut, and in
// S3 before it returns: every entry of the directory with work pending
// (created, renamed into it, changed), the directory's own marker, and
// every object directly under it waiting to be deleted (a rename's old
// name, an unlinked file). It fails as fsync does if one cannot be
// uploaded.
func (c *Cache) SyncDir(ctx context.Context, ino uint64) error {
	c.flushAllBuffers()
	if err := c.blocks.Sync(); err != nil {
		return err
	}
	// A rename's copy makes a delete of the old name; a second round
	// waits for what the first made.
	for round := 0; round < 3; round++ {
		jobs, err := c.dirWork(ino)
		if err != nil {
			return err
		}
		if len(jobs) == 0 {
			return nil
		}
		for _, j := range jobs {
			if err := c.syncJob(ctx, j.id, j.work); err != nil {
				return err
			}
		}
	}
	return nil
}

type dirJob struct {
	id   writeback.ID
	work bool
}

// dirWork lists the jobs SyncDir waits for.
func (c *Cache) dirWork(ino uint64) ([]dirJob, error) {
	dir, err := c.snapshot(ino)
	if err != nil {
		return nil, err
	}
	if dir.Kind != KindDir {
		return nil, ErrNotDir
	}
	var jobs []dirJob
	if dir.needsWork() && dir.Ino != RootIno {
		jobs = append(jobs, dirJob{writeback.Inode(ino), true})
	}
	r := &DirReader{c: c, ino: ino}
	for {
		e, ok, err := r.Next()
		if err != nil {
			return nil, err
		}
		if !ok {
			break
		}
		n, err := c.snapshot(e.Ino)
		if err != nil {
			continue // gone meanwhile
		}
		if n.needsWork() {
			jobs = append(jobs, dirJob{writeback.Inode(e.Ino), true})
		}
	}
	prefix := tombKey(dirPrefix(dir.Path))
	err = c.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
		defer it.Close()
		for it.Seek(prefix); it.ValidForPrefix(prefix); it.Next() {
			rest := string(it.Item().Key()[len(prefix):])
			if i := strings.IndexByte(rest, '/'); i < 0 || i == len(rest)-1 {
				key := string(it.Item().Key()[1:])
				jobs = append(jobs, dirJob{writeback.Tomb(key), false})
			}
		}
		return nil
	})
	return jobs, err
}

// PendingItem is one change not yet in S3, and why.
type PendingItem struct {
	// Path is the file's path; "(deleted) KEY" for an unlinked file whose
	// object KEY must go, "(delete) KEY" for an object waiting to be
	// deleted.
	Path     string    `json:"path"`
	State    string    `json:"state"`            // of its upload job (see package writeback)
	Reason   string    `json:"reason,omitempty"` // the last attempt's error, if it failed
	Err      error     `json:"-"`
	Since    time.Time `json:"since"` // when it became pending in this process
	Attempts uint64    `json:"attempts"`
	ino      uint64
}

// Drain uploads everything pending now and waits until nothing is left
// but changes that failed for good, or ctx ends. Failed changes get one
// more attempt; changes that fail with a retryable error back off as
// usual. It returns what is left, each with its reason; the error is
// ctx's when that is what ended it.
func (c *Cache) Drain(ctx context.Context) ([]PendingItem, error) {
	c.flushAllBuffers()
	// The cache is synced, and a failure of its disk reported, before
	// the uploads; for PushSyncWait at most (see syncWithin), so that a
	// hung cache disk does not keep the data from S3.
	if err := c.syncWithin(ctx); err != nil {
		return c.PendingItems(), err
	}
	if len(c.PendingItems()) > 0 {
		// Nothing to upload, nothing to ask S3: a stop during an outage
		// must not wait for a probe that cannot change what it does.
		c.probeS3(ctx)
	}
	done := c.wb.Flush()
	defer done()
	for round := 0; ; round++ {
		if err := c.wb.WaitSettled(ctx); err != nil {
			return c.PendingItems(), err
		}
		left := c.PendingItems()
		// Journal entries without a job (none are expected) get one, once.
		var unscheduled []writeback.ID
		for _, it := range left {
			if it.State == "" {
				unscheduled = append(unscheduled, pendingID(it))
			}
		}
		if len(unscheduled) == 0 || round > 0 {
			return left, nil
		}
		for _, id := range unscheduled {
			c.wb.AddNow(id)
		}
	}
}

// pendingID is the job of an item that PendingItems found in the journal.
func pendingID(it PendingItem) writeback.ID {
	if key, ok := strings.CutPrefix(it.Path, "(delete) "); ok {
		return writeback.Tomb(key)
	}
	return writeback.Inode(it.ino)
}

// PendingItems lists what the journal still holds, with the state of each
// job, sorted by path.
func (c *Cache) PendingItems() []PendingItem {
	jobs := make(map[writeback.ID]writeback.Info)
	for _, in := range c.wb.Jobs() {
		jobs[in.ID] = in
	}
	var out []PendingItem
	add := func(id writeback.ID, path string) {
		it := PendingItem{Path: path, ino: id.Ino}
		if in, ok := jobs[id]; ok {
			it.State, it.Err, it.Since, it.Attempts = in.State.String(), in.Err, in.Since, in.Attempts
			if in.Err != nil {
				it.Reason = in.Err.Error()
			}
		}
		out = append(out, it)
	}
	err := c.scanJournal(func(n *Inode) {
		p := n.Path
		if n.Unlinked {
			p = "(deleted) " + n.RemoteKey
		}
		add(writeback.Inode(n.Ino), p)
	}, func(key string, _ tombstone) {
		add(writeback.Tomb(key), "(delete) "+key)
	})
	if err != nil {
		// Never report "nothing pending" when the journal cannot be read.
		c.log.Error("cache: read the journal", "err", err)
		out = append(out, PendingItem{Path: "(cache journal)", State: writeback.Failed.String(), Reason: err.Error(), Err: err})
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Path < out[b].Path })
	return out
}

// Pending lists the paths of PendingItems.
func (c *Cache) Pending() []string {
	var out []string
	for _, it := range c.PendingItems() {
		out = append(out, it.Path)
	}
	return out
}

// Status is what `keelfs status` shows of the write-back.
type Status struct {
	Jobs      map[string]int // upload jobs by state
	Stuck     []PendingItem  // failed for good: not retried until changed, flushed or remounted
	Retrying  []PendingItem  // failed, retried with backoff (the oldest few)
	Conflicts []ConflictInfo // conflict copies made lately, oldest first
	// ToAbort counts the multipart uploads left open in S3 that the
	// aborter has yet to abort (abort.go); ToAbortErr is why they could
	// not be counted (ToAbort is then 0).
	ToAbort    int
	ToAbortErr error
}

// Status reports the write-back's jobs by state, the changes that cannot
// be uploaded and why, the conflict copies made, and the multipart uploads
// left to abort.
func (c *Cache) Status() Status {
	st := Status{Jobs: c.JobCounts(), Conflicts: c.RecentConflicts()}
	st.ToAbort, st.ToAbortErr = c.uploadsToAbort()
	for _, in := range c.wb.Jobs() {
		if in.State != writeback.Failed && in.State != writeback.BackingOff {
			continue
		}
		it := PendingItem{Path: c.jobPath(in.ID), State: in.State.String(), Err: in.Err, Since: in.Since, Attempts: in.Attempts}
		if in.Err != nil {
			it.Reason = in.Err.Error()
		}
		if in.State == writeback.Failed {
			st.Stuck = append(st.Stuck, it)
		} else if len(st.Retrying) < 20 {
			st.Retrying = append(st.Retrying, it)
		}
	}
	return st
}

// JobCounts returns how many upload and delete jobs are in each state.
func (c *Cache) JobCounts() map[string]int {
	out := make(map[string]int)
	for s, n := range c.wb.Counts() {
		out[s.String()] = n
	}
	return out
}

// OldestPending is how long the oldest pending upload or delete has been
// waiting; 0 when nothing is pending.
func (c *Cache) OldestPending() time.Duration {
	t := c.wb.Oldest()
	if t.IsZero() {
		return 0
	}
	return c.opt.Clock.Since(t)
}

// PendingCount returns how many inodes and deletes are waiting.
func (c *Cache) PendingCount() (inodes, deletes int) {
	for _, in := range c.wb.Jobs() {
		if in.ID.IsTomb() {
			deletes++
		} else {
			inodes++
		}
	}
	return inodes, deletes
}

// Kick retries at once every upload that backs off: S3 answers again.
func (c *Cache) Kick() { c.wb.Kick() }
