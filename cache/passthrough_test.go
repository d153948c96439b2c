package cache

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// openR opens path read-only.
func (e *env) openR(path string) *Handle {
	e.t.Helper()
	h, _, err := e.c.Open(ctx, e.mustLookup(path).Ino, false, false)
	if err != nil {
		e.t.Fatalf("open %q: %v", path, err)
	}
	return h
}

// mapBacking maps n bytes of b's file read-only, as the kernel does for a
// mapping of a passthrough open: through its own open of the backing
// file, which the mapping keeps after the close. The caller unmaps.
func mapBacking(t *testing.T, b *Backing, n int) []byte {
	t.Helper()
	f, err := os.Open(b.b.File().Name())
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	mapped, err := unix.Mmap(int(f.Fd()), 0, n, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	return mapped
}

// backingBytes reads the whole backing file.
func backingBytes(t *testing.T, b *Backing) []byte {
	t.Helper()
	f := b.b.File() // not os.NewFile of its fd: that file's finalizer would close it
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	out := make([]byte, st.Size())
	if _, err := f.ReadAt(out, 0); err != nil && err != io.EOF {
		t.Fatal(err)
	}
	return out
}

// A file wholly in the cache gets a backing file holding its content; a
// second open gets the same one without copying again.
func TestBackingHoldsTheContent(t *testing.T) {
	e := newEnv(t, nil)
	data := randBytes(int(3*e.opt.BlockSize + 77))
	e.write("f", 0, data)
	h := e.openR("f")
	defer e.close(h)
	b, err := e.c.OpenBacking(ctx, h)
	if err != nil || b == nil {
		t.Fatalf("OpenBacking of a file wholly in the cache: %v, %v", b, err)
	}
	if got := backingBytes(t, b); !bytes.Equal(got, data) {
		t.Fatalf("the backing file holds %d bytes, not the file's %d", len(got), len(data))
	}
	if err := b.Release(ctx); err != nil {
		t.Fatal(err)
	}
	b2, err := e.c.OpenBacking(ctx, h)
	if err != nil || b2 == nil {
		t.Fatalf("second OpenBacking: %v", err)
	}
	defer b2.Release(ctx)
	if n := e.c.Stats().BackingsMade.Load(); n != 1 {
		t.Fatalf("%d backing files made for one version, want 1", n)
	}
	if clean, dirty := e.c.Usage(); clean+dirty < int64(len(data))*2 {
		t.Fatalf("the backing file is not counted in the cache's size: clean %d dirty %d", clean, dirty)
	}
}

// Not every block in the cache (never read whole): no backing file, and
// no S3 request to make one.
func TestNoBackingForAFileNotWhollyCached(t *testing.T) {
	e := newEnv(t, nil)
	e.store.PutObject("big", randBytes(int(4*e.opt.BlockSize)), nil)
	h := e.openR("big")
	defer e.close(h)
	buf := make([]byte, 10)
	if _, err := h.Read(ctx, buf, 0); err != nil { // one block only
		t.Fatal(err)
	}
	e.store.ResetCounts()
	b, err := e.c.OpenBacking(ctx, h)
	if err != nil || b != nil {
		t.Fatalf("OpenBacking of a partly cached file: %v, %v; want none", b, err)
	}
	if c := e.store.Counts(); len(c) != 0 {
		t.Fatalf("OpenBacking asked S3: %v", c)
	}
}

// While a backing file is in use, writes through the cache are copied to
// it (its readers see them) and a truncate cuts it; once unused, the next
// write drops it rather than copying.
func TestBackingFollowsWrites(t *testing.T) {
	e := newEnv(t, nil)
	data := randBytes(int(2*e.opt.BlockSize + 10))
	e.write("f", 0, data)
	r := e.openR("f")
	defer e.close(r)
	b, err := e.c.OpenBacking(ctx, r)
	if err != nil || b == nil {
		t.Fatalf("OpenBacking: %v", err)
	}
	w := e.openW("f")
	if _, err := w.Write(ctx, []byte("hello"), 5); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(ctx, []byte("tail"), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	want := append(append([]byte{}, data...), "tail"...)
	copy(want[5:], "hello")
	if got := backingBytes(t, b); !bytes.Equal(got, want) {
		t.Fatalf("the backing file did not follow the writes (%d bytes)", len(got))
	}
	if err := e.c.Truncate(ctx, r.Ino(), 100); err != nil {
		t.Fatal(err)
	}
	if got := backingBytes(t, b); !bytes.Equal(got, want[:100]) {
		t.Fatalf("the backing file did not follow the truncate (%d bytes)", len(got))
	}
	if err := b.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(ctx, []byte("x"), 0); err != nil {
		t.Fatal(err)
	}
	e.close(w)
	if got := e.c.blocks.BackingFor(r.Ino(), r.ver); got != nil {
		t.Fatal("an unused backing file survived a write: the next open would read old bytes")
	}
}

// A reader's mapping that outlives the last open keeps the backing file
// in use: the writes made through the cache meanwhile are copied to it,
// so the mapping sees them, as it would on a local file. Once the mapping
// is gone, the group commit's look lets the file go.
func TestBackingKeptWhileAReadersMappingLasts(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.CommitInterval = time.Hour }) // the test's checkLingering is the group commit
	data := randBytes(int(2 * e.opt.BlockSize))
	e.write("f", 0, data)
	r := e.openR("f")
	b, err := e.c.OpenBacking(ctx, r)
	if err != nil || b == nil {
		t.Fatalf("OpenBacking: %v", err)
	}
	mapped := mapBacking(t, b, len(data))
	unmapped := false
	defer func() {
		if !unmapped {
			unix.Munmap(mapped)
		}
	}()
	if err := b.Release(ctx); err != nil {
		t.Fatal(err)
	}
	e.close(r)
	w := e.openW("f")
	if _, err := w.Write(ctx, []byte("after the last close"), 7); err != nil {
		t.Fatal(err)
	}
	if got := string(mapped[7:27]); got != "after the last close" {
		t.Fatalf("the mapping shows %q: the write was not copied to the backing file", got)
	}
	e.c.checkLingering(ctx)
	if n := e.lingering(); n != 1 {
		t.Fatalf("%d backing files kept while the mapping lasts, want 1", n)
	}
	if err := unix.Munmap(mapped); err != nil {
		t.Fatal(err)
	}
	unmapped = true
	e.c.checkLingering(ctx)
	if n := e.lingering(); n != 0 {
		t.Fatalf("%d backing files kept after the mapping is gone, want 0", n)
	}
	if _, err := w.Write(ctx, []byte("x"), 0); err != nil {
		t.Fatal(err)
	}
	e.close(w)
	if got := e.c.blocks.BackingFor(r.Ino(), r.ver); got != nil {
		t.Fatal("the backing file was not let go once the mapping was gone")
	}
}

// A backing file that only readers used has nothing to take in when the
// cache closes with its mapping still alive: a take-in would read every
// block again, from S3 for those evicted, while the mount stops.
func TestCloseTakesNothingInFromAReadersMapping(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.CacheSize = 4 << 20 })
	data := randBytes(int(4 * e.opt.BlockSize))
	e.write("f", 0, data)
	e.drain()
	r := e.openR("f")
	b, err := e.c.OpenBacking(ctx, r)
	if err != nil || b == nil {
		t.Fatalf("OpenBacking: %v", err)
	}
	defer unix.Munmap(mapBacking(t, b, len(data)))
	if err := b.Release(ctx); err != nil {
		t.Fatal(err)
	}
	e.close(r)
	// Other files push f's clean blocks out of the cache.
	for i := 0; i < 6; i++ {
		e.write(fmt.Sprintf("g%d", i), 0, randBytes(1<<20))
		e.drain()
	}
	e.store.ResetCounts()
	err = e.c.Close()
	e.c = nil
	if err != nil {
		t.Fatal(err)
	}
	if n := e.store.Counts()["Get"]; n != 0 {
		t.Fatalf("Close read f from S3 %d times for a mapping that cannot write", n)
	}
}

// The content changes while the backing file is copied: it is not used.
func TestBackingRacingAWriteIsNotUsed(t *testing.T) {
	e := newEnv(t, nil)
	e.write("f", 0, randBytes(int(2*e.opt.BlockSize)))
	r := e.openR("f")
	defer e.close(r)
	st := r.st
	st.mu.Lock()
	snap, seq := st.rec.clone(), st.contentSeq
	st.mu.Unlock()
	e.write("f", 0, []byte("changed")) // lands between the snapshot and the check
	b, err := e.c.assemble(st, snap, seq)
	if err != nil || b != nil {
		t.Fatalf("assemble across a write: %v, %v; want none", b, err)
	}
	if got := e.c.blocks.BackingFor(r.Ino(), snap.ContentVer); got != nil {
		t.Fatal("the backing file copied across a write is still offered")
	}
}

// Another writer's version replaces the file: the backing file of the old
// one keeps serving its open, is offered to no new open, and is gone
// once released.
func TestBackingOfAReplacedVersionIsNotOffered(t *testing.T) {
	e := newEnv(t, nil)
	e.store.PutObject("f", []byte("old content"), nil)
	if got := e.read("f"); string(got) != "old content" {
		t.Fatalf("read %q", got)
	}
	r := e.openR("f")
	b, err := e.c.OpenBacking(ctx, r)
	if err != nil || b == nil {
		t.Fatalf("OpenBacking: %v", err)
	}
	e.store.PutObject("f", []byte("new content!"), nil)
	e.clock.Advance(2 * time.Second) // past the TTL
	if got := e.read("f"); string(got) != "new content!" {
		t.Fatalf("after the replacement: %q", got)
	}
	if b.Current() {
		t.Fatal("the old version's backing file still counts as current")
	}
	if got := backingBytes(t, b); string(got) != "old content" {
		t.Fatalf("the open of the old version lost its bytes: %q", got)
	}
	r2 := e.openR("f")
	b2, err := e.c.OpenBacking(ctx, r2)
	if err != nil || b2 == nil {
		t.Fatalf("OpenBacking of the new version: %v", err)
	}
	if got := backingBytes(t, b2); string(got) != "new content!" {
		t.Fatalf("the new version's backing file holds %q", got)
	}
	for _, x := range []*Backing{b, b2} {
		if err := x.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
	e.close(r)
	e.close(r2)
}

// A writer's mapping wrote to the backing file: the cache takes it in.
func TestBackingTakesInAMappingsWrite(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.WriteBackDelay = time.Hour })
	e.logs.allow("took in what a writable mapping wrote")
	data := randBytes(int(2 * e.opt.BlockSize))
	e.write("f", 0, data)
	r := e.openR("f")
	defer e.close(r)
	b, err := e.c.OpenBacking(ctx, r)
	if err != nil || b == nil {
		t.Fatalf("OpenBacking: %v", err)
	}
	b.AddWriter()
	f := b.b.File() // what a writable mapping does to it
	if _, err := f.WriteAt([]byte("mapped"), e.opt.BlockSize+3); err != nil {
		t.Fatal(err)
	}
	if err := b.TakeInMapped(ctx); err != nil {
		t.Fatal(err)
	}
	want := append([]byte{}, data...)
	copy(want[e.opt.BlockSize+3:], "mapped")
	if got := e.read("f"); !bytes.Equal(got, want) {
		t.Fatal("the cache did not take in the mapping's write")
	}
	if err := b.Release(ctx); err != nil {
		t.Fatal(err)
	}
	e.drain()
	if !bytes.Equal(e.object("f"), want) {
		t.Fatal("the mapping's write did not reach S3")
	}
}

// An encrypted cache never makes a backing file.
func TestNoBackingWithEncryption(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.EncryptionKey = bytes.Repeat([]byte{7}, 32) })
	e.write("f", 0, []byte("secret"))
	r := e.openR("f")
	defer e.close(r)
	if e.c.PassthroughPossible() {
		t.Fatal("an encrypted cache says it can pass through")
	}
	if b, err := e.c.OpenBacking(ctx, r); b != nil || err != nil {
		t.Fatalf("OpenBacking with encryption: %v, %v", b, err)
	}
}

// Reads that pass through never reach keelfs: the backing file's own
// atime tells that the kernel read it, and the file's atime then moves as
// relatime says, once per look; no read, no move.
func TestBackingReadsMoveAtime(t *testing.T) {
	e := newEnv(t, nil)
	e.write("f", 0, []byte("some content"))
	ino := e.mustLookup("f").Ino
	old := e.clock.Now().Add(-48 * time.Hour)
	if _, err := e.c.Setattr(ctx, ino, SetAttr{Atime: &old}); err != nil {
		t.Fatal(err)
	}
	r := e.openR("f")
	defer e.close(r)
	b, err := e.c.OpenBacking(ctx, r)
	if err != nil || b == nil {
		t.Fatalf("OpenBacking: %v", err)
	}
	defer b.Release(ctx)
	e.clock.Advance(time.Second)
	b.NoteReads()
	if a := e.mustLookup("f"); !a.Atime.Equal(old) {
		t.Fatalf("atime moved to %v with no read of the backing file", a.Atime)
	}
	if _, err := b.b.File().ReadAt(make([]byte, 4), 0); err != nil { // what the kernel does for a passthrough read
		t.Fatal(err)
	}
	b.NoteReads()
	if a := e.mustLookup("f"); !a.Atime.Equal(e.clock.Now()) {
		t.Fatalf("atime %v after a read that passed through, want %v", a.Atime, e.clock.Now())
	}
}

// A mapping's write seen just before a write through keelfs is mirrored
// into the backing file is not absorbed into the stamp taken after the
// mirrored write: it is still taken in.
func TestBackingMappingWriteNotAbsorbedByMirroredWrite(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.WriteBackDelay = time.Hour })
	e.logs.allow("took in what a writable mapping wrote")
	data := randBytes(int(2 * e.opt.BlockSize))
	e.write("f", 0, data)
	r := e.openR("f")
	defer e.close(r)
	b, err := e.c.OpenBacking(ctx, r)
	if err != nil || b == nil {
		t.Fatalf("OpenBacking: %v", err)
	}
	defer b.Release(ctx)
	b.AddWriter()
	if _, err := b.b.File().WriteAt([]byte("mapped"), e.opt.BlockSize+3); err != nil { // the mapping
		t.Fatal(err)
	}
	w := e.openW("f")
	if _, err := w.Write(ctx, []byte("written"), 0); err != nil { // through keelfs, mirrored
		t.Fatal(err)
	}
	e.close(w)
	if err := b.TakeInMapped(ctx); err != nil {
		t.Fatal(err)
	}
	want := append([]byte{}, data...)
	copy(want, "written")
	copy(want[e.opt.BlockSize+3:], "mapped")
	if got := e.read("f"); !bytes.Equal(got, want) {
		t.Fatal("the mapping's write was lost behind the mirrored write")
	}
}

// A mapping wrote to the backing file of a version that another writer's
// version then replaced: there is no file for it to go to, and that is
// said (ERROR, counted), not dropped in silence; the new version stands.
func TestBackingMappingWriteToReplacedVersionReported(t *testing.T) {
	e := newEnv(t, nil)
	e.logs.allow("what a writable mapping wrote to a file is lost")
	e.write("f", 0, randBytes(int(e.opt.BlockSize)))
	e.drain()
	r := e.openR("f")
	defer e.close(r)
	b, err := e.c.OpenBacking(ctx, r)
	if err != nil || b == nil {
		t.Fatalf("OpenBacking: %v", err)
	}
	defer b.Release(ctx)
	b.AddWriter()
	if _, err := b.b.File().WriteAt([]byte("mapped"), 3); err != nil {
		t.Fatal(err)
	}
	newer := []byte("another writer's version")
	e.store.PutObject("f", newer, nil)
	e.clock.Advance(2 * time.Second) // past the TTL
	if got := e.read("f"); !bytes.Equal(got, newer) {
		t.Fatalf("after the other writer: %q", got)
	}
	if err := b.TakeInMapped(ctx); err != nil {
		t.Fatal(err)
	}
	if n := e.c.Stats().BackingErrors.Load(); n != 1 {
		t.Fatalf("%d backing errors counted, want 1", n)
	}
	if got := e.read("f"); !bytes.Equal(got, newer) {
		t.Fatalf("the new version became %q", got)
	}
}

// Where the kernel refuses leases (fs.leases-enable=0), nothing tells
// when a reader's mapping that outlived its opens is gone. The README
// promises a warning, once per mount, that such mappings will not see
// later writes; the backing file is let go as if none were left, never
// kept for a probe that cannot answer.
func TestReadersMappingWithoutLeases(t *testing.T) {
	var probes atomic.Int32
	e := newEnv(t, func(o *Options) {
		o.CommitInterval = time.Hour // no group commit in between
		o.SetLease = func(uintptr, int) error {
			probes.Add(1)
			return unix.EINVAL
		}
	})
	const warning = "cannot tell whether a mapping of a passthrough file outlives its opens"
	e.logs.allow(warning)
	for _, name := range []string{"f", "g"} {
		data, r, b := e.backedFile(name)
		mapped := mapBacking(t, b, len(data))
		defer unix.Munmap(mapped)
		if err := b.Release(ctx); err != nil {
			t.Fatalf("release of %s without leases: %v", name, err)
		}
		e.close(r)
		if n := e.lingering(); n != 0 {
			t.Fatalf("%d backing files kept for a probe that cannot answer", n)
		}
		e.checkLetGo(name, r) // as the warning says
	}
	if probes.Load() == 0 {
		t.Fatal("no lease was asked for")
	}
	if n := e.logs.count(warning); n != 1 {
		t.Fatalf("the warning was logged %d times for two files, want once", n)
	}
}

// Without leases, the end of a writer's epoch cannot tell whether a
// writable mapping outlives it either. The release succeeds (it used to
// return the probe's error, which fs logs as an ERROR that a mapping's
// write could not be taken in, at every last close of a written file);
// what the mapping writes until the next group commit is taken in, then
// the file is let go; the warning is once per mount.
func TestWritersMappingWithoutLeases(t *testing.T) {
	e := newEnv(t, func(o *Options) {
		o.WriteBackDelay = time.Hour
		o.CommitInterval = time.Hour // the test's checkLingering is the group commit
		o.SetLease = func(uintptr, int) error { return unix.EINVAL }
	})
	const warning = "cannot tell whether a writable mapping of a passthrough file outlives its opens"
	e.logs.allow(warning)
	for _, name := range []string{"f", "g"} {
		data, r, b := e.backedFile(name)
		b.AddWriter()
		f := b.b.File() // what a writable mapping does to it
		if _, err := f.WriteAt([]byte("mapped"), e.opt.BlockSize+3); err != nil {
			t.Fatal(err)
		}
		if err := b.Release(ctx); err != nil {
			t.Fatalf("release of %s without leases: %v", name, err)
		}
		if _, err := f.WriteAt([]byte("later"), 1); err != nil { // before the group commit
			t.Fatal(err)
		}
		e.c.checkLingering(ctx)
		if n := e.lingering(); n != 0 {
			t.Fatalf("%d backing files kept for a probe that cannot answer", n)
		}
		want := append([]byte{}, data...)
		copy(want[e.opt.BlockSize+3:], "mapped")
		copy(want[1:], "later")
		e.close(r)
		if got := e.read(name); !bytes.Equal(got, want) {
			t.Fatalf("%s: the cache did not take in what the mapping wrote", name)
		}
		e.checkLetGo(name, r)
	}
	if n := e.logs.count(warning); n != 1 {
		t.Fatalf("the warning was logged %d times for two files, want once", n)
	}
}

// backedFile writes name (two blocks of random bytes), opens it for
// reading and gives that open its backing file.
func (e *env) backedFile(name string) ([]byte, *Handle, *Backing) {
	e.t.Helper()
	data := randBytes(int(2 * e.opt.BlockSize))
	e.write(name, 0, data)
	r := e.openR(name)
	b, err := e.c.OpenBacking(ctx, r)
	if err != nil || b == nil {
		e.t.Fatalf("OpenBacking %s: %v, %v", name, b, err)
	}
	return data, r, b
}

// lingering is how many backing files the cache keeps for a mapping that
// may outlive their opens.
func (e *env) lingering() int {
	e.c.passMu.Lock()
	defer e.c.passMu.Unlock()
	return len(e.c.lingering)
}

// A lease that was granted and could not be given back is no refusal of
// leases: it is logged each time, not once as "no leases here" is.
func TestLeaseNotGivenBackIsLoggedEachTime(t *testing.T) {
	e := newEnv(t, func(o *Options) {
		o.CommitInterval = time.Hour
		o.SetLease = func(fd uintptr, arg int) error {
			if arg == unix.F_UNLCK {
				return unix.EBADF
			}
			return nil
		}
	})
	const warning = "lease probe of a passthrough file failed"
	e.logs.allow(warning)
	for _, name := range []string{"f", "g"} {
		_, r, b := e.backedFile(name)
		if err := b.Release(ctx); err != nil {
			t.Fatal(err)
		}
		e.close(r)
	}
	if n := e.logs.count(warning); n != 2 {
		t.Fatalf("a lease not given back was logged %d times for two files, want 2", n)
	}
	if n := e.logs.count("cannot tell whether"); n != 0 {
		t.Fatalf("a lease not given back was taken for leases refused (%d lines)", n)
	}
}

// checkLetGo checks that the backing file r used is let go: unused, it is
// dropped at the first write through the cache.
func (e *env) checkLetGo(name string, r *Handle) {
	e.t.Helper()
	w := e.openW(name)
	if _, err := w.Write(ctx, []byte("x"), 0); err != nil {
		e.t.Fatal(err)
	}
	e.close(w)
	if got := e.c.blocks.BackingFor(r.Ino(), r.ver); got != nil {
		e.t.Fatalf("the backing file of %s was not let go", name)
	}
}
