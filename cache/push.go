package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"path"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/keelfs/keelfs/cache/blocks"
	"github.com/keelfs/keelfs/s3backend"
)

// push does the S3 side of a plan. No lock is held.
func (c *Cache) push(ctx context.Context, st *inodeState, p *uploadPlan) (string, error) {
	snap := p.snap
	meta := headersOf(snap, p.token)
	switch {
	case snap.Kind == KindDir:
		return c.store.Put(ctx, s3backend.PutInput{Key: p.target, Body: strings.NewReader(""), Metadata: meta,
			ContentType: s3backend.DirContentType, Cond: p.cond})
	case snap.Kind.isSpecial():
		return c.store.Put(ctx, s3backend.PutInput{Key: p.target, Body: strings.NewReader(""), Metadata: meta,
			ContentType: s3backend.FileContentType, Cond: p.cond})
	case snap.Kind == KindSymlink:
		target, err := c.symlinkTarget(ctx, snap)
		if err != nil {
			return "", err
		}
		return c.store.Put(ctx, s3backend.PutInput{Key: p.target, Body: strings.NewReader(target), Size: int64(len(target)),
			Metadata: meta, ContentType: s3backend.FileContentType, Cond: p.cond})
	case p.copyOnly:
		return c.copyObject(ctx, p, meta)
	}
	ct := mime.TypeByExtension(path.Ext(p.target))
	if ct == "" {
		ct = s3backend.FileContentType
	}
	if snap.Size <= c.opt.PartSize {
		pctx, cancel := context.WithCancelCause(ctx)
		defer cancel(nil)
		body := c.newSnapReader(pctx, snap, 0, snap.Size)
		body.abort = cancel
		etag, err := c.store.Put(pctx, s3backend.PutInput{Key: p.target, Body: body,
			Size: snap.Size, Metadata: meta, ContentType: ct, Cond: p.cond})
		return etag, body.bodyErr(err)
	}
	return c.uploadMultipart(ctx, st, p, meta, ct)
}

// copyObject gives an object a new name or new headers server-side. The
// source's other user metadata and content type are kept.
func (c *Cache) copyObject(ctx context.Context, p *uploadPlan, meta s3backend.Metadata) (string, error) {
	snap := p.snap
	info, err := c.store.Head(ctx, snap.RemoteKey)
	if errors.Is(err, s3backend.ErrNotFound) {
		return "", fmt.Errorf("%w: %q is gone from s3", ErrStale, snap.RemoteKey)
	}
	if err != nil {
		return "", err
	}
	if info.ETag != snap.ETag {
		return "", &sourceChanged{info: info}
	}
	merged := s3backend.Metadata{}
	for k, v := range info.Metadata {
		merged[k] = v
	}
	if !snap.AttrsKnown {
		// Keep the source's own attribute headers; only mark the copy.
		merged[metaUpload] = p.token
	} else {
		// keelfs's own headers are replaced whole: one that is gone
		// (the last extended attribute removed) must not survive.
		for _, k := range ownedHeaders {
			delete(merged, k)
		}
		for k, v := range meta {
			merged[k] = v
		}
	}
	etag, err := c.store.Copy(ctx, s3backend.CopyInput{Src: snap.RemoteKey, SrcETag: snap.ETag, SrcSize: info.Size,
		Dst: p.target, Metadata: merged, ContentType: info.ContentType, Cond: p.cond})
	return etag, c.keepUploadLeft(err)
}

// sourceChanged: the object to copy was replaced by another writer since
// this mount last saw it.
type sourceChanged struct{ info s3backend.ObjectInfo }

func (e *sourceChanged) Error() string {
	return fmt.Sprintf("%q changed in s3 before it could be copied", e.info.Key)
}

func (c *Cache) symlinkTarget(ctx context.Context, n *Inode) (string, error) {
	if n.Target != "" || n.RemoteKey == "" {
		return n.Target, nil
	}
	body, err := c.store.Get(ctx, n.RemoteKey, 0, -1, n.ETag)
	if err != nil {
		return "", err
	}
	defer body.Close()
	b, err := io.ReadAll(io.LimitReader(body, 4096))
	return string(b), err
}

// partSizeFor grows the part size until the file fits in 10 000 parts.
func (c *Cache) partSizeFor(size int64) int64 {
	ps := c.opt.PartSize
	for (size+ps-1)/ps > s3backend.MaxParts {
		ps *= 2
	}
	return min(ps, s3backend.MaxPartSize)
}

// uploadMultipart uploads a large file in parts, MaxParts at a time. Parts
// whose blocks are all unchanged from the object the file came from are
// copied server-side (UploadPartCopy), so appending to a big file sends
// only its tail.
func (c *Cache) uploadMultipart(ctx context.Context, st *inodeState, p *uploadPlan, meta s3backend.Metadata, ct string) (string, error) {
	snap := p.snap
	ps := c.partSizeFor(snap.Size)
	var id string
	var early map[int64]string
	if p.stream != nil {
		var err error
		if id, early, err = c.finishStream(ctx, st, p); err != nil {
			return "", err
		}
		p.usedStream = id != ""
	}
	if id == "" {
		var err error
		if id, err = c.store.CreateMultipart(ctx, p.target, meta, ct); err != nil {
			return "", err
		}
		if err := c.setUploadID(st, id); err != nil {
			if !c.abortMultipart(context.Background(), p.target, id) { // unrecorded: now or never
				c.log.Warn("cache: multipart upload not aborted; the bucket's lifecycle rules remove it", "key", p.target)
			}
			return "", err
		}
	}
	nparts := int((snap.Size + ps - 1) / ps)
	parts := make([]s3backend.CompletedPart, nparts)
	for i, etag := range early {
		parts[i] = s3backend.CompletedPart{Part: int32(i + 1), ETag: etag}
	}
	var (
		mu       sync.Mutex
		firstErr error
		wg       sync.WaitGroup
		sem      = make(chan struct{}, c.opt.MaxParts)
	)
	pctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for i := 0; i < nparts; i++ {
		if parts[i].ETag != "" {
			continue // sent while the file was written
		}
		sem <- struct{}{}
		if pctx.Err() != nil {
			<-sem
			break
		}
		wg.Add(1)
		go func(i int) {
			defer func() { <-sem; wg.Done() }()
			off := int64(i) * ps
			l := min(ps, snap.Size-off)
			var etag string
			var err error
			if !p.conflict && c.rangeClean(snap, off, l) {
				etag, err = c.store.UploadPartCopy(pctx, s3backend.UploadPartCopyInput{Key: p.target, UploadID: id,
					Part: int32(i + 1), Src: snap.RemoteKey, SrcETag: snap.ETag, Off: off, Length: l})
				if sourceGone(err) || c.rangeOutlived(pctx, snap, err) {
					// The 412 (or 404) is the source's: the version the
					// edit started from is gone. Never the target's, whose
					// condition only CompleteMultipartUpload checks.
					err = &baseChanged{err: err}
				}
			} else {
				body := c.newSnapReader(pctx, snap, off, l)
				body.abort = func(error) { cancel() }
				body.sent = new([]blocks.ID)
				etag, err = c.store.UploadPart(pctx, s3backend.UploadPartInput{Key: p.target, UploadID: id,
					Part: int32(i + 1), Body: body, Size: l})
				if err = body.bodyErr(err); err == nil {
					body.dropPages()
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if firstErr == nil {
					firstErr = err
					cancel()
				}
				return
			}
			parts[i] = s3backend.CompletedPart{Part: int32(i + 1), ETag: etag}
		}(i)
	}
	wg.Wait()
	if firstErr == nil && pctx.Err() != nil {
		firstErr = pctx.Err()
	}
	if firstErr == nil {
		etag, err := c.store.CompleteMultipart(ctx, p.target, id, parts, p.cond)
		if err == nil {
			return etag, nil
		}
		firstErr = err
	}
	p.aborted = c.abortMultipart(ctx, p.target, id)
	return "", firstErr
}

// abortMultipart aborts a multipart upload that will not be completed,
// and reports whether it did. One it did not stays recorded (see commit),
// and the next attempt, in this mount or the next, hands it to the
// aborter (resolveStaleUpload): a failure (S3 went away mid-upload, which
// is why the upload failed) is logged at debug level only. When a stop
// ended the attempt (ctx), it is not tried now: waited for, its 30 s into
// an S3 that does not answer came on top of --shutdown-timeout (a stop
// took 55 s for 25).
func (c *Cache) abortMultipart(ctx context.Context, key, id string) bool {
	if ctx.Err() != nil {
		c.log.Debug("cache: multipart upload left for the next attempt to abort: the mount is stopping", "key", key)
		return false
	}
	actx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.store.AbortMultipart(actx, key, id); err != nil {
		c.log.Debug("cache: multipart upload left for the next attempt to abort", "key", key, "err", err)
		return false
	}
	return true
}

// setUploadID records a multipart upload before any part is sent, so
// that a restart can abort it. Unrecorded, it would be left behind by a
// crash: the error ends the attempt.
func (c *Cache) setUploadID(st *inodeState, id string) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.rec == nil {
		return ErrNotExist
	}
	old := st.rec.clone()
	st.rec.UploadID = id
	if err := update(c.db, func(txn *badger.Txn) error { return c.putInode(txn, old, st.rec) }); err != nil {
		st.rec.UploadID = old.UploadID
		return fmt.Errorf("cache commit: record multipart upload: %w", err)
	}
	return nil
}

// sourceGone reports whether a server-side copy failed because its source
// version is gone: replaced (412 on x-amz-copy-source-if-match) or
// deleted (NoSuchKey).
func sourceGone(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, s3backend.ErrPrecondition) {
		return true
	}
	var se *s3backend.Error
	return errors.As(err, &se) && errors.Is(err, s3backend.ErrNotFound) && se.Code != "NoSuchUpload"
}

// rangeOutlived reports whether a part copy refused as an invalid request
// (400) was refused because its source version is gone. Some servers
// (versitygw) check the range before x-amz-copy-source-if-match, so a copy
// from a version replaced by a shorter object gets 400 InvalidArgument
// rather than 412; taken at its word, that 400 would fail the upload for
// good. One HEAD tells: a different ETag (or no object) means the base
// changed, and the conflict path takes over. If the HEAD fails, the 400
// stands.
func (c *Cache) rangeOutlived(ctx context.Context, snap *Inode, err error) bool {
	if err == nil || !(errors.Is(err, s3backend.ErrInvalidRequest) || errors.Is(err, s3backend.ErrInvalidRange)) {
		return false
	}
	info, herr := c.store.Head(ctx, snap.RemoteKey)
	if herr != nil {
		return errors.Is(herr, s3backend.ErrNotFound)
	}
	return info.ETag != snap.ETag
}

// rangeClean reports whether bytes [off, off+l) of the file are unchanged
// from its object, so a part can be copied server-side.
func (c *Cache) rangeClean(n *Inode, off, l int64) bool {
	if n.RemoteKey == "" || off+l > n.RemoteSize {
		return false
	}
	bs := c.opt.BlockSize
	for idx := off / bs; idx <= (off+l-1)/bs; idx++ {
		r, ok := runAt(n.Runs, idx)
		if !ok || r.Dirty || r.Gen == 0 {
			return false
		}
	}
	return true
}

// snapReader reads a sealed snapshot's content as an io.ReadSeeker, one
// block at a time, for request bodies.
type snapReader struct {
	c          *Cache
	ctx        context.Context
	snap       *Inode
	start, end int64
	pos        int64 // relative to start
	cur        []byte
	curIdx     int64
	release    func()
	// stale is set once an unchanged block could not be fetched because
	// the object it comes from changed in S3. The SDK may read the body on
	// its own goroutine, hence atomic.
	stale atomic.Bool
	// local is set once a block could not be read from the cache (it
	// failed its check, or the disk failed): the upload's failure is
	// then the cache's, not S3's (see bodyErr).
	local atomic.Pointer[error]
	// abort, if set, ends the request the body belongs to when either
	// happens: the SDK would take a body that broke off for a network
	// error and send the request again, and again, for nothing, and the
	// store would count the broken request as S3 not answering.
	abort context.CancelCauseFunc
	// st, if set, is the inode of a snapshot whose dirty blocks the
	// writer may store again meanwhile (a stream's): see readLocal, which
	// may then read the block that replaced one; every write bumps the
	// version of its part, so the stream never counts such a part.
	st *inodeState
	// sent, if set, collects the written blocks the body read, for
	// dropPages once the request that sent them succeeded.
	sent *[]blocks.ID
}

// dropPages drops the page cache of the written blocks r sent (a part of
// a multipart upload, which only big files have): see blocks.DropPages.
func (r *snapReader) dropPages() {
	if r.sent == nil {
		return
	}
	if testHookDropPages != nil {
		testHookDropPages(*r.sent)
	}
	r.c.blocks.DropPages(*r.sent)
}

// testHookDropPages, if set, sees the blocks of each part sent.
var testHookDropPages func([]blocks.ID)

// bodyErr turns the failure of a request whose body was r into what
// broke the body off: a *baseChanged when the object the unchanged blocks
// come from changed in S3, the cache's own error (ErrCorrupt, a disk
// error) when a block could not be read from it.
func (r *snapReader) bodyErr(err error) error {
	if err == nil {
		return nil
	}
	if r.stale.Load() {
		return &baseChanged{err: err}
	}
	if local := r.local.Load(); local != nil {
		return fmt.Errorf("read the cache to upload: %w", *local)
	}
	return err
}

// localFailure reports whether err, from loading a block to upload, is
// the cache's: a block that failed its check, is missing, or could not
// be read from the disk (blocks.Read reports all three as ErrCorrupt).
func localFailure(err error) bool { return errors.Is(err, ErrCorrupt) }

// baseChanged: an upload could not be sent because unchanged blocks of
// the file had to be fetched from the object version the edit started
// from, and that version is gone from S3 (412 or 404).
type baseChanged struct{ err error }

func (e *baseChanged) Error() string {
	return "object changed in s3 while its content was sent: " + e.err.Error()
}
func (e *baseChanged) Unwrap() error { return e.err }

func (c *Cache) newSnapReader(ctx context.Context, snap *Inode, off, length int64) *snapReader {
	if length > 0 {
		// Fetch the unchanged blocks that are not cached in a few large
		// GETs, ahead of the reader.
		bs := c.opt.BlockSize
		c.prefetch(snap, off/bs, (off+length+bs-1)/bs)
	}
	return &snapReader{c: c, ctx: ctx, snap: snap, start: off, end: off + length, curIdx: -1}
}

func (r *snapReader) Read(p []byte) (int, error) {
	abs := r.start + r.pos
	if abs >= r.end {
		r.drop()
		return 0, io.EOF
	}
	bs := r.c.opt.BlockSize
	idx := abs / bs
	if idx != r.curIdx {
		r.drop()
		src := r.c.sourceOf(r.snap, idx)
		data, release, err := r.c.loadBlock(r.ctx, src, r.st)
		if err != nil {
			switch {
			case errors.Is(err, ErrStale):
				r.stale.Store(true)
			case localFailure(err):
				r.local.CompareAndSwap(nil, &err)
			default:
				return 0, err
			}
			if r.abort != nil {
				r.abort(err)
			}
			return 0, err
		}
		r.cur, r.curIdx, r.release = data, idx, release
		if r.sent != nil && src.dirty && !src.hole && !slices.Contains(*r.sent, src.id) {
			*r.sent = append(*r.sent, src.id)
		}
	}
	inBlock := abs - idx*bs
	n := int(min(int64(len(p)), r.end-abs, bs-inBlock))
	var copied int
	if inBlock < int64(len(r.cur)) {
		copied = copy(p[:n], r.cur[inBlock:])
	}
	clear(p[copied:n])
	r.pos += int64(n)
	return n, nil
}

func (r *snapReader) drop() {
	if r.release != nil {
		r.release()
		r.release, r.cur, r.curIdx = nil, nil, -1
	}
}

func (r *snapReader) Seek(off int64, whence int) (int64, error) {
	var p int64
	switch whence {
	case io.SeekStart:
		p = off
	case io.SeekCurrent:
		p = r.pos + off
	case io.SeekEnd:
		p = r.end - r.start + off
	}
	if p < 0 {
		return 0, ErrInvalid
	}
	r.pos = p
	return p, nil
}
