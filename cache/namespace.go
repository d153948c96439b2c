package cache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/keelfs/keelfs/cache/writeback"
	"github.com/keelfs/keelfs/s3backend"
)

// nsTx collects the record changes of one namespace operation and commits
// them in one badger transaction, so that a crash never leaves half a
// rename. The caller holds namespace.mu (see Cache.transact). Inodes
// touched through get are locked until commit or abort.
type nsTx struct {
	c       *Cache
	kind    txKind
	held    map[uint64]*inodeState
	olds    map[uint64]*Inode // record before this transaction; nil if new
	gone    map[uint64]bool   // records to delete
	ended   map[uint64]bool   // S3 completed or aborted the record's multipart upload (endUpload)
	sets    map[string][]byte
	dels    map[string]bool
	after   []func()
	notify  map[uint64]bool
	tombs   []string
	blockGC []*Inode        // inodes whose blocks go once committed
	heads   []headJob       // HEADs to run once committed (without nsMu)
	names   map[uint64]bool // directories whose names change, see DirVersion
	subdirs map[uint64]bool // directories whose subdirectories change, see dirNlink
}

func (c *Cache) beginNS() *nsTx {
	return &nsTx{c: c, held: make(map[uint64]*inodeState), olds: make(map[uint64]*Inode),
		gone: make(map[uint64]bool), ended: make(map[uint64]bool), sets: make(map[string][]byte), dels: make(map[string]bool),
		notify: make(map[uint64]bool), names: make(map[uint64]bool), subdirs: make(map[uint64]bool)}
}

// get returns the live record of ino for modification.
func (t *nsTx) get(ino uint64) (*Inode, error) {
	if st, ok := t.held[ino]; ok {
		if t.gone[ino] {
			return nil, ErrNotExist
		}
		return st.rec, nil
	}
	st, err := t.c.acquire(ino)
	if err != nil {
		return nil, err
	}
	st.mu.Lock()
	if st.rec == nil {
		st.mu.Unlock()
		t.c.release(st)
		return nil, ErrNotExist
	}
	t.held[ino] = st
	t.olds[ino] = st.rec.clone()
	return st.rec, nil
}

// state returns the locked state of an inode obtained through get or add.
func (t *nsTx) state(ino uint64) *inodeState { return t.held[ino] }

// add registers a new inode.
func (t *nsTx) add(rec *Inode) {
	st := t.c.newState(rec)
	t.held[rec.Ino] = st
	t.olds[rec.Ino] = nil
}

// drop deletes an inode's record (and, after commit, its blocks).
func (t *nsTx) drop(ino uint64) {
	t.gone[ino] = true
	if rec := t.held[ino].rec; rec != nil {
		t.blockGC = append(t.blockGC, rec.clone())
	}
}

// endUpload clears rec's multipart upload, which S3 completed or aborted:
// no abort record is left for it. A record that lets go of its upload
// otherwise leaves one (see abort.go).
func (t *nsTx) endUpload(rec *Inode) {
	if rec.UploadID != "" {
		rec.UploadID = ""
		t.ended[rec.Ino] = true
	}
}

func (t *nsTx) set(k, v []byte) {
	delete(t.dels, string(k))
	t.sets[string(k)] = v
}

func (t *nsTx) del(k []byte) {
	delete(t.sets, string(k))
	t.dels[string(k)] = true
}

// setDentry adds or replaces an entry: the directory's names change.
func (t *nsTx) setDentry(parent uint64, name string, d dentry) {
	t.set(dentryKey(parent, name), d.marshal())
	t.names[parent] = true
	if d.Kind == KindDir {
		t.subdirs[parent] = true
	}
}

// seenDentry rewrites an entry that a listing confirmed, the same name
// for the same inode: only its epoch moves.
func (t *nsTx) seenDentry(parent uint64, name string, d dentry) {
	t.set(dentryKey(parent, name), d.marshal())
}

func (t *nsTx) delDentry(parent uint64, name string) {
	if d, ok, err := t.dentry(parent, name); err != nil || ok && d.Kind == KindDir {
		t.subdirs[parent] = true // unreadable: count again to be sure
	}
	t.del(dentryKey(parent, name))
	t.names[parent] = true
}

// dentry reads an entry, seeing this transaction's own changes.
func (t *nsTx) dentry(parent uint64, name string) (dentry, bool, error) {
	k := string(dentryKey(parent, name))
	if t.dels[k] {
		return dentry{}, false, nil
	}
	if v, ok := t.sets[k]; ok {
		d, err := unmarshalDentry(v)
		return d, err == nil, err
	}
	var d dentry
	var ok bool
	err := t.c.db.View(func(txn *badger.Txn) error {
		var err error
		d, ok, err = getDentry(txn, parent, name)
		return err
	})
	return d, ok, err
}

// tomb records that key must be deleted in S3 (conditional on etag when
// known). dir marks a directory key: its marker goes only once nothing
// under the prefix is still claimed.
func (t *nsTx) tomb(key, etag string, dir bool) {
	t.set(tombKey(key), tombstone{ETag: etag, Dir: dir}.marshal())
	t.tombs = append(t.tombs, key)
}

// head queues a HEAD to learn an object's attributes after commit.
func (t *nsTx) head(ino uint64, key, etag string) {
	if !t.c.opt.SkipHeaders {
		t.heads = append(t.heads, headJob{ino, key, etag})
	}
}

// commit stores every record the transaction changed, and its entries,
// claims and tombstones, in one badger transaction, then unlocks the
// inodes and tells the scheduler about the work they now have. A record
// that did not change (a listing that only confirmed it) is neither
// written nor counted as a change: an upload running for it need not be
// repeated. On failure everything is undone and the error returned.
func (t *nsTx) commit() error {
	type put struct {
		ino      uint64
		old, rec *Inode
		bytes    []byte
	}
	var puts []put
	lost := false // a multipart upload to abort is recorded
	for ino, st := range t.held {
		if t.gone[ino] {
			lost = lost || lostUpload(t.olds[ino], nil, t.ended[ino])
			continue
		}
		lost = lost || lostUpload(t.olds[ino], st.rec, t.ended[ino])
		b := st.rec.marshal()
		if old := t.olds[ino]; old != nil && bytes.Equal(old.marshal(), b) {
			continue
		}
		puts = append(puts, put{ino, t.olds[ino], st.rec, b})
	}
	for k := range t.dels {
		if k[0] == pTomb {
			t.c.ns.released.note(k[1:], "") // taken over by an upload (absorb)
		}
	}
	err := update(t.c.db, func(txn *badger.Txn) error {
		for ino := range t.held {
			if t.gone[ino] && t.olds[ino] != nil {
				if err := t.c.deleteInode(txn, t.olds[ino], t.ended[ino]); err != nil {
					return err
				}
			}
		}
		for _, p := range puts {
			if err := t.c.storeInode(txn, p.old, p.rec, p.bytes, t.ended[p.ino]); err != nil {
				return err
			}
		}
		for k, v := range t.sets {
			if err := txn.Set([]byte(k), v); err != nil {
				return err
			}
		}
		for k := range t.dels {
			if err := txn.Delete([]byte(k)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.abort()
		return fmt.Errorf("cache commit: %w", err)
	}
	t.c.namesChanged(t.names, t.gone)
	t.c.subdirsChanged(t.subdirs, t.gone)
	if t.kind == txChange {
		for _, p := range puts {
			if p.rec.needsWork() {
				t.notify[p.ino] = true
			}
		}
	}
	for ino, st := range t.held {
		if t.gone[ino] {
			st.rec = nil
			st.buf = nil
		}
		st.mu.Unlock()
		t.c.release(st)
	}
	for _, n := range t.blockGC {
		t.c.blocks.Unpin(n.Ino)
		t.c.dropBlocks(n.Ino, nil, ^uint64(0)) // the inode is gone: nothing can write to it
	}
	for ino := range t.gone {
		t.c.wb.Remove(writeback.Inode(ino))
	}
	for ino := range t.notify {
		if !t.gone[ino] {
			t.c.wb.Add(writeback.Inode(ino))
		}
	}
	for _, k := range t.tombs {
		t.c.wb.AddNow(writeback.Tomb(k))
	}
	for _, f := range t.after {
		f()
	}
	if lost {
		t.c.sweepAborts()
	}
	t.held = nil
	return nil
}

func (t *nsTx) abort() {
	for ino, st := range t.held {
		if old := t.olds[ino]; old != nil {
			st.rec = old
		} else {
			st.rec = nil
		}
		st.mu.Unlock()
		t.c.release(st)
	}
	t.held = nil
}

// errNoChange ends a transaction without committing and without error.
var errNoChange = errors.New("no change")

// txKind says whose change a namespace transaction makes.
type txKind int

const (
	// txChange: an application's change (create, rename, unlink,
	// truncate, chmod...). The scheduler hears of every changed record
	// that now needs work: an upload in flight is not the last one.
	txChange txKind = iota
	// txBookkeeping: the cache's own (a listing merged, an upload's
	// answer applied). It makes no new work for the scheduler, whose
	// Runner already says what comes next.
	txBookkeeping
)

// transact runs fn as one namespace transaction: namespace.mu is held, and
// every record fn changes through t is committed at once, or none is if fn
// or the commit fails. It returns fn's error (nil for errNoChange) or the
// commit's: no commit's result is dropped.
func (c *Cache) transact(kind txKind, fn func(t *nsTx) error) error {
	c.ns.mu.Lock()
	defer c.ns.mu.Unlock()
	return c.transactLocked(kind, fn)
}

// transactLocked is transact for a caller that holds namespace.mu.
func (c *Cache) transactLocked(kind txKind, fn func(t *nsTx) error) error {
	t := c.beginNS()
	t.kind = kind
	if err := fn(t); err != nil {
		t.abort()
		if errors.Is(err, errNoChange) {
			return nil
		}
		return err
	}
	return t.commit()
}

// allocIno picks the inode number for a new entry at path: the hash of the
// path, probing past numbers that are taken.
func (c *Cache) allocIno(t *nsTx, path string) (uint64, error) {
	for probe := 0; probe < 64; probe++ {
		ino := hashIno(path, probe)
		if _, held := t.held[ino]; held {
			continue
		}
		c.ns.statesMu.Lock()
		_, active := c.ns.states[ino]
		c.ns.statesMu.Unlock()
		if active {
			continue
		}
		taken := false
		err := c.db.View(func(txn *badger.Txn) error {
			_, err := txn.Get(inodeKey(ino))
			if err == nil {
				taken = true
				return nil
			}
			if errors.Is(err, badger.ErrKeyNotFound) {
				return nil
			}
			return err
		})
		if err != nil {
			return 0, err
		}
		if !taken {
			return ino, nil
		}
	}
	return 0, fmt.Errorf("cache: no free inode number for %q", path)
}

// tombstone is the value of a pending delete.
type tombstone struct {
	ETag string
	Dir  bool
}

func (ts tombstone) marshal() []byte {
	var e encoder
	e.s(ts.ETag)
	e.bool(ts.Dir)
	return e.b
}

func unmarshalTomb(b []byte) (tombstone, error) {
	d := decoder{b: b}
	ts := tombstone{ETag: d.s(), Dir: d.bool()}
	return ts, d.err
}

// fresh reports whether n's attributes can be used without asking S3.
// Pending local changes always win; otherwise the record's own validity or
// that of the listing that last saw it counts.
func (c *Cache) fresh(n *Inode) bool {
	if n.Ino == RootIno || n.needsWork() || n.RemoteKey == "" || n.UploadKey != "" {
		return true
	}
	now := c.now()
	if n.ValidUntil > now {
		return true
	}
	if n.Parent == 0 {
		return true // unlinked: nothing to refresh
	}
	parent, err := c.snapshot(n.Parent)
	if err != nil || parent.ListedUntil <= now {
		return false
	}
	var d dentry
	var ok bool
	c.db.View(func(txn *badger.Txn) error {
		d, ok, err = getDentry(txn, n.Parent, n.Name)
		return err
	})
	return ok && d.Ino == n.Ino && d.Epoch == parent.FillEpoch
}

// Lookup finds name in directory parent.
func (c *Cache) Lookup(ctx context.Context, parent uint64, name string) (Attr, error) {
	if len(name) > MaxNameLen {
		return Attr{}, ErrNameTooLong
	}
	dir, err := c.snapshot(parent)
	if err != nil {
		return Attr{}, err
	}
	if dir.Kind != KindDir {
		return Attr{}, ErrNotDir
	}
	if !c.listingFresh(dir) {
		known, kerr := c.childOf(parent, name)
		if kerr != nil || !c.fresh(known) {
			if err := c.refreshForLookup(ctx, dir, name); err != nil {
				if !unavailable(err) {
					return Attr{}, err
				}
				// S3 does not answer: what the cache knows stands, past
				// the TTL (stale-if-error). A name the last listing did
				// not show does not exist; one never listed is unknown.
				switch {
				case kerr == nil:
					return c.attrOf(known), nil
				case errors.Is(kerr, ErrNotExist) && dir.FillEpoch != 0:
					return Attr{}, ErrNotExist
				}
				return Attr{}, err
			}
		}
	}
	child, err := c.childOf(parent, name)
	if err != nil {
		return Attr{}, err
	}
	if child, err = c.revalidateOrStale(ctx, child); err != nil {
		return Attr{}, err
	}
	return c.attrOf(c.learnHeaders(ctx, child)), nil
}

// Listed returns the attributes of name in directory parent as the cache
// holds them, for a readdirplus: without a request to S3 and without
// waiting for headers. ok is false when the entry is not known, not
// fresh, or its headers are not read yet: the kernel then gets the name
// alone and asks with a LOOKUP when it needs more. A readdirplus that
// asked S3 per name cost a HEAD and a LIST for each entry of a big
// directory once its listing was older than the TTL.
func (c *Cache) Listed(parent uint64, name string) (a Attr, ok bool) {
	child, err := c.childOf(parent, name)
	if err != nil || !c.fresh(child) || c.needsHeaders(child) {
		return Attr{}, false
	}
	return c.attrOf(child), true
}

// unavailable reports whether err says S3 did not answer (an outage, a
// storm of throttling), as opposed to an answer about the request. The
// cache then serves what it knows, however old (stale-if-error).
func unavailable(err error) bool {
	return errors.Is(err, s3backend.ErrUnavailable) || errors.Is(err, s3backend.ErrThrottled)
}

// revalidateOrStale returns a file's record after asking S3 whether it
// changed, if its attributes are older than the TTL; while S3 does not
// answer, the record as cached (stale-if-error).
func (c *Cache) revalidateOrStale(ctx context.Context, n *Inode) (*Inode, error) {
	if n.Kind != KindFile || c.fresh(n) {
		return n, nil
	}
	fresh, err := c.revalidate(ctx, n.Ino)
	if err != nil && unavailable(err) {
		return n, nil
	}
	return fresh, err
}

func (c *Cache) listingFresh(dir *Inode) bool {
	return dir.ListedUntil > c.now()
}

// refreshForLookup brings what the cache knows of name in dir up to date.
// A small directory is listed whole (one LIST page costs what a HEAD does
// and answers every later lookup); a big or never-listed one is asked about
// this one name.
func (c *Cache) refreshForLookup(ctx context.Context, dir *Inode, name string) error {
	if dir.FillEpoch != 0 && dir.Entries <= 1000 {
		return c.fill(ctx, dir.Ino)
	}
	// A name with pending local state needs no answer from S3.
	if d, ok, _ := c.peekDentry(dir.Ino, name); ok {
		child, err := c.snapshot(d.Ino)
		if err == nil && (child.needsWork() || child.Kind == KindDir) {
			return nil
		}
		if err == nil {
			// A name the cache knows, in a big directory: its
			// neighbours are likely next (ls -l, find).
			return c.refreshWindow(ctx, dir.Ino, name)
		}
	}
	return c.refreshName(ctx, dir.Ino, name)
}

func (c *Cache) peekDentry(parent uint64, name string) (d dentry, ok bool, err error) {
	err = c.db.View(func(txn *badger.Txn) error {
		d, ok, err = getDentry(txn, parent, name)
		return err
	})
	return
}

func (c *Cache) childOf(parent uint64, name string) (*Inode, error) {
	d, ok, err := c.peekDentry(parent, name)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, ErrNotExist
	}
	return c.snapshot(d.Ino)
}

// Getattr returns the attributes of ino, revalidating a clean file whose
// attributes are older than the TTL.
func (c *Cache) Getattr(ctx context.Context, ino uint64) (Attr, error) {
	n, err := c.snapshot(ino)
	if err != nil {
		return Attr{}, err
	}
	if n, err = c.revalidateOrStale(ctx, n); err != nil {
		return Attr{}, err
	}
	return c.attrOf(c.learnHeaders(ctx, n)), nil
}

// Readlink returns a symlink's target.
func (c *Cache) Readlink(ctx context.Context, ino uint64) (string, error) {
	n, err := c.snapshot(ino)
	if err != nil {
		return "", err
	}
	if n.Kind != KindSymlink {
		return "", ErrInvalid
	}
	if n.Target != "" {
		return n.Target, nil
	}
	// Listed symlinks learn their target (the object's body) on first use.
	target, err := c.symlinkTarget(ctx, n)
	if err != nil {
		return "", err
	}
	c.mutateClean(ino, n.RemoteKey, n.ETag, func(r *Inode) { r.Target = target })
	return target, nil
}

// DirEntry is one name in a directory listing.
type DirEntry struct {
	Name string
	Ino  uint64
	Mode uint32 // type bits only; 0 while the type is not known (DT_UNKNOWN)
}

// DirReader streams a directory's entries in name order, a batch at a
// time, so that memory stays bounded for any directory size.
type DirReader struct {
	c     *Cache
	ino   uint64
	after []byte
	buf   []DirEntry
	done  bool
}

// OpenDir returns a reader over ino's entries, listing the directory in S3
// first if the cached listing is older than the TTL.
func (c *Cache) OpenDir(ctx context.Context, ino uint64) (*DirReader, error) {
	dir, err := c.snapshot(ino)
	if err != nil {
		return nil, err
	}
	if dir.Kind != KindDir {
		return nil, ErrNotDir
	}
	if !c.listingFresh(dir) && !dir.Unlinked {
		if err := c.fillOrStale(ctx, dir); err != nil {
			return nil, err
		}
	}
	return &DirReader{c: c, ino: ino}, nil
}

// fillOrStale lists a directory in S3; while S3 does not answer, a
// directory listed before keeps its last listing (stale-if-error), and
// one never listed fails.
func (c *Cache) fillOrStale(ctx context.Context, dir *Inode) error {
	err := c.fill(ctx, dir.Ino)
	if err != nil && unavailable(err) && dir.FillEpoch != 0 {
		return nil
	}
	return err
}

// Reset starts the reader over from the first entry.
func (r *DirReader) Reset() {
	r.after, r.buf, r.done = nil, nil, false
}

// Next returns the next entry; ok is false at the end.
func (r *DirReader) Next() (e DirEntry, ok bool, err error) {
	if len(r.buf) == 0 && !r.done {
		if err := r.load(); err != nil {
			return DirEntry{}, false, err
		}
	}
	if len(r.buf) == 0 {
		return DirEntry{}, false, nil
	}
	e = r.buf[0]
	r.buf = r.buf[1:]
	return e, true, nil
}

func (r *DirReader) load() error {
	prefix := dentryPrefix(r.ino)
	seek := prefix
	if r.after != nil {
		seek = append(append([]byte(nil), r.after...), 0)
	}
	const batch = 256
	return r.c.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: true, PrefetchSize: batch, Prefix: prefix})
		defer it.Close()
		n := 0
		for it.Seek(seek); it.ValidForPrefix(prefix); it.Next() {
			if n == batch {
				return nil
			}
			item := it.Item()
			k := item.KeyCopy(nil)
			var d dentry
			if err := item.Value(func(v []byte) error {
				var err error
				d, err = unmarshalDentry(v)
				return err
			}); err != nil {
				return err
			}
			mode := uint32(0) // DT_UNKNOWN: its headers are not read yet
			if d.Kind != 0 {
				mode = modeBits(d.Kind)
			}
			r.buf = append(r.buf, DirEntry{Name: string(k[len(prefix):]), Ino: d.Ino, Mode: mode})
			r.after = k
			n++
		}
		r.done = true
		return nil
	})
}

func (c *Cache) hasChildren(ino uint64) (bool, error) {
	found := false
	err := c.db.View(func(txn *badger.Txn) error {
		prefix := dentryPrefix(ino)
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
		defer it.Close()
		it.Seek(prefix)
		found = it.ValidForPrefix(prefix)
		return nil
	})
	return found, err
}

// Mkdir creates a directory; its marker object follows by write-back.
func (c *Cache) Mkdir(ctx context.Context, parent uint64, name string, perm, uid, gid uint32) (Attr, error) {
	return c.createEntry(parent, name, KindDir, perm, uid, gid, entryExtra{})
}

// Create creates an empty file; an empty object follows by write-back.
func (c *Cache) Create(ctx context.Context, parent uint64, name string, perm, uid, gid uint32) (Attr, error) {
	return c.createEntry(parent, name, KindFile, perm, uid, gid, entryExtra{})
}

// Symlink creates a symbolic link, stored as s3fs does: an object whose
// body is the target.
func (c *Cache) Symlink(ctx context.Context, parent uint64, name, target string, uid, gid uint32) (Attr, error) {
	if target == "" || len(target) > 4095 {
		return Attr{}, ErrInvalid
	}
	return c.createEntry(parent, name, KindSymlink, 0o777, uid, gid, entryExtra{Target: target})
}

func (c *Cache) createEntry(parent uint64, name string, kind Kind, perm, uid, gid uint32, ex entryExtra) (Attr, error) {
	if c.opt.ReadOnly {
		return Attr{}, ErrReadOnly
	}
	if err := checkName(name); err != nil {
		return Attr{}, err
	}
	var a Attr
	err := c.transact(txChange, func(t *nsTx) error {
		dir, err := t.get(parent)
		if err != nil {
			return err
		}
		if dir.Kind != KindDir {
			return ErrNotDir
		}
		if dir.Unlinked {
			return ErrNotExist
		}
		if _, exists, err := t.dentry(parent, name); err != nil {
			return err
		} else if exists {
			return ErrExist
		}
		path := childPath(dir.Path, name)
		if err := c.checkKeyLen(path, kind == KindDir); err != nil {
			return err
		}
		ino, err := c.allocIno(t, path)
		if err != nil {
			return err
		}
		now := c.now()
		rec := &Inode{Ino: ino, Gen: c.nextSeq(), Parent: parent, Name: name, Path: path, Kind: kind,
			Perm: perm & 0o7777, UID: uid, GID: gid, Mtime: now, Ctime: now, Atime: now, Target: ex.Target, Rdev: ex.Rdev, AttrsKnown: true}
		inheritGroup(dir, rec)
		switch kind {
		case KindDir:
			rec.Pending = pendMarker
			rec.ListedUntil = now + int64(c.opt.MetadataTTL)
			rec.FillEpoch = c.nextSeq()
		default:
			rec.Pending = pendData
		}
		t.add(rec)
		t.setDentry(parent, name, dentry{Ino: ino, Kind: kind})
		dir.Mtime, dir.Ctime = now, now
		dir.Entries++
		a = c.attrOf(rec)
		return nil
	})
	return a, err
}

// checkKeyLen refuses a path whose object key S3 would refuse (a
// directory's marker key ends in "/"): the name would never be uploaded.
func (c *Cache) checkKeyLen(path string, dir bool) error {
	n := len(path)
	if dir {
		n++
	}
	if n > c.opt.MaxKeyLen {
		return ErrNameTooLong
	}
	return nil
}

// Unlink removes a file or symlink name. The inode lives on while handles
// are open; its object is deleted by write-back. Like every namespace
// operation it expects the name to have been looked up (the kernel does so).
func (c *Cache) Unlink(ctx context.Context, parent uint64, name string) error {
	if c.opt.ReadOnly {
		return ErrReadOnly
	}
	return c.transact(txChange, func(t *nsTx) error {
		dir, _, child, err := c.lookupLocked(t, parent, name)
		if err != nil {
			return err
		}
		if child.Kind == KindDir {
			return ErrIsDir
		}
		t.delDentry(parent, name)
		c.unlinkLocked(t, child)
		c.childGone(dir)
		return nil
	})
}

// lookupLocked resolves parent/name inside a namespace transaction.
func (c *Cache) lookupLocked(t *nsTx, parent uint64, name string) (dir *Inode, d dentry, child *Inode, err error) {
	if dir, err = t.get(parent); err != nil {
		return
	}
	if dir.Kind != KindDir {
		err = ErrNotDir
		return
	}
	var ok bool
	if d, ok, err = t.dentry(parent, name); err != nil {
		return
	}
	if !ok {
		err = ErrNotExist
		return
	}
	child, err = t.get(d.Ino)
	return
}

// childGone updates a directory that lost an entry. An implicit directory
// (no marker object) would vanish from S3 with its last object, so it gets
// a marker.
func (c *Cache) childGone(dir *Inode) {
	now := c.now()
	dir.Mtime, dir.Ctime = now, now
	if dir.Entries > 0 {
		dir.Entries--
	}
	if dir.Ino != RootIno && dir.ETag == "" {
		dir.Pending |= pendMarker
	}
}

// unlinkLocked takes an inode's name away. With no open handle and no
// upload in flight it is deleted now, its object turned into a tombstone;
// otherwise the last release (or the upload's end) finishes the job.
func (c *Cache) unlinkLocked(t *nsTx, n *Inode) {
	n.Unlinked = true
	n.Parent = 0
	n.Ctime = c.now()
	st := t.state(n.Ino)
	if st.handles == 0 && st.upload == nil {
		c.finalizeLocked(t, n)
	}
}

// finalizeLocked deletes an unlinked inode for good.
func (c *Cache) finalizeLocked(t *nsTx, n *Inode) {
	if n.RemoteKey != "" {
		t.tomb(n.RemoteKey, n.ETag, n.Kind == KindDir)
	}
	t.drop(n.Ino)
}

// Rmdir removes an empty directory.
func (c *Cache) Rmdir(ctx context.Context, parent uint64, name string) error {
	if c.opt.ReadOnly {
		return ErrReadOnly
	}
	if child, err := c.childOf(parent, name); err == nil && child.Kind == KindDir && !child.needsWork() {
		// Emptiness is judged on a fresh listing (or, while S3 does not
		// answer, on the last one).
		if !c.listingFresh(child) {
			if err := c.fillOrStale(ctx, child); err != nil {
				return err
			}
		}
	}
	return c.transact(txChange, func(t *nsTx) error {
		dir, _, child, err := c.lookupLocked(t, parent, name)
		if err != nil {
			return err
		}
		if child.Kind != KindDir {
			return ErrNotDir
		}
		if has, err := c.hasChildren(child.Ino); err != nil {
			return err
		} else if has {
			return ErrNotEmpty
		}
		t.delDentry(parent, name)
		child.Unlinked, child.Parent = true, 0
		c.finalizeLocked(t, child)
		c.childGone(dir)
		return nil
	})
}

// Rename flags (renameat2).
const (
	RenameNoReplace = 1
	RenameExchange  = 2
)

// Rename moves oldParent/oldName to newParent/newName, replacing a target
// as POSIX says. Directories move with everything under them; S3 sees
// copies and deletes by write-back.
func (c *Cache) Rename(ctx context.Context, oldParent uint64, oldName string, newParent uint64, newName string, flags uint32) error {
	if c.opt.ReadOnly {
		return ErrReadOnly
	}
	if flags&^uint32(RenameNoReplace) != 0 {
		return ErrInvalid // RENAME_EXCHANGE and RENAME_WHITEOUT are not supported
	}
	if err := checkName(newName); err != nil {
		return err
	}
	src, err := c.childOf(oldParent, oldName)
	if err != nil {
		return err
	}
	if src.Kind == KindDir {
		// Every object under the directory must be known before it can be
		// moved: list the subtree.
		if err := c.materialize(ctx, src.Ino); err != nil {
			return err
		}
	}
	if tgt, err := c.childOf(newParent, newName); err == nil && tgt.Kind == KindDir && !c.listingFresh(tgt) && !tgt.needsWork() {
		if err := c.fillOrStale(ctx, tgt); err != nil {
			return err
		}
	}

	c.ns.mu.Lock()
	defer c.ns.mu.Unlock()
	var moved uint64 // a directory whose subtree's paths change
	err = c.transactLocked(txChange, func(t *nsTx) error {
		odir, _, x, err := c.lookupLocked(t, oldParent, oldName)
		if err != nil {
			return err
		}
		ndir, err := t.get(newParent)
		if err != nil {
			return err
		}
		if ndir.Kind != KindDir {
			return ErrNotDir
		}
		if ndir.Unlinked {
			return ErrNotExist
		}
		newPath := childPath(ndir.Path, newName)
		if x.Kind == KindDir {
			// A directory cannot move into its own subtree.
			for p := newParent; p != 0; {
				if p == x.Ino {
					return ErrInvalid
				}
				if p == RootIno {
					break
				}
				n, err := c.peekRecord(t, p)
				if err != nil {
					return err
				}
				p = n.Parent
			}
			// Nor anything under it get a key S3 refuses.
			longest, err := c.longestUnder(x.Ino)
			if err != nil {
				return err
			}
			if len(newPath)+1+longest > c.opt.MaxKeyLen {
				return ErrNameTooLong
			}
		} else if err := c.checkKeyLen(newPath, false); err != nil {
			return err
		}
		td, exists, err := t.dentry(newParent, newName)
		if err != nil {
			return err
		}
		if exists {
			if td.Ino == x.Ino {
				return errNoChange
			}
			if flags&RenameNoReplace != 0 {
				return ErrExist
			}
			tgt, err := t.get(td.Ino)
			if err != nil {
				return err
			}
			if x.Kind == KindDir {
				if tgt.Kind != KindDir {
					return ErrNotDir
				}
				if has, err := c.hasChildren(tgt.Ino); err != nil {
					return err
				} else if has {
					return ErrNotEmpty
				}
				tgt.Unlinked, tgt.Parent = true, 0
				c.finalizeLocked(t, tgt)
			} else {
				if tgt.Kind == KindDir {
					return ErrIsDir
				}
				c.unlinkLocked(t, tgt)
			}
			t.delDentry(newParent, newName)
			ndir.Entries--
		}
		t.delDentry(oldParent, oldName)
		t.setDentry(newParent, newName, dentry{Ino: x.Ino, Kind: x.Kind})
		now := c.now()
		x.Parent, x.Name, x.Path, x.Ctime = newParent, newName, newPath, now
		c.childGone(odir)
		ndir.Mtime, ndir.Ctime = now, now
		ndir.Entries++
		if x.Kind == KindDir {
			x.Pending |= pendMarker
			t.set(renameKey(x.Ino), nil)
			moved = x.Ino
		}
		return nil
	})
	if err != nil || moved == 0 {
		return err
	}
	return c.fixSubtreePaths(moved)
}

// longestUnder returns the length of the longest key suffix below
// directory ino: "name/name" of its deepest entries, with the "/" of a
// directory's marker.
func (c *Cache) longestUnder(ino uint64) (int, error) {
	type dir struct {
		ino uint64
		n   int // length of its suffix, "" for ino itself
	}
	best := 0
	queue := []dir{{ino, 0}}
	for len(queue) > 0 {
		d := queue[0]
		queue = queue[1:]
		r := &DirReader{c: c, ino: d.ino}
		for {
			e, ok, err := r.Next()
			if err != nil {
				return 0, err
			}
			if !ok {
				break
			}
			n := d.n + len(e.Name)
			if d.n > 0 {
				n++ // the "/" before it
			}
			if e.Mode == modeBits(KindDir) {
				best = max(best, n+1)
				queue = append(queue, dir{e.Ino, n})
			} else {
				best = max(best, n)
			}
		}
	}
	return best, nil
}

// peekRecord reads a record without locking it: the caller holds nsMu, so
// names and parents cannot change under it.
func (c *Cache) peekRecord(t *nsTx, ino uint64) (*Inode, error) {
	if st, ok := t.held[ino]; ok {
		return st.rec, nil
	}
	return c.snapshot(ino)
}

// fixSubtreePaths rewrites the Path of everything under a directory that
// moved. The caller holds nsMu. It commits in batches so that huge trees
// fit badger's transaction limit; every batch leaves a consistent state
// (a descendant with a stale Path is only uploaded under its old key, then
// moved again).
func (c *Cache) fixSubtreePaths(root uint64) error {
	queue := []uint64{root}
	for len(queue) > 0 {
		dirIno := queue[0]
		queue = queue[1:]
		dir, err := c.snapshot(dirIno)
		if err != nil {
			return err
		}
		r := &DirReader{c: c, ino: dirIno}
		for {
			n := 0
			err := c.transactLocked(txChange, func(t *nsTx) error {
				for n < 500 {
					e, ok, err := r.Next()
					if err != nil {
						return err
					}
					if !ok {
						break
					}
					n++
					child, err := t.get(e.Ino)
					if err != nil {
						continue
					}
					child.Path = childPath(dir.Path, e.Name)
					if child.Kind == KindDir {
						queue = append(queue, child.Ino)
					}
				}
				return nil
			})
			if err != nil {
				return err
			}
			if n < 500 {
				break
			}
		}
	}
	return update(c.db, func(txn *badger.Txn) error { return txn.Delete(renameKey(root)) })
}

// SetAttr says which attributes Setattr changes; nil fields stay.
type SetAttr struct {
	Mode     *uint32 // permission bits
	UID, GID *uint32
	Size     *int64
	Mtime    *time.Time
	Atime    *time.Time
}

// Setattr changes attributes. Size changes truncate or extend the file.
func (c *Cache) Setattr(ctx context.Context, ino uint64, in SetAttr) (Attr, error) {
	if c.opt.ReadOnly && (in.Mode != nil || in.UID != nil || in.GID != nil || in.Size != nil || in.Mtime != nil || in.Atime != nil) {
		return Attr{}, ErrReadOnly
	}
	if in.Size != nil {
		if err := c.Truncate(ctx, ino, *in.Size); err != nil {
			return Attr{}, err
		}
	}
	if in.Mode == nil && in.UID == nil && in.GID == nil && in.Mtime == nil && in.Atime == nil {
		return c.Getattr(ctx, ino)
	}
	if err := c.ensureAttrs(ctx, ino); err != nil {
		return Attr{}, err
	}
	st, err := c.acquire(ino)
	if err != nil {
		return Attr{}, err
	}
	defer c.release(st)
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.rec == nil {
		return Attr{}, ErrNotExist
	}
	n := st.rec
	old := n.clone()
	if in.Mode != nil {
		n.Perm = *in.Mode & 0o7777
	}
	if in.UID != nil {
		n.UID = *in.UID
	}
	if in.GID != nil {
		n.GID = *in.GID
	}
	if in.Mtime != nil {
		n.Mtime = in.Mtime.UnixNano()
	}
	if in.Atime != nil {
		n.Atime = in.Atime.UnixNano()
	}
	n.Ctime = c.now()
	n.MetaVer++
	if n.Ino != RootIno {
		if n.Kind == KindDir {
			n.Pending |= pendMarker
		} else {
			n.Pending |= pendMeta
		}
	}
	if err := c.persistLocked(st, old); err != nil {
		*n = *old
		return Attr{}, err
	}
	return c.attrOf(n), nil
}

// persistLocked stores an application's change of st.rec (st.mu held)
// and tells the scheduler of the work it leaves.
func (c *Cache) persistLocked(st *inodeState, old *Inode) error {
	rec := st.rec
	if err := update(c.db, func(txn *badger.Txn) error { return c.putInode(txn, old, rec) }); err != nil {
		return fmt.Errorf("cache commit: %w", err)
	}
	if rec.needsWork() {
		c.wb.Add(writeback.Inode(rec.Ino))
	}
	return nil
}

// Statfs numbers: S3 has no capacity, so report a large, plausible one.
type Statfs struct {
	Blocks, Bfree, Bavail uint64
	Files, Ffree          uint64
	Bsize                 uint32
	NameLen               uint32
}

// Statfs returns filesystem numbers for df.
func (c *Cache) Statfs() Statfs {
	const total = 1 << 50 / 4096 // 1 PiB in 4 KiB blocks
	return Statfs{Blocks: total, Bfree: total, Bavail: total, Files: 1 << 40, Ffree: 1 << 40,
		Bsize: 4096, NameLen: MaxNameLen}
}

// namesChanged records that the names in dirs changed, and forgets the
// inodes that are gone.
func (c *Cache) namesChanged(dirs, gone map[uint64]bool) {
	if len(dirs) == 0 && len(gone) == 0 {
		return
	}
	c.ns.namesMu.Lock()
	for ino := range dirs {
		c.ns.namesSeq++
		c.ns.namesVer[ino] = c.ns.namesSeq
	}
	for ino := range gone {
		delete(c.ns.namesVer, ino)
	}
	c.ns.namesMu.Unlock()
}

// DirVersion identifies the names a directory holds in this process: it
// changes whenever an entry is added, removed or replaced, whether by this
// mount or by a listing that found a change in S3. A listing that only
// confirms the names leaves it alone, so that a caller that saw the same
// version may keep what it learned from reading the directory.
func (c *Cache) DirVersion(ino uint64) uint64 {
	c.ns.namesMu.Lock()
	defer c.ns.namesMu.Unlock()
	return c.ns.namesVer[ino]
}
