package cache

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// newTestBlockStore opens a block store of limit bytes on a fresh badger
// in a temporary directory; both close when the test ends.
func newTestBlockStore(t *testing.T, limit int64) *blockStore {
	t.Helper()
	dir := t.TempDir()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	db, err := openDB(filepath.Join(dir, "db"), nil, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	bs, err := newBlockStore(filepath.Join(dir, "blocks"), db, limit, nil, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(bs.closeFiles)
	return bs
}

// TestReadRangeCachedDescriptor: a ranged read keeps the block file open;
// rewriting or dropping the block must close that descriptor, so that a
// later read sees the new bytes or falls back, never the old file.
func TestReadRangeCachedDescriptor(t *testing.T) {
	bs := newTestBlockStore(t, 64<<20)
	id := blockID{ino: 7, gen: 1, idx: 0}
	put := func(data []byte) blockMeta {
		meta, err := bs.write(id, data)
		if err != nil {
			t.Fatal(err)
		}
		bs.added(id, meta.Len, false)
		bs.trust(id, meta)
		return meta
	}
	read := func() ([]byte, bool) {
		dst := make([]byte, 4)
		ok := bs.readRange(id, 2, dst)
		return dst, ok
	}

	put([]byte("aaaaaaaa"))
	if got, ok := read(); !ok || !bytes.Equal(got, []byte("aaaa")) {
		t.Fatalf("first read: %q %v", got, ok)
	}
	if len(bs.files) != 1 {
		t.Fatalf("%d descriptors kept after a ranged read, want 1", len(bs.files))
	}
	if bs.readRange(id, 6, make([]byte, 4)) {
		t.Fatal("a ranged read past the block's end succeeded")
	}
	put([]byte("bbbbbbbb"))
	if got, ok := read(); !ok || !bytes.Equal(got, []byte("bbbb")) {
		t.Fatalf("read after the rewrite: %q %v, want the new bytes", got, ok)
	}
	bs.removed(id)
	bs.removeFile(id)
	if _, ok := read(); ok {
		t.Fatal("a read succeeded after the block was dropped")
	}
	if len(bs.files) != 0 {
		t.Fatalf("%d descriptors kept after the block was dropped, want 0", len(bs.files))
	}
}

// TestSyncAhead: once syncAhead bytes of dirty blocks wait, a sync starts
// without anyone asking, so a later close has little left to fsync.
func TestSyncAhead(t *testing.T) {
	bs := newTestBlockStore(t, 1<<30)
	unsynced := func() (n int, bytes int64) {
		bs.mu.Lock()
		defer bs.mu.Unlock()
		return len(bs.unsynced), bs.unsyncedBytes
	}
	block := make([]byte, 1<<20)
	write := func(idx int64) {
		id := blockID{ino: 9, gen: 1, idx: idx}
		meta, err := bs.write(id, block)
		if err != nil {
			t.Fatal(err)
		}
		bs.added(id, meta.Len, true)
	}
	below := syncAhead/int64(len(block)) - 2
	for i := int64(0); i < below; i++ {
		write(i)
	}
	time.Sleep(50 * time.Millisecond)
	if n, _ := unsynced(); n != int(below) {
		t.Fatalf("%d blocks waiting below the threshold, want %d: nothing should have synced", n, below)
	}
	for i := below; i < below+4; i++ {
		write(i)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		n, b := unsynced()
		if n < int(below) && b < syncAhead {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d blocks (%d bytes) still waiting 10 s after passing %d bytes", n, b, syncAhead)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
