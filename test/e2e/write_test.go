package e2e

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keelfs/keelfs/test/harness"
)

// bucketMatchesDir checks that the objects under prefix are exactly the
// files of dir, byte for byte, with a marker for every directory that has
// no files under it.
func bucketMatchesDir(t *testing.T, srv *harness.Server, bucket, prefix, dir string) {
	t.Helper()
	want := map[string][]byte{}
	emptyDirs := map[string]bool{}
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == "." {
			return nil
		}
		key := prefix + filepath.ToSlash(rel)
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			want[key] = []byte(target)
		case d.IsDir():
			if ents, _ := os.ReadDir(p); len(ents) == 0 {
				emptyDirs[key+"/"] = true
			}
		default:
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			want[key] = b
		}
		return nil
	})
	keys := srv.Keys(t, bucket, prefix)
	got := map[string]bool{}
	for _, k := range keys {
		got[k] = true
		if strings.HasSuffix(k, "/") {
			continue // directory markers are allowed for any directory
		}
		w, ok := want[k]
		if !ok {
			t.Errorf("bucket has %q, the local directory does not", k)
			continue
		}
		data, _ := srv.Get(t, bucket, k)
		if !bytes.Equal(data, w) {
			t.Errorf("%q: bucket has %d bytes, local %d, or different content", k, len(data), len(w))
		}
	}
	for k := range want {
		if !got[k] {
			t.Errorf("bucket lacks %q", k)
		}
	}
	for k := range emptyDirs {
		if !got[k] {
			t.Errorf("bucket lacks the marker of empty directory %q", k)
		}
	}
}

const shellSession = `
for i in $(seq 1000); do echo "line $i" >> log; done
echo draft > tmp && mv tmp final
printf 'abcdefghij%.0s' $(seq 1000) > t1 && truncate -s 1234 t1
head -c 3000000 /dev/zero | tr '\0' 'x' > mid && printf 'MIDDLE' | dd of=mid bs=1 seek=1500000 conv=notrunc status=none
truncate -s 5000000 mid
mkdir -p tree/a/b/c && echo 1 > tree/a/one && echo 2 > tree/a/b/two && echo 3 > tree/a/b/c/three
cp -r tree keep && rm -r tree
mkdir emptydir
ln -s final link
echo over > over && echo replaced > over2 && mv over2 over
`

// TestShellSession is the write path as an app uses it: appends, renames
// into place, truncates, writes into the middle, recursive removal. The
// bucket then holds exactly what a local disk does.
func TestShellSession(t *testing.T) {
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	m := srv.Mount(t, b+"/data", harness.MountOptions{})
	local := t.TempDir()
	harness.Run(t, local, shellSession)
	start := time.Now()
	harness.Run(t, m.Dir, shellSession)
	t.Logf("shell session on the mount: %v", time.Since(start))
	// The mount reads back what the local disk has...
	if out, err := exec.Command("diff", "-r", "--no-dereference", local, m.Dir).CombinedOutput(); err != nil {
		t.Fatalf("mount differs from local disk: %v\n%s", err, out)
	}
	m.Flush()
	// ...and so does the bucket.
	bucketMatchesDir(t, srv, b, "data/", local)
	st := stat(t, m.Path("final"))
	if h := srv.Head(t, b, "data/final"); h["mode"] != fmt.Sprint(st.Mode) || h["uid"] != fmt.Sprint(st.Uid) {
		t.Fatalf("headers of final %v, stat mode %o uid %d", h, st.Mode, st.Uid)
	}
}

// TestKill9Resume: a crash right after close loses nothing; the next mount
// uploads every byte, small files and multipart ones.
func TestKill9Resume(t *testing.T) {
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	m := srv.Mount(t, b, harness.MountOptions{Args: []string{"--write-back-delay", "1h"}})
	big := randBytes(200 << 20)
	files := map[string][]byte{"big": big, "small": []byte("small file"), "dir/nested": randBytes(1 << 20)}
	start := time.Now()
	for name, data := range files {
		os.MkdirAll(filepath.Dir(m.Path(name)), 0o755)
		if err := os.WriteFile(m.Path(name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("wrote 201 MiB to close in %v", time.Since(start))
	m.Kill9()
	if keys := srv.Keys(t, b, ""); len(keys) != 0 {
		t.Fatalf("objects uploaded despite the delay: %v", keys)
	}
	m.AllowLog(`stale mount`)
	m.Remount()
	m.Flush()
	for name, data := range files {
		got, ok := srv.Get(t, b, name)
		if !ok || !bytes.Equal(got, data) {
			t.Fatalf("%s after kill -9 and remount: %d bytes, want %d", name, len(got), len(data))
		}
	}
}

// TestPendingUnderAnotherEndpointIsReported: what a crash left waits in the
// cache directory of the endpoint it was written through. A mount of the
// same bucket through another spelling of that endpoint gets a directory of
// its own and cannot upload it: it says so, naming the other directory and
// endpoint. A directory whose last mount stopped with everything in S3 is
// not reported, and the next mount through the first spelling uploads what
// was left.
func TestPendingUnderAnotherEndpointIsReported(t *testing.T) {
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	cache := t.TempDir()
	m := srv.Mount(t, b, harness.MountOptions{CacheDir: cache, Args: []string{"--write-back-delay", "1h"}})
	if err := os.WriteFile(m.Path("left"), []byte("written before the crash"), 0o644); err != nil {
		t.Fatal(err)
	}
	m.Kill9()
	first, err := filepath.Glob(filepath.Join(cache, "*"))
	if err != nil || len(first) != 1 {
		t.Fatalf("cache directories after the first mount: %v %v", first, err)
	}

	other := strings.Replace(srv.Endpoint, "127.0.0.1", "localhost", 1)
	m2 := srv.Mount(t, b, harness.MountOptions{CacheDir: cache, Endpoint: other})
	m2.AllowLog(`through another endpoint`)
	var warned string
	for _, line := range strings.Split(m2.Log(), "\n") {
		if strings.Contains(line, "level=WARN") && strings.Contains(line, "through another endpoint") {
			warned = line
		}
	}
	if warned == "" || !strings.Contains(warned, first[0]) || !strings.Contains(warned, srv.Endpoint) {
		t.Fatalf("the mount through %s did not name the cache left through %s (%s):\n%s", other, srv.Endpoint, first[0], m2.Log())
	}
	if _, ok := srv.Get(t, b, "left"); ok {
		t.Fatal("the mount through another endpoint uploaded the other cache's file")
	}
	if code := m2.Stop(); code != 0 {
		t.Fatalf("exit %d", code)
	}

	m.AllowLog(`stale mount`)
	m.Remount()
	m.Flush()
	if got, ok := srv.Get(t, b, "left"); !ok || string(got) != "written before the crash" {
		t.Fatalf("after a remount through the first endpoint: %q %v", got, ok)
	}
	if strings.Contains(m.Log(), "through another endpoint") {
		t.Fatalf("the directory of a mount that stopped with everything in S3 was reported:\n%s", m.Log())
	}
}

// TestSigtermDrain: SIGTERM uploads everything pending, unmounts and exits
// 0, even right after the writes.
func TestSigtermDrain(t *testing.T) {
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	m := srv.Mount(t, b, harness.MountOptions{Args: []string{"--write-back-delay", "1h"}})
	data := randBytes(40 << 20)
	for i := 0; i < 20; i++ {
		os.WriteFile(m.Path(fmt.Sprintf("f%02d", i)), []byte(fmt.Sprint(i)), 0o644)
	}
	os.WriteFile(m.Path("big"), data, 0o644)
	if code := m.Stop(); code != 0 {
		t.Fatalf("exit %d after SIGTERM:\n%s", code, m.Log())
	}
	if harness.IsMounted(m.Dir) {
		t.Fatal("still mounted after SIGTERM")
	}
	if got, _ := srv.Get(t, b, "big"); !bytes.Equal(got, data) {
		t.Fatal("big not in S3 after SIGTERM")
	}
	if n := len(srv.Keys(t, b, "")); n != 21 {
		t.Fatalf("%d objects after SIGTERM, want 21", n)
	}
}

// TestSigtermWithS3Down: if S3 cannot be reached before the deadline, the
// process says which files remain, exits non-zero, and the next mount
// finishes the job.
func TestSigtermWithS3Down(t *testing.T) {
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	m := srv.Mount(t, b, harness.MountOptions{Args: []string{"--write-back-delay", "1h", "--shutdown-timeout", "3s"}})
	m.AllowLog(`upload failed|s3 request failed|retrying|not yet in S3|resuming|s3 is unreachable`)
	os.WriteFile(m.Path("pending.txt"), []byte("must survive"), 0o644)
	srv.Stop()
	start := time.Now()
	code := m.Stop()
	if code != 7 {
		t.Fatalf("exit %d, want 7 (pending uploads)", code)
	}
	if d := time.Since(start); d > 15*time.Second {
		t.Fatalf("took %v to give up with a 3s shutdown timeout", d)
	}
	if !strings.Contains(m.Log(), "pending.txt") {
		t.Fatalf("log does not name the pending file:\n%s", m.Log())
	}
	srv.Restart(t)
	m.Remount()
	m.Flush()
	if got, _ := srv.Get(t, b, "pending.txt"); string(got) != "must survive" {
		t.Fatalf("pending.txt after restart: %q", got)
	}
}

// TestCacheSmallerThanData: reading more data than the cache holds keeps
// the cache directory within --cache-size, with every byte right.
func TestCacheSmallerThanData(t *testing.T) {
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	data := randBytes(100 << 20)
	srv.Put(t, b, "big", data, nil)
	m := srv.Mount(t, b, harness.MountOptions{Args: []string{"--cache-size", "24M"}})
	for pass := 0; pass < 2; pass++ {
		f, err := os.OpenFile(m.Path("big"), os.O_RDONLY|syscall.O_DIRECT, 0)
		if err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(data))
		for off := 0; off < len(got); {
			n, err := f.ReadAt(got[off:min(off+1<<20, len(got))], int64(off))
			if n == 0 {
				t.Fatalf("read at %d: %v", off, err)
			}
			off += n
		}
		f.Close()
		if !bytes.Equal(got, data) {
			t.Fatalf("pass %d: content differs", pass)
		}
	}
	var blocks int64
	filepath.WalkDir(filepath.Join(m.CacheDir), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.Contains(p, "/blocks/") {
			info, _ := d.Info()
			blocks += info.Size()
		}
		return nil
	})
	if blocks > 24<<20 {
		t.Fatalf("cached blocks take %d bytes, limit 24 MiB", blocks)
	}
	t.Logf("cached block bytes after reading 200 MiB with a 24 MiB cache: %d", blocks)
}

// TestRenameDirectory1000: a directory of 1 000 files moves, in S3 too.
func TestRenameDirectory1000(t *testing.T) {
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	srv.S3CLI(t, "fill", b, "src", "1000", "10")
	m := srv.Mount(t, b, harness.MountOptions{})
	start := time.Now()
	if err := os.Rename(m.Path("src"), m.Path("dst")); err != nil {
		t.Fatal(err)
	}
	t.Logf("rename of 1000 files returned after %v", time.Since(start))
	if n := len(readDirNames(t, m.Path("dst"))); n != 1000 {
		t.Fatalf("dst has %d entries", n)
	}
	if _, err := os.Stat(m.Path("src")); !os.IsNotExist(err) {
		t.Fatalf("src still there: %v", err)
	}
	m.Flush()
	t.Logf("rename of 1000 files in S3 after %v", time.Since(start))
	keys := srv.Keys(t, b, "")
	var files int
	for _, k := range keys {
		if strings.HasPrefix(k, "src/") {
			t.Fatalf("left behind: %s", k)
		}
		if strings.HasPrefix(k, "dst/file-") {
			files++
		}
	}
	if files != 1000 {
		t.Fatalf("%d files under dst/", files)
	}
}

// TestUntarChecksums: a source tree untarred onto the mount reads back, and
// lands in S3, with every checksum intact.
func TestUntarChecksums(t *testing.T) {
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	m := srv.Mount(t, b, harness.MountOptions{})
	tarball := filepath.Join(t.TempDir(), "src.tar")
	goroot := strings.TrimSpace(harness.Run(t, ".", "go env GOROOT"))
	harness.Run(t, filepath.Join(goroot, "src"), "tar cf "+tarball+" net/http encoding")
	ref := t.TempDir()
	harness.Run(t, ref, "tar xf "+tarball)
	start := time.Now()
	harness.Run(t, m.Dir, "tar xf "+tarball)
	t.Logf("tar x of %s files: %v", strings.TrimSpace(harness.Run(t, ref, "find . -type f | wc -l")), time.Since(start))
	sums := harness.Run(t, ref, "find . -type f -print0 | sort -z | xargs -0 sha256sum")
	os.WriteFile(filepath.Join(ref, "..sums"), []byte(sums), 0o644)
	harness.Run(t, m.Dir, "sha256sum --quiet -c "+filepath.Join(ref, "..sums"))
	m.Flush()
	t.Logf("tar x to all in S3: %v", time.Since(start))
	os.Remove(filepath.Join(ref, "..sums"))
	bucketMatchesDir(t, srv, b, "", ref)
}

// TestCacheDirInUse: two mounts cannot share a cache directory.
func TestCacheDirInUse(t *testing.T) {
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	cache := t.TempDir()
	srv.Mount(t, b, harness.MountOptions{CacheDir: cache})
	code, out, _ := mountExit(t, srv, nil, b, t.TempDir(), "--endpoint", srv.Endpoint, "--force-path-style", "--cache-dir", cache, "-f")
	if code != 6 || !strings.Contains(out, "in use by another keelfs mount") {
		t.Fatalf("second mount on the same cache: exit %d, %q", code, out)
	}
}

// TestRemountWhileTheLastMountUploads: after a plain unmount the daemon
// goes on uploading what is pending (for up to --shutdown-timeout) and
// holds the cache directory meanwhile. A mount of the same cache in that
// window (umount then mount in a script, a restart of an fstab mount)
// waits for it, saying so, instead of failing with "in use"; and what the
// first mount left is there and in S3.
func TestRemountWhileTheLastMountUploads(t *testing.T) {
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	p := srv.StartProxy(t)
	m1 := srv.Mount(t, b, harness.MountOptions{Endpoint: p.Endpoint, Args: []string{"--write-back-delay", "1h"}})
	data := bytes.Repeat([]byte("uploaded by the mount that is gone\n"), 1000)
	if err := os.WriteFile(m1.Path("pending.txt"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	// Its upload now takes 4 s, so the drain after the unmount outlasts
	// the start of the second mount.
	p.SetFaults(func(op string, r *http.Request) harness.Fault {
		if op == "PutObject" && strings.HasSuffix(r.URL.Path, "/pending.txt") {
			return harness.Fault{Delay: 4 * time.Second}
		}
		return harness.Fault{}
	})
	harness.Run(t, "/", "fusermount3 -u "+m1.Dir)
	start := time.Now()
	m2 := srv.Mount(t, b, harness.MountOptions{CacheDir: m1.CacheDir, Endpoint: p.Endpoint})
	waited := time.Since(start)
	if code := m1.Stop(); code != 0 {
		t.Errorf("the first mount exited %d after its drain:\n%s", code, m1.Log())
	}
	if !strings.Contains(m2.Log(), "still uploading") {
		t.Errorf("the second mount (live after %v) did not say what it waited for:\n%s", waited, m2.Log())
	}
	got, err := os.ReadFile(m2.Path("pending.txt"))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("pending.txt through the second mount: %d bytes, %v; want %d bytes", len(got), err, len(data))
	}
	if obj, ok := srv.Get(t, b, "pending.txt"); !ok || !bytes.Equal(obj, data) {
		t.Fatalf("pending.txt in S3: present %v, %d bytes; want %d", ok, len(obj), len(data))
	}
	t.Logf("the second mount was live %v after the unmount", waited)
}

// TestFsyncMeansInS3: fsync returns only once the object is in S3.
func TestFsyncMeansInS3(t *testing.T) {
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	m := srv.Mount(t, b, harness.MountOptions{Args: []string{"--write-back-delay", "1h"}})
	f, err := os.Create(m.Path("synced"))
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("durable"))
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if got, _ := srv.Get(t, b, "synced"); string(got) != "durable" {
		t.Fatalf("after fsync the bucket has %q", got)
	}
	f.Close()
	// --sync-on-close makes close wait too.
	m2 := srv.Mount(t, b+"/soc", harness.MountOptions{Args: []string{"--write-back-delay", "1h", "--sync-on-close"}})
	if err := os.WriteFile(m2.Path("closed"), []byte("on close"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, _ := srv.Get(t, b, "soc/closed"); string(got) != "on close" {
		t.Fatalf("after close with --sync-on-close the bucket has %q", got)
	}
}

// TestFsyncEIOWhenS3Down: fsync reports an upload it cannot make.
func TestFsyncEIOWhenS3Down(t *testing.T) {
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	px := srv.StartProxy(t)
	m := srv.Mount(t, b, harness.MountOptions{Endpoint: px.Endpoint, Args: []string{"--write-back-delay", "1h"}})
	m.AllowLog(`upload failed|s3 request failed|retrying|s3 is unreachable`)
	px.SetFault(func(op string, r *http.Request) (int, string, bool) {
		if op == "PutObject" {
			return 503, "ServiceUnavailable", false
		}
		return 0, "", false
	})
	f, err := os.Create(m.Path("f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.Write([]byte("x"))
	start := time.Now()
	if err := f.Sync(); !isErrno(err, syscall.EIO) {
		t.Fatalf("fsync with S3 failing: %v, want EIO", err)
	}
	t.Logf("fsync reported the failure after %v", time.Since(start))
	px.SetFault(nil)
	if err := f.Sync(); err != nil {
		t.Fatalf("fsync after S3 recovered: %v", err)
	}
	if got, _ := srv.Get(t, b, "f"); string(got) != "x" {
		t.Fatalf("object: %q", got)
	}
}

var _ = sha256.New
var _ = sort.Strings
