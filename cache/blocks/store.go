package blocks

import (
	"container/list"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"golang.org/x/sys/unix"
)

// Why block bytes live in files and not in badger: measured on this
// project's machines, badger v4 kept 1 MiB values in its value log, which it
// only reclaims from discard statistics that compactions produce. Block keys
// are tiny, so compactions almost never run: 2 GiB of deleted blocks stayed
// on disk, a second wave doubled it, and the memory-mapped log put 2 GiB in
// the daemon's RSS. A cache must honour --cache-size, so badger keeps the
// index (which blocks exist, their length and CRC) in the same transaction
// as the inode record that refers to them, and each block's bytes are one
// file, written under a temporary name and renamed into place so that a
// crash leaves the old or the new content, never a torn block.

var (
	// ErrCorrupt: a block failed its checksum, or its file is missing or
	// short.
	ErrCorrupt = errors.New("cache data corrupt")
	// ErrNoSpace: no room for a dirty block, in the cache's size or on
	// its disk, and uploads did not make any in time.
	ErrNoSpace = errors.New("cache full of data not yet uploaded")
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// ID names a block: the idx-th block of generation Gen of inode Ino.
type ID struct {
	Ino uint64
	Gen uint64
	Idx int64
}

func (id ID) String() string { return fmt.Sprintf("%d/%d/%d", id.Ino, id.Gen, id.Idx) }

// Meta is the index value of a block: its length and CRC-32C, and what
// Recover may do with it if a power cut kept its bytes from the disk.
type Meta struct {
	Len uint32
	CRC uint32
	// Durable is set on a block that Append added to in place after a
	// sync had made its earlier bytes durable: DurableLen and DurableCRC
	// describe that prefix. A power cut can leave this entry on the disk
	// without the bytes appended after it; Recover then cuts the block
	// back to the prefix rather than lose all of it.
	Durable    bool
	DurableLen uint32
	DurableCRC uint32
	// Fresh is set by the caller on a block whose place held nothing
	// durable when it was written: a hole, past the file's end, or a
	// fresh block not synced yet. If a power cut loses its file, that
	// place is a hole again, and nothing durable is lost with it.
	Fresh bool
	// Prev is set by the caller on a block written whole over one that
	// held what was durable in its place: block (Ino, PrevGen, Idx), whose
	// bytes were PrevLen long with CRC PrevCRC. Its file stays until a
	// sync has made this entry durable: retired if it left the index with
	// this entry's commit, held out of eviction (Hold) if it is a clean
	// block that stays. If a power cut loses this block's bytes before
	// then (Epoch) and that file still holds them, Recover puts them back
	// in this block's place, rather than leave a block that can be
	// neither read nor uploaded.
	Prev    bool
	PrevGen uint64
	PrevLen uint32
	PrevCRC uint32
	// Epoch, with Prev, is the number of the sync that makes this entry
	// and its bytes durable (see BeginWrite). Recover puts the replaced
	// block back only if no sync of that number or later had begun to
	// make itself durable: once one has, these bytes were synced, and a
	// mismatch is the disk's damage, not a power cut's, which must not
	// roll back what fsync acknowledged.
	Epoch uint64
}

// prevID is the block a Prev entry of block id names.
func (m Meta) prevID(id ID) ID { return ID{Ino: id.Ino, Gen: m.PrevGen, Idx: id.Idx} }

const (
	metaDurable = 1 << iota
	metaFresh
	metaPrev
)

// The index entry is 8 bytes (length, CRC), then, if a flag is set, a
// flags byte, the durable prefix (8 bytes) when there is one, and the
// block it replaced and the sync epoch (24 bytes) when there is one.
func (m Meta) marshal() []byte {
	b := make([]byte, 8, 41)
	binary.BigEndian.PutUint32(b, m.Len)
	binary.BigEndian.PutUint32(b[4:], m.CRC)
	var flags byte
	if m.Durable {
		flags |= metaDurable
	}
	if m.Fresh {
		flags |= metaFresh
	}
	if m.Prev {
		flags |= metaPrev
	}
	if flags == 0 {
		return b
	}
	b = append(b, flags)
	if m.Durable {
		b = binary.BigEndian.AppendUint32(b, m.DurableLen)
		b = binary.BigEndian.AppendUint32(b, m.DurableCRC)
	}
	if m.Prev {
		b = binary.BigEndian.AppendUint64(b, m.PrevGen)
		b = binary.BigEndian.AppendUint32(b, m.PrevLen)
		b = binary.BigEndian.AppendUint32(b, m.PrevCRC)
		b = binary.BigEndian.AppendUint64(b, m.Epoch)
	}
	return b
}

func unmarshalMeta(b []byte) (Meta, error) {
	bad := fmt.Errorf("%w: block index entry of %d bytes", ErrCorrupt, len(b))
	if len(b) < 8 {
		return Meta{}, bad
	}
	m := Meta{Len: binary.BigEndian.Uint32(b), CRC: binary.BigEndian.Uint32(b[4:])}
	if len(b) == 8 {
		return m, nil
	}
	flags := b[8]
	m.Durable, m.Fresh, m.Prev = flags&metaDurable != 0, flags&metaFresh != 0, flags&metaPrev != 0
	want := 9
	if m.Durable {
		want += 8
	}
	if m.Prev {
		want += 24
	}
	if len(b) != want || flags&^(metaDurable|metaFresh|metaPrev) != 0 {
		return Meta{}, bad
	}
	rest := b[9:]
	if m.Durable {
		m.DurableLen, m.DurableCRC = binary.BigEndian.Uint32(rest), binary.BigEndian.Uint32(rest[4:])
		rest = rest[8:]
	}
	if m.Prev {
		m.PrevGen, m.PrevLen, m.PrevCRC = binary.BigEndian.Uint64(rest), binary.BigEndian.Uint32(rest[8:]), binary.BigEndian.Uint32(rest[12:])
		m.Epoch = binary.BigEndian.Uint64(rest[16:])
	}
	return m, nil
}

// Options configure a Store.
type Options struct {
	Dir   string     // the store's directory (created if missing)
	DB    *badger.DB // holds the index
	Limit int64      // bytes of blocks (and backing files) on disk at most
	// Key, if set, encrypts block files (AES-GCM with a key derived from
	// it). Backing files are then never made: the kernel would read
	// plaintext from the disk.
	Key []byte
	Log *slog.Logger
	// MinFree is the free space kept on the store's filesystem (for the
	// metadata store, whose memory-mapped files would fault if the disk
	// filled under them). Statfs reports that free space; nil asks the
	// kernel.
	MinFree int64
	Statfs  func() (free int64, err error)
	// SetLease is fcntl(fd, F_SETLEASE, arg) for MappedElsewhere's probes;
	// nil asks the kernel. Tests make it fail as a kernel without leases
	// (fs.leases-enable=0) does, which no test can set for itself alone.
	SetLease func(fd uintptr, arg int) error
	// Background starts a tracked goroutine and reports whether it did
	// (false once the cache is closing); nil starts a plain one.
	Background func(func()) bool
	// OnPressure is called (without locks) when a writer waits for dirty
	// data to be uploaded; Hopeless, if set, says that waiting is
	// pointless (S3 does not answer, so no upload will make room).
	OnPressure func()
	Hopeless   func() bool
}

// Store holds block bytes in files under a directory, indexes them in
// badger, and accounts for them.
//
// mu is a leaf lock (see the package doc).
type Store struct {
	dir   string
	db    *badger.DB
	limit int64
	log   *slog.Logger
	// aead encrypts block files when the cache has an encryption key;
	// nil otherwise. A file is then nonce | ciphertext | tag, and the
	// block's id is the additional data, so a file moved to another
	// block's name fails to open rather than serving the wrong bytes.
	aead     cipher.AEAD
	overhead int // bytes a block file holds beyond the data

	minFree    int64
	statfs     func() (int64, error)
	setLease   func(fd uintptr, arg int) error
	background func(func()) bool
	onPressure func()
	hopeless   func() bool

	syncer groupSync

	mu         sync.Mutex
	spaceFreed *sync.Cond
	lru        *list.List // of ID, front = most recently used; clean blocks only
	lruIndex   map[ID]*list.Element
	size       map[ID]sized // every block, clean or dirty
	// inoBlocks lists, for each inode, the blocks that size holds, so
	// that DropInode finds an inode's blocks without scanning the index:
	// such a scan also walks every deleted key still in badger's
	// memtable, one per close of a file appended to line by line, so
	// that each close of a log took longer than the one before. A
	// block's place in its list is in size, so that removing any block
	// (eviction takes the oldest) costs one step.
	inoBlocks  map[uint64][]blockRef
	cleanBytes int64
	dirtyBytes int64
	// reserved is what Reserve granted clean blocks being stored
	// (StoreClean) that are not added yet: counted as used, so that
	// fetches that store at once do not each find the same room and
	// leave the cache over its limit with nothing evicted.
	reserved int64
	// verified holds blocks whose whole file passed its checksum since
	// the store opened, by the meta it matched. A small read of such a
	// block reads just its range: a 4 KiB random read must not cost a
	// 1 MiB read and checksum. Rewriting or dropping a block forgets it.
	verified map[ID]Meta
	// unsynced holds dirty blocks written since the last sync: sync
	// fsyncs just those files and their directories. (syncfs flushed the
	// whole filesystem, with every other program's writes on it.)
	unsynced map[ID]struct{}
	// syncing holds the blocks the sync under way took from unsynced:
	// they are durable once it succeeds, not before.
	syncing map[ID]struct{}
	// unsyncedBytes counts what unsynced holds. Past syncAhead, a sync
	// starts in the background (aheadRunning), so that the disk writes a
	// big file back while it is written and its close waits for the tail
	// only, not for a whole gigabyte at once.
	unsyncedBytes int64
	aheadRunning  bool
	ahead         sync.WaitGroup
	// aheadErr is a background sync's failure. Linux reports a write-back
	// error to one fsync only, so the next sync would succeed although
	// written data never reached the disk: it reports this instead.
	aheadErr error
	closing  bool
	// onSynced, if set (SetOnSynced, for tests), runs after each sync
	// that succeeded: a test takes then what a power cut would leave.
	onSynced func()
	// newSubdir is set when a subdirectory of dir was created since the
	// last sync, which must then fsync dir as well.
	newSubdir bool
	// retired holds blocks a committed transaction took out of the index
	// (Replaced, DropInode) whose files must stay until a sync has made
	// that transaction durable: a power cut before then leaves the old
	// record, which still refers to them. No block is written under a
	// retired ID (Taken). Their bytes on disk (retiredBytes) count
	// against the limit, as dirty ones, until the files are gone; a
	// writer short of room syncs at once to free them (reserveBytes).
	retired      map[ID]int64
	retiredBytes int64
	// cleaned holds blocks made clean (MarkClean: their upload landed)
	// since the last sync. They stay out of eviction until a sync has
	// made the commit that called them clean durable: a power cut before
	// then leaves the record from before the upload, for which they are
	// dirty data that S3 does not have as far as the record knows, and
	// the next start uploads them again. They count in cleanBytes, and
	// in cleanedBytes; a writer short of room syncs at once to free them,
	// as for retired blocks.
	cleaned      map[ID]uint64 // the number of syncs begun when held
	cleanedBytes int64
	// syncGate orders writes of blocks against the start of a sync: a
	// writer holds it shared from BeginWrite to its block's Added, and a
	// sync takes it to start, so that every block is in the first sync to
	// start after its Epoch was read, and what the writer read of other
	// blocks' sync state stays true until it has committed. epochs is
	// how many syncs have begun, counting earlier runs (kept in badger
	// under epochKey, written by each sync before it syncs the log).
	syncGate sync.RWMutex
	epochs   uint64
	// durableEpoch is epochs as the last run left it on the disk (read at
	// Open): no sync numbered above it made anything durable.
	durableEpoch uint64
	// files keeps descriptors of verified block files that small reads
	// used lately (fileLRU, front = newest), so that a 4 KiB read costs a
	// pread, not an open, a pread and a close.
	files    map[ID]*openBlock
	fileLRU  *list.List
	maxFiles int // bound on len(files), see openBlocksFor
	stats    Stats

	// pins are clean blocks kept out of eviction, present or still to be
	// fetched: the unchanged blocks of partly edited files (see the cache's
	// fetchAhead). pinnedIn holds the present ones, which are not in the
	// LRU and count in pinnedBytes (and in cleanBytes).
	pins        map[ID]bool
	pinsByIno   map[uint64][]ID
	pinnedIn    map[ID]struct{}
	pinnedBytes int64

	backings backingSet
	// backingCount is how many backing files exist, so that the write
	// path skips the lock when there is none.
	backingCount atomic.Int64
}

// Stats are counters of the store's work, for metrics and tests.
type Stats struct {
	Evictions   int64 // clean blocks evicted to make room
	FilesSynced int64 // files and directories fsynced
}

// Open opens the block store in o.Dir. The index is not read: Recover
// does that.
func Open(o Options) (*Store, error) {
	for _, d := range []string{o.Dir, filepath.Join(o.Dir, "tmp")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	s := &Store{dir: o.Dir, db: o.DB, limit: o.Limit, log: o.Log, lru: list.New(),
		lruIndex: make(map[ID]*list.Element), size: make(map[ID]sized), inoBlocks: make(map[uint64][]blockRef),
		verified: make(map[ID]Meta), unsynced: make(map[ID]struct{}), syncing: make(map[ID]struct{}), retired: make(map[ID]int64), cleaned: make(map[ID]uint64),
		files: make(map[ID]*openBlock), fileLRU: list.New(), maxFiles: 128,
		pins: make(map[ID]bool), pinsByIno: make(map[uint64][]ID), pinnedIn: make(map[ID]struct{}),
		minFree: o.MinFree, statfs: o.Statfs, setLease: o.SetLease, background: o.Background,
		onPressure: o.OnPressure, hopeless: o.Hopeless}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.setLease == nil {
		s.setLease = func(fd uintptr, arg int) error {
			_, err := unix.FcntlInt(fd, unix.F_SETLEASE, arg)
			return err
		}
	}
	if s.statfs == nil {
		s.statfs = func() (int64, error) {
			var st unix.Statfs_t
			if err := unix.Statfs(o.Dir, &st); err != nil {
				return 0, err
			}
			return int64(st.Bavail) * st.Bsize, nil
		}
	}
	var rl unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &rl) == nil {
		s.maxFiles = openBlocksFor(rl.Cur)
	}
	s.spaceFreed = sync.NewCond(&s.mu)
	if len(o.Key) > 0 {
		// A key of its own for the blocks, derived from the cache key, so
		// the two stores never share a key.
		k := sha256.Sum256(append([]byte("keelfs block files\x00"), o.Key...))
		block, err := aes.NewCipher(k[:])
		if err != nil {
			return nil, err
		}
		if s.aead, err = cipher.NewGCM(block); err != nil {
			return nil, err
		}
		s.overhead = s.aead.NonceSize() + s.aead.Overhead()
	}
	if err := s.openBackings(); err != nil {
		return nil, err
	}
	if err := s.db.View(func(txn *badger.Txn) error {
		it, err := txn.Get(epochKey)
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		return it.Value(func(v []byte) error {
			if len(v) != 8 {
				return fmt.Errorf("%w: sync epoch of %d bytes", ErrCorrupt, len(v))
			}
			s.epochs = binary.BigEndian.Uint64(v)
			return nil
		})
	}); err != nil {
		return nil, fmt.Errorf("cache: read the sync epoch: %w", err)
	}
	s.durableEpoch = s.epochs
	return s, nil
}

// epochKey holds the number of syncs begun (Store.epochs). It sorts among
// the block index's keys, which have 25 bytes: parseKey skips it.
var epochKey = []byte{KeyPrefix, 'e'}

// BeginWrite is called before a block is written whole in the place of
// another (see Meta.Prev), and done once the block's entry is committed
// and Added (or given up). It returns the Epoch of that block: no sync
// starts in between.
func (s *Store) BeginWrite() (epoch uint64, done func()) {
	s.syncGate.RLock()
	s.mu.Lock()
	epoch = s.epochs + 1
	s.mu.Unlock()
	return epoch, s.syncGate.RUnlock
}

// diskSize is what a block of n bytes costs on disk, for the size budget.
func (s *Store) diskSize(n uint32) int64 {
	return (int64(n) + int64(s.overhead) + 4095) &^ 4095
}

// Added accounts for a block that now exists (its file written and its
// index entry committed). Dirty blocks are never evicted.
func (s *Store) Added(id ID, n uint32, dirty bool) { s.added(id, n, dirty, false) }

// added is Added; synced says the block is durable already (Recover after
// a clean close), so no sync needs to write it.
func (s *Store) added(id ID, n uint32, dirty, synced bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.addedLocked(id, n, dirty, synced)
}

// addedLocked is added with s.mu held.
func (s *Store) addedLocked(id ID, n uint32, dirty, synced bool) {
	s.forgetLocked(id)
	sz := s.diskSize(n)
	s.size[id] = sized{bytes: sz, pos: len(s.inoBlocks[id.Ino])}
	s.inoBlocks[id.Ino] = append(s.inoBlocks[id.Ino], blockRef{id.Gen, id.Idx})
	if dirty && synced {
		s.dirtyBytes += sz
	} else if dirty {
		s.unsynced[id] = struct{}{}
		s.dirtyBytes += sz
		s.unsyncedBytes += sz
		if s.unsyncedBytes >= syncAhead {
			s.syncAheadLocked()
		}
	} else {
		s.addCleanLocked(id, sz)
	}
}

// addCleanLocked accounts for a present clean block: evictable, or pinned.
func (s *Store) addCleanLocked(id ID, sz int64) {
	s.cleanBytes += sz
	if s.pins[id] {
		s.pinnedIn[id] = struct{}{}
		s.pinnedBytes += sz
		return
	}
	s.lruIndex[id] = s.lru.PushFront(id)
}

// Taken reports whether a block may not be written as id: it is in the
// store, or retired and still needed by what is durable.
func (s *Store) Taken(id ID) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, known := s.size[id]
	_, retired := s.retired[id]
	return known || retired
}

// Has reports whether block id is in the store (clean or dirty).
func (s *Store) Has(id ID) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.size[id]
	return ok
}

// Pin keeps the clean blocks ids of ino out of eviction, those present
// and those fetched later (missing bytes of them), until Unpin. It
// refuses (false) when pinned blocks would take more than a quarter of
// the cache, which must stay usable for everything else.
func (s *Store) Pin(ino uint64, ids []ID, missing int64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.pinsByIno[ino]; ok {
		return true
	}
	var present int64
	for _, id := range ids {
		_, inLRU := s.lruIndex[id]
		_, held := s.cleaned[id]
		if inLRU || held {
			present += s.size[id].bytes
		}
	}
	if s.pinnedBytes+present+missing > s.limit/4 {
		return false
	}
	for _, id := range ids {
		s.pins[id] = true
		sz := s.size[id].bytes
		if e, ok := s.lruIndex[id]; ok {
			s.lru.Remove(e)
			delete(s.lruIndex, id)
		} else if _, held := s.cleaned[id]; held {
			// Pinned is kept too, and counted now, against the budget.
			delete(s.cleaned, id)
			s.cleanedBytes -= sz
		} else {
			continue
		}
		s.pinnedIn[id] = struct{}{}
		s.pinnedBytes += sz
	}
	s.pinsByIno[ino] = ids
	return true
}

// Unpin makes ino's pinned blocks evictable again, after the next sync:
// an upload that landed unpins them, and until a sync makes that durable,
// a power cut brings back the record that needs them (see cleaned).
func (s *Store) Unpin(ino uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range s.pinsByIno[ino] {
		delete(s.pins, id)
		if _, ok := s.pinnedIn[id]; ok {
			delete(s.pinnedIn, id)
			sz := s.size[id].bytes
			s.pinnedBytes -= sz
			s.cleaned[id] = s.epochs
			s.cleanedBytes += sz
		}
	}
	delete(s.pinsByIno, ino)
	s.spaceFreed.Broadcast()
}

// HoldInode keeps ino's clean blocks out of eviction until the next sync
// (see cleaned): an upload of ino is about to land, after which S3 no
// longer has the version they were fetched from, while a power cut before
// the next sync brings back the record that reads them.
func (s *Store) HoldInode(ino uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range s.inoBlocks[ino] {
		s.holdLocked(ID{Ino: ino, Gen: r.gen, Idx: r.idx})
	}
}

// Hold keeps clean block id out of eviction until the next sync, if it
// is cached: a block written whole in its place names it (Meta.Prev).
func (s *Store) Hold(id ID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.holdLocked(id)
}

// holdLocked holds id until a sync that begins after now, if it is an
// evictable or held clean block.
func (s *Store) holdLocked(id ID) {
	if e, ok := s.lruIndex[id]; ok {
		s.lru.Remove(e)
		delete(s.lruIndex, id)
		s.cleanedBytes += s.size[id].bytes
	} else if _, held := s.cleaned[id]; !held {
		return
	}
	s.cleaned[id] = s.epochs
}

// Trust records that block id's file holds exactly what meta describes,
// because this process just wrote it from memory: reads may take ranges of
// it without reading and checksumming the whole file first. (Blocks found
// on disk at start-up are checked whole once, by Read.)
func (s *Store) Trust(id ID, meta Meta) {
	if s.aead != nil {
		return // ranges of a sealed block cannot be read on their own
	}
	s.mu.Lock()
	if _, known := s.size[id]; known && len(s.verified) < maxVerified {
		s.verified[id] = meta
	}
	s.mu.Unlock()
}

// MarkClean moves a block from the dirty to the clean (evictable) set.
func (s *Store) MarkClean(id ID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.size[id]
	if !ok {
		return
	}
	sz := e.bytes
	if _, clean := s.lruIndex[id]; clean {
		return
	}
	if _, pinned := s.pinnedIn[id]; pinned {
		return
	}
	if _, held := s.cleaned[id]; held {
		s.cleaned[id] = s.epochs
		return
	}
	s.dirtyBytes -= sz
	s.cleanBytes += sz
	s.cleaned[id] = s.epochs
	s.cleanedBytes += sz
}

// releaseCleaned makes the blocks of cleaned held before sync number n
// began evictable (or pinned, if pinned since): n made durable what they
// were held for.
func (s *Store) releaseCleaned(n uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, since := range s.cleaned {
		if since >= n {
			continue // held again, or first, since n began
		}
		delete(s.cleaned, id)
		sz := s.size[id].bytes
		s.cleanedBytes -= sz
		if s.pins[id] {
			s.pinnedIn[id] = struct{}{}
			s.pinnedBytes += sz
		} else {
			s.lruIndex[id] = s.lru.PushFront(id)
		}
	}
	s.spaceFreed.Broadcast()
}

// removed forgets a block that was deleted.
func (s *Store) removed(id ID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.forgetLocked(id)
	s.spaceFreed.Broadcast()
}

// retireLocked forgets block id, whose file must stay until the next
// sync (see retired).
func (s *Store) retireLocked(id ID) {
	sz := s.size[id].bytes
	s.forgetLocked(id)
	s.retiredBytes += sz - s.retired[id]
	s.retired[id] = sz
}

func (s *Store) forgetLocked(id ID) {
	e, ok := s.size[id]
	if !ok {
		return
	}
	sz := e.bytes
	delete(s.size, id)
	s.unlistLocked(id, e.pos)
	delete(s.verified, id)
	s.dropFileLocked(id)
	if e, clean := s.lruIndex[id]; clean {
		s.lru.Remove(e)
		delete(s.lruIndex, id)
		s.cleanBytes -= sz
	} else if _, pinned := s.pinnedIn[id]; pinned {
		delete(s.pinnedIn, id)
		s.pinnedBytes -= sz
		s.cleanBytes -= sz
	} else if _, held := s.cleaned[id]; held {
		delete(s.cleaned, id)
		s.cleanedBytes -= sz
		s.cleanBytes -= sz
	} else {
		s.dirtyBytes -= sz
	}
}

// sized is what the store keeps of a block: its size on disk and its
// place in inoBlocks[id.Ino].
type sized struct {
	bytes int64
	pos   int
}

// blockRef is a block of a known inode, in Store.inoBlocks.
type blockRef struct {
	gen uint64
	idx int64
}

// unlistLocked removes id, at pos, from inoBlocks: the last block of the
// inode's list takes its place.
func (s *Store) unlistLocked(id ID, pos int) {
	refs := s.inoBlocks[id.Ino]
	last := len(refs) - 1
	if pos < last {
		moved := refs[last]
		refs[pos] = moved
		mid := ID{Ino: id.Ino, Gen: moved.gen, Idx: moved.idx}
		e := s.size[mid]
		e.pos = pos
		s.size[mid] = e
	}
	refs = refs[:last]
	if len(refs) == 0 {
		delete(s.inoBlocks, id.Ino)
	} else {
		s.inoBlocks[id.Ino] = refs
	}
}

func (s *Store) touch(id ID) {
	s.mu.Lock()
	if e, ok := s.lruIndex[id]; ok {
		s.lru.MoveToFront(e)
	}
	s.mu.Unlock()
}

// Usage returns the bytes on disk of dirty blocks (not yet in S3) and of
// everything else: clean blocks, the backing files, and the files of
// dropped blocks that wait for a sync (see retired).
func (s *Store) Usage() (clean, dirty int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cleanBytes + s.backingBytes() + s.retiredBytes, s.dirtyBytes
}

// Stats returns the store's counters.
func (s *Store) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// Reserve makes room for a new block of n bytes. Clean blocks are evicted
// first; if dirty data alone leaves no room, it waits for uploads (calling
// OnPressure so they start now) until ctx ends or wait passes, then fails
// with ErrNoSpace. dirty says whether the block to come is dirty: a clean
// block that does not fit is simply not cached (ok false, no error).
// Room means room in the accounting (the cache size) and on the disk:
// the filesystem keeps MinFree bytes free for the metadata store, whose
// memory-mapped files would fault (SIGBUS) if the disk filled under them.
func (s *Store) Reserve(ctx context.Context, n uint32, dirty bool, wait time.Duration) (ok bool, err error) {
	return s.reserveBytes(ctx, s.diskSize(n), dirty, wait, false)
}

// reserveBytes is Reserve; hold keeps the room granted counted (reserved)
// until the caller gives it back, after it added the block or failed to.
func (s *Store) reserveBytes(ctx context.Context, need int64, dirty bool, wait time.Duration, hold bool) (ok bool, err error) {
	deadline := time.Now().Add(wait)
	synced := false
	for {
		s.dropVictims(s.evictFor(need))
		short, err := s.diskShort(need)
		if err != nil {
			return false, err
		}
		if short > 0 {
			// The disk is fuller than the accounting knows (a disk smaller
			// than --cache-size, or other files on it): evict for it.
			if victims := s.evictBytes(short); !victims.empty() {
				s.dropVictims(victims)
				continue
			}
		}
		s.mu.Lock()
		used := s.cleanBytes + s.dirtyBytes + s.retiredBytes + s.backingBytes() + s.reserved
		fits := used+need <= s.limit && short <= 0
		// What a dirty block cannot evict, and room that clean stores hold
		// (reserved): that room comes back as soon as they end.
		dirtyNeed := s.dirtyBytes + s.retiredBytes + s.cleanedBytes + s.pinnedBytes + s.backingPinnedBytes() + need
		dirtyFits := dirtyNeed+s.reserved <= s.limit && short <= 0
		heldOnly := !dirtyFits && dirtyNeed <= s.limit && short <= 0
		waiting := s.retiredBytes + s.cleanedBytes
		if fits && hold {
			s.reserved += need
		}
		s.mu.Unlock()
		if fits {
			return true, nil
		}
		if waiting > 0 && !synced {
			// Files of dropped blocks, and blocks an upload made clean,
			// wait for a sync to go: sync now rather than wait for the
			// group commit. A failure is kept for the next Sync to
			// report, as a group commit's is. A reader does not wait
			// for the disk: its block is not cached this time, and the
			// sync makes room for the next.
			synced = true
			if !dirty {
				s.mu.Lock()
				s.syncAheadLocked()
				s.mu.Unlock()
				return false, nil
			}
			s.Commit()
			continue
		}
		if !dirty {
			return false, nil
		}
		if dirtyFits {
			continue // eviction raced with another reader; try again
		}
		// Uploads that cannot run (hopeless) free nothing; clean stores
		// that end do, so room they hold is waited for all the same.
		if time.Now().After(deadline) || (!heldOnly && s.hopeless != nil && s.hopeless()) {
			return false, ErrNoSpace
		}
		if s.onPressure != nil {
			s.onPressure()
		}
		if err := s.waitFreed(ctx, time.Until(deadline)); err != nil {
			return false, err
		}
		synced = false // uploads that landed meanwhile wait for a sync too
	}
}

// diskShort returns how many bytes must be freed on the store's filesystem
// before need more can be written and MinFree stay free (0 or less: none).
func (s *Store) diskShort(need int64) (int64, error) {
	if s.minFree <= 0 {
		return 0, nil
	}
	free, err := s.statfs()
	if err != nil {
		return 0, fmt.Errorf("cache disk: %w", err)
	}
	return need + s.minFree - free, nil
}

// freedPoll is the longest a writer waiting for room sleeps before it
// looks again, in case nothing woke it (a variable for tests).
var freedPoll = time.Second

func (s *Store) waitFreed(ctx context.Context, d time.Duration) error {
	if d > freedPoll {
		d = freedPoll
	}
	done := make(chan struct{})
	t := time.AfterFunc(d, func() {
		s.mu.Lock()
		s.spaceFreed.Broadcast()
		s.mu.Unlock()
	})
	defer t.Stop()
	go func() {
		select {
		case <-ctx.Done():
			s.mu.Lock()
			s.spaceFreed.Broadcast()
			s.mu.Unlock()
		case <-done:
		}
	}()
	s.mu.Lock()
	s.spaceFreed.Wait()
	s.mu.Unlock()
	close(done)
	return ctx.Err()
}

// victims are what an eviction took out of the accounting: block files
// and their index entries, and unused backing files, to delete.
type victims struct {
	blocks   []ID
	backings []*Backing
}

func (v victims) empty() bool { return len(v.blocks) == 0 && len(v.backings) == 0 }

// evictFor picks unused backing files, then least recently used clean
// blocks, until need more bytes fit under the limit, and takes them out
// of the accounting.
func (s *Store) evictFor(need int64) victims {
	var v victims
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.cleanBytes+s.dirtyBytes+s.retiredBytes+s.backings.bytes+s.reserved+need > s.limit {
		if b := s.backings.oldestUnusedLocked(); b != nil {
			s.backings.forgetLocked(b)
			v.backings = append(v.backings, b)
			continue
		}
		e := s.lru.Back()
		if e == nil {
			break
		}
		id := e.Value.(ID)
		v.blocks = append(v.blocks, id)
		s.forgetLocked(id)
		s.stats.Evictions++
	}
	return v
}

// evictBytes picks unused backing files, then least recently used clean
// blocks, worth at least n bytes (fewer if there are not that many), and
// takes them out of the accounting.
func (s *Store) evictBytes(n int64) victims {
	var v victims
	s.mu.Lock()
	defer s.mu.Unlock()
	for freed := int64(0); freed < n; {
		if b := s.backings.oldestUnusedLocked(); b != nil {
			freed += b.bytes
			s.backings.forgetLocked(b)
			v.backings = append(v.backings, b)
			continue
		}
		e := s.lru.Back()
		if e == nil {
			break
		}
		id := e.Value.(ID)
		freed += s.size[id].bytes
		v.blocks = append(v.blocks, id)
		s.forgetLocked(id)
		s.stats.Evictions++
	}
	return v
}

// dropVictims deletes what an eviction picked. A failure to delete an
// index entry leaves it to the next start-up, which drops entries whose
// file is missing; it is logged.
func (s *Store) dropVictims(v victims) {
	for _, b := range v.backings {
		s.removeBacking(b)
	}
	if len(v.blocks) == 0 {
		return
	}
	if err := s.deleteIndex(v.blocks); err != nil {
		s.log.Warn("cache: evict blocks from index", "err", err)
	}
	for _, id := range v.blocks {
		s.removeFile(id)
	}
	s.mu.Lock()
	s.spaceFreed.Broadcast()
	s.mu.Unlock()
}
