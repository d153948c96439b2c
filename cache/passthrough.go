package cache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/keelfs/keelfs/cache/blocks"
	"github.com/keelfs/keelfs/cache/writeback"
)

// FUSE passthrough: an open of a file whose content is wholly in the
// cache can be handed a backing file (package blocks assembles it), which
// the kernel then reads, and maps, without asking the daemon. This file
// is the cache's side of it: when a file may have one, keeping it in step
// with writes, and taking in what a writable mapping wrote to it. The fs
// layer decides which opens use it (see fs/passthrough.go).

// assembleNow is the largest file whose backing file an open waits for;
// a larger one is assembled in the background and serves the opens after.
const assembleNow = 256 << 20

// Backing is a backing file that passthrough opens of one file use.
type Backing struct {
	c  *Cache
	st *inodeState // held (acquired) until Release
	b  *blocks.Backing

	mu      sync.Mutex
	writers bool // a writer's open used it: its mappings write to it
}

// PassthroughPossible reports whether this cache ever makes backing files
// (not with a cache key: the kernel would read plaintext from the disk).
func (c *Cache) PassthroughPossible() bool { return c.blocks.BackingsPossible() }

// OpenBacking returns a backing file holding what h reads, if its content
// is wholly in the cache: nil (and no error) when there is none to be had
// now, and the caller reads through the daemon. h's version must be the
// file's current one.
func (c *Cache) OpenBacking(ctx context.Context, h *Handle) (*Backing, error) {
	st := h.st
	st.mu.Lock()
	rec := st.rec
	if rec == nil || rec.Kind != KindFile || rec.ContentVer != h.ver || rec.Size == 0 || rec.Size > c.opt.CacheSize/4 {
		st.mu.Unlock()
		return nil, nil
	}
	if b := c.blocks.BackingFor(st.ino, rec.ContentVer); b != nil {
		st.mu.Unlock()
		return c.newBacking(st, b)
	}
	// The write buffer's block must be in the store to be copied.
	if err := c.flushBufLocked(st); err != nil {
		st.mu.Unlock()
		return nil, err
	}
	snap := rec.clone()
	seq := st.contentSeq
	st.mu.Unlock()
	if !c.wholyLocal(snap) {
		return nil, nil
	}
	if snap.Size > assembleNow {
		c.assembleInBackground(snap.Ino)
		return nil, nil
	}
	b, err := c.assemble(st, snap, seq)
	if b == nil || err != nil {
		return nil, err
	}
	return c.newBacking(st, b)
}

func (c *Cache) newBacking(st *inodeState, b *blocks.Backing) (*Backing, error) {
	if _, err := c.acquire(st.ino); err != nil {
		b.Release()
		return nil, err
	}
	if !c.opt.NoAtime && !c.opt.ReadOnly {
		if err := b.ArmAtime(); err != nil {
			// Passthrough works; the reads it serves will not move atime.
			c.log.Warn("cache: reads that pass through will not move atime", "err", err)
		}
	}
	return &Backing{c: c, st: st, b: b}, nil
}

// NoteReads moves the file's atime, as a read through keelfs would
// (relatime), if the kernel read the backing file since the last look.
// The caller makes sure the backing file is still held (an open of its
// epoch exists).
func (b *Backing) NoteReads() {
	c := b.c
	if c.opt.NoAtime || c.opt.ReadOnly {
		return
	}
	read, err := b.b.ReadSinceArmed()
	if err != nil {
		c.log.Warn("cache: reads that passed through", "err", err)
	}
	if read {
		c.noteRead(b.st)
	}
}

// wholyLocal reports whether every block of n is in the block store.
func (c *Cache) wholyLocal(n *Inode) bool {
	bs := c.opt.BlockSize
	for idx := int64(0); idx*bs < n.Size; idx++ {
		if src := c.sourceOf(n, idx); !src.hole && !c.blocks.Has(src.id) {
			return false
		}
	}
	return true
}

// assemble builds a backing file for snap, a snapshot of st's record taken
// at content change seq. It returns nil if the content changed meanwhile
// or a block went missing.
func (c *Cache) assemble(st *inodeState, snap *Inode, seq uint64) (*blocks.Backing, error) {
	b, err := c.blocks.Assemble(snap.Ino, snap.ContentVer, snap.Size, c.opt.BlockSize, func(idx int64) (blocks.ID, bool) {
		src := c.sourceOf(snap, idx)
		return src.id, src.hole
	})
	if errors.Is(err, blocks.ErrNoBacking) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	st.mu.Lock()
	same := st.rec != nil && st.contentSeq == seq && st.rec.ContentVer == snap.ContentVer
	st.mu.Unlock()
	if !same {
		// A write landed while it was copied: it may hold either.
		b.Discard()
		return nil, nil
	}
	c.stats.BackingsMade.Add(1)
	return b, nil
}

// assembleInBackground builds ino's backing file for the opens to come,
// one at a time per file.
func (c *Cache) assembleInBackground(ino uint64) {
	c.passMu.Lock()
	if c.assembling[ino] {
		c.passMu.Unlock()
		return
	}
	c.assembling[ino] = true
	c.assemblies.Add(1)
	c.passMu.Unlock()
	done := func() {
		c.passMu.Lock()
		delete(c.assembling, ino)
		c.passMu.Unlock()
		c.assemblies.Done()
	}
	started := c.tasks.Go(func() {
		defer done()
		st, err := c.acquire(ino)
		if err != nil {
			return
		}
		defer c.release(st)
		st.mu.Lock()
		if st.rec == nil || st.rec.Kind != KindFile {
			st.mu.Unlock()
			return
		}
		if err := c.flushBufLocked(st); err != nil {
			st.mu.Unlock()
			c.log.Warn("cache: backing file", "path", st.rec.Path, "err", err)
			return
		}
		snap, seq := st.rec.clone(), st.contentSeq
		st.mu.Unlock()
		b, err := c.assemble(st, snap, seq)
		if err != nil {
			c.log.Warn("cache: backing file", "path", snap.Path, "err", err)
			return
		}
		if b != nil {
			b.Release() // kept, unused, for the next open
		}
	})
	if !started {
		done()
	}
}

// waitAssembly waits for the background assemblies under way (tests).
func (c *Cache) waitAssembly() { c.assemblies.Wait() }

// contentChangedLocked is called, st.mu held, for every change of st's
// content: a backing file of it in use gets the same change (mirror, which
// gets the file and its new size and returns the file's size after it),
// so that the opens reading it see what was written; an unused one is
// dropped. mirror nil: the caller changes it next.
func (c *Cache) contentChangedLocked(st *inodeState, mirror func(f *os.File, size int64) (int64, error)) {
	st.contentSeq++
	rec := st.rec
	var op func(f *os.File) (int64, error)
	if mirror != nil {
		size := rec.Size
		op = func(f *os.File) (int64, error) { return mirror(f, size) }
	}
	if err := c.blocks.Changed(st.ino, rec.ContentVer, op); err != nil {
		// The write is in the cache; the opens that read the backing
		// file do not see it. New opens will not use that file.
		c.log.Error("cache: a write could not be copied to the backing file of open passthrough readers; they see the file as it was", "path", rec.Path, "err", err)
		c.stats.BackingErrors.Add(1)
	}
}

// Fd is the backing file's descriptor, to register with the kernel.
func (b *Backing) Fd() int { return b.b.Fd() }

// Current reports whether the backing file still holds the file's current
// content (it goes stale when another writer's version replaces it).
func (b *Backing) Current() bool { return b.b.Current() }

// Ver is the content version the backing file holds (OpenResult.ContentVer).
func (b *Backing) Ver() uint64 { return b.b.Ver }

// AddWriter records that an open for writing uses the backing file: its
// write(2)s come to the daemon (and are copied to the file), but a
// writable mapping of it writes to the backing file directly.
func (b *Backing) AddWriter() {
	b.mu.Lock()
	b.writers = true
	b.mu.Unlock()
}

// TakeInMapped takes into the cache what a mapping wrote to the backing
// file, if it wrote anything: when a writer's open that used the backing
// file is flushed, synced or released.
func (b *Backing) TakeInMapped(ctx context.Context) error {
	changed, err := b.b.ForeignChange()
	if err != nil || !changed {
		return err
	}
	return b.c.takeIn(ctx, b)
}

// usedByWriter reports whether an open for writing used the backing file
// (AddWriter): only then can a mapping of it have written to it.
func (b *Backing) usedByWriter() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.writers
}

// probeFailed logs a lease probe of b that failed. Where the kernel
// refuses leases (blocks.ErrNoLeases) it says once per cache, for readers'
// mappings and once for writers', that such mappings cannot be told about;
// any other failure is logged each time.
func (c *Cache) probeFailed(b *Backing, writers bool, err error) {
	switch {
	case !errors.Is(err, blocks.ErrNoLeases):
		c.log.Warn("cache: lease probe of a passthrough file failed; taken as no mapping left", "path", b.path(), "err", err)
	case writers:
		c.leaseWarnW.Do(func() {
			c.log.Warn("cache: cannot tell whether a writable mapping of a passthrough file outlives its opens; such a mapping will not see later writes, and what it writes after the group commit that follows the last close is not taken in", "path", b.path(), "err", err)
		})
	default:
		c.leaseWarn.Do(func() {
			c.log.Warn("cache: cannot tell whether a mapping of a passthrough file outlives its opens; such a mapping will not see later writes", "path", b.path(), "err", err)
		})
	}
}

// Release is called when the last passthrough open using the backing file
// is gone. If a writer used it, what its mappings wrote is taken in. If a
// mapping outlives the opens, the file is kept in use, and looked at again
// until the mapping is gone: a writer's mapping can still write to it, and
// any mapping reads it, so the writes made through keelfs meanwhile must
// still be copied to it (an unused backing file is dropped at the first
// write, and the mapping would keep the old bytes). Where the probe fails
// (no leases), a readers' file is let go at once and a writer's after one
// more look (see checkLingering).
func (b *Backing) Release(ctx context.Context) error {
	writers := b.usedByWriter()
	if writers {
		if err := b.c.takeIn(ctx, b); err != nil {
			b.c.lingerBacking(b)
			return err
		}
	}
	mapped, err := b.b.MappedElsewhere()
	if err != nil {
		// No telling whether a mapping outlives the opens (no leases
		// here: fs.leases-enable=0). A reader's mapping cannot write:
		// what it lacks is only the writes to come, which it will not
		// see. A writer's may still write: the group commit takes in
		// what it wrote meanwhile, once more, then lets go. Either way
		// the release succeeded.
		b.c.probeFailed(b, writers, err)
		mapped = writers
	}
	if mapped {
		b.c.lingerBacking(b)
		return nil
	}
	b.b.Release()
	b.c.release(b.st)
	return nil
}

// takeIn copies into the cache the blocks of the backing file that differ
// from the file's content: what a writable mapping wrote. Each block is
// read again from the backing file under the inode's lock, where the
// writes that go through the daemon are copied to it, so that none of
// them is undone.
func (c *Cache) takeIn(ctx context.Context, b *Backing) error {
	st := b.st
	f := b.b.File()
	bs := c.opt.BlockSize
	// current reports, st.mu held, whether the backing file still holds
	// the file's content version: what it holds may go into the file.
	current := func() bool {
		return st.rec != nil && st.rec.ContentVer == b.b.Ver && b.b.Current()
	}
	st.mu.Lock()
	if !current() {
		path := ""
		if st.rec != nil {
			path = st.rec.Path
		}
		st.mu.Unlock()
		// Replaced by another writer's version, or gone: what a mapping
		// wrote has no file to go to. Say so if it wrote anything.
		if changed, err := b.b.ForeignChange(); err == nil && changed {
			c.stats.BackingErrors.Add(1)
			c.log.Error("cache: what a writable mapping wrote to a file is lost: the file was replaced or removed meanwhile", "path", path, "ino", st.ino)
		}
		return nil
	}
	size := st.rec.Size
	st.mu.Unlock()
	h := &Handle{c: c, st: st, write: true, ver: b.b.Ver} // current: the file's version now
	mine := make([]byte, bs)
	taken := 0
	for idx := int64(0); idx*bs < size; idx++ {
		n := int(min(bs, size-idx*bs))
		if _, err := f.ReadAt(mine[:n], idx*bs); err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("cache: read backing file: %w", err)
		}
		cur, release, err := c.readBlock(ctx, h, idx)
		if err != nil {
			return err
		}
		same := bytes.Equal(cur[:min(n, len(cur))], mine[:min(n, len(cur))]) && allZero(mine[min(n, len(cur)):n])
		release()
		if same {
			continue
		}
		// Run under st.mu, where the writes through keelfs are mirrored
		// to the backing file: it is read again as it is now, and only
		// while it still holds the file's version (another writer's
		// version may have replaced it since the check above).
		fresh := func(blk []byte) error {
			if !current() {
				return ErrStale
			}
			clear(blk)
			m := int(min(bs, max(0, st.rec.Size-idx*bs)))
			if _, err := f.ReadAt(blk[:m], idx*bs); err != nil && !errors.Is(err, io.EOF) {
				return fmt.Errorf("cache: read backing file: %w", err)
			}
			return nil
		}
		if err := c.writeBlock(ctx, nil, st, idx, fresh, 0, true, 0, nil); err != nil {
			return err
		}
		taken++
	}
	if taken > 0 {
		st.mu.Lock()
		path := ""
		if st.rec != nil {
			path = st.rec.Path
			now := c.now()
			st.rec.Mtime, st.rec.Ctime = now, now
			st.rec.Pending |= pendData
			st.dataChanges++
		}
		err := c.flushBufLocked(st)
		if err == nil && st.rec != nil {
			err = c.persistDataLocked(st)
		}
		st.mu.Unlock()
		if err != nil {
			return err
		}
		c.wb.Add(writeback.Inode(st.ino))
		c.log.Info("cache: took in what a writable mapping wrote to a passthrough file", "path", path, "blocks", taken)
	}
	return b.b.Restamp()
}

func allZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

// lingerBacking keeps a backing file that a mapping may still use (read,
// or write to); checkLingering looks at it again.
func (c *Cache) lingerBacking(b *Backing) {
	c.passMu.Lock()
	c.lingering = append(c.lingering, &lingering{b: b})
	c.passMu.Unlock()
}

// lingering is a backing file that a mapping may still use.
type lingering struct {
	b     *Backing
	fails int // takeIns that failed in a row
}

// lingerMaxFails bounds the looks at a lingering backing file whose
// content cannot be taken in (its object vanished, a block is corrupt):
// about five minutes of group commits.
const lingerMaxFails = 60

// checkLingering takes in what lingering backing files got since the last
// look, and lets go of those no mapping uses any more (all of them where
// the lease probe fails: it cannot tell): after a last full comparison if
// a writer used it, since a mapping's write may not have moved the file's
// mtime. It runs with the group commit.
func (c *Cache) checkLingering(ctx context.Context) {
	c.passMu.Lock()
	list := c.lingering
	c.lingering = nil
	c.passMu.Unlock()
	var keep []*lingering
	for _, l := range list {
		b := l.b
		writers := b.usedByWriter()
		mapped, lerr := b.b.MappedElsewhere()
		if lerr != nil {
			// No telling when the mapping is gone (no leases here):
			// take in what it wrote so far, and let go.
			c.probeFailed(b, writers, lerr)
			mapped = false
		}
		var err error
		switch {
		case !writers:
			// Only readers used it: their mappings wrote nothing.
		case mapped:
			var changed bool
			if changed, err = b.b.ForeignChange(); err == nil && changed {
				err = c.takeIn(ctx, b)
			}
		default:
			err = c.takeIn(ctx, b)
		}
		if err != nil {
			l.fails++
			if l.fails < lingerMaxFails {
				c.log.Warn("cache: what a writable mapping wrote to a passthrough file could not be taken in yet", "path", b.path(), "err", err)
				keep = append(keep, l)
				continue
			}
			c.stats.BackingErrors.Add(1)
			c.log.Error("cache: what a writable mapping wrote to a passthrough file could not be taken in; given up", "path", b.path(), "err", err)
			mapped = false
		} else {
			l.fails = 0
		}
		if mapped {
			keep = append(keep, l)
			continue
		}
		b.b.Release()
		c.release(b.st)
	}
	c.passMu.Lock()
	c.lingering = append(c.lingering, keep...)
	c.passMu.Unlock()
}

// closeLingering takes in, one last time, what lingering backing files
// that a writer used got, as the cache closes; a mapping that writes
// after that is not seen.
// The group commit, which looks at them too, has stopped.
func (c *Cache) closeLingering() {
	c.passMu.Lock()
	list := c.lingering
	c.lingering = nil
	c.passMu.Unlock()
	for _, l := range list {
		if !l.b.usedByWriter() {
			// Only readers used it: their mappings wrote nothing.
		} else if err := c.takeIn(context.Background(), l.b); err != nil {
			c.stats.BackingErrors.Add(1)
			c.log.Error("cache: what a writable mapping wrote to a passthrough file could not be taken in", "path", l.b.path(), "err", err)
		}
		l.b.b.Release()
		c.release(l.b.st)
	}
}

// path is the file's path, for logs.
func (b *Backing) path() string {
	b.st.mu.Lock()
	defer b.st.mu.Unlock()
	if b.st.rec == nil {
		return fmt.Sprintf("(inode %d, removed)", b.st.ino)
	}
	return b.st.rec.Path
}
