package e2e

import (
	"crypto/sha256"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/keelfs/keelfs/test/harness"
)

// ext4Image makes an ext4 filesystem of size bytes in an image file,
// loop-mounts it and returns the mount point. It is unmounted at cleanup,
// after every keelfs mount of the test has stopped (cleanups registered
// later run first).
func ext4Image(t *testing.T, size int64) string {
	t.Helper()
	dir := t.TempDir()
	img := filepath.Join(dir, "cache.img")
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	// -m 0: no blocks reserved for root (the daemon runs as root here).
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-m", "0", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4 (from e2fsprogs) for the cache image: %v\n%s", err, out)
	}
	if out, err := exec.Command("mount", "-o", "loop", img, mnt).CombinedOutput(); err != nil {
		t.Fatalf("loop-mount the cache image (needs root and a loop device): %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(mnt, 0); err != nil {
			t.Logf("unmount the cache image: %v; detaching it", err)
			syscall.Unmount(mnt, syscall.MNT_DETACH)
		}
	})
	return mnt
}

// fillResult is what the writers of one round saw.
type fillResult struct {
	mu       sync.Mutex
	acked    map[string][32]byte // closed with every write and the close successful
	enospc   int                 // calls that failed with ENOSPC
	eio      int                 // fsyncs that failed with EIO (allowed with S3 unreachable)
	bad      []string            // any other failure
	fsyncs   int                 // fsyncs that returned 0
	attempts int
}

func (r *fillResult) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return fmt.Sprintf("%d files tried, %d acknowledged, %d fsyncs returned 0, %d ENOSPC, %d fsync EIO, %d other failures",
		r.attempts, len(r.acked), r.fsyncs, r.enospc, r.eio, len(r.bad))
}

// fillCache runs writers in parallel on m; each writes 4 MiB files in
// 256 KiB writes until it has tried perWriter bytes or met three errors.
// Writers with an index below fsyncWriters fsync each file before its
// close. An fsync may fail with EIO only if eioOK (S3 unreachable); every
// other failure must be ENOSPC. The round must end within limit: a
// writer that waits forever for space is a failure.
func fillCache(t *testing.T, m *harness.Mount, round string, writers, fsyncWriters int, perWriter int64, eioOK bool, limit time.Duration) *fillResult {
	t.Helper()
	res := &fillResult{acked: map[string][32]byte{}}
	fail := func(what string, err error) {
		res.mu.Lock()
		defer res.mu.Unlock()
		switch {
		case isErrno(err, syscall.ENOSPC):
			res.enospc++
		case eioOK && strings.HasPrefix(what, "fsync") && isErrno(err, syscall.EIO):
			res.eio++
		default:
			res.bad = append(res.bad, fmt.Sprintf("%s: %v (%s)", what, err, errnoName(err)))
		}
	}
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var tried int64
			errs := 0
			for i := 0; tried < perWriter && errs < 3; i++ {
				name := fmt.Sprintf("%s-w%d-%03d", round, w, i)
				data := randBytes(4 << 20)
				tried += int64(len(data))
				res.mu.Lock()
				res.attempts++
				res.mu.Unlock()
				f, err := os.Create(m.Path(name))
				if err != nil {
					fail("create "+name, err)
					errs++
					continue
				}
				ok := true
				for off := 0; off < len(data) && ok; off += 256 << 10 {
					if _, err := f.Write(data[off : off+256<<10]); err != nil {
						fail(fmt.Sprintf("write %s at %d", name, off), err)
						ok = false
					}
				}
				if ok && w < fsyncWriters {
					if err := f.Sync(); err != nil {
						fail("fsync "+name, err)
					} else {
						res.mu.Lock()
						res.fsyncs++
						res.mu.Unlock()
					}
				}
				if err := f.Close(); err != nil {
					fail("close "+name, err)
					ok = false
				}
				if !ok {
					errs++
					continue
				}
				res.mu.Lock()
				res.acked[name] = sha256.Sum256(data)
				res.mu.Unlock()
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(limit):
		t.Fatalf("round %s: writers still blocked %v after they started (%s): a full cache must give ENOSPC, not a hang",
			round, limit, res)
	}
	return res
}

// daemonAlive fails the test if the daemon died or its log shows a crash.
func daemonAlive(t *testing.T, m *harness.Mount, when string) {
	t.Helper()
	log := m.Log()
	crash := ""
	if loc := crashSigns.FindStringIndex(log); loc != nil {
		crash = log[max(0, loc[0]-300):min(len(log), loc[1]+3000)]
	}
	if m.Pid() == 0 || !harness.IsMounted(m.Dir) {
		if crash == "" {
			crash = tailOf(log, 4000)
		}
		t.Fatalf("%s: the daemon is gone (pid %d, mounted %v); its log:\n%s", when, m.Pid(), harness.IsMounted(m.Dir), crash)
	}
	if crash != "" {
		t.Fatalf("%s: the daemon's log shows a crash:\n%s", when, crash)
	}
}

// TestUnhappyCacheDiskFullExt4 (issue 13 case 6): the cache directory is
// on a 128 MiB ext4 filesystem and --cache-size says 4 GiB, so the disk
// fills before keelfs's own limit: badger's memory-mapped files and the
// block files meet a full disk. Several writers write twice the disk's
// size, some with fsync, first while uploads run, then with S3
// unreachable so that nothing drains. Writers get ENOSPC (not EIO, not a
// hang); the daemon lives (no SIGBUS); every file whose close succeeded is
// in S3 with its bytes once S3 is back and a flush succeeds; and writing
// works again afterwards.
func TestUnhappyCacheDiskFullExt4(t *testing.T) {
	harness.RequireFUSE(t)
	disk := ext4Image(t, 128<<20)
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	px := srv.StartProxy(t)
	// A long metadata TTL: with S3 unreachable, new names are created
	// against the cached (empty) listing instead of waiting for S3.
	m := srv.Mount(t, b, harness.MountOptions{Endpoint: px.Endpoint, CacheDir: filepath.Join(disk, "cache"),
		Args: []string{"--cache-size", "4G", "--write-back-delay", "100ms", "--part-size", "5M", "--metadata-ttl", "1h"}})
	m.AllowLog(`(?i)no space|ENOSPC|cache full|disk full|` + faultLogs)
	acked := map[string][32]byte{}

	// Round 1: uploads run while the disk fills.
	start := time.Now()
	r1 := fillCache(t, m, "up", 4, 2, 64<<20, false, 3*time.Minute)
	t.Logf("round 1 (S3 reachable), %v: %s", time.Since(start).Round(time.Millisecond), r1)
	for _, s := range r1.bad {
		t.Errorf("round 1: %s; want success or ENOSPC", s)
	}
	daemonAlive(t, m, "after round 1")
	for k, v := range r1.acked {
		acked[k] = v
	}

	// Round 2: S3 unreachable (every connection reset), nothing drains.
	// The listing read first is what lets new names be created without
	// S3 (rule 9: cached listings are served past the TTL).
	readDirNames(t, m.Dir)
	px.SetFaults(func(op string, r *http.Request) harness.Fault { return harness.Fault{Cut: true} })
	start = time.Now()
	// No fsync here: with S3 unreachable each would only wait for its EIO
	// (TestFsyncEIOWhenS3Down), which takes tens of seconds.
	r2 := fillCache(t, m, "down", 3, 0, 64<<20, true, 3*time.Minute)
	t.Logf("round 2 (S3 unreachable), %v: %s", time.Since(start).Round(time.Millisecond), r2)
	for _, s := range r2.bad {
		t.Errorf("round 2: %s; want success or ENOSPC (EIO only from fsync)", s)
	}
	if r2.enospc == 0 {
		t.Errorf("round 2: 192 MiB written into a 128 MiB cache disk with S3 unreachable, and no writer got ENOSPC (%s)", r2)
	}
	daemonAlive(t, m, "after round 2")
	for k, v := range r2.acked {
		acked[k] = v
	}

	// S3 is back: everything acknowledged reaches it.
	px.SetFaults(nil)
	fl := runFlush(t, m, 3*time.Minute)
	t.Logf("keelfs flush after S3 came back: %s", fl)
	if fl.timedOut || fl.code != 0 {
		t.Fatalf("keelfs flush after S3 came back: %s", fl)
	}
	names := make([]string, 0, len(acked))
	for k := range acked {
		names = append(names, k)
	}
	sort.Strings(names)
	lost := 0
	for _, k := range names {
		got, ok := srv.Get(t, b, k)
		if !ok || sha256.Sum256(got) != acked[k] {
			lost++
			t.Errorf("LOST: %s was closed successfully; the bucket has %d bytes (present %v) that differ", k, len(got), ok)
		}
	}
	t.Logf("%d acknowledged files checked in the bucket, %d lost", len(names), lost)
	daemonAlive(t, m, "after the flush")

	// Writing works again.
	recovers(t, srv, b, m, "after-full-disk")
	daemonAlive(t, m, "at the end")
}

// TestDamagedCacheBlockFailsOneFile: a block of a file not yet uploaded
// is damaged on the cache disk while the mount runs. Its upload must fail
// for good and be reported, naming the file, while S3 stays reachable
// and every other file uploads: the broken request is the cache's doing,
// and the real SDK reports a body that broke off as a network failure.
func TestDamagedCacheBlockFailsOneFile(t *testing.T) {
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	m := srv.Mount(t, b, harness.MountOptions{Args: []string{"--write-back-delay", "1h"}})
	m.AllowLog(`unreadable|upload failed|not yet in S3|pending|checksum`)
	if err := os.WriteFile(m.Path("bad.bin"), randBytes(100<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(m.Path("good.txt"), []byte("fine"), 0o644); err != nil {
		t.Fatal(err)
	}
	ino := stat(t, m.Path("bad.bin")).Ino
	blocks, err := filepath.Glob(filepath.Join(m.CacheDir, "*", "blocks", "*", fmt.Sprintf("%016x-*", ino)))
	if err != nil || len(blocks) != 1 {
		t.Fatalf("block files of bad.bin (inode %d): %v %v", ino, blocks, err)
	}
	f, err := os.OpenFile(blocks[0], os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.WriteAt([]byte("rot"), 5000) // same length, other bytes
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	code, out := runKeelfs(t, srv, 30*time.Second, "flush", "--timeout", "10s", m.Dir)
	if code != 7 || !strings.Contains(out, "bad.bin") || !strings.Contains(out, "corrupt") {
		t.Fatalf("flush: exit %d, want 7 naming bad.bin as corrupt:\n%s", code, out)
	}
	if got, ok := srv.Get(t, b, "good.txt"); !ok || string(got) != "fine" {
		t.Fatalf("good.txt in S3: %q %v", got, ok)
	}
	if _, ok := srv.Get(t, b, "bad.bin"); ok {
		t.Fatal("bad.bin was uploaded with a damaged block")
	}
	code, out = runKeelfs(t, srv, 10*time.Second, "status", m.Dir)
	if code != 0 || strings.Contains(out, "UNREACHABLE") || !strings.Contains(out, "bad.bin") {
		t.Fatalf("status (exit %d): want S3 reachable and bad.bin named:\n%s", code, out)
	}
	if strings.Contains(m.Log(), "s3 is unreachable") {
		t.Fatalf("a damaged cache block made S3 count as unreachable:\n%s", m.Log())
	}
	if code := m.Stop(); code != 7 {
		t.Fatalf("exit %d after SIGTERM with a file that cannot be uploaded, want 7", code)
	}
}
