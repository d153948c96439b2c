package cache

import (
	"cmp"
	"container/list"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
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

var crcTable = crc32.MakeTable(crc32.Castagnoli)

type blockID struct {
	ino uint64
	gen uint64
	idx int64
}

// blockMeta is the index value of a block.
type blockMeta struct {
	Len uint32
	CRC uint32
}

func (m blockMeta) marshal() []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint32(b, m.Len)
	binary.BigEndian.PutUint32(b[4:], m.CRC)
	return b
}

func unmarshalBlockMeta(b []byte) (blockMeta, error) {
	if len(b) != 8 {
		return blockMeta{}, errCorruptRecord
	}
	return blockMeta{Len: binary.BigEndian.Uint32(b), CRC: binary.BigEndian.Uint32(b[4:])}, nil
}

// diskSize is what a block of n bytes costs on disk, for the size budget.
func (bs *blockStore) diskSize(n uint32) int64 {
	return (int64(n) + int64(bs.overhead) + 4095) &^ 4095
}

// blockStore holds block bytes in files under dir and accounts for them.
//
// Lock order: blockStore.mu is a leaf; never call out while holding it.
type blockStore struct {
	dir   string
	limit int64
	log   logger
	// aead encrypts block files when the cache has an encryption key;
	// nil otherwise. A file is then nonce | ciphertext | tag, and the
	// block's id is the additional data, so a file moved to another
	// block's name fails to open rather than serving the wrong bytes.
	aead     cipher.AEAD
	overhead int // bytes a block file holds beyond the data

	syncer groupSync

	mu         sync.Mutex
	spaceFreed *sync.Cond
	lru        *list.List // of blockID, front = most recently used; clean blocks only
	lruIndex   map[blockID]*list.Element
	size       map[blockID]int64 // disk size of every block, clean or dirty
	cleanBytes int64
	dirtyBytes int64
	// verified holds blocks whose whole file passed its checksum since
	// the cache opened, by the meta it matched. A small read of such a
	// block reads just its range: a 4 KiB random read must not cost a
	// 1 MiB read and checksum. Rewriting or dropping a block forgets it.
	verified map[blockID]blockMeta
	// unsynced holds dirty blocks written since the last sync: sync
	// fsyncs just those files and their directories. (syncfs flushed the
	// whole filesystem, with every other program's writes on it.)
	unsynced map[blockID]struct{}
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
	// newSubdir is set when a subdirectory of dir was created since the
	// last sync, which must then fsync dir as well.
	newSubdir bool
	// files keeps descriptors of verified block files that small reads
	// used lately (fileLRU, front = newest), so that a 4 KiB read costs a
	// pread, not an open, a pread and a close.
	files     map[blockID]*openBlock
	fileLRU   *list.List
	maxFiles  int // bound on len(files), see openBlocksFor
	db        *badger.DB
	evictions int64
	// onPressure is called (without locks) when writers wait for dirty
	// data to be uploaded; hopeless, if set, says that waiting is
	// pointless (S3 does not answer, so no upload will make room).
	onPressure func()
	hopeless   func() bool
	// goBackground starts a tracked goroutine (Cache.tasks); nil starts a
	// plain one (tests of the block store alone).
	goBackground func(func()) bool

	// pins are clean blocks kept out of eviction, present or still to be
	// fetched: the unchanged blocks of partly edited files (see
	// Cache.fetchAhead). pinnedIn holds the present ones, which are not in
	// the LRU and count in pinnedBytes (and in cleanBytes).
	pins        map[blockID]bool
	pinsByIno   map[uint64][]blockID
	pinnedIn    map[blockID]struct{}
	pinnedBytes int64

	// minFree is the free space kept on the cache's filesystem for the
	// metadata store (Options.MinFreeDisk); statfs reports the free space.
	minFree int64
	statfs  func() (free int64, err error)
}

func newBlockStore(dir string, db *badger.DB, limit int64, key []byte, log logger) (*blockStore, error) {
	for _, d := range []string{dir, filepath.Join(dir, "tmp")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	bs := &blockStore{dir: dir, db: db, limit: limit, log: log, lru: list.New(),
		lruIndex: make(map[blockID]*list.Element), size: make(map[blockID]int64),
		verified: make(map[blockID]blockMeta), unsynced: make(map[blockID]struct{}),
		files: make(map[blockID]*openBlock), fileLRU: list.New(), maxFiles: 128,
		pins: make(map[blockID]bool), pinsByIno: make(map[uint64][]blockID), pinnedIn: make(map[blockID]struct{})}
	bs.statfs = func() (int64, error) {
		var st unix.Statfs_t
		if err := unix.Statfs(dir, &st); err != nil {
			return 0, err
		}
		return int64(st.Bavail) * st.Bsize, nil
	}
	var rl unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &rl) == nil {
		bs.maxFiles = openBlocksFor(rl.Cur)
	}
	bs.spaceFreed = sync.NewCond(&bs.mu)
	if len(key) > 0 {
		// A key of its own for the blocks, derived from the cache key, so
		// the two stores never share a key.
		k := sha256.Sum256(append([]byte("keelfs block files\x00"), key...))
		block, err := aes.NewCipher(k[:])
		if err != nil {
			return nil, err
		}
		if bs.aead, err = cipher.NewGCM(block); err != nil {
			return nil, err
		}
		bs.overhead = bs.aead.NonceSize() + bs.aead.Overhead()
	}
	return bs, nil
}

// additionalData binds an encrypted block file to its identity.
func (id blockID) additionalData() []byte {
	b := make([]byte, 24)
	binary.BigEndian.PutUint64(b, id.ino)
	binary.BigEndian.PutUint64(b[8:], id.gen)
	binary.BigEndian.PutUint64(b[16:], uint64(id.idx))
	return b
}

func (bs *blockStore) path(id blockID) string {
	return filepath.Join(bs.dir, fmt.Sprintf("%02x", byte(id.ino^id.ino>>8)),
		fmt.Sprintf("%016x-%016x-%x", id.ino, id.gen, id.idx))
}

func parseBlockFile(name string) (blockID, bool) {
	parts := strings.Split(name, "-")
	if len(parts) != 3 {
		return blockID{}, false
	}
	ino, e1 := strconv.ParseUint(parts[0], 16, 64)
	gen, e2 := strconv.ParseUint(parts[1], 16, 64)
	idx, e3 := strconv.ParseInt(parts[2], 16, 64)
	if e1 != nil || e2 != nil || e3 != nil {
		return blockID{}, false
	}
	return blockID{ino, gen, idx}, true
}

// write stores data as block id, replacing any previous content
// atomically. The caller records the returned meta in the index in the
// same transaction as the record that refers to the block.
func (bs *blockStore) write(id blockID, data []byte) (blockMeta, error) {
	meta, err := bs.writeOnce(id, data)
	for try := 0; errors.Is(err, ErrNoSpace) && try < 3; try++ {
		// The disk is full before the cache reached its size: a disk
		// smaller than --cache-size, or other files on it. The accounting
		// would never evict for that, so the disk would stay full of clean
		// blocks after every upload finished. Evict some now, whatever the
		// accounting says, and try again.
		victims := bs.evictBytes(max(8*bs.diskSize(uint32(len(data))), 8<<20))
		if len(victims) == 0 {
			break
		}
		bs.dropVictims(victims)
		meta, err = bs.writeOnce(id, data)
	}
	return meta, err
}

// evictBytes picks least recently used clean blocks worth at least n
// bytes (fewer if there are not that many), and takes them out of the
// accounting.
func (bs *blockStore) evictBytes(n int64) []blockID {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	var victims []blockID
	for freed := int64(0); freed < n; {
		e := bs.lru.Back()
		if e == nil {
			break
		}
		id := e.Value.(blockID)
		freed += bs.size[id]
		victims = append(victims, id)
		bs.forgetLocked(id)
		bs.evictions++
	}
	return victims
}

func (bs *blockStore) writeOnce(id blockID, data []byte) (blockMeta, error) {
	var rnd [8]byte
	rand.Read(rnd[:])
	tmp := filepath.Join(bs.dir, "tmp", hex.EncodeToString(rnd[:]))
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return blockMeta{}, fmt.Errorf("cache block: %w", err)
	}
	out := data
	if bs.aead != nil {
		nonce := make([]byte, bs.aead.NonceSize(), bs.overhead+len(data))
		rand.Read(nonce)
		out = bs.aead.Seal(nonce, nonce, data, id.additionalData())
	}
	_, err = f.Write(out)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		dst := bs.path(id)
		if err = os.Rename(tmp, dst); errors.Is(err, fs.ErrNotExist) {
			if err = os.MkdirAll(filepath.Dir(dst), 0o700); err == nil {
				bs.mu.Lock()
				bs.newSubdir = true // its entry in dir must be made durable too
				bs.mu.Unlock()
				err = os.Rename(tmp, dst)
			}
		}
	}
	if err != nil {
		os.Remove(tmp)
		if errors.Is(err, unix.ENOSPC) {
			return blockMeta{}, ErrNoSpace
		}
		return blockMeta{}, fmt.Errorf("cache block: %w", err)
	}
	return blockMeta{Len: uint32(len(data)), CRC: crc32.Checksum(data, crcTable)}, nil
}

// read fills buf (at least meta.Len long) with block id and verifies it.
// A missing file or a checksum mismatch is ErrCorrupt.
func (bs *blockStore) read(id blockID, meta blockMeta, buf []byte) error {
	f, err := os.Open(bs.path(id))
	if err != nil {
		return fmt.Errorf("%w: block %v: %w", ErrCorrupt, id, err)
	}
	defer f.Close()
	if bs.aead != nil {
		sealed := make([]byte, int(meta.Len)+bs.overhead)
		if _, err := io.ReadFull(f, sealed); err != nil {
			return fmt.Errorf("%w: block %v: short read: %v", ErrCorrupt, id, err)
		}
		ns := bs.aead.NonceSize()
		if _, err := bs.aead.Open(buf[:0], sealed[:ns], sealed[ns:], id.additionalData()); err != nil {
			return fmt.Errorf("%w: block %v: does not decrypt: %v", ErrCorrupt, id, err)
		}
	} else if n, err := io.ReadFull(f, buf[:meta.Len]); err != nil || uint32(n) != meta.Len {
		return fmt.Errorf("%w: block %v: short read: %v", ErrCorrupt, id, err)
	}
	n := int(meta.Len)
	if crc32.Checksum(buf[:n], crcTable) != meta.CRC {
		return fmt.Errorf("%w: block %v: checksum mismatch", ErrCorrupt, id)
	}
	bs.touch(id)
	if bs.aead == nil {
		bs.mu.Lock()
		if _, known := bs.size[id]; known && len(bs.verified) < maxVerified {
			bs.verified[id] = meta
		}
		bs.mu.Unlock()
	}
	return nil
}

// maxVerified bounds the verified set (about 40 bytes an entry).
const maxVerified = 1 << 18

// openBlocksFor is how many block descriptors files keeps: enough to
// cover a few GiB of blocks, so that random reads across a big file pay a
// pread each rather than an open and a close, and at most an eighth of
// the descriptors the process may open.
func openBlocksFor(limit uint64) int {
	return int(max(64, min(4096, limit/8)))
}

// openBlock is a cached read-only descriptor of a block file. It is closed
// once it is dropped (dead) and no read uses it (refs).
type openBlock struct {
	fd   int
	refs int
	dead bool
	elem *list.Element
}

// readRange reads [off, off+len(dst)) of block id into dst when the block
// was verified whole (or written by this process) and has not been
// rewritten or dropped since: the verified set is the authority, and the
// index is not asked, which a 4 KiB read cannot afford. ok is false when
// the caller must take the full path: look the block up and read it whole.
func (bs *blockStore) readRange(id blockID, off int64, dst []byte) (ok bool) {
	ob := bs.openVerified(id, off+int64(len(dst)))
	if ob == nil {
		return false
	}
	n, err := unix.Pread(ob.fd, dst, off)
	bs.mu.Lock()
	ob.refs--
	ob.closeIfUnused()
	bs.mu.Unlock()
	bs.touch(id)
	return err == nil && n == len(dst)
}

// openVerified returns a descriptor of block id's file, with a reference
// the caller drops, if the block is verified and holds at least end
// bytes; else nil.
func (bs *blockStore) openVerified(id blockID, end int64) *openBlock {
	bs.mu.Lock()
	meta, seen := bs.verified[id]
	if !seen || end < 0 || end > int64(meta.Len) {
		bs.mu.Unlock()
		return nil
	}
	if ob := bs.files[id]; ob != nil {
		ob.refs++
		bs.fileLRU.MoveToFront(ob.elem)
		bs.mu.Unlock()
		return ob
	}
	bs.mu.Unlock()
	fd, err := unix.Open(bs.path(id), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil
	}
	bs.mu.Lock()
	defer bs.mu.Unlock()
	// The block may have been rewritten or dropped while it was opened:
	// the file opened is the verified one only if it is still verified.
	if v, seen := bs.verified[id]; !seen || v != meta {
		unix.Close(fd)
		return nil
	}
	if ob := bs.files[id]; ob != nil { // another reader opened it first
		unix.Close(fd)
		ob.refs++
		return ob
	}
	ob := &openBlock{fd: fd, refs: 1}
	ob.elem = bs.fileLRU.PushFront(id)
	bs.files[id] = ob
	for bs.fileLRU.Len() > bs.maxFiles {
		bs.dropFileLocked(bs.fileLRU.Back().Value.(blockID))
	}
	return ob
}

// dropFileLocked forgets block id's cached descriptor, closing it unless
// a read still uses it.
func (bs *blockStore) dropFileLocked(id blockID) {
	ob := bs.files[id]
	if ob == nil {
		return
	}
	delete(bs.files, id)
	bs.fileLRU.Remove(ob.elem)
	ob.dead = true
	ob.closeIfUnused()
}

// closeIfUnused closes a dropped descriptor once no read uses it (bs.mu
// held).
func (ob *openBlock) closeIfUnused() {
	if ob.dead && ob.refs == 0 {
		unix.Close(ob.fd)
	}
}

// syncAhead is how many bytes of dirty blocks may wait for a sync before
// one starts in the background.
const syncAhead = 64 << 20

// commit syncs in the background (the group commit): a failure is kept
// for the next foreground sync to report, as syncInBackground does.
func (bs *blockStore) commit() {
	if err := bs.syncer.do(bs.syncAll); err != nil {
		bs.mu.Lock()
		first := bs.aheadErr == nil
		if first {
			bs.aheadErr = err
		}
		bs.mu.Unlock()
		if first {
			bs.log.Error("cache: group commit of written blocks failed; the next fsync reports it", "err", err)
		}
	}
}

// syncInBackground runs one sync ahead of the next close or fsync. A
// failure puts the blocks back, and the next sync reports it (aheadErr).
func (bs *blockStore) syncInBackground() {
	defer bs.ahead.Done()
	err := bs.syncer.do(bs.syncAll)
	bs.mu.Lock()
	bs.aheadRunning = false
	if err != nil && bs.aheadErr == nil {
		bs.aheadErr = err
	}
	bs.mu.Unlock()
	if err != nil {
		bs.log.Error("cache: background sync of written blocks failed; the next close or fsync reports it", "err", err)
	}
}

// closeFiles closes the cached descriptors, when the cache closes, once
// a background sync has finished.
func (bs *blockStore) closeFiles() {
	bs.mu.Lock()
	bs.closing = true
	bs.mu.Unlock()
	bs.ahead.Wait()
	bs.mu.Lock()
	defer bs.mu.Unlock()
	for id := range bs.files {
		bs.dropFileLocked(id)
	}
}

// removeFile deletes a block's bytes; the caller deletes the index key.
func (bs *blockStore) removeFile(id blockID) {
	if err := os.Remove(bs.path(id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		bs.log.Warn("cache: remove block file", "err", err)
	}
}

// added accounts for a block that now exists; dirty blocks are never
// evicted.
func (bs *blockStore) added(id blockID, n uint32, dirty bool) {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	bs.forgetLocked(id)
	sz := bs.diskSize(n)
	bs.size[id] = sz
	if dirty {
		bs.unsynced[id] = struct{}{}
		bs.dirtyBytes += sz
		bs.unsyncedBytes += sz
		if bs.unsyncedBytes >= syncAhead && !bs.aheadRunning && !bs.closing {
			bs.aheadRunning = true
			bs.ahead.Add(1)
			if bs.goBackground == nil {
				go bs.syncInBackground()
			} else if !bs.goBackground(bs.syncInBackground) {
				bs.aheadRunning = false
				bs.ahead.Done()
			}
		}
	} else {
		bs.addCleanLocked(id, sz)
	}
}

// addCleanLocked accounts for a present clean block: evictable, or pinned.
func (bs *blockStore) addCleanLocked(id blockID, sz int64) {
	bs.cleanBytes += sz
	if bs.pins[id] {
		bs.pinnedIn[id] = struct{}{}
		bs.pinnedBytes += sz
		return
	}
	bs.lruIndex[id] = bs.lru.PushFront(id)
}

// pin keeps the clean blocks ids of ino out of eviction, those present
// and those fetched later (missing bytes of them), until unpin. It
// refuses (false) when pinned blocks would take more than a quarter of
// the cache, which must stay usable for everything else.
func (bs *blockStore) pin(ino uint64, ids []blockID, missing int64) bool {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	if _, ok := bs.pinsByIno[ino]; ok {
		return true
	}
	var present int64
	for _, id := range ids {
		if _, ok := bs.lruIndex[id]; ok {
			present += bs.size[id]
		}
	}
	if bs.pinnedBytes+present+missing > bs.limit/4 {
		return false
	}
	for _, id := range ids {
		bs.pins[id] = true
		if e, ok := bs.lruIndex[id]; ok {
			bs.lru.Remove(e)
			delete(bs.lruIndex, id)
			bs.pinnedIn[id] = struct{}{}
			bs.pinnedBytes += bs.size[id]
		}
	}
	bs.pinsByIno[ino] = ids
	return true
}

// unpin makes ino's pinned blocks evictable again.
func (bs *blockStore) unpin(ino uint64) {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	for _, id := range bs.pinsByIno[ino] {
		delete(bs.pins, id)
		if _, ok := bs.pinnedIn[id]; ok {
			delete(bs.pinnedIn, id)
			bs.pinnedBytes -= bs.size[id]
			bs.lruIndex[id] = bs.lru.PushFront(id)
		}
	}
	delete(bs.pinsByIno, ino)
	bs.spaceFreed.Broadcast()
}

// trust records that block id's file holds exactly what meta describes,
// because this process just wrote it from memory: reads may take ranges of
// it without reading and checksumming the whole file first. (Blocks found
// on disk at start-up are checked whole once, by read.)
func (bs *blockStore) trust(id blockID, meta blockMeta) {
	if bs.aead != nil {
		return // ranges of a sealed block cannot be read on their own
	}
	bs.mu.Lock()
	if _, known := bs.size[id]; known && len(bs.verified) < maxVerified {
		bs.verified[id] = meta
	}
	bs.mu.Unlock()
}

// markClean moves a block from the dirty to the clean (evictable) set.
func (bs *blockStore) markClean(id blockID) {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	sz, ok := bs.size[id]
	if !ok {
		return
	}
	if _, clean := bs.lruIndex[id]; clean {
		return
	}
	if _, pinned := bs.pinnedIn[id]; pinned {
		return
	}
	bs.dirtyBytes -= sz
	bs.addCleanLocked(id, sz)
	bs.spaceFreed.Broadcast()
}

// removed forgets a block that was deleted.
func (bs *blockStore) removed(id blockID) {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	bs.forgetLocked(id)
	bs.spaceFreed.Broadcast()
}

func (bs *blockStore) forgetLocked(id blockID) {
	sz, ok := bs.size[id]
	if !ok {
		return
	}
	delete(bs.size, id)
	delete(bs.verified, id)
	bs.dropFileLocked(id)
	if e, clean := bs.lruIndex[id]; clean {
		bs.lru.Remove(e)
		delete(bs.lruIndex, id)
		bs.cleanBytes -= sz
	} else if _, pinned := bs.pinnedIn[id]; pinned {
		delete(bs.pinnedIn, id)
		bs.pinnedBytes -= sz
		bs.cleanBytes -= sz
	} else {
		bs.dirtyBytes -= sz
	}
}

func (bs *blockStore) touch(id blockID) {
	bs.mu.Lock()
	if e, ok := bs.lruIndex[id]; ok {
		bs.lru.MoveToFront(e)
	}
	bs.mu.Unlock()
}

func (bs *blockStore) usage() (clean, dirty int64) {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	return bs.cleanBytes, bs.dirtyBytes
}

// reserve makes room for a new block of n bytes. Clean blocks are evicted
// first; if dirty data alone leaves no room, it waits for uploads (calling
// onPressure so they start now) until ctx ends or wait passes, then fails
// with ErrNoSpace. dirty says whether the block to come is dirty: a clean
// block that does not fit is simply not cached (ok false, no error).
// Room means room in the accounting (the cache size) and on the disk:
// the filesystem keeps minFree bytes free for the metadata store, whose
// memory-mapped files would fault (SIGBUS) if the disk filled under them.
func (bs *blockStore) reserve(ctx context.Context, n uint32, dirty bool, wait time.Duration) (ok bool, err error) {
	need := bs.diskSize(n)
	deadline := time.Now().Add(wait)
	for {
		victims := bs.evictFor(need)
		bs.dropVictims(victims)
		short, err := bs.diskShort(need)
		if err != nil {
			return false, err
		}
		if short > 0 {
			// The disk is fuller than the accounting knows (a disk smaller
			// than --cache-size, or other files on it): evict for it.
			if victims := bs.evictBytes(short); len(victims) > 0 {
				bs.dropVictims(victims)
				continue
			}
		}
		bs.mu.Lock()
		fits := bs.cleanBytes+bs.dirtyBytes+need <= bs.limit && short <= 0
		dirtyFits := bs.dirtyBytes+bs.pinnedBytes+need <= bs.limit && short <= 0
		bs.mu.Unlock()
		if fits {
			return true, nil
		}
		if !dirty {
			return false, nil
		}
		if dirtyFits {
			continue // eviction raced with another reader; try again
		}
		if time.Now().After(deadline) || (bs.hopeless != nil && bs.hopeless()) {
			return false, ErrNoSpace
		}
		if bs.onPressure != nil {
			bs.onPressure()
		}
		if err := bs.waitFreed(ctx, time.Until(deadline)); err != nil {
			return false, err
		}
	}
}

// diskShort returns how many bytes must be freed on the cache's filesystem
// before need more can be written and minFree stay free (0 or less: none).
func (bs *blockStore) diskShort(need int64) (int64, error) {
	if bs.minFree <= 0 || bs.statfs == nil {
		return 0, nil
	}
	free, err := bs.statfs()
	if err != nil {
		return 0, fmt.Errorf("cache disk: %w", err)
	}
	return need + bs.minFree - free, nil
}

func (bs *blockStore) waitFreed(ctx context.Context, d time.Duration) error {
	if d > time.Second {
		d = time.Second
	}
	done := make(chan struct{})
	t := time.AfterFunc(d, func() {
		bs.mu.Lock()
		bs.spaceFreed.Broadcast()
		bs.mu.Unlock()
	})
	defer t.Stop()
	go func() {
		select {
		case <-ctx.Done():
			bs.mu.Lock()
			bs.spaceFreed.Broadcast()
			bs.mu.Unlock()
		case <-done:
		}
	}()
	bs.mu.Lock()
	bs.spaceFreed.Wait()
	bs.mu.Unlock()
	close(done)
	return ctx.Err()
}

// evictFor picks least recently used clean blocks until need more bytes fit
// under the limit, and takes them out of the accounting.
func (bs *blockStore) evictFor(need int64) []blockID {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	var victims []blockID
	for bs.cleanBytes+bs.dirtyBytes+need > bs.limit {
		e := bs.lru.Back()
		if e == nil {
			break
		}
		id := e.Value.(blockID)
		victims = append(victims, id)
		bs.forgetLocked(id)
		bs.evictions++
	}
	return victims
}

func (bs *blockStore) dropVictims(victims []blockID) {
	if len(victims) == 0 {
		return
	}
	wb := bs.db.NewWriteBatch()
	for _, id := range victims {
		wb.Delete(blockKey(id.ino, id.gen, id.idx))
	}
	if err := wb.Flush(); err != nil {
		bs.log.Warn("cache: evict blocks from index", "err", err)
	}
	for _, id := range victims {
		bs.removeFile(id)
	}
}

// sync makes every block written so far and the badger log durable.
// Concurrent callers share one sync. It also reports, once, the failure
// of a background sync since the last one.
func (bs *blockStore) sync() error {
	err := bs.syncer.do(bs.syncAll)
	bs.mu.Lock()
	ahead := bs.aheadErr
	bs.aheadErr = nil
	bs.mu.Unlock()
	if err == nil && ahead != nil {
		err = fmt.Errorf("an earlier sync of written blocks failed, so data written since may be lost: %w", ahead)
	}
	return err
}

// syncAll fsyncs the blocks written since the last sync, their
// directories, and the badger log.
func (bs *blockStore) syncAll() error {
	bs.mu.Lock()
	ids, newSubdir := bs.unsynced, bs.newSubdir
	bs.unsynced, bs.newSubdir, bs.unsyncedBytes = make(map[blockID]struct{}), false, 0
	bs.mu.Unlock()
	fail := func(err error) error {
		bs.mu.Lock()
		for id := range ids {
			bs.unsynced[id] = struct{}{}
		}
		bs.newSubdir = bs.newSubdir || newSubdir
		bs.mu.Unlock()
		return fmt.Errorf("cache sync: %w", err)
	}
	// The files and the directories holding them, all at once: the
	// filesystem commits concurrent fsyncs together, and a close
	// waits for one commit rather than one per path.
	paths := map[string]bool{}
	if newSubdir {
		paths[bs.dir] = true
	}
	for id := range ids {
		p := bs.path(id)
		paths[p] = true
		paths[filepath.Dir(p)] = true
	}
	todo := make(chan string, len(paths))
	for p := range paths {
		todo <- p
	}
	close(todo)
	var (
		wg    sync.WaitGroup
		errMu sync.Mutex
		first error
	)
	for range min(len(paths), 16) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p := range todo {
				// A block dropped since has nothing to make durable.
				if err := fsyncPath(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
					errMu.Lock()
					first = cmp.Or(first, err)
					errMu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if first != nil {
		return fail(first)
	}
	if err := bs.db.Sync(); err != nil {
		return fmt.Errorf("cache sync: %w", err)
	}
	return nil
}

// fsyncPath makes a file's content, or a directory's entries, durable.
// Tests replace it to inject failures.
var fsyncPath = fsyncFile

func fsyncFile(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
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

// scanFiles removes block files that the index does not know (a crash
// between writing a file and committing its record) and temporary files.
func (bs *blockStore) scanFiles(known func(blockID) bool) error {
	os.RemoveAll(filepath.Join(bs.dir, "tmp"))
	if err := os.MkdirAll(filepath.Join(bs.dir, "tmp"), 0o700); err != nil {
		return err
	}
	return filepath.WalkDir(bs.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		id, ok := parseBlockFile(d.Name())
		if !ok || !known(id) {
			os.Remove(p)
		}
		return nil
	})
}
