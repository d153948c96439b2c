package cache

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/keelfs/keelfs/s3backend"
	"github.com/keelfs/keelfs/s3backend/memstore"
)

// testClock is a settable clock for TTL tests.
type testClock struct{ ns atomic.Int64 }

func (c *testClock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *testClock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

type env struct {
	t     *testing.T
	store *memstore.Store
	c     *Cache
	dir   string
	opt   Options
	clock *testClock
	logs  *logCapture
}

// logCapture fails the test on WARN/ERROR lines that the test did not
// declare expected.
type logCapture struct {
	mu      sync.Mutex
	lines   []string
	allowed []string
}

func (l *logCapture) Write(p []byte) (int, error) {
	l.mu.Lock()
	l.lines = append(l.lines, string(p))
	l.mu.Unlock()
	return len(p), nil
}

func (l *logCapture) allow(s string) {
	l.mu.Lock()
	l.allowed = append(l.allowed, s)
	l.mu.Unlock()
}

// count is how many lines logged so far contain s.
func (l *logCapture) count(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, line := range l.lines {
		if strings.Contains(line, s) {
			n++
		}
	}
	return n
}

func (l *logCapture) check(t *testing.T) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range l.lines {
		if !strings.Contains(line, "level=WARN") && !strings.Contains(line, "level=ERROR") {
			continue
		}
		ok := false
		for _, a := range l.allowed {
			if strings.Contains(line, a) {
				ok = true
			}
		}
		if !ok {
			t.Errorf("unexpected log line: %s", line)
		}
	}
}

func newEnv(t *testing.T, mod func(*Options)) *env {
	t.Helper()
	e := &env{t: t, store: memstore.New(), dir: t.TempDir(), clock: &testClock{}, logs: &logCapture{}}
	e.clock.ns.Store(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC).UnixNano())
	e.opt = Options{Dir: e.dir, Store: e.store, BlockSize: 64 << 10, CacheSize: 64 << 20, MetadataTTL: time.Second,
		WriteBackDelay: 0, PartSize: 5 << 20, ConditionalWrites: true, Hostname: "testhost",
		MinBackoff: 2 * time.Millisecond, MaxBackoff: 50 * time.Millisecond, SpaceWait: 10 * time.Second,
		ReadReorder: 256 << 10, // as the kernel's 4 MiB to 1 MiB blocks
		Logger:      slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelInfo})), Now: e.clock.Now}
	if mod != nil {
		mod(&e.opt)
	}
	e.open()
	t.Cleanup(func() {
		if e.c != nil {
			e.c.Close()
		}
		e.logs.check(t)
	})
	return e
}

func (e *env) open() {
	e.t.Helper()
	c, err := Open(context.Background(), e.opt)
	if err != nil {
		e.t.Fatalf("open cache: %v", err)
	}
	e.c = c
}

// reopen closes the cache (pending work stays in the journal) and opens
// it again on the same directory, as a remount does.
func (e *env) reopen() {
	e.t.Helper()
	if err := e.c.Close(); err != nil {
		e.t.Fatalf("close: %v", err)
	}
	e.c = nil
	e.open()
}

var ctx = context.Background()

func (e *env) lookup(path string) (Attr, error) {
	ino := RootIno
	var a Attr
	for _, name := range strings.Split(path, "/") {
		if name == "" {
			continue
		}
		var err error
		a, err = e.c.Lookup(ctx, ino, name)
		if err != nil {
			return Attr{}, err
		}
		ino = a.Ino
	}
	if ino == RootIno {
		return e.c.Getattr(ctx, RootIno)
	}
	return a, nil
}

func (e *env) mustLookup(path string) Attr {
	e.t.Helper()
	a, err := e.lookup(path)
	if err != nil {
		e.t.Fatalf("lookup %q: %v", path, err)
	}
	return a
}

func (e *env) parentOf(path string) (uint64, string) {
	e.t.Helper()
	i := strings.LastIndex(path, "/")
	if i < 0 {
		return RootIno, path
	}
	return e.mustLookup(path[:i]).Ino, path[i+1:]
}

func (e *env) readDir(path string) []string {
	e.t.Helper()
	a := e.mustLookup(path)
	r, err := e.c.OpenDir(ctx, a.Ino)
	if err != nil {
		e.t.Fatalf("opendir %q: %v", path, err)
	}
	var names []string
	for {
		de, ok, err := r.Next()
		if err != nil {
			e.t.Fatalf("readdir %q: %v", path, err)
		}
		if !ok {
			return names
		}
		names = append(names, de.Name)
	}
}

func (e *env) read(path string) []byte {
	e.t.Helper()
	a := e.mustLookup(path)
	h, _, err := e.c.Open(ctx, a.Ino, false, false)
	if err != nil {
		e.t.Fatalf("open %q: %v", path, err)
	}
	defer h.Release(ctx)
	var out []byte
	buf := make([]byte, 100<<10)
	for off := int64(0); ; {
		n, err := h.Read(ctx, buf, off)
		if err != nil {
			e.t.Fatalf("read %q at %d: %v", path, off, err)
		}
		if n == 0 {
			return out
		}
		out = append(out, buf[:n]...)
		off += int64(n)
	}
}

// write opens (creating if needed) and writes data at off, then closes.
func (e *env) write(path string, off int64, data []byte) {
	e.t.Helper()
	h := e.openW(path)
	if _, err := h.Write(ctx, data, off); err != nil {
		e.t.Fatalf("write %q: %v", path, err)
	}
	e.close(h)
}

func (e *env) openW(path string) *Handle {
	e.t.Helper()
	a, err := e.lookup(path)
	if errors.Is(err, ErrNotExist) {
		p, name := e.parentOf(path)
		a, err = e.c.Create(ctx, p, name, 0o644, 1000, 1000)
	}
	if err != nil {
		e.t.Fatalf("create %q: %v", path, err)
	}
	h, _, err := e.c.Open(ctx, a.Ino, true, false)
	if err != nil {
		e.t.Fatalf("open %q: %v", path, err)
	}
	return h
}

func (e *env) close(h *Handle) {
	e.t.Helper()
	if err := h.Flush(ctx); err != nil {
		e.t.Fatalf("flush: %v", err)
	}
	if err := h.Release(ctx); err != nil {
		e.t.Fatalf("release: %v", err)
	}
}

func (e *env) drain() {
	e.t.Helper()
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if left, err := e.c.Drain(dctx); err != nil || len(left) > 0 {
		e.t.Fatalf("drain: %v, left %v", err, left)
	}
}

func (e *env) object(key string) []byte {
	e.t.Helper()
	data, _, ok := e.store.Object(key)
	if !ok {
		e.t.Fatalf("object %q missing; bucket has %v", key, e.store.Keys())
	}
	return data
}

func (e *env) keys() []string { return e.store.Keys() }

func randBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func eqKeys(t *testing.T, got []string, want ...string) {
	t.Helper()
	sort.Strings(want)
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("keys = %q, want %q", got, want)
	}
}

func TestListingNamespace(t *testing.T) {
	e := newEnv(t, nil)
	s := e.store
	s.PutObject("top.txt", []byte("top"), nil)
	s.PutObject("a/b/c.txt", []byte("deep"), nil) // implicit a, a/b
	s.PutObject("marked/", nil, s3backend.Metadata{"mode": "16832", "uid": "7", "gid": "8", "mtime": "1600000000"})
	s.PutObject("both", []byte("file hidden by dir"), nil)
	s.PutObject("both/inner", []byte("in"), nil)
	s.PutObject("bad//double", []byte("x"), nil)
	s.PutObject("dots/./x", []byte("x"), nil)
	s.PutObject("dots/../y", []byte("x"), nil)
	s.PutObject("long/"+strings.Repeat("n", 256), []byte("x"), nil)
	s.PutObject("long/"+strings.Repeat("n", 255), []byte("ok"), nil)
	s.PutObject("attrs", []byte("12345"), s3backend.Metadata{"mode": "33184", "uid": "1001", "gid": "1002", "mtime": "1609556645.123456789"})
	s.PutObject("sym", []byte("top.txt"), s3backend.Metadata{"mode": "41471"})

	eqKeys(t, e.readDir(""), "a", "attrs", "bad", "both", "dots", "long", "marked", "sym", "top.txt")
	if got := e.readDir("a/b"); len(got) != 1 || got[0] != "c.txt" {
		t.Fatalf("a/b = %v", got)
	}
	if got := string(e.read("a/b/c.txt")); got != "deep" {
		t.Fatalf("a/b/c.txt = %q", got)
	}
	// Directory wins over the file of the same name.
	if a := e.mustLookup("both"); a.Mode&syscall.S_IFMT != syscall.S_IFDIR {
		t.Fatalf("both is not a directory: %o", a.Mode)
	}
	if got := e.readDir("both"); len(got) != 1 || got[0] != "inner" {
		t.Fatalf("both = %v", got)
	}
	// Keys that cannot be names are left out.
	if got := e.readDir("bad"); len(got) != 0 {
		t.Fatalf("bad = %v, want nothing (empty segment)", got)
	}
	if got := e.readDir("dots"); len(got) != 0 {
		t.Fatalf("dots = %v, want nothing", got)
	}
	if got := e.readDir("long"); len(got) != 1 || len(got[0]) != 255 {
		t.Fatalf("long = %v", got)
	}
	a := e.mustLookup("attrs")
	if a.Mode != syscall.S_IFREG|0o640 || a.UID != 1001 || a.GID != 1002 || a.Size != 5 {
		t.Fatalf("attrs = %+v", a)
	}
	if a.Mtime.UnixNano() != 1609556645123456789 {
		t.Fatalf("mtime = %v", a.Mtime.UnixNano())
	}
	m := e.mustLookup("marked")
	if m.Mode != syscall.S_IFDIR|0o700 || m.UID != 7 || m.GID != 8 {
		t.Fatalf("marked = %+v (mode %o)", m, m.Mode)
	}
	d := e.mustLookup("a")
	if d.Mode != syscall.S_IFDIR|0o755 {
		t.Fatalf("implicit dir mode %o", d.Mode)
	}
	sl := e.mustLookup("sym")
	if sl.Mode&syscall.S_IFMT != syscall.S_IFLNK {
		t.Fatalf("sym mode %o", sl.Mode)
	}
	if tgt, err := e.c.Readlink(ctx, sl.Ino); err != nil || tgt != "top.txt" {
		t.Fatalf("readlink = %q, %v", tgt, err)
	}
	if _, err := e.lookup("nope"); !errors.Is(err, ErrNotExist) {
		t.Fatalf("lookup nope: %v", err)
	}
	e.logs.check(t) // invalid keys are logged at INFO, not as warnings
}

// TestListingCosts checks the request budget of a cold directory, a warm
// one, and one after a remount.
func TestListingCosts(t *testing.T) {
	e := newEnv(t, nil)
	for i := 0; i < 2000; i++ {
		e.store.PutObject(fmt.Sprintf("d/f%04d", i), []byte("x"), s3backend.Metadata{"mode": "33188"})
	}
	d := e.mustLookup("d")
	e.store.ResetCounts()
	if n := len(e.readDir("d")); n != 2000 {
		t.Fatalf("got %d entries", n)
	}
	for i := 0; i < 2000; i += 97 {
		e.mustLookup(fmt.Sprintf("d/f%04d", i))
	}
	e.c.waitHeaderWalks() // the headers are learned in the background
	c := e.store.Counts()
	if c["List"] != 2 || c["Head"] != 2000 || len(c) != 2 {
		t.Fatalf("cold listing cost %v, want 2 LIST pages and 2000 HEADs", c)
	}
	e.store.ResetCounts()
	e.readDir("d")
	if c := e.store.Counts(); len(c) != 0 {
		t.Fatalf("warm listing within the TTL cost %v, want nothing", c)
	}
	e.reopen()
	e.clock.Advance(2 * time.Second)
	e.store.ResetCounts()
	if n := len(e.readDir("d")); n != 2000 {
		t.Fatalf("after remount: %d entries", n)
	}
	if c := e.store.Counts(); c["List"] != 2 || len(c) != 1 {
		t.Fatalf("listing after remount cost %v, want the LIST alone", c)
	}
	if a := e.mustLookup("d"); a.Ino != d.Ino {
		t.Fatalf("inode number changed across remount: %d -> %d", d.Ino, a.Ino)
	}
}

// TestListingHeadsFirstPageEarly: the HEADs of a listing's first page
// run while its next pages are listed (a cold ls -l waits for both), and
// those of later pages wait until the listing ends, so that a program
// that wants names only does not share the server with them. Then every
// entry's headers are read, once.
func TestListingHeadsFirstPageEarly(t *testing.T) {
	e := newEnv(t, nil)
	const n = 2500 // three LIST pages
	for i := 0; i < n; i++ {
		e.store.PutObject(fmt.Sprintf("d/f%04d", i), []byte("x"), nil)
	}
	e.mustLookup("d")
	var (
		mu     sync.Mutex
		headed = map[string]int{}
		lists  int
		atPage []map[string]int // what was HEADed when pages 2 and 3 were asked for
	)
	e.store.SetHook(func(op, key string) error {
		mu.Lock()
		switch {
		case op == "Head":
			headed[key]++
		case op == "List" && key == "d/":
			if lists++; lists > 1 {
				mu.Unlock()
				e.c.waitHeaderWalks() // what was queued so far is done
				mu.Lock()
				atPage = append(atPage, maps.Clone(headed))
			}
		}
		mu.Unlock()
		return nil
	})
	if got := len(e.readDir("d")); got != n {
		t.Fatalf("readdir gave %d names, want %d", got, n)
	}
	e.c.waitHeaderWalks()
	mu.Lock()
	defer mu.Unlock()
	if len(atPage) != 2 {
		t.Fatalf("%d LIST pages after the first, want 2", len(atPage))
	}
	// Entries are merged in batches of 256; those of the batches that
	// start on the first page go early: when page 2 is asked for, the
	// three merged so far (0 to 767); when page 3 is, the fourth too.
	for p, early := range []int{768, 1024} {
		h := atPage[p]
		for i := 0; i < n; i++ {
			key := fmt.Sprintf("d/f%04d", i)
			if got, want := h[key] > 0, i < early; got != want {
				t.Fatalf("when page %d was asked for, HEAD of %s done: %v, want %v", p+2, key, got, want)
			}
		}
	}
	for i := 0; i < n; i++ {
		if key := fmt.Sprintf("d/f%04d", i); headed[key] != 1 {
			t.Fatalf("%s: %d HEADs, want 1", key, headed[key])
		}
	}
}

// TestListingHeadsOfAHugeDirectory: beyond the HEADs a listing keeps until
// it ends (maxHeldHeads), the walk goes over the directory instead, and
// still reads every entry's headers.
func TestListingHeadsOfAHugeDirectory(t *testing.T) {
	e := newEnv(t, nil)
	const n = earlyHeads + maxHeldHeads + 1000
	for i := 0; i < n; i++ {
		e.store.PutObject(fmt.Sprintf("d/f%05d", i), []byte("x"), s3backend.Metadata{"mode": "33152"})
	}
	d := e.mustLookup("d")
	e.store.ResetCounts()
	if got := len(e.readDir("d")); got != n {
		t.Fatalf("readdir gave %d names, want %d", got, n)
	}
	e.c.waitHeaderWalks()
	if c := e.store.Counts(); c["Head"] != n {
		t.Fatalf("%d HEADs for %d objects", c["Head"], n)
	}
	for _, i := range []int{0, earlyHeads + 1, n / 2, n - 1} {
		// Listed never reads headers itself.
		if a, ok := e.c.Listed(d.Ino, fmt.Sprintf("f%05d", i)); !ok || a.Mode != 0o100600 {
			t.Fatalf("f%05d: headers read %v, mode %o, want its headers' 100600", i, ok, a.Mode)
		}
	}
}

// reachStore is a memstore whose reachability the test sets, as
// s3backend.Reach reports it.
type reachStore struct {
	*memstore.Store
	down atomic.Bool
}

func (r *reachStore) Reachable() bool { return !r.down.Load() }

// probeStore is a reachStore that counts the probes asked of it, and
// answers them as it is (a probe of a Reach that S3 does not answer
// takes up to --s3-timeout).
type probeStore struct {
	reachStore
	probes atomic.Int32
}

func (p *probeStore) Probe(context.Context) bool {
	p.probes.Add(1)
	return p.Reachable()
}

// TestDrainAsksS3OnlyWithSomethingPending: a stop while S3 is down waits
// for no probe when nothing is pending (by hand, a daemon unmounted
// during an outage took 5 s more to exit, the probe's retries); with a
// file pending it asks S3 at once, as before, since S3 may be back.
func TestDrainAsksS3OnlyWithSomethingPending(t *testing.T) {
	var ps *probeStore
	e := newEnv(t, func(o *Options) {
		ps = &probeStore{reachStore: reachStore{Store: o.Store.(*memstore.Store)}}
		o.Store = ps
		o.WriteBackDelay = time.Hour
	})
	ps.down.Store(true)
	if left, err := e.c.Drain(ctx); err != nil || len(left) != 0 {
		t.Fatalf("Drain with nothing pending: %v, %v", left, err)
	}
	if n := ps.probes.Load(); n != 0 {
		t.Fatalf("Drain with nothing pending probed S3 %d times, want 0", n)
	}
	e.write("f", 0, []byte("pending"))
	if _, err := e.c.Drain(ctx); err != nil { // the memstore takes the upload all the same
		t.Fatal(err)
	}
	if n := ps.probes.Load(); n != 1 {
		t.Fatalf("Drain with a file pending probed S3 %d times, want 1", n)
	}
}

// TestHeaderWalkKeepsWhatIsQueuedWhenItsScanStops: a scan that stops
// early because S3 does not answer must not end the walk with entries
// queued meanwhile left behind (a listing's held HEADs, which it queues
// when it ends): they are handed out once S3 answers again.
func TestHeaderWalkKeepsWhatIsQueuedWhenItsScanStops(t *testing.T) {
	var rs *reachStore
	e := newEnv(t, func(o *Options) {
		rs = &reachStore{Store: o.Store.(*memstore.Store)}
		o.Store = rs
	})
	for i := 0; i < 4; i++ {
		e.store.PutObject(fmt.Sprintf("d/f%d", i), []byte("x"), s3backend.Metadata{"mode": "33152"})
	}
	d := e.mustLookup("d")
	e.readDir("d")
	e.c.waitHeaderWalks()
	f1, err := e.c.childOf(d.Ino, "f1")
	if err != nil {
		t.Fatal(err)
	}
	// As if its HEAD had failed: its headers are to be read again.
	e.c.mutateClean(f1.Ino, f1.RemoteKey, f1.ETag, func(n *Inode) { n.AttrsKnown = false })
	if _, ok := e.c.Listed(d.Ino, "f1"); ok {
		t.Fatal("f1's headers still count as read")
	}
	e.store.ResetCounts()
	var once sync.Once
	testHookScanned = func(dir uint64) {
		once.Do(func() {
			e.c.queueHeads(dir, []uint64{f1.Ino}, false)
			rs.down.Store(false)
		})
	}
	t.Cleanup(func() { testHookScanned = nil })
	rs.down.Store(true) // the scan stops at once
	e.c.queueHeads(d.Ino, nil, true)
	e.c.waitHeaderWalks()
	if c := e.store.Counts(); c["Head"] != 1 {
		t.Fatalf("%d HEADs after the scan stopped, want 1 (f1, queued meanwhile)", c["Head"])
	}
	if a, ok := e.c.Listed(d.Ino, "f1"); !ok || a.Mode != 0o100600 {
		t.Fatalf("f1: headers read %v, mode %o, want its headers' 100600", ok, a.Mode)
	}
}

func TestSkipHeadersCostsListOnly(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.SkipHeaders = true })
	for i := 0; i < 50; i++ {
		e.store.PutObject(fmt.Sprintf("f%d", i), []byte("x"), s3backend.Metadata{"mode": "33261"})
	}
	e.store.ResetCounts()
	e.readDir("")
	if c := e.store.Counts(); c["List"] != 1 || len(c) != 1 {
		t.Fatalf("cost %v, want one LIST", c)
	}
	if a := e.mustLookup("f1"); a.Mode != syscall.S_IFREG|0o644 {
		t.Fatalf("headers not ignored: mode %o", a.Mode)
	}
}

// TestTTL: a change made in the bucket shows after the TTL and not before.
func TestTTL(t *testing.T) {
	e := newEnv(t, nil)
	e.store.PutObject("f", []byte("one"), nil)
	if got := string(e.read("f")); got != "one" {
		t.Fatalf("f = %q", got)
	}
	e.readDir("") // the listing is fresh for the TTL, as the kernel's entries are
	e.store.PutObject("f", []byte("two!"), nil)
	e.store.PutObject("g", []byte("new"), nil)
	e.clock.Advance(500 * time.Millisecond)
	if got := string(e.read("f")); got != "one" {
		t.Fatalf("before the TTL f = %q, want the cached %q", got, "one")
	}
	if _, err := e.lookup("g"); !errors.Is(err, ErrNotExist) {
		t.Fatalf("before the TTL g: %v, want ENOENT", err)
	}
	e.clock.Advance(600 * time.Millisecond)
	if got := string(e.read("f")); got != "two!" {
		t.Fatalf("after the TTL f = %q", got)
	}
	if _, err := e.lookup("g"); err != nil {
		t.Fatalf("after the TTL g: %v", err)
	}
	e.store.DeleteObject("g")
	e.clock.Advance(2 * time.Second)
	if names := e.readDir(""); len(names) != 1 || names[0] != "f" {
		t.Fatalf("after delete: %v", names)
	}
}

func TestWriteKinds(t *testing.T) {
	e := newEnv(t, nil)
	bs := int(e.opt.BlockSize)
	// create + write
	want := randBytes(3*bs + 100)
	e.write("a", 0, want)
	// overwrite in the middle, crossing a block boundary
	patch := randBytes(bs)
	e.write("a", int64(bs/2), patch)
	copy(want[bs/2:], patch)
	// append
	tail := []byte("appended")
	e.write("a", int64(len(want)), tail)
	want = append(want, tail...)
	// sparse: write far past the end
	e.write("sparse", int64(5*bs+7), []byte("x"))
	sparse := make([]byte, 5*bs+8)
	sparse[5*bs+7] = 'x'
	e.drain()
	if !bytes.Equal(e.object("a"), want) {
		t.Fatalf("object a differs")
	}
	if !bytes.Equal(e.object("sparse"), sparse) {
		t.Fatalf("object sparse differs")
	}
	// truncate shrink into a block, then grow: the tail reads as zeros
	a := e.mustLookup("a")
	if err := e.c.Truncate(ctx, a.Ino, int64(bs+10)); err != nil {
		t.Fatal(err)
	}
	if err := e.c.Truncate(ctx, a.Ino, int64(2*bs)); err != nil {
		t.Fatal(err)
	}
	want = append(want[:bs+10:bs+10], make([]byte, bs-10)...)
	if got := e.read("a"); !bytes.Equal(got, want) {
		t.Fatalf("read after truncate differs (len %d want %d)", len(got), len(want))
	}
	e.drain()
	if !bytes.Equal(e.object("a"), want) {
		t.Fatalf("object a after truncate differs")
	}
	// empty file
	h := e.openW("empty")
	e.close(h)
	e.drain()
	if got := e.object("empty"); len(got) != 0 {
		t.Fatalf("empty = %d bytes", len(got))
	}
	_, info, _ := e.store.Object("a")
	if info.Metadata["mode"] != "33188" || info.Metadata["uid"] != "1000" {
		t.Fatalf("headers of a: %v", info.Metadata)
	}
}

func TestNamespaceChanges(t *testing.T) {
	e := newEnv(t, nil)
	e.store.PutObject("dir/x", []byte("x"), nil)
	e.store.PutObject("dir/sub/y", []byte("y"), nil)
	e.store.PutObject("old", []byte("old content"), nil)
	e.write("tmp", 0, []byte("new content"))
	e.readDir("") // the kernel looks names up before it renames them
	root := RootIno
	// rename a new file over an existing object
	if err := e.c.Rename(ctx, root, "tmp", root, "old", 0); err != nil {
		t.Fatal(err)
	}
	// rename a directory with its subtree
	if err := e.c.Rename(ctx, root, "dir", root, "moved", 0); err != nil {
		t.Fatal(err)
	}
	// mkdir, symlink, chmod
	if _, err := e.c.Mkdir(ctx, root, "empty", 0o750, 1, 2); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.Symlink(ctx, root, "link", "old", 1, 2); err != nil {
		t.Fatal(err)
	}
	mode := uint32(0o600)
	if _, err := e.c.Setattr(ctx, e.mustLookup("moved/x").Ino, SetAttr{Mode: &mode}); err != nil {
		t.Fatal(err)
	}
	e.drain()
	eqKeys(t, e.keys(), "empty/", "link", "moved/", "moved/sub/", "moved/sub/y", "moved/x", "old")
	if got := string(e.object("old")); got != "new content" {
		t.Fatalf("old = %q", got)
	}
	if got := string(e.object("link")); got != "old" {
		t.Fatalf("link body = %q", got)
	}
	_, info, _ := e.store.Object("moved/x")
	if info.Metadata["mode"] != "33152" {
		t.Fatalf("moved/x mode header %v", info.Metadata)
	}
	_, info, _ = e.store.Object("empty/")
	if info.Metadata["mode"] != "16872" || info.Metadata["uid"] != "1" {
		t.Fatalf("empty/ headers %v", info.Metadata)
	}
	// rmdir of a non-empty dir fails; unlink then rmdir works
	if err := e.c.Rmdir(ctx, root, "moved"); !errors.Is(err, ErrNotEmpty) {
		t.Fatalf("rmdir non-empty: %v", err)
	}
	if err := e.c.Unlink(ctx, root, "moved"); !errors.Is(err, ErrIsDir) {
		t.Fatalf("unlink dir: %v", err)
	}
	sub := e.mustLookup("moved/sub").Ino
	if err := e.c.Unlink(ctx, sub, "y"); err != nil {
		t.Fatal(err)
	}
	if err := e.c.Rmdir(ctx, e.mustLookup("moved").Ino, "sub"); err != nil {
		t.Fatal(err)
	}
	if err := e.c.Rename(ctx, root, "moved", e.mustLookup("empty").Ino, "inside", 0); err != nil {
		t.Fatal(err)
	}
	if err := e.c.Rename(ctx, root, "empty", e.mustLookup("empty/inside").Ino, "loop", 0); !errors.Is(err, ErrInvalid) {
		t.Fatalf("rename into own subtree: %v", err)
	}
	e.drain()
	eqKeys(t, e.keys(), "empty/", "empty/inside/", "empty/inside/x", "link", "old")
}

// TestRenameOverAbsorbsDelete: replacing a file by rename costs one
// conditional write, not a delete and a write.
func TestRenameOverAbsorbsDelete(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.WriteBackDelay = time.Hour })
	e.store.PutObject("config", []byte("v1"), nil)
	e.mustLookup("config")
	e.write("config.tmp", 0, []byte("v2"))
	if err := e.c.Rename(ctx, RootIno, "config.tmp", RootIno, "config", 0); err != nil {
		t.Fatal(err)
	}
	e.store.ResetCounts()
	e.drain()
	if got := string(e.object("config")); got != "v2" {
		t.Fatalf("config = %q", got)
	}
	if c := e.store.Counts(); c["Delete"] != 0 || c["Put"] != 1 {
		t.Fatalf("requests %v, want one Put and no Delete", c)
	}
	eqKeys(t, e.keys(), "config")
}

// TestMultipartPartCopy: appending to a large object re-sends only the
// part that changed.
func TestMultipartPartCopy(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.WriteBackDelay = time.Hour })
	base := randBytes(16 << 20)
	e.store.PutObject("log", base, nil)
	tail := []byte("one more line\n")
	e.write("log", int64(len(base)), tail)
	e.store.ResetCounts()
	e.drain()
	if got := e.object("log"); !bytes.Equal(got, append(base, tail...)) {
		t.Fatalf("content differs")
	}
	c := e.store.Counts()
	if c["UploadPartCopy"] != 3 || c["UploadPart"] != 1 || c["CompleteMultipart"] != 1 {
		t.Fatalf("requests %v, want 3 part copies and 1 part upload", c)
	}
	if e.store.Uploads() != 0 {
		t.Fatalf("%d multipart uploads left open", e.store.Uploads())
	}
}

func TestConflictKeepsBoth(t *testing.T) {
	// Nothing is uploaded before the fsync: the other writer must get in
	// between the write and the upload.
	e := newEnv(t, func(o *Options) { o.WriteBackDelay = time.Hour })
	e.logs.allow("conflict")
	e.store.PutObject("shared", []byte("original"), nil)
	if got := string(e.read("shared")); got != "original" {
		t.Fatal(got)
	}
	h := e.openW("shared")
	if _, err := h.Write(ctx, []byte("LOCAL   "), 0); err != nil {
		t.Fatal(err)
	}
	e.store.PutObject("shared", []byte("REMOTE version"), nil)
	if err := h.Fsync(ctx); err != nil {
		t.Fatalf("fsync of the losing writer: %v", err)
	}
	e.close(h)
	e.drain()
	if got := string(e.object("shared")); got != "REMOTE version" {
		t.Fatalf("shared = %q, want the other writer's", got)
	}
	var conflict string
	for _, k := range e.keys() {
		if strings.HasPrefix(k, "shared.conflict-testhost-") {
			conflict = k
		}
	}
	if conflict == "" {
		t.Fatalf("no conflict copy: %v", e.keys())
	}
	if got := string(e.object(conflict)); got != "LOCAL   " {
		t.Fatalf("conflict copy = %q", got)
	}
	if e.c.Stats().Conflicts.Load() != 1 {
		t.Fatalf("conflicts = %d", e.c.Stats().Conflicts.Load())
	}
	e.clock.Advance(2 * time.Second)
	if got := string(e.read("shared")); got != "REMOTE version" {
		t.Fatalf("local view of shared = %q", got)
	}
}

// TestCrashResume: data closed but not uploaded survives a restart and is
// uploaded by the next mount.
func TestCrashResume(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.WriteBackDelay = time.Hour })
	big := randBytes(7 << 20)
	e.write("big", 0, big)
	e.write("small", 0, []byte("small"))
	if err := e.c.Unlink(ctx, RootIno, "small"); err != nil {
		t.Fatal(err)
	}
	e.write("small", 0, []byte("again"))
	if len(e.keys()) != 0 {
		t.Fatalf("uploaded before the delay: %v", e.keys())
	}
	e.reopen()
	e.drain()
	if !bytes.Equal(e.object("big"), big) {
		t.Fatal("big differs after resume")
	}
	if got := string(e.object("small")); got != "again" {
		t.Fatalf("small = %q", got)
	}
}

// TestUploadRetried: failed uploads are retried, fsync reports the
// failure, nothing is dropped.
func TestUploadRetried(t *testing.T) {
	e := newEnv(t, nil)
	e.logs.allow("upload failed; will retry")
	// S3 refuses every PUT until the fsync has seen the failure: a fixed
	// number of failures could all be spent by background retries before
	// the fsync starts, and the fsync would then rightly succeed.
	var failing atomic.Bool
	var puts atomic.Int32
	failing.Store(true)
	e.store.SetHook(func(op, key string) error {
		if op == "Put" {
			puts.Add(1)
			if failing.Load() {
				return &s3backend.Error{Op: op, Key: key, Kind: s3backend.ErrUnavailable, Cause: errors.New("injected")}
			}
		}
		return nil
	})
	h := e.openW("f")
	if _, err := h.Write(ctx, []byte("data"), 0); err != nil {
		t.Fatal(err)
	}
	if err := h.Fsync(ctx); !errors.Is(err, ErrUploadFailed) {
		t.Fatalf("fsync with S3 failing: %v, want ErrUploadFailed", err)
	}
	failing.Store(false)
	e.close(h)
	e.drain()
	if got := string(e.object("f")); got != "data" {
		t.Fatalf("f = %q", got)
	}
	if n := puts.Load(); n < 2 {
		t.Fatalf("%d PUTs: the failed upload was not retried", n)
	}
}

// TestCacheLimit: reading more than the cache holds keeps the cache within
// its size and returns the right bytes.
func TestCacheLimit(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.CacheSize = 16 * o.BlockSize })
	data := randBytes(int(40 * e.opt.BlockSize))
	e.store.PutObject("big", data, nil)
	if !bytes.Equal(e.read("big"), data) {
		t.Fatal("content differs")
	}
	clean, dirty := e.c.Usage()
	if clean+dirty > e.opt.CacheSize {
		t.Fatalf("cache holds %d bytes, limit %d", clean+dirty, e.opt.CacheSize)
	}
	if !bytes.Equal(e.read("big"), data) {
		t.Fatal("content differs on the second read")
	}
}

// TestWriteDuringUpload: writes that land while an upload runs are in the
// next upload, never lost, never mixed into the running one.
func TestWriteDuringUpload(t *testing.T) {
	e := newEnv(t, nil)
	started := make(chan struct{}, 1)
	finish := make(chan struct{})
	var once sync.Once
	e.store.SetHook(func(op, key string) error {
		if op == "Put" && key == "f" {
			blocked := false
			once.Do(func() { blocked = true })
			if blocked {
				started <- struct{}{}
				<-finish
			}
		}
		return nil
	})
	h := e.openW("f")
	h.Write(ctx, []byte("first version"), 0)
	e.close(h)
	<-started
	h = e.openW("f")
	h.Write(ctx, []byte("SECOND"), 0)
	e.close(h)
	close(finish)
	e.drain()
	if got := string(e.object("f")); got != "SECONDversion" { // "first " overwritten
		t.Fatalf("f = %q", got)
	}
}

// TestUnlinkedOpenFile keeps reading and writing after unlink until the
// last close, and never uploads it.
func TestUnlinkedOpenFile(t *testing.T) {
	e := newEnv(t, nil)
	e.write("gone", 0, []byte("uploaded"))
	e.drain()
	a := e.mustLookup("gone")
	h, _, err := e.c.Open(ctx, a.Ino, true, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.c.Unlink(ctx, RootIno, "gone"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Write(ctx, []byte("UP"), 0); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 20)
	n, err := h.Read(ctx, buf, 0)
	if err != nil || string(buf[:n]) != "UPloaded" {
		t.Fatalf("read after unlink = %q, %v", buf[:n], err)
	}
	e.close(h)
	e.drain()
	eqKeys(t, e.keys())
}

func TestDirRenameMany(t *testing.T) {
	e := newEnv(t, nil)
	for i := 0; i < 300; i++ {
		e.store.PutObject(fmt.Sprintf("src/f%03d", i), []byte(fmt.Sprint(i)), nil)
	}
	e.store.PutObject("src/deep/er/x", []byte("x"), nil)
	e.mustLookup("src")
	if err := e.c.Rename(ctx, RootIno, "src", RootIno, "dst", 0); err != nil {
		t.Fatal(err)
	}
	if got := len(e.readDir("dst")); got != 301 {
		t.Fatalf("dst has %d entries", got)
	}
	e.drain()
	keys := e.keys()
	if len(keys) != 304 { // 301 objects + markers dst/, dst/deep/, dst/deep/er/
		t.Fatalf("%d keys: %v", len(keys), keys[:min(10, len(keys))])
	}
	for _, k := range keys {
		if !strings.HasPrefix(k, "dst/") {
			t.Fatalf("key left behind: %s", k)
		}
	}
	if got := string(e.object("dst/f123")); got != "123" {
		t.Fatalf("dst/f123 = %q", got)
	}
}

func TestReadOnly(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.ReadOnly = true })
	e.store.PutObject("f", []byte("x"), nil)
	if _, err := e.c.Create(ctx, RootIno, "g", 0o644, 0, 0); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("create: %v", err)
	}
	a := e.mustLookup("f")
	if _, _, err := e.c.Open(ctx, a.Ino, true, false); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("open for write: %v", err)
	}
	if err := e.c.Unlink(ctx, RootIno, "f"); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("unlink: %v", err)
	}
}

var _ = io.EOF
var _ = os.Getpid

// lostAnswers lets writes land in S3 and then reports a network error to
// the caller, n times: the "request succeeded, answer lost" case.
type lostAnswers struct {
	s3backend.ObjectStore
	n atomic.Int32
}

func (l *lostAnswers) Put(ctx context.Context, in s3backend.PutInput) (string, error) {
	etag, err := l.ObjectStore.Put(ctx, in)
	if err == nil && l.n.Add(-1) >= 0 {
		return "", &s3backend.Error{Op: "PutObject", Key: in.Key, Kind: s3backend.ErrUnavailable, Cause: errors.New("answer lost")}
	}
	return etag, err
}

// TestLostAnswersAreOurs: uploads whose answers were lost are recognised as
// our own, however many; they never turn into a conflict.
func TestLostAnswersAreOurs(t *testing.T) {
	var wrapped *lostAnswers
	e := newEnv(t, func(o *Options) {
		wrapped = &lostAnswers{ObjectStore: o.Store}
		o.Store = wrapped
	})
	e.logs.allow("upload failed; will retry")
	e.write("f", 0, []byte("version 1"))
	e.drain()
	wrapped.n.Store(10)
	for i := 2; i <= 4; i++ {
		e.write("f", 0, []byte(fmt.Sprintf("version %d", i)))
	}
	e.drain()
	if got := string(e.object("f")); got != "version 4" {
		t.Fatalf("f = %q", got)
	}
	if n := e.c.Stats().Conflicts.Load(); n != 0 {
		t.Fatalf("%d conflicts from our own lost answers; keys %v", n, e.keys())
	}
	eqKeys(t, e.keys(), "f")
}

// TestNamesWithoutWaitingForHeaders (issue 17): a readdir of a cold
// directory answers from the LIST; the x-amz-meta-* headers are read in
// the background, and a stat waits for its own entry's HEAD only. Until
// an entry's headers are read its type is unknown (it may be a symlink or
// a FIFO): the listing says DT_UNKNOWN rather than guess. Before, the
// readdir waited for a HEAD per object: 100 000 of them before ls -f.
func TestNamesWithoutWaitingForHeaders(t *testing.T) {
	e := newEnv(t, nil)
	for i := 0; i < 300; i++ {
		e.store.PutObject(fmt.Sprintf("d/f%03d", i), []byte("x"), s3backend.Metadata{"mode": "33152", "uid": "7"})
	}
	e.store.PutObject("d/link", []byte("f000"), s3backend.Metadata{"mode": "41471"})
	e.mustLookup("d")
	// HEADs wait until the test lets them go, except those of one file.
	release := make(chan struct{})
	e.store.SetHook(func(op, key string) error {
		if op == "Head" && key != "d/f123" {
			<-release
		}
		return nil
	})
	released := false
	defer func() {
		if !released {
			close(release)
		}
	}()
	a := e.mustLookup("d")
	r, err := e.c.OpenDir(ctx, a.Ino)
	if err != nil {
		t.Fatal(err)
	}
	n, unknown := 0, 0
	for {
		de, ok, err := r.Next()
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			break
		}
		n++
		if de.Mode == 0 {
			unknown++
		}
	}
	if n != 301 {
		t.Fatalf("readdir gave %d names while the HEADs wait, want 301", n)
	}
	if unknown != 301 {
		t.Fatalf("%d of 301 entries have a type before their headers were read", 301-unknown)
	}
	ver := e.c.DirVersion(a.Ino)
	// A stat of one entry waits for that entry's HEAD only.
	if got := e.mustLookup("d/f123"); got.Mode != 0o100600 || got.UID != 7 {
		t.Fatalf("stat of d/f123: mode %o uid %d, want its headers' 100600 and 7", got.Mode, got.UID)
	}
	close(release)
	released = true
	e.c.waitHeaderWalks()
	if got := e.mustLookup("d/link"); got.Mode&0o170000 != 0o120000 {
		t.Fatalf("d/link after its headers: mode %o, want a symlink", got.Mode)
	}
	// Learning types changed no name: the kernel may keep the listing it
	// read (DT_UNKNOWN is true of every entry), so a warm ls reads no
	// directory in the daemon.
	if v := e.c.DirVersion(a.Ino); v != ver {
		t.Fatalf("the directory's names version moved from %d to %d as headers were learned", ver, v)
	}
	// The listing now knows the types.
	r, err = e.c.OpenDir(ctx, a.Ino)
	if err != nil {
		t.Fatal(err)
	}
	for {
		de, ok, err := r.Next()
		if err != nil || !ok {
			break
		}
		if de.Mode == 0 || (de.Name == "link" && de.Mode != 0o120000) {
			t.Fatalf("%s: type %o after its headers were read", de.Name, de.Mode)
		}
	}
}

// Stats racing the background header walk: each object's headers are
// read once, not once by the walk and again by a stat that asked just
// after the walk's HEAD ended (the cold ls -l of 2000 objects cost 2003
// HEADs).
func TestHeadersReadOnceUnderStats(t *testing.T) {
	e := newEnv(t, nil)
	const n = 400
	for i := 0; i < n; i++ {
		e.store.PutObject(fmt.Sprintf("d/f%03d", i), []byte("x"), nil)
	}
	e.mustLookup("d")
	e.store.ResetCounts()
	e.readDir("d")
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := w; i < n; i += 8 {
				if _, err := e.lookup(fmt.Sprintf("d/f%03d", i)); err != nil {
					t.Error(err)
				}
			}
		}(w)
	}
	wg.Wait()
	e.c.waitHeaderWalks()
	if c := e.store.Counts(); c["Head"] > n+1 {
		t.Fatalf("%d HEADs for %d objects (and the directory's marker)", c["Head"], n)
	}
}

// Stats of the names of a big directory in order, once its listing is
// older than the TTL (ls -l, find): each costs S3 a request only at the
// start of a window of names, not a HEAD and a LIST per name; and what
// changed in S3 meanwhile is seen: a new version, a deleted name.
func TestStatsInOrderOfBigDirectoryAskS3PerWindow(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.SkipHeaders = true }) // the header walk would HEAD each name
	const n = 2500
	for i := 0; i < n; i++ {
		e.store.PutObject(fmt.Sprintf("d/f%04d", i), []byte("x"), nil)
	}
	e.readDir("d")
	e.clock.Advance(2 * time.Second) // the listing and every entry are stale
	e.store.PutObject("d/f1500", []byte("a new version"), nil)
	e.store.DeleteObject("d/f2000")
	e.store.ResetCounts()
	for i := 0; i < n; i++ {
		p := fmt.Sprintf("d/f%04d", i)
		a, err := e.lookup(p)
		switch {
		case i == 2000:
			if !errors.Is(err, ErrNotExist) {
				t.Fatalf("%s, deleted in S3: %v, want ErrNotExist", p, err)
			}
		case err != nil:
			t.Fatalf("%s: %v", p, err)
		case i == 1500 && a.Size != int64(len("a new version")):
			t.Fatalf("%s: size %d, want the new version's", p, a.Size)
		}
	}
	c := e.store.Counts()
	t.Logf("%d stats: %v", n, c)
	if c["List"] > 8 || c["Head"] > 8 {
		t.Fatalf("stats of %d names in order cost %v, want a few windows", n, c)
	}
}

// has reports whether a line logged so far contains s.
func (l *logCapture) has(s string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range l.lines {
		if strings.Contains(line, s) {
			return true
		}
	}
	return false
}
