package cache

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/keelfs/keelfs/s3backend"
)

// flight runs one call per key at a time; callers that arrive while it
// runs wait for it and share its result.
type flight struct {
	mu sync.Mutex
	m  map[uint64]*flightCall
}

type flightCall struct {
	done chan struct{}
	err  error
}

func (f *flight) do(key uint64, fn func() error) error {
	f.mu.Lock()
	if f.m == nil {
		f.m = make(map[uint64]*flightCall)
	}
	if call, ok := f.m[key]; ok {
		f.mu.Unlock()
		<-call.done
		return call.err
	}
	call := &flightCall{done: make(chan struct{})}
	f.m[key] = call
	f.mu.Unlock()
	call.err = fn()
	f.mu.Lock()
	delete(f.m, key)
	f.mu.Unlock()
	close(call.done)
	return call.err
}

// fill lists a directory in S3 and merges the result into the cache: one
// ListObjectsV2 walk for all names, sizes and ETags. Local changes not yet
// in S3 always win over what the listing says. It returns once the names
// are known: the headers of object versions not seen before (x-amz-meta-*:
// mode, owner, times, type) are learned in the background and many at once
// (queueHeads; for the first page's entries while the next pages are
// listed), and a stat waits only for the entry it asks about
// (learnHeaders). A program that wants names only (find, ls -f, a web
// app listing uploads) does not pay a HEAD per object first.
func (c *Cache) fill(ctx context.Context, ino uint64) error {
	return c.ns.fills.do(ino, func() error { return c.doFill(ctx, ino) })
}

func (c *Cache) doFill(ctx context.Context, ino uint64) error {
	dir, err := c.snapshot(ino)
	if err != nil {
		return err
	}
	if dir.Kind != KindDir {
		return ErrNotDir
	}
	start := c.nextSeq()
	epoch := start
	prefix := dirPrefix(dir.Path)
	defer c.ns.released.begin(start, prefix)()
	var (
		batch    []s3backend.ListEntry
		deferred []s3backend.ListEntry
		later    []uint64 // entries whose HEADs are queued when the listing ends
		heldBack bool     // a batch's HEADs were left to a walk over the directory
		count    uint32
		stale    bool
	)
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		first := int(count)-len(batch) < earlyHeads // the batch starts on the first page
		d, heads, ok, err := c.mergeBatch(ino, prefix, batch, epoch, start, false)
		deferred = append(deferred, d...)
		batch = batch[:0]
		if err == nil && !ok {
			stale = true
			return errListingStale
		}
		// The HEADs of the first page's entries overlap the rest of the
		// listing (an ls -l waits for both). Those of later pages wait
		// until the listing ends: they would compete with its LIST
		// pages for the server, and a program that wants names only
		// (find, ls -f) would wait for them. Up to maxHeldHeads are kept
		// meanwhile; beyond, the walk goes over the whole directory
		// instead (100 000 jobs hold their keys, and a heap near the
		// memory limit costs GC time).
		switch {
		case first:
			c.queueHeads(ino, inosOf(nil, heads), false)
		case heldBack:
		case len(later)+len(heads) > maxHeldHeads:
			later, heldBack = nil, true
		default:
			later = inosOf(later, heads)
		}
		return err
	}
	err = c.store.List(ctx, s3backend.ListInput{Prefix: prefix, Delimiter: "/"}, func(e s3backend.ListEntry) error {
		count++
		batch = append(batch, e)
		if len(batch) >= 256 {
			return flush()
		}
		return nil
	})
	if err == nil {
		err = flush()
	}
	if stale {
		return nil // the directory moved while it was listed; the next access lists the new place
	}
	if err != nil {
		return err
	}
	if err := c.sweep(ino, epoch, start); err != nil {
		return err
	}
	if len(deferred) > 0 {
		_, heads, _, err := c.mergeBatch(ino, prefix, deferred, epoch, start, false)
		if err != nil {
			return err
		}
		later = inosOf(later, heads)
	}
	err = c.transact(txBookkeeping, func(t *nsTx) error {
		d, err := t.get(ino)
		if err != nil {
			return err
		}
		if d.Path != dir.Path {
			return errNoChange // moved while listed
		}
		c.headIfUnknown(t, d) // a directory without a marker: its own HEAD says so
		later = inosOf(later, t.heads)
		d.ListedUntil = c.now() + int64(c.opt.MetadataTTL)
		d.FillEpoch = epoch
		d.Entries = count
		return nil
	})
	// Whatever the outcome: the entries merged so far are in the cache.
	c.queueHeads(ino, later, heldBack)
	return err
}

// earlyHeads is the size of a LIST page: a listing queues the HEADs of
// the batches of entries that start within it while it goes on (see
// doFill).
const earlyHeads = 1000

// maxHeldHeads is the number of HEADs a listing keeps until it ends, and
// a directory's walk in its queue; beyond, the walk goes over the whole
// directory instead (see doFill, queueHeads).
const maxHeldHeads = 10000

// inosOf appends the inodes of jobs to inos.
func inosOf(inos []uint64, jobs []headJob) []uint64 {
	for _, j := range jobs {
		inos = append(inos, j.ino)
	}
	return inos
}

var errListingStale = errors.New("listing stale")

// local reports whether an inode's state must not be replaced by what a
// listing that started at sequence start says: it has changes S3 has not
// seen, an upload in flight, or S3 learned of it after the listing began.
func local(n *Inode, start uint64) bool {
	return busy(n) || n.SyncedSeq > start
}

// busy reports local changes S3 has not seen, or an upload in flight.
func busy(n *Inode) bool { return n.needsWork() || n.UploadKey != "" }

// mergeBatch merges listed entries of directory ino. ok is false if the
// directory moved since the listing began (its result must be dropped).
// Objects whose name is taken by a directory entry not yet confirmed by
// this listing are returned, to be decided after the sweep. confirm makes
// each listed entry fresh for the TTL by itself (a window of a big
// directory, see refreshWindow) rather than through the directory's
// listing. heads are the HEADs of the entries whose headers are to be
// learned (see queueHeads).
func (c *Cache) mergeBatch(ino uint64, prefix string, entries []s3backend.ListEntry, epoch, start uint64, confirm bool) (deferred []s3backend.ListEntry, heads []headJob, ok bool, err error) {
	err = c.transact(txBookkeeping, func(t *nsTx) error {
		dir, err := t.get(ino)
		if err != nil {
			return err
		}
		if dirPrefix(dir.Path) != prefix || dir.Unlinked {
			return errNoChange
		}
		for _, e := range entries {
			if !e.IsPrefix && e.Key == prefix {
				c.mergeMarker(t, dir, e, start)
				continue
			}
			name, valid := nameFromListing(prefix, e.Key, e.IsPrefix)
			if !valid {
				c.logBadKey(e.Key)
				continue
			}
			if d, err := c.mergeEntry(t, dir, name, e, nil, epoch, start, confirm); err != nil {
				return err
			} else if d {
				deferred = append(deferred, e)
			}
		}
		ok, heads = true, t.heads
		return nil
	})
	if err != nil || !ok {
		return nil, nil, false, err
	}
	return deferred, heads, true, nil
}

// mergeMarker notes a directory's own marker object.
func (c *Cache) mergeMarker(t *nsTx, dir *Inode, e s3backend.ListEntry, start uint64) {
	if local(dir, start) || dir.Ino == RootIno {
		return
	}
	if dir.RemoteKey == e.Key && dir.ETag == e.ETag {
		return
	}
	dir.RemoteKey, dir.ETag, dir.AttrsKnown = e.Key, e.ETag, false
	t.head(dir.Ino, e.Key, e.ETag)
}

// mergeEntry merges one listed entry (or a HEAD result, info) into dir.
// It returns deferred=true for an object shadowed by a directory entry that
// this listing has not confirmed yet. With info or confirm, the entry is
// fresh for the TTL by itself (see mergeBatch).
func (c *Cache) mergeEntry(t *nsTx, dir *Inode, name string, e s3backend.ListEntry, info *s3backend.ObjectInfo, epoch, start uint64, confirm bool) (deferred bool, err error) {
	key := e.Key
	d, exists, err := t.dentry(dir.Ino, name)
	if err != nil {
		return false, err
	}
	if exists {
		child, err := t.get(d.Ino)
		if err != nil {
			return false, err
		}
		seen := func() {
			if epoch != 0 {
				d.Epoch = epoch
				t.seenDentry(dir.Ino, name, d)
			}
			if info != nil || confirm {
				child.ValidUntil = c.now() + int64(c.opt.MetadataTTL)
			}
		}
		if local(child, start) {
			seen()
			c.headIfUnknown(t, child)
			return false, nil
		}
		switch {
		case e.IsPrefix && child.Kind == KindDir:
			if child.RemoteKey == "" {
				child.RemoteKey = key
			}
			seen()
			c.headIfUnknown(t, child)
			return false, nil
		case e.IsPrefix:
			// A file and a directory of the same name: the directory wins.
			c.logShadowed(strings.TrimSuffix(key, "/"))
			if err := c.removeEntryLocked(t, dir, name, child, start); err != nil {
				return false, err
			}
		case child.Kind == KindDir:
			if epoch == 0 || d.Epoch == epoch {
				c.logShadowed(key)
				return false, nil
			}
			return true, nil
		case child.RemoteKey == key && child.ETag == e.ETag && (info == nil || child.AttrsKnown):
			c.notePlaceRewrite(child, e.LastModified)
			seen()
			c.headIfUnknown(t, child)
			return false, nil
		default:
			if err := c.newVersionLocked(t, child, key, e, info); err != nil {
				return false, err
			}
			seen()
			return false, nil
		}
	}
	// Not known here. Keys held by an inode that moved away, or waiting to
	// be deleted, stay hidden, and so do the versions whose DELETE landed
	// while S3 answered this listing (see releases). In that order: a release is
	// noted before its record goes.
	if claimed, err := c.claimed(key); err != nil || claimed {
		return false, err
	}
	if c.ns.released.since(start, key, e.ETag, e.IsPrefix) {
		return false, nil
	}
	path := childPath(dir.Path, name)
	ino, err := c.allocIno(t, path)
	if err != nil {
		return false, err
	}
	now := c.now()
	rec := &Inode{Ino: ino, Gen: c.nextSeq(), Parent: dir.Ino, Name: name, Path: path,
		UID: c.opt.UID, GID: c.opt.GID, Ctime: now, RemoteKey: key, SyncedSeq: 0}
	if e.IsPrefix {
		rec.Kind, rec.Perm, rec.Mtime, rec.Atime = KindDir, c.opt.DirMode, now, now
		if !c.opt.SkipHeaders {
			t.head(ino, key, "")
		} else {
			rec.AttrsKnown = true
		}
	} else {
		rec.Kind, rec.Perm = KindFile, c.opt.FileMode
		c.setVersion(rec, e.ETag, e.Size, e.LastModified.UnixNano())
		if info != nil {
			c.applyHeaders(rec, info)
		} else if c.opt.SkipHeaders {
			rec.AttrsKnown = true
		} else {
			t.head(ino, key, e.ETag)
		}
	}
	if info != nil || confirm {
		rec.ValidUntil = now + int64(c.opt.MetadataTTL)
	}
	t.add(rec)
	t.setDentry(dir.Ino, name, dentry{Ino: ino, Epoch: epoch, Kind: dentryKind(rec)})
	return false, nil
}

// headIfUnknown asks for the HEAD of a listed entry the cache already
// knew but whose headers it has not read (an earlier HEAD failed, or the
// mount stopped before it ran): a listing learns the headers of the
// entries that need them when it merges them, not only of those new to
// it. One that comes to need them later (a directory that takes another
// mount's marker) is learned by the next listing, or by a stat.
func (c *Cache) headIfUnknown(t *nsTx, n *Inode) {
	if !c.needsHeaders(n) {
		return
	}
	etag := n.ETag
	if n.Kind == KindDir {
		etag = ""
	}
	t.head(n.Ino, n.RemoteKey, etag)
}

// dentryKind is the kind a directory entry records for n: 0 (unknown, a
// readdir reports DT_UNKNOWN) for an object whose headers, which may make
// it a symlink or a special file, are not known yet.
func dentryKind(n *Inode) Kind {
	if n.Kind == KindFile && !n.AttrsKnown {
		return 0
	}
	return n.Kind
}

// setVersion points a file record at a new object version: every block
// comes from the object until written.
func (c *Cache) setVersion(n *Inode, etag string, size, mtime int64) {
	n.ETag, n.RemoteSize, n.Size, n.Mtime = etag, size, size, mtime
	n.RemoteMod = 0
	if mtime != 0 {
		n.RemoteMod = time.Unix(0, mtime).Unix()
	}
	n.Atime, n.Rdev, n.Xattrs = mtime, 0, nil // until the headers are read
	n.AttrsKnown = false
	gen := c.newGen()
	n.Runs = nil
	if nb := (size + c.opt.BlockSize - 1) / c.opt.BlockSize; nb > 0 {
		n.Runs = []Run{{Start: 0, End: nb, Gen: gen}}
	}
	n.OpenGen = 0
	n.Target = ""
	n.ContentVer++
}

// newVersionLocked replaces a clean file's content with another writer's
// version. Blocks of the old version are dropped once no handle reads them.
func (c *Cache) newVersionLocked(t *nsTx, n *Inode, key string, e s3backend.ListEntry, info *s3backend.ObjectInfo) error {
	n.RemoteKey = key
	c.setVersion(n, e.ETag, e.Size, e.LastModified.UnixNano())
	n.Kind = KindFile
	if info != nil {
		c.applyHeaders(n, info)
	} else if c.opt.SkipHeaders {
		n.AttrsKnown = true
	} else {
		t.head(n.Ino, key, e.ETag)
	}
	if err := c.kindChangedLocked(t, n); err != nil {
		return err
	}
	ino := n.Ino
	t.after = append(t.after, func() {
		c.blocks.Stale(ino) // its opens keep it; no new one gets it
		c.dropUnusedBlocks(ino)
		if c.opt.Invalidate != nil {
			c.opt.Invalidate(ino)
		}
	})
	return nil
}

// notePlaceRewrite notes the LastModified a listing shows for a clean
// file's known version (same key, same ETag). One that moved on since
// the version was seen says the object was rewritten in place, as another
// mount's chmod, chown, touch or xattr change does: its headers are read
// again. The first one seen of this mount's own upload (RemoteMod below
// zero: see ownUploadMod) is its baseline if it is no later than the
// upload, and so is any for a record that knows none (an older keelfs
// wrote it): no HEAD. A file with local changes keeps its own attributes.
//
// RemoteMod keeps the listing's value: the HEADs never change it, so that
// a server whose HEAD and LIST disagree on the second costs one HEAD per
// version, not one per listing.
func (c *Cache) notePlaceRewrite(n *Inode, lastModified time.Time) {
	mod := lastModified.Unix()
	switch {
	case lastModified.IsZero() || mod == n.RemoteMod:
		return
	case n.RemoteMod == 0, n.RemoteMod < 0 && mod <= -n.RemoteMod:
		n.RemoteMod = mod
		return
	}
	if n.AttrsKnown && !busy(n) && !c.opt.SkipHeaders {
		n.AttrsKnown = false
	}
	n.RemoteMod = mod
}

// ownUploadSlack is how much later than this mount's clock at the answer
// S3's LastModified of its own upload may be and still count as that
// upload (clocks apart; S3 stamps the upload's start).
const ownUploadSlack = 2

// ownUploadMod is the RemoteMod of an upload this mount just made: its
// answer carries no LastModified, so it holds the latest one (negated)
// that the next listing may show for it (notePlaceRewrite).
func (c *Cache) ownUploadMod() int64 {
	return -(time.Unix(0, c.now()).Unix() + ownUploadSlack)
}

// applyHeaders sets a record's attributes from an object's headers.
func (c *Cache) applyHeaders(n *Inode, info *s3backend.ObjectInfo) {
	n.AttrsKnown = true
	if c.opt.SkipHeaders {
		return
	}
	h := parseHeaders(info.Metadata)
	if h.HasMode {
		n.Perm = h.Mode & 0o7777
		if h.Kind != 0 && n.Kind == KindFile {
			n.Kind = h.Kind
		}
	}
	if h.HasUID {
		n.UID = h.UID
	}
	if h.HasGID {
		n.GID = h.GID
	}
	if h.HasMtime {
		n.Mtime = h.Mtime
	} else if n.Kind != KindDir && !info.LastModified.IsZero() {
		n.Mtime = info.LastModified.UnixNano()
	}
	if h.HasCtime {
		n.Ctime = h.Ctime
	}
	n.Atime = n.Mtime
	if h.HasAtime {
		n.Atime = h.Atime
	}
	n.Rdev = 0
	if h.HasRdev && n.Kind.isDevice() {
		n.Rdev = h.Rdev
	}
	n.Xattrs = h.Xattrs
}

// claimed reports whether an object key is held by an inode that moved
// away from it or is waiting to be deleted (or, for a directory key, lies
// under a directory that is).
func (c *Cache) claimed(key string) (bool, error) {
	found := false
	err := c.db.View(func(txn *badger.Txn) error {
		for _, k := range [][]byte{claimKey(key), tombKey(key)} {
			if _, err := txn.Get(k); err == nil {
				found = true
				return nil
			} else if !errors.Is(err, badger.ErrKeyNotFound) {
				return err
			}
		}
		return nil
	})
	return found, err
}

// removeEntryLocked takes an entry out of the cache because S3 no longer
// has it. Its inode lives on, detached from S3, while handles are open.
//
// A directory with local work anywhere under it (a file created in it
// after the listing began) stays: its entry is kept, and the work's
// upload will create the prefix again. Judged here, under the namespace
// lock, since any check before it races with that create.
func (c *Cache) removeEntryLocked(t *nsTx, dir *Inode, name string, child *Inode, start uint64) error {
	if child.Kind == KindDir {
		if l, err := c.subtreeLocalTx(t, child.Ino, start); err != nil || l {
			return err
		}
	}
	t.delDentry(dir.Ino, name)
	if child.Kind == KindDir {
		if err := c.removeSubtreeLocked(t, child.Ino); err != nil {
			return err
		}
	}
	child.Parent, child.Unlinked = 0, true
	child.RemoteKey, child.Pending = "", 0
	st := t.state(child.Ino)
	if st.handles == 0 && st.upload == nil {
		t.drop(child.Ino)
	}
	if dir.Entries > 0 {
		dir.Entries--
	}
	if c.opt.InvalidateEntry != nil {
		parent := dir.Ino
		t.after = append(t.after, func() { c.opt.InvalidateEntry(parent, name) })
	}
	return nil
}

// removeSubtreeLocked forgets everything under a directory that vanished
// from S3. Only called when nothing under it has local changes.
func (c *Cache) removeSubtreeLocked(t *nsTx, ino uint64) error {
	r := &DirReader{c: c, ino: ino}
	for {
		e, ok, err := r.Next()
		if err != nil {
			return err
		}
		if !ok {
			return nil
		}
		child, err := t.get(e.Ino)
		if err != nil {
			continue
		}
		if child.Kind == KindDir {
			if err := c.removeSubtreeLocked(t, child.Ino); err != nil {
				return err
			}
		}
		t.delDentry(ino, e.Name)
		child.Parent, child.Unlinked, child.RemoteKey, child.Pending = 0, true, "", 0
		if st := t.state(child.Ino); st.handles == 0 && st.upload == nil {
			t.drop(child.Ino)
		}
	}
}

// subtreeLocalTx reports whether anything under a directory must not be
// replaced by what a listing that started at sequence start says (see
// local); namespace.mu is held by t.
func (c *Cache) subtreeLocalTx(t *nsTx, ino uint64, start uint64) (bool, error) {
	r := &DirReader{c: c, ino: ino}
	for {
		e, ok, err := r.Next()
		if err != nil || !ok {
			return false, err
		}
		child, err := c.peekRecord(t, e.Ino)
		if errors.Is(err, ErrNotExist) {
			continue
		}
		if err != nil {
			return false, err
		}
		if local(child, start) {
			return true, nil
		}
		if child.Kind == KindDir {
			if l, err := c.subtreeLocalTx(t, child.Ino, start); err != nil || l {
				return l, err
			}
		}
	}
}

// subtreeLocal reports whether anything under a directory has changes S3
// has not seen.
func (c *Cache) subtreeLocal(ino uint64, start uint64) (bool, error) {
	r := &DirReader{c: c, ino: ino}
	for {
		e, ok, err := r.Next()
		if err != nil || !ok {
			return false, err
		}
		child, err := c.snapshot(e.Ino)
		if err != nil {
			continue
		}
		if local(child, start) {
			return true, nil
		}
		if child.Kind == KindDir {
			if l, err := c.subtreeLocal(child.Ino, start); err != nil || l {
				return l, err
			}
		}
	}
}

// sweep removes entries that the listing with this epoch did not show and
// that have nothing local to keep them.
type victim struct {
	name string
	ino  uint64
}

func (c *Cache) sweep(ino uint64, epoch, start uint64) error {
	var victims []victim
	r := &DirReader{c: c, ino: ino}
	for {
		e, ok, err := r.Next()
		if err != nil {
			return err
		}
		if !ok {
			break
		}
		d, found, err := c.peekDentry(ino, e.Name)
		if err != nil {
			return err
		}
		if !found || d.Epoch == epoch {
			continue
		}
		child, err := c.snapshot(e.Ino)
		if err != nil || local(child, start) {
			continue
		}
		if child.Kind == KindDir {
			if l, err := c.subtreeLocal(child.Ino, start); err != nil || l {
				continue
			}
		}
		victims = append(victims, victim{e.Name, e.Ino})
	}
	if testHookSweep != nil {
		testHookSweep()
	}
	for len(victims) > 0 {
		n := min(len(victims), 200)
		if err := c.removeVictims(ino, victims[:n], epoch, start); err != nil {
			return err
		}
		victims = victims[n:]
	}
	return nil
}

// testHookSweep, if set, runs between the sweep's choice of entries and
// their removal.
var testHookSweep func()

// removeVictims removes entries the sweep chose, each checked again under
// the namespace lock: anything may have changed since.
func (c *Cache) removeVictims(ino uint64, victims []victim, epoch, start uint64) error {
	return c.transact(txBookkeeping, func(t *nsTx) error {
		dir, err := t.get(ino)
		if err != nil {
			return err
		}
		for _, v := range victims {
			d, ok, err := t.dentry(ino, v.name)
			if err != nil {
				return err
			}
			if !ok || d.Ino != v.ino || d.Epoch == epoch {
				continue
			}
			child, err := t.get(v.ino)
			if errors.Is(err, ErrNotExist) {
				continue
			}
			if err != nil {
				return err
			}
			if local(child, start) {
				continue
			}
			if err := c.removeEntryLocked(t, dir, v.name, child, start); err != nil {
				return err
			}
		}
		return nil
	})
}

// headJob is a HEAD that learns an object's attributes: the inode, its
// key and the version it expects.
type headJob struct {
	ino       uint64
	key, etag string // etag "" for a directory's marker that may not exist
}

// kindChangedLocked keeps the kind n's directory entry records in step
// with its record: unknown until
// the headers are known, which may make the object a symlink or a special
// file. When a type the kernel may have seen changes, the kernel drops
// its entry, so that the next lookup makes an inode of the right type.
func (c *Cache) kindChangedLocked(t *nsTx, n *Inode) error {
	if n.Parent == 0 {
		return nil
	}
	d, ok, err := t.dentry(n.Parent, n.Name)
	if err != nil {
		return err
	}
	want := dentryKind(n)
	if !ok || d.Ino != n.Ino || d.Kind == want {
		return nil
	}
	prev := d.Kind
	d.Kind = want
	if prev == 0 && want != KindDir {
		// Learning the type of an entry listed as DT_UNKNOWN changes no
		// name, and what the kernel keeps of the listing stays true
		// (DT_UNKNOWN makes programs stat): a warm ls must not read the
		// directory again because the first one's headers arrived.
		t.seenDentry(n.Parent, n.Name, d)
		return nil
	}
	t.setDentry(n.Parent, n.Name, d)
	if want != 0 && prev != want && c.opt.InvalidateEntry != nil {
		parent, name := n.Parent, n.Name
		t.after = append(t.after, func() { c.opt.InvalidateEntry(parent, name) })
	}
	return nil
}

// needsHeaders reports whether n's headers are yet to be read.
func (c *Cache) needsHeaders(n *Inode) bool {
	return !c.opt.SkipHeaders && !n.AttrsKnown && n.RemoteKey != "" && !busy(n) && n.Ino != RootIno
}

// learnHeaders reads the headers of n's object version (HEAD) if they are
// not known yet, or joins a HEAD of them already under way, and returns
// the record as it then is. A stat waits for this, and only for its own
// entry. If S3 does not answer, n is returned as it is (defaults for what
// the headers would say).
func (c *Cache) learnHeaders(ctx context.Context, n *Inode) *Inode {
	if !c.needsHeaders(n) {
		return n
	}
	c.headOnce(n.Ino)
	if fresh, err := c.snapshot(n.Ino); err == nil {
		return fresh
	}
	return n
}

// headOnce reads the headers of ino's object version (HEAD) unless they
// are known, or joins a HEAD of them already under way. The record is
// read inside the flight, alone: a HEAD that ended just before this one
// began (the walk's, or a stat's) may have learned them. The walk calls
// this with no look of its own first for the entries queued to it, so
// such an entry costs one read of its record and one transaction (one
// its scan found costs the scan's read too).
func (c *Cache) headOnce(ino uint64) {
	c.ns.heads.do(ino, func() error {
		n, err := c.snapshot(ino)
		if err != nil || !c.needsHeaders(n) {
			return nil
		}
		j := headJob{ino: n.Ino, key: n.RemoteKey, etag: n.ETag}
		if n.Kind == KindDir {
			j.etag = ""
		}
		// Not the caller's context: others may wait on this HEAD, and one
		// of them being interrupted must not fail the rest.
		info, err := c.store.Head(c.tasks.ctx, j.key)
		c.applyHead(j, info, err)
		return nil
	})
}

// queueHeads learns, in the background, the headers of the entries inos
// of directory dir, HeadWorkers at a time and in the order given (a
// listing's: the order in which ls -l stats them), so that an ls -l after
// a readdir finds them read or being read; with scan, then those of every
// entry of dir that needs them. One walk per directory runs at a time;
// what is queued while it runs joins it, and a queue longer than
// maxHeldHeads becomes a scan. An entry whose headers were learned
// meanwhile (a stat's HEAD) costs no request; one that still needs them
// is read as its record then is.
func (c *Cache) queueHeads(dir uint64, inos []uint64, scan bool) {
	if (len(inos) == 0 && !scan) || c.opt.SkipHeaders {
		return
	}
	c.ns.walksMu.Lock()
	if w := c.ns.walking[dir]; w != nil {
		w.add(inos, scan)
		c.ns.walksMu.Unlock()
		return
	}
	w := &headWalk{}
	w.add(inos, scan)
	c.ns.walking[dir] = w
	c.ns.walks.Add(1)
	c.ns.walksMu.Unlock()
	if !c.tasks.Go(func() {
		defer c.ns.walks.Done()
		c.runHeadWalk(dir, w)
	}) {
		c.ns.walksMu.Lock()
		delete(c.ns.walking, dir)
		c.ns.walksMu.Unlock()
		c.ns.walks.Done()
	}
}

// headWalk is what a directory's header walk has yet to do; guarded by
// namespace.walksMu.
type headWalk struct {
	queue []uint64
	scan  bool // go over the whole directory once the queue is done
}

func (w *headWalk) add(inos []uint64, scan bool) {
	w.scan = w.scan || scan
	if len(w.queue)+len(inos) > maxHeldHeads {
		w.queue, w.scan = nil, true // the scan finds them
		return
	}
	w.queue = append(w.queue, inos...)
}

// runHeadWalk is the walk of queueHeads: it hands the queued entries, and
// those of a scan, to its workers until nothing more is queued. While the
// cache closes or S3 does not answer, the workers skip what they are
// handed: it is learned on demand, or by the next listing.
func (c *Cache) runHeadWalk(dir uint64, w *headWalk) {
	ctx := c.tasks.ctx
	jobs := make(chan uint64, c.opt.HeadWorkers)
	var wg sync.WaitGroup
	for i := 0; i < c.opt.HeadWorkers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ino := range jobs {
				if ctx.Err() != nil || c.s3Unreachable() {
					continue // drain the queue
				}
				c.headOnce(ino)
			}
		}()
	}
	defer func() {
		close(jobs)
		wg.Wait()
	}()
	for {
		c.ns.walksMu.Lock()
		q, scan := w.queue, w.scan
		w.queue, w.scan = nil, false
		if len(q) == 0 && !scan {
			delete(c.ns.walking, dir)
			c.ns.walksMu.Unlock()
			return
		}
		c.ns.walksMu.Unlock()
		for _, ino := range q {
			jobs <- ino
		}
		if scan {
			c.scanForHeads(dir, jobs) // what is queued meanwhile is taken next
			if testHookScanned != nil {
				testHookScanned(dir)
			}
		}
	}
}

// testHookScanned, if set, runs when a walk's scan of a directory has
// ended, early or not.
var testHookScanned func(dir uint64)

// scanForHeads sends the entries of directory dir whose headers are not
// known, and dir itself if its are not, to jobs. It stops early when the
// cache closes, S3 does not answer, or the directory cannot be read.
func (c *Cache) scanForHeads(dir uint64, jobs chan<- uint64) {
	ctx := c.tasks.ctx
	if n, err := c.snapshot(dir); err != nil || n.Kind != KindDir {
		return
	} else if c.needsHeaders(n) {
		jobs <- dir
	}
	r := &DirReader{c: c, ino: dir}
	for ctx.Err() == nil && !c.s3Unreachable() {
		e, ok, err := r.Next()
		if err != nil {
			c.log.Warn("cache: walk a directory for headers", "err", err)
			return
		}
		if !ok {
			return
		}
		if n, err := c.snapshot(e.Ino); err == nil && c.needsHeaders(n) {
			jobs <- e.Ino
		}
	}
}

// waitHeaderWalks waits for the header walks that run (tests).
func (c *Cache) waitHeaderWalks() { c.ns.walks.Wait() }

// applyHead stores what a HEAD learned, unless the inode changed since.
func (c *Cache) applyHead(j headJob, info s3backend.ObjectInfo, err error) {
	if err != nil {
		if errors.Is(err, s3backend.ErrNotFound) {
			if j.etag == "" { // directory without a marker: implicit
				c.mutateClean(j.ino, j.key, "", func(n *Inode) { n.AttrsKnown = true })
			}
			return // the object vanished after the listing; the next listing says so
		}
		if !errors.Is(err, context.Canceled) && !errors.Is(err, s3backend.ErrUnreachable) {
			c.log.Warn("cache: read attributes", "key", j.key, "err", err)
		}
		return
	}
	err = c.transact(txBookkeeping, func(t *nsTx) error {
		n, gerr := t.get(j.ino)
		if gerr != nil || n.RemoteKey != j.key || (j.etag != "" && n.ETag != j.etag) || busy(n) {
			return errNoChange
		}
		if n.Kind == KindDir {
			n.ETag = info.ETag
			c.applyHeaders(n, &info)
			return nil
		}
		// The HEAD confirmed the object as a listing does: a lookup
		// within the TTL needs no request of its own (an ls -l of a
		// directory that took longer than the TTL to list asked again,
		// name by name).
		n.ValidUntil = c.now() + int64(c.opt.MetadataTTL)
		if info.ETag != n.ETag {
			return c.newVersionLocked(t, n, j.key, s3backend.ListEntry{Key: j.key, ETag: info.ETag, Size: info.Size, LastModified: info.LastModified}, &info)
		}
		c.applyHeaders(n, &info)
		return c.kindChangedLocked(t, n)
	})
	if err != nil {
		// The attributes stay unknown; the next listing asks again.
		c.log.Warn("cache: store attributes read from s3", "key", j.key, "err", err)
	}
}

// ensureAttrs reads the headers of ino's object version if they were
// never read, before a change of its attributes is made on top of them:
// otherwise the change would be made on defaults, and the upload, which
// cannot tell a default from a change, would keep the object's own
// headers and lose it. Unlike the listing's walk it also does so for a
// record with other work pending (a rename, data not yet uploaded): the
// headers of the version it came from are its attributes until changed
// here, except a newer local mtime.
func (c *Cache) ensureAttrs(ctx context.Context, ino uint64) error {
	n, err := c.snapshot(ino)
	if err != nil {
		return err
	}
	if n.AttrsKnown || c.opt.SkipHeaders || n.RemoteKey == "" || n.Kind == KindDir || n.Ino == RootIno {
		return nil
	}
	info, err := c.store.Head(ctx, n.RemoteKey)
	if errors.Is(err, s3backend.ErrNotFound) {
		return nil // gone: there are no headers to keep
	}
	if err != nil {
		return err
	}
	return c.transact(txBookkeeping, func(t *nsTx) error {
		cur, err := t.get(ino)
		if err != nil {
			return err
		}
		if cur.AttrsKnown || cur.RemoteKey != n.RemoteKey || cur.ETag != info.ETag {
			return errNoChange // learned meanwhile, or another version: the listing deals with it
		}
		mtime := cur.Mtime
		c.applyHeaders(cur, &info)
		if cur.Pending&pendData != 0 {
			cur.Mtime = mtime
		}
		return c.kindChangedLocked(t, cur)
	})
}

// mutateClean applies fn to an inode still at key/etag and without local
// changes. What fn learned is a cache of S3's state: if it cannot be
// stored, it is learned again later, so the error is only logged.
func (c *Cache) mutateClean(ino uint64, key, etag string, fn func(*Inode)) {
	err := c.transact(txBookkeeping, func(t *nsTx) error {
		n, err := t.get(ino)
		if err != nil || n.RemoteKey != key || n.ETag != etag || busy(n) {
			return errNoChange
		}
		fn(n)
		return nil
	})
	if err != nil {
		c.log.Warn("cache: store what was learned from s3", "key", key, "err", err)
	}
}

// refreshName asks S3 about one name: a HEAD for the object and a
// one-key LIST for a directory of that name, at once.
func (c *Cache) refreshName(ctx context.Context, ino uint64, name string) error {
	dir, err := c.snapshot(ino)
	if err != nil {
		return err
	}
	if checkName(name) != nil {
		return nil
	}
	key := childPath(dir.Path, name)
	start := c.nextSeq()
	defer c.ns.released.begin(start, key)()
	var (
		info    s3backend.ObjectInfo
		headErr error
		isDir   bool
		listErr error
		wg      sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		info, headErr = c.store.Head(ctx, key)
	}()
	listErr = c.store.List(ctx, s3backend.ListInput{Prefix: key + "/", Delimiter: "/", MaxKeys: 1}, func(s3backend.ListEntry) error {
		isDir = true
		return nil
	})
	wg.Wait()
	if listErr != nil {
		return listErr
	}
	found := headErr == nil
	if headErr != nil && !errors.Is(headErr, s3backend.ErrNotFound) {
		return headErr
	}
	jobs, err := c.mergeName(ino, dir.Path, name, key, isDir, found, &info, start)
	if err != nil {
		return err
	}
	for _, j := range jobs {
		info, err := c.store.Head(ctx, j.key)
		c.applyHead(j, info, err)
	}
	return nil
}

// listWindow is how many entries after a looked-up name refreshWindow
// confirms with its LIST page.
const listWindow = 1000

// refreshWindow asks S3 about one name of a big directory and about the
// names after it: a HEAD for the object, and at once one LIST page that
// starts after it. Every entry the page shows is fresh for the TTL, so a
// program that stats the names in order (ls -l, find) asks S3 once per
// page rather than once, or twice, per name once the directory's listing
// is older than the TTL. The page also shows a directory of the same
// name, which then wins, as in a listing.
func (c *Cache) refreshWindow(ctx context.Context, ino uint64, name string) error {
	dir, err := c.snapshot(ino)
	if err != nil {
		return err
	}
	if checkName(name) != nil {
		return nil
	}
	prefix := dirPrefix(dir.Path)
	key := childPath(dir.Path, name)
	start := c.nextSeq()
	defer c.ns.released.begin(start, prefix)()
	var (
		info    s3backend.ObjectInfo
		headErr error
		wg      sync.WaitGroup
		window  []s3backend.ListEntry
		isDir   bool
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		info, headErr = c.store.Head(ctx, key)
	}()
	listErr := c.store.List(ctx, s3backend.ListInput{Prefix: prefix, Delimiter: "/", StartAfter: key, MaxKeys: listWindow}, func(e s3backend.ListEntry) error {
		if e.IsPrefix && e.Key == key+"/" {
			isDir = true // merged with the name itself
			return nil
		}
		window = append(window, e)
		return nil
	})
	wg.Wait()
	if listErr != nil {
		return listErr
	}
	found := headErr == nil
	if headErr != nil && !errors.Is(headErr, s3backend.ErrNotFound) {
		return headErr
	}
	jobs, err := c.mergeName(ino, dir.Path, name, key, isDir, found, &info, start)
	if err != nil {
		return err
	}
	if len(window) > 0 {
		_, heads, _, err := c.mergeBatch(ino, prefix, window, 0, start, true)
		if err != nil {
			return err
		}
		c.queueHeads(ino, inosOf(nil, heads), false)
	}
	for _, j := range jobs {
		info, err := c.store.Head(ctx, j.key)
		c.applyHead(j, info, err)
	}
	return nil
}

// mergeName merges what refreshName learned about one name.
func (c *Cache) mergeName(ino uint64, origPath, name, key string, isDir, found bool, info *s3backend.ObjectInfo, start uint64) ([]headJob, error) {
	var heads []headJob
	err := c.transact(txBookkeeping, func(t *nsTx) error {
		dir, err := t.get(ino)
		if err != nil {
			return err
		}
		if dir.Path != origPath {
			return errNoChange // moved while S3 was asked
		}
		switch {
		case isDir:
			_, err = c.mergeEntry(t, dir, name, s3backend.ListEntry{Key: key + "/", IsPrefix: true}, nil, 0, start, false)
		case found:
			e := s3backend.ListEntry{Key: key, ETag: info.ETag, Size: info.Size, LastModified: info.LastModified}
			_, err = c.mergeEntry(t, dir, name, e, info, 0, start, false)
		default:
			d, ok, derr := t.dentry(ino, name)
			if derr != nil || !ok {
				return derr
			}
			child, gerr := t.get(d.Ino)
			if errors.Is(gerr, ErrNotExist) {
				return nil
			}
			if gerr != nil {
				return gerr
			}
			if !local(child, start) {
				err = c.removeEntryLocked(t, dir, name, child, start)
			}
		}
		if err != nil {
			return err
		}
		heads = t.heads // run once committed
		return nil
	})
	if err != nil {
		return nil, err
	}
	return heads, nil
}

// revalidate asks S3 whether a clean file changed: HEAD, ETag compare.
func (c *Cache) revalidate(ctx context.Context, ino uint64) (*Inode, error) {
	n, err := c.snapshot(ino)
	if err != nil {
		return nil, err
	}
	if c.fresh(n) {
		return n, nil
	}
	return c.recheck(ctx, ino, n)
}

// recheck asks S3 about a clean file now, whatever the TTL says: HEAD,
// ETag compare. n is a snapshot of its record.
func (c *Cache) recheck(ctx context.Context, ino uint64, n *Inode) (*Inode, error) {
	start := c.nextSeq()
	info, err := c.store.Head(ctx, n.RemoteKey)
	if err != nil && !errors.Is(err, s3backend.ErrNotFound) {
		return nil, err
	}
	var out *Inode
	gone := false
	terr := c.transact(txBookkeeping, func(t *nsTx) error {
		cur, gerr := t.get(ino)
		if gerr != nil {
			return gerr
		}
		if local(cur, start) || cur.RemoteKey != n.RemoteKey {
			out = cur.clone()
			return errNoChange
		}
		if err != nil { // gone from S3
			gone = true
			if cur.Parent == 0 {
				return nil
			}
			dir, derr := t.get(cur.Parent)
			if derr != nil {
				return derr
			}
			return c.removeEntryLocked(t, dir, cur.Name, cur, start)
		}
		if info.ETag != cur.ETag {
			e := s3backend.ListEntry{Key: cur.RemoteKey, ETag: info.ETag, Size: info.Size, LastModified: info.LastModified}
			if err := c.newVersionLocked(t, cur, cur.RemoteKey, e, &info); err != nil {
				return err
			}
		} else if !cur.AttrsKnown || info.LastModified.Unix() != cur.RemoteMod {
			// Not read yet, or maybe rewritten in place since (another
			// mount's chmod): the HEAD carries the headers anyway.
			c.applyHeaders(cur, &info)
			if err := c.kindChangedLocked(t, cur); err != nil {
				return err
			}
		}
		cur.ValidUntil = c.now() + int64(c.opt.MetadataTTL)
		out = cur.clone()
		return nil
	})
	switch {
	case terr != nil:
		return nil, terr
	case gone:
		return nil, ErrNotExist
	}
	return out, nil
}

// materialize makes every object under a directory known locally, so that
// the directory can be moved: each directory of the subtree is listed.
func (c *Cache) materialize(ctx context.Context, ino uint64) error {
	queue := []uint64{ino}
	for len(queue) > 0 {
		d, err := c.snapshot(queue[0])
		queue = queue[1:]
		if err != nil {
			continue
		}
		if d.RemoteKey == "" && d.Pending&pendMarker != 0 && d.FillEpoch != 0 && !c.listingFresh(d) {
			// Created here and never in S3: nothing remote to learn.
		} else if !d.moved() && !c.listingFresh(d) {
			if err := c.fillOrStale(ctx, d); err != nil {
				return err
			}
		}
		r := &DirReader{c: c, ino: d.Ino}
		for {
			e, ok, err := r.Next()
			if err != nil {
				return err
			}
			if !ok {
				break
			}
			if e.Mode == modeBits(KindDir) {
				queue = append(queue, e.Ino)
			}
		}
	}
	return nil
}

// logBadKey logs, once per key, a key that cannot be a file name.
func (c *Cache) logBadKey(key string) {
	if _, loaded := c.badKeys.LoadOrStore(key, true); !loaded {
		c.log.Info("cache: object key is not a valid file name; hidden", "key", key)
	}
}

func (c *Cache) logShadowed(key string) {
	if _, loaded := c.badKeys.LoadOrStore("shadow:"+key, true); !loaded {
		c.log.Info("cache: object hidden by a directory of the same name", "key", key)
	}
}
