package cache

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/jonboulle/clockwork"
	"golang.org/x/sys/unix"

	"github.com/keelfs/keelfs/cache/blocks"
	"github.com/keelfs/keelfs/cache/writeback"
	"github.com/keelfs/keelfs/s3backend"
)

// RootIno is the inode number of the mount's root directory.
const RootIno uint64 = 1

// ConflictMode says what an upload does when another writer changed the
// object since the local edit began.
type ConflictMode int

const (
	// ConflictCopy keeps the other writer's object under the name and
	// uploads the local version beside it as NAME.conflict-HOST-TIME.
	ConflictCopy ConflictMode = iota
	// ConflictOverwrite uploads unconditionally: last writer wins.
	ConflictOverwrite
)

// Options configure a Cache. Zero values get the defaults noted.
type Options struct {
	Dir   string // where the badger store and block files live (created 0700)
	Store s3backend.ObjectStore

	ReadOnly    bool
	BlockSize   int64         // default 1 MiB
	CacheSize   int64         // bytes of blocks on disk; default 10 GiB
	MetadataTTL time.Duration // default 1s
	// WriteBackDelay is how long after its last change (a write, a
	// close) a file's upload starts; zero or negative: at once. A file
	// that has not finished an upload within the last WriteBackDelay
	// goes sooner, once no file has changed for a quarter of it
	// (writeback.Options.QuickDelay).
	WriteBackDelay time.Duration
	SyncOnClose    bool
	NoAtime        bool  // reads never move atime (the noatime mount option)
	PartSize       int64 // multipart part size; default 16 MiB, grown for huge files
	MaxUploads     int   // files uploading at once; default 4
	MaxParts       int   // parts in flight per file; default 4
	MaxReadAhead   int64 // bytes; default 64 MiB
	// ReadReorder is how far out of order the kernel's read-ahead
	// requests may arrive: its read-ahead window and one request (fs sets
	// the window to 4 MiB). Reads that far apart still count as one
	// sequential run, never as a random reader. Default 8 MiB.
	ReadReorder int64
	HeadWorkers int  // HEADs in flight while filling a directory; default 32
	SkipHeaders bool // never HEAD for x-amz-meta-* attributes
	Conflict    ConflictMode
	// ConditionalWrites says the endpoint enforces If-Match/If-None-Match.
	// Without it uploads are last-writer-wins whatever Conflict says.
	ConditionalWrites bool

	UID, GID          uint32 // owner of objects without headers
	FileMode, DirMode uint32 // permissions of objects without headers

	Hostname      string // for conflict names; default os.Hostname
	EncryptionKey []byte // encryption at rest of metadata (badger's) and block files (AES-GCM); nil for none

	Logger *slog.Logger
	// Invalidate, if set, is called when the content of an inode changed
	// behind the kernel's back (another writer), so that the kernel drops
	// its page cache. InvalidateEntry likewise for a name that vanished.
	Invalidate      func(ino uint64)
	InvalidateEntry func(parent uint64, name string)
	// Now stamps records (mtime, ctime) and measures the metadata TTL;
	// default time.Now. Clock drives the write-back schedule (delays,
	// backoff); default the real clock. Tests replace either.
	Now   func() time.Time
	Clock clockwork.Clock
	// MinBackoff and MaxBackoff bound the wait before an upload that
	// failed with a retryable error is tried again (doubling from the
	// first to the second, with jitter); defaults 1s and 1m.
	MinBackoff, MaxBackoff time.Duration
	// CompleteMax is the most bytes of a partly edited file's unchanged
	// content that are fetched into the cache (and kept there) while the
	// edit is local, so that the local version can still be saved if
	// another writer replaces the object first. Default the smaller of
	// CacheSize/8 and 128 MiB; negative disables it.
	CompleteMax int64
	// MaxKeyLen is the longest object key, relative to the store's prefix,
	// that a name may need (S3: 1024 bytes less the prefix); default 1024.
	MaxKeyLen int
	// CommitInterval is how often what closes wrote to the cache is made
	// durable on its disk (block files and badger's log, fsynced
	// together), as ext4's commit interval does: a power cut loses at
	// most that much of what close acknowledged; a crash of the process
	// loses none of it. Default 5s.
	CommitInterval time.Duration
	// PushSyncWait is how long an upload waits for the sync of the cache
	// that goes before it (see commitBeforePush) before it sends anyway;
	// default 10s.
	PushSyncWait time.Duration
	// SpaceWait is how long a writer waits for uploads to make room in a
	// full cache before it gets ErrNoSpace; default 60s.
	SpaceWait time.Duration
	// MinFreeDisk is the free space kept on the cache's filesystem for
	// the metadata store: blocks are not written into it (writers wait,
	// then get ErrNoSpace), since badger's memory-mapped files fault
	// (SIGBUS) when the disk fills under them. Default the smaller of
	// 64 MiB and a tenth of the filesystem; negative disables it.
	MinFreeDisk int64
	// Statfs reports the free space of the cache's filesystem; nil asks
	// the kernel. Tests give it a disk of their own.
	Statfs func() (free int64, err error)
	// SetLease is the fcntl F_SETLEASE call of the passthrough files'
	// lease probes; nil asks the kernel. Tests make it fail.
	SetLease func(fd uintptr, arg int) error
}

func (o *Options) setDefaults() {
	if o.BlockSize <= 0 {
		o.BlockSize = 1 << 20
	}
	if o.CacheSize <= 0 {
		o.CacheSize = 10 << 30
	}
	if o.MetadataTTL <= 0 {
		o.MetadataTTL = time.Second
	}
	if o.WriteBackDelay < 0 {
		o.WriteBackDelay = 0
	}
	if o.PartSize <= 0 {
		o.PartSize = 16 << 20
	}
	if o.PartSize < s3backend.MinPartSize {
		o.PartSize = s3backend.MinPartSize
	}
	o.PartSize = (o.PartSize + o.BlockSize - 1) / o.BlockSize * o.BlockSize
	if o.MaxUploads <= 0 {
		o.MaxUploads = 4
	}
	if o.MaxParts <= 0 {
		o.MaxParts = 4
	}
	if o.MaxReadAhead <= 0 {
		o.MaxReadAhead = 64 << 20
	}
	if o.ReadReorder <= 0 {
		o.ReadReorder = 8 << 20
	}
	if o.HeadWorkers <= 0 {
		o.HeadWorkers = 32
	}
	if o.Hostname == "" {
		o.Hostname, _ = os.Hostname()
		if o.Hostname == "" {
			o.Hostname = "unknown"
		}
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Clock == nil {
		o.Clock = clockwork.NewRealClock()
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = time.Second
	}
	if o.MaxBackoff < o.MinBackoff {
		o.MaxBackoff = max(time.Minute, o.MinBackoff)
	}
	if o.CompleteMax == 0 {
		o.CompleteMax = min(o.CacheSize/8, 128<<20)
	}
	if o.MaxKeyLen <= 0 {
		o.MaxKeyLen = 1024
	}
	if o.SpaceWait <= 0 {
		o.SpaceWait = 60 * time.Second
	}
	if o.CommitInterval <= 0 {
		o.CommitInterval = 5 * time.Second
	}
	if o.PushSyncWait <= 0 {
		o.PushSyncWait = 10 * time.Second
	}
	if o.FileMode == 0 {
		o.FileMode = 0o644
	}
	if o.DirMode == 0 {
		o.DirMode = 0o755
	}
}

// Cache is the local state of one mount: metadata and blocks in the cache
// directory, and the write-back that brings S3 up to date. It assembles
// parts that each own their state and lock:
//
//   - ns (namespace.go): directory entries, inode records, claims and
//     tombstones, and the in-memory state of active inodes.
//   - blocks (package blocks): block files, their index, integrity,
//     accounting and eviction, and the backing files of passthrough.
//   - wb (package writeback): when each upload or delete runs, in an
//     explicit state per job.
//   - rc (reconcile.go): what one attempt does (seal, send, apply the
//     answer, the conflict path), run by wb.
//   - fetch (fetch.go): blocks in flight from S3, read-ahead.
//   - tasks (tasks.go): every background goroutine, waited for at Close.
//
// # Locking
//
// Lock order: namespace.mu before inodeState.mu before namespace.statesMu;
// blocks.Store's locks, the scheduler's, fetcher.mu, passMu and tasks.mu
// are leaves. Only
// holders of namespace.mu lock more than one inodeState. No lock is held
// across an S3 request or while waiting for cache space.
type Cache struct {
	opt   Options
	store s3backend.ObjectStore
	db    *badger.DB
	log   *slog.Logger
	stats Stats

	ns namespace
	// closing is set when Close begins: writes fail from then on.
	closing atomic.Bool
	// seqMarkAt is the sequence mark last stored (see extendSeqMark).
	seqMarkAt uint64
	blocks    *blocks.Store
	wb        *writeback.Scheduler
	rc        reconciler
	fetch     fetcher
	tasks     *tasks
	aborts    aborter

	// Passthrough (passthrough.go). passMu is a leaf; it guards
	// assembling (files whose backing file is being made in the
	// background) and lingering (backing files a mapping may still use
	// after the last open).
	passMu     sync.Mutex
	assembling map[uint64]bool
	lingering  []*lingering
	assemblies sync.WaitGroup
	leaseWarn  sync.Once // logs once that mappings cannot be told
	leaseWarnW sync.Once // the same, for writable mappings

	bufMem    *bufferBudget
	zeroBlock []byte   // a block of zeros, shared read-only
	badKeys   sync.Map // keys already logged as unusable
	closeOnce sync.Once
}

// namespace is the part of the cache that owns names and records.
//
// Lock order: mu before inodeState.mu before statesMu before namesMu;
// released.mu is a leaf.
type namespace struct {
	// mu serialises every change to the namespace: directory entries,
	// claims, tombstones and inode allocation, and the merge of listings.
	// See Cache.update.
	mu sync.Mutex

	statesMu sync.Mutex
	states   map[uint64]*inodeState // guarded by statesMu

	seq atomic.Uint64 // change sequence, see nextSeq

	fills flight // one directory listing at a time per directory

	namesMu  sync.Mutex
	namesSeq uint64            // guarded by namesMu
	namesVer map[uint64]uint64 // directory ino -> namesSeq of its last change; guarded by namesMu
	nlinks   nlinkCache        // directories' link counts, see dirNlink

	heads   flight // one HEAD at a time per inode, see learnHeaders
	walksMu sync.Mutex
	walking map[uint64]*headWalk // directories whose headers are being learned; guarded by walksMu
	walks   sync.WaitGroup       // header walks running

	released releases // keys no longer hidden, for the listings under way
}

// Open opens (creating if needed) the cache in opt.Dir and resumes the
// pending uploads and deletes a previous run left.
func Open(ctx context.Context, opt Options) (*Cache, error) {
	opt.setDefaults()
	if opt.Store == nil {
		return nil, errors.New("cache: no object store")
	}
	if err := os.MkdirAll(opt.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("cache dir: %w", err)
	}
	if err := os.Chmod(opt.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("cache dir: %w", err)
	}
	db, err := openDB(filepath.Join(opt.Dir, "meta"), opt.EncryptionKey, opt.Logger)
	if err != nil {
		return nil, err
	}
	c := &Cache{
		opt:   opt,
		store: opt.Store,
		db:    db,
		log:   opt.Logger,
		ns: namespace{
			states:   make(map[uint64]*inodeState),
			namesVer: make(map[uint64]uint64),
			walking:  make(map[uint64]*headWalk),
		},
		fetch: fetcher{inflight: make(map[blocks.ID]*fetchCall), sem: make(chan struct{}, 16)},
		rc:    reconciler{deleting: make(map[string]bool)},
		tasks: newTasks(),

		assembling: make(map[uint64]bool),
	}
	c.ns.seq.Store(uint64(opt.Now().UnixNano()))
	c.aborts.wake = make(chan struct{}, 1)
	c.zeroBlock = make([]byte, opt.BlockSize)
	c.bufMem = newBufferBudget(max(16<<20, 8*opt.BlockSize))
	minFree, err := minFreeFor(opt.MinFreeDisk, opt.Dir)
	if err != nil {
		db.Close()
		return nil, err
	}
	c.blocks, err = blocks.Open(blocks.Options{
		Dir: filepath.Join(opt.Dir, "blocks"), DB: db, Limit: opt.CacheSize, Key: opt.EncryptionKey,
		Log: opt.Logger, MinFree: minFree, Statfs: opt.Statfs, SetLease: opt.SetLease, Background: c.tasks.Go,
		// The scheduler is made below; nothing reserves room before then.
		OnPressure: func() { c.wb.Pressure() },
		Hopeless:   c.s3Unreachable,
	})
	if err != nil {
		db.Close()
		return nil, err
	}
	if err := c.checkSuper(); err != nil {
		db.Close()
		return nil, err
	}
	if err := c.startSeq(); err != nil {
		db.Close()
		return nil, fmt.Errorf("cache: %w", err)
	}
	if err := c.ensureRoot(); err != nil {
		db.Close()
		return nil, err
	}
	c.wb = writeback.New(writeback.Options{
		Run: c.runJob, Workers: opt.MaxUploads, MaxDirtyAge: maxDirtyAge,
		Delay: opt.WriteBackDelay, QuickDelay: opt.WriteBackDelay / quickDelayDiv,
		MinBackoff: opt.MinBackoff, MaxBackoff: opt.MaxBackoff, Clock: opt.Clock,
		Go: func(f func()) {
			if !c.tasks.Go(f) {
				f() // closing: the attempt sees its cancelled context at once
			}
		},
	})
	if err := c.recover(ctx); err != nil {
		c.wb.Stop()
		c.tasks.close()
		db.Close()
		return nil, err
	}
	if err := c.abortOrphanStreams(); err != nil {
		c.wb.Stop()
		c.tasks.close()
		db.Close()
		return nil, fmt.Errorf("cache recovery: %w", err)
	}
	c.sweepAborts() // those a previous run left
	c.tasks.Go(c.maintain)
	c.tasks.Go(c.groupCommit)
	return c, nil
}

// groupCommit makes the cache durable on its disk every CommitInterval,
// for all the closes of the interval at once (see Handle.Flush). A
// failure is kept for the next fsync or close of the cache to report
// (see blocks.Store.Sync), and logged.
func (c *Cache) groupCommit() {
	t := c.opt.Clock.NewTicker(c.opt.CommitInterval)
	defer t.Stop()
	for {
		select {
		case <-c.tasks.ctx.Done():
			return
		case <-t.Chan():
			if err := c.extendSeqMark(); err != nil {
				c.log.Error("cache: keep the sequence mark ahead", "err", err)
			}
			c.blocks.Commit()
			c.checkLingering(c.tasks.ctx)
		}
	}
}

// Close stops background work and closes the store. Pending uploads stay
// in the journal for the next mount; call Drain first to finish them.
func (c *Cache) Close() error {
	var err error
	c.closeOnce.Do(func() {
		c.closing.Store(true) // before flushAllBuffers: see writeBlock
		c.wb.Stop()           // attempts end first: they may start tasks of their own
		c.tasks.close()
		c.closeLingering() // after the group commit, which looks at them too
		c.flushAllBuffers()
		c.blocks.Close()
		err = c.blocks.Sync()
		if err == nil && testHookBeforeCleanMark != nil {
			testHookBeforeCleanMark(c)
		}
		switch {
		case err != nil:
		case !c.blocks.AllSynced():
			// Something still stored a block after the sync (a write
			// that passed writeBlock's check just before Close began):
			// leave the next start to check.
			c.log.Warn("cache: written to while closing; the next start checks the blocks not yet uploaded")
		default:
			err = c.markClosedCleanly()
		}
		if cerr := c.closeDB(); cerr != nil {
			if err == nil {
				err = cerr
			} else {
				c.log.Error("cache: closing", "err", cerr)
			}
		}
	})
	return err
}

// closeDBWait bounds how long Close waits for badger to close. Badger
// writes its memtable to a table file as it closes, and retries a failed
// write every second without end: with the cache directory removed while
// mounted, or a disk that refuses new files, the stop of a mount would
// hang for ever. Leaving badger unclosed is what a kill -9 does, which
// loses nothing: the next open recovers the memtable from badger's log.
const closeDBWait = 30 * time.Second

// closeDB closes badger, or gives up after closeDBWait and says why.
func (c *Cache) closeDB() error {
	done := make(chan error, 1)
	go func() { done <- c.db.Close() }()
	select {
	case err := <-done:
		return err
	case <-c.opt.Clock.After(closeDBWait):
	}
	why := "badger's errors in the log say why"
	if _, err := os.Stat(c.opt.Dir); err != nil {
		why = fmt.Sprintf("the cache directory is gone: %v", err)
	}
	return fmt.Errorf("cache: the metadata store did not close within %v (%s); it is left as a crash would leave it, and the next mount of this cache recovers it from its log", closeDBWait, why)
}

// testHookBeforeCleanMark, if set, runs in Close after the last sync.
var testHookBeforeCleanMark func(*Cache)

// s3Unreachable reports whether the store knows S3 does not answer now
// (it is an s3backend.Reach): then no upload can make room in the cache,
// and a writer gets ENOSPC at once instead of waiting SpaceWait for it.
func (c *Cache) s3Unreachable() bool {
	r, ok := c.store.(interface{ Reachable() bool })
	return ok && !r.Reachable()
}

// probeS3 asks S3 at once whether it answers again, when the store knows
// it did not: an fsync or a flush exists to reach S3, and must not fail
// just because the periodic probe has not run since S3 came back.
func (c *Cache) probeS3(ctx context.Context) {
	if r, ok := c.store.(interface{ Probe(context.Context) bool }); ok && c.s3Unreachable() {
		if r.Probe(ctx) {
			c.wb.Kick()
		}
	}
}

// minFreeFor works out Options.MinFreeDisk for the filesystem of dir: as
// set, or by default the smaller of 64 MiB and a tenth of the filesystem
// (badger needs a few memtables' worth: 2 x 16 MiB, plus table builds).
func minFreeFor(opt int64, dir string) (int64, error) {
	switch {
	case opt < 0:
		return 0, nil
	case opt > 0:
		return opt, nil
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, fmt.Errorf("cache dir: %w", err)
	}
	return min(64<<20, int64(st.Blocks)*st.Bsize/10), nil
}

// superblock guards against opening a cache written with a different block
// size, which would misread every block.
func (c *Cache) checkSuper() error {
	// v2: block index entries may carry a flags byte (blocks.Meta). v3:
	// the flags may name the block an entry replaced (Meta.Prev). A
	// release that knows only an older format would take such entries
	// for garbage and delete the blocks, data not yet uploaded among
	// them; it refuses the cache instead. An older cache is taken as it
	// is and marked v3.
	want := fmt.Sprintf("keelfs-cache v3 block=%d", c.opt.BlockSize)
	older := []string{fmt.Sprintf("keelfs-cache v1 block=%d", c.opt.BlockSize), fmt.Sprintf("keelfs-cache v2 block=%d", c.opt.BlockSize)}
	return update(c.db, func(txn *badger.Txn) error {
		it, err := txn.Get([]byte{pSuper})
		if errors.Is(err, badger.ErrKeyNotFound) {
			return txn.Set([]byte{pSuper}, []byte(want))
		}
		if err != nil {
			return err
		}
		var have string
		if err := it.Value(func(v []byte) error { have = string(v); return nil }); err != nil {
			return err
		}
		switch {
		case have == want:
			return nil
		case slices.Contains(older, have):
			return txn.Set([]byte{pSuper}, []byte(want))
		}
		return fmt.Errorf("cache %s was made with %q, this mount uses %q: use another --cache-dir or the same --block-size (a cache made by a newer keelfs needs that release: run it and `keelfs flush` before going back)", c.opt.Dir, have, want)
	})
}

func (c *Cache) ensureRoot() error {
	return update(c.db, func(txn *badger.Txn) error {
		if _, err := txn.Get(inodeKey(RootIno)); err == nil {
			return nil
		} else if !errors.Is(err, badger.ErrKeyNotFound) {
			return err
		}
		now := c.now()
		root := &Inode{Ino: RootIno, Gen: 1, Kind: KindDir, Perm: c.opt.DirMode, UID: c.opt.UID, GID: c.opt.GID,
			Mtime: now, Ctime: now, Atime: now}
		return txn.Set(inodeKey(RootIno), root.marshal())
	})
}

func (c *Cache) now() int64 { return c.opt.Now().UnixNano() }

// nextSeq returns a number larger than any returned before, also across
// restarts (it starts from the wall clock, or above the stored mark if
// that is ahead: see seqMark). Listings remember the sequence
// at which they started, so that they never undo a change committed while
// they were in flight.
func (c *Cache) nextSeq() uint64 {
	for {
		old := c.ns.seq.Load()
		n := max(old+1, uint64(c.opt.Now().UnixNano()))
		if c.ns.seq.CompareAndSwap(old, n) {
			return n
		}
	}
}

// seqMark holds a number above every sequence number handed out (see
// nextSeq), so that a start whose wall clock is behind the last run's (an
// NTP step, a restored VM, a cache disk moved to another host) still
// hands out larger ones: generations name blocks, and SyncedSeq, fill
// epochs and listing starts are compared across restarts.
var seqMark = []byte{pSuper, 'q'}

// seqMargin is how far ahead of the sequence the stored mark is kept; the
// group commit moves it on once the sequence is within half of it.
const seqMargin = uint64(time.Hour)

// startSeq starts the sequence above the stored mark, and moves the mark
// ahead of it. It runs at Open, before anything hands out a number;
// recovery's sync makes the mark durable.
func (c *Cache) startSeq() error {
	var mark uint64
	err := c.db.View(func(txn *badger.Txn) error {
		it, err := txn.Get(seqMark)
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		return it.Value(func(v []byte) error {
			if len(v) != 8 {
				return fmt.Errorf("sequence mark of %d bytes", len(v))
			}
			mark = binary.BigEndian.Uint64(v)
			return nil
		})
	})
	if err != nil {
		return fmt.Errorf("read the sequence mark: %w", err)
	}
	c.raiseSeq(mark)
	return c.extendSeqMark()
}

// raiseSeq makes the sequence hand out numbers above n from now on.
func (c *Cache) raiseSeq(n uint64) {
	for {
		old := c.ns.seq.Load()
		if old > n || c.ns.seq.CompareAndSwap(old, n+1) {
			return
		}
	}
}

// extendSeqMark stores a new mark once the sequence is within half of
// seqMargin of the stored one. Only startSeq and then the group commit
// call it, one after the other (seqMarkAt is theirs).
func (c *Cache) extendSeqMark() error {
	cur := c.ns.seq.Load()
	if c.seqMarkAt >= cur+seqMargin/2 {
		return nil
	}
	next := cur + seqMargin
	err := update(c.db, func(txn *badger.Txn) error {
		return txn.Set(seqMark, binary.BigEndian.AppendUint64(nil, next))
	})
	if err != nil {
		return fmt.Errorf("store the sequence mark: %w", err)
	}
	c.seqMarkAt = next
	return nil
}

// newGen hands out a content generation: unique across all inodes and
// restarts, and larger than every one handed out before. A block key names
// its generation, so a block can never be taken for another version's, nor
// for another inode's that reuses a number.
func (c *Cache) newGen() uint64 { return c.nextSeq() }

// inodeState is the in-memory side of an inode that is open, being written,
// uploaded or changed. While it exists, rec is the authoritative record.
// Its upload life is not here: that is the scheduler's job state.
type inodeState struct {
	ino  uint64
	refs int // guarded by namespace.statesMu

	mu  sync.Mutex
	rec *Inode    // nil once the inode is gone
	buf *writeBuf // partial block not yet in the block store

	handles int // open file handles
	writers int // of which opened for writing
	// conflictVer is the content version a conflict last switched the
	// name to (the other writer's version), 0 if none: a handle opened
	// before it neither reads nor writes any more (ErrStale).
	conflictVer uint64
	// dataChanges counts changes of content or size: an upload that ends
	// with it unchanged since its seal leaves nothing of the data pending.
	dataChanges uint64
	// contentSeq counts every change of content, block by block, as it is
	// made (contentChangedLocked): a backing file copied while it moved
	// may hold either version and is not used.
	contentSeq uint64
	// upload is the plan of the attempt in flight, sealed under the
	// locks; nil when none runs. While it is set the inode is neither
	// finalized nor are its blocks collected.
	upload    *uploadPlan
	readAhead readAhead
	stream    *stream // parts sent while the file is written; nil if none
}

// acquire returns the state of ino, loading the record if needed. Every
// acquire is paired with a release.
func (c *Cache) acquire(ino uint64) (*inodeState, error) {
	c.ns.statesMu.Lock()
	st := c.ns.states[ino]
	if st != nil {
		st.refs++
		c.ns.statesMu.Unlock()
		st.mu.Lock()
		gone := st.rec == nil
		st.mu.Unlock()
		if gone {
			c.release(st)
			return nil, ErrNotExist
		}
		return st, nil
	}
	st = &inodeState{ino: ino, refs: 1}
	st.mu.Lock() // nobody else can see st before it is loaded
	c.ns.states[ino] = st
	c.ns.statesMu.Unlock()
	rec, err := c.loadInode(ino)
	st.rec = rec
	st.mu.Unlock()
	if err != nil {
		c.release(st)
		return nil, err
	}
	return st, nil
}

func (c *Cache) release(st *inodeState) {
	c.ns.statesMu.Lock()
	defer c.ns.statesMu.Unlock()
	st.refs--
	if st.refs == 0 {
		delete(c.ns.states, st.ino)
	}
}

// newState registers the state of an inode that is being created. The
// caller holds nsMu and gets st locked.
func (c *Cache) newState(rec *Inode) *inodeState {
	st := &inodeState{ino: rec.Ino, refs: 1, rec: rec}
	st.mu.Lock()
	c.ns.statesMu.Lock()
	c.ns.states[rec.Ino] = st
	c.ns.statesMu.Unlock()
	return st
}

func (c *Cache) loadInode(ino uint64) (*Inode, error) {
	var rec *Inode
	err := c.db.View(func(txn *badger.Txn) error {
		var err error
		rec, err = getInode(txn, ino)
		return err
	})
	return rec, err
}

func getInode(txn *badger.Txn, ino uint64) (*Inode, error) {
	it, err := txn.Get(inodeKey(ino))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, ErrNotExist
	}
	if err != nil {
		return nil, err
	}
	var rec *Inode
	err = it.Value(func(v []byte) error {
		var err error
		rec, err = unmarshalInode(v)
		return err
	})
	return rec, err
}

func getDentry(txn *badger.Txn, parent uint64, name string) (dentry, bool, error) {
	it, err := txn.Get(dentryKey(parent, name))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return dentry{}, false, nil
	}
	if err != nil {
		return dentry{}, false, err
	}
	var d dentry
	err = it.Value(func(v []byte) error {
		d, err = unmarshalDentry(v)
		return err
	})
	return d, err == nil, err
}

// snapshot returns a copy of the current record of ino: the in-memory one
// if the inode is active, else the stored one.
func (c *Cache) snapshot(ino uint64) (*Inode, error) {
	c.ns.statesMu.Lock()
	st := c.ns.states[ino]
	if st != nil {
		st.refs++
	}
	c.ns.statesMu.Unlock()
	if st == nil {
		return c.loadInode(ino)
	}
	defer c.release(st)
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.rec == nil {
		return nil, ErrNotExist
	}
	return st.rec.clone(), nil
}

// claimsOf lists the object keys an inode holds on to beside its own name:
// its object after a rename or unlink (until the copy and delete are done),
// and the target of an upload in flight.
func claimsOf(n *Inode) []string {
	if n == nil || n.Ino == RootIno {
		return nil
	}
	var ks []string
	if n.RemoteKey != "" && (n.Unlinked || n.moved()) {
		ks = append(ks, n.RemoteKey)
	}
	if n.UploadKey != "" && n.UploadKey != n.RemoteKey {
		ks = append(ks, n.UploadKey)
	}
	if n.ConflictKey != "" && !contains(ks, n.ConflictKey) {
		ks = append(ks, n.ConflictKey)
	}
	return ks
}

// putInode stores rec and keeps the journal and claim indexes in step with
// it. old is the record as it was before the change (nil for a new inode).
// A multipart upload that old holds and rec does not is recorded to abort.
func (c *Cache) putInode(txn *badger.Txn, old, rec *Inode) error {
	return c.storeInode(txn, old, rec, rec.marshal(), false)
}

// storeInode is putInode with the record already marshalled. ended says
// that S3 completed or aborted old's multipart upload: no abort record.
func (c *Cache) storeInode(txn *badger.Txn, old, rec *Inode, b []byte, ended bool) error {
	if err := txn.Set(inodeKey(rec.Ino), b); err != nil {
		return err
	}
	if err := keepUpload(txn, old, rec, ended); err != nil {
		return err
	}
	// The journal entry is set with every stored record that needs work,
	// not only when old did not: old is the record as it was in memory,
	// and a write marks it pending there long before it is stored.
	if rec.needsWork() {
		if err := txn.Set(journalKey(rec.Ino), nil); err != nil {
			return err
		}
	} else if old != nil && old.needsWork() {
		if err := txn.Delete(journalKey(rec.Ino)); err != nil {
			return err
		}
	}
	return c.setClaims(txn, rec.Ino, old, claimsOf(old), claimsOf(rec))
}

// setClaims moves ino's claims from old (the claims of its record before,
// prev) to cur. A released claim is noted for the listings under way
// (see releases), with prev's version for the key it came from.
func (c *Cache) setClaims(txn *badger.Txn, ino uint64, prev *Inode, old, cur []string) error {
	for _, k := range old {
		if !contains(cur, k) {
			etag := ""
			if k == prev.RemoteKey {
				etag = prev.ETag
			}
			c.ns.released.note(k, etag)
			if err := txn.Delete(claimKey(k)); err != nil {
				return err
			}
		}
	}
	for _, k := range cur {
		if !contains(old, k) {
			if err := txn.Set(claimKey(k), inoBytes(ino)); err != nil {
				return err
			}
		}
	}
	return nil
}

// deleteInode deletes an inode's record, and records its multipart
// upload to abort unless S3 ended it (ended).
func (c *Cache) deleteInode(txn *badger.Txn, old *Inode, ended bool) error {
	if err := txn.Delete(inodeKey(old.Ino)); err != nil {
		return err
	}
	if err := keepUpload(txn, old, nil, ended); err != nil {
		return err
	}
	if err := txn.Delete(journalKey(old.Ino)); err != nil {
		return err
	}
	return c.setClaims(txn, old.Ino, old, claimsOf(old), nil)
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

func inoBytes(ino uint64) []byte { return inodeKey(ino)[1:] }

// hashIno derives a stable inode number from a path, so that numbers
// survive remounts and even a lost cache. Collisions are resolved by
// probing (see allocIno).
func hashIno(path string, probe int) uint64 {
	h := fnv.New64a()
	h.Write([]byte(path))
	if probe > 0 {
		fmt.Fprintf(h, "#%d", probe)
	}
	v := h.Sum64() &^ (1 << 63) // below go-fuse's automatic numbers
	if v <= RootIno {
		v += 2
	}
	return v
}

// Attr is what stat shows for an inode.
type Attr struct {
	Ino                 uint64
	Gen                 uint64
	Mode                uint32 // type bits and permissions
	Size                int64
	Blocks              int64 // 512-byte units
	Nlink               uint32
	UID, GID            uint32
	Rdev                uint32 // devices
	Mtime, Ctime, Atime time.Time
}

func (c *Cache) attrOf(n *Inode) Attr {
	a := Attr{Ino: n.Ino, Gen: n.Gen, Mode: modeBits(n.Kind) | n.Perm, UID: n.UID, GID: n.GID, Rdev: n.Rdev,
		Mtime: time.Unix(0, n.Mtime), Ctime: time.Unix(0, n.Ctime), Atime: time.Unix(0, n.Atime), Nlink: 1}
	switch n.Kind {
	case KindFile:
		a.Size = n.Size
	case KindSymlink:
		// A symlink listed from S3 learns its target on first readlink;
		// until then the object's size is the target's length.
		a.Size = int64(len(n.Target))
		if n.Target == "" {
			a.Size = n.Size
		}
	case KindDir:
		a.Size = 4096
		a.Nlink = c.dirNlink(n)
	}
	if n.Unlinked {
		a.Nlink = 0
	}
	a.Blocks = (a.Size + 511) / 512
	return a
}

// Stats are counters for metrics and `keelfs status`. All fields are
// updated atomically.
type Stats struct {
	Conflicts     atomic.Int64
	CacheHits     atomic.Int64 // blocks read from the cache
	CacheMisses   atomic.Int64 // blocks fetched from S3
	UploadsDone   atomic.Int64
	UploadErrors  atomic.Int64
	DeletesDone   atomic.Int64
	BytesUploaded atomic.Int64
	PartsStreamed atomic.Int64 // parts sent while their file was being written
	PartsReused   atomic.Int64 // of which an upload of the sealed file used
	// Unrecoverable counts uploads that failed for good because the local
	// version of a partly edited file could not be completed (see
	// errIncomplete).
	Unrecoverable atomic.Int64
	BackingsMade  atomic.Int64 // backing files assembled for passthrough
	// PassthroughOpens counts opens whose reads the kernel takes from a
	// backing file (counted by the fs layer, which answers the open).
	PassthroughOpens atomic.Int64
	// BackingErrors counts writes that could not be copied to the backing
	// file of open passthrough readers (logged at ERROR).
	BackingErrors atomic.Int64
}

// Stats returns the cache's counters.
func (c *Cache) Stats() *Stats { return &c.stats }

// Usage reports the bytes of dirty blocks in the cache (not yet in S3)
// and of the rest of it (see blocks.Store.Usage).
func (c *Cache) Usage() (clean, dirty int64) { return c.blocks.Usage() }
