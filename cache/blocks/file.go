package blocks

import (
	"container/list"
	"crypto/rand"
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

	"golang.org/x/sys/unix"
)

// additionalData binds an encrypted block file to its identity.
func (id ID) additionalData() []byte {
	b := make([]byte, 24)
	binary.BigEndian.PutUint64(b, id.Ino)
	binary.BigEndian.PutUint64(b[8:], id.Gen)
	binary.BigEndian.PutUint64(b[16:], uint64(id.Idx))
	return b
}

func (s *Store) path(id ID) string {
	return filepath.Join(s.dir, fmt.Sprintf("%02x", byte(id.Ino^id.Ino>>8)),
		fmt.Sprintf("%016x-%016x-%x", id.Ino, id.Gen, id.Idx))
}

func parseBlockFile(name string) (ID, bool) {
	parts := strings.Split(name, "-")
	if len(parts) != 3 {
		return ID{}, false
	}
	ino, e1 := strconv.ParseUint(parts[0], 16, 64)
	gen, e2 := strconv.ParseUint(parts[1], 16, 64)
	idx, e3 := strconv.ParseInt(parts[2], 16, 64)
	if e1 != nil || e2 != nil || e3 != nil {
		return ID{}, false
	}
	return ID{ino, gen, idx}, true
}

// Write stores data as block id, replacing any previous content
// atomically. The caller records the returned meta in the index (Index)
// in the same transaction as the record that refers to the block, then
// calls Added; if that transaction fails, Discard deletes the file.
func (s *Store) Write(id ID, data []byte) (Meta, error) {
	meta, err := s.writeOnce(id, data)
	for try := 0; errors.Is(err, ErrNoSpace) && try < 3; try++ {
		// The disk is full before the cache reached its size: a disk
		// smaller than --cache-size, or other files on it. The accounting
		// would never evict for that, so the disk would stay full of clean
		// blocks after every upload finished. Evict some now, whatever the
		// accounting says, and try again.
		v := s.evictBytes(max(8*s.diskSize(uint32(len(data))), 8<<20))
		if v.empty() {
			break
		}
		s.dropVictims(v)
		meta, err = s.writeOnce(id, data)
	}
	return meta, err
}

func (s *Store) writeOnce(id ID, data []byte) (Meta, error) {
	var rnd [8]byte
	rand.Read(rnd[:])
	tmp := filepath.Join(s.dir, "tmp", hex.EncodeToString(rnd[:]))
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return Meta{}, fmt.Errorf("cache block: %w", err)
	}
	out := data
	if s.aead != nil {
		nonce := make([]byte, s.aead.NonceSize(), s.overhead+len(data))
		rand.Read(nonce)
		out = s.aead.Seal(nonce, nonce, data, id.additionalData())
	}
	_, err = f.Write(out)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		dst := s.path(id)
		if err = os.Rename(tmp, dst); errors.Is(err, fs.ErrNotExist) {
			if err = os.MkdirAll(filepath.Dir(dst), 0o700); err == nil {
				s.mu.Lock()
				s.newSubdir = true // its entry in dir must be made durable too
				s.mu.Unlock()
				err = os.Rename(tmp, dst)
			}
		}
	}
	if err != nil {
		if rerr := os.Remove(tmp); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
			s.log.Warn("cache: remove temporary block file", "err", rerr)
		}
		if errors.Is(err, unix.ENOSPC) {
			return Meta{}, ErrNoSpace
		}
		return Meta{}, fmt.Errorf("cache block: %w", err)
	}
	return Meta{Len: uint32(len(data)), CRC: crc32.Checksum(data, crcTable)}, nil
}

// IsDurable reports whether dirty block id's file and index entry are
// durable: a sync finished since it was last written (or Recover found it
// after a clean close).
func (s *Store) IsDurable(id ID) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, unsynced := s.unsynced[id]
	_, syncing := s.syncing[id]
	return !unsynced && !syncing
}

// beingSynced reports whether the sync under way holds block id.
func (s *Store) beingSynced(id ID) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.syncing[id]
	return ok
}

// Unsynced reports whether dirty block id was written after the last sync
// began: no sync has made it, nor its index entry, durable yet, nor will
// the one under way. (A block the sync under way holds may become durable
// with whatever that sync's log flush carries.)
func (s *Store) Unsynced(id ID) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, unsynced := s.unsynced[id]
	_, syncing := s.syncing[id]
	return unsynced && !syncing
}

// AllSynced reports whether every dirty block written so far is durable:
// no sync is under way and none has been written since the last one.
func (s *Store) AllSynced() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.unsynced) == 0 && len(s.syncing) == 0
}

// ErrNoAppend: the store cannot add to a block in place (an encrypted
// block is sealed whole, under one nonce).
var ErrNoAppend = errors.New("cache block: cannot append in place")

// Append stores data as block id, where data's first meta.Len bytes are
// the block's bytes as committed with meta, by writing only the bytes after
// them to its file. The committed bytes are not touched, so meta still
// describes the file whatever happens before the caller commits the
// returned meta (Index, in the same transaction as the record that refers
// to it, then Added): a failed append or commit leaves bytes past
// meta.Len, which no read looks at, and the next Append or Write covers.
//
// The returned meta also names the block's durable prefix: meta itself
// if a sync has made the block durable since it was last written, or
// meta's own durable prefix if not. The disk may keep the new index
// entry and lose the appended bytes in a power cut (neither is synced
// until the next group commit); Recover then cuts the block back to that
// prefix, which a sync made durable, rather than lose what was there.
//
// The caller holds BeginWrite. A block that a sync under way holds is not
// appended to (ErrNoAppend): that sync will make its bytes durable, which
// no prefix named now could say. The caller stores it whole instead,
// naming it (Meta.Prev) with the next sync's epoch.
func (s *Store) Append(id ID, meta Meta, data []byte) (Meta, error) {
	if s.aead != nil || len(data) < int(meta.Len) || s.beingSynced(id) {
		return Meta{}, ErrNoAppend
	}
	out := Meta{Durable: meta.Durable, DurableLen: meta.DurableLen, DurableCRC: meta.DurableCRC,
		Fresh: meta.Fresh && s.Unsynced(id)}
	if s.IsDurable(id) {
		out.Durable, out.DurableLen, out.DurableCRC = true, meta.Len, meta.CRC
	} else if meta.Prev {
		// Not durable yet: the block it replaced is still what a power
		// cut may have to bring back.
		out.Prev, out.PrevGen, out.PrevLen, out.PrevCRC, out.Epoch = true, meta.PrevGen, meta.PrevLen, meta.PrevCRC, meta.Epoch
	}
	f, err := os.OpenFile(s.path(id), os.O_WRONLY, 0)
	if err != nil {
		return Meta{}, fmt.Errorf("cache block: %w", err)
	}
	_, err = f.WriteAt(data[meta.Len:], int64(meta.Len))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if errors.Is(err, unix.ENOSPC) {
		return Meta{}, ErrNoSpace
	}
	if err != nil {
		return Meta{}, fmt.Errorf("cache block: %w", err)
	}
	out.Len, out.CRC = uint32(len(data)), crc32.Update(meta.CRC, crcTable, data[meta.Len:])
	return out, nil
}

// Read fills buf (at least meta.Len long) with block id and verifies it.
// A missing file (fs.ErrNotExist inside) or a checksum mismatch is
// ErrCorrupt.
func (s *Store) Read(id ID, meta Meta, buf []byte) error {
	f, err := os.Open(s.path(id))
	if err != nil {
		return fmt.Errorf("%w: block %v: %w", ErrCorrupt, id, err)
	}
	defer f.Close()
	if s.aead != nil {
		sealed := make([]byte, int(meta.Len)+s.overhead)
		if _, err := io.ReadFull(f, sealed); err != nil {
			return fmt.Errorf("%w: block %v: short read: %v", ErrCorrupt, id, err)
		}
		ns := s.aead.NonceSize()
		if _, err := s.aead.Open(buf[:0], sealed[:ns], sealed[ns:], id.additionalData()); err != nil {
			return fmt.Errorf("%w: block %v: does not decrypt: %v", ErrCorrupt, id, err)
		}
	} else if n, err := io.ReadFull(f, buf[:meta.Len]); err != nil || uint32(n) != meta.Len {
		return fmt.Errorf("%w: block %v: short read: %v", ErrCorrupt, id, err)
	}
	n := int(meta.Len)
	if crc32.Checksum(buf[:n], crcTable) != meta.CRC {
		return fmt.Errorf("%w: block %v: checksum mismatch", ErrCorrupt, id)
	}
	s.touch(id)
	if s.aead == nil {
		s.mu.Lock()
		if _, known := s.size[id]; known && len(s.verified) < maxVerified {
			s.verified[id] = meta
		}
		s.mu.Unlock()
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

// ReadRange reads [off, off+len(dst)) of block id into dst when the block
// was verified whole (or written by this process) and has not been
// rewritten or dropped since: the verified set is the authority, and the
// index is not asked, which a 4 KiB read cannot afford. ok is false when
// the caller must take the full path: look the block up and read it whole.
func (s *Store) ReadRange(id ID, off int64, dst []byte) (ok bool) {
	ob := s.openVerified(id, off+int64(len(dst)))
	if ob == nil {
		return false
	}
	n, err := unix.Pread(ob.fd, dst, off)
	s.mu.Lock()
	ob.refs--
	ob.closeIfUnused()
	s.mu.Unlock()
	s.touch(id)
	return err == nil && n == len(dst)
}

// openVerified returns a descriptor of block id's file, with a reference
// the caller drops, if the block is verified and holds at least end
// bytes; else nil.
func (s *Store) openVerified(id ID, end int64) *openBlock {
	s.mu.Lock()
	meta, seen := s.verified[id]
	if !seen || end < 0 || end > int64(meta.Len) {
		s.mu.Unlock()
		return nil
	}
	if ob := s.files[id]; ob != nil {
		ob.refs++
		s.fileLRU.MoveToFront(ob.elem)
		s.mu.Unlock()
		return ob
	}
	s.mu.Unlock()
	fd, err := unix.Open(s.path(id), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// The block may have been rewritten or dropped while it was opened:
	// the file opened is the verified one only if it is still verified.
	if v, seen := s.verified[id]; !seen || v != meta {
		unix.Close(fd)
		return nil
	}
	if ob := s.files[id]; ob != nil { // another reader opened it first
		unix.Close(fd)
		ob.refs++
		return ob
	}
	ob := &openBlock{fd: fd, refs: 1}
	ob.elem = s.fileLRU.PushFront(id)
	s.files[id] = ob
	for s.fileLRU.Len() > s.maxFiles {
		s.dropFileLocked(s.fileLRU.Back().Value.(ID))
	}
	return ob
}

// dropFileLocked forgets block id's cached descriptor, closing it unless
// a read still uses it.
func (s *Store) dropFileLocked(id ID) {
	ob := s.files[id]
	if ob == nil {
		return
	}
	delete(s.files, id)
	s.fileLRU.Remove(ob.elem)
	ob.dead = true
	ob.closeIfUnused()
}

// closeIfUnused closes a dropped descriptor once no read uses it (s.mu
// held). A read-only descriptor has nothing to report at close.
func (ob *openBlock) closeIfUnused() {
	if ob.dead && ob.refs == 0 {
		unix.Close(ob.fd)
	}
}

// Discard deletes a block file whose index entry was never committed.
func (s *Store) Discard(id ID) { s.removeFile(id) }

// removeFile deletes a block's bytes; the caller deletes the index key.
func (s *Store) removeFile(id ID) {
	if err := os.Remove(s.path(id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		s.log.Warn("cache: remove block file", "err", err)
	}
}

// scanFiles removes block files that the index does not know (a crash
// between writing a file and committing its record) and temporary files.
func (s *Store) scanFiles(known func(ID) bool) error {
	if err := os.RemoveAll(filepath.Join(s.dir, "tmp")); err != nil {
		return fmt.Errorf("cache: clear temporary block files: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(s.dir, "tmp"), 0o700); err != nil {
		return err
	}
	return filepath.WalkDir(s.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if p == s.backingDir() {
				return filepath.SkipDir
			}
			return nil
		}
		id, ok := parseBlockFile(d.Name())
		if !ok || !known(id) {
			if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("cache: remove stray block file: %w", err)
			}
		}
		return nil
	})
}

// DropPages asks the kernel to drop the page cache of blocks whose bytes
// are in S3 now: the parts of a big upload. Writing a file of many GiB
// through the cache would otherwise leave two copies of it in the host's
// page cache (the kernel's pages of the FUSE file and the block files'),
// pushing out what other programs use; and on a VM whose free memory goes
// back to the hypervisor (free page reporting), every new page costs a
// fault on the host, so a big write after other work was up to 3x slower
// than on a fresh host. The dropped pages are reused by the next blocks.
//
// It is advice: a page still dirty is only queued for write-back (the
// group commit syncs it), and a block removed meanwhile has no pages.
// Reads of a dropped block come from the disk. Nothing here can lose data,
// so a failure is logged at debug level and otherwise ignored.
func (s *Store) DropPages(ids []ID) {
	for _, id := range ids {
		fd, err := unix.Open(s.path(id), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			if !errors.Is(err, unix.ENOENT) {
				s.log.Debug("cache: drop pages of an uploaded block: open", "block", id.String(), "err", err)
			}
			continue
		}
		if err := unix.Fadvise(fd, 0, 0, unix.FADV_DONTNEED); err != nil {
			s.log.Debug("cache: drop pages of an uploaded block", "block", id.String(), "err", err)
		}
		unix.Close(fd) // read-only: nothing to report
	}
}
