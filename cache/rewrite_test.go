package cache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/keelfs/keelfs/cache/blocks"
	"github.com/keelfs/keelfs/s3backend"
)

// committedContent reads file ino as a crash would leave it: the record
// committed in badger, each of its blocks read from its file and checked
// against the checksum committed with it.
func (e *env) committedContent(ino uint64) ([]byte, error) {
	rec, err := e.c.loadInode(ino)
	if err != nil {
		return nil, err
	}
	bs := e.opt.BlockSize
	out := make([]byte, 0, rec.Size)
	for idx := int64(0); idx*bs < rec.Size; idx++ {
		n := min(bs, rec.Size-idx*bs)
		src := e.c.sourceOf(rec, idx)
		if src.hole {
			out = append(out, make([]byte, n)...)
			continue
		}
		meta, found, err := e.c.blocks.Lookup(src.id)
		if err != nil {
			return nil, err
		}
		if !found {
			return nil, fmt.Errorf("block %v of the committed record is not in the index", src.id)
		}
		buf := make([]byte, bs)
		if err := e.c.blocks.Read(src.id, meta, buf); err != nil {
			return nil, fmt.Errorf("block %v: %w", src.id, err)
		}
		out = append(out, buf[:n]...)
	}
	return out, nil
}

// blockFiles counts the block files of ino on disk.
func (e *env) blockFiles(ino uint64) int {
	e.t.Helper()
	n := 0
	err := filepath.WalkDir(filepath.Join(e.dir, "blocks"), func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasPrefix(d.Name(), fmt.Sprintf("%016x-", ino)) {
			n++
		}
		return nil
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return n
}

// TestStoringABlockAgainKeepsTheCommittedOne: a file closed once (its
// blocks committed, the close acknowledged), opened again and changed
// inside a stored block. Storing that block again must leave the
// committed one readable, with its committed checksum, until the new
// record commits: a kill -9 at that moment, or a failed commit, must not
// lose what the first close acknowledged. Before: the new content was
// renamed over the committed file first (a crash there left a block whose
// bytes failed the committed checksum), and the failed commit's clean-up
// deleted the committed file.
func TestStoringABlockAgainKeepsTheCommittedOne(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.WriteBackDelay = time.Hour })
	first := randBytes(100 << 10) // blocks 0 and 1
	e.write("f", 0, first)
	ino := e.mustLookup("f").Ino
	h := e.openW("f")
	if _, err := h.Write(ctx, []byte("CHANGED"), 10); err != nil {
		t.Fatal(err)
	}
	ran := 0
	testHookFlushCommit = func() error {
		ran++
		// What a kill -9 now would leave.
		if got, err := e.committedContent(ino); err != nil || !bytes.Equal(got, first) {
			t.Errorf("just before the commit, the committed file reads back wrong (err %v)", err)
		}
		return errors.New("injected commit failure")
	}
	t.Cleanup(func() { testHookFlushCommit = nil })
	err := h.Flush(ctx)
	testHookFlushCommit = nil
	if err == nil || ran == 0 {
		t.Fatalf("flush with a failing commit: %v (hook ran %d times)", err, ran)
	}
	if got, err := e.committedContent(ino); err != nil || !bytes.Equal(got, first) {
		t.Fatalf("after the failed commit, the committed file reads back wrong (err %v)", err)
	}
	// The change is still in the write buffer: the next flush stores it.
	want := bytes.Clone(first)
	copy(want[10:], "CHANGED")
	if got := e.read("f"); !bytes.Equal(got, want) {
		t.Fatal("the failed flush lost the change")
	}
	e.close(h)
	if got, err := e.committedContent(ino); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("after the flush, the committed file reads back wrong (err %v)", err)
	}
	// The replaced block left the index; its file stays until a sync
	// has made that durable (a power cut before leaves the old record),
	// then goes.
	if n := e.blockFiles(ino); n != 3 {
		t.Fatalf("%d block files before the sync, want the two blocks and the replaced one", n)
	}
	if err := e.c.blocks.Sync(); err != nil {
		t.Fatal(err)
	}
	if n := e.blockFiles(ino); n != 2 {
		t.Fatalf("%d block files for a file of two blocks", n)
	}
	if clean, dirty := e.c.blocks.Usage(); clean+dirty != 100<<10 {
		t.Fatalf("the store accounts for %d bytes, want the file's 100 KiB", clean+dirty)
	}
	e.drain()
	if got := e.object("f"); !bytes.Equal(got, want) {
		t.Fatal("uploaded content differs")
	}
}

// oneBlockWriterAndReader makes f, one block of 'a' stored and committed,
// and opens it for writing and for reading; both are released when the
// test ends.
func oneBlockWriterAndReader(t *testing.T) (e *env, w, r *Handle) {
	t.Helper()
	e = newEnv(t, func(o *Options) { o.WriteBackDelay = time.Hour })
	e.write("f", 0, bytes.Repeat([]byte{'a'}, int(e.opt.BlockSize)))
	w = e.openW("f")
	r, _, err := e.c.Open(ctx, e.mustLookup("f").Ino, false, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, h := range []*Handle{r, w} {
			if err := h.Release(ctx); err != nil {
				t.Error(err)
			}
		}
	})
	return e, w, r
}

// TestReadWhileABlockIsStoredAgain: a reader looks a dirty block up, and
// before it reads the file the writer stores the block again, which
// deletes the one the reader found. The read must follow the record to
// the new block, not report a lost block. Without the check in readLocal
// the read failed with EIO and logged "block of data not yet uploaded is
// missing".
func TestReadWhileABlockIsStoredAgain(t *testing.T) {
	e, w, r := oneBlockWriterAndReader(t)
	bs := int(e.opt.BlockSize)
	newer := bytes.Repeat([]byte{'b'}, bs)
	var once sync.Once
	fired := false
	testHookBlockLookedUp = func(blocks.ID) {
		once.Do(func() {
			fired = true
			if _, err := w.Write(ctx, newer, 0); err != nil {
				t.Error(err)
			}
			if err := w.Flush(ctx); err != nil {
				t.Error(err)
			}
			// The old block's file goes at the sync after the commit.
			if err := e.c.blocks.Sync(); err != nil {
				t.Error(err)
			}
		})
	}
	t.Cleanup(func() { testHookBlockLookedUp = nil })
	// The read path a block takes when no verified descriptor of it is
	// at hand (after a restart, or once the descriptor was dropped).
	data, release, err := e.c.readBlock(ctx, r, 0)
	testHookBlockLookedUp = nil
	if !fired {
		t.Fatal("the read never looked the block up in the index")
	}
	if err != nil {
		t.Fatalf("read during the store: %v", err)
	}
	if !bytes.Equal(data, newer) {
		t.Fatal("read during the store: not the new content")
	}
	release()
}

// blockIDs returns the IDs of ino's committed blocks, in order.
func (e *env) blockIDs(ino uint64) []blocks.ID {
	e.t.Helper()
	rec, err := e.c.loadInode(ino)
	if err != nil {
		e.t.Fatal(err)
	}
	var ids []blocks.ID
	for idx := int64(0); idx*e.opt.BlockSize < rec.Size; idx++ {
		ids = append(ids, e.c.sourceOf(rec, idx).id)
	}
	return ids
}

// TestAppendToAStoredBlock: appending to a file closed before adds the
// new bytes to its committed tail block in place (same block, same file),
// and leaves the committed bytes readable under the committed checksum
// until the new record commits, and after a failed commit. A change
// inside the committed bytes (a write before the end, a truncate) stores
// the block whole under a new generation, and so does an encrypted cache.
func TestAppendToAStoredBlock(t *testing.T) {
	for _, encrypted := range []bool{false, true} {
		t.Run(fmt.Sprintf("encrypted=%v", encrypted), func(t *testing.T) {
			e := newEnv(t, func(o *Options) {
				o.WriteBackDelay = time.Hour
				if encrypted {
					o.EncryptionKey = bytes.Repeat([]byte{7}, 32)
				}
			})
			want := randBytes(70 << 10) // a full block and a tail of 6 KiB
			e.write("log", 0, want)
			ino := e.mustLookup("log").Ino
			before := e.blockIDs(ino)
			line := []byte("one more line\n")

			h := e.openW("log")
			if _, err := h.Write(ctx, line, int64(len(want))); err != nil {
				t.Fatal(err)
			}
			// The write buffer holds only the new bytes; a read of the
			// block through it gets the stored ones too.
			if got := e.read("log"); !bytes.Equal(got, append(bytes.Clone(want), line...)) {
				t.Fatal("a read during the append differs")
			}
			ran := 0
			testHookFlushCommit = func() error {
				ran++
				if got, err := e.committedContent(ino); err != nil || !bytes.Equal(got, want) {
					t.Errorf("just before the commit, the committed file reads back wrong (err %v)", err)
				}
				return errors.New("injected commit failure")
			}
			t.Cleanup(func() { testHookFlushCommit = nil })
			err := h.Flush(ctx)
			testHookFlushCommit = nil
			if err == nil || ran == 0 {
				t.Fatalf("flush with a failing commit: %v (hook ran %d times)", err, ran)
			}
			if got, err := e.committedContent(ino); err != nil || !bytes.Equal(got, want) {
				t.Fatalf("after the failed commit, the committed file reads back wrong (err %v)", err)
			}
			e.close(h)
			want = append(want, line...)
			if got, err := e.committedContent(ino); err != nil || !bytes.Equal(got, want) {
				t.Fatalf("after the append, the committed file reads back wrong (err %v)", err)
			}
			after := e.blockIDs(ino)
			if inPlace := after[1] == before[1]; inPlace == encrypted {
				t.Fatalf("tail block %v before the append, %v after: in place %v, encrypted %v", before[1], after[1], inPlace, encrypted)
			}
			if after[0] != before[0] {
				t.Fatal("the full block was stored again")
			}
			if err := e.c.blocks.Sync(); err != nil {
				t.Fatal(err)
			}
			if n := e.blockFiles(ino); n != 2 {
				t.Fatalf("%d block files for a file of two blocks", n)
			}

			// Appends and a close, many times: each adds to the block.
			for i := range 20 {
				l := []byte(fmt.Sprintf("line %d\n", i))
				e.write("log", int64(len(want)), l)
				want = append(want, l...)
			}
			// A write inside the committed bytes and an append, in one
			// open, in either order: the block is stored whole, under a
			// new generation.
			for _, innerFirst := range []bool{true, false} {
				prev := e.blockIDs(ino)[1]
				inner, tail := int64(len(want)-3), int64(len(want))
				h = e.openW("log")
				if innerFirst {
					if _, err := h.Write(ctx, []byte("XY"), inner); err != nil {
						t.Fatal(err)
					}
				}
				if _, err := h.Write(ctx, []byte("tail\n"), tail); err != nil {
					t.Fatal(err)
				}
				if !innerFirst {
					if _, err := h.Write(ctx, []byte("XY"), inner); err != nil {
						t.Fatal(err)
					}
				}
				e.close(h)
				copy(want[inner:], "XY")
				want = append(want, "tail\n"...)
				if got := e.blockIDs(ino)[1]; got == prev {
					t.Fatalf("a block changed before its end was appended to in place (inner write first %v)", innerFirst)
				}
				if got, err := e.committedContent(ino); err != nil || !bytes.Equal(got, want) {
					t.Fatalf("content differs after a write inside the block (inner write first %v, err %v)", innerFirst, err)
				}
			}
			// A truncate into the block, then an append.
			if err := e.c.Truncate(ctx, ino, int64(len(want)-10)); err != nil {
				t.Fatal(err)
			}
			want = want[:len(want)-10]
			e.write("log", int64(len(want)), []byte("after truncate\n"))
			want = append(want, "after truncate\n"...)
			for _, check := range []func() ([]byte, error){
				func() ([]byte, error) { return e.committedContent(ino) },
				func() ([]byte, error) { return e.read("log"), nil },
			} {
				if got, err := check(); err != nil || !bytes.Equal(got, want) {
					t.Fatalf("content differs at the end (err %v)", err)
				}
			}
			if err := e.c.blocks.Sync(); err != nil {
				t.Fatal(err)
			}
			if n := e.blockFiles(ino); n != 2 {
				t.Fatalf("%d block files for a file of two blocks", n)
			}
			e.drain()
			if got := e.object("log"); !bytes.Equal(got, want) {
				t.Fatal("uploaded content differs")
			}
			e.reopen()
			if got := e.read("log"); !bytes.Equal(got, want) {
				t.Fatal("content differs after a remount")
			}
		})
	}
}

// TestReaderNotStarvedByRewrites: a writer stores the block again between
// every index lookup of a reader and its read (found by review). The
// reader must not run out of attempts and fail with ESTALE: under the
// inode's lock it reads the block the record names.
func TestReaderNotStarvedByRewrites(t *testing.T) {
	e, w, r := oneBlockWriterAndReader(t)
	n, inHook := 0, false
	var last byte
	testHookBlockLookedUp = func(blocks.ID) {
		if inHook {
			return // the writer's own lookup
		}
		inHook = true
		defer func() { inHook = false }()
		n++
		last = byte('b' + n%20)
		if _, err := w.Write(ctx, []byte{last}, 5); err != nil { // inside the block: a new ID
			t.Error(err)
		}
		if err := w.Flush(ctx); err != nil {
			t.Error(err)
		}
		if err := e.c.blocks.Sync(); err != nil { // the old block's file goes
			t.Error(err)
		}
	}
	t.Cleanup(func() { testHookBlockLookedUp = nil })
	data, release, err := e.c.readBlock(ctx, r, 0)
	testHookBlockLookedUp = nil
	if err != nil {
		t.Fatalf("read after %d rewrites: %v", n, err)
	}
	if n == 0 || data[5] != last || data[0] != 'a' {
		t.Fatalf("read %q at 5 after %d rewrites, want the last one %q", data[5], n, last)
	}
	release()
}

// TestFailedTruncateThenAppend (from review): a truncate into a stored
// block whose commit fails keeps its write buffer, with the bytes past the
// cut zeroed; a later write past the old end must not be taken for an
// append in place, which would leave the cut bytes on disk.
func TestFailedTruncateThenAppend(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.WriteBackDelay = time.Hour })
	want := randBytes(70 << 10)
	e.write("f", 0, want)
	ino := e.mustLookup("f").Ino
	h := e.openW("f")
	testHookFlushCommit = func() error { return errors.New("injected commit failure") }
	t.Cleanup(func() { testHookFlushCommit = nil })
	if err := e.c.Truncate(ctx, ino, 65536+1000); err == nil {
		t.Fatal("truncate did not fail")
	}
	testHookFlushCommit = nil
	want = want[:65536+1000]
	if _, err := h.Write(ctx, []byte("X"), 65536+7000); err != nil {
		t.Fatal(err)
	}
	want = append(want, make([]byte, 6000)...)
	want = append(want, 'X')
	e.close(h)
	if got, err := e.committedContent(ino); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("committed content differs (err %v)", err)
	}
}

// rewriteThenCut stores block 1 of a two-block file again (its first
// stored block is retired until the next sync) and returns the writer.
func rewriteThenCut(t *testing.T, e *env) (h *Handle, ino uint64, want []byte) {
	t.Helper()
	bs := int(e.opt.BlockSize)
	want = randBytes(2 * bs)
	e.write("f", 0, want)
	ino = e.mustLookup("f").Ino
	if err := e.c.blocks.Sync(); err != nil {
		t.Fatal(err)
	}
	h = e.openW("f")
	if _, err := h.Write(ctx, []byte("Z"), int64(bs+5)); err != nil {
		t.Fatal(err)
	}
	if err := h.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	return h, ino, want
}

// cutAndWriteAgain truncates the file to one block and writes block 1
// anew: its source is a hole, so nothing is replaced, and the ID of the
// open generation's block 1 (retired) must not be used again.
func cutAndWriteAgain(t *testing.T, e *env, h *Handle, ino uint64, want []byte) []byte {
	t.Helper()
	bs := int(e.opt.BlockSize)
	if err := e.c.Truncate(ctx, ino, int64(bs)); err != nil {
		t.Error(err)
		return nil
	}
	tail := randBytes(100)
	if _, err := h.Write(ctx, tail, int64(bs)); err != nil {
		t.Error(err)
		return nil
	}
	if err := h.Flush(ctx); err != nil {
		t.Error(err)
		return nil
	}
	return append(bytes.Clone(want[:bs]), tail...)
}

// TestRetiredIDNotWrittenAgain: a block written under the ID of a block
// retired (replaced, its file kept until a sync) would be deleted by that
// sync. Without the check (blocks.Taken), the file read back missing.
func TestRetiredIDNotWrittenAgain(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.WriteBackDelay = time.Hour })
	h, ino, want := rewriteThenCut(t, e)
	want = cutAndWriteAgain(t, e, h, ino, want)
	if err := e.c.blocks.Sync(); err != nil {
		t.Fatal(err)
	}
	if got, err := e.committedContent(ino); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("after the sync, the committed file reads back wrong (err %v)", err)
	}
	e.close(h)
}

// TestRetiredIDNotWrittenAgainDuringSync (from review): the same, with the
// new block written while the sync that removes the retired file runs.
// The sync used to take the retired set out before removing the files, so
// the ID looked free in between.
func TestRetiredIDNotWrittenAgainDuringSync(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.WriteBackDelay = time.Hour })
	h, ino, want := rewriteThenCut(t, e)
	var once sync.Once
	orig := blocks.FsyncPath
	blocks.FsyncPath = func(p string) error {
		once.Do(func() { want = cutAndWriteAgain(t, e, h, ino, want) })
		return orig(p)
	}
	t.Cleanup(func() { blocks.FsyncPath = orig })
	if err := e.c.blocks.Sync(); err != nil {
		t.Fatal(err)
	}
	blocks.FsyncPath = orig
	if want == nil {
		t.Fatal("the writer failed during the sync")
	}
	if got, err := e.committedContent(ino); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("after the sync, the committed file reads back wrong (err %v)", err)
	}
	e.close(h)
}

// blockPath is where block id's file is.
func (e *env) blockPath(id blocks.ID) string {
	e.t.Helper()
	name := fmt.Sprintf("%016x-%016x-%x", id.Ino, id.Gen, id.Idx)
	var found string
	err := filepath.WalkDir(filepath.Join(e.dir, "blocks"), func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Name() == name {
			found = p
		}
		return err
	})
	if err != nil || found == "" {
		e.t.Fatalf("block file %s: not found (%v)", name, err)
	}
	return found
}

// closeUnclean closes the cache as a crash or a power cut leaves it for
// the next start: without the mark of a clean close.
func (e *env) closeUnclean() {
	e.t.Helper()
	if err := e.c.Close(); err != nil {
		e.t.Fatal(err)
	}
	e.c = nil
	db, err := openDB(filepath.Join(e.dir, "meta"), e.opt.EncryptionKey, e.opt.Logger)
	if err != nil {
		e.t.Fatal(err)
	}
	err = db.Update(func(txn *badger.Txn) error { return txn.Delete(cleanClose) })
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		e.t.Fatal(err)
	}
}

// syncEpoch returns the number of syncs begun as the cache's disk records
// it (see blocks.Meta.Epoch); setSyncEpoch puts it back after a close,
// whose sync counts too: the disk as a power cut after that earlier sync
// leaves it, with the index entries written since but none of the syncs.
func (e *env) syncEpoch() []byte {
	e.t.Helper()
	var v []byte
	if err := e.c.db.View(func(txn *badger.Txn) error {
		it, err := txn.Get([]byte{blocks.KeyPrefix, 'e'})
		if err != nil {
			return err
		}
		v, err = it.ValueCopy(nil)
		return err
	}); err != nil {
		e.t.Fatal(err)
	}
	return v
}

func (e *env) setSyncEpoch(v []byte) {
	e.t.Helper()
	db, err := openDB(filepath.Join(e.dir, "meta"), e.opt.EncryptionKey, e.opt.Logger)
	if err != nil {
		e.t.Fatal(err)
	}
	err = db.Update(func(txn *badger.Txn) error { return txn.Set([]byte{blocks.KeyPrefix, 'e'}, v) })
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		e.t.Fatal(err)
	}
}

// powerCutAfter closes the cache as a power cut after the sync whose
// epoch is given (syncEpoch) leaves its disk: the index entries written
// since are there, but not that any later sync ran, and the files of the
// blocks keep (replaced blocks, retired until a sync) are as they were
// before the close, whose own sync deletes them. The caller then takes
// away what the power cut kept from the disk.
func (e *env) powerCutAfter(epoch []byte, keep ...blocks.ID) {
	e.t.Helper()
	kept := make(map[string][]byte)
	for _, id := range keep {
		p := e.blockPath(id)
		b, err := os.ReadFile(p)
		if err != nil {
			e.t.Fatalf("block %v before the power cut: %v", id, err)
		}
		kept[p] = b
	}
	e.closeUnclean()
	e.setSyncEpoch(epoch)
	for p, b := range kept {
		if err := os.WriteFile(p, b, 0o600); err != nil { // no sync deleted it
			e.t.Fatal(err)
		}
	}
}

// openCrashingWhileRecordingCuts starts the cache with a crash injected
// where it records what recovery cut (applyCuts): the start must fail,
// and leave the cache for the next one.
func (e *env) openCrashingWhileRecordingCuts() {
	e.t.Helper()
	testHookApplyCuts = func() error { return errors.New("injected crash") }
	defer func() { testHookApplyCuts = nil }()
	if c, err := Open(ctx, e.opt); err == nil {
		c.Close()
		e.t.Fatal("open with a crash while recording cuts succeeded")
	}
}

// TestPowerCutDuringAppend: lines appended in place to a file's stored
// tail block, after a sync made the file durable, and then a power cut
// before the next sync. Badger's log and the block file reach the disk
// on their own schedules, so the disk may hold the index entry of the
// appended block without the appended bytes (the file cut short, or
// extended with zeros). The next start must keep what the sync made
// durable, cut the file back to it, and upload it: not lose the whole
// block, with bytes acknowledged long before, to a checksum failure.
func TestPowerCutDuringAppend(t *testing.T) {
	for _, lost := range []string{"cut short", "zeros"} {
		t.Run(lost, func(t *testing.T) {
			e := newEnv(t, func(o *Options) { o.WriteBackDelay, o.CommitInterval = time.Hour, time.Hour })
			e.logs.allow("did not reach the disk")
			durable := randBytes(70 << 10) // a full block and a tail of 6 KiB
			e.write("log", 0, durable)
			ino := e.mustLookup("log").Ino
			if err := e.c.blocks.Sync(); err != nil { // the group commit
				t.Fatal(err)
			}
			tail := e.blockIDs(ino)[1]
			all := bytes.Clone(durable)
			for i := range 3 { // three closes within the commit interval
				l := []byte(fmt.Sprintf("line %d\n", i))
				e.write("log", int64(len(all)), l)
				all = append(all, l...)
			}
			if got := e.blockIDs(ino)[1]; got != tail {
				t.Fatalf("tail block %v became %v: not appended in place", tail, got)
			}
			if got := e.read("log"); !bytes.Equal(got, all) {
				t.Fatal("the appended file reads back wrong")
			}
			e.closeUnclean() // (it syncs; what the power cut left is made below)
			p := e.blockPath(tail)
			keep := int64(len(durable) - 64<<10)
			switch lost {
			case "cut short":
				if err := os.Truncate(p, keep); err != nil {
					t.Fatal(err)
				}
			case "zeros":
				f, err := os.OpenFile(p, os.O_WRONLY, 0)
				if err != nil {
					t.Fatal(err)
				}
				_, err = f.WriteAt(make([]byte, len(all)-len(durable)), keep)
				if cerr := f.Close(); err == nil {
					err = cerr
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			e.open()
			if a := e.mustLookup("log"); a.Size != int64(len(durable)) {
				t.Fatalf("size %d after the power cut, want %d (what was durable)", a.Size, len(durable))
			}
			if got := e.read("log"); !bytes.Equal(got, durable) {
				t.Fatal("after the power cut the file does not read back what was durable")
			}
			if !e.logs.has("did not reach the disk") {
				t.Error("the cut was not logged")
			}
			e.drain()
			if got := e.object("log"); !bytes.Equal(got, durable) {
				t.Fatalf("uploaded %d bytes, want the %d that were durable", len(got), len(durable))
			}
			// The next appends go on from there.
			e.write("log", int64(len(durable)), []byte("after\n"))
			if got := e.read("log"); !bytes.Equal(got, append(durable, "after\n"...)) {
				t.Fatal("an append after the recovery reads back wrong")
			}
		})
	}
}

// TestPowerCutLosesOnlyTheInterval: blocks written whole within the last
// commit interval whose files a power cut kept from the disk, while their
// records and index entries got there. The next start must lose just
// those bytes, and keep everything else readable and uploadable: a new
// file comes back empty, a new block at the end of a file goes, a block
// that filled a hole is a hole again, and a block rewritten inside a file
// whose earlier content was durable gets that content back from the file
// of the block it replaced, which stays until a sync. If that file is gone
// too (the disk, not a power cut), the file is reported and not uploaded,
// so that nothing replaces good data in S3.
func TestPowerCutLosesOnlyTheInterval(t *testing.T) {
	for _, encrypted := range []bool{false, true} {
		t.Run(fmt.Sprintf("encrypted=%v", encrypted), func(t *testing.T) {
			e := newEnv(t, func(o *Options) {
				o.WriteBackDelay, o.CommitInterval = time.Hour, time.Hour
				if encrypted {
					o.EncryptionKey = bytes.Repeat([]byte{7}, 32)
				}
			})
			e.logs.allow("did not reach the disk")
			e.logs.allow("is damaged on the cache disk")
			e.logs.allow("block of data not yet uploaded is unreadable")
			e.logs.allow("upload failed")
			e.logs.allow("the block a lost block replaced is not on the cache disk either")
			bs := int(e.opt.BlockSize)
			grown := randBytes(3 * bs)
			e.write("grown", 0, grown)
			sparse := randBytes(3 * bs)
			e.write("sparse", 0, sparse[:bs])
			e.write("sparse", int64(2*bs), sparse[2*bs:])
			clear(sparse[bs : 2*bs])
			inside := randBytes(3 * bs)
			e.write("inside", 0, inside)
			gone := randBytes(3 * bs)
			e.write("gone", 0, gone)
			if err := e.c.blocks.Sync(); err != nil { // the group commit
				t.Fatal(err)
			}
			epoch := e.syncEpoch()
			replaced := map[string]blocks.ID{
				"inside": e.blockIDs(e.mustLookup("inside").Ino)[1],
				"gone":   e.blockIDs(e.mustLookup("gone").Ino)[1],
			}
			// Within the next interval:
			e.write("new", 0, randBytes(10<<10))
			e.write("grown", int64(3*bs), []byte("a new block\n"))
			e.write("sparse", int64(bs+5), []byte("into the hole"))
			e.write("inside", int64(bs+5), []byte("rewritten"))
			e.write("gone", int64(bs+5), []byte("rewritten"))
			lose := []blocks.ID{
				e.blockIDs(e.mustLookup("new").Ino)[0],
				e.blockIDs(e.mustLookup("grown").Ino)[3],
				e.blockIDs(e.mustLookup("sparse").Ino)[1],
				e.blockIDs(e.mustLookup("inside").Ino)[1],
				e.blockIDs(e.mustLookup("gone").Ino)[1],
			}
			// The replaced blocks' files wait for the next sync, which
			// a power cut keeps from happening: inside's is there
			// after it, gone's is lost as well.
			if _, err := os.Stat(e.blockPath(replaced["gone"])); err != nil {
				t.Fatalf("gone: the replaced block's file is gone before any sync: %v", err)
			}
			e.powerCutAfter(epoch, replaced["inside"])
			for i, id := range lose {
				var err error
				if i%2 == 0 {
					err = os.Remove(e.blockPath(id))
				} else {
					err = os.Truncate(e.blockPath(id), 0) // renamed, never written back
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			e.open()
			want := []struct {
				name string
				want []byte
			}{{"new", nil}, {"grown", grown}, {"sparse", sparse}, {"inside", inside}}
			for _, f := range want {
				if a := e.mustLookup(f.name); a.Size != int64(len(f.want)) {
					t.Fatalf("%s: size %d after the power cut, want %d", f.name, a.Size, len(f.want))
				}
				if got := e.read(f.name); !bytes.Equal(got, f.want) {
					t.Fatalf("%s reads back wrong after the power cut", f.name)
				}
			}
			if !e.logs.has("is damaged on the cache disk") {
				t.Error("the damaged file was not reported")
			}
			a := e.mustLookup("gone")
			h, _, err := e.c.Open(ctx, a.Ino, false, false)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := h.Read(ctx, make([]byte, 100), int64(bs)); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("read of the damaged block: %v, want ErrCorrupt", err)
			}
			if err := h.Release(ctx); err != nil {
				t.Fatal(err)
			}
			dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			left, err := e.c.Drain(dctx)
			if err != nil || len(left) != 1 || left[0].Path != "gone" || !errors.Is(left[0].Err, ErrCorrupt) {
				t.Fatalf("drain: %v, left %+v; want gone left, failed with ErrCorrupt", err, left)
			}
			for _, f := range want {
				if got := e.object(f.name); !bytes.Equal(got, f.want) {
					t.Fatalf("%s: uploaded %d bytes, not what was left", f.name, len(got))
				}
			}
			if _, _, ok := e.store.Object("gone"); ok {
				t.Fatal("gone was uploaded with a damaged block")
			}
		})
	}
}

// TestCrashWhileRecordingCuts: a crash after Recover found a lost block
// but before the file's record was changed to agree must leave the next
// start to find it again, not a record naming a block the index lost.
// (From a review: the index entry used to go first, in its own commit.)
func TestCrashWhileRecordingCuts(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.WriteBackDelay, o.CommitInterval = time.Hour, time.Hour })
	e.logs.allow("did not reach the disk")
	e.write("f", 0, randBytes(10<<10))
	id := e.blockIDs(e.mustLookup("f").Ino)[0]
	e.closeUnclean()
	if err := os.Remove(e.blockPath(id)); err != nil {
		t.Fatal(err)
	}
	e.openCrashingWhileRecordingCuts()
	e.open()
	if a := e.mustLookup("f"); a.Size != 0 {
		t.Fatalf("size %d, want 0: the lost block of a new file", a.Size)
	}
	if got := e.read("f"); len(got) != 0 {
		t.Fatalf("read %d bytes", len(got))
	}
}

// TestCleanCloseChecksNothing: after a clean close the next start reads
// no block files (everything was synced); after an unclean one it checks
// the dirty ones.
func TestCleanCloseChecksNothing(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.WriteBackDelay, o.CommitInterval = time.Hour, time.Hour })
	e.logs.allow("did not reach the disk")
	e.logs.allow("block of data not yet uploaded is unreadable")
	e.logs.allow("upload failed")
	e.store.SetHook(func(op, key string) error { // keep the file dirty: each start uploads at once
		if op == "Put" {
			return &s3backend.Error{Op: op, Key: key, Status: 503, Kind: s3backend.ErrUnavailable, Cause: errors.New("down")}
		}
		return nil
	})
	e.write("f", 0, randBytes(10<<10))
	id := e.blockIDs(e.mustLookup("f").Ino)[0]
	e.reopen() // clean
	e.c.Close()
	e.c = nil
	// A block file damaged after a clean close is not a power cut's work:
	// it is not cut, and a read reports it.
	if err := os.Truncate(e.blockPath(id), 5); err != nil {
		t.Fatal(err)
	}
	e.open()
	if a := e.mustLookup("f"); a.Size != 10<<10 {
		t.Fatalf("size %d after a clean close, want it unchanged", a.Size)
	}
	e.closeUnclean()
	e.open()
	if a := e.mustLookup("f"); a.Size != 0 {
		t.Fatalf("size %d after an unclean close, want the lost block gone", a.Size)
	}
}

// TestGenerationsStayUniqueWhenTheClockGoesBack: generations start from
// the wall clock at each start, which may be behind the last run's (an
// NTP step, a restored VM, a cache disk moved to another host, or a
// restart within one tick). A generation handed out again named a new
// block like an old one: the rewrite of a stored block overwrote it and
// then deleted it as replaced, and the file lost a block.
func TestGenerationsStayUniqueWhenTheClockGoesBack(t *testing.T) {
	for _, back := range []time.Duration{0, time.Hour} {
		t.Run(fmt.Sprint(back), func(t *testing.T) {
			e := newEnv(t, func(o *Options) { o.WriteBackDelay = time.Hour })
			var down atomic.Bool
			down.Store(true)
			e.store.SetHook(func(op, key string) error { // keep everything dirty
				if op == "Put" && down.Load() {
					return &s3backend.Error{Op: op, Key: key, Status: 503, Kind: s3backend.ErrUnavailable, Cause: errors.New("down")}
				}
				return nil
			})
			e.logs.allow("upload failed")
			bs := int(e.opt.BlockSize)
			want := randBytes(2 * bs)
			e.write("f", 0, want)
			e.clock.ns.Add(-int64(back)) // the clock stays in its tick, or goes back
			e.reopen()
			e.write("f", int64(bs+10), []byte("inside"))
			copy(want[bs+10:], "inside")
			e.reopen()
			if got := e.read("f"); !bytes.Equal(got, want) {
				t.Fatal("the file reads back wrong after a rewrite")
			}
			down.Store(false)
			e.drain()
			if got := e.object("f"); !bytes.Equal(got, want) {
				t.Fatal("the upload differs")
			}
		})
	}
}

// TestWriteWhileClosingLeavesNoCleanMark: a block written after Close's
// last sync (a lazily detached mount still served a write) is not known
// durable, so Close must not mark the cache closed cleanly: the next
// start checks the blocks not yet uploaded.
func TestWriteWhileClosingLeavesNoCleanMark(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.WriteBackDelay, o.CommitInterval = time.Hour, time.Hour })
	e.logs.allow("did not reach the disk")
	e.logs.allow("written to while closing")
	e.write("f", 0, randBytes(10<<10))
	id := e.blockIDs(e.mustLookup("f").Ino)[0]
	testHookBeforeCleanMark = func(c *Cache) {
		c.blocks.Added(blocks.ID{Ino: id.Ino, Gen: id.Gen, Idx: 99}, 10, true) // stands for the late write
	}
	t.Cleanup(func() { testHookBeforeCleanMark = nil })
	if err := e.c.Close(); err != nil {
		t.Fatal(err)
	}
	testHookBeforeCleanMark = nil
	e.c = nil
	if err := os.Remove(e.blockPath(id)); err != nil { // as a power cut would
		t.Fatal(err)
	}
	e.open()
	if a := e.mustLookup("f"); a.Size != 0 {
		t.Fatalf("size %d: the start after an unclean close did not check the blocks", a.Size)
	}
}

// TestFreshPlace: which places Recover may make a hole again if a power
// cut loses the block written there. Never one whose earlier block may be
// durable, or in S3: a block of a sealed generation (its upload may have
// landed) or one a sync has made durable. (From a review.)
func TestFreshPlace(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.WriteBackDelay, o.CommitInterval = time.Hour, time.Hour })
	e.write("f", 0, randBytes(10<<10))
	id := e.blockIDs(e.mustLookup("f").Ino)[0]
	m, found, err := e.c.blocks.Lookup(id)
	if err != nil || !found || !m.Fresh {
		t.Fatalf("the first block of a new file: %+v %v %v, want Fresh", m, found, err)
	}
	for _, c := range []struct {
		what string
		src  blockSource
		gen  uint64
		want bool
	}{
		{"a hole", blockSource{hole: true}, id.Gen, true},
		{"a fresh unsynced block of the open generation", blockSource{id: id, dirty: true}, id.Gen, true},
		{"a fresh unsynced block of a sealed generation", blockSource{id: id, dirty: true}, id.Gen + 1, false},
		{"a clean block", blockSource{id: id}, id.Gen, false},
	} {
		got, err := e.c.freshPlace(c.src, &writeBuf{gen: c.gen})
		if err != nil || got != c.want {
			t.Errorf("%s: fresh %v (%v), want %v", c.what, got, err, c.want)
		}
	}
	if err := e.c.blocks.Sync(); err != nil {
		t.Fatal(err)
	}
	if got, err := e.c.freshPlace(blockSource{id: id, dirty: true}, &writeBuf{gen: id.Gen}); err != nil || got {
		t.Errorf("a block a sync made durable: fresh %v (%v), want false", got, err)
	}
}

// TestSequenceAboveTheLastRunWhenTheClockGoesBack: every sequence number
// a run hands out (generations, SyncedSeq, fill epochs, listing starts) is
// above every one of the run before, also when the wall clock is behind
// it at the start. (From a review: only block generations were covered.)
func TestSequenceAboveTheLastRunWhenTheClockGoesBack(t *testing.T) {
	e := newEnv(t, nil)
	e.write("f", 0, []byte("data"))
	e.drain() // SyncedSeq: handed out after every generation of the file
	last := e.c.ns.seq.Load()
	e.clock.ns.Add(-int64(2 * time.Hour))
	e.reopen()
	if n := e.c.nextSeq(); n <= last {
		t.Fatalf("after a start with the clock 2 h back, nextSeq %d is not above the last run's %d", n, last)
	}
}

// TestWriteAfterCloseFails: a write that reaches the cache once Close has
// begun (a lazily detached mount) would sit in a write buffer that nothing
// stores any more; it must fail, not succeed and vanish. (From a review.)
func TestWriteAfterCloseFails(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.WriteBackDelay = time.Hour })
	h := e.openW("f")
	if err := e.c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Write(ctx, []byte("late"), 0); !errors.Is(err, ErrClosed) {
		t.Fatalf("write after Close: %v, want ErrClosed", err)
	}
	e.c = nil
}

// TestCacheFormatVersion: a cache from a release that wrote only 8-byte
// block index entries (v1) opens and is marked v2, which such a release
// refuses rather than delete blocks whose entries it cannot read; a cache
// of an unknown format is refused with a clear message.
func TestCacheFormatVersion(t *testing.T) {
	e := newEnv(t, nil)
	e.write("f", 0, []byte("data"))
	setSuper := func(v string) {
		t.Helper()
		db, err := openDB(filepath.Join(e.dir, "meta"), e.opt.EncryptionKey, e.opt.Logger)
		if err != nil {
			t.Fatal(err)
		}
		err = db.Update(func(txn *badger.Txn) error { return txn.Set([]byte{pSuper}, []byte(v)) })
		if cerr := db.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := e.c.Close(); err != nil {
		t.Fatal(err)
	}
	e.c = nil
	for _, v := range []string{"v1", "v2"} {
		setSuper(fmt.Sprintf("keelfs-cache %s block=%d", v, e.opt.BlockSize))
		e.open()
		if got := e.read("f"); string(got) != "data" {
			t.Fatalf("a %s cache reads %q", v, got)
		}
		var super string
		if err := e.c.db.View(func(txn *badger.Txn) error {
			it, err := txn.Get([]byte{pSuper})
			if err != nil {
				return err
			}
			return it.Value(func(v []byte) error { super = string(v); return nil })
		}); err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(super, "keelfs-cache v3 ") {
			t.Fatalf("a %s cache opened is marked %q, want v3", v, super)
		}
		if err := e.c.Close(); err != nil {
			t.Fatal(err)
		}
		e.c = nil
	}
	setSuper(fmt.Sprintf("keelfs-cache v4 block=%d", e.opt.BlockSize))
	if c, err := Open(ctx, e.opt); err == nil {
		c.Close()
		t.Fatal("a cache of an unknown format opened")
	} else if !strings.Contains(err.Error(), "newer keelfs") {
		t.Fatalf("refusing an unknown format: %v", err)
	}
}

// waitEvicted waits until the cache has evicted a block: a test's reader
// needed the room. The reader gets each block before it is stored, so the
// last ones may still be on their way when its read returns.
func (e *env) waitEvicted() {
	e.t.Helper()
	// A fetch stores its blocks after the reader has them, and stays in
	// flight until it has: once none is, every block read was offered to
	// the cache. (A deadline on the evictions instead failed once in a
	// loaded make test: the reads were done, their stores were not.)
	f := e.c.fetchState()
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(10 * time.Millisecond) {
		f.mu.Lock()
		n := len(f.inflight)
		f.mu.Unlock()
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%d block fetches still in flight a minute after the read", n)
		}
	}
	if e.c.blocks.Stats().Evictions == 0 {
		clean, dirty := e.c.blocks.Usage()
		e.t.Fatalf("reading evicted nothing (clean %d, dirty %d bytes of %d): the test needs a cache short of room", clean, dirty, e.opt.CacheSize)
	}
}

// wantUploaded drains the cache and checks that S3 holds want as key.
func (e *env) wantUploaded(key string, want []byte) {
	e.t.Helper()
	e.drain()
	if got := e.object(key); !bytes.Equal(got, want) {
		e.t.Fatalf("%s: S3 holds %d bytes, not the %d wanted", key, len(got), len(want))
	}
}

// durableMeta keeps, after each sync of the cache's disk, a copy of the
// metadata store as it is then: what a power cut would leave of it.
// freeze stops the copies (before a Close, which syncs too); powerCut
// puts the last copy in place of the store of a closed cache.
type durableMeta struct {
	e      *env
	snap   string
	frozen atomic.Bool
	taken  atomic.Int64
}

func newDurableMeta(e *env) *durableMeta {
	d := &durableMeta{e: e, snap: filepath.Join(e.dir, "meta.durable")}
	e.c.blocks.SetOnSynced(d.take)
	return d
}

func (d *durableMeta) take() {
	if d.frozen.Load() {
		return
	}
	if err := os.RemoveAll(d.snap); err != nil {
		d.e.t.Error(err)
		return
	}
	if err := os.CopyFS(d.snap, os.DirFS(filepath.Join(d.e.dir, "meta"))); err != nil {
		d.e.t.Errorf("copy the metadata store: %v", err)
		return
	}
	d.taken.Add(1)
}

func (d *durableMeta) powerCut() {
	t := d.e.t
	t.Helper()
	d.frozen.Store(true)
	if d.taken.Load() == 0 {
		t.Fatal("no sync was taken")
	}
	d.e.closeUnclean()
	meta := filepath.Join(d.e.dir, "meta")
	if err := os.RemoveAll(meta); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(d.snap, meta); err != nil {
		t.Fatal(err)
	}
}

// TestPowerCutAfterUpload: a file uploaded, and then a power cut before
// the group commit made that known to the disk, so that the next start
// finds the file as it was before the upload. S3 has the file right, and
// the next start must leave it so: upload the same content again as its
// own (not as another writer's, which makes a conflict copy), with every
// block still there, also when the cache needed room after the upload
// (the upload made the blocks clean, and clean blocks are evicted).
func TestPowerCutAfterUpload(t *testing.T) {
	for _, evict := range []bool{false, true} {
		t.Run(fmt.Sprintf("evict=%v", evict), func(t *testing.T) {
			e := newEnv(t, func(o *Options) {
				o.WriteBackDelay, o.CommitInterval = time.Hour, time.Hour
				o.CacheSize = 2 << 20
			})
			d := newDurableMeta(e)
			want := randBytes(3*64<<10 + 100)
			e.write("f", 0, want)
			if err := e.c.blocks.Sync(); err != nil { // the group commit
				t.Fatal(err)
			}
			e.wantUploaded("f", want)
			if evict {
				// Room for g takes f's clean blocks (2 MiB of cache).
				e.write("g", 0, randBytes(2000<<10))
				if n := e.blockFiles(e.mustLookup("f").Ino); n != 0 {
					t.Fatalf("%d of f's blocks still cached: the test needs them evicted", n)
				}
			}
			d.powerCut()
			e.open()
			if got := e.read("f"); !bytes.Equal(got, want) {
				t.Fatalf("f reads back %d bytes after the power cut, want its %d", len(got), len(want))
			}
			e.wantUploaded("f", want)
			for _, k := range e.keys() {
				if strings.Contains(k, ".conflict-") {
					t.Fatalf("conflict copy %s of the file's own upload; bucket %v", k, e.keys())
				}
			}
		})
	}
}

// TestPowerCutDuringEncryptedAppend: with a cache key, a block cannot be
// appended to in place, so each close of a file appended to stores its
// tail block whole, under a new name. A power cut that keeps the last of
// those from the disk, while its entry got there, must bring back the
// tail as the last sync left it (each rewrite names the block that was
// durable, not the one before it, which no sync covered), and upload
// that: not leave a file that can be neither read nor uploaded.
func TestPowerCutDuringEncryptedAppend(t *testing.T) {
	e := newEnv(t, func(o *Options) {
		o.WriteBackDelay, o.CommitInterval = time.Hour, time.Hour
		o.EncryptionKey = bytes.Repeat([]byte{9}, 32)
	})
	e.logs.allow("did not reach the disk")
	durable := randBytes(70 << 10) // a full block and a tail of 6 KiB
	e.write("log", 0, durable)
	ino := e.mustLookup("log").Ino
	if err := e.c.blocks.Sync(); err != nil { // the group commit
		t.Fatal(err)
	}
	epoch := e.syncEpoch()
	tail := e.blockIDs(ino)[1]
	all := bytes.Clone(durable)
	for i := range 3 { // three closes within the commit interval
		l := []byte(fmt.Sprintf("line %d\n", i))
		e.write("log", int64(len(all)), l)
		all = append(all, l...)
	}
	last := e.blockIDs(ino)[1]
	if last == tail {
		t.Fatal("the tail block was appended to in place in an encrypted cache")
	}
	if got := e.read("log"); !bytes.Equal(got, all) {
		t.Fatal("the appended file reads back wrong")
	}
	lastPath := e.blockPath(last)
	// The power cut: the durable tail's file is still there (no sync
	// deleted it), the last one's bytes are not.
	e.powerCutAfter(epoch, tail)
	if err := os.Truncate(lastPath, 0); err != nil {
		t.Fatal(err)
	}
	e.open()
	if a := e.mustLookup("log"); a.Size != int64(len(durable)) {
		t.Fatalf("size %d after the power cut, want %d (what was durable)", a.Size, len(durable))
	}
	if got := e.read("log"); !bytes.Equal(got, durable) {
		t.Fatal("after the power cut the file does not read back what was durable")
	}
	if !e.logs.has("did not reach the disk") {
		t.Error("the loss was not logged")
	}
	e.wantUploaded("log", durable)
}

// TestSyncedRewriteIsNeverRolledBack: a block rewritten whole over a clean
// cached block, and made durable by a sync, that the disk damages later
// is reported as damaged: the clean block it replaced is still indexed and
// cached, but its bytes are older than what fsync acknowledged, and must
// not be put back and uploaded. (From a review.)
func TestSyncedRewriteIsNeverRolledBack(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.WriteBackDelay, o.CommitInterval = time.Hour, time.Hour })
	e.logs.allow("is damaged on the cache disk")
	e.logs.allow("block of data not yet uploaded is unreadable")
	e.logs.allow("upload failed")
	bs := int(e.opt.BlockSize)
	old := randBytes(3 * bs)
	e.write("f", 0, old)
	e.drain() // in S3; its blocks clean and cached
	ino := e.mustLookup("f").Ino
	prev := e.blockIDs(ino)[1]
	e.write("f", int64(bs+5), []byte("acknowledged by fsync"))
	if err := e.c.blocks.Sync(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(e.blockPath(prev)); err != nil {
		t.Fatalf("the test needs the replaced clean block cached: %v", err)
	}
	damaged := e.blockPath(e.blockIDs(ino)[1])
	e.closeUnclean()
	if err := os.Truncate(damaged, 100); err != nil { // the disk, after the sync
		t.Fatal(err)
	}
	e.open()
	if e.logs.has("holds what it held before the rewrite") {
		t.Fatal("a block a sync had made durable was rolled back to the one it replaced")
	}
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	left, err := e.c.Drain(dctx)
	if err != nil || len(left) != 1 || left[0].Path != "f" || !errors.Is(left[0].Err, ErrCorrupt) {
		t.Fatalf("drain: %v, left %+v; want f left, failed with ErrCorrupt", err, left)
	}
	if got := e.object("f"); !bytes.Equal(got, old) {
		t.Fatal("S3 no longer holds the version before the damaged rewrite")
	}
}

// TestRestoreSurvivesACrashDuringRecovery: a start that put back a
// replaced block's bytes (Cut.Restored) and crashed before it recorded
// that: the next start finds the old entry again and must restore again,
// so the replaced block's file must still be there. (From a review.)
func TestRestoreSurvivesACrashDuringRecovery(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.WriteBackDelay, o.CommitInterval = time.Hour, time.Hour })
	e.logs.allow("did not reach the disk")
	bs := int(e.opt.BlockSize)
	inside := randBytes(3 * bs)
	e.write("inside", 0, inside)
	if err := e.c.blocks.Sync(); err != nil {
		t.Fatal(err)
	}
	epoch := e.syncEpoch()
	ino := e.mustLookup("inside").Ino
	old := e.blockIDs(ino)[1]
	e.write("inside", int64(bs+5), []byte("rewritten"))
	lost := e.blockIDs(ino)[1]
	oldPath, lostPath := e.blockPath(old), e.blockPath(lost)
	e.powerCutAfter(epoch, old)
	if err := os.Truncate(lostPath, 0); err != nil {
		t.Fatal(err)
	}
	e.openCrashingWhileRecordingCuts()
	e.open()
	if got := e.read("inside"); !bytes.Equal(got, inside) {
		t.Fatal("the second start does not read back what was durable")
	}
	e.wantUploaded("inside", inside)
	e.reopen() // a sync has recorded the cut: the replaced block's file goes
	if _, err := os.Stat(oldPath); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the replaced block's file stays after the cut was recorded and synced: %v", err)
	}
}

// TestPowerCutAfterUploadOfAnEdit: as TestPowerCutAfterUpload, for a file
// partly edited: the record from before the upload reads the unchanged
// blocks from the version the edit started from, which S3 no longer has
// once the upload landed. A reader short of room must not evict them
// before a sync has made the upload known, or a power cut leaves a file
// that cannot be read while S3 does not take the re-upload. (From a
// review.)
func TestPowerCutAfterUploadOfAnEdit(t *testing.T) {
	// With fetchAhead the unchanged blocks are pinned during the edit
	// (Unpin holds them); without it (CompleteMax -1) they are plain
	// clean blocks (the landing holds them, HoldInode).
	for _, completeMax := range []int64{0, -1} {
		t.Run(fmt.Sprintf("CompleteMax=%d", completeMax), func(t *testing.T) {
			powerCutAfterUploadOfAnEdit(t, completeMax)
		})
	}
}

func powerCutAfterUploadOfAnEdit(t *testing.T, completeMax int64) {
	e := newEnv(t, func(o *Options) {
		o.WriteBackDelay, o.CommitInterval = time.Hour, time.Hour
		o.CacheSize = 2 << 20
		o.CompleteMax = completeMax
	})
	e.logs.allow("upload failed")
	e.logs.allow("s3 unavailable")
	d := newDurableMeta(e)
	bs := int(e.opt.BlockSize)
	want := randBytes(4 * bs)
	e.write("f", 0, want)
	e.drain()
	if err := e.c.blocks.Sync(); err != nil { // f's blocks clean, evictable
		t.Fatal(err)
	}
	copy(want[bs+5:], "edited")
	e.write("f", int64(bs+5), []byte("edited"))
	e.wantUploaded("f", want)
	// A reader needs room, and f's unchanged blocks are the oldest: no
	// sync has made the upload known, so they must not go.
	// Twice the cache: fetches that run at once each find room before
	// any of them has added its block (Reserve does not reserve), so a
	// read only just past the size may evict nothing.
	e.store.PutObject("h", randBytes(2*int(e.opt.CacheSize)), nil)
	e.read("h")
	e.waitEvicted()
	d.powerCut()
	e.store.SetHook(func(op, key string) error {
		if op == "Put" || op == "CreateMultipart" {
			return &s3backend.Error{Op: op, Key: key, Status: 503, Kind: s3backend.ErrUnavailable, Cause: errors.New("down")}
		}
		return nil
	})
	e.open()
	if got := e.read("f"); !bytes.Equal(got, want) {
		t.Fatal("f does not read back after the power cut while S3 takes no upload")
	}
	e.store.SetHook(nil)
	e.wantUploaded("f", want)
	for _, k := range e.keys() {
		if strings.Contains(k, ".conflict-") {
			t.Fatalf("conflict copy %s of the file's own upload; bucket %v", k, e.keys())
		}
	}
}

// TestPowerCutRewriteOfAnUploadedFile: the most common rewrite, a block
// of a file already in S3 (its blocks clean in the cache), stored whole,
// and then a power cut before a sync made it durable, which loses its
// bytes. The block gets back what it held before (the clean block it
// replaced, which eviction leaves alone until a sync: see
// blocks.TestHoldUntilASyncBegunAfter), rather than leave the file
// unreadable there and never uploaded. (From a review.)
func TestPowerCutRewriteOfAnUploadedFile(t *testing.T) {
	for _, c := range []struct{ reader, crash bool }{{false, false}, {true, false}, {false, true}} {
		t.Run(fmt.Sprintf("reader short of room=%v/crash during recovery=%v", c.reader, c.crash), func(t *testing.T) {
			powerCutRewriteOfAnUploadedFile(t, c.reader, c.crash)
		})
	}
}

func powerCutRewriteOfAnUploadedFile(t *testing.T, reader, crash bool) {
	e := newEnv(t, func(o *Options) { o.WriteBackDelay, o.CommitInterval = time.Hour, time.Hour })
	e.logs.allow("did not reach the disk")
	bs := int(e.opt.BlockSize)
	old := randBytes(3 * bs)
	e.write("f", 0, old)
	e.drain()
	if err := e.c.blocks.Sync(); err != nil {
		t.Fatal(err)
	}
	epoch := e.syncEpoch()
	ino := e.mustLookup("f").Ino
	e.write("f", int64(bs+5), []byte("rewritten, then lost"))
	lost := e.blockPath(e.blockIDs(ino)[1])
	if reader {
		// A reader needs the whole cache while no sync gets through:
		// the clean block the rewrite replaced is the oldest, and must
		// stay until a sync has made the rewrite durable.
		e.logs.allow("background sync of written blocks failed")
		blocks.FsyncPath = func(string) error { return errors.New("the disk stalls") }
		t.Cleanup(func() { blocks.FsyncPath = blocks.FsyncFile })
		// 1.5 times the cache: see powerCutAfterUploadOfAnEdit.
		e.store.PutObject("h", randBytes(int(e.opt.CacheSize)*3/2), nil)
		e.read("h")
		e.waitEvicted()
		blocks.FsyncPath = blocks.FsyncFile
		// Takes the failure of the reader's sync, if it started one, for
		// Close.
		if err := e.c.blocks.Sync(); err != nil && !strings.Contains(err.Error(), "the disk stalls") {
			t.Fatal(err)
		}
	}
	e.powerCutAfter(epoch)
	if err := os.Truncate(lost, 0); err != nil {
		t.Fatal(err)
	}
	if crash {
		// The first start restores, and crashes before it records that:
		// the next one finds the same entries and restores again, from
		// the same clean block (kept from the garbage until recorded).
		e.openCrashingWhileRecordingCuts()
	}
	e.open()
	if got := e.read("f"); !bytes.Equal(got, old) {
		t.Fatal("f does not read back what it held before the lost rewrite")
	}
	if !e.logs.has("holds what it held before the rewrite") {
		t.Error("the restore was not logged")
	}
	e.wantUploaded("f", old)
}

// TestPowerCutAppendDuringASync: a line appended to a log while a sync of
// its tail block is under way, and a power cut after that sync and before
// the next: what the sync made durable (every line before) must survive,
// only the line after it may go. (From a review: the append named the
// durable prefix from before that sync, and the cut went back to it.)
func TestPowerCutAppendDuringASync(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.WriteBackDelay, o.CommitInterval = time.Hour, time.Hour })
	e.logs.allow("did not reach the disk")
	durable := randBytes(70 << 10) // a full block and a tail of 6 KiB
	e.write("log", 0, durable)
	ino := e.mustLookup("log").Ino
	if err := e.c.blocks.Sync(); err != nil {
		t.Fatal(err)
	}
	line1, line2 := []byte("made durable by the sync under way\n"), []byte("written during it\n")
	e.write("log", int64(len(durable)), line1)
	tail := e.blockIDs(ino)[1]
	// A sync, held in its first fsync.
	hold, held := make(chan struct{}), make(chan struct{}, 64)
	blocks.FsyncPath = func(p string) error {
		select {
		case held <- struct{}{}:
		default:
		}
		<-hold
		return blocks.FsyncFile(p)
	}
	t.Cleanup(func() { blocks.FsyncPath = blocks.FsyncFile })
	synced := make(chan error, 1)
	go func() { synced <- e.c.blocks.Sync() }()
	<-held
	e.write("log", int64(len(durable)+len(line1)), line2)
	close(hold)
	if err := <-synced; err != nil {
		t.Fatal(err)
	}
	epoch := e.syncEpoch()
	want := append(bytes.Clone(durable), line1...)
	last := e.blockIDs(ino)[1]
	tailPath, lastPath := e.blockPath(tail), e.blockPath(last)
	e.powerCutAfter(epoch, tail)
	// The power cut: line2's bytes never reached the disk.
	var err error
	if last == tail {
		err = os.Truncate(tailPath, int64(len(want)-64<<10))
	} else {
		err = os.Truncate(lastPath, 0)
	}
	if err != nil {
		t.Fatal(err)
	}
	e.open()
	if got := e.read("log"); !bytes.Equal(got, want) {
		t.Fatalf("after the power cut the log has %d bytes, want the %d the sync made durable", len(got), len(want))
	}
	e.wantUploaded("log", want)
}

// TestPowerCutRewriteThenAppend: a log's tail block rewritten whole (a
// byte inside it changed), then appended to in place, all within one
// commit interval, and a power cut that loses that block's bytes: the
// appended entry still names the block the rewrite replaced, with the
// rewrite's epoch, so the tail gets back what the last sync made durable.
// (From a review: dropping the epoch from Append broke no test.)
func TestPowerCutRewriteThenAppend(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.WriteBackDelay, o.CommitInterval = time.Hour, time.Hour })
	e.logs.allow("did not reach the disk")
	durable := randBytes(70 << 10)
	e.write("log", 0, durable)
	ino := e.mustLookup("log").Ino
	if err := e.c.blocks.Sync(); err != nil {
		t.Fatal(err)
	}
	epoch := e.syncEpoch()
	tail := e.blockIDs(ino)[1]
	e.write("log", 66<<10, []byte("X")) // inside the tail: stored whole
	rewritten := e.blockIDs(ino)[1]
	if rewritten == tail {
		t.Fatal("a change inside the tail block was made in place")
	}
	e.write("log", int64(len(durable)), []byte("a line\n")) // appended in place
	if got := e.blockIDs(ino)[1]; got != rewritten {
		t.Fatalf("the append stored the block whole (%v, not %v): the test needs it in place", got, rewritten)
	}
	lostPath := e.blockPath(rewritten)
	e.powerCutAfter(epoch, tail)
	if err := os.Truncate(lostPath, 0); err != nil {
		t.Fatal(err)
	}
	e.open()
	if got := e.read("log"); !bytes.Equal(got, durable) {
		t.Fatalf("after the power cut the log has %d bytes, want the %d that were durable", len(got), len(durable))
	}
}
