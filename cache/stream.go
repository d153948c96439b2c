package cache

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"mime"
	"path"
	"runtime"
	"sync"
	"time"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/keelfs/keelfs/cache/blocks"
	"github.com/keelfs/keelfs/s3backend"
)

// A stream uploads the parts of a file while it is still being written, so
// that when the writer closes only the tail is left to send.
//
// A part is sent once a writer has moved past its end and every block in
// it is new data (nothing to copy server-side). The parts go into a
// multipart upload at the file's key, created with the headers of that
// moment. Every change to a part's bytes (a write, a truncate) bumps the
// part's version, and a sent part counts only if its version when the
// file is sealed is the one it was read at. The sealed upload then sends
// only the parts still missing and completes the multipart upload. When
// the stream cannot be used (renamed, shrunk, the part size had to grow, a
// conflict), it is aborted and the file is uploaded as usual: a stream only
// saves work, it never decides what lands in S3.
//
// S3 fixes an object's headers when the multipart upload is created, before
// the final mtime is known. When the sealed headers differ, the upload is
// followed by a server-side copy that rewrites them (pendMeta).
//
// The upload ID is recorded under u<ino><id> before the first part is
// sent, so a crash leaves nothing behind: the next Open aborts it.
type stream struct {
	c      *Cache
	st     *inodeState // the stream holds a reference to it
	key    string
	token  string
	ps     int64
	meta   s3backend.Metadata
	ct     string
	ctx    context.Context
	cancel context.CancelFunc

	// sealed is closed when an upload takes the stream over: parts still
	// waiting for a slot are left to it, which sends them at full speed.
	sealed chan struct{}
	once   sync.Once      // creates the multipart upload
	id     string         // "" until created, or if that failed
	wg     sync.WaitGroup // workers

	// Guarded by st.mu.
	vers    map[int64]uint64 // bumped whenever part p's bytes change
	sent    map[int64]bool   // parts queued
	queue   []int64          // parts waiting for a worker
	workers int              // goroutines sending s's parts

	mu   sync.Mutex
	done map[int64]streamPart
}

type streamPart struct {
	etag string
	ver  uint64 // the part's version when it was read
}

func streamKey(ino uint64, id string) []byte {
	return append(inoKey(pStream, ino), id...)
}

// touch notes that the bytes of block idx change (st.mu held).
func (s *stream) touch(idx int64) {
	s.vers[idx*s.c.opt.BlockSize/s.ps]++
}

// touchFrom notes that every part from the one holding byte off on
// changes, as a truncate to off does (st.mu held).
func (s *stream) touchFrom(off int64) {
	first := off / s.ps
	for p := range s.sent {
		if p >= first {
			s.vers[p]++
		}
	}
}

// streamAfterWrite starts sending the parts a write of [off, off+n) moved
// past: those whose end is a boundary the write covers. A sequential
// writer so starts each part exactly once, as it begins the next one.
func (c *Cache) streamAfterWrite(st *inodeState, off, n int64) {
	if n <= 0 {
		return
	}
	ps := c.opt.PartSize
	b := max(ps, (off+ps-1)/ps*ps)
	for ; b < off+n; b += ps {
		c.startStreamPart(st, b/ps-1)
	}
}

// startStreamPart queues part p of st's file to be sent in the background
// if it can be streamed.
func (c *Cache) startStreamPart(st *inodeState, p int64) {
	st.mu.Lock()
	defer st.mu.Unlock()
	rec := st.rec
	ps := c.opt.PartSize
	if rec == nil || rec.Kind != KindFile || rec.Unlinked || rec.ConflictKey != "" || rec.Path == "" ||
		st.upload != nil || st.writers == 0 || rec.Size <= (p+1)*ps {
		return
	}
	if s := st.stream; s != nil && (s.sent[p] || s.key != rec.expectedKey()) {
		return
	}
	if !c.allNew(rec, p) {
		return // the sealed upload copies or fills it
	}
	s := st.stream
	if s == nil {
		s = c.newStream(st, rec)
		st.stream = s
	}
	s.sent[p] = true
	s.queue = append(s.queue, p)
	if s.workers >= streamWorkers(c) {
		return
	}
	s.workers++
	s.wg.Add(1)
	if !c.tasks.Go(func() {
		defer s.wg.Done()
		c.streamWorker(s)
	}) {
		s.workers--
		s.wg.Done()
	}
}

// allNew reports whether every block of part p is written data, none a
// hole or unchanged from the object.
func (c *Cache) allNew(rec *Inode, p int64) bool {
	ps, bs := c.opt.PartSize, c.opt.BlockSize
	for idx := p * ps / bs; idx < (p+1)*ps/bs; idx++ {
		r, ok := runAt(rec.Runs, idx)
		if !ok || !r.Dirty || r.Gen == 0 {
			return false
		}
	}
	return true
}

// newStream starts a stream for st's file (st.mu held). It takes a
// reference to st, so that the state (and the stream in it) lives until
// the stream is used or dropped.
func (c *Cache) newStream(st *inodeState, rec *Inode) *stream {
	c.ns.statesMu.Lock()
	st.refs++
	c.ns.statesMu.Unlock()
	key := rec.expectedKey()
	ct := mime.TypeByExtension(path.Ext(key))
	if ct == "" {
		ct = s3backend.FileContentType
	}
	token := newToken()
	s := &stream{c: c, st: st, key: key, token: token, ps: c.opt.PartSize, meta: headersOf(rec, token), ct: ct,
		sealed: make(chan struct{}), vers: make(map[int64]uint64), sent: make(map[int64]bool), done: make(map[int64]streamPart)}
	s.ctx, s.cancel = context.WithCancel(c.tasks.ctx)
	return s
}

// streamSlots bounds the parts sent while files are written.
func (c *Cache) streamSlots() chan struct{} {
	c.rc.streamOnce.Do(func() { c.rc.streamSem = make(chan struct{}, streamWorkers(c)) })
	return c.rc.streamSem
}

// streamWorkers is how many parts go up at once while files are written:
// half of what an upload gets, and one per two CPUs. The writer comes
// first; the stream should take the CPU the writer leaves idle, not slow
// it. (2 CPUs, 1 GiB written against a local server: with 2 parts at once
// the write took 2.9-3.1 s and reached S3 after 4.2-4.5 s; with 1, 2.0 s
// and 3.8 s.)
func streamWorkers(c *Cache) int { return max(1, min(c.opt.MaxParts/2, runtime.NumCPU()/2)) }

// streamWorker sends queued parts of s until the queue is empty or the
// stream ends. Each part is read as it is when its turn comes; its
// version is taken at that moment, under the same lock as the content.
func (c *Cache) streamWorker(s *stream) {
	st := s.st
	sem := c.streamSlots()
	for {
		st.mu.Lock()
		if len(s.queue) == 0 || st.stream != s || st.rec == nil {
			s.workers--
			st.mu.Unlock()
			return
		}
		p := s.queue[0]
		s.queue = s.queue[1:]
		st.mu.Unlock()
		select {
		case sem <- struct{}{}:
		case <-s.ctx.Done():
			return
		case <-s.sealed:
			return // what is left goes with the upload, at full speed
		}
		ok := c.sendStreamPart(s, p)
		<-sem
		if !ok {
			return
		}
	}
}

// sendStreamPart uploads part p as it is now. It returns false when the
// stream is over (detached, or its multipart upload could not be made).
func (c *Cache) sendStreamPart(s *stream, p int64) bool {
	st := s.st
	st.mu.Lock()
	if st.stream != s || st.rec == nil {
		st.mu.Unlock()
		return false
	}
	bs := c.opt.BlockSize
	if b := st.buf; b != nil && b.idx*bs < (p+1)*s.ps && (b.idx+1)*bs > p*s.ps {
		if err := c.flushBufLocked(st); err != nil {
			st.mu.Unlock()
			return true // the writer sees this error itself; try the next part
		}
	}
	ver, snap := s.vers[p], st.rec.clone()
	st.mu.Unlock()
	s.once.Do(s.create)
	if s.id == "" || s.ctx.Err() != nil {
		return false
	}
	pctx, cancel := context.WithCancelCause(s.ctx)
	defer cancel(nil)
	body := c.newSnapReader(pctx, snap, p*s.ps, s.ps)
	body.st, body.sent, body.abort = st, new([]blocks.ID), cancel
	etag, err := c.store.UploadPart(pctx, s3backend.UploadPartInput{Key: s.key, UploadID: s.id,
		Part: int32(p + 1), Body: body, Size: s.ps})
	err = body.bodyErr(err)
	body.drop()
	if err == nil {
		body.dropPages()
	}
	if err != nil {
		if s.ctx.Err() == nil {
			c.log.Debug("cache: early part not sent; the upload will send it", "key", s.key, "part", p+1, "err", err)
		}
		return true
	}
	c.stats.PartsStreamed.Add(1)
	s.mu.Lock()
	s.done[p] = streamPart{etag: etag, ver: ver}
	s.mu.Unlock()
	return true
}

// create starts the multipart upload and records it for crash recovery.
// On failure s.id stays "": the upload after close then sends every part.
func (s *stream) create() {
	c := s.c
	id, err := c.store.CreateMultipart(s.ctx, s.key, s.meta, s.ct)
	if err == nil {
		err = update(c.db, func(txn *badger.Txn) error { return txn.Set(streamKey(s.st.ino, id), []byte(s.key)) })
		if err == nil {
			s.id = id
			return
		}
		// Unrecorded, a crash would leave it behind: do without.
		c.abortStreamUpload(s.st.ino, s.key, id)
	}
	if s.ctx.Err() == nil {
		c.log.Debug("cache: no early upload; the upload after close sends every part", "key", s.key, "err", err)
	}
}

// abortStreamUpload hands a stream's multipart upload to the aborter
// (abort.go): its record becomes an abort record, in one transaction, so
// that a refusal for good is named once and let go, and other failures
// back off. If that cannot be written, the abort is tried here once.
func (c *Cache) abortStreamUpload(ino uint64, key, id string) {
	err := update(c.db, func(txn *badger.Txn) error {
		if err := txn.Set(abortKey(key, id), nil); err != nil {
			return err
		}
		return txn.Delete(streamKey(ino, id))
	})
	if err == nil {
		c.sweepAborts()
		return
	}
	ctx, cancel := context.WithTimeout(c.tasks.ctx, 30*time.Second)
	defer cancel()
	if aerr := c.store.AbortMultipart(ctx, key, id); aerr != nil && c.tasks.ctx.Err() == nil {
		c.log.Warn("cache: early upload neither recorded to abort nor aborted; the next mount retries if it is recorded",
			"key", key, "upload_id", id, "err", errors.Join(err, aerr))
	}
}

// dropStream gives up on a detached stream: parts in flight stop, the
// multipart upload is aborted and the state reference is returned. It
// does not block, so it may be called with locks held.
func (c *Cache) dropStream(s *stream) {
	s.cancel()
	if !c.tasks.Go(func() {
		defer c.release(s.st)
		s.wg.Wait()
		if s.id != "" {
			c.abortStreamUpload(s.st.ino, s.key, s.id)
		}
	}) {
		// Closing: the record stays; the next Open aborts the upload.
		c.release(s.st)
	}
}

// usable reports whether the sealed plan can complete the stream's
// multipart upload (nsMu and st.mu held).
func (s *stream) usable(rec *Inode, p *uploadPlan) bool {
	c := s.c
	return rec.Kind == KindFile && !p.conflict && !p.copyOnly && p.target == s.key &&
		rec.Size > c.opt.PartSize && c.partSizeFor(rec.Size) == s.ps
}

// finishStream waits for the parts in flight and hands over the stream's
// multipart upload: its ID (recorded in the inode instead of the stream
// record) and the parts that still hold the sealed content. id is "" when
// the stream never got an upload. An error means the hand-over could not
// be recorded: the stream's upload stays recorded for the next Open to
// abort, and the attempt fails. So it does when ctx (the attempt's) ends
// first: the parts in flight are cut short rather than waited for (a stop
// waited for them past --shutdown-timeout, for as long as S3 took to
// answer them: ten minutes into a black hole).
func (c *Cache) finishStream(ctx context.Context, st *inodeState, p *uploadPlan) (id string, parts map[int64]string, err error) {
	s := p.stream
	close(s.sealed)
	stop := context.AfterFunc(ctx, s.cancel)
	s.wg.Wait()
	stop()
	if err := ctx.Err(); err != nil {
		return "", nil, err
	}
	if s.id == "" {
		return "", nil, nil
	}
	parts = make(map[int64]string)
	s.mu.Lock()
	for i, sp := range s.done {
		if v := p.streamVers[i]; v == sp.ver && (i+1)*s.ps <= p.snap.Size {
			parts[i] = sp.etag
		}
	}
	s.mu.Unlock()
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.rec == nil {
		return "", nil, ErrNotExist
	}
	old := st.rec.clone()
	st.rec.UploadID = s.id
	err = update(c.db, func(txn *badger.Txn) error {
		if err := txn.Delete(streamKey(st.ino, s.id)); err != nil {
			return err
		}
		return c.putInode(txn, old, st.rec)
	})
	if err != nil {
		st.rec.UploadID = old.UploadID
		return "", nil, fmt.Errorf("cache commit: record multipart upload: %w", err)
	}
	c.stats.PartsReused.Add(int64(len(parts)))
	return s.id, parts, nil
}

// endStream returns the reference a used stream held.
func (c *Cache) endStream(s *stream) {
	s.cancel()
	c.release(s.st)
}

// headersStale reports whether the stream's upload was created with other
// headers than the sealed file has.
func (p *uploadPlan) headersStale() bool {
	return p.stream != nil && !maps.Equal(p.stream.meta, headersOf(p.snap, p.token))
}

// abortOrphanStreams hands the early uploads a previous run left behind
// (it stopped while files were being written) to the aborter.
func (c *Cache) abortOrphanStreams() error {
	type orphan struct {
		ino     uint64
		key, id string
	}
	var list []orphan
	err := c.db.View(func(txn *badger.Txn) error {
		pre := []byte{pStream}
		it := txn.NewIterator(badger.IteratorOptions{Prefix: pre, PrefetchValues: true})
		defer it.Close()
		for it.Seek(pre); it.ValidForPrefix(pre); it.Next() {
			k := it.Item().Key()
			if len(k) <= 9 {
				continue
			}
			v, err := it.Item().ValueCopy(nil)
			if err != nil {
				return err
			}
			list = append(list, orphan{ino: binary.BigEndian.Uint64(k[1:9]), key: string(v), id: string(k[9:])})
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, o := range list {
		c.abortStreamUpload(o.ino, o.key, o.id)
	}
	return nil
}
