package cache

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"mime"
	"path"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/keelfs/keelfs/s3backend"
)

// maxDirtyAge bounds how long a file that is written without pause stays
// only in the cache: past it, a snapshot is uploaded even while writes go on.
const maxDirtyAge = 30 * time.Second

// uploadPlan is one sealed attempt to bring an inode's object up to date.
type uploadPlan struct {
	snap        *Inode // the record when sealed
	target      string // object key to write
	cond        s3backend.Condition
	token       string
	sealGen     uint64 // generations below are part of this upload
	changes     uint64
	dataChanges uint64
	metaVer     uint32
	copyOnly    bool // content unchanged: server-side copy (rename, attributes)
	conflict    bool // saving the local version under ConflictKey
	// stream holds parts sent while the file was written, and streamVers
	// their versions at seal (see stream). usedStream: the upload
	// completes the stream's multipart upload.
	stream     *stream
	streamVers map[int64]uint64
	usedStream bool
}

// reconcile runs one write-back step for an inode: upload its content,
// copy it to its new name, rewrite its headers or its directory marker,
// or delete it once unlinked.
func (c *Cache) reconcile(ctx context.Context, ino uint64, urgent bool) outcome {
	st, err := c.acquire(ino)
	if err != nil {
		return outcome{} // gone
	}
	defer c.release(st)
	if out, done := c.resolveStaleUpload(ctx, st); done {
		return out
	}
	plan, out, finalize, ok := c.seal(st, urgent)
	if finalize {
		c.finalizeIfIdle(ino)
		return outcome{}
	}
	if !ok {
		return out
	}
	if plan.stream != nil {
		defer c.endStream(plan.stream)
	}
	etag, err := c.push(ctx, st, plan)
	return c.commit(ctx, st, plan, etag, err)
}

// detachStream drops st's stream, if any (st.mu held).
func (c *Cache) detachStream(st *inodeState) {
	if s := st.stream; s != nil {
		st.stream = nil
		c.dropStream(s)
	}
}

// seal decides what to do and freezes the content to upload: the write
// buffer is stored and new writes go to a new generation, so the upload
// reads exactly the blocks of this moment.
func (c *Cache) seal(st *inodeState, urgent bool) (plan *uploadPlan, out outcome, finalize, ok bool) {
	c.nsMu.Lock()
	defer c.nsMu.Unlock()
	st.mu.Lock()
	defer st.mu.Unlock()
	rec := st.rec
	if rec == nil {
		return nil, outcome{}, false, false
	}
	if rec.Unlinked {
		c.detachStream(st)
		return nil, outcome{}, st.handles == 0 && !st.uploading, false
	}
	if !rec.needsWork() || rec.Ino == RootIno {
		c.detachStream(st)
		if rec.Ino == RootIno && rec.Pending != 0 {
			old := rec.clone()
			rec.Pending = 0
			c.persistLocked(st, old)
		}
		return nil, outcome{}, false, false
	}
	if !urgent {
		since := time.Since(st.lastChange)
		if since < c.opt.WriteBackDelay && (st.dirtySince.IsZero() || time.Since(st.dirtySince) < maxDirtyAge) {
			return nil, outcome{retryAfter: c.opt.WriteBackDelay - since}, false, false
		}
	}
	plan = &uploadPlan{target: rec.expectedKey()}
	if rec.ConflictKey != "" {
		plan.target, plan.conflict = rec.ConflictKey, true
	}
	cond, waitKey, absorbed, err := c.targetCondition(rec, plan.target)
	if err != nil {
		c.log.Error("cache: journal", "err", err)
		return nil, outcome{failed: true}, false, false
	}
	if waitKey != "" {
		return nil, outcome{waitKey: waitKey}, false, false
	}
	if err := c.flushBufLocked(st); err != nil {
		c.log.Error("cache: store written data", "path", rec.Path, "err", err)
		return nil, outcome{failed: true}, false, false
	}
	old := rec.clone()
	plan.cond = cond
	plan.copyOnly = rec.Kind == KindFile && rec.Pending&pendData == 0 && rec.RemoteKey != "" && !plan.conflict
	plan.token = newToken()
	if s := st.stream; s != nil {
		st.stream = nil
		if s.usable(rec, plan) {
			plan.stream, plan.streamVers, plan.token = s, maps.Clone(s.vers), s.token
		} else {
			c.dropStream(s)
		}
	}
	plan.sealGen = c.newGen()
	plan.changes, plan.dataChanges, plan.metaVer = st.changes, st.dataChanges, rec.MetaVer
	rec.OpenGen = 0
	if rec.UploadKey != plan.target {
		rec.UploadTokens = ""
	}
	rec.UploadKey = plan.target
	rec.UploadIfMatch = cond.IfMatch
	rec.UploadTokens = addToken(rec.UploadTokens, plan.token)
	plan.snap = rec.clone()
	err = update(c.db, func(txn *badger.Txn) error {
		if absorbed {
			if err := txn.Delete(tombKey(plan.target)); err != nil {
				return err
			}
		}
		return putInode(txn, old, rec)
	})
	if err != nil {
		*rec = *old
		if plan.stream != nil {
			c.dropStream(plan.stream)
		}
		c.log.Error("cache: journal", "err", err)
		return nil, outcome{failed: true}, false, false
	}
	st.uploading = true
	return plan, outcome{}, false, true
}

// targetCondition works out the precondition for writing key, and whether
// another inode or a pending delete must release it first. nsMu is held.
// A tombstone at key is absorbed: the upload replaces the object the
// delete was for, conditional on its ETag, in one request.
func (c *Cache) targetCondition(rec *Inode, key string) (cond s3backend.Condition, waitKey string, absorbed bool, err error) {
	conditional := c.opt.ConditionalWrites && c.opt.Conflict == ConflictCopy
	wrap := func(cd s3backend.Condition) s3backend.Condition {
		if !conditional {
			return s3backend.Condition{}
		}
		return cd
	}
	if key == rec.RemoteKey && rec.ETag != "" {
		return wrap(s3backend.Condition{IfMatch: rec.ETag}), "", false, nil
	}
	var ts *tombstone
	var claimant uint64
	err = c.db.View(func(txn *badger.Txn) error {
		if it, err := txn.Get(tombKey(key)); err == nil {
			return it.Value(func(v []byte) error {
				t, err := unmarshalTomb(v)
				ts = &t
				return err
			})
		} else if !errors.Is(err, badger.ErrKeyNotFound) {
			return err
		}
		if it, err := txn.Get(claimKey(key)); err == nil {
			return it.Value(func(v []byte) error {
				if len(v) == 8 {
					claimant = uint64(v[0])<<56 | uint64(v[1])<<48 | uint64(v[2])<<40 | uint64(v[3])<<32 |
						uint64(v[4])<<24 | uint64(v[5])<<16 | uint64(v[6])<<8 | uint64(v[7])
				}
				return nil
			})
		} else if !errors.Is(err, badger.ErrKeyNotFound) {
			return err
		}
		return nil
	})
	if err != nil {
		return
	}
	switch {
	case ts != nil:
		if c.up.tombRunning(key) {
			return cond, key, false, nil
		}
		if ts.ETag != "" {
			return wrap(s3backend.Condition{IfMatch: ts.ETag}), "", true, nil
		}
		return wrap(s3backend.Condition{IfNoneMatch: true}), "", true, nil
	case claimant != 0 && claimant != rec.Ino:
		return cond, key, false, nil
	case claimant == rec.Ino && rec.UploadKey == key:
		// An earlier attempt of ours claimed it; it knows what to expect.
		if rec.UploadIfMatch != "" {
			return wrap(s3backend.Condition{IfMatch: rec.UploadIfMatch}), "", false, nil
		}
	}
	return wrap(s3backend.Condition{IfNoneMatch: true}), "", false, nil
}

func newToken() string {
	var b [12]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// addToken keeps the last few tokens used for one target.
func addToken(list, tok string) string {
	toks := []string{tok}
	for _, t := range strings.Split(list, ",") {
		if t != "" && len(toks) < 64 {
			toks = append(toks, t)
		}
	}
	return strings.Join(toks, ",")
}

func hasToken(list, tok string) bool {
	if tok == "" {
		return false
	}
	for _, t := range strings.Split(list, ",") {
		if t == tok {
			return true
		}
	}
	return false
}

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
		body := c.newSnapReader(ctx, snap, 0, snap.Size)
		etag, err := c.store.Put(ctx, s3backend.PutInput{Key: p.target, Body: body,
			Size: snap.Size, Metadata: meta, ContentType: ct, Cond: p.cond})
		return etag, body.baseErr(err)
	}
	return c.uploadMultipart(ctx, st, p, meta, ct)
}

// copyObject gives an object a new name or new headers server-side. The
// source's other user metadata and content type are kept.
func (c *Cache) copyObject(ctx context.Context, p *uploadPlan, meta s3backend.Metadata) (string, error) {
	snap := p.snap
	info, err := c.store.Head(ctx, snap.RemoteKey)
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
	return c.store.Copy(ctx, s3backend.CopyInput{Src: snap.RemoteKey, SrcETag: snap.ETag, SrcSize: info.Size,
		Dst: p.target, Metadata: merged, ContentType: info.ContentType, Cond: p.cond})
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
		id, early = c.finishStream(st, p)
		p.usedStream = id != ""
	}
	if id == "" {
		var err error
		if id, err = c.store.CreateMultipart(ctx, p.target, meta, ct); err != nil {
			return "", err
		}
		c.setUploadID(st, id)
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
			if c.rangeClean(snap, off, l) {
				etag, err = c.store.UploadPartCopy(pctx, s3backend.UploadPartCopyInput{Key: p.target, UploadID: id,
					Part: int32(i + 1), Src: snap.RemoteKey, SrcETag: snap.ETag, Off: off, Length: l})
			} else {
				body := c.newSnapReader(pctx, snap, off, l)
				etag, err = c.store.UploadPart(pctx, s3backend.UploadPartInput{Key: p.target, UploadID: id,
					Part: int32(i + 1), Body: body, Size: l})
				err = body.baseErr(err)
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
	actx, acancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer acancel()
	if err := c.store.AbortMultipart(actx, p.target, id); err != nil {
		c.log.Warn("cache: abort multipart upload", "key", p.target, "err", err)
	}
	return "", firstErr
}

func (c *Cache) setUploadID(st *inodeState, id string) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.rec == nil {
		return
	}
	old := st.rec.clone()
	st.rec.UploadID = id
	if err := update(c.db, func(txn *badger.Txn) error { return putInode(txn, old, st.rec) }); err != nil {
		c.log.Warn("cache: record multipart upload", "err", err)
	}
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
}

// baseErr turns the failure of a request whose body was r into a
// *baseChanged when the body broke off because the object the unchanged
// blocks come from changed in S3.
func (r *snapReader) baseErr(err error) error {
	if err != nil && r.stale.Load() {
		return &baseChanged{err: err}
	}
	return err
}

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
		data, release, err := r.c.loadBlock(r.ctx, r.c.sourceOf(r.snap, idx))
		if err != nil {
			if errors.Is(err, ErrStale) {
				r.stale.Store(true)
			}
			return 0, err
		}
		r.cur, r.curIdx, r.release = data, idx, release
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

// commit records the result of a push.
func (c *Cache) commit(ctx context.Context, st *inodeState, p *uploadPlan, etag string, err error) outcome {
	var changed *sourceChanged
	if errors.As(err, &changed) {
		return c.adoptChangedSource(st, p, changed.info)
	}
	if err != nil && errors.Is(err, s3backend.ErrPrecondition) {
		return c.precondition(ctx, st, p)
	}
	var based *baseChanged
	if errors.As(err, &based) {
		if out, ok := c.adoptOwnBase(ctx, st, p); ok {
			return out
		}
	}
	c.nsMu.Lock()
	t := c.beginNS()
	rec, gerr := t.get(st.ino)
	if gerr != nil {
		t.abort()
		c.nsMu.Unlock()
		st.mu.Lock()
		st.uploading = false
		st.mu.Unlock()
		return outcome{}
	}
	st.uploading = false
	st.attempts++
	if err != nil {
		st.lastErr = err
		rec.UploadID = ""
		c.stats.UploadErrors.Add(1)
		cerr := t.commit()
		c.nsMu.Unlock()
		if cerr != nil {
			c.log.Error("cache: journal", "err", cerr)
		}
		if errors.Is(err, ErrStale) && p.copyOnly {
			// The object vanished before it could be copied: upload the
			// content from the cache instead, if it is all there.
			c.markDataPending(st)
		}
		if !errors.Is(err, context.Canceled) {
			c.log.Warn("upload failed; will retry", "path", p.snap.Path, "key", p.target, "err", err)
		}
		return outcome{failed: true}
	}
	newly := c.applySuccess(t, st, rec, p, etag)
	cerr := t.commit()
	c.nsMu.Unlock()
	if cerr != nil {
		c.log.Error("cache: journal", "err", cerr)
		return outcome{failed: true}
	}
	for _, id := range newly {
		c.blocks.markClean(id)
	}
	c.stats.UploadsDone.Add(1)
	if p.snap.Kind == KindFile && !p.copyOnly {
		c.stats.BytesUploaded.Add(p.snap.Size)
	}
	c.up.released(p.target)
	if p.usedStream && p.headersStale() {
		c.up.now(st.ino)
	}
	go c.dropUnusedBlocks(st.ino)
	return outcome{}
}

// adoptOwnBase handles an upload that could not be sent because the
// object version its unchanged blocks come from is gone. If what replaced
// it is an earlier upload of ours whose answer was lost, that object holds
// the same bytes in every block that is still clean: take its ETag as the
// base and go again at once. ok is false when the object is another
// writer's (or cannot be checked); the attempt then failed like any other.
func (c *Cache) adoptOwnBase(ctx context.Context, st *inodeState, p *uploadPlan) (out outcome, ok bool) {
	if p.snap.RemoteKey == "" {
		return outcome{}, false
	}
	info, err := c.store.Head(ctx, p.snap.RemoteKey)
	if err != nil || info.Metadata[metaUpload] == "" || !hasToken(p.snap.UploadTokens, info.Metadata[metaUpload]) {
		return outcome{}, false
	}
	c.nsMu.Lock()
	defer c.nsMu.Unlock()
	t := c.beginNS()
	rec, err := t.get(st.ino)
	if err != nil {
		t.abort()
		return outcome{}, false
	}
	st.uploading = false
	st.attempts++
	rec.UploadID = ""
	if rec.RemoteKey == p.snap.RemoteKey && rec.ETag == p.snap.ETag {
		rec.ETag, rec.RemoteSize = info.ETag, info.Size
	}
	if err := t.commit(); err != nil {
		return outcome{failed: true}, true
	}
	return outcome{retryAfter: time.Millisecond}, true
}

// applySuccess updates the record after an upload landed (nsMu held, st
// locked through t). It returns the blocks that became clean.
func (c *Cache) applySuccess(t *nsTx, st *inodeState, rec *Inode, p *uploadPlan, etag string) []blockID {
	st.lastErr = nil
	if p.conflict {
		return c.applyConflictSaved(t, st, rec, p, etag)
	}
	oldKey, oldETag := rec.RemoteKey, rec.ETag
	rec.RemoteKey, rec.ETag = p.target, etag
	rec.AttrsKnown = true
	rec.SyncedSeq = c.nextSeq()
	rec.ValidUntil = c.now() + int64(c.opt.MetadataTTL)
	rec.UploadKey, rec.UploadTokens, rec.UploadIfMatch, rec.UploadID = "", "", "", ""
	var newly []blockID
	if rec.Kind == KindFile {
		rec.RemoteSize = p.snap.Size
		for _, r := range rec.Runs {
			if r.Dirty && r.Gen < p.sealGen {
				for idx := r.Start; idx < r.End; idx++ {
					newly = append(newly, blockID{rec.Ino, r.Gen, idx})
				}
			}
		}
		rec.Runs = cleanRuns(rec.Runs, p.sealGen)
		if st.dataChanges == p.dataChanges {
			rec.Pending &^= pendData
			st.dirtySince = time.Time{}
		}
	}
	if rec.Kind == KindSymlink || rec.Kind.isSpecial() {
		rec.RemoteSize = int64(len(rec.Target))
		rec.Pending &^= pendData
	}
	if rec.MetaVer == p.metaVer {
		rec.Pending &^= pendMeta | pendMarker
	}
	if p.usedStream && p.headersStale() {
		rec.Pending |= pendMeta // the headers were set before the writer finished
	}
	if oldKey != "" && oldKey != p.target {
		t.tomb(oldKey, oldETag, rec.Kind == KindDir)
	}
	if rec.Unlinked && st.handles == 0 {
		c.finalizeLocked(t, rec)
	}
	if p.changes > st.synced {
		st.synced = p.changes
	}
	return newly
}

// precondition handles a 412: our own earlier attempt landed (a retried
// request, or a crash after the upload), or another writer got there
// first and the conflict path starts.
func (c *Cache) precondition(ctx context.Context, st *inodeState, p *uploadPlan) outcome {
	info, herr := c.store.Head(ctx, p.target)
	ours := herr == nil && hasToken(p.snap.UploadTokens, info.Metadata[metaUpload])
	c.nsMu.Lock()
	defer c.nsMu.Unlock()
	t := c.beginNS()
	rec, gerr := t.get(st.ino)
	if gerr != nil {
		t.abort()
		return outcome{}
	}
	st.uploading = false
	st.attempts++
	switch {
	case ours && info.Metadata[metaUpload] == p.token:
		// This very attempt landed; the 412 was for a retried request.
		newly := c.applySuccess(t, st, rec, p, info.ETag)
		if err := t.commit(); err != nil {
			return outcome{failed: true}
		}
		for _, id := range newly {
			c.blocks.markClean(id)
		}
		return outcome{}
	case ours:
		// An older attempt of ours landed (its answer was lost to a crash
		// or a timeout): that object is the file's remote version now, with
		// the content of an earlier snapshot; overwrite it.
		if p.target == rec.RemoteKey {
			rec.ETag, rec.RemoteSize = info.ETag, info.Size
		} else {
			rec.UploadIfMatch = info.ETag
		}
		t.commit()
		return outcome{retryAfter: time.Millisecond}
	case herr != nil && !errors.Is(herr, s3backend.ErrNotFound):
		st.lastErr = herr
		t.commit()
		return outcome{failed: true}
	}
	if p.snap.Kind == KindDir {
		// Another mount made the same directory: take its marker.
		if herr == nil {
			rec.RemoteKey, rec.ETag, rec.AttrsKnown = p.target, info.ETag, false
			rec.UploadKey, rec.UploadTokens, rec.UploadIfMatch = "", "", ""
			if rec.MetaVer == p.metaVer {
				rec.Pending &^= pendMarker
			}
		} else {
			rec.UploadIfMatch = ""
		}
		t.commit()
		return outcome{retryAfter: time.Millisecond}
	}
	if p.conflict {
		// Our conflict copy changed under us (very unlikely): pick a new name.
		rec.ConflictKey, rec.ConflictETag = c.conflictName(rec.expectedKey()), ""
		t.commit()
		return outcome{retryAfter: time.Millisecond}
	}
	// Another writer changed the object since our edit began: keep theirs
	// under the name and save ours beside it.
	rec.ConflictKey = c.conflictName(p.target)
	rec.ConflictETag = ""
	rec.UploadKey, rec.UploadTokens, rec.UploadIfMatch = "", "", ""
	c.stats.Conflicts.Add(1)
	c.log.Warn("conflict: another writer changed the object since this edit began; saving the local version beside it",
		"path", rec.Path, "key", p.target, "conflict_key", rec.ConflictKey)
	if err := t.commit(); err != nil {
		return outcome{failed: true}
	}
	return outcome{retryAfter: time.Millisecond}
}

// applyConflictSaved runs once the local version is safe under its
// conflict name: the name takes the other writer's version, unless the
// file changed again meanwhile (then the newer local state is saved over
// the conflict copy first).
func (c *Cache) applyConflictSaved(t *nsTx, st *inodeState, rec *Inode, p *uploadPlan, etag string) []blockID {
	rec.ConflictETag = etag
	rec.UploadKey, rec.UploadTokens, rec.UploadIfMatch, rec.UploadID = "", "", "", ""
	if p.changes > st.synced {
		st.synced = p.changes
	}
	if st.changes != p.changes {
		return nil // save the newer state over the conflict copy first
	}
	c.log.Warn("conflict: local version saved", "path", rec.Path, "conflict_key", rec.ConflictKey)
	rec.ConflictKey, rec.ConflictETag = "", ""
	// The name now shows the other writer's version: forget ours.
	rec.RemoteKey, rec.ETag = rec.expectedKey(), ""
	rec.Pending &^= pendData | pendMeta
	rec.ValidUntil = 0
	rec.Runs = nil
	rec.OpenGen = 0
	rec.ContentVer++
	st.cacheVer++
	ino := rec.Ino
	t.after = append(t.after, func() {
		go func() {
			if _, err := c.revalidate(context.Background(), ino); err != nil && !errors.Is(err, ErrNotExist) {
				c.log.Warn("cache: refresh after conflict", "err", err)
			}
			c.dropUnusedBlocks(ino)
			if c.opt.Invalidate != nil {
				c.opt.Invalidate(ino)
			}
		}()
	})
	return nil
}

// adoptChangedSource handles a rename or attribute change of a file that
// another writer replaced meanwhile: the change applies to their version,
// so nothing of theirs is lost.
func (c *Cache) adoptChangedSource(st *inodeState, p *uploadPlan, info s3backend.ObjectInfo) outcome {
	c.nsMu.Lock()
	defer c.nsMu.Unlock()
	t := c.beginNS()
	rec, err := t.get(st.ino)
	if err != nil {
		t.abort()
		return outcome{}
	}
	st.uploading = false
	st.attempts++
	if rec.RemoteKey == p.snap.RemoteKey && st.dataChanges == p.dataChanges {
		c.log.Warn("object changed in s3 before a rename or attribute change reached it; applying the change to the new version",
			"key", rec.RemoteKey)
		perm, uid, gid, mtime := rec.Perm, rec.UID, rec.GID, rec.Mtime
		atime, xattrs := rec.Atime, rec.Xattrs
		e := s3backend.ListEntry{Key: rec.RemoteKey, ETag: info.ETag, Size: info.Size, LastModified: info.LastModified}
		c.newVersionLocked(t, rec, rec.RemoteKey, e, &info)
		if rec.Pending&pendMeta != 0 {
			rec.Perm, rec.UID, rec.GID, rec.Mtime = perm, uid, gid, mtime
			rec.Atime, rec.Xattrs = atime, xattrs
		}
	}
	if err := t.commit(); err != nil {
		return outcome{failed: true}
	}
	return outcome{retryAfter: time.Millisecond}
}

// conflictName is NAME.conflict-HOST-UTCTIME.
func (c *Cache) conflictName(key string) string {
	return fmt.Sprintf("%s.conflict-%s-%s", key, c.opt.Hostname, c.opt.Now().UTC().Format("20060102T150405Z"))
}

func (c *Cache) markDataPending(st *inodeState) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.rec == nil {
		return
	}
	old := st.rec.clone()
	st.rec.Pending |= pendData
	c.persistLocked(st, old)
}

// resolveStaleUpload settles a claim left by an attempt whose outcome is
// unknown (crash, timeout) when the file now wants another key: if the
// object there carries one of our tokens it is adopted as the file's
// object, otherwise the claim is dropped.
func (c *Cache) resolveStaleUpload(ctx context.Context, st *inodeState) (outcome, bool) {
	st.mu.Lock()
	rec := st.rec
	if rec == nil || rec.UploadKey == "" || st.uploading {
		st.mu.Unlock()
		return outcome{}, false
	}
	want := rec.expectedKey()
	if rec.ConflictKey != "" {
		want = rec.ConflictKey
	}
	key, tokens, uploadID := rec.UploadKey, rec.UploadTokens, rec.UploadID
	st.mu.Unlock()
	if uploadID != "" {
		if err := c.store.AbortMultipart(ctx, key, uploadID); err != nil {
			c.log.Warn("cache: abort multipart upload", "key", key, "err", err)
		}
	}
	if key == want && uploadID == "" {
		return outcome{}, false
	}
	info, err := c.store.Head(ctx, key)
	if err != nil && !errors.Is(err, s3backend.ErrNotFound) {
		return outcome{failed: true}, true
	}
	ours := err == nil && hasToken(tokens, info.Metadata[metaUpload])
	c.nsMu.Lock()
	defer c.nsMu.Unlock()
	t := c.beginNS()
	rec, gerr := t.get(st.ino)
	if gerr != nil || rec.UploadKey != key {
		t.abort()
		return outcome{}, false
	}
	rec.UploadID = ""
	if key == want {
		t.commit()
		return outcome{}, false
	}
	if ours && key != rec.ConflictKey {
		if rec.RemoteKey != "" && rec.RemoteKey != key {
			t.tomb(rec.RemoteKey, rec.ETag, rec.Kind == KindDir)
		}
		rec.RemoteKey, rec.ETag = key, info.ETag
	} else if ours {
		rec.ConflictETag = info.ETag
	}
	rec.UploadKey, rec.UploadTokens, rec.UploadIfMatch = "", "", ""
	if err := t.commit(); err != nil {
		return outcome{failed: true}, true
	}
	c.up.released(key)
	return outcome{}, false
}

// processTomb deletes an object whose inode is gone. A directory key waits
// until nothing under it is claimed or waiting to be deleted.
func (c *Cache) processTomb(ctx context.Context, key string) outcome {
	ts, found, busy, err := c.tombState(key)
	if err != nil {
		return outcome{failed: true}
	}
	if !found {
		c.up.released(key)
		return outcome{}
	}
	if busy {
		return outcome{retryAfter: time.Second}
	}
	if !ts.Dir && c.willAbsorb(key) {
		// A file now has this name and will replace the object with one
		// conditional write: no delete needed.
		return outcome{retryAfter: time.Second}
	}
	var cond s3backend.Condition
	if ts.ETag != "" && c.opt.ConditionalWrites {
		cond.IfMatch = ts.ETag
	}
	err = c.store.Delete(ctx, key, cond)
	if errors.Is(err, s3backend.ErrNotImplemented) && cond.IfMatch != "" {
		err = c.store.Delete(ctx, key, s3backend.Condition{})
	}
	switch {
	case errors.Is(err, s3backend.ErrPrecondition):
		c.log.Info("not deleting object: another writer replaced it", "key", key)
	case err != nil:
		if !errors.Is(err, context.Canceled) {
			c.log.Warn("delete failed; will retry", "key", key, "err", err)
		}
		return outcome{failed: true}
	default:
		c.stats.DeletesDone.Add(1)
	}
	c.nsMu.Lock()
	err = update(c.db, func(txn *badger.Txn) error { return txn.Delete(tombKey(key)) })
	c.nsMu.Unlock()
	if err != nil {
		return outcome{failed: true}
	}
	c.up.released(key)
	return outcome{}
}

// willAbsorb reports whether the inode now named key has an upload coming
// that will take over the tombstone.
func (c *Cache) willAbsorb(key string) bool {
	ino := RootIno
	for _, name := range strings.Split(key, "/") {
		d, ok, err := c.peekDentry(ino, name)
		if err != nil || !ok {
			return false
		}
		ino = d.Ino
	}
	n, err := c.snapshot(ino)
	return err == nil && n.Kind != KindDir && n.needsWork() && !n.Unlinked
}

// tombState reads a tombstone and, for a directory, whether anything
// under it is still claimed or waiting to be deleted.
func (c *Cache) tombState(key string) (ts tombstone, found, busy bool, err error) {
	c.nsMu.Lock()
	defer c.nsMu.Unlock()
	err = c.db.View(func(txn *badger.Txn) error {
		it, err := txn.Get(tombKey(key))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		found = true
		if err := it.Value(func(v []byte) error {
			var err error
			ts, err = unmarshalTomb(v)
			return err
		}); err != nil {
			return err
		}
		if !ts.Dir {
			return nil
		}
		for _, p := range [][]byte{claimKey(key), tombKey(key)} {
			iter := txn.NewIterator(badger.IteratorOptions{Prefix: p})
			for iter.Seek(p); iter.ValidForPrefix(p); iter.Next() {
				if string(iter.Item().Key()) != string(tombKey(key)) {
					busy = true
					break
				}
			}
			iter.Close()
		}
		return nil
	})
	return
}

// uploadFailed is what fsync reports for a failed upload: ErrUploadFailed
// (EIO), except when S3 refused the credentials or a policy forbids the
// write. Then the S3 error itself (EACCES) says what is wrong: retrying
// will not help until someone changes the credentials or the policy.
func uploadFailed(err error) error {
	if errors.Is(err, s3backend.ErrAccessDenied) || errors.Is(err, s3backend.ErrInvalidCredentials) {
		return fmt.Errorf("upload to s3 refused: %w", err)
	}
	return fmt.Errorf("%w: %v", ErrUploadFailed, err)
}

// syncFile waits until the file's changes up to now are in S3. An
// unlinked file (also one unlinked while this waits) has nothing to wait
// for: it will never be in S3, and the delete of its old object waits for
// the last close, which may be the caller's own.
func (c *Cache) syncFile(ctx context.Context, st *inodeState) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.rec == nil {
		return nil
	}
	target, attempts := st.changes, st.attempts
	stop := context.AfterFunc(ctx, func() {
		st.mu.Lock()
		st.cond.Broadcast()
		st.mu.Unlock()
	})
	defer stop()
	// over reports (st.mu held) whether the wait has ended, and how.
	over := func() (bool, error) {
		switch {
		case st.rec == nil || st.rec.Unlinked || st.synced >= target || (!st.rec.needsWork() && !st.uploading):
			return true, nil
		case st.attempts > attempts && st.lastErr != nil && !st.uploading:
			return true, uploadFailed(st.lastErr)
		case ctx.Err() != nil:
			return true, ctx.Err()
		}
		return false, nil
	}
	for {
		if done, err := over(); done {
			return err
		}
		ino := st.ino
		st.mu.Unlock()
		c.up.now(ino)
		st.mu.Lock()
		// The upload may have run to its end while st.mu was free, its
		// Broadcast gone unheard: look again before waiting, or fsync
		// waits forever.
		if done, err := over(); done {
			return err
		}
		st.cond.Wait()
	}
}
