package blocks

import (
	"container/list"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Backing files: FUSE passthrough hands the kernel one open file for
// the whole of a FUSE file, and the kernel then reads (and maps) it
// without asking the daemon. Blocks are one file each, so a file whose
// content is wholly in the store is assembled into one backing file,
// backing/<ino>-<n>, with each block at its offset and holes left sparse.
//
// Why assembled, and not one file per object version as the store's
// layout: a block file is replaced atomically (written aside, renamed),
// so a crash never leaves a torn dirty block, and a clean block can be
// evicted alone from a file far bigger than the cache. A single file per
// version would give up both, for the benefit of files read whole and
// often; the copy costs one pass over the file at local-disk speed
// (copy_file_range for blocks already verified, so the data does not pass
// through the daemon), once per version.
//
// Rules:
//   - Integrity: every block is checked (its CRC, or the verified set)
//     as it is copied. From then on the kernel reads the file as it reads
//     any local file: no check per read, as for the verified set's ranges.
//   - Size: a backing file counts in the store's limit like the blocks.
//     One in use (a passthrough open) is kept like a dirty block; an
//     unused one is kept for the next open and is the first thing evicted.
//     A file larger than a quarter of the limit gets none.
//   - Coherence: a backing file holds the inode's current content or is
//     stale. The cache calls Changed for every change of a file's content
//     (a write, a truncate): an unused backing file is dropped, one in use
//     is changed alike, so that passthrough readers see the write. When
//     another writer's version replaces the content, the cache calls
//     Changed with the new version: the backing file goes stale, keeps
//     serving the opens of its version, and no new open gets it.
//   - Never with a cache key: the kernel would read plaintext.

// ErrNoBacking: the content cannot be passed through now (a block is not
// in the store, the file is too large for the cache, or block files are
// encrypted).
var ErrNoBacking = errors.New("no backing file for this content")

// ErrNoLeases: the kernel refuses leases on backing files
// (fs.leases-enable=0, or a filesystem without them), so MappedElsewhere
// cannot tell.
var ErrNoLeases = errors.New("the kernel gives no leases on backing files")

// Backing is an assembled backing file.
type Backing struct {
	s   *Store
	Ino uint64
	Ver uint64 // the cache's content version it holds
	f   *os.File

	// Guarded by Store.mu.
	refs  int
	bytes int64 // accounted size on disk
	stale bool  // not the inode's current content: no new users, no changes
	dead  bool  // out of the set: removed once its last user is gone
	elem  *list.Element

	// leaseMu serialises MappedElsewhere's lease probes. A leaf.
	leaseMu sync.Mutex

	// mu orders changes to the file and what is known of its stamp.
	mu    sync.Mutex
	size  int64
	stamp fileStamp // after the last change made through Changed
	// foreign: the file changed other than through Changed (a mapping
	// wrote to it) since the last Restamp. Sticky, so that a change
	// seen just before a mirrored write is not absorbed into the stamp
	// taken after it.
	foreign bool
}

// fileStamp is what fstat says about a file's last change of content. A
// write through a mapping moves the mtime; the ctime is left out, since
// ArmAtime moves it without a change of content.
type fileStamp struct {
	mtime unix.Timespec
	size  int64
}

func stampOf(f *os.File) (fileStamp, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return fileStamp{}, err
	}
	return fileStamp{mtime: st.Mtim, size: st.Size}, nil
}

// Reads through a backing file never reach keelfs. So that the FUSE
// file's atime can follow them (relatime, kept by the cache), the backing
// file's own atime is set back to 1970 when it is handed out: the
// kernel's relatime on the cache's filesystem then moves it at the next
// read, the atime being older than the mtime. Where that filesystem is
// mounted noatime, reads that pass through do not move atime.

// armedAtime is the atime ArmAtime sets.
const armedAtime = 1

// ArmAtime sets the backing file's atime back, for ReadSinceArmed.
func (b *Backing) ArmAtime() error {
	ts := []unix.Timespec{{Sec: armedAtime}, {Nsec: unix.UTIME_OMIT}}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, b.f.Name(), ts, 0); err != nil {
		return fmt.Errorf("cache: set atime of backing file: %w", err)
	}
	return nil
}

// ReadSinceArmed reports whether the backing file was read since
// ArmAtime, and arms it again if so.
func (b *Backing) ReadSinceArmed() (bool, error) {
	fi, err := b.f.Stat()
	if err != nil {
		return false, fmt.Errorf("cache: backing file: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || st.Atim.Sec <= armedAtime {
		return false, nil
	}
	return true, b.ArmAtime()
}

// backingSet is the store's backing files. Guarded by Store.mu.
type backingSet struct {
	byIno  map[uint64]*Backing // the current one per inode
	unused *list.List          // of *Backing with no user, front = newest
	bytes  int64               // all of them, dead ones in use included
	inUse  int64               // those with users
	seq    uint64
}

func (s *Store) backingDir() string { return filepath.Join(s.dir, "backing") }

// openBackings clears backing files left by an earlier run: they are
// derived from blocks, and nothing records what they held.
func (s *Store) openBackings() error {
	s.backings = backingSet{byIno: make(map[uint64]*Backing), unused: list.New()}
	if err := os.RemoveAll(s.backingDir()); err != nil {
		return fmt.Errorf("cache: clear old backing files: %w", err)
	}
	return os.MkdirAll(s.backingDir(), 0o700)
}

// backingBytes and backingPinnedBytes are for the accounting (s.mu held).
func (s *Store) backingBytes() int64       { return s.backings.bytes }
func (s *Store) backingPinnedBytes() int64 { return s.backings.inUse }

// oldestUnusedLocked returns the least recently used backing file with no
// user, or nil.
func (bs *backingSet) oldestUnusedLocked() *Backing {
	if e := bs.unused.Back(); e != nil {
		return e.Value.(*Backing)
	}
	return nil
}

// forgetLocked takes an unused backing file out of the set and the
// accounting; the caller removes it (removeBacking).
func (bs *backingSet) forgetLocked(b *Backing) {
	if b.elem != nil {
		bs.unused.Remove(b.elem)
		b.elem = nil
	}
	if bs.byIno[b.Ino] == b {
		delete(bs.byIno, b.Ino)
	}
	bs.bytes -= b.bytes
	b.dead = true
}

// removeBacking closes and deletes a backing file that is out of the set.
func (s *Store) removeBacking(b *Backing) {
	s.backingCount.Add(-1)
	name := b.f.Name()
	if err := b.f.Close(); err != nil {
		s.log.Warn("cache: close backing file", "err", err)
	}
	if err := os.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
		s.log.Warn("cache: remove backing file", "err", err)
	}
}

// closeBackings removes every unused backing file (the store is
// closing); one still in use goes with its last user.
func (s *Store) closeBackings() {
	s.mu.Lock()
	var gone []*Backing
	for ino, b := range s.backings.byIno {
		if b.refs == 0 {
			s.backings.forgetLocked(b)
			gone = append(gone, b)
		} else {
			delete(s.backings.byIno, ino)
			b.dead = true
		}
	}
	s.mu.Unlock()
	for _, b := range gone {
		s.removeBacking(b)
	}
}

// BackingsPossible reports whether this store ever makes backing files.
func (s *Store) BackingsPossible() bool { return s.aead == nil }

// BackingFor returns ino's backing file if it holds content version ver,
// with a new user; nil if there is none.
func (s *Store) BackingFor(ino, ver uint64) *Backing {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.backings.byIno[ino]
	if b == nil || b.Ver != ver || b.stale {
		return nil
	}
	s.useLocked(b)
	return b
}

// Current reports whether b still holds its inode's content as the store
// knows it (not replaced, not stale).
func (b *Backing) Current() bool {
	b.s.mu.Lock()
	defer b.s.mu.Unlock()
	return !b.stale && !b.dead
}

func (s *Store) useLocked(b *Backing) {
	if b.refs == 0 {
		if b.elem != nil {
			s.backings.unused.Remove(b.elem)
			b.elem = nil
		}
		s.backings.inUse += b.bytes
	}
	b.refs++
}

// Assemble builds a backing file for version ver of ino, size bytes in
// blocks of blockSize, block idx being blockAt(idx) (hole: none, reads as
// zeros). It returns it with one user, or ErrNoBacking if a block is not
// in the store or the file is too large. The caller checks, once it is
// built, that the content did not change meanwhile.
func (s *Store) Assemble(ino, ver uint64, size, blockSize int64, blockAt func(idx int64) (id ID, hole bool)) (*Backing, error) {
	if s.aead != nil || size > s.limit/4 {
		return nil, ErrNoBacking
	}
	s.mu.Lock()
	s.backings.seq++
	name := filepath.Join(s.backingDir(), fmt.Sprintf("%016x-%d", ino, s.backings.seq))
	s.mu.Unlock()
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("cache: create backing file: %w", err)
	}
	fail := func(err error) (*Backing, error) {
		if cerr := f.Close(); cerr != nil {
			s.log.Warn("cache: close backing file", "err", cerr)
		}
		if rerr := os.Remove(name); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
			s.log.Warn("cache: remove backing file", "err", rerr)
		}
		return nil, err
	}
	if err := f.Truncate(size); err != nil {
		return fail(fmt.Errorf("cache: size backing file: %w", err))
	}
	buf := make([]byte, blockSize)
	for idx := int64(0); idx*blockSize < size; idx++ {
		id, hole := blockAt(idx)
		if hole {
			continue
		}
		if err := s.copyBlock(f, id, idx*blockSize, buf); err != nil {
			return fail(err)
		}
	}
	stamp, err := stampOf(f)
	if err != nil {
		return fail(fmt.Errorf("cache: backing file: %w", err))
	}
	b := &Backing{s: s, Ino: ino, Ver: ver, f: f, size: size, stamp: stamp, bytes: (size + 4095) &^ 4095}
	s.backingCount.Add(1)
	var old *Backing
	s.mu.Lock()
	if prev := s.backings.byIno[ino]; prev != nil && prev.refs > 0 && prev.Ver == ver && !prev.stale {
		// Another assembly of the same version won, and its file is in
		// use, kept in step with writes: that one stands, and this open
		// reads through keelfs.
		s.mu.Unlock()
		s.backingCount.Add(-1)
		if cerr := f.Close(); cerr != nil {
			s.log.Warn("cache: close backing file", "err", cerr)
		}
		if rerr := os.Remove(name); rerr != nil {
			s.log.Warn("cache: remove backing file", "err", rerr)
		}
		return nil, ErrNoBacking
	}
	if prev := s.backings.byIno[ino]; prev != nil {
		if prev.refs == 0 {
			s.backings.forgetLocked(prev)
			old = prev
		} else {
			delete(s.backings.byIno, ino)
			prev.dead = true
		}
	}
	s.backings.byIno[ino] = b
	s.backings.bytes += b.bytes
	s.useLocked(b)
	s.mu.Unlock()
	if old != nil {
		s.removeBacking(old)
	}
	// It was made without reserving room (its own blocks must not be
	// evicted while they are copied): make room now.
	s.dropVictims(s.evictFor(0))
	return b, nil
}

// copyBlock copies block id to offset off of f, checking it: a block
// verified since the store opened is copied by the kernel; any other is
// read and checked first.
func (s *Store) copyBlock(f *os.File, id ID, off int64, buf []byte) error {
	meta, found, err := s.Lookup(id)
	if err != nil {
		return err
	}
	if !found {
		return ErrNoBacking
	}
	s.mu.Lock()
	v, verified := s.verified[id]
	s.mu.Unlock()
	if verified && v == meta {
		if src, err := os.Open(s.path(id)); err == nil {
			err = copyRange(src, f, off, int64(meta.Len))
			if cerr := src.Close(); err == nil {
				err = cerr
			}
			if err == nil {
				return nil
			}
		}
		// Fall back to reading it, which tells a vanished block apart.
	}
	if err := s.Read(id, meta, buf); err != nil {
		if errors.Is(err, ErrCorrupt) {
			return fmt.Errorf("%w: %v", ErrNoBacking, err)
		}
		return err
	}
	if _, err := f.WriteAt(buf[:meta.Len], off); err != nil {
		return fmt.Errorf("cache: write backing file: %w", err)
	}
	return nil
}

// copyRange copies n bytes from the start of src to offset off of dst
// with copy_file_range.
func copyRange(src, dst *os.File, off, n int64) error {
	var roff int64
	for n > 0 {
		c, err := unix.CopyFileRange(int(src.Fd()), &roff, int(dst.Fd()), &off, int(n), 0)
		if err != nil {
			return err
		}
		if c == 0 {
			return fmt.Errorf("short block file")
		}
		n -= int64(c)
	}
	return nil
}

// Fd is the backing file's descriptor, to register with the kernel. It
// stays open while the Backing has a user.
func (b *Backing) Fd() int { return int(b.f.Fd()) }

// File is the backing file, to read for comparisons (ForeignChange).
func (b *Backing) File() *os.File { return b.f }

// Release drops a user. The last user of a stale or replaced backing file
// removes it; an unused current one is kept for the next open.
func (b *Backing) Release() {
	s := b.s
	s.mu.Lock()
	b.refs--
	if b.refs > 0 {
		s.mu.Unlock()
		return
	}
	s.backings.inUse -= b.bytes
	remove := false
	switch {
	case b.dead:
		s.backings.bytes -= b.bytes
		remove = true
	case b.stale:
		s.backings.forgetLocked(b)
		remove = true
	default:
		b.elem = s.backings.unused.PushFront(b)
	}
	s.spaceFreed.Broadcast()
	s.mu.Unlock()
	if remove {
		s.removeBacking(b)
	}
}

// Changed tells the store that ino's content changed, ver being the
// content version after the change. An unused backing file is dropped
// (cheaper than changing it). One in use that holds another version goes
// stale: it keeps serving the opens of its version. One in use that holds
// ver gets the same change, op, which returns the file's size after it;
// op nil means the caller changes it later (a write that a truncate
// completes).
func (s *Store) Changed(ino, ver uint64, op func(f *os.File) (int64, error)) error {
	if s.backingCount.Load() == 0 {
		return nil
	}
	s.mu.Lock()
	b := s.backings.byIno[ino]
	if b == nil {
		s.mu.Unlock()
		return nil
	}
	if b.refs == 0 {
		s.backings.forgetLocked(b)
		s.mu.Unlock()
		s.removeBacking(b)
		return nil
	}
	if b.Ver != ver {
		s.staleLocked(b)
		s.mu.Unlock()
		return nil
	}
	if op == nil {
		s.mu.Unlock()
		return nil
	}
	b.refs++ // kept while it is changed
	s.mu.Unlock()
	defer b.Release()
	b.mu.Lock()
	defer b.mu.Unlock()
	if before, err := stampOf(b.f); err == nil && before != b.stamp {
		b.foreign = true
	}
	size, err := op(b.f)
	if err == nil {
		b.size = size
		b.stamp, err = stampOf(b.f)
	}
	if err != nil {
		// The opens reading it would see old content: no new open gets
		// it, and the caller reports the failure.
		s.mu.Lock()
		s.staleLocked(b)
		s.mu.Unlock()
		return fmt.Errorf("cache: keep backing file in step: %w", err)
	}
	s.mu.Lock()
	if grown := (size+4095)&^4095 - b.bytes; grown != 0 {
		b.bytes += grown
		s.backings.bytes += grown
		s.backings.inUse += grown
	}
	s.mu.Unlock()
	return nil
}

// Stale drops ino's backing file, or, if it is in use, lets it serve its
// opens and no new one (the inode is gone, or its content replaced).
func (s *Store) Stale(ino uint64) {
	if s.backingCount.Load() == 0 {
		return
	}
	s.mu.Lock()
	b := s.backings.byIno[ino]
	if b == nil {
		s.mu.Unlock()
		return
	}
	if b.refs > 0 {
		s.staleLocked(b)
		s.mu.Unlock()
		return
	}
	s.backings.forgetLocked(b)
	s.mu.Unlock()
	s.removeBacking(b)
}

// staleLocked takes a backing file in use out of the set: its last user
// removes it.
func (s *Store) staleLocked(b *Backing) {
	b.stale = true
	if s.backings.byIno[b.Ino] == b {
		delete(s.backings.byIno, b.Ino)
		b.dead = true
	}
}

// ForeignChange reports whether the backing file changed since the last
// change made through Changed: a program that has it mapped writable
// (a writer's mmap of a file in passthrough goes to the backing file)
// wrote to it. The file's dirty pages are written back first, so that a
// later write through a mapping faults and stamps the file again.
func (b *Backing) ForeignChange() (bool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := unix.Fdatasync(b.Fd()); err != nil {
		return false, fmt.Errorf("cache: backing file: %w", err)
	}
	now, err := stampOf(b.f)
	if err != nil {
		return false, fmt.Errorf("cache: backing file: %w", err)
	}
	return b.foreign || now != b.stamp, nil
}

// Restamp records the file as it is now, after its content was taken in.
func (b *Backing) Restamp() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	st, err := stampOf(b.f)
	if err == nil {
		b.stamp, b.foreign = st, false
	}
	return err
}

// Discard drops a user of a backing file that must not be used: it goes
// stale (no new user gets it) and its last user removes it.
func (b *Backing) Discard() {
	b.s.mu.Lock()
	b.s.staleLocked(b)
	b.s.mu.Unlock()
	b.Release()
}

// MappedElsewhere reports whether another open of the backing file
// exists, for example a mapping that outlived the FUSE file it was made
// through: the process can still read it, and change it if the mapping
// is writable. It asks for a write lease, which the kernel grants only
// to the sole opener, and gives it back at once. The lease is the
// file's, not the caller's, so the probes are serialised (leaseMu).
func (b *Backing) MappedElsewhere() (bool, error) {
	b.leaseMu.Lock()
	defer b.leaseMu.Unlock()
	fd := b.Fd()
	err := b.s.setLease(uintptr(fd), unix.F_WRLCK)
	if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EBUSY) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("%w: %v", ErrNoLeases, err)
	}
	if err := b.s.setLease(uintptr(fd), unix.F_UNLCK); err != nil {
		return false, fmt.Errorf("cache: give back the lease on a backing file: %w", err)
	}
	return false, nil
}
