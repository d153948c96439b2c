package e2e

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/keelfs/keelfs/test/harness"
)

// ptMount mounts with metrics, and returns a function that counts the
// FUSE READ requests keelfs answered so far, and the metrics address.
func ptMount(t *testing.T, srv *harness.Server, b string, args ...string) (*harness.Mount, func() float64, string) {
	t.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", harness.FreePort(t))
	m := srv.Mount(t, b, harness.MountOptions{Args: append([]string{"--metrics-addr", addr}, args...)})
	reads := func() float64 {
		return metricSum(scrape(t, "http://"+addr+"/metrics"), "keelfs_fuse_ops_total", `op="read"`)
	}
	return m, reads, addr
}

// waitReleased waits until the kernel has sent RELEASE for every file
// open keelfs granted. It sends it after close(2) has returned, on its
// own time: an open that comes first still finds the closed one, which
// used the page cache or wrote around it, so it cannot start a
// passthrough epoch and reads through keelfs (correctly). Tests that
// count the READs of a reader wait for that first.
func waitReleased(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s := scrape(t, "http://"+addr+"/metrics")
		opened := metricSum(s, "keelfs_fuse_ops_total", `op="open"`, `result="ok"`) +
			metricSum(s, "keelfs_fuse_ops_total", `op="create"`, `result="ok"`)
		released := metricSum(s, "keelfs_fuse_ops_total", `op="release"`)
		if opened == released {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 10 s, %v file opens and %v releases: an open the test closed was never released", opened, released)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestPassthroughReadsCachedFile (issue 17): a file wholly in the cache is
// read, and mapped, by the kernel from its backing file: keelfs answers no
// READ for it. With --passthrough=false the same reads come to keelfs,
// which shows the count can see them.
func TestPassthroughReadsCachedFile(t *testing.T) {
	srv := harness.StartServer(t)
	for _, on := range []bool{true, false} {
		t.Run(fmt.Sprintf("passthrough=%v", on), func(t *testing.T) {
			b := srv.NewBucket(t)
			m, reads, addr := ptMount(t, srv, b, fmt.Sprintf("--passthrough=%v", on))
			data := randBytes(8<<20 + 123)
			if err := os.WriteFile(m.Path("f"), data, 0o644); err != nil {
				t.Fatal(err)
			}
			waitReleased(t, addr)
			before := reads()
			got, err := os.ReadFile(m.Path("f"))
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("read back: %d bytes, %v", len(got), err)
			}
			f, err := os.Open(m.Path("f"))
			if err != nil {
				t.Fatal(err)
			}
			mapped, err := syscall.Mmap(int(f.Fd()), 0, len(data), syscall.PROT_READ, syscall.MAP_SHARED)
			if err != nil {
				t.Fatalf("mmap: %v", err)
			}
			same := bytes.Equal(mapped, data)
			if err := syscall.Munmap(mapped); err != nil {
				t.Fatal(err)
			}
			f.Close()
			if !same {
				t.Fatal("the mapping holds other bytes than the file")
			}
			n := reads() - before
			t.Logf("READ requests for a read and a mapping of 8 MiB: %v", n)
			if pt := metricSum(scrape(t, "http://"+addr+"/metrics"), "keelfs_passthrough_opens_total"); on != (pt > 0) {
				t.Errorf("keelfs_passthrough_opens_total = %v with --passthrough=%v", pt, on)
			}
			if on && n != 0 {
				t.Errorf("keelfs answered %v READs for a file wholly in its cache, want 0 (passthrough)", n)
			}
			if !on && n == 0 {
				t.Errorf("keelfs answered no READ with --passthrough=false: the count cannot tell")
			}
			m.Flush()
			if got, _ := srv.Get(t, b, "f"); !bytes.Equal(got, data) {
				t.Errorf("S3 holds %d bytes, want the %d written", len(got), len(data))
			}
		})
	}
}

// TestPassthroughReaderSeesWrites: while a reader passes through, a
// writer's write(2)s reach keelfs (and S3) and the reader sees them; a
// writer's shared mapping writes to the backing file, and keelfs takes
// that in when the writer closes, so it reaches S3 too.
func TestPassthroughReaderSeesWrites(t *testing.T) {
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	m, reads, addr := ptMount(t, srv, b)
	m.AllowLog(`took in what a writable mapping wrote`)
	base := randBytes(1 << 20)
	if err := os.WriteFile(m.Path("log"), base, 0o644); err != nil {
		t.Fatal(err)
	}
	// Its upload lands now, not while the reader opens. Once, under the
	// load of the whole suite, the reader's open read through keelfs
	// instead: most likely it came before the writer's RELEASE, which
	// waitReleased now waits for.
	m.Flush()
	waitReleased(t, addr)
	r, err := os.Open(m.Path("log"))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	before := reads()
	head := make([]byte, 4096)
	if _, err := r.ReadAt(head, 0); err != nil || !bytes.Equal(head, base[:4096]) {
		t.Fatalf("first read: %v", err)
	}
	if n := reads() - before; n != 0 {
		t.Fatalf("the reader's read came to keelfs (%v READs): no passthrough to test", n)
	}

	// An appender, as a shell's >> does.
	line := []byte("one more line\n")
	w, err := os.OpenFile(m.Path("log"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatalf("open for append while a reader passes through: %v", err)
	}
	if _, err := w.Write(line); err != nil {
		t.Fatalf("append: %v", err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(line))
	if n, err := r.ReadAt(got, int64(len(base))); n != len(line) || !bytes.Equal(got, line) {
		t.Fatalf("the reader read %q (%d bytes, %v) where the line was appended", got[:n], n, err)
	}

	// A writer's shared mapping.
	rw, err := os.OpenFile(m.Path("log"), os.O_RDWR, 0)
	if err != nil {
		t.Fatalf("open for writing while a reader passes through: %v", err)
	}
	mapped, err := syscall.Mmap(int(rw.Fd()), 0, 8192, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
	if err != nil {
		t.Fatalf("writable mmap: %v", err)
	}
	copy(mapped[4096:], "written through a mapping")
	if err := syscall.Munmap(mapped); err != nil {
		t.Fatal(err)
	}
	if err := rw.Close(); err != nil {
		t.Fatal(err)
	}
	want := append(append([]byte{}, base...), line...)
	copy(want[4096:], "written through a mapping")
	if _, err := r.ReadAt(head, 4096); err != nil || !bytes.Equal(head, want[4096:8192]) {
		t.Fatalf("the reader does not see what the mapping wrote: %q", head[:32])
	}
	r.Close()
	// A fresh open, through keelfs's own content.
	if got, err := os.ReadFile(m.Path("log")); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("after the writers closed, the file reads %d bytes (%v), want %d with both changes", len(got), err, len(want))
	}
	m.Flush()
	if got, _ := srv.Get(t, b, "log"); !bytes.Equal(got, want) {
		t.Fatalf("S3 holds %d bytes; the append and the mapping's write must both be there", len(got))
	}
}

// TestPassthroughNeverServesReplacedVersion: another client replaces the
// object; once the TTL has passed, an open revalidates and reads the new
// version, not the backing file of the old one.
func TestPassthroughNeverServesReplacedVersion(t *testing.T) {
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	m, reads, addr := ptMount(t, srv, b, "--metadata-ttl", "1s")
	old := randBytes(2 << 20)
	if err := os.WriteFile(m.Path("f"), old, 0o644); err != nil {
		t.Fatal(err)
	}
	m.Flush()
	if got, err := os.ReadFile(m.Path("f")); err != nil || !bytes.Equal(got, old) {
		t.Fatalf("read: %v", err)
	}
	newer := randBytes(2<<20 + 7)
	srv.Put(t, b, "f", newer, nil)
	time.Sleep(1500 * time.Millisecond) // past --metadata-ttl
	before := reads()
	if got, err := os.ReadFile(m.Path("f")); err != nil || !bytes.Equal(got, newer) {
		t.Fatalf("after another client replaced it: %d bytes (%v), want the new %d", len(got), err, len(newer))
	}
	if n := reads() - before; n == 0 {
		t.Fatal("the new version was read without keelfs: from the old version's backing file?")
	}
	// Now cached: the next open passes through again, with the new bytes.
	waitReleased(t, addr)
	before = reads()
	if got, err := os.ReadFile(m.Path("f")); err != nil || !bytes.Equal(got, newer) {
		t.Fatalf("second read of the new version: %v", err)
	}
	if n := reads() - before; n != 0 {
		t.Errorf("the new version, now cached, was read through keelfs (%v READs)", n)
	}
}

// TestPassthroughOffWithEncryptedCache: with cache encryption, no file is
// passed through (the kernel would read plaintext from the disk), the
// mount says so, and reads work.
func TestPassthroughOffWithEncryptedCache(t *testing.T) {
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	key := t.TempDir() + "/key"
	if err := os.WriteFile(key, []byte("0123456789abcdef0123456789abcdef"), 0o600); err != nil {
		t.Fatal(err)
	}
	m, reads, _ := ptMount(t, srv, b, "--cache-encryption-key-file", key)
	data := randBytes(1 << 20)
	if err := os.WriteFile(m.Path("f"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	before := reads()
	if got, err := os.ReadFile(m.Path("f")); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read: %v", err)
	}
	if reads() == before {
		t.Error("a file of an encrypted cache was read without keelfs")
	}
	if !strings.Contains(m.Log(), "passthrough is off") {
		t.Error("the log does not say passthrough is off")
	}
}

// TestPassthroughFallsBackWhenTheKernelRefuses: the kernel refuses a
// backing file on a stacked filesystem (here the cache directory is on
// overlayfs, as a container's root is). The open that asked falls back
// to reads through keelfs, the mount says once that passthrough is off,
// and later opens do not try again.
func TestPassthroughFallsBackWhenTheKernelRefuses(t *testing.T) {
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	base := t.TempDir()
	for _, d := range []string{"lower", "upper", "work", "merged"} {
		if err := os.Mkdir(base+"/"+d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	opts := fmt.Sprintf("lowerdir=%s/lower,upperdir=%s/upper,workdir=%s/work", base, base, base)
	if err := syscall.Mount("overlay", base+"/merged", "overlay", 0, opts); err != nil {
		t.Fatalf("mount overlayfs for the cache directory: %v", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(base+"/merged", 0); err != nil {
			t.Errorf("unmount overlayfs: %v", err)
		}
	})
	addr := fmt.Sprintf("127.0.0.1:%d", harness.FreePort(t))
	m := srv.Mount(t, b, harness.MountOptions{CacheDir: base + "/merged", Args: []string{"--metrics-addr", addr, "--debug"}})
	// Registered before the keelfs mount, so cleaned up after it.
	reads := func() float64 {
		return metricSum(scrape(t, "http://"+addr+"/metrics"), "keelfs_fuse_ops_total", `op="read"`)
	}
	data := randBytes(3 << 20)
	if err := os.WriteFile(m.Path("f"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		before := reads()
		if got, err := os.ReadFile(m.Path("f")); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("read %d: %d bytes, %v", i, len(got), err)
		}
		// The first read comes to keelfs; the kernel's page cache may
		// serve the next ones.
		if i == 0 && reads() == before {
			t.Fatal("the first read came to keelfs for no READ: it passed through?")
		}
	}
	// --debug logs each registration go-fuse makes for keelfs.
	if n := strings.Count(m.Log(), "BACKING_OPEN"); n != 1 {
		t.Errorf("%d backing files offered to the kernel, want 1: later opens must not try again", n)
	}
	if n := strings.Count(m.Log(), "passthrough is off for this mount"); n != 1 {
		t.Errorf("the log says %d times that passthrough is off, want once:\n%s", n, m.Log())
	}
}

// TestPassthroughODirectUnaligned: an O_DIRECT read with a buffer and an
// offset that are not aligned works on a FUSE file, so it must on a
// cached one too: such an open never reads the backing file (whose
// filesystem would answer EINVAL), whether or not a reader passes
// through at the time.
func TestPassthroughODirectUnaligned(t *testing.T) {
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	m, reads, addr := ptMount(t, srv, b)
	data := randBytes(1<<20 + 99)
	if err := os.WriteFile(m.Path("f"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	directRead := func(when string) {
		t.Helper()
		fd, err := syscall.Open(m.Path("f"), syscall.O_RDONLY|syscall.O_DIRECT, 0)
		if err != nil {
			t.Fatalf("%s: open O_DIRECT: %v", when, err)
		}
		defer syscall.Close(fd)
		buf := make([]byte, 10000)
		got := buf[3 : 3+5000] // not aligned to anything
		n, err := syscall.Pread(fd, got, 777)
		if err != nil || n != len(got) || !bytes.Equal(got, data[777:777+5000]) {
			t.Fatalf("%s: O_DIRECT read of 5000 bytes at 777 into an unaligned buffer: %d, %v", when, n, err)
		}
	}
	directRead("alone")
	waitReleased(t, addr)
	r, err := os.Open(m.Path("f"))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	before := reads()
	if _, err := r.ReadAt(make([]byte, 4096), 0); err != nil {
		t.Fatal(err)
	}
	if n := reads() - before; n != 0 {
		t.Fatalf("the plain reader came to keelfs (%v READs): no passthrough epoch to join", n)
	}
	directRead("beside a reader that passes through")
}

// TestPassthroughReadMovesAtime: a read that passes through never reaches
// keelfs, yet it moves atime as relatime says (the backing file's own
// atime tells keelfs it was read).
func TestPassthroughReadMovesAtime(t *testing.T) {
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	m, reads, addr := ptMount(t, srv, b)
	p := m.Path("f")
	if err := os.WriteFile(p, []byte("some content"), 0o644); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-48 * time.Hour).Truncate(time.Second)
	if err := os.Chtimes(p, old, old); err != nil {
		t.Fatal(err)
	}
	waitReleased(t, addr)
	start := time.Now()
	before := reads()
	if got, err := os.ReadFile(p); err != nil || string(got) != "some content" {
		t.Fatalf("read: %q, %v", got, err)
	}
	if n := reads() - before; n != 0 {
		t.Fatalf("the read came to keelfs (%v READs): it did not pass through", n)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	if at := time.Unix(st.Atim.Unix()); at.Before(start.Add(-time.Second)) {
		t.Fatalf("atime %v after a read that passed through; want it moved to about %v", at, start)
	}
}

// TestPassthroughFsyncCoversMapping: a writer that joins a passthrough
// epoch and writes through a shared mapping (msync goes to the backing
// file, not to keelfs) gets it into S3 with fsync on its descriptor,
// before any close, as it would without passthrough.
func TestPassthroughFsyncCoversMapping(t *testing.T) {
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	m, reads, addr := ptMount(t, srv, b)
	m.AllowLog(`took in what a writable mapping wrote`)
	base := randBytes(64 << 10)
	if err := os.WriteFile(m.Path("db"), base, 0o644); err != nil {
		t.Fatal(err)
	}
	waitReleased(t, addr)
	r, err := os.Open(m.Path("db"))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	before := reads()
	if _, err := r.ReadAt(make([]byte, 4096), 0); err != nil {
		t.Fatal(err)
	}
	if n := reads() - before; n != 0 {
		t.Fatalf("the reader came to keelfs (%v READs): no passthrough epoch to join", n)
	}
	rw, err := os.OpenFile(m.Path("db"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rw.Close()
	mapped, err := syscall.Mmap(int(rw.Fd()), 0, len(base), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
	if err != nil {
		t.Fatalf("writable mmap: %v", err)
	}
	defer syscall.Munmap(mapped)
	copy(mapped[8192:], "a page written through the mapping")
	if err := unix.Msync(mapped, unix.MS_SYNC); err != nil {
		t.Fatal(err)
	}
	if err := rw.Sync(); err != nil {
		t.Fatalf("fsync: %v", err)
	}
	want := append([]byte{}, base...)
	copy(want[8192:], "a page written through the mapping")
	if got, _ := srv.Get(t, b, "db"); !bytes.Equal(got, want) {
		t.Fatal("after fsync, S3 does not hold what the mapping wrote")
	}
}

// TestPassthroughMappingOutlivesReaders: a reader maps a passed-through
// file and closes it, keeping the mapping, as programs that map a file
// and close the descriptor do. A write(2) made through keelfs after that
// must show in the mapping at once, as on a local file system: the
// mapping is of the backing file, so keelfs must keep copying writes to
// it for as long as the mapping lasts.
func TestPassthroughMappingOutlivesReaders(t *testing.T) {
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	m, reads, addr := ptMount(t, srv, b)
	base := randBytes(1 << 20)
	if err := os.WriteFile(m.Path("shared"), base, 0o644); err != nil {
		t.Fatal(err)
	}
	m.Flush()
	waitReleased(t, addr)
	r, err := os.Open(m.Path("shared"))
	if err != nil {
		t.Fatal(err)
	}
	before := reads()
	if _, err := r.ReadAt(make([]byte, 4096), 0); err != nil {
		r.Close()
		t.Fatal(err)
	}
	if n := reads() - before; n != 0 {
		r.Close()
		t.Fatalf("the reader came to keelfs (%v READs): no passthrough to test", n)
	}
	mapped, err := syscall.Mmap(int(r.Fd()), 0, len(base), syscall.PROT_READ, syscall.MAP_SHARED)
	r.Close()
	if err != nil {
		t.Fatalf("mmap: %v", err)
	}
	defer syscall.Munmap(mapped)
	waitReleased(t, addr) // the epoch has ended; the mapping has not

	want := append([]byte{}, base...)
	for i, off := range []int{0, 300 << 10, len(base) - 100} {
		line := fmt.Sprintf("write %d, after the reader closed", i)
		w, err := os.OpenFile(m.Path("shared"), os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.WriteAt([]byte(line), int64(off)); err != nil {
			w.Close()
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		copy(want[off:], line)
		if got := string(mapped[off : off+len(line)]); got != line {
			t.Fatalf("write %d at %d: the mapping shows %q, want %q", i, off, got, line)
		}
		waitReleased(t, addr)
	}
	if !bytes.Equal(mapped, want[:len(mapped)]) {
		t.Fatal("the mapping holds other bytes than the file")
	}
	// A reader that opens now sees the same.
	if got, err := os.ReadFile(m.Path("shared")); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read after the writes: %d bytes, %v", len(got), err)
	}
	m.Flush()
	if got, _ := srv.Get(t, b, "shared"); !bytes.Equal(got, want) {
		t.Fatal("S3 does not hold the writes")
	}
}
