package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/keelfs/keelfs/s3backend"
)

// fetchCall is one block being fetched from S3. Readers that want the same
// block wait for it instead of asking again.
type fetchCall struct {
	done chan struct{}
	data []byte
	err  error
}

// fetcher tracks blocks in flight and bounds the GETs running at once.
type fetcher struct {
	mu       sync.Mutex
	inflight map[blockID]*fetchCall
	sem      chan struct{}
}

func (c *Cache) fetchState() *fetcher {
	c.fetchOnce.Do(func() {
		c.fetch = &fetcher{inflight: make(map[blockID]*fetchCall), sem: make(chan struct{}, 16)}
	})
	return c.fetch
}

// fetchBlock returns a clean block from S3 (joining a fetch in flight),
// storing it in the cache on the way.
func (c *Cache) fetchBlock(ctx context.Context, src blockSource) ([]byte, func(), error) {
	f := c.fetchState()
	f.mu.Lock()
	call, ok := f.inflight[src.id]
	if !ok {
		call = &fetchCall{done: make(chan struct{})}
		f.inflight[src.id] = call
	}
	f.mu.Unlock()
	if !ok {
		c.runFetch(ctx, src, src.id.idx, src.id.idx+1, []*fetchCall{call})
	}
	select {
	case <-call.done:
	case <-ctx.Done():
		return nil, nil, ctx.Err()
	}
	if call.err != nil {
		return nil, nil, call.err
	}
	out := c.getBlockBuf()
	n := copy(out, call.data)
	return out[:n], func() { c.putBlockBuf(out) }, nil
}

// prefetchChunk is the most blocks one read-ahead GET asks for.
const prefetchChunk = 8

// prefetch starts fetching the clean, uncached blocks of [start, end) of
// rec in the background, one GET per contiguous range of at most
// maxChunk blocks.
func (c *Cache) prefetch(rec *Inode, start, end int64) {
	const maxChunk = prefetchChunk
	f := c.fetchState()
	var (
		runStart int64 = -1
		src      blockSource
		calls    []*fetchCall
	)
	launch := func(upto int64) {
		if runStart < 0 {
			return
		}
		s, cs := src, calls
		from := runStart
		go func() {
			f.sem <- struct{}{}
			defer func() { <-f.sem }()
			c.runFetch(context.Background(), s, from, upto, cs)
		}()
		runStart, calls = -1, nil
	}
	for idx := start; idx < end; idx++ {
		s := c.sourceOf(rec, idx)
		wanted := !s.hole && !s.dirty && s.key != ""
		if wanted {
			if _, found, err := c.blockMeta(s.id); err != nil || found {
				wanted = false
			}
		}
		var call *fetchCall
		if wanted {
			f.mu.Lock()
			if _, busy := f.inflight[s.id]; busy {
				wanted = false
			} else {
				call = &fetchCall{done: make(chan struct{})}
				f.inflight[s.id] = call
			}
			f.mu.Unlock()
		}
		if !wanted || (runStart >= 0 && (s.id.gen != src.id.gen || idx-runStart >= maxChunk)) {
			launch(idx)
		}
		if wanted {
			if runStart < 0 {
				runStart, src = idx, s
			}
			calls = append(calls, call)
		}
	}
	launch(end)
}

// runFetch GETs blocks [start, end) of src's object in one ranged request
// and completes their calls. A body cut short is resumed where it broke, a
// few times, before the remaining blocks fail.
func (c *Cache) runFetch(ctx context.Context, src blockSource, start, end int64, calls []*fetchCall) {
	bs := c.opt.BlockSize
	f := c.fetchState()
	forget := func(i int) {
		f.mu.Lock()
		delete(f.inflight, blockID{src.id.ino, src.id.gen, start + int64(i)})
		f.mu.Unlock()
	}
	finish := func(i int, data []byte, err error) {
		call := calls[i]
		call.data, call.err = data, err
		forget(i)
		close(call.done)
	}
	next := 0 // index into calls of the first block not finished
	var lastErr error
	for attempt := 0; attempt < 4 && next < len(calls); attempt++ {
		off := (start + int64(next)) * bs
		length := min(end*bs, src.rsize) - off
		if length <= 0 {
			for ; next < len(calls); next++ {
				finish(next, nil, fmt.Errorf("%w: block past the end of %q", ErrStale, src.key))
			}
			return
		}
		body, err := c.store.Get(ctx, src.key, off, length, src.etag)
		if err != nil {
			lastErr = err
			if !s3backend.IsRetryable(err) {
				break
			}
			continue
		}
		for next < len(calls) {
			idx := start + int64(next)
			n := min(bs, src.rsize-idx*bs)
			buf := make([]byte, n)
			if _, err = io.ReadFull(body, buf); err != nil {
				break
			}
			// The waiting readers get the block first; it is stored
			// after, while the call stays in flight, so that a reader
			// arriving in between joins it rather than asking S3 again.
			call := calls[next]
			call.data = buf
			close(call.done)
			c.storeClean(blockID{src.id.ino, src.id.gen, idx}, buf)
			forget(next)
			next++
		}
		body.Close()
		if err != nil {
			lastErr = err
			c.log.Warn("cache: read from s3 broke off; resuming", "key", src.key, "err", err)
		}
	}
	if next < len(calls) {
		err := lastErr
		if errors.Is(err, s3backend.ErrPrecondition) || errors.Is(err, s3backend.ErrNotFound) {
			err = fmt.Errorf("%w: %q changed in s3 while it was read: %v", ErrStale, src.key, lastErr)
		}
		for ; next < len(calls); next++ {
			finish(next, nil, err)
		}
	}
}

// storeClean caches a block fetched from S3, if there is room.
func (c *Cache) storeClean(id blockID, data []byte) {
	ok, err := c.blocks.reserve(context.Background(), uint32(len(data)), false, 0)
	if err != nil || !ok {
		return
	}
	meta, err := c.blocks.write(id, data)
	if err != nil {
		c.log.Warn("cache: store block", "err", err)
		return
	}
	err = update(c.db, func(txn *badger.Txn) error {
		return txn.Set(blockKey(id.ino, id.gen, id.idx), meta.marshal())
	})
	if err != nil {
		c.blocks.removeFile(id)
		c.log.Warn("cache: index block", "err", err)
		return
	}
	c.blocks.added(id, meta.Len, false)
	c.blocks.trust(id, meta)
}

// readAhead follows one file's access pattern: a window that doubles while
// reads are sequential, up to MaxReadAhead, and drops to nothing at the
// first random access.
type readAhead struct {
	mu     sync.Mutex
	next   int64 // where a sequential reader reads next
	window int64 // blocks
	issued int64 // blocks before this were prefetched
}

func (c *Cache) readAheadFor(st *inodeState, rec *Inode, off, end int64) {
	bs := c.opt.BlockSize
	ra := &st.readAhead
	ra.mu.Lock()
	// Kernel read-ahead sends reads slightly out of order: tolerate that.
	sequential := off <= ra.next+2*bs && off+2*bs >= ra.next
	if sequential {
		ra.window = min(max(ra.window*2, 2), max(1, c.opt.MaxReadAhead/bs))
	} else {
		ra.window, ra.issued = 0, 0
	}
	ra.next = max(end, off)
	if !sequential {
		ra.next = end
	}
	nblocks := (rec.Size + bs - 1) / bs
	cur := (end - 1) / bs
	from := max(ra.issued, cur+1)
	to := min(cur+1+ra.window, nblocks)
	// Issue whole GETs: wait until a full chunk (or half a small window)
	// is due, unless the window reaches the end of the file. Topping the
	// window up by the one block each read moved on would cost one small
	// GET per block, and S3 (and the CPU) pay per request.
	due := min(prefetchChunk, max(1, ra.window/2))
	if ra.window == 0 || from >= to || (to-from < due && to < nblocks) {
		ra.mu.Unlock()
		return
	}
	ra.issued = to
	ra.mu.Unlock()
	c.prefetch(rec, from, to)
}
