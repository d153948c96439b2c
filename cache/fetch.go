package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"github.com/keelfs/keelfs/cache/blocks"
	"github.com/keelfs/keelfs/s3backend"
)

// fetchCall is one block being fetched from S3. Readers that want the same
// block wait for it instead of asking again.
type fetchCall struct {
	done chan struct{}
	data []byte
	err  error
	// refs counts the holders of data: the fetch until it stored the
	// block, and each reader that joined until it released it. The last
	// one returns data to the pool (see releaseCall).
	refs atomic.Int32
}

// newFetchCall returns a call held by its fetch and by that many readers.
func newFetchCall(readers int32) *fetchCall {
	call := &fetchCall{done: make(chan struct{})}
	call.refs.Store(1 + readers)
	return call
}

// releaseCall drops one hold on the call's data.
func (c *Cache) releaseCall(call *fetchCall) {
	if call.refs.Add(-1) == 0 && call.data != nil {
		c.putBlockBuf(call.data)
	}
}

// fetcher tracks blocks in flight and bounds the GETs running at once.
//
// Lock order: fetcher.mu is a leaf.
type fetcher struct {
	mu       sync.Mutex
	inflight map[blocks.ID]*fetchCall // guarded by mu
	sem      chan struct{}            // background GETs running
}

func (c *Cache) fetchState() *fetcher { return &c.fetch }

// fetchBlock returns a clean block from S3 (joining a fetch in flight),
// storing it in the cache on the way.
func (c *Cache) fetchBlock(ctx context.Context, src blockSource) ([]byte, func(), error) {
	f := c.fetchState()
	f.mu.Lock()
	call, ok := f.inflight[src.id]
	if ok {
		call.refs.Add(1) // the fetch drops its hold only once it is out of inflight
	} else {
		call = newFetchCall(1)
		f.inflight[src.id] = call
	}
	f.mu.Unlock()
	if !ok {
		c.runFetch(ctx, src, src.id.Idx, src.id.Idx+1, []*fetchCall{call})
	}
	select {
	case <-call.done:
	case <-ctx.Done():
		return nil, nil, ctx.Err()
	}
	if call.err != nil {
		return nil, nil, call.err
	}
	// Shared, read-only: every reader of a block only copies from it.
	return call.data, func() { c.releaseCall(call) }, nil
}

// prefetchChunk is the most blocks one read-ahead GET asks for.
const prefetchChunk = 8

// prefetch starts fetching the clean, uncached blocks of [start, end) of
// rec in the background, one GET per contiguous range of at most
// prefetchChunk blocks.
func (c *Cache) prefetch(rec *Inode, start, end int64) {
	for _, r := range c.claim(rec, start, end) {
		c.goBackground(func() { c.runBackground(r) })
	}
}

// runBackground runs a claimed fetch in its turn among the background
// fetches.
func (c *Cache) runBackground(r fetchRun) {
	f := c.fetchState()
	select {
	case f.sem <- struct{}{}:
		defer func() { <-f.sem }()
	case <-c.tasks.ctx.Done():
	}
	c.runFetch(c.tasks.ctx, r.src, r.from, r.to, r.calls)
}

// goBackground runs fn as a tracked task. Once the cache is closing, it
// runs fn at once instead, under the ended task context, so that fetches
// already claimed fail rather than leave readers waiting.
func (c *Cache) goBackground(fn func()) {
	if !c.tasks.Go(fn) {
		fn()
	}
}

// failRun ends every call of a claimed run with err, without a request.
func (c *Cache) failRun(r fetchRun, err error) {
	f := c.fetchState()
	for i, call := range r.calls {
		call.err = err
		f.mu.Lock()
		delete(f.inflight, blocks.ID{Ino: r.src.id.Ino, Gen: r.src.id.Gen, Idx: r.from + int64(i)})
		f.mu.Unlock()
		close(call.done)
	}
}

// fetchRun is a contiguous range of blocks of one object version, claimed
// for fetching: readers that want one of them wait for its call.
type fetchRun struct {
	src      blockSource
	from, to int64
	calls    []*fetchCall
}

// claim registers fetches for the clean blocks of [start, end) of rec that
// are neither cached nor in flight, in runs of at most prefetchChunk
// blocks. The caller must run every run it gets.
func (c *Cache) claim(rec *Inode, start, end int64) []fetchRun {
	f := c.fetchState()
	var runs []fetchRun
	cur := fetchRun{from: -1}
	launch := func(upto int64) {
		if cur.from >= 0 {
			cur.to = upto
			runs = append(runs, cur)
		}
		cur = fetchRun{from: -1}
	}
	for idx := start; idx < end; idx++ {
		s := c.sourceOf(rec, idx)
		wanted := !s.hole && !s.dirty && s.key != ""
		if wanted {
			if _, found, err := c.blocks.Lookup(s.id); err != nil || found {
				wanted = false
			}
		}
		var call *fetchCall
		if wanted {
			f.mu.Lock()
			if _, busy := f.inflight[s.id]; busy {
				wanted = false
			} else {
				call = newFetchCall(0)
				f.inflight[s.id] = call
			}
			f.mu.Unlock()
		}
		if !wanted || (cur.from >= 0 && (s.id.Gen != cur.src.id.Gen || idx-cur.from >= prefetchChunk)) {
			launch(idx)
		}
		if wanted {
			if cur.from < 0 {
				cur.from, cur.src = idx, s
			}
			cur.calls = append(cur.calls, call)
		}
	}
	launch(end)
	return runs
}

// randomFillMax is the largest file that random reads fetch whole in the
// background (and at most a quarter of the cache).
const randomFillMax = 2 << 30

// randomFillAfter is how many random reads of a file start that fetch: a
// seek or two (a zip's directory, a video's index) does not.
const randomFillAfter = 4

// fillForRandom fetches the whole of rec into the cache in the background,
// a few chunks at a time, because a file read at random places is likely
// to be read everywhere: one large GET per chunk costs far less than one
// GET per block a reader happens to miss. It stops when the cache closes
// or a chunk fails (a new version, S3 gone).
func (c *Cache) fillForRandom(st *inodeState, rec *Inode) {
	defer func() {
		st.readAhead.mu.Lock()
		st.readAhead.filling = false
		st.readAhead.mu.Unlock()
	}()
	const parallel = 4
	bs := c.opt.BlockSize
	nblocks := (rec.Size + bs - 1) / bs
	for from := int64(0); from < nblocks; from += parallel * prefetchChunk {
		if c.tasks.ctx.Err() != nil {
			return
		}
		runs := c.claim(rec, from, min(from+parallel*prefetchChunk, nblocks))
		var wg sync.WaitGroup
		failed := false
		var mu sync.Mutex
		for _, r := range runs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c.runBackground(r)
				if r.calls[len(r.calls)-1].err != nil {
					mu.Lock()
					failed = true
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		if failed {
			return
		}
	}
}

// runFetch GETs blocks [start, end) of src's object in one ranged request
// and completes their calls. A body cut short is resumed where it broke, a
// few times, before the remaining blocks fail.
func (c *Cache) runFetch(ctx context.Context, src blockSource, start, end int64, calls []*fetchCall) {
	bs := c.opt.BlockSize
	f := c.fetchState()
	forget := func(i int) {
		f.mu.Lock()
		delete(f.inflight, blocks.ID{Ino: src.id.Ino, Gen: src.id.Gen, Idx: start + int64(i)})
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
			buf := c.getBlockBuf()[:n] // pooled: a GiB read is a GiB of garbage otherwise
			if _, err = io.ReadFull(body, buf); err != nil {
				c.putBlockBuf(buf)
				break
			}
			// The waiting readers get the block first; it is stored
			// after, while the call stays in flight, so that a reader
			// arriving in between joins it rather than asking S3 again.
			call := calls[next]
			call.data = buf
			close(call.done)
			c.blocks.StoreClean(blocks.ID{Ino: src.id.Ino, Gen: src.id.Gen, Idx: idx}, buf)
			forget(next)
			c.releaseCall(call)
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

// readAhead follows one file's access pattern: a window that doubles while
// reads are sequential, up to MaxReadAhead, and drops to nothing when the
// reader jumps.
type readAhead struct {
	mu      sync.Mutex
	hi      int64  // the end of the furthest read of the current run
	window  int64  // blocks
	issued  int64  // blocks before this were prefetched
	random  int    // jumps seen, see randomFillAfter
	seqRun  int    // reads in sequence since the last jump
	filling bool   // fillForRandom runs
	filled  uint64 // the ContentVer fillForRandom last ran for, plus one
}

// seqSlack is how far from the furthest read so far a read may start and
// still continue a sequential run: the kernel sends its read-ahead as
// several requests at once, which arrive in any order, so a sequential
// reader's reads land up to a read-ahead window behind or ahead of each
// other (Options.ReadReorder).
func (c *Cache) seqSlack() int64 { return max(2*c.opt.BlockSize, c.opt.ReadReorder) }

// seqRunForgets is how many reads in sequence make earlier jumps forgotten:
// the odd jump of a long sequential read (a seek to the end and back, as
// tar and media players do) must not add up to a whole-file fetch.
const seqRunForgets = 32

func (c *Cache) readAheadFor(st *inodeState, rec *Inode, off, end int64) {
	bs := c.opt.BlockSize
	ra := &st.readAhead
	ra.mu.Lock()
	slack := c.seqSlack()
	sequential := ra.hi > 0 && off >= ra.hi-slack && off <= ra.hi+slack
	if sequential {
		ra.window = min(max(ra.window*2, 2), max(1, c.opt.MaxReadAhead/bs))
		ra.hi = max(ra.hi, end)
		if ra.seqRun++; ra.seqRun >= seqRunForgets {
			ra.random = 0
		}
	} else {
		first := ra.hi == 0 && off == 0
		ra.window, ra.issued, ra.hi, ra.seqRun = 0, 0, end, 0
		if first {
			ra.window = 2 // a read from the start: read ahead at once
		} else {
			ra.random++
		}
		if ra.random >= randomFillAfter && !ra.filling && ra.filled != rec.ContentVer+1 &&
			rec.Size <= min(randomFillMax, c.opt.CacheSize/4) {
			ra.filling, ra.filled = true, rec.ContentVer+1
			defer c.goBackground(func() { c.fillForRandom(st, rec) }) // after ra.mu is released
		}
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
