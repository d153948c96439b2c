package blocks

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	badger "github.com/dgraph-io/badger/v4"
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
