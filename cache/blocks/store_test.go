package blocks

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	badger "github.com/dgraph-io/badger/v4"
	"golang.org/x/sys/unix"
)

// newTestStore opens a block store of limit bytes on a fresh badger in a
// temporary directory; both close when the test ends. mod may change the
// options first.
func newTestStore(t *testing.T, limit int64, mod func(*Options)) *Store {
	t.Helper()
	dir := t.TempDir()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	db, err := badger.Open(badger.DefaultOptions(filepath.Join(dir, "db")).WithLogger(nil).WithValueThreshold(1 << 10).WithMemTableSize(4 << 20).WithValueLogFileSize(4 << 20))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := db.Close(); err != nil {
			t.Error(err)
		}
	})
	o := Options{Dir: filepath.Join(dir, "blocks"), DB: db, Limit: limit, Log: log}
	if mod != nil {
		mod(&o)
	}
	s, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// put writes, indexes and accounts for a block, as the cache does.
func put(t *testing.T, s *Store, id ID, data []byte, dirty bool) Meta {
	t.Helper()
	meta, err := s.Write(id, data)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.db.Update(func(txn *badger.Txn) error { return s.Index(txn, id, meta) }); err != nil {
		t.Fatal(err)
	}
	s.Added(id, meta.Len, dirty)
	s.Trust(id, meta)
	return meta
}

// TestReadRangeCachedDescriptor: a ranged read keeps the block file open;
// rewriting or dropping the block must close that descriptor, so that a
// later read sees the new bytes or falls back, never the old file.
func TestReadRangeCachedDescriptor(t *testing.T) {
	s := newTestStore(t, 64<<20, nil)
	id := ID{Ino: 7, Gen: 1, Idx: 0}
	read := func() ([]byte, bool) {
		dst := make([]byte, 4)
		ok := s.ReadRange(id, 2, dst)
		return dst, ok
	}

	put(t, s, id, []byte("aaaaaaaa"), false)
	if got, ok := read(); !ok || !bytes.Equal(got, []byte("aaaa")) {
		t.Fatalf("first read: %q %v", got, ok)
	}
	if len(s.files) != 1 {
		t.Fatalf("%d descriptors kept after a ranged read, want 1", len(s.files))
	}
	if s.ReadRange(id, 6, make([]byte, 4)) {
		t.Fatal("a ranged read past the block's end succeeded")
	}
	put(t, s, id, []byte("bbbbbbbb"), false)
	if got, ok := read(); !ok || !bytes.Equal(got, []byte("bbbb")) {
		t.Fatalf("read after the rewrite: %q %v, want the new bytes", got, ok)
	}
	if err := s.Delete([]ID{id}); err != nil {
		t.Fatal(err)
	}
	if _, ok := read(); ok {
		t.Fatal("a read succeeded after the block was dropped")
	}
	if len(s.files) != 0 {
		t.Fatalf("%d descriptors kept after the block was dropped, want 0", len(s.files))
	}
}

// TestSyncAhead: once syncAhead bytes of dirty blocks wait, a sync starts
// without anyone asking, so a later close has little left to fsync.
func TestSyncAhead(t *testing.T) {
	var started []func()
	s := newTestStore(t, 1<<30, func(o *Options) {
		o.Background = func(fn func()) bool { started = append(started, fn); return true }
	})
	block := make([]byte, 1<<20)
	below := syncAhead/int64(len(block)) - 2
	for i := int64(0); i < below; i++ {
		put(t, s, ID{Ino: 9, Gen: 1, Idx: i}, block, true)
	}
	if len(started) != 0 {
		t.Fatalf("a background sync started below the threshold")
	}
	for i := below; i < below+4; i++ {
		put(t, s, ID{Ino: 9, Gen: 1, Idx: i}, block, true)
	}
	if len(started) != 1 {
		t.Fatalf("%d background syncs started past the threshold, want 1", len(started))
	}
	started[0]()
	s.mu.Lock()
	n, b := len(s.unsynced), s.unsyncedBytes
	s.mu.Unlock()
	if n != 0 || b != 0 {
		t.Fatalf("%d blocks (%d bytes) still wait after the background sync", n, b)
	}
	if got := s.Stats().FilesSynced; got < below {
		t.Fatalf("%d files synced, want at least %d", got, below)
	}
}

// A background sync of dirty blocks that fails must not be forgotten.
// Linux reports a write-back error to one fsync only: a later fsync of
// the same file succeeds though the data never reached the disk. Before:
// the background sync dropped its error and the next close succeeded.
func TestBackgroundSyncErrorReachesNextSync(t *testing.T) {
	s := newTestStore(t, 1<<30, nil)
	var failed atomic.Bool
	FsyncPath = func(p string) error {
		if strings.Contains(filepath.Base(p), "-") && failed.CompareAndSwap(false, true) {
			return errors.New("injected EIO") // once, like Linux
		}
		return FsyncFile(p)
	}
	defer func() { FsyncPath = FsyncFile }()
	data := make([]byte, 1<<20)
	for i := int64(0); i < syncAhead>>20+1; i++ {
		put(t, s, ID{1, 1, i}, data, true)
	}
	s.waitBackground()
	if !failed.Load() {
		t.Fatal("the background sync did not run")
	}
	if err := s.Sync(); err == nil {
		t.Fatal("sync after a failed background sync succeeded: the lost write goes unreported")
	}
	if err := s.Sync(); err != nil {
		t.Fatalf("the error is reported once: %v", err)
	}
}

// TestDropInode: DropInode deletes exactly the blocks of the inode whose
// generation is at most upTo and not kept, their files, index entries and
// accounting, including blocks that an earlier run left and Recover
// accounted for.
func TestDropInode(t *testing.T) {
	dir := t.TempDir()
	db, err := badger.Open(badger.DefaultOptions(filepath.Join(dir, "db")).WithLogger(nil))
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := db.Close(); err != nil {
			t.Error(err)
		}
	}()
	o := Options{Dir: filepath.Join(dir, "blocks"), DB: db, Limit: 1 << 30}
	s, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("b"), 1000)
	var all []ID
	for gen := uint64(1); gen <= 3; gen++ {
		for idx := int64(0); idx < 2; idx++ {
			all = append(all, ID{Ino: 7, Gen: gen, Idx: idx})
		}
	}
	other := ID{Ino: 8, Gen: 1, Idx: 0}
	for _, id := range append(all, other) {
		put(t, s, id, data, id.Gen == 3)
	}
	// Gen 2 is kept, gen 3 is newer than upTo: only gen 1 goes.
	if err := s.DropInode(7, map[uint64]bool{2: true}, 2); err != nil {
		t.Fatal(err)
	}
	want := func(s *Store, id ID, present bool) {
		t.Helper()
		_, found, err := s.Lookup(id)
		if err != nil {
			t.Fatal(err)
		}
		_, statErr := os.Stat(s.path(id))
		if s.Has(id) != present || found != present || (statErr == nil) != present {
			t.Errorf("block %v: accounted %v, indexed %v, file %v; want all %v", id, s.Has(id), found, statErr == nil, present)
		}
	}
	for _, id := range all {
		want(s, id, id.Gen != 1)
	}
	want(s, other, true)
	checkInoBlocks(t, s)
	clean, dirty := s.Usage()
	if wantClean, wantDirty := 3*s.diskSize(1000), 2*s.diskSize(1000); clean != wantClean || dirty != wantDirty {
		t.Errorf("usage clean %d dirty %d, want %d and %d", clean, dirty, wantClean, wantDirty)
	}
	s.Close()

	// A new run knows the blocks from the index only.
	s, err = Open(o)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Recover(func(*badger.Txn, ID) (bool, bool, error) { return true, false, nil }, false); err != nil {
		t.Fatal(err)
	}
	if err := s.DropInode(7, nil, ^uint64(0)); err != nil {
		t.Fatal(err)
	}
	for _, id := range all {
		want(s, id, false)
	}
	want(s, other, true)
	checkInoBlocks(t, s)
	if len(s.inoBlocks) != 1 || len(s.inoBlocks[8]) != 1 {
		t.Errorf("inoBlocks = %v, want only inode 8's block", s.inoBlocks)
	}
}

// checkInoBlocks fails the test unless inoBlocks lists exactly the
// blocks in size, each at the place size records.
func checkInoBlocks(t *testing.T, s *Store) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for ino, refs := range s.inoBlocks {
		if len(refs) == 0 {
			t.Errorf("inode %d has an empty list", ino)
		}
		for i, r := range refs {
			e, ok := s.size[ID{Ino: ino, Gen: r.gen, Idx: r.idx}]
			if !ok || e.pos != i {
				t.Fatalf("block %d/%d/%d at %d of its list: in size %v at %d", ino, r.gen, r.idx, i, ok, e.pos)
			}
			n++
		}
	}
	if n != len(s.size) {
		t.Fatalf("inoBlocks lists %d blocks, size holds %d", n, len(s.size))
	}
}

// TestInoBlocksInAnyOrder: blocks removed oldest first (as eviction
// does), newest first (as DropInode does), from the middle, and added
// again keep inoBlocks and size in step.
func TestInoBlocksInAnyOrder(t *testing.T) {
	s := newTestStore(t, 1<<30, nil)
	data := []byte("x")
	var ids []ID
	for i := int64(0); i < 40; i++ {
		id := ID{Ino: 3, Gen: 1, Idx: i}
		put(t, s, id, data, false)
		ids = append(ids, id)
	}
	checkInoBlocks(t, s)
	if err := s.Delete(ids[:10]); err != nil { // oldest first
		t.Fatal(err)
	}
	checkInoBlocks(t, s)
	if err := s.Delete([]ID{ids[39], ids[38], ids[20], ids[25]}); err != nil {
		t.Fatal(err)
	}
	checkInoBlocks(t, s)
	put(t, s, ids[15], data, true) // again, now dirty
	put(t, s, ids[0], data, false)
	checkInoBlocks(t, s)
	if err := s.DropInode(3, nil, ^uint64(0)); err != nil {
		t.Fatal(err)
	}
	checkInoBlocks(t, s)
	if len(s.size) != 0 {
		t.Fatalf("%d blocks left after dropping the inode", len(s.size))
	}
}

// BenchmarkAppendCloseBlocks is what each close of a file appended to
// line by line costs the store: a new generation of the tail block, then
// the old one dropped. Its cost per close must not grow with the number
// of closes before it (it did while DropInode scanned the index, which
// walked one deleted key per earlier close).
func BenchmarkAppendCloseBlocks(b *testing.B) {
	dir := b.TempDir()
	db, err := badger.Open(badger.DefaultOptions(filepath.Join(dir, "db")).WithLogger(nil))
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	s, err := Open(Options{Dir: filepath.Join(dir, "blocks"), DB: db, Limit: 1 << 30})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	data := bytes.Repeat([]byte("l"), 64)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		gen := uint64(i + 1)
		id := ID{Ino: 1, Gen: gen, Idx: 0}
		meta, err := s.Write(id, data)
		if err != nil {
			b.Fatal(err)
		}
		if err := db.Update(func(txn *badger.Txn) error { return s.Index(txn, id, meta) }); err != nil {
			b.Fatal(err)
		}
		s.Added(id, meta.Len, true)
		if err := s.DropInode(1, map[uint64]bool{gen: true}, gen); err != nil {
			b.Fatal(err)
		}
	}
}

// residentPages counts the pages of p's file in the page cache.
func residentPages(t *testing.T, p string) int {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	m, err := unix.Mmap(int(f.Fd()), 0, int(fi.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	vec := make([]byte, (len(m)+os.Getpagesize()-1)/os.Getpagesize())
	if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0]))); errno != 0 {
		t.Fatal(errno)
	}
	n := 0
	for _, v := range vec {
		n += int(v & 1)
	}
	return n
}

// TestDropPages: the pages of a block that was synced leave the page
// cache; its bytes stay on disk and read back whole; a block removed
// meanwhile is no error.
func TestDropPages(t *testing.T) {
	s := newTestStore(t, 1<<30, nil)
	var st unix.Statfs_t
	if err := unix.Statfs(s.dir, &st); err != nil {
		t.Fatal(err)
	}
	if st.Type == unix.TMPFS_MAGIC {
		t.Fatalf("%s is on tmpfs, whose pages are its storage and cannot be dropped; set TMPDIR to a disk", s.dir)
	}
	data := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB
	id, gone := ID{Ino: 5, Gen: 1, Idx: 0}, ID{Ino: 5, Gen: 1, Idx: 1}
	meta := put(t, s, id, data, true)
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	if n := residentPages(t, s.path(id)); n == 0 {
		t.Fatal("a block just written has no pages in the page cache: the test cannot see a drop")
	}
	s.DropPages([]ID{id, gone})
	if n := residentPages(t, s.path(id)); n != 0 {
		t.Fatalf("%d pages of the block still cached after DropPages", n)
	}
	buf := make([]byte, len(data))
	if err := s.Read(id, meta, buf); err != nil || !bytes.Equal(buf, data) {
		t.Fatalf("read after the drop: %v", err)
	}
}

// TestReplacedKeptUntilSync: a block replaced by a committed transaction
// leaves the accounting at once, but its file stays until a sync has made
// that transaction durable (before it, a power cut leaves the record that
// refers to the old block), and its ID is not handed out meanwhile.
func TestReplacedKeptUntilSync(t *testing.T) {
	s := newTestStore(t, 1<<30, nil)
	id := ID{Ino: 9, Gen: 1, Idx: 0}
	put(t, s, id, bytes.Repeat([]byte{'a'}, 4096), true)
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := s.db.Update(func(txn *badger.Txn) error { return s.Unindex(txn, id) }); err != nil {
		t.Fatal(err)
	}
	s.Replaced(id)
	if _, err := os.Stat(s.path(id)); err != nil {
		t.Fatalf("the replaced block's file went before a sync: %v", err)
	}
	if !s.Taken(id) || s.Has(id) {
		t.Fatalf("replaced block: taken %v, has %v; want taken, not had", s.Taken(id), s.Has(id))
	}
	if clean, dirty := s.Usage(); clean != s.diskSize(4096) || dirty != 0 {
		t.Fatalf("the replaced block uses %d clean, %d dirty bytes; want its size as clean (not dirty) until the sync", clean, dirty)
	}
	// A sync that fails keeps the file, and the ID taken, for the next.
	other := ID{Ino: 9, Gen: 2, Idx: 0}
	put(t, s, other, []byte("unsynced"), true)
	orig := FsyncPath
	FsyncPath = func(string) error { return errors.New("injected fsync failure") }
	err := s.Sync()
	FsyncPath = orig
	if err == nil {
		t.Fatal("sync with a failing fsync succeeded")
	}
	if _, err := os.Stat(s.path(id)); err != nil || !s.Taken(id) {
		t.Fatalf("after a failed sync, the replaced block's file: %v, taken %v", err, s.Taken(id))
	}
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(s.path(id)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the replaced block's file is still there after the sync: %v", err)
	}
	if s.Taken(id) {
		t.Fatal("the ID is still taken after the sync")
	}
	if clean, dirty := s.Usage(); clean != 0 || dirty != s.diskSize(uint32(len("unsynced"))) {
		t.Fatalf("after the sync, %d clean and %d dirty bytes; want the other block's only", clean, dirty)
	}
}

// TestAppendNamesTheDurablePrefix: Append records, with the new length,
// the longest prefix of the block a sync has made durable: the committed
// meta once a sync finished after it, else the durable prefix it carried.
// A sync under way when the append begins has not made anything durable
// yet. Recover cuts a block whose file lost the appended bytes back to
// that prefix.
func TestAppendNamesTheDurablePrefix(t *testing.T) {
	var opt Options
	s := newTestStore(t, 64<<20, func(o *Options) { opt = *o })
	id := ID{Ino: 9, Gen: 1, Idx: 0}
	data := []byte("0123456789")
	commit := func(m Meta) {
		t.Helper()
		if err := s.db.Update(func(txn *badger.Txn) error { return s.Index(txn, id, m) }); err != nil {
			t.Fatal(err)
		}
		s.Added(id, m.Len, true)
	}
	appendTo := func(m Meta, more string) Meta {
		t.Helper()
		data = append(data, more...)
		n, err := s.Append(id, m, data)
		if err != nil {
			t.Fatal(err)
		}
		commit(n)
		return n
	}
	m0 := put(t, s, id, data, true)
	m1 := appendTo(m0, "ab") // never synced: nothing durable
	if m1.Durable {
		t.Fatalf("append to a block never synced names a durable prefix: %+v", m1)
	}
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	m2 := appendTo(m1, "cd")
	if !m2.Durable || m2.DurableLen != m1.Len || m2.DurableCRC != m1.CRC {
		t.Fatalf("append after a sync: %+v, want durable prefix %+v", m2, m1)
	}
	m3 := appendTo(m2, "ef") // no sync since: the same prefix
	if !m3.Durable || m3.DurableLen != m1.Len || m3.DurableCRC != m1.CRC {
		t.Fatalf("second append without a sync: %+v, want durable prefix %+v", m3, m1)
	}

	// An append while a sync of the block is under way is refused: that
	// sync makes the bytes there durable, which no prefix named now can
	// say. (From a review: it named the older prefix, and a power cut
	// after that sync cut back bytes it had made durable.)
	finish := syncHeld(t, s)
	if _, err := s.Append(id, m3, append(bytes.Clone(data), "gh"...)); !errors.Is(err, ErrNoAppend) {
		t.Fatalf("append during a sync of the block: %v, want ErrNoAppend", err)
	}
	if err := finish(); err != nil {
		t.Fatal(err)
	}
	m4 := appendTo(m3, "gh")
	if !m4.Durable || m4.DurableLen != m3.Len || m4.DurableCRC != m3.CRC {
		t.Fatalf("append after that sync: %+v, want durable prefix %+v", m4, m3)
	}
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	m5 := appendTo(m4, "ij")
	if !m5.Durable || m5.DurableLen != m4.Len || m5.DurableCRC != m4.CRC {
		t.Fatalf("append after the next sync: %+v, want durable prefix %+v", m5, m4)
	}

	// The power cut: the index has m5, the file lost "ij".
	if err := os.Truncate(s.path(id), int64(m4.Len)); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s2, err := Open(opt)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	cuts, err := s2.Recover(func(*badger.Txn, ID) (bool, bool, error) { return true, true, nil }, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(cuts) != 1 || cuts[0].ID != id || cuts[0].Len != m4.Len || cuts[0].Was != m5.Len || cuts[0].Lost || cuts[0].Damaged {
		t.Fatalf("cuts %+v, want %v cut from %d to %d", cuts, id, m5.Len, m4.Len)
	}
	if err := s2.db.Update(func(txn *badger.Txn) error { return s2.IndexCut(txn, cuts[0]) }); err != nil {
		t.Fatal(err)
	}
	m, found, err := s2.Lookup(id)
	if err != nil || !found || m != (Meta{Len: m4.Len, CRC: m4.CRC}) {
		t.Fatalf("index after the cut: %+v %v %v, want %+v", m, found, err, Meta{Len: m4.Len, CRC: m4.CRC})
	}
	buf := make([]byte, 64)
	if err := s2.Read(id, m, buf); err != nil || string(buf[:m.Len]) != "0123456789abcdefgh" {
		t.Fatalf("block after the cut: %q %v", buf[:m.Len], err)
	}
	// An intact block is left alone.
	if cuts, err := s2.Recover(func(*badger.Txn, ID) (bool, bool, error) { return true, true, nil }, true); err != nil || len(cuts) != 0 {
		t.Fatalf("a second recovery cut %v (%v)", cuts, err)
	}
}

// TestDroppedDirtyKeptUntilSync: the cache drops blocks once a committed
// record no longer refers to them (a truncate, an unlink, an upload that
// replaced them). That commit is durable only after the next sync, and a
// power cut before it brings back the record that does refer to them:
// the files of dirty blocks (not in S3) must stay until then. Clean ones
// can be fetched again and go at once.
func TestDroppedDirtyKeptUntilSync(t *testing.T) {
	s := newTestStore(t, 1<<30, nil)
	dirty := []ID{{Ino: 9, Gen: 1, Idx: 0}, {Ino: 9, Gen: 1, Idx: 1}}
	clean := ID{Ino: 9, Gen: 2, Idx: 0}
	for _, id := range dirty {
		put(t, s, id, bytes.Repeat([]byte{'d'}, 4096), true)
	}
	put(t, s, clean, bytes.Repeat([]byte{'c'}, 4096), false)
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := s.DropInode(9, nil, ^uint64(0)); err != nil {
		t.Fatal(err)
	}
	for _, id := range dirty {
		if _, err := os.Stat(s.path(id)); err != nil {
			t.Fatalf("dirty block %v's file went before a sync: %v", id, err)
		}
		if _, found, err := s.Lookup(id); err != nil || found {
			t.Fatalf("dirty block %v still indexed (%v)", id, err)
		}
		if !s.Taken(id) || s.Has(id) {
			t.Fatalf("dropped dirty block: taken %v, has %v; want taken, not had", s.Taken(id), s.Has(id))
		}
	}
	if _, err := os.Stat(s.path(clean)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the clean block's file is still there: %v", err)
	}
	if clean, d := s.Usage(); clean != 2*s.diskSize(4096) || d != 0 {
		t.Fatalf("dropped blocks use %d clean, %d dirty bytes; want the dirty files' (as clean) until the sync", clean, d)
	}
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	for _, id := range dirty {
		if _, err := os.Stat(s.path(id)); !errors.Is(err, os.ErrNotExist) || s.Taken(id) {
			t.Fatalf("after the sync, dirty block %v's file: %v, taken %v", id, err, s.Taken(id))
		}
	}
	if clean, d := s.Usage(); clean+d != 0 {
		t.Fatalf("after the sync, %d bytes still accounted for", clean+d)
	}
}

// TestWriterShortOfRoomSyncsRetired: the files of dropped dirty blocks
// count against the limit until a sync removes them; a writer that needs
// their room syncs at once rather than overshoot the limit or wait for
// the group commit.
func TestWriterShortOfRoomSyncsRetired(t *testing.T) {
	s := newTestStore(t, 4*8192, nil)
	block := bytes.Repeat([]byte{'d'}, 8192)
	if s.diskSize(8192) != 8192 {
		t.Fatalf("disk size of 8 KiB is %d here; the test assumes 8 KiB", s.diskSize(8192))
	}
	var ids []ID
	for idx := range int64(3) {
		id := ID{Ino: 5, Gen: 1, Idx: idx}
		put(t, s, id, block, true)
		ids = append(ids, id)
	}
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := s.DropInode(5, nil, ^uint64(0)); err != nil {
		t.Fatal(err)
	}
	ok, err := s.Reserve(context.Background(), 2*8192, true, 0)
	if err != nil || !ok {
		t.Fatalf("reserve two blocks' room: %v %v", ok, err)
	}
	for _, id := range ids {
		if _, err := os.Stat(s.path(id)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("room was given while dropped block %v's file still takes it: %v", id, err)
		}
	}
}

// TestReserveWithRetiredEnds: a writer short of room while dropped
// blocks' files wait for a sync that fails must get ErrNoSpace when its
// wait ends, not spin. (From a review: eviction did not count the
// retired bytes that the room check counted.)
func TestReserveWithRetiredEnds(t *testing.T) {
	s := newTestStore(t, 4*8192, nil)
	block := bytes.Repeat([]byte{'d'}, 8192)
	put(t, s, ID{Ino: 1, Gen: 1, Idx: 0}, block, false)
	put(t, s, ID{Ino: 1, Gen: 1, Idx: 1}, block, false)
	put(t, s, ID{Ino: 5, Gen: 1, Idx: 0}, block, true)
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := s.DropInode(5, nil, ^uint64(0)); err != nil {
		t.Fatal(err)
	}
	put(t, s, ID{Ino: 6, Gen: 1, Idx: 0}, block, true)
	FsyncPath = func(p string) error {
		if strings.Contains(filepath.Base(p), "-") { // block files, not directories
			return errors.New("injected EIO")
		}
		return FsyncFile(p)
	}
	t.Cleanup(func() { FsyncPath = FsyncFile })
	done := make(chan error, 1)
	go func() {
		_, err := s.Reserve(context.Background(), 8192, true, 100*time.Millisecond)
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil && !errors.Is(err, ErrNoSpace) {
			t.Fatalf("reserve: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Reserve with a 100 ms wait still running after 5 s")
	}
}

// TestMetaRoundTrip: every form of an index entry reads back as written,
// and a malformed one is refused, not misread.
func TestMetaRoundTrip(t *testing.T) {
	for _, m := range []Meta{
		{Len: 10, CRC: 7},
		{Len: 10, CRC: 7, Fresh: true},
		{Len: 10, CRC: 7, Durable: true, DurableLen: 4, DurableCRC: 9},
		{Len: 10, CRC: 7, Durable: true, DurableLen: 4, DurableCRC: 9, Fresh: true},
		{Len: 10, CRC: 7, Prev: true, PrevGen: 1 << 60, PrevLen: 3, PrevCRC: 5, Epoch: 1<<40 + 3},
		{Len: 10, CRC: 7, Durable: true, DurableLen: 4, DurableCRC: 9, Prev: true, PrevGen: 2, PrevLen: 3, PrevCRC: 5},
	} {
		got, err := unmarshalMeta(m.marshal())
		if err != nil || got != m {
			t.Fatalf("%+v read back as %+v (%v)", m, got, err)
		}
	}
	for _, b := range [][]byte{nil, make([]byte, 7), make([]byte, 10), append(make([]byte, 8), 8), append(make([]byte, 8), metaDurable),
		append(append(make([]byte, 8), metaPrev), make([]byte, 8)...)} { // a Prev cut short
		if _, err := unmarshalMeta(b); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("entry %x: %v, want ErrCorrupt", b, err)
		}
	}
}

// TestRecoverAfterCleanCloseKnowsBlocksDurable: after a clean close every
// block is durable, and after an unclean one Recover syncs what it
// checked, so an append in place before the first sync of the new run
// names the block as its durable prefix and carries no Fresh mark. (From
// reviews: Recover counted every dirty block unsynced, and a power cut
// right after a restart lost a whole tail block, or dropped a block whose
// stale Fresh mark was carried on.)
func TestRecoverAfterCleanCloseKnowsBlocksDurable(t *testing.T) {
	for _, clean := range []bool{true, false} {
		var opt Options
		s := newTestStore(t, 64<<20, func(o *Options) { opt = *o })
		id := ID{Ino: 3, Gen: 1, Idx: 0}
		m, err := s.Write(id, []byte("0123456789"))
		if err != nil {
			t.Fatal(err)
		}
		m.Fresh = true // it filled a hole, long ago
		if err := s.db.Update(func(txn *badger.Txn) error { return s.Index(txn, id, m) }); err != nil {
			t.Fatal(err)
		}
		s.Added(id, m.Len, true)
		if err := s.Sync(); err != nil {
			t.Fatal(err)
		}
		s.Close()
		s2, err := Open(opt)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s2.Recover(func(*badger.Txn, ID) (bool, bool, error) { return true, true, nil }, !clean); err != nil {
			t.Fatal(err)
		}
		n, err := s2.Append(id, m, []byte("0123456789ab"))
		s2.Close()
		if err != nil {
			t.Fatal(err)
		}
		if !n.Durable || n.DurableLen != m.Len || n.DurableCRC != m.CRC || n.Fresh {
			t.Fatalf("clean close %v: append right after the start gave %+v", clean, n)
		}
	}
}

// TestFreshNotCarriedThroughASync: a block the sync under way holds may
// become durable with that sync, and so may the entry of a block written
// over it meanwhile: the new entry must not carry its Fresh mark, or a
// power cut after the sync would drop durable bytes as if they had only
// filled a hole. (From a review.) Append refuses such a block now.
func TestFreshNotCarriedThroughASync(t *testing.T) {
	s := newTestStore(t, 64<<20, nil)
	id := ID{Ino: 4, Gen: 1, Idx: 0}
	m, err := s.Write(id, []byte("0123456789"))
	if err != nil {
		t.Fatal(err)
	}
	m.Fresh = true
	if err := s.db.Update(func(txn *badger.Txn) error { return s.Index(txn, id, m) }); err != nil {
		t.Fatal(err)
	}
	s.Added(id, m.Len, true)
	if !s.Unsynced(id) {
		t.Fatal("a block just written is not unsynced")
	}
	finish := syncHeld(t, s)
	if s.Unsynced(id) {
		t.Error("a block the sync under way holds counts as unsynced")
	}
	// Such a block is not appended to at all (see
	// TestAppendNamesTheDurablePrefix); the cache stores it whole, and
	// its freshPlace does not call the place fresh (TestFreshPlace).
	n, err := s.Append(id, m, []byte("0123456789ab"))
	if err := finish(); err != nil {
		t.Fatal(err)
	}
	if !errors.Is(err, ErrNoAppend) {
		t.Fatalf("append during a sync of the block: %+v, %v; want ErrNoAppend", n, err)
	}
}

// syncHeld starts a Sync of s and returns once it is under way, held in
// its first fsync; finish lets it go on and returns its error.
func syncHeld(t *testing.T, s *Store) (finish func() error) {
	t.Helper()
	hold, held := make(chan struct{}), make(chan struct{}, 16)
	// Once finished, it passes every fsync through; it is put back when
	// the test ends, not before, as a background sync may be reading it.
	FsyncPath = func(p string) error {
		select {
		case held <- struct{}{}:
		default:
		}
		<-hold
		return FsyncFile(p)
	}
	t.Cleanup(func() { FsyncPath = FsyncFile })
	synced := make(chan error, 1)
	go func() { synced <- s.Sync() }()
	<-held
	return func() error {
		close(hold)
		return <-synced
	}
}

// TestCleanedKeptUntilSync: a block an upload made clean (MarkClean)
// stays out of eviction until a sync has made that durable, and a reader
// short of room does not wait for that sync: its block is not cached
// this time. Once the sync is done, the block is evicted for the next.
func TestCleanedKeptUntilSync(t *testing.T) {
	s := newTestStore(t, 2*64<<10, nil)
	a, b := ID{Ino: 1, Gen: 1, Idx: 0}, ID{Ino: 1, Gen: 1, Idx: 1}
	put(t, s, a, bytes.Repeat([]byte("a"), 64<<10), true)
	put(t, s, b, bytes.Repeat([]byte("b"), 64<<10), true)
	s.MarkClean(a)
	finish := syncHeld(t, s) // a sync under way, begun after MarkClean
	got := make(chan error, 1)
	go func() {
		ok, err := s.Reserve(context.Background(), 64<<10, false, 0)
		if err == nil && ok {
			err = errors.New("room made while no sync had made a's upload durable")
		}
		got <- err
	}()
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		finish()
		t.Fatal("a reader short of room waited for the sync under way")
	}
	if err := finish(); err != nil {
		t.Fatal(err)
	}
	s.waitBackground()
	ok, err := s.Reserve(context.Background(), 64<<10, false, 0)
	if err != nil || !ok {
		t.Fatalf("after the sync: Reserve %v, %v; want a's room", ok, err)
	}
	if s.Has(a) || !s.Has(b) {
		t.Fatalf("after the sync: a cached %v, b cached %v; want a evicted, b (dirty) kept", s.Has(a), s.Has(b))
	}
}

// TestPinCountsBlocksWaitingForASync: Pin keeps pinned blocks under a
// quarter of the cache, blocks an upload made clean that wait for a sync
// included: they are pinned once pinned, not only after the sync. (From a
// review: they were not counted, and all became pinned after the sync.)
func TestPinCountsBlocksWaitingForASync(t *testing.T) {
	s := newTestStore(t, 16*64<<10, nil)
	var ids []ID
	for i := range 8 {
		id := ID{Ino: 1, Gen: 1, Idx: int64(i)}
		put(t, s, id, bytes.Repeat([]byte("a"), 64<<10), true)
		s.MarkClean(id) // an upload landed
		ids = append(ids, id)
	}
	if s.Pin(1, ids, 0) {
		t.Fatal("8 of 16 blocks pinned: over a quarter of the cache")
	}
	if !s.Pin(1, ids[:2], 0) {
		t.Fatal("2 of 16 blocks not pinned")
	}
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	pinned, inLRU := s.pinnedBytes, s.lru.Len()
	s.mu.Unlock()
	if pinned != 2*64<<10 || inLRU != 6 {
		t.Fatalf("after the sync: %d bytes pinned, %d blocks evictable; want 2 blocks pinned, 6 evictable", pinned, inLRU)
	}
	s.Unpin(1)
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	pinned, inLRU = s.pinnedBytes, s.lru.Len()
	s.mu.Unlock()
	if pinned != 0 || inLRU != 8 {
		t.Fatalf("unpinned and synced: %d bytes pinned, %d blocks evictable; want 0 and 8", pinned, inLRU)
	}
}

// TestWriterSyncsForEachLanding: a writer waiting for room while uploads
// land gets the room their blocks leave, each after a sync the writer
// starts: not only the blocks that waited for a sync when it began. (From
// a review: the writer synced once, and then waited for the group commit.)
func TestWriterSyncsForEachLanding(t *testing.T) {
	s := newTestStore(t, 4*64<<10, nil)
	var ids []ID
	for i := range 4 {
		id := ID{Ino: 1, Gen: 1, Idx: int64(i)}
		put(t, s, id, bytes.Repeat([]byte("a"), 64<<10), true)
		ids = append(ids, id)
	}
	s.MarkClean(ids[0]) // landed before the writer came
	synced := make(chan struct{}, 8)
	s.SetOnSynced(func() { synced <- struct{}{} })
	got := make(chan error, 1)
	go func() {
		ok, err := s.Reserve(context.Background(), 2*64<<10-4096, true, 30*time.Second)
		if err == nil && !ok {
			err = errors.New("no room")
		}
		got <- err
	}()
	<-synced            // the writer's sync for the first
	s.MarkClean(ids[1]) // lands while the writer waits
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the writer still waits: the second landing's block was never synced for it")
	}
}

// TestHoldUntilASyncBegunAfter: a block held (HoldInode, Hold, MarkClean)
// stays out of eviction until a sync that began after the hold has made
// itself durable; holding it again during a sync keeps it past that one.
// (From a review: a sync that began before an upload's landing commit
// released the blocks the landing held again after its commit.)
func TestHoldUntilASyncBegunAfter(t *testing.T) {
	s := newTestStore(t, 16*64<<10, nil)
	id := ID{Ino: 1, Gen: 1, Idx: 0}
	put(t, s, id, bytes.Repeat([]byte("a"), 64<<10), false) // clean, in the LRU
	evictable := func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		_, ok := s.lruIndex[id]
		return ok
	}
	s.HoldInode(1)
	if evictable() {
		t.Fatal("held, and still evictable")
	}
	s.SetOnSynced(func() { s.HoldInode(1) }) // held again while the sync runs
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	s.SetOnSynced(nil)
	if evictable() {
		t.Fatal("released by a sync that began before it was held again")
	}
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	if !evictable() {
		t.Fatal("still held after a sync that began after the hold")
	}
	if ok, err := s.Reserve(context.Background(), 16*64<<10, false, 0); err != nil || !ok {
		t.Fatalf("Reserve of the whole cache: %v, %v; want the held block evicted now", ok, err)
	}
}

// TestBeginWriteHoldsOffSyncs: no sync begins between BeginWrite and the
// block's Added, so the block is in the sync numbered by the epoch
// BeginWrite returned: the epoch Recover compares (Meta.Epoch) is exact.
func TestBeginWriteHoldsOffSyncs(t *testing.T) {
	s := newTestStore(t, 64<<20, nil)
	for i := range 50 {
		id := ID{Ino: 1, Gen: uint64(i + 1), Idx: 0}
		epoch, done := s.BeginWrite()
		synced := make(chan error, 1)
		go func() { synced <- s.Sync() }()
		put(t, s, id, []byte("a block"), true)
		done()
		if err := <-synced; err != nil {
			t.Fatal(err)
		}
		if !s.IsDurable(id) {
			t.Fatalf("round %d: a sync that began while the block was written missed it", i)
		}
		s.mu.Lock()
		n := s.epochs
		s.mu.Unlock()
		if n != epoch {
			t.Fatalf("round %d: the block's epoch is %d, the sync that made it durable %d", i, epoch, n)
		}
	}
}

// CommitAsync while a sync hangs: every caller gets a channel that closes
// only after a sync begun after its call, and callers share the run that
// waits for the hung one, so a hung disk costs two goroutines, not one per
// upload.
func TestCommitAsyncSharesRunsWhileASyncHangs(t *testing.T) {
	var g groupSync
	hang := make(chan struct{})
	var spawned, runs atomic.Int32
	spawn := func(fn func()) bool {
		spawned.Add(1)
		go fn()
		return true
	}
	syncFn := func() error {
		if runs.Add(1) == 1 {
			<-hang
		}
		return nil
	}
	run := func() error { return g.do(syncFn) }
	first := g.after(run, spawn)
	for deadline := time.Now().Add(10 * time.Second); runs.Load() == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the first run never started")
		}
	}
	second := g.after(run, spawn)
	for i := 0; i < 50; i++ {
		if ch := g.after(run, spawn); ch != second {
			t.Fatalf("call %d while the sync hangs got a run of its own", i)
		}
	}
	if n := spawned.Load(); n != 2 {
		t.Fatalf("%d runs spawned, want 2: the hung one and the one after it", n)
	}
	select {
	case <-first.Done():
		t.Fatal("the first caller's sync ended while it hangs")
	case <-second.Done():
		t.Fatal("a later caller's sync ended before a sync begun after it")
	case <-time.After(50 * time.Millisecond):
	}
	close(hang)
	for _, p := range []*Pending{first, second} {
		<-p.Done()
		if err := p.Err(); err != nil {
			t.Error(err)
		}
	}
	if n := runs.Load(); n != 2 {
		t.Fatalf("%d syncs ran, want 2", n)
	}
}

// Clean blocks stored at once (the fetches of a read run in parallel)
// keep the cache within its limit. Before: each found room in Reserve
// before any had added its block, so eight of them on a cache with room
// for four left it four blocks over, with nothing evicted.
func TestConcurrentCleanStoresStayWithinTheLimit(t *testing.T) {
	const bs, stores = 64 << 10, 8
	s := newTestStore(t, 0, nil)
	s.mu.Lock()
	s.limit = 16 * s.diskSize(bs)
	s.mu.Unlock()
	data := bytes.Repeat([]byte{1}, bs)
	for i := int64(0); i < 12; i++ {
		put(t, s, ID{Ino: 1, Gen: 1, Idx: i}, data, false)
	}
	// Every store waits, past its Reserve, until all have got that far.
	var arrived atomic.Int32
	all := make(chan struct{})
	testHookCleanReserved = func() {
		if arrived.Add(1) == stores {
			close(all)
		}
		select {
		case <-all:
		case <-time.After(10 * time.Second):
			t.Error("the stores never all got past Reserve")
		}
	}
	t.Cleanup(func() { testHookCleanReserved = nil })
	done := make(chan struct{})
	for i := int64(0); i < stores; i++ {
		go func() {
			defer func() { done <- struct{}{} }()
			s.StoreClean(ID{Ino: 2, Gen: 1, Idx: i}, data)
		}()
	}
	for i := 0; i < stores; i++ {
		<-done
	}
	clean, dirty := s.Usage()
	if clean+dirty > s.limit {
		t.Fatalf("the cache holds %d bytes after %d stores at once, over its limit of %d (%d evictions)", clean+dirty, stores, s.limit, s.Stats().Evictions)
	}
	if s.Stats().Evictions == 0 {
		t.Fatal("nothing was evicted for the new blocks")
	}
}

// A writer whose only obstacle is room that a clean store holds waits for
// it, within its wait and its context, rather than spin: the held room
// counts as taken for a dirty block too. (From a review: the writer
// looped in Reserve, evicting and calling statfs, past its wait and its
// context, until the clean store gave the room back.)
func TestDirtyReserveWaitsOnHeldRoom(t *testing.T) {
	const bs = 64 << 10
	s := newTestStore(t, 0, nil)
	release := fillAndHold(t, s)
	rctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	res := make(chan error, 1)
	go func() {
		_, err := s.Reserve(rctx, bs, true, 100*time.Millisecond)
		res <- err
	}()
	select {
	case err := <-res:
		if !errors.Is(err, ErrNoSpace) && !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("a writer short of room: %v, want ErrNoSpace or its deadline", err)
		}
	case <-time.After(10 * time.Second):
		t.Error("a writer short of room (wait 100 ms, context 200 ms) still waits after 10 s")
	}
	release()
}

// fillAndHold fills s with three dirty blocks and one clean store that
// holds its room, past Reserve, until the returned function lets it end.
func fillAndHold(t *testing.T, s *Store) (release func()) {
	t.Helper()
	const bs = 64 << 10
	s.mu.Lock()
	s.limit = 4 * s.diskSize(bs)
	s.mu.Unlock()
	data := bytes.Repeat([]byte{1}, bs)
	for i := int64(0); i < 3; i++ {
		put(t, s, ID{Ino: 1, Gen: 1, Idx: i}, data, true)
	}
	held, let := make(chan struct{}), make(chan struct{})
	testHookCleanReserved = func() {
		close(held)
		<-let
	}
	t.Cleanup(func() { testHookCleanReserved = nil })
	done := make(chan struct{})
	go func() {
		s.StoreClean(ID{Ino: 2, Gen: 1, Idx: 0}, data)
		close(done)
	}()
	<-held
	var once sync.Once
	return func() {
		once.Do(func() { close(let) })
		<-done
	}
}

// A writer that waits for room a clean store holds goes on when that
// store ends, whether or not uploads can run (Hopeless): the store's
// block is clean and may be evicted. (From a review: the writer slept
// until its own next look, up to 1 s, and with S3 unreachable got ENOSPC
// at once.)
func TestDirtyReserveGetsHeldRoomWhenTheStoreEnds(t *testing.T) {
	for _, hopeless := range []bool{false, true} {
		t.Run(fmt.Sprintf("hopeless=%v", hopeless), func(t *testing.T) {
			// Only a wake-up from the store's end gets the writer on:
			// its own look every freedPoll is an hour away.
			freedPoll = time.Hour
			t.Cleanup(func() { freedPoll = time.Second })
			s := newTestStore(t, 0, func(o *Options) { o.Hopeless = func() bool { return hopeless } })
			release := fillAndHold(t, s)
			t.Cleanup(release)
			wctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			res := make(chan error, 1)
			go func() {
				_, err := s.Reserve(wctx, 64<<10, true, time.Hour)
				res <- err
			}()
			select {
			case err := <-res:
				t.Fatalf("the writer did not wait for the held room: %v", err)
			case <-time.After(100 * time.Millisecond):
			}
			release()
			select {
			case err := <-res:
				if err != nil {
					t.Fatalf("the writer, once the store ended: %v", err)
				}
			case <-time.After(10 * time.Second):
				cancel()
				t.Fatalf("the writer still waits 10 s after the store ended (then: %v)", <-res)
			}
		})
	}
}
