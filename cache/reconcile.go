package cache

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"strings"
	"sync"
	"time"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/keelfs/keelfs/cache/blocks"
	"github.com/keelfs/keelfs/cache/writeback"
	"github.com/keelfs/keelfs/s3backend"
)

// The reconciler is what one write-back attempt does; the scheduler
// (package writeback) decides when attempts run and what their outcome
// means for the job. An attempt seals a snapshot of the inode under the
// locks (seal), sends it without locks (push.go), and applies S3's answer
// (commit; the conflict path is in conflict.go). Every answer becomes a
// writeback.Result here, and only here (classify).

// maxDirtyAge bounds how long a file that is written without pause stays
// only in the cache: past it, a snapshot is uploaded even while writes go on.
const maxDirtyAge = 30 * time.Second

// quickDelayDiv: a file written in one go (no upload of it finished
// within the last write-back delay) goes once no file has changed for the
// write-back delay divided by this (writeback.Options.QuickDelay). By
// hand, with the 1 s default: 500 appends (open, write a line, close)
// were in S3 0.38-0.42 s after the first, not 1.16-1.20 s; a tar x of
// 400 files 0.85-0.92 s, not 1.39-1.40 s, and tar took as long as before
// (0.26-0.28 s), since its files wait until it stops. A file rewritten
// again and again still waits the whole delay, so it is not sent more
// often.
const quickDelayDiv = 4

// reconciler holds what the attempts share.
//
// Lock order: reconciler.mu is a leaf.
type reconciler struct {
	// Parts sent while files are written (see stream) share these slots.
	streamOnce sync.Once
	streamSem  chan struct{}

	// ahead counts fetches ahead running (see fetchAhead).
	ahead sync.WaitGroup

	// deleting holds the keys whose DELETE is decided or in flight (see
	// processTomb); guarded by namespace.mu.
	deleting map[string]bool

	// disk bounds the waits for syncs of the cache disk (diskwait.go).
	disk diskWait

	mu     sync.Mutex
	recent []ConflictInfo // the last conflict copies made, newest last; guarded by mu
}

// uploadPlan is one sealed attempt to bring an inode's object up to date.
type uploadPlan struct {
	aborted     bool   // push aborted the multipart upload it failed (abortMultipart)
	snap        *Inode // the record when sealed
	target      string // object key to write
	cond        s3backend.Condition
	token       string
	sealGen     uint64 // generations below are part of this upload
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

var (
	done  = writeback.Result{Outcome: writeback.Done}
	again = writeback.Result{Outcome: writeback.Again}
)

func retry(err error) writeback.Result { return writeback.Result{Outcome: writeback.Retry, Err: err} }

// errIncomplete: the local version of a partly edited file cannot be put
// together. Blocks it did not change are not in the cache, and S3 no
// longer has the version they come from: another writer replaced it.
var errIncomplete = errors.New("the local version cannot be completed: the object it was edited from was replaced in S3 and its unchanged parts are not in the cache; the edit stays in the cache (rewrite the whole file, or delete it)")

// classify says what a failed attempt's error means for its job, once for
// every path: a retryable error backs off; a permanent one (S3 refuses the
// request, the credentials or the key for good, the local version cannot
// be completed, written data is unreadable) stops the job, which keeps
// its data and is reported.
func classify(err error) writeback.Result {
	if permanent(err) {
		return writeback.Result{Outcome: writeback.Permanent, Err: err}
	}
	return retry(err)
}

func permanent(err error) bool {
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return false
	case errors.Is(err, errIncomplete), errors.Is(err, ErrCorrupt), errors.Is(err, ErrFileTooBig),
		errors.Is(err, ErrNameTooLong):
		return true
	case errors.Is(err, s3backend.ErrAccessDenied), errors.Is(err, s3backend.ErrInvalidRequest),
		errors.Is(err, s3backend.ErrNoSuchBucket), errors.Is(err, s3backend.ErrNotImplemented):
		return true
	case errors.Is(err, s3backend.ErrInvalidCredentials):
		// A wrong key or signature stays wrong; an expired token is
		// refreshed by the credential chain.
		var se *s3backend.Error
		return errors.As(err, &se) && (se.Code == "InvalidAccessKeyId" || se.Code == "SignatureDoesNotMatch")
	}
	return false
}

// runJob is the scheduler's Runner: one attempt of an inode's or a
// tombstone's job.
func (c *Cache) runJob(ctx context.Context, id writeback.ID) writeback.Result {
	var res writeback.Result
	if id.IsTomb() {
		res = c.processTomb(ctx, id.Key)
	} else {
		res = c.reconcile(ctx, id.Ino)
	}
	c.logResult(id, res)
	return res
}

// logResult says what a user must know of an attempt, once per change of
// fortune rather than once per attempt: the first failure of a run of
// retryable failures (WARN; later ones at DEBUG), a permanent failure
// (ERROR), and the success that ends a run of failures (INFO).
func (c *Cache) logResult(id writeback.ID, res writeback.Result) {
	if res.Outcome != writeback.Retry && res.Outcome != writeback.Permanent && res.Outcome != writeback.Done {
		return
	}
	prev, _ := c.wb.Job(id) // as it stands before this result applies
	path := c.jobPath(id)
	switch res.Outcome {
	case writeback.Retry:
		c.stats.UploadErrors.Add(1)
		switch {
		case errors.Is(res.Err, context.Canceled):
		case errors.Is(res.Err, s3backend.ErrUnreachable):
			// S3 is known to be down: that was said once, for all files.
			c.log.Debug("upload waits for s3", "path", path, "err", res.Err)
		case prev.Failures == 0:
			c.log.Warn("upload failed; will retry with backoff", "path", path, "err", res.Err)
		default:
			c.log.Debug("upload failed again; will retry", "path", path, "failures", prev.Failures+1, "err", res.Err)
		}
	case writeback.Permanent:
		c.stats.UploadErrors.Add(1)
		c.log.Error("upload failed and is not retried until the file changes, a flush or a remount; the data stays in the cache",
			"path", path, "err", res.Err)
	case writeback.Done:
		switch {
		case prev.Failures == 0:
		case errors.Is(prev.Err, s3backend.ErrUnreachable):
			c.log.Debug("upload succeeded after s3 came back", "path", path, "failed_attempts", prev.Failures)
		default:
			c.log.Info("upload succeeded after failed attempts", "path", path, "failed_attempts", prev.Failures)
		}
	}
}

// jobPath names a job for logs and reports: the file's path, or the
// object a tombstone deletes.
func (c *Cache) jobPath(id writeback.ID) string {
	if id.IsTomb() {
		return "(delete) " + id.Key
	}
	n, err := c.snapshot(id.Ino)
	switch {
	case err != nil:
		return fmt.Sprintf("(inode %d)", id.Ino)
	case n.Unlinked:
		return "(deleted) " + n.RemoteKey
	case n.Path == "":
		return "/"
	}
	return n.Path
}

// reconcile runs one write-back step for an inode: upload its content,
// copy it to its new name, rewrite its headers or its directory marker,
// or delete it once unlinked.
func (c *Cache) reconcile(ctx context.Context, ino uint64) writeback.Result {
	st, err := c.acquire(ino)
	if errors.Is(err, ErrNotExist) {
		return done
	}
	if err != nil {
		return retry(err)
	}
	defer c.release(st)
	if res, over := c.resolveStaleUpload(ctx, st); over {
		return res
	}
	plan, res, ok := c.seal(st)
	if !ok {
		return res
	}
	if plan.stream != nil {
		defer c.endStream(plan.stream)
	}
	defer c.endUpload(st, plan)
	// The plan's commit names this attempt (its token) as the file's
	// own. It is made durable, with the blocks the plan reads, before S3
	// can hold the object: after a power cut, the next start then knows
	// the object as its own upload, not another writer's (which would
	// make a conflict copy; see precondition), and uploads the same
	// content again. A failure of this sync is logged and kept for the
	// next fsync to report; the upload goes ahead, as S3 is then the
	// safer copy. So it does if the sync takes longer than PushSyncWait.
	c.commitBeforePush(ctx)
	etag, err := c.push(ctx, st, plan)
	return c.commit(ctx, st, plan, etag, err)
}

// endUpload makes sure an attempt's plan is no longer in flight once it
// ends, whatever path it took, and finishes an inode unlinked meanwhile.
func (c *Cache) endUpload(st *inodeState, p *uploadPlan) {
	st.mu.Lock()
	mine := st.upload == p
	if mine {
		st.upload = nil
	}
	unlinked := st.rec != nil && st.rec.Unlinked && st.handles == 0
	st.mu.Unlock()
	if mine && unlinked {
		c.finalizeIfIdle(st.ino)
	}
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
// reads exactly the blocks of this moment. ok is false when there is
// nothing to send; res then says why.
func (c *Cache) seal(st *inodeState) (plan *uploadPlan, res writeback.Result, ok bool) {
	res = done
	err := c.transact(txBookkeeping, func(t *nsTx) error {
		rec, err := t.get(st.ino)
		if err != nil {
			return errNoChange // gone
		}
		if rec.Unlinked {
			c.detachStream(st)
			if st.handles == 0 && st.upload == nil {
				c.finalizeLocked(t, rec)
				return nil
			}
			return errNoChange // the last close finishes it
		}
		if rec.Ino == RootIno {
			c.detachStream(st)
			if rec.Pending == 0 {
				return errNoChange
			}
			rec.Pending = 0 // the root has no object
			return nil
		}
		if !rec.needsWork() {
			c.detachStream(st)
			return errNoChange
		}
		p := &uploadPlan{target: rec.expectedKey()}
		if rec.ConflictKey != "" {
			p.target, p.conflict = rec.ConflictKey, true
		}
		cond, waitKey, holder, absorbed, err := c.targetCondition(t, rec, p.target)
		if err != nil {
			res = retry(fmt.Errorf("read the journal: %w", err))
			return errNoChange
		}
		if waitKey != "" {
			res = writeback.Result{Outcome: writeback.WaitKey, Key: waitKey, Holder: holder}
			return errNoChange
		}
		if p.conflict && rec.Kind == KindFile {
			complete, err := c.allLocal(rec)
			if err != nil {
				res = retry(err)
				return errNoChange
			}
			if !complete {
				// The conflict copy needs blocks of the version the edit
				// started from, and S3 no longer has it: no request can
				// help.
				c.stats.Unrecoverable.Add(1)
				res = writeback.Result{Outcome: writeback.Permanent, Err: errIncomplete}
				return errNoChange
			}
		}
		if err := c.flushBufLocked(st); err != nil {
			res = retry(fmt.Errorf("store written data: %w", err))
			return errNoChange
		}
		p.cond = cond
		p.copyOnly = rec.Kind == KindFile && rec.Pending&pendData == 0 && rec.RemoteKey != "" && !p.conflict
		p.token = newToken()
		if s := st.stream; s != nil {
			st.stream = nil
			if s.usable(rec, p) {
				p.stream, p.streamVers, p.token = s, maps.Clone(s.vers), s.token
			} else {
				c.dropStream(s)
			}
		}
		p.sealGen = c.newGen()
		p.dataChanges, p.metaVer = st.dataChanges, rec.MetaVer
		rec.OpenGen = 0
		if rec.UploadKey != p.target {
			rec.UploadTokens = ""
		}
		rec.UploadKey = p.target
		rec.UploadIfMatch = cond.IfMatch
		rec.UploadTokens = addToken(rec.UploadTokens, p.token)
		p.snap = rec.clone()
		if absorbed {
			t.del(tombKey(p.target))
		}
		st.upload = p
		plan = p
		return nil
	})
	if err != nil {
		if plan != nil {
			st.mu.Lock()
			if st.upload == plan {
				st.upload = nil
			}
			st.mu.Unlock()
			if plan.stream != nil {
				c.dropStream(plan.stream)
			}
		}
		return nil, retry(err), false
	}
	return plan, res, plan != nil
}

// allLocal reports whether every block of a file is local: dirty, a
// hole, or a clean block in the cache.
func (c *Cache) allLocal(rec *Inode) (bool, error) {
	for _, r := range rec.Runs {
		if r.Dirty || r.Gen == 0 {
			continue
		}
		for idx := r.Start; idx < r.End; idx++ {
			_, found, err := c.blocks.Lookup(blocks.ID{Ino: rec.Ino, Gen: r.Gen, Idx: idx})
			if err != nil {
				return false, err
			}
			if !found {
				return false, nil
			}
		}
	}
	return true, nil
}

// targetCondition works out the precondition for writing key, and whether
// another inode or a pending delete must release it first (holder). A
// tombstone at key is absorbed: the upload replaces the object the delete
// was for, conditional on its ETag, in one request. namespace.mu is held.
func (c *Cache) targetCondition(t *nsTx, rec *Inode, key string) (cond s3backend.Condition, waitKey string, holder writeback.ID, absorbed bool, err error) {
	conditional := c.opt.ConditionalWrites && c.opt.Conflict == ConflictCopy
	wrap := func(cd s3backend.Condition) s3backend.Condition {
		if !conditional {
			return s3backend.Condition{}
		}
		return cd
	}
	if key == rec.RemoteKey && rec.ETag != "" {
		return wrap(s3backend.Condition{IfMatch: rec.ETag}), "", holder, false, nil
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
				claimant = inoFromBytes(v)
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
		if c.rc.deleting[key] {
			return cond, key, writeback.Tomb(key), false, nil
		}
		if ts.ETag != "" {
			return wrap(s3backend.Condition{IfMatch: ts.ETag}), "", holder, true, nil
		}
		return wrap(s3backend.Condition{IfNoneMatch: true}), "", holder, true, nil
	case claimant != 0 && claimant != rec.Ino:
		return cond, key, writeback.Inode(claimant), false, nil
	case claimant == rec.Ino && rec.UploadKey == key:
		// An earlier attempt of ours claimed it; it knows what to expect.
		if rec.UploadIfMatch != "" {
			return wrap(s3backend.Condition{IfMatch: rec.UploadIfMatch}), "", holder, false, nil
		}
	}
	return wrap(s3backend.Condition{IfNoneMatch: true}), "", holder, false, nil
}

func inoFromBytes(v []byte) uint64 {
	if len(v) != 8 {
		return 0
	}
	return uint64(v[0])<<56 | uint64(v[1])<<48 | uint64(v[2])<<40 | uint64(v[3])<<32 |
		uint64(v[4])<<24 | uint64(v[5])<<16 | uint64(v[6])<<8 | uint64(v[7])
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

// commit applies the answer to a push and says what it means for the job.
func (c *Cache) commit(ctx context.Context, st *inodeState, p *uploadPlan, etag string, err error) writeback.Result {
	var changed *sourceChanged
	var based *baseChanged
	switch {
	case err == nil:
		return c.landed(st, p, etag)
	case errors.As(err, &changed):
		return c.adoptChangedSource(st, p, changed.info)
	case errors.As(err, &based):
		return c.baseGone(ctx, st, p, based)
	case errors.Is(err, s3backend.ErrPrecondition):
		return c.precondition(ctx, st, p)
	}
	res := classify(err)
	cerr := c.transact(txBookkeeping, func(t *nsTx) error {
		rec, gerr := t.get(st.ino)
		if gerr != nil {
			return errNoChange
		}
		st.upload = nil
		if rec.UploadID == "" || !p.aborted {
			// Not aborted (a stop, S3 gone): the next attempt hands
			// it to the aborter (resolveStaleUpload).
			return errNoChange
		}
		t.endUpload(rec)
		return nil
	})
	if cerr != nil {
		return retry(cerr)
	}
	if errors.Is(err, ErrStale) && p.copyOnly {
		// The object vanished before it could be copied: upload the
		// content from the cache instead, if it is all there; if not,
		// there is nothing left to move.
		dropped, err := c.dropVanished(st, p)
		if err != nil {
			return retry(err)
		}
		if dropped {
			return done
		}
		if err := c.markDataPending(st); err != nil {
			return retry(err)
		}
		return again
	}
	return res
}

// dropVanished takes out a file whose rename or attribute change could not
// be copied because its object is gone from S3 (another mount moved or
// deleted it first), when no change of its content is here and the
// content is not wholly in the cache either: nothing is left to move, so
// the name goes, as after a delete elsewhere. It reports whether it did.
// Without it, the upload from the cache met the missing blocks and the
// file ended as a conflict that cannot be completed, reported for ever.
func (c *Cache) dropVanished(st *inodeState, p *uploadPlan) (bool, error) {
	dropped := false
	var path string
	err := c.transact(txChange, func(t *nsTx) error {
		rec, err := t.get(st.ino)
		if err != nil || rec.Unlinked || rec.Parent == 0 || rec.Kind != KindFile ||
			rec.RemoteKey != p.snap.RemoteKey || rec.Pending&pendData != 0 || st.dataChanges != p.dataChanges {
			return errNoChange
		}
		if complete, err := c.allLocal(rec); err != nil || complete {
			return err
		}
		dir, err := t.get(rec.Parent)
		if err != nil {
			return err
		}
		path = rec.Path
		rec.UploadKey, rec.UploadTokens, rec.UploadIfMatch = "", "", ""
		if err := c.removeEntryLocked(t, dir, rec.Name, rec, c.nextSeq()); err != nil {
			return err
		}
		dropped = true
		return nil
	})
	if dropped {
		c.wb.Release(p.target) // jobs waiting for the key go on at once
		c.log.Warn("a file renamed or changed here vanished from S3 before the change reached it (another mount moved or deleted it first), and its content is not in the cache: this name goes; where the other mount put it shows in its directory's next listing",
			"path", path, "key", p.snap.RemoteKey)
	}
	return dropped, err
}

// landed applies an upload that S3 took. The attempt is done: every change
// made before it began is in S3, and an fsync waiting for those returns.
// Work left (changes made while it ran, which told the scheduler, or
// headers to rewrite after a streamed upload, which did not) makes the
// scheduler run the job again.
func (c *Cache) landed(st *inodeState, p *uploadPlan, etag string) writeback.Result {
	var newly []blocks.ID
	more := false
	// The record from before this upload, which a power cut before the
	// next sync brings back, reads the file's clean blocks from a version
	// S3 no longer has: they stay until that sync (before the commit, so
	// that none is evicted meanwhile, and after it, in case a sync in
	// between let them go).
	c.blocks.HoldInode(st.ino)
	err := c.transact(txBookkeeping, func(t *nsTx) error {
		rec, err := t.get(st.ino)
		if err != nil {
			return errNoChange
		}
		st.upload = nil
		newly = c.applySuccess(t, st, rec, p, etag)
		more = !rec.Unlinked && rec.needsWork()
		return nil
	})
	if err != nil {
		return retry(err)
	}
	for _, id := range newly {
		c.blocks.MarkClean(id)
	}
	c.blocks.HoldInode(st.ino)
	c.stats.UploadsDone.Add(1)
	if p.snap.Kind == KindFile && !p.copyOnly {
		c.stats.BytesUploaded.Add(p.snap.Size)
	}
	c.wb.Release(p.target)
	switch {
	case p.usedStream && p.headersStale():
		c.wb.AddNow(writeback.Inode(st.ino)) // rewrite the headers now, server-side
	case more:
		c.wb.Add(writeback.Inode(st.ino))
	}
	c.tasks.Go(func() { c.dropUnusedBlocks(st.ino) })
	return done
}

// applySuccess updates the record after an upload landed (namespace.mu
// held, st locked through t). It returns the blocks that became clean.
func (c *Cache) applySuccess(t *nsTx, st *inodeState, rec *Inode, p *uploadPlan, etag string) []blocks.ID {
	t.endUpload(rec) // completed
	if p.conflict {
		return c.applyConflictSaved(t, st, rec, p, etag)
	}
	oldKey, oldETag := rec.RemoteKey, rec.ETag
	rec.RemoteKey, rec.ETag = p.target, etag
	rec.RemoteMod = c.ownUploadMod()
	rec.AttrsKnown = true
	rec.SyncedSeq = c.nextSeq()
	rec.ValidUntil = c.now() + int64(c.opt.MetadataTTL)
	rec.UploadKey, rec.UploadTokens, rec.UploadIfMatch = "", "", ""
	var newly []blocks.ID
	if rec.Kind == KindFile {
		rec.RemoteSize = p.snap.Size
		for _, r := range rec.Runs {
			if r.Dirty && r.Gen < p.sealGen {
				for idx := r.Start; idx < r.End; idx++ {
					newly = append(newly, blocks.ID{Ino: rec.Ino, Gen: r.Gen, Idx: idx})
				}
			}
		}
		rec.Runs = cleanRuns(rec.Runs, p.sealGen)
		if st.dataChanges == p.dataChanges {
			rec.Pending &^= pendData
		}
		// The version the edit started from is in S3 again, in this
		// upload: its blocks need no longer be kept.
		ino := rec.Ino
		t.after = append(t.after, func() { c.blocks.Unpin(ino) })
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
	return newly
}

// markDataPending marks a file's content as not in S3, so that the next
// attempt uploads it from the cache rather than copying it server-side.
func (c *Cache) markDataPending(st *inodeState) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.rec == nil {
		return nil
	}
	old := st.rec.clone()
	st.rec.Pending |= pendData
	if err := update(c.db, func(txn *badger.Txn) error { return c.putInode(txn, old, st.rec) }); err != nil {
		*st.rec = *old
		return fmt.Errorf("cache commit: %w", err)
	}
	return nil
}

// resolveStaleUpload settles a claim left by an attempt whose outcome is
// unknown (crash, timeout) when the file now wants another key: if the
// object there carries one of our tokens it is adopted as the file's
// object, otherwise the claim is dropped. A multipart upload the attempt
// left is handed to the aborter (an abort record, written with the change
// that lets go of it), so that the file's upload never waits for its
// abort: S3 may refuse that for good. over says the attempt ends here
// with res.
func (c *Cache) resolveStaleUpload(ctx context.Context, st *inodeState) (res writeback.Result, over bool) {
	st.mu.Lock()
	rec := st.rec
	if rec == nil || rec.UploadKey == "" || st.upload != nil {
		st.mu.Unlock()
		return done, false
	}
	want := rec.expectedKey()
	if rec.ConflictKey != "" {
		want = rec.ConflictKey
	}
	key, tokens, uploadID := rec.UploadKey, rec.UploadTokens, rec.UploadID
	st.mu.Unlock()
	if key == want && uploadID == "" {
		return done, false
	}
	var info s3backend.ObjectInfo
	var ours bool
	if key != want {
		var err error
		info, err = c.store.Head(ctx, key)
		if err != nil && !errors.Is(err, s3backend.ErrNotFound) {
			return retry(err), true
		}
		ours = err == nil && hasToken(tokens, info.Metadata[metaUpload])
	}
	released := false
	err := c.transact(txBookkeeping, func(t *nsTx) error {
		rec, err := t.get(st.ino)
		if err != nil || rec.UploadKey != key {
			return errNoChange
		}
		rec.UploadID = "" // to the aborter
		if key == want {
			return nil
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
		released = true
		return nil
	})
	if err != nil {
		return retry(err), true
	}
	if released {
		c.wb.Release(key)
	}
	return done, false
}
