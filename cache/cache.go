package cache

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	badger "github.com/dgraph-io/badger/v4"

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

	ReadOnly       bool
	BlockSize      int64         // default 1 MiB
	CacheSize      int64         // bytes of blocks on disk; default 10 GiB
	MetadataTTL    time.Duration // default 1s
	WriteBackDelay time.Duration // default 1s; negative means 0
	SyncOnClose    bool
	NoAtime        bool  // reads never move atime (the noatime mount option)
	PartSize       int64 // multipart part size; default 16 MiB, grown for huge files
	MaxUploads     int   // files uploading at once; default 4
	MaxParts       int   // parts in flight per file; default 4
	MaxReadAhead   int64 // bytes; default 64 MiB
	HeadWorkers    int   // HEADs in flight while filling a directory; default 32
	SkipHeaders    bool  // never HEAD for x-amz-meta-* attributes
	Conflict       ConflictMode
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
	// Now replaces time.Now in tests.
	Now func() time.Time
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
	if o.FileMode == 0 {
		o.FileMode = 0o644
	}
	if o.DirMode == 0 {
		o.DirMode = 0o755
	}
}

// Cache is the local state of one mount: metadata and blocks in the cache
// directory, and the write-back machinery that brings S3 up to date.
//
// # Locking
//
// Lock order: Cache.nsMu before inodeState.mu before Cache.statesMu;
// blockStore.mu and uploader.mu are leaves. Only holders of nsMu lock more
// than one inodeState. No lock is held across an S3 request or while
// waiting for cache space.
type Cache struct {
	opt    Options
	store  s3backend.ObjectStore
	db     *badger.DB
	blocks *blockStore
	log    *slog.Logger
	stats  Stats

	// nsMu serialises every change to the namespace: directory entries,
	// claims, tombstones and inode allocation, and the merge of listings.
	nsMu sync.Mutex

	statesMu sync.Mutex
	states   map[uint64]*inodeState // guarded by statesMu

	seq atomic.Uint64 // change sequence, see nextSeq

	fills flight // one directory listing at a time per directory

	namesMu  sync.Mutex
	namesSeq uint64            // guarded by namesMu
	namesVer map[uint64]uint64 // directory ino -> namesSeq of its last change; guarded by namesMu
	nlinks   nlinkCache        // directories' link counts, see dirNlink

	up     *uploader
	bufMem *bufferBudget

	fetchOnce sync.Once
	fetch     *fetcher

	// Background fetches (read-ahead, fills) run under bgCtx and are
	// waited for at Close; see goBackground.
	bgCtx     context.Context
	bgStop    context.CancelFunc
	bgMu      sync.Mutex
	bgClosed  bool // guarded by bgMu
	bg        sync.WaitGroup
	zeroBlock []byte // a block of zeros, shared read-only

	// Parts sent while files are written (see stream) share these slots.
	streamOnce sync.Once
	streamSem  chan struct{}

	badKeys   sync.Map // keys already logged as unusable
	closeOnce sync.Once
	closed    chan struct{}
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
		opt:      opt,
		store:    opt.Store,
		db:       db,
		log:      opt.Logger,
		states:   make(map[uint64]*inodeState),
		namesVer: make(map[uint64]uint64),
		closed:   make(chan struct{}),
	}
	c.bgCtx, c.bgStop = context.WithCancel(context.Background())
	c.seq.Store(uint64(opt.Now().UnixNano()))
	c.zeroBlock = make([]byte, opt.BlockSize)
	c.bufMem = newBufferBudget(max(16<<20, 8*opt.BlockSize))
	c.blocks, err = newBlockStore(filepath.Join(opt.Dir, "blocks"), db, opt.CacheSize, opt.EncryptionKey, opt.Logger)
	if err != nil {
		db.Close()
		return nil, err
	}
	if err := c.checkSuper(); err != nil {
		db.Close()
		return nil, err
	}
	if err := c.ensureRoot(); err != nil {
		db.Close()
		return nil, err
	}
	c.up = newUploader(c)
	c.blocks.onPressure = c.up.pressure
	if err := c.recover(ctx); err != nil {
		db.Close()
		return nil, err
	}
	if err := c.abortOrphanStreams(); err != nil {
		db.Close()
		return nil, fmt.Errorf("cache recovery: %w", err)
	}
	c.up.start()
	go c.maintain()
	return c, nil
}

// Close stops background work and closes the store. Pending uploads stay
// in the journal for the next mount; call Drain first to finish them.
func (c *Cache) Close() error {
	var err error
	c.closeOnce.Do(func() {
		close(c.closed)
		c.bgMu.Lock()
		c.bgClosed = true
		c.bgMu.Unlock()
		c.bgStop()
		c.bg.Wait()
		c.up.stop()
		c.flushAllBuffers()
		c.blocks.closeFiles()
		if serr := c.blocks.sync(); serr != nil {
			err = serr
		}
		if cerr := c.db.Close(); cerr != nil && err == nil {
			err = cerr
		}
	})
	return err
}

// superblock guards against opening a cache written with a different block
// size, which would misread every block.
func (c *Cache) checkSuper() error {
	want := fmt.Sprintf("keelfs-cache v1 block=%d", c.opt.BlockSize)
	return update(c.db, func(txn *badger.Txn) error {
		it, err := txn.Get([]byte{pSuper})
		if errors.Is(err, badger.ErrKeyNotFound) {
			return txn.Set([]byte{pSuper}, []byte(want))
		}
		if err != nil {
			return err
		}
		return it.Value(func(v []byte) error {
			if string(v) != want {
				return fmt.Errorf("cache %s was made with %q, this mount uses %q: use another --cache-dir or the same --block-size", c.opt.Dir, v, want)
			}
			return nil
		})
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
// restarts (it starts from the wall clock). Listings remember the sequence
// at which they started, so that they never undo a change committed while
// they were in flight.
func (c *Cache) nextSeq() uint64 {
	for {
		old := c.seq.Load()
		n := max(old+1, uint64(c.opt.Now().UnixNano()))
		if c.seq.CompareAndSwap(old, n) {
			return n
		}
	}
}

// newGen hands out a content generation: unique across all inodes and
// restarts, and larger than every one handed out before. A block key names
// its generation, so a block can never be taken for another version's, nor
// for another inode's that reuses a number.
func (c *Cache) newGen() uint64 { return c.nextSeq() }

// inodeState is the in-memory side of an inode that is open, being written,
// uploaded or changed. While it exists, rec is the authoritative record.
type inodeState struct {
	ino  uint64
	refs int // guarded by Cache.statesMu

	mu   sync.Mutex
	cond *sync.Cond // on mu: upload progress, for fsync
	rec  *Inode     // nil once the inode is gone
	buf  *writeBuf  // partial block not yet in the block store

	handles     int    // open file handles
	writers     int    // of which opened for writing
	changes     uint64 // every change: data, attributes, name
	dataChanges uint64 // changes of content or size only
	dirtySince  time.Time
	synced      uint64 // changes covered by the last upload that landed
	attempts    uint64 // upload attempts finished
	lastErr     error  // of the last attempt
	lastChange  time.Time
	uploading   bool
	// cacheVer identifies the content the kernel may have cached; it
	// changes when another writer's version replaces ours.
	cacheVer  uint64
	openedVer uint64
	readAhead readAhead
	stream    *stream // parts sent while the file is written; nil if none
}

// acquire returns the state of ino, loading the record if needed. Every
// acquire is paired with a release.
func (c *Cache) acquire(ino uint64) (*inodeState, error) {
	c.statesMu.Lock()
	st := c.states[ino]
	if st != nil {
		st.refs++
		c.statesMu.Unlock()
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
	st.cond = sync.NewCond(&st.mu)
	st.mu.Lock() // nobody else can see st before it is loaded
	c.states[ino] = st
	c.statesMu.Unlock()
	rec, err := c.loadInode(ino)
	st.rec = rec
	if rec != nil && rec.needsWork() {
		// Work left by handles closed before this state was loaded (or by
		// the previous mount) counts as one change not yet synced, so that
		// fsync on a new handle waits for it instead of returning at once.
		st.changes = 1
	}
	st.mu.Unlock()
	if err != nil {
		c.release(st)
		return nil, err
	}
	return st, nil
}

func (c *Cache) release(st *inodeState) {
	c.statesMu.Lock()
	defer c.statesMu.Unlock()
	st.refs--
	if st.refs == 0 {
		delete(c.states, st.ino)
	}
}

// newState registers the state of an inode that is being created. The
// caller holds nsMu and gets st locked.
func (c *Cache) newState(rec *Inode) *inodeState {
	st := &inodeState{ino: rec.Ino, refs: 1, rec: rec}
	st.cond = sync.NewCond(&st.mu)
	st.mu.Lock()
	c.statesMu.Lock()
	c.states[rec.Ino] = st
	c.statesMu.Unlock()
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
	c.statesMu.Lock()
	st := c.states[ino]
	if st != nil {
		st.refs++
	}
	c.statesMu.Unlock()
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
// it. old is the record as stored before (nil for a new inode).
func putInode(txn *badger.Txn, old, rec *Inode) error {
	if err := txn.Set(inodeKey(rec.Ino), rec.marshal()); err != nil {
		return err
	}
	if rec.needsWork() {
		if old == nil || !old.needsWork() {
			if err := txn.Set(journalKey(rec.Ino), nil); err != nil {
				return err
			}
		}
	} else if old != nil && old.needsWork() {
		if err := txn.Delete(journalKey(rec.Ino)); err != nil {
			return err
		}
	}
	return setClaims(txn, rec.Ino, claimsOf(old), claimsOf(rec))
}

func setClaims(txn *badger.Txn, ino uint64, old, cur []string) error {
	for _, k := range old {
		if !contains(cur, k) {
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

func deleteInode(txn *badger.Txn, old *Inode) error {
	if err := txn.Delete(inodeKey(old.Ino)); err != nil {
		return err
	}
	if err := txn.Delete(journalKey(old.Ino)); err != nil {
		return err
	}
	return setClaims(txn, old.Ino, claimsOf(old), nil)
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
		a.Size = int64(len(n.Target))
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
}

// Stats returns the cache's counters.
func (c *Cache) Stats() *Stats { return &c.stats }

// Usage reports the bytes of clean and dirty blocks in the cache.
func (c *Cache) Usage() (clean, dirty int64) { return c.blocks.usage() }
