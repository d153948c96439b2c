package cache

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/keelfs/keelfs/cache/blocks"
	"github.com/keelfs/keelfs/cache/writeback"
	"github.com/keelfs/keelfs/s3backend"
)

// The conflict path (DESIGN rule 7). An upload is conditional on the ETag
// the edit started from (or on absence). When another writer got there
// first, the local version is saved beside theirs as
// NAME.conflict-HOST-TIME and the name takes their version. It always
// ends: each step either lands, is our own earlier attempt, moves to the
// next unused conflict name, or fails for good because the local version
// cannot be put together (errIncomplete), which keeps the data and says
// so. To make that last case rare, the unchanged blocks of a partly
// edited file are fetched into the cache and kept there while the edit is
// local (fetchAhead).

// ConflictInfo describes a conflict copy this mount made.
type ConflictInfo struct {
	Path string    // the file's name
	Key  string    // where the local version was saved
	Time time.Time // when
}

// maxRecentConflicts is how many conflict copies status remembers.
const maxRecentConflicts = 20

// RecentConflicts returns the last conflict copies this mount made,
// oldest first.
func (c *Cache) RecentConflicts() []ConflictInfo {
	c.rc.mu.Lock()
	defer c.rc.mu.Unlock()
	return append([]ConflictInfo(nil), c.rc.recent...)
}

func (c *Cache) noteConflict(ci ConflictInfo) {
	c.rc.mu.Lock()
	defer c.rc.mu.Unlock()
	c.rc.recent = append(c.rc.recent, ci)
	if n := len(c.rc.recent); n > maxRecentConflicts {
		c.rc.recent = c.rc.recent[n-maxRecentConflicts:]
	}
}

// precondition handles a 412 on the target: our own earlier attempt
// landed (a retried request, or a crash after the upload), or another
// writer got there first and the conflict path starts.
func (c *Cache) precondition(ctx context.Context, st *inodeState, p *uploadPlan) writeback.Result {
	info, herr := c.store.Head(ctx, p.target)
	if herr != nil && !errors.Is(herr, s3backend.ErrNotFound) {
		return retry(herr)
	}
	ours := herr == nil && hasToken(p.snap.UploadTokens, info.Metadata[metaUpload])
	if ours && info.Metadata[metaUpload] == p.token {
		// This very attempt landed; the 412 was for a retried request.
		return c.landed(st, p, info.ETag)
	}
	res := again
	err := c.transact(txBookkeeping, func(t *nsTx) error {
		rec, err := t.get(st.ino)
		if err != nil {
			res = done
			return errNoChange
		}
		st.upload = nil
		if p.aborted {
			t.endUpload(rec)
		}
		switch {
		case ours:
			// An older attempt of ours landed (its answer was lost to a
			// crash or a timeout): that object is the file's remote
			// version now, with an earlier snapshot's content; overwrite
			// it.
			if p.target == rec.RemoteKey {
				rec.ETag, rec.RemoteSize = info.ETag, info.Size
			} else {
				rec.UploadIfMatch = info.ETag
			}
		case p.snap.Kind == KindDir:
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
		case p.conflict:
			// The conflict name is taken (an earlier conflict copy made in
			// the same second): the next one.
			rec.ConflictKey, rec.ConflictETag = nextConflictName(rec.ConflictKey), ""
			rec.UploadKey, rec.UploadTokens, rec.UploadIfMatch, rec.UploadID = "", "", "", ""
			res = writeback.Result{Outcome: writeback.Conflict}
		default:
			c.startConflict(rec, p.target)
			res = writeback.Result{Outcome: writeback.Conflict}
		}
		return nil
	})
	if err != nil {
		return retry(err)
	}
	return res
}

// startConflict turns an inode's upload into the saving of its local
// version beside another writer's (t holds rec). A multipart upload the
// record still holds is left to the aborter (an abort record).
func (c *Cache) startConflict(rec *Inode, target string) {
	rec.ConflictKey = c.conflictName(target)
	rec.ConflictETag = ""
	rec.UploadKey, rec.UploadTokens, rec.UploadIfMatch, rec.UploadID = "", "", "", ""
	c.stats.Conflicts.Add(1)
	c.log.Warn("conflict: another writer changed the object since this edit began; saving the local version beside it",
		"path", rec.Path, "key", target, "conflict_key", rec.ConflictKey)
}

// baseGone handles an upload that could not be sent because the object
// version its unchanged blocks come from is gone (a GET of them, or an
// UploadPartCopy, met a 412 or a 404). If what replaced it is an earlier
// upload of ours whose answer was lost, that object holds the same bytes
// in every block still clean: it becomes the base and the upload goes
// again at once. Otherwise another writer replaced it: a conflict. A
// conflict copy that meets it cannot be completed: that is final.
func (c *Cache) baseGone(ctx context.Context, st *inodeState, p *uploadPlan, based *baseChanged) writeback.Result {
	if p.conflict {
		c.stats.Unrecoverable.Add(1)
		st.mu.Lock()
		st.upload = nil
		st.mu.Unlock()
		return writeback.Result{Outcome: writeback.Permanent, Err: fmt.Errorf("%w (%v)", errIncomplete, based.err)}
	}
	var info s3backend.ObjectInfo
	var herr error
	if p.snap.RemoteKey != "" {
		info, herr = c.store.Head(ctx, p.snap.RemoteKey)
		if herr != nil && !errors.Is(herr, s3backend.ErrNotFound) {
			return retry(herr)
		}
	}
	ours := p.snap.RemoteKey != "" && herr == nil && info.Metadata[metaUpload] != "" &&
		hasToken(p.snap.UploadTokens, info.Metadata[metaUpload])
	res := again
	err := c.transact(txBookkeeping, func(t *nsTx) error {
		rec, err := t.get(st.ino)
		if err != nil {
			res = done
			return errNoChange
		}
		st.upload = nil
		if p.aborted {
			t.endUpload(rec)
		}
		rec.UploadID = "" // one push did not abort is left to the aborter
		if ours {
			if rec.RemoteKey == p.snap.RemoteKey && rec.ETag == p.snap.ETag {
				rec.ETag, rec.RemoteSize = info.ETag, info.Size
			}
			return nil
		}
		c.startConflict(rec, p.target)
		res = writeback.Result{Outcome: writeback.Conflict}
		return nil
	})
	if err != nil {
		return retry(err)
	}
	return res
}

// applyConflictSaved runs once the local version is safe under its
// conflict name: the name takes the other writer's version, unless the
// file changed again meanwhile (then the newer local state is saved over
// the conflict copy first, and the scheduler, told of those changes,
// runs it again).
func (c *Cache) applyConflictSaved(t *nsTx, st *inodeState, rec *Inode, p *uploadPlan, etag string) []blocks.ID {
	rec.ConflictETag = etag
	rec.UploadKey, rec.UploadTokens, rec.UploadIfMatch = "", "", ""
	if st.dataChanges != p.dataChanges || rec.MetaVer != p.metaVer {
		return nil
	}
	c.log.Warn("conflict: local version saved", "path", rec.Path, "conflict_key", rec.ConflictKey)
	c.noteConflict(ConflictInfo{Path: rec.Path, Key: rec.ConflictKey, Time: c.opt.Now()})
	rec.ConflictKey, rec.ConflictETag = "", ""
	// The object of a name this file was renamed from goes, as after a
	// rename that landed: its content is in the conflict copy now.
	if old := rec.RemoteKey; old != "" && old != rec.expectedKey() {
		t.tomb(old, rec.ETag, rec.Kind == KindDir)
	}
	// The name now shows the other writer's version: forget ours.
	rec.RemoteKey, rec.ETag = rec.expectedKey(), ""
	rec.Pending &^= pendData | pendMeta
	rec.ValidUntil = 0
	rec.Runs = nil
	rec.OpenGen = 0
	rec.ContentVer++
	st.conflictVer = rec.ContentVer // handles opened before end here
	ino := rec.Ino
	t.after = append(t.after, func() {
		c.blocks.Unpin(ino)
		c.blocks.Stale(ino)
		c.tasks.Go(func() {
			if _, err := c.revalidate(c.tasks.ctx, ino); err != nil && !errors.Is(err, ErrNotExist) && !errors.Is(err, context.Canceled) {
				c.log.Warn("cache: refresh after conflict", "err", err)
			}
			c.dropUnusedBlocks(ino)
			if c.opt.Invalidate != nil {
				c.opt.Invalidate(ino)
			}
		})
	})
	return nil
}

// adoptChangedSource handles a rename or attribute change of a file that
// another writer replaced meanwhile: the change applies to their version,
// so nothing of theirs is lost.
func (c *Cache) adoptChangedSource(st *inodeState, p *uploadPlan, info s3backend.ObjectInfo) writeback.Result {
	err := c.transact(txBookkeeping, func(t *nsTx) error {
		rec, err := t.get(st.ino)
		if err != nil {
			return errNoChange
		}
		st.upload = nil
		if rec.RemoteKey == p.snap.RemoteKey && st.dataChanges == p.dataChanges {
			c.log.Warn("object changed in s3 before a rename or attribute change reached it; applying the change to the new version",
				"key", rec.RemoteKey)
			perm, uid, gid, mtime := rec.Perm, rec.UID, rec.GID, rec.Mtime
			atime, xattrs := rec.Atime, rec.Xattrs
			e := s3backend.ListEntry{Key: rec.RemoteKey, ETag: info.ETag, Size: info.Size, LastModified: info.LastModified}
			if err := c.newVersionLocked(t, rec, rec.RemoteKey, e, &info); err != nil {
				return err
			}
			if rec.Pending&pendMeta != 0 {
				rec.Perm, rec.UID, rec.GID, rec.Mtime = perm, uid, gid, mtime
				rec.Atime, rec.Xattrs = atime, xattrs
			}
		}
		return nil
	})
	if err != nil {
		return retry(err)
	}
	return again
}

// conflictName is NAME.conflict-HOST-UTCTIME.
func (c *Cache) conflictName(key string) string {
	return fmt.Sprintf("%s.conflict-%s-%s", key, c.opt.Hostname, c.opt.Now().UTC().Format("20060102T150405Z"))
}

// nextConflictName is the name after a taken one: NAME.conflict-HOST-TIME-2,
// then -3, and so on.
func nextConflictName(key string) string {
	if i := strings.LastIndexByte(key, '-'); i >= 0 && strings.HasSuffix(key[:i], "Z") {
		if n, err := strconv.Atoi(key[i+1:]); err == nil && n >= 2 {
			return key[:i] + "-" + strconv.Itoa(n+1)
		}
	}
	return key + "-2"
}

// startFetchAhead runs fetchAhead for ino in the background.
func (c *Cache) startFetchAhead(ino uint64) {
	c.rc.ahead.Add(1)
	if !c.tasks.Go(func() {
		defer c.rc.ahead.Done()
		c.fetchAhead(ino)
	}) {
		c.rc.ahead.Done()
	}
}

// fetchAhead fetches into the cache, and keeps there, the blocks of a
// partly edited file that it did not change and that are not cached yet:
// from the version the edit started from, while S3 still has it. Should
// another writer replace the object before the upload, the local version
// can then still be saved as a conflict copy; otherwise its unchanged
// parts would be gone with that version. Files whose missing part is
// larger than CompleteMax are left to chance (and to UploadPartCopy).
func (c *Cache) fetchAhead(ino uint64) {
	st, err := c.acquire(ino)
	if err != nil {
		return
	}
	defer c.release(st)
	st.mu.Lock()
	rec := st.rec
	if rec == nil || rec.Kind != KindFile || rec.RemoteKey == "" || rec.ETag == "" || c.opt.CompleteMax < 0 {
		st.mu.Unlock()
		return
	}
	snap := rec.clone()
	st.mu.Unlock()
	var clean []blocks.ID
	var missing int64
	for _, r := range snap.Runs {
		if r.Dirty || r.Gen == 0 {
			continue
		}
		for idx := r.Start; idx < r.End; idx++ {
			id := blocks.ID{Ino: snap.Ino, Gen: r.Gen, Idx: idx}
			clean = append(clean, id)
			if _, found, err := c.blocks.Lookup(id); err != nil || !found {
				missing += c.opt.BlockSize
			}
		}
	}
	if len(clean) == 0 || missing > c.opt.CompleteMax {
		return
	}
	if !c.blocks.Pin(snap.Ino, clean, missing) {
		return // pinned blocks would crowd out the cache
	}
	if missing == 0 {
		return
	}
	nblocks := (snap.Size + c.opt.BlockSize - 1) / c.opt.BlockSize
	var failed error
	for _, r := range c.claim(snap, 0, nblocks) {
		if failed != nil {
			c.failRun(r, failed) // every claimed run must end, or its readers wait
			continue
		}
		c.runBackground(r)
		if err := r.calls[len(r.calls)-1].err; err != nil {
			failed = err
		}
	}
	if failed != nil && !errors.Is(failed, context.Canceled) {
		c.log.Info("cache: fetch ahead of an edited file's unchanged blocks stopped", "path", snap.Path, "err", failed)
	}
}
