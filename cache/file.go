package cache

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sync"
	"syscall"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/keelfs/keelfs/cache/blocks"
	"github.com/keelfs/keelfs/cache/writeback"
	"github.com/keelfs/keelfs/s3backend"
)

// writeBuf holds the one block of a file that writes are filling, so that a
// sequential writer costs one block write per block and not one per
// request. It reaches the block store when a write moves to another block,
// on flush, fsync, close, truncate and before an upload.
type writeBuf struct {
	idx    int64
	gen    uint64
	data   []byte // full block size
	pooled bool   // counted in bufferBudget
	// base is the committed block of the open generation the buffer
	// was loaded from (Gen 0: none), with its committed meta; the
	// first same bytes of data are still that block's bytes. A flush
	// that only added bytes after them appends those in place.
	base     blocks.ID
	baseMeta blocks.Meta
	same     int64
	// lazy: data[:same] was never read in; it is base's bytes on disk.
	// A buffer made for an append past the committed end starts so,
	// and fillBufLocked reads them in before anything looks at them.
	lazy bool
}

// fillBufLocked reads a lazy write buffer's committed bytes in from its
// base block (st.mu held; the block store only, never S3).
func (c *Cache) fillBufLocked(st *inodeState) error {
	b := st.buf
	if b == nil || !b.lazy {
		return nil
	}
	data, release, found, err := c.readLocal(blockSource{id: b.base, dirty: true}, nil)
	if err != nil {
		return err
	}
	defer release()
	if !found || int64(len(data)) < b.same {
		return fmt.Errorf("%w: stored block %v behind a write buffer is gone", ErrCorrupt, b.base)
	}
	copy(b.data[:b.same], data)
	b.lazy = false
	return nil
}

// bufferBudget bounds the memory held by write buffers of all files.
type bufferBudget struct {
	mu    sync.Mutex
	limit int64
	used  int64
	pool  sync.Pool
}

func newBufferBudget(limit int64) *bufferBudget { return &bufferBudget{limit: limit} }

// get returns a zeroed block buffer, or nil when the budget is spent (the
// writer then writes through).
func (b *bufferBudget) get(size int64) []byte {
	b.mu.Lock()
	if b.used+size > b.limit {
		b.mu.Unlock()
		return nil
	}
	b.used += size
	b.mu.Unlock()
	if p, ok := b.pool.Get().(*[]byte); ok && int64(len(*p)) == size {
		clear(*p)
		return *p
	}
	return make([]byte, size)
}

func (b *bufferBudget) release(w *writeBuf) {
	if w.pooled {
		b.put(w.data)
	}
}

func (b *bufferBudget) put(buf []byte) {
	b.mu.Lock()
	b.used -= int64(len(buf))
	b.mu.Unlock()
	b.pool.Put(&buf)
}

// Handle is an open file.
type Handle struct {
	c     *Cache
	st    *inodeState
	write bool
	// The content version at open. If another writer's version replaces
	// the file while it is open, this handle keeps reading the version it
	// opened (from the cache, or from S3 while that version is still
	// there) and never a mix of the two.
	ver  uint64
	snap *Inode
}

// OpenResult tells the kernel layer how to treat the open file.
type OpenResult struct {
	// ContentVer identifies the content; the kernel's page cache from an
	// earlier open is valid only while it is unchanged.
	ContentVer uint64
}

// Open opens a file. A clean file whose attributes are older than the TTL
// is revalidated first (HEAD, ETag compare), so an open after another
// mount's upload sees the new content (close-to-open).
func (c *Cache) Open(ctx context.Context, ino uint64, write, trunc bool) (*Handle, OpenResult, error) {
	if write && c.opt.ReadOnly {
		return nil, OpenResult{}, ErrReadOnly
	}
	n, err := c.snapshot(ino)
	if err != nil {
		return nil, OpenResult{}, err
	}
	if n.Kind == KindDir {
		return nil, OpenResult{}, ErrIsDir
	}
	if _, err := c.revalidateOrStale(ctx, n); err != nil {
		return nil, OpenResult{}, err
	}
	if trunc && write {
		if err := c.Truncate(ctx, ino, 0); err != nil {
			return nil, OpenResult{}, err
		}
	}
	st, err := c.acquire(ino)
	if err != nil {
		return nil, OpenResult{}, err
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.rec == nil {
		c.release(st)
		return nil, OpenResult{}, ErrNotExist
	}
	st.handles++
	if write {
		st.writers++
	}
	h := &Handle{c: c, st: st, write: write, ver: st.rec.ContentVer}
	if !write {
		h.snap = st.rec.clone()
	}
	return h, OpenResult{ContentVer: st.rec.ContentVer}, nil
}

// Ino returns the inode number of the open file.
func (h *Handle) Ino() uint64 { return h.st.ino }

// Writable reports whether the file was opened for writing.
func (h *Handle) Writable() bool { return h.write }

// Read reads up to len(dest) bytes at off. It returns fewer only at the end
// of the file.
func (h *Handle) Read(ctx context.Context, dest []byte, off int64) (int, error) {
	if off < 0 {
		return 0, ErrInvalid
	}
	c, st := h.c, h.st
	bs := c.opt.BlockSize
	st.mu.Lock()
	if st.rec == nil {
		st.mu.Unlock()
		return 0, ErrStale
	}
	from := h.sourceLocked()
	if from == nil {
		st.mu.Unlock()
		return 0, ErrStale
	}
	src := from.clone() // read-ahead works on it without the lock
	size := src.Size
	st.mu.Unlock()
	if off >= size || len(dest) == 0 {
		return 0, nil
	}
	end := min(off+int64(len(dest)), size)
	c.noteRead(st)
	c.readAheadFor(st, src, off, end)
	n := 0
	for pos := off; pos < end; {
		idx := pos / bs
		blockOff := pos - idx*bs
		if want := min(end-pos, bs-blockOff); c.readCachedRange(h, idx, blockOff, dest[n:n+int(want)]) {
			n += int(want)
			pos += want
			continue
		}
		data, release, err := c.readBlock(ctx, h, idx)
		if err != nil {
			if errors.Is(err, ErrStale) {
				c.recheckStale(ctx, h)
			}
			// Not a short read: the kernel takes one for the end of the
			// file and would silently cut the file there.
			return 0, err
		}
		want := min(end-pos, bs-blockOff)
		var copied int64
		if blockOff < int64(len(data)) {
			copied = int64(copy(dest[n:n+int(want)], data[blockOff:]))
		}
		clear(dest[n+int(copied) : n+int(want)]) // short block: zeros past its end
		release()
		n += int(want)
		pos += want
	}
	return n, nil
}

// recheckStale runs after a read found the object version it needed gone
// from S3. If the file's record still names that version, another writer
// replaced or deleted the object since this mount last looked (the TTL has
// not run out yet): ask S3 now, so that the next open gets the new version
// (or ENOENT) rather than this same error until the TTL ends.
func (c *Cache) recheckStale(ctx context.Context, h *Handle) {
	st := h.st
	st.mu.Lock()
	rec := st.rec
	if rec == nil || rec.Kind != KindFile || rec.RemoteKey == "" || h.sourceLocked() != rec {
		st.mu.Unlock()
		return
	}
	n := rec.clone()
	st.mu.Unlock()
	if _, err := c.recheck(ctx, st.ino, n); err != nil && !errors.Is(err, ErrNotExist) {
		c.log.Debug("cache: recheck after a stale read", "path", n.Path, "err", err)
	}
}

// endedLocked reports whether a conflict ended h: it was opened before a
// conflict switched the name to the other writer's version (st.mu held).
func (h *Handle) endedLocked() bool { return h.ver < h.st.conflictVer }

// sourceLocked returns the record reads should follow: the live one, or
// the version this handle opened if another writer's replaced it. It is
// nil (ErrStale) for a handle opened before a conflict moved the local
// version to a conflict copy: its snapshot is the version the local edits
// started from, which neither the name nor the copy holds.
func (h *Handle) sourceLocked() *Inode {
	rec := h.st.rec
	if h.endedLocked() {
		return nil
	}
	if rec.ContentVer == h.ver || h.write {
		return rec
	}
	return h.snap
}

// blockSource is where the content of one block comes from.
type blockSource struct {
	id    blocks.ID
	hole  bool // reads as zeros
	dirty bool // must be in the block store
	key   string
	etag  string
	rsize int64
}

func (c *Cache) sourceOf(rec *Inode, idx int64) blockSource {
	run, ok := runAt(rec.Runs, idx)
	if !ok || run.Gen == 0 {
		return blockSource{hole: true}
	}
	return blockSource{id: blocks.ID{Ino: rec.Ino, Gen: run.Gen, Idx: idx}, dirty: run.Dirty,
		key: rec.RemoteKey, etag: rec.ETag, rsize: rec.RemoteSize}
}

// readBlock returns the content of block idx as seen through h. release
// must be called when the caller is done with data.
func (c *Cache) readBlock(ctx context.Context, h *Handle, idx int64) (data []byte, release func(), err error) {
	st := h.st
	var last blockSource
	for attempt := 0; ; attempt++ {
		st.mu.Lock()
		if st.rec == nil {
			st.mu.Unlock()
			return nil, nil, ErrStale
		}
		rec := h.sourceLocked()
		if rec == nil {
			st.mu.Unlock()
			return nil, nil, ErrStale
		}
		if rec == st.rec && st.buf != nil && st.buf.idx == idx {
			if err := c.fillBufLocked(st); err != nil {
				st.mu.Unlock()
				return nil, nil, err
			}
			out := c.getBlockBuf()
			copy(out, st.buf.data)
			st.mu.Unlock()
			return out, func() { c.putBlockBuf(out) }, nil
		}
		src := c.sourceOf(rec, idx)
		live := st // readLocal may follow the live record, not a snapshot
		if rec != st.rec {
			live = nil
		}
		st.mu.Unlock()
		if attempt > 0 && src == last {
			return nil, nil, err // the source did not move: the failure stands
		}
		data, release, err = c.loadBlock(ctx, src, live)
		// A rename's copy and delete can land between working out a
		// clean block's object and fetching it, and a writer can store
		// a dirty block again under a new ID: look again.
		if err == nil || !errors.Is(err, ErrStale) || attempt == 3 {
			return data, release, err
		}
		last = src
	}
}

// readCachedRange serves part of block idx straight from a cached block
// file already verified whole, when that is where the block lives. It
// reports false when the block needs the full path (not cached, being
// written, a hole, or the range runs past the block's data).
func (c *Cache) readCachedRange(h *Handle, idx, off int64, dst []byte) bool {
	st := h.st
	st.mu.Lock()
	if st.rec == nil {
		st.mu.Unlock()
		return false
	}
	rec := h.sourceLocked()
	if rec == nil || (rec == st.rec && st.buf != nil && st.buf.idx == idx) {
		st.mu.Unlock()
		return false
	}
	src := c.sourceOf(rec, idx)
	st.mu.Unlock()
	if src.hole {
		return false
	}
	if !c.blocks.ReadRange(src.id, off, dst) {
		return false
	}
	c.stats.CacheHits.Add(1)
	return true
}

// testHookBlockLookedUp, if set, runs between a block's index lookup and
// the read of its file.
var testHookBlockLookedUp func(blocks.ID)

// readLocal reads a block from the block store; found is false when it is
// not cached (a clean block then comes from S3). It never asks S3, so it
// may be called with the inode's lock held. st, when not nil (and not
// locked by the caller), is the block's inode, whose live record src comes
// from: a writer that stores a dirty block again stores it under a new ID
// and deletes the old one, under st.mu (see flushBufLocked), so a read that
// took the old ID before may find it gone. Under that lock it is told
// apart from a lost block: the block the record names there is read (the
// one src named, or the one that replaced it); if the record no longer
// names a stored block there, the answer is ErrStale (look again).
func (c *Cache) readLocal(src blockSource, st *inodeState) (data []byte, release func(), found bool, err error) {
	meta, found, err := c.blocks.Lookup(src.id)
	if err != nil {
		return nil, nil, false, err
	}
	buf := c.getBlockBuf()
	release = func() { c.putBlockBuf(buf) }
	if found {
		if testHookBlockLookedUp != nil {
			testHookBlockLookedUp(src.id)
		}
		err = c.blocks.Read(src.id, meta, buf)
	}
	if (err != nil || !found) && src.dirty && st != nil {
		st.mu.Lock()
		var cur blockSource
		if st.rec != nil {
			cur = c.sourceOf(st.rec, src.id.Idx)
		}
		if cur.id != src.id {
			if st.rec == nil || cur.hole || !cur.dirty {
				st.mu.Unlock()
				release()
				return nil, nil, false, ErrStale // look again
			}
			// Stored again meanwhile: read the block the record names
			// now, here, where no writer can replace it.
			src = cur
		}
		if meta, found, err = c.blocks.Lookup(src.id); err == nil && found {
			err = c.blocks.Read(src.id, meta, buf)
		}
		st.mu.Unlock()
	}
	switch {
	case err == nil && found:
		c.stats.CacheHits.Add(1)
		return buf[:meta.Len], release, true, nil
	case err == nil && src.dirty:
		release()
		c.log.Error("cache: block of data not yet uploaded is missing", "block", fmt.Sprint(src.id))
		return nil, nil, false, fmt.Errorf("%w: dirty block %v missing", ErrCorrupt, src.id)
	case err == nil:
	case src.dirty:
		release()
		c.log.Error("cache: block of data not yet uploaded is unreadable", "err", err)
		return nil, nil, false, err
	case errors.Is(err, fs.ErrNotExist):
		// The file of a clean block went away between the index lookup
		// and the read: evicted or dropped by another goroutine, which may
		// also have raced a fetch that stored the same block again. Not
		// corruption: forget what is left and fetch it.
		c.log.Debug("cache: cached block vanished; fetching it again", "block", fmt.Sprint(src.id))
		c.deleteBlocks([]blocks.ID{src.id})
	case errors.Is(err, ErrCorrupt):
		c.log.Warn("cache: dropping unreadable cached block", "err", err)
		c.deleteBlocks([]blocks.ID{src.id})
	default:
		release()
		return nil, nil, false, err
	}
	release()
	return nil, nil, false, nil
}

// loadBlock reads a block from the store, or from S3 for a clean block
// that is not cached. st is as for readLocal.
func (c *Cache) loadBlock(ctx context.Context, src blockSource, st *inodeState) ([]byte, func(), error) {
	if src.hole {
		return c.zeroBlock, func() {}, nil // callers never write to it
	}
	data, release, found, err := c.readLocal(src, st)
	if err != nil || found {
		return data, release, err
	}
	if src.key == "" {
		return nil, nil, ErrStale
	}
	c.stats.CacheMisses.Add(1)
	return c.fetchBlock(ctx, src)
}

var blockPool sync.Pool

func (c *Cache) getBlockBuf() []byte {
	if p, ok := blockPool.Get().(*[]byte); ok && int64(len(*p)) == c.opt.BlockSize {
		return *p
	}
	return make([]byte, c.opt.BlockSize)
}

func (c *Cache) putBlockBuf(b []byte) {
	if int64(cap(b)) == c.opt.BlockSize {
		b = b[:cap(b)]
		blockPool.Put(&b)
	}
}

// Write writes data at off. Every byte lands in the block store before the
// next flush, fsync or close returns.
func (h *Handle) Write(ctx context.Context, data []byte, off int64) (int, error) {
	if !h.write {
		return 0, syscall.EBADF
	}
	if off < 0 {
		return 0, ErrInvalid
	}
	if off+int64(len(data)) > s3backend.MaxObjectSize {
		return 0, ErrFileTooBig
	}
	c, st := h.c, h.st
	bs := c.opt.BlockSize
	n := 0
	for n < len(data) {
		pos := off + int64(n)
		idx := pos / bs
		blockOff := pos - idx*bs
		chunk := data[n:min(len(data), n+int(bs-blockOff))]
		patch := func(b []byte) error { copy(b[blockOff:], chunk); return nil }
		mirror := func(f *os.File, size int64) (int64, error) {
			_, err := f.WriteAt(chunk, pos)
			return size, err
		}
		if err := c.writeBlock(ctx, h, st, idx, patch, blockOff, blockOff == 0 && int64(len(chunk)) == bs, pos+int64(len(chunk)), mirror); err != nil {
			if n > 0 {
				break
			}
			return 0, err
		}
		n += len(chunk)
	}
	st.mu.Lock()
	first, live := false, st.rec != nil
	if live {
		now := c.now()
		st.rec.Mtime, st.rec.Ctime = now, now
		first = st.rec.Pending&pendData == 0
		st.rec.Pending |= pendData
		st.dataChanges++
	}
	st.mu.Unlock()
	if live {
		// Every write counts, so that an fsync waits for an upload that
		// holds it, and the upload waits for the writer to pause.
		c.wb.Add(writeback.Inode(st.ino))
	}
	if first {
		c.startFetchAhead(st.ino)
	}
	c.streamAfterWrite(st, off, int64(n))
	return n, nil
}

// writeBlock applies patch to block idx of st's file, in the write buffer,
// and grows the file to growTo if it is shorter. whole says the patch
// overwrites the entire block, so its old content need not be read.
// mirror makes the same change to a backing file in use (see
// contentChangedLocked); nil when the caller does that itself. h is the
// handle written through, if any: one opened before a conflict gets
// ErrStale. (One whose clean version another writer's replaced without a
// conflict writes on into the new one: an O_APPEND writer appends after
// the other's lines.)
func (c *Cache) writeBlock(ctx context.Context, h *Handle, st *inodeState, idx int64, patch func([]byte) error, from int64, whole bool, growTo int64, mirror func(f *os.File, size int64) (int64, error)) error {
	reserved := false
	staleRetries := 0
	var fetched []byte // the block's old content, fetched without the lock
	var fetchedSrc blockSource
	for {
		pooled := false
		st.mu.Lock()
		rec := st.rec
		if rec == nil || (h != nil && h.endedLocked()) {
			// Gone, or (through h) opened before a conflict: another
			// writer's version took the name after a conflict copy
			// saved ours, and a write would land in theirs.
			st.mu.Unlock()
			return ErrStale
		}
		if c.closing.Load() {
			// Close stores every write buffer once, after it set closing
			// (under each inode's lock): a later write would sit in a
			// buffer nothing stores. A lazily detached mount can still
			// send one; it fails rather than vanish.
			st.mu.Unlock()
			return ErrClosed
		}
		if b := st.buf; b != nil && b.idx == idx && b.gen == rec.OpenGen && rec.OpenGen != 0 {
			if st.stream != nil {
				st.stream.touch(idx)
			}
			if from < b.same {
				if err := c.fillBufLocked(st); err != nil {
					st.mu.Unlock()
					return err
				}
			}
			if err := patch(b.data); err != nil {
				st.mu.Unlock()
				return err
			}
			b.same = min(b.same, from)
			rec.Size = max(rec.Size, growTo)
			c.contentChangedLocked(st, mirror)
			st.mu.Unlock()
			return nil
		}
		if st.buf != nil {
			if err := c.flushBufLocked(st); err != nil {
				st.mu.Unlock()
				return err
			}
		}
		src := c.sourceOf(rec, idx)
		// A dirty block of the open generation (or a later one: see
		// flushBufLocked) replaces itself, so it needs no new room.
		inOpenGen := !src.hole && src.dirty && src.id.Gen >= rec.OpenGen && rec.OpenGen != 0
		if !inOpenGen && !reserved {
			// A new dirty block: make room first, without the lock.
			st.mu.Unlock()
			if _, err := c.blocks.Reserve(ctx, uint32(c.opt.BlockSize), true, c.opt.SpaceWait); err != nil {
				return err
			}
			reserved = true
			continue
		}
		var base []byte
		var baseID blocks.ID
		var baseMeta blocks.Meta
		lazy := false
		if !whole && inOpenGen {
			// Stored by this open generation and committed: remember it,
			// so that an append to it need not store it whole, nor, past
			// its end, read it in (see writeBuf).
			if m, ok, err := c.blocks.Lookup(src.id); err == nil && ok {
				baseID, baseMeta, lazy = src.id, m, from >= int64(m.Len)
			}
		}
		if !whole && !src.hole && !lazy {
			// Under the lock the old content comes from the block store
			// only: never from S3 (see readLocal).
			data, release, found, err := c.readLocal(src, nil)
			if err != nil {
				st.mu.Unlock()
				return err
			}
			if !found && fetched != nil && fetchedSrc == src {
				data, release, found = fetched, func() {}, true
			}
			if !found {
				// The old content is only in S3 (never cached, or evicted
				// just now): fetch it without the lock, then start over,
				// since the file may have changed meanwhile. The fetched
				// copy is kept, in case the cache cannot keep it.
				st.mu.Unlock()
				data, release, err := c.loadBlock(ctx, src, nil)
				if err != nil {
					if errors.Is(err, ErrStale) && staleRetries < 3 {
						staleRetries++ // the object may have moved meanwhile: look again
						continue
					}
					return err
				}
				if fetched == nil {
					fetched = c.getBlockBuf()
					defer func() { c.putBlockBuf(fetched) }()
				}
				fetched = fetched[:copy(fetched[:cap(fetched)], data)]
				fetchedSrc = src
				release()
				continue
			}
			if baseID.Gen != 0 && int(baseMeta.Len) != len(data) {
				baseID, baseMeta = blocks.ID{}, blocks.Meta{} // not what was looked up
			}
			base = c.bufMem.get(c.opt.BlockSize)
			pooled = base != nil
			if base == nil {
				base = make([]byte, c.opt.BlockSize)
			}
			copy(base, data)
			release()
		}
		if rec.OpenGen == 0 {
			rec.OpenGen = c.newGen()
		}
		buf := base
		if buf == nil {
			buf = c.bufMem.get(c.opt.BlockSize)
			pooled = buf != nil
			if buf == nil {
				buf = make([]byte, c.opt.BlockSize)
			}
		}
		if err := patch(buf); err != nil {
			if pooled {
				c.bufMem.put(buf)
			}
			st.mu.Unlock()
			return err
		}
		if st.stream != nil {
			st.stream.touch(idx)
		}
		rec.Size = max(rec.Size, growTo)
		c.contentChangedLocked(st, mirror)
		st.buf = &writeBuf{idx: idx, gen: rec.OpenGen, data: buf, pooled: pooled,
			base: baseID, baseMeta: baseMeta, same: min(int64(baseMeta.Len), from), lazy: lazy}
		var err error
		if !pooled {
			// Over the memory budget: write through.
			err = c.flushBufLocked(st)
		}
		st.mu.Unlock()
		return err
	}
}

// testHookFlushCommit, if set, runs inside the transaction that records a
// flushed block, before it commits; an error fails the commit.
var testHookFlushCommit func() error

// freshPlace reports whether the place of a block about to be stored
// whole, now src, holds nothing durable: a hole (or past the file's end),
// or a fresh block of the open generation that no sync has made durable
// yet, nor the one under way. Recover makes such a place a hole again if
// a power cut loses the new block (blocks.Meta). A block of a sealed
// generation may be in S3 already: never fresh.
func (c *Cache) freshPlace(src blockSource, b *writeBuf) (bool, error) {
	switch {
	case src.hole:
		return true, nil
	case !src.dirty || src.id.Gen < b.gen || !c.blocks.Unsynced(src.id):
		return false, nil
	case src.id == b.base:
		return b.baseMeta.Fresh, nil
	}
	m, found, err := c.blocks.Lookup(src.id)
	if err != nil {
		return false, err
	}
	return found && m.Fresh, nil
}

// priorOf says what Recover should leave in the place of a block about
// to be stored whole, now src, if a power cut loses the new block's bytes
// before a sync makes them durable (blocks.Meta): nothing, if the place
// held nothing durable (Fresh); else the block it replaces (Prev), or
// what that one replaced in turn if no sync has begun to make it durable.
// The caller holds blocks.BeginWrite, so that no sync begins before the
// new block is committed, and keeps the named block's file until a sync:
// it retires with the commit (blocks.Replaced), or is held (blocks.Hold).
// A place whose block is not in the cache (S3 holds it) cannot be put
// back: the zero Meta.
func (c *Cache) priorOf(src blockSource, b *writeBuf, epoch uint64) (blocks.Meta, error) {
	fresh, err := c.freshPlace(src, b)
	if err != nil || fresh || src.hole {
		return blocks.Meta{Fresh: fresh}, err
	}
	m, found := b.baseMeta, true
	if src.id != b.base {
		if m, found, err = c.blocks.Lookup(src.id); err != nil || !found {
			return blocks.Meta{}, err
		}
	}
	prev := blocks.Meta{Prev: true, PrevGen: src.id.Gen, PrevLen: m.Len, PrevCRC: m.CRC, Epoch: epoch}
	switch {
	case !c.blocks.Unsynced(src.id):
		// Durable, or the sync under way makes it so: src itself.
	case m.Prev:
		prev.PrevGen, prev.PrevLen, prev.PrevCRC = m.PrevGen, m.PrevLen, m.PrevCRC
	case m.Durable:
		prev.PrevLen, prev.PrevCRC = m.DurableLen, m.DurableCRC
	}
	return prev, nil
}

// flushBufLocked stores the write buffer as a dirty block and records it in
// the block map, in one transaction. st.mu is held.
func (c *Cache) flushBufLocked(st *inodeState) error {
	b := st.buf
	if b == nil {
		return nil
	}
	rec := st.rec
	if rec == nil {
		c.bufMem.release(b)
		st.buf = nil
		return nil
	}
	bs := c.opt.BlockSize
	// Only the part inside the file is stored.
	n := min(bs, max(0, rec.Size-b.idx*bs))
	id := blocks.ID{Ino: rec.Ino, Gen: b.gen, Idx: b.idx}
	// A block this open generation stored before (an earlier close,
	// or the write buffer moving on and coming back) is committed:
	// the record on disk refers to it, and nothing else does (a seal
	// flushes the buffer and starts a new generation, so an upload's
	// snapshot never holds one). The new content must not go over
	// it before the new record commits, or a failed commit, or a
	// kill -9 between the two, would lose what an earlier close
	// acknowledged. It goes under a new generation; the old block
	// leaves the index in the same transaction, and its file once a
	// sync has made that transaction durable (blocks.Replaced).
	var replaced blocks.ID
	src := c.sourceOf(rec, b.idx)
	if !src.hole && src.dirty && src.id.Gen >= b.gen {
		replaced = src.id
	}
	if replaced.Gen != 0 || c.blocks.Taken(id) {
		// Never over a block that is, or may still be, committed:
		// a fresh generation is unique.
		id.Gen = c.newGen()
	}
	var meta blocks.Meta
	err := blocks.ErrNoAppend
	// No sync begins while a block is stored, from what is read of other
	// blocks' sync state until the block is committed and accounted
	// (blocks.BeginWrite): what that said stays true, and Epoch is exact.
	var writing func()
	defer func() {
		if writing != nil {
			writing()
		}
	}()
	if replaced.Gen != 0 && replaced == b.base && b.same >= int64(b.baseMeta.Len) && n >= int64(b.baseMeta.Len) {
		_, writing = c.blocks.BeginWrite()
		// Only bytes after the committed ones changed (a file
		// appended to, closed after each line): add them to the
		// committed block in place. Its committed bytes stay as they
		// are, so the committed record reads them back whatever
		// happens before the new one commits; a failed append or
		// commit leaves bytes past the committed length, which no
		// read looks at. No new file, no rewrite of what is there.
		if meta, err = c.blocks.Append(b.base, b.baseMeta, b.data[:n]); err == nil {
			id, replaced = b.base, blocks.ID{}
		} else {
			if !errors.Is(err, blocks.ErrNoAppend) {
				c.log.Debug("cache: append to a stored block failed; storing it whole", "block", b.base.String(), "err", err)
			}
			writing()
			writing = nil // not while fillBufLocked may wait for S3
		}
	}
	if err != nil {
		if err := c.fillBufLocked(st); err != nil {
			return err
		}
		var epoch uint64
		epoch, writing = c.blocks.BeginWrite()
		prior, err := c.priorOf(src, b, epoch)
		if err != nil {
			return err
		}
		if prior.Prev && replaced.Gen == 0 && prior.PrevGen == src.id.Gen {
			// A clean block (or one of a sealed generation) that stays
			// indexed: kept out of eviction until a sync has made the
			// new one durable.
			c.blocks.Hold(src.id)
		}
		written, err := c.blocks.Write(id, b.data[:n])
		if err != nil {
			return err
		}
		meta = prior
		meta.Len, meta.CRC = written.Len, written.CRC
	}
	old := rec.clone()
	rec.Runs = setBlock(rec.Runs, b.idx, id.Gen, true)
	rec.Runs = truncateRuns(rec.Runs, (rec.Size+bs-1)/bs)
	rec.Pending |= pendData
	err = update(c.db, func(txn *badger.Txn) error {
		if err := c.blocks.Index(txn, id, meta); err != nil {
			return err
		}
		if replaced.Gen != 0 {
			if err := c.blocks.Unindex(txn, replaced); err != nil {
				return err
			}
		}
		if testHookFlushCommit != nil {
			if err := testHookFlushCommit(); err != nil {
				return err
			}
		}
		return c.putInode(txn, old, rec)
	})
	if err != nil {
		rec.Runs = old.Runs
		if id != b.base { // never the committed block appended to
			c.blocks.Discard(id)
		}
		return fmt.Errorf("cache commit: %w", err)
	}
	c.blocks.Added(id, meta.Len, true)
	c.blocks.Trust(id, meta)
	if replaced.Gen != 0 {
		c.blocks.Replaced(replaced)
	}
	c.bufMem.release(b)
	st.buf = nil
	return nil
}

// persistDataLocked stores the record after a data change that did not go
// through a buffer flush (size, mtime).
func (c *Cache) persistDataLocked(st *inodeState) error {
	rec := st.rec
	return update(c.db, func(txn *badger.Txn) error { return c.putInode(txn, nil, rec) })
}

// Truncate sets a file's size. Growing adds a hole; shrinking drops blocks
// past the end and zeroes the tail of the last one.
func (c *Cache) Truncate(ctx context.Context, ino uint64, size int64) error {
	return c.truncate(ctx, nil, ino, size)
}

// Truncate is Cache.Truncate through the handle (ftruncate): one opened
// before a conflict gets ErrStale, as its writes do.
func (h *Handle) Truncate(ctx context.Context, size int64) error {
	return h.c.truncate(ctx, h, h.st.ino, size)
}

func (c *Cache) truncate(ctx context.Context, h *Handle, ino uint64, size int64) error {
	if c.opt.ReadOnly {
		return ErrReadOnly
	}
	if size < 0 {
		return ErrInvalid
	}
	if size > s3backend.MaxObjectSize {
		return ErrFileTooBig
	}
	st, err := c.acquire(ino)
	if err != nil {
		return err
	}
	defer c.release(st)
	bs := c.opt.BlockSize
	st.mu.Lock()
	if st.rec == nil {
		st.mu.Unlock()
		return ErrNotExist
	}
	if st.rec.Kind == KindDir {
		st.mu.Unlock()
		return ErrIsDir
	}
	if st.rec.Kind != KindFile {
		st.mu.Unlock()
		return ErrInvalid
	}
	if h != nil && h.endedLocked() {
		st.mu.Unlock()
		return ErrStale
	}
	oldSize := st.rec.Size
	st.mu.Unlock()
	if size < oldSize && size%bs != 0 {
		// Zero the tail of the new last block, so that growing the file
		// again reads zeros there.
		tail := size % bs
		zero := func(b []byte) error { clear(b[tail:]); return nil }
		// The truncate below cuts the backing file alike.
		if err := c.writeBlock(ctx, h, st, size/bs, zero, tail, false, 0, nil); err != nil {
			return err
		}
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	rec := st.rec
	if rec == nil {
		return ErrNotExist
	}
	if h != nil && h.endedLocked() {
		return ErrStale
	}
	if st.buf != nil && st.buf.idx*bs >= size {
		c.bufMem.release(st.buf)
		st.buf = nil
	}
	if st.stream != nil {
		st.stream.touchFrom(size)
	}
	if size < rec.Size {
		rec.Runs = truncateRuns(rec.Runs, (size+bs-1)/bs)
	} else {
		rec.Runs = extendRuns(rec.Runs, (size+bs-1)/bs)
	}
	rec.Size = size
	c.contentChangedLocked(st, func(f *os.File, size int64) (int64, error) { return size, f.Truncate(size) })
	now := c.now()
	rec.Mtime, rec.Ctime = now, now
	rec.Pending |= pendData
	if err := c.flushBufLocked(st); err != nil {
		return err
	}
	if err := c.persistDataLocked(st); err != nil {
		return err
	}
	st.dataChanges++
	c.wb.Add(writeback.Inode(ino))
	if st.upload == nil {
		c.tasks.Go(func() { c.dropUnusedBlocks(ino) })
	}
	return nil
}

// Allocate implements fallocate: mode 0 grows the file (as a hole, since S3
// has nothing to preallocate); KEEP_SIZE is accepted and does nothing.
func (h *Handle) Allocate(ctx context.Context, off, length int64, mode uint32) error {
	const keepSize = 0x01
	if mode&^keepSize != 0 {
		return syscall.EOPNOTSUPP
	}
	if off < 0 || length <= 0 {
		return ErrInvalid
	}
	if mode&keepSize != 0 {
		return nil
	}
	h.st.mu.Lock()
	size := h.st.rec.Size
	h.st.mu.Unlock()
	if off+length > size {
		return h.Truncate(ctx, off+length)
	}
	return nil
}

// Flush is called at every close of a descriptor. It returns once the
// written data is in the cache's block files and journal, where a crash
// of the process (kill -9, an OOM kill) cannot lose it: the kernel holds
// it and writes it back. It does not wait for the disk: the group commit
// (Options.CommitInterval) makes it durable against a power cut, for all
// the closes of an interval at once. With SyncOnClose, it returns once
// the file is in S3.
func (h *Handle) Flush(ctx context.Context) error {
	if !h.write {
		return nil
	}
	c, st := h.c, h.st
	st.mu.Lock()
	if st.rec == nil {
		st.mu.Unlock()
		return nil
	}
	err := c.flushBufLocked(st)
	if err == nil && st.rec.Pending&pendData != 0 {
		err = c.persistDataLocked(st)
	}
	dirty := st.rec.needsWork()
	st.mu.Unlock()
	if err != nil {
		return err
	}
	if dirty && c.opt.SyncOnClose {
		return c.syncFile(ctx, st)
	}
	return nil
}

// Fsync returns once the file is in S3, or with ErrUploadFailed (or with
// the S3 error, when the credentials may not write).
func (h *Handle) Fsync(ctx context.Context) error {
	c, st := h.c, h.st
	st.mu.Lock()
	if st.rec == nil {
		st.mu.Unlock()
		return nil
	}
	err := c.flushBufLocked(st)
	if err == nil && st.rec.Pending&pendData != 0 {
		err = c.persistDataLocked(st)
	}
	st.mu.Unlock()
	if err != nil {
		return err
	}
	if err := c.blocks.Sync(); err != nil {
		return err
	}
	return c.syncFile(ctx, st)
}

// Release closes the handle. The last release of an unlinked file deletes
// it; the last writer's release starts the write-back clock.
func (h *Handle) Release(ctx context.Context) error {
	c, st := h.c, h.st
	st.mu.Lock()
	var err error
	if st.rec != nil && h.write {
		err = c.flushBufLocked(st)
		if err == nil && st.rec.Pending&pendData != 0 {
			err = c.persistDataLocked(st)
		}
	}
	st.handles--
	if h.write {
		st.writers--
	}
	last := st.handles == 0
	unlinked := st.rec != nil && st.rec.Unlinked
	written := h.write && st.rec != nil && st.rec.needsWork()
	st.mu.Unlock()
	ino := st.ino
	if last && unlinked {
		c.finalizeIfIdle(ino)
	} else if written {
		c.wb.Add(writeback.Inode(ino)) // the write-back delay runs from the close
	}
	if last {
		c.tasks.Go(func() { c.dropUnusedBlocks(ino) })
	}
	c.release(st)
	return err
}

// finalizeIfIdle deletes an unlinked inode once no handle or upload uses
// it. Should that fail, the inode's job finishes it later (see seal).
func (c *Cache) finalizeIfIdle(ino uint64) {
	err := c.transact(txChange, func(t *nsTx) error {
		n, err := t.get(ino)
		if err != nil {
			return errNoChange
		}
		st := t.state(ino)
		if !n.Unlinked || st.handles > 0 || st.upload != nil {
			return errNoChange
		}
		c.finalizeLocked(t, n)
		return nil
	})
	if err != nil {
		c.log.Warn("cache: delete of an unlinked file postponed", "err", err)
		c.wb.AddNow(writeback.Inode(ino))
	}
}

// flushAllBuffers stores every pending write buffer (at Close).
func (c *Cache) flushAllBuffers() {
	c.ns.statesMu.Lock()
	states := make([]*inodeState, 0, len(c.ns.states))
	for _, st := range c.ns.states {
		states = append(states, st)
	}
	c.ns.statesMu.Unlock()
	for _, st := range states {
		st.mu.Lock()
		if st.buf != nil {
			if err := c.flushBufLocked(st); err != nil {
				c.log.Error("cache: store written data at close", "err", err)
			}
		}
		st.mu.Unlock()
	}
}

// dropUnusedBlocks deletes blocks of ino that nothing refers to any more:
// not the block map, not an open handle's version, not an upload in
// flight. Only generations that existed when the block map was read can
// be garbage: a write that starts afterwards gets a newer generation, so
// its blocks are never swept.
func (c *Cache) dropUnusedBlocks(ino uint64) {
	c.ns.statesMu.Lock()
	st := c.ns.states[ino]
	if st != nil {
		st.refs++
	}
	c.ns.statesMu.Unlock()
	var rec *Inode
	upTo := c.ns.seq.Load() // generations handed out from now on are newer
	if st != nil {
		st.mu.Lock()
		if st.rec == nil || st.upload != nil || st.handles > 0 {
			st.mu.Unlock()
			c.release(st)
			return
		}
		rec = st.rec.clone()
		st.mu.Unlock()
		defer c.release(st)
	} else {
		var err error
		if rec, err = c.loadInode(ino); err != nil {
			if errors.Is(err, ErrNotExist) {
				c.dropBlocks(ino, nil, ^uint64(0))
			}
			return
		}
	}
	keep := gensOf(rec.Runs)
	keep[rec.OpenGen] = true
	c.dropBlocks(ino, keep, upTo)
}

// dropBlocks deletes the blocks of ino whose generation is at most upTo
// and not in keep (all of them, and its backing file, when keep is nil).
// A failure leaves them for the next start-up, which deletes blocks no
// record refers to; it is logged.
func (c *Cache) dropBlocks(ino uint64, keep map[uint64]bool, upTo uint64) {
	if keep == nil {
		c.blocks.Stale(ino) // the inode is gone
	}
	if err := c.blocks.DropInode(ino, keep, upTo); err != nil {
		c.log.Warn("cache: drop unused blocks", "err", err)
	}
}

// deleteBlocks deletes blocks found unreadable or vanished; see dropBlocks
// for a failure.
func (c *Cache) deleteBlocks(ids []blocks.ID) {
	if err := c.blocks.Delete(ids); err != nil {
		c.log.Warn("cache: delete blocks", "err", err)
	}
}
