package blocks

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"sync"

	badger "github.com/dgraph-io/badger/v4"
)

// syncAhead is how many bytes of dirty blocks may wait for a sync before
// one starts in the background.
const syncAhead = 64 << 20

// Commit syncs in the background (the group commit): a failure is kept
// for the next Sync to report, as a background sync's is.
func (s *Store) Commit() {
	if err := s.commit(); err != nil {
		// KeepErr logged the first failure at ERROR; each one shows here.
		s.log.Debug("cache: group commit failed; kept for the next fsync", "err", err)
	}
}

// commit is Commit that also says how the sync ended (CommitAsync).
func (s *Store) commit() error {
	err := s.syncer.do(s.syncAll)
	if err != nil {
		s.KeepErr(err)
	}
	return err
}

// CommitAsync is Commit for a caller that will not wait for the disk
// however long it takes: it returns the sync, begun after the call, that
// the caller may wait for.
func (s *Store) CommitAsync() *Pending {
	spawn := s.background
	if spawn == nil {
		spawn = func(fn func()) bool {
			go fn()
			return true
		}
	}
	return s.syncer.after(s.commit, spawn)
}

// KeptErr returns the failure of a sync that is kept for the next Sync to
// report, as Sync reports it, and leaves it there.
func (s *Store) KeptErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return earlierFailure(s.aheadErr)
}

// earlierFailure is how Sync reports ahead, the failure of an earlier
// sync: nil if there was none.
func earlierFailure(ahead error) error {
	if ahead == nil {
		return nil
	}
	return fmt.Errorf("an earlier sync of written blocks failed, so data written since may be lost: %w", ahead)
}

// KeepErr keeps err, the failure of a sync whose caller did not wait for
// it, for the next Sync to report, as a failed Commit's is.
func (s *Store) KeepErr(err error) {
	s.mu.Lock()
	first := s.aheadErr == nil
	if first {
		s.aheadErr = err
	}
	s.mu.Unlock()
	if first {
		s.log.Error("cache: a sync of written blocks failed; the next fsync reports it", "err", err)
	}
}

// syncAheadLocked starts a sync in the background unless one runs (or
// the store closes). s.mu is held.
func (s *Store) syncAheadLocked() {
	if s.aheadRunning || s.closing {
		return
	}
	s.aheadRunning = true
	s.ahead.Add(1)
	if s.background == nil {
		go s.syncInBackground()
	} else if !s.background(s.syncInBackground) {
		s.aheadRunning = false
		s.ahead.Done()
	}
}

// syncInBackground runs one sync ahead of the next close or fsync. A
// failure puts the blocks back, and the next sync reports it (aheadErr).
func (s *Store) syncInBackground() {
	defer s.ahead.Done()
	err := s.syncer.do(s.syncAll)
	s.mu.Lock()
	s.aheadRunning = false
	if err != nil && s.aheadErr == nil {
		s.aheadErr = err
	}
	s.mu.Unlock()
	if err != nil {
		s.log.Error("cache: background sync of written blocks failed; the next close or fsync reports it", "err", err)
	}
}

// waitBackground waits for a background sync under way (tests).
func (s *Store) waitBackground() { s.ahead.Wait() }

// Close stops background syncs, waits for one under way, and closes the
// cached descriptors and the backing files. It does not sync: the caller
// calls Sync after, which reports a background sync's failure too.
func (s *Store) Close() {
	s.mu.Lock()
	s.closing = true
	s.mu.Unlock()
	s.ahead.Wait()
	s.closeBackings()
	s.mu.Lock()
	defer s.mu.Unlock()
	for id := range s.files {
		s.dropFileLocked(id)
	}
}

// Sync makes every block written so far and the badger log durable.
// Concurrent callers share one sync. It also reports, once, the failure
// of a background sync or group commit since the last one.
func (s *Store) Sync() error {
	err := s.syncer.do(s.syncAll)
	s.mu.Lock()
	ahead := s.aheadErr
	s.aheadErr = nil
	s.mu.Unlock()
	if err == nil {
		err = earlierFailure(ahead)
	}
	return err
}

// syncAll fsyncs the blocks written since the last sync, their
// directories, and the badger log.
func (s *Store) syncAll() error { return s.syncEpoch(true) }

// syncEpoch is syncAll; record false leaves the sync epoch on the disk as
// it was (Recover: entries whose cut is not recorded yet must still be
// taken for unsynced by a start after a crash during recovery).
func (s *Store) syncEpoch(record bool) error {
	s.syncGate.Lock() // no block between BeginWrite and Added
	s.mu.Lock()
	ids, newSubdir := s.unsynced, s.newSubdir
	s.unsynced, s.newSubdir, s.unsyncedBytes = make(map[ID]struct{}), false, 0
	s.syncing = ids
	// Retired before this sync began: the transactions that unindexed
	// them are in the log the db.Sync below makes durable. They stay in
	// s.retired until their files are gone, so that Taken keeps their IDs
	// from being written meanwhile. Likewise blocks held clean before it
	// began (cleaned) are released after it.
	retired := maps.Clone(s.retired)
	s.epochs++
	epoch := s.epochs
	s.mu.Unlock()
	s.syncGate.Unlock()
	fail := func(err error) error {
		s.mu.Lock()
		for id := range ids {
			s.unsynced[id] = struct{}{}
		}
		s.syncing = make(map[ID]struct{})
		s.newSubdir = s.newSubdir || newSubdir
		s.mu.Unlock()
		return fmt.Errorf("cache sync: %w", err)
	}
	// The files and the directories holding them, all at once: the
	// filesystem commits concurrent fsyncs together, and a close
	// waits for one commit rather than one per path.
	paths := map[string]bool{}
	if newSubdir {
		paths[s.dir] = true
	}
	for id := range ids {
		p := s.path(id)
		paths[p] = true
		paths[filepath.Dir(p)] = true
	}
	todo := make(chan string, len(paths))
	for p := range paths {
		todo <- p
	}
	close(todo)
	var (
		wg     sync.WaitGroup
		errMu  sync.Mutex
		first  error
		synced int64
	)
	for range min(len(paths), 16) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p := range todo {
				// A block dropped since has nothing to make durable.
				err := FsyncPath(p)
				errMu.Lock()
				if err != nil && !errors.Is(err, fs.ErrNotExist) {
					first = cmp.Or(first, err)
				} else if err == nil {
					synced++
				}
				errMu.Unlock()
			}
		}()
	}
	wg.Wait()
	s.mu.Lock()
	s.stats.FilesSynced += synced
	s.mu.Unlock()
	if first != nil {
		return fail(first)
	}
	// The epoch goes into the log this sync makes durable: a later start
	// that finds it knows this sync made its blocks durable; one that
	// does not, that it did not.
	if record {
		if err := s.db.Update(func(txn *badger.Txn) error {
			return txn.Set(epochKey, binary.BigEndian.AppendUint64(nil, epoch))
		}); err != nil {
			return fail(fmt.Errorf("record the sync epoch: %w", err))
		}
	}
	if err := s.db.Sync(); err != nil {
		return fail(err)
	}
	s.mu.Lock()
	s.syncing = make(map[ID]struct{})
	onSynced := s.onSynced
	s.mu.Unlock()
	if onSynced != nil {
		onSynced()
	}
	s.releaseCleaned(epoch)
	for id := range retired {
		s.removeFile(id)
		s.mu.Lock()
		s.retiredBytes -= s.retired[id]
		delete(s.retired, id)
		s.spaceFreed.Broadcast()
		s.mu.Unlock()
	}
	return nil
}

// SetOnSynced sets a function to run after each sync that succeeded,
// before anything the sync allowed to go is deleted. Tests use it to take
// what a power cut would leave on the disk.
func (s *Store) SetOnSynced(f func()) {
	s.mu.Lock()
	s.onSynced = f
	s.mu.Unlock()
}

// FsyncPath makes a file's content, or a directory's entries, durable.
// Tests replace it to inject failures; it is FsyncFile otherwise.
var FsyncPath = FsyncFile

// FsyncFile opens p and fsyncs it.
func FsyncFile(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	serr := f.Sync()
	if cerr := f.Close(); serr == nil {
		serr = cerr
	}
	return serr
}

// groupSync lets concurrent callers share one expensive sync: each caller
// returns after a sync that started after it called.
type groupSync struct {
	mu      sync.Mutex
	cond    *sync.Cond
	running bool
	started uint64
	done    uint64
	err     error

	// The run after spawned last, and the sync it waits for (see after).
	next     *Pending
	nextNeed uint64
}

// Pending is a sync that CommitAsync started, or joined.
type Pending struct {
	done chan struct{}
	err  error // set before done is closed
}

// Done is closed once the sync ended.
func (p *Pending) Done() <-chan struct{} { return p.done }

// Err is how the sync ended, once Done is closed: its own failure, which
// is also kept for the next Sync to report. A sync the store refused to
// start (it closes) ended with ErrClosing.
func (p *Pending) Err() error { return p.err }

// ErrClosing: the store closes, and starts no more syncs.
var ErrClosing = errors.New("cache: the block store closes")

// after is do for a caller that does not wait: it returns a Pending that
// ends once run, which calls do, has returned, having waited for a sync
// that started after this call. Callers between two syncs share one run,
// so however many call while a sync hangs, at most two runs are spawned:
// the one in the hung sync and the one waiting for it. If spawn refuses
// (the store closes), the Pending ends at once with ErrClosing.
func (g *groupSync) after(run func() error, spawn func(func()) bool) *Pending {
	g.mu.Lock()
	defer g.mu.Unlock()
	need := g.started + 1
	if g.next != nil && g.nextNeed == need {
		return g.next
	}
	p := &Pending{done: make(chan struct{})}
	g.next, g.nextNeed = p, need
	if !spawn(func() {
		p.err = run()
		close(p.done)
	}) {
		p.err = ErrClosing
		close(p.done)
	}
	return p
}

func (g *groupSync) do(fn func() error) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.cond == nil {
		g.cond = sync.NewCond(&g.mu)
	}
	need := g.started + 1
	for g.done < need {
		if g.running {
			g.cond.Wait()
			continue
		}
		g.running = true
		g.started++
		mine := g.started
		g.mu.Unlock()
		err := fn()
		g.mu.Lock()
		g.running = false
		g.done, g.err = mine, err
		g.cond.Broadcast()
	}
	return g.err
}
