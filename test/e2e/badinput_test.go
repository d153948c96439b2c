package e2e

import (
	"bytes"
	"context"
	"debug/buildinfo"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/keelfs/keelfs/test/harness"
)

// TestBadInputEmptyFiles: zero-byte files, however they come to be (touch,
// create and close, truncate of a full file, an empty object put by
// another tool), read as empty, stat as size 0, and land in S3 as
// zero-byte objects.
func TestBadInputEmptyFiles(t *testing.T) {
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	srv.Put(t, b, "from-s3", nil, nil)
	srv.Put(t, b, "dir/empty-too", []byte{}, map[string]string{"mode": "33184"})
	m := srv.Mount(t, b, harness.MountOptions{})
	harness.Run(t, m.Dir, `touch touched && : > redirected && printf 'gone soon' > truncated && truncate -s 0 truncated
		printf 'x' > shrunk && truncate -s 0 shrunk && mkdir sub && touch sub/inner && touch renamed-src && mv renamed-src renamed`)
	f, err := os.Create(m.Path("created"))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil { // fsync of an empty new file uploads it
		t.Fatalf("fsync of an empty file: %v", err)
	}
	f.Close()
	names := []string{"touched", "redirected", "truncated", "shrunk", "sub/inner", "renamed", "created", "from-s3", "dir/empty-too"}
	check := func(when string) {
		t.Helper()
		for _, n := range names {
			st := stat(t, m.Path(n))
			if st.Size != 0 || st.Mode&syscall.S_IFMT != syscall.S_IFREG {
				t.Errorf("%s: %s: size %d mode %o, want an empty regular file", when, n, st.Size, st.Mode)
			}
			if got, err := os.ReadFile(m.Path(n)); err != nil || len(got) != 0 {
				t.Errorf("%s: read %s: %q, %v", when, n, got, err)
			}
		}
	}
	check("before upload")
	if st := stat(t, m.Path("dir/empty-too")); st.Mode != syscall.S_IFREG|0o640 {
		t.Errorf("dir/empty-too: mode %o, want the header's 0640", st.Mode)
	}
	m.Flush()
	for _, n := range names {
		data, ok := srv.Get(t, b, n)
		if !ok || len(data) != 0 {
			t.Errorf("object %s: %d bytes, exists %v; want an empty object", n, len(data), ok)
		}
	}
	if keys := srv.Keys(t, b, "renamed-src"); len(keys) != 0 {
		t.Errorf("the rename left %v behind", keys)
	}
	// A fresh mount sees the same, from S3 alone.
	m.Stop()
	m = srv.Mount(t, b, harness.MountOptions{})
	check("fresh mount")
	// Writing to an empty file makes it non-empty, in S3 too.
	if err := os.WriteFile(m.Path("from-s3"), []byte("now with content"), 0o644); err != nil {
		t.Fatal(err)
	}
	m.Flush()
	if got, _ := srv.Get(t, b, "from-s3"); string(got) != "now with content" {
		t.Fatalf("from-s3 after a write: %q", got)
	}
}

// readOnlyPolicy lets the user with access key user list and read bucket,
// and nothing else.
func readOnlyPolicy(bucket, user string) string {
	return fmt.Sprintf(`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":[%q]},`+
		`"Action":["s3:GetObject","s3:ListBucket","s3:GetBucketLocation"],`+
		`"Resource":["arn:aws:s3:::%s","arn:aws:s3:::%s/*"]}]}`, user, bucket, bucket)
}

// TestBadInputReadOnlyCredentials: a mount whose credentials may read the
// bucket but not write it (a versitygw user granted only s3:GetObject and
// s3:ListBucket by the bucket policy). Reads work; a write that has to
// reach S3 fails with EACCES, never EIO; nothing is dropped: once the
// policy lets the user write, the pending file is uploaded.
func TestBadInputReadOnlyCredentials(t *testing.T) {
	srv := harness.StartServerIAM(t)
	b := srv.NewBucket(t)
	srv.Put(t, b, "readable", []byte("anyone may read this"), nil)
	const user, secret = "keelfs-reader", "keelfs-reader-secret-0123"
	srv.CreateUser(t, user, secret, "user")
	srv.SetBucketPolicy(t, b, readOnlyPolicy(b, user))
	m := srv.Mount(t, b, harness.MountOptions{
		Env:  []string{"AWS_ACCESS_KEY_ID=" + user, "AWS_SECRET_ACCESS_KEY=" + secret},
		Args: []string{"--write-back-delay", "100ms"}})
	m.AllowLog(`access denied|upload failed; will retry|could not test the endpoint for conditional writes`)
	if got, err := os.ReadFile(m.Path("readable")); err != nil || string(got) != "anyone may read this" {
		t.Fatalf("read with read-only credentials: %q, %v", got, err)
	}
	f, err := os.Create(m.Path("new"))
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	f.Write([]byte("not allowed to land"))
	err = f.Sync()
	t.Logf("fsync with read-only credentials: %v", err)
	if !isErrno(err, syscall.EACCES) && !isErrno(err, syscall.EROFS) {
		t.Errorf("fsync with read-only credentials: %v, want EACCES or EROFS", err)
	}
	f.Close()
	// With --sync-on-close, close itself reports it.
	soc := srv.Mount(t, b, harness.MountOptions{
		Env:  []string{"AWS_ACCESS_KEY_ID=" + user, "AWS_SECRET_ACCESS_KEY=" + secret},
		Args: []string{"--sync-on-close"}})
	soc.AllowLog(`access denied|upload failed; will retry|could not test the endpoint for conditional writes`)
	if err := os.WriteFile(soc.Path("readable"), []byte("overwritten"), 0o644); !isErrno(err, syscall.EACCES) {
		t.Errorf("close with --sync-on-close and read-only credentials: %v, want EACCES", err)
	}
	if got, _ := srv.Get(t, b, "readable"); string(got) != "anyone may read this" {
		t.Fatalf("readable was changed with read-only credentials: %q", got)
	}
	if _, ok := srv.Get(t, b, "new"); ok {
		t.Fatal("an object was written with read-only credentials")
	}
	// The user is allowed to write: what was left pending lands.
	srv.SetBucketPolicy(t, b, strings.Replace(readOnlyPolicy(b, user), `"s3:GetObject",`, `"s3:GetObject","s3:PutObject","s3:DeleteObject",`, 1))
	m.Flush()
	soc.Flush()
	if got, _ := srv.Get(t, b, "new"); string(got) != "not allowed to land" {
		t.Fatalf("new after the policy allowed writes: %q", got)
	}
	if got, _ := srv.Get(t, b, "readable"); string(got) != "overwritten" {
		t.Fatalf("readable after the policy allowed writes: %q", got)
	}
}

// TestBadInputCredentialsExpire: in the middle of a run S3 starts
// answering every request with 403 ExpiredToken, then InvalidAccessKeyId
// (a session token that ran out, a rotated key). Whatever needs S3 fails
// with EACCES, at once: a read of what is not cached, fsync, a create
// that must ask S3 whether the name is free; never EIO, never a hang.
// Writes to an open file go on into the cache, the daemon stays up, and
// once the credentials are good again everything pending lands without a
// remount.
func TestBadInputCredentialsExpire(t *testing.T) {
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	srv.Put(t, b, "uncached", randBytes(300<<10), nil)
	srv.Put(t, b, "dir/inside", []byte("x"), nil)
	px := srv.StartProxy(t)
	m := srv.Mount(t, b, harness.MountOptions{Endpoint: px.Endpoint,
		Args: []string{"--write-back-delay", "100ms", "--metadata-ttl", "500ms"}})
	m.AllowLog(`invalid or missing credentials|upload failed; will retry|ExpiredToken|InvalidAccessKeyId|read attributes|delete failed; will retry`)
	held, err := os.Create(m.Path("held"))
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if err := held.Sync(); err != nil {
		t.Fatal(err)
	}
	var code atomic.Value
	code.Store("ExpiredToken")
	var refused atomic.Int64
	px.SetFaults(func(op string, r *http.Request) harness.Fault {
		refused.Add(1)
		return harness.Fault{Status: 403, Code: code.Load().(string)}
	})
	want := map[string][]byte{}
	var heldData []byte
	for _, c := range []string{"ExpiredToken", "InvalidAccessKeyId"} {
		code.Store(c)
		time.Sleep(600 * time.Millisecond) // past the TTL: what is cached must be asked again
		start := time.Now()
		if _, err := os.ReadFile(m.Path("uncached")); !isErrno(err, syscall.EACCES) {
			t.Errorf("%s: read of an uncached file: %v, want EACCES", c, err)
		}
		if _, err := os.ReadDir(m.Path("dir")); err != nil && !isErrno(err, syscall.EACCES) {
			t.Errorf("%s: readdir: %v, want success or EACCES", c, err)
		}
		// An open file takes writes into the cache; fsync says why they
		// cannot go further.
		line := []byte("written while S3 said " + c + "\n")
		if _, err := held.Write(line); err != nil {
			t.Errorf("%s: write to an open file: %v", c, err)
		} else {
			heldData = append(heldData, line...)
		}
		if err := held.Sync(); !isErrno(err, syscall.EACCES) {
			t.Errorf("%s: fsync: %v, want EACCES", c, err)
		}
		// A new name needs S3's word that it is free.
		name := "new-" + c
		if f, err := os.Create(m.Path(name)); err == nil {
			data := []byte("created while S3 said " + c)
			if _, err := f.Write(data); err != nil {
				t.Errorf("%s: write to a new file: %v", c, err)
			}
			if err := f.Close(); err != nil {
				t.Errorf("%s: close of a new file: %v", c, err)
			}
			want[name] = data
		} else if !isErrno(err, syscall.EACCES) {
			t.Errorf("%s: create: %v, want success or EACCES", c, err)
		}
		if d := time.Since(start); d > 30*time.Second {
			t.Errorf("%s: the failures took %v to show", c, d)
		}
	}
	t.Logf("%d requests refused; files created meanwhile: %d", refused.Load(), len(want))
	if m.Pid() == 0 {
		t.Fatal("the daemon died while the credentials were refused")
	}
	px.SetFaults(nil)
	if err := held.Sync(); err != nil {
		t.Fatalf("fsync once the credentials are good again: %v", err)
	}
	want["held"] = heldData
	m.Flush()
	for k, v := range want {
		if got, _ := srv.Get(t, b, k); !bytes.Equal(got, v) {
			t.Errorf("%s after the credentials came back: %q, want %q", k, got, v)
		}
	}
	if got, err := os.ReadFile(m.Path("uncached")); err != nil || len(got) != 300<<10 {
		t.Errorf("read after the credentials came back: %d bytes, %v", len(got), err)
	}
	recovers(t, srv, b, m, "after-credentials")
}

// TestBadInputCacheDiskFull: the cache directory is a 64 MiB tmpfs and
// S3 does not take uploads, so dirty data cannot leave it. Writing more
// than fits ends in ENOSPC (from keelfs's cache limit or from the disk)
// after a wait, never in a silent loss: every write that succeeded, and
// was closed, is in S3 byte for byte once S3 is back, and the mount
// works on.
func TestBadInputCacheDiskFull(t *testing.T) {
	harness.RequireFUSE(t)
	cache := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", cache).CombinedOutput(); err != nil {
		t.Fatalf("mount a 64 MiB tmpfs for the cache (needs root): %v\n%s", err, out)
	}
	t.Cleanup(func() { // registered before the mount's: runs after it stops
		if err := syscall.Unmount(cache, 0); err != nil {
			syscall.Unmount(cache, syscall.MNT_DETACH)
		}
	})
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	px := srv.StartProxy(t)
	m := srv.Mount(t, b, harness.MountOptions{Endpoint: px.Endpoint, CacheDir: cache,
		Args: []string{"--write-back-delay", "100ms", "--cache-size", "1G"}})
	m.AllowLog(`upload failed; will retry|s3 request failed; retrying|no space|cache full|ENOSPC|space|s3 is unreachable`)
	var refused atomic.Int64
	px.SetFaults(func(op string, r *http.Request) harness.Fault {
		switch op {
		case "PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload":
			refused.Add(1)
			return harness.Fault{Status: 503, Code: "ServiceUnavailable"}
		}
		return harness.Fault{}
	})
	written := map[string][]byte{}
	var full error
	start := time.Now()
	for i := 0; i < 20 && full == nil; i++ { // 20 x 8 MiB = 160 MiB > 64 MiB
		name := fmt.Sprintf("f%02d", i)
		data := randBytes(8 << 20)
		f, err := os.Create(m.Path(name))
		if err != nil {
			full = err
			break
		}
		n, err := f.Write(data)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			full = err
			t.Logf("%s: wrote %d bytes, then %v", name, n, err)
			break
		}
		written[name] = data
	}
	t.Logf("the cache filled after %d files (%v): %v; %d uploads refused", len(written), time.Since(start), full, refused.Load())
	if full == nil {
		t.Fatalf("160 MiB went into a 64 MiB cache with S3 refusing uploads: where did it go?")
	}
	if !isErrno(full, syscall.ENOSPC) {
		t.Errorf("writing into a full cache: %v, want ENOSPC", full)
	}
	if len(written) == 0 {
		t.Errorf("not even one 8 MiB file fitted in a 64 MiB cache")
	}
	if m.Pid() == 0 {
		t.Fatal("the daemon died when its cache disk filled")
	}
	px.SetFaults(nil)
	m.Flush()
	for name, data := range written {
		if got, _ := srv.Get(t, b, name); !bytes.Equal(got, data) {
			t.Errorf("LOST: %s was written and closed; the bucket has %d bytes", name, len(got))
		}
	}
	recovers(t, srv, b, m, "after-full")
}

// TestBadInputStressSparseOver5GiB: a sparse file of 6 GiB with a few bytes at
// the end (truncate, then a write) is bigger than one PUT may be: it goes
// up as a multipart upload of sparse zeros, and the object has the right
// size and the right bytes at both ends. KEELFS_STRESS=1 only: uploading
// 6 GiB to versitygw on a small test machine takes minutes.
func TestBadInputStressSparseOver5GiB(t *testing.T) {
	if !stress() {
		t.Log("runs with KEELFS_STRESS=1 (make stress): it uploads 6 GiB")
		return
	}
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	m := srv.Mount(t, b, harness.MountOptions{Args: []string{"--write-back-delay", "1h"}})
	const size = 6 << 30
	tail := []byte("the end of a sparse file")
	start := time.Now()
	harness.Run(t, m.Dir, fmt.Sprintf("truncate -s %d sparse", size))
	f, err := os.OpenFile(m.Path("sparse"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(tail, size-int64(len(tail))); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("head"), 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatalf("fsync of a 6 GiB sparse file: %v", err)
	}
	f.Close()
	t.Logf("6 GiB sparse file in S3 after %v", time.Since(start))
	out, err := srv.Client(t).HeadObject(context.Background(), &s3.HeadObjectInput{Bucket: aws.String(b), Key: aws.String("sparse")})
	if err != nil {
		t.Fatal(err)
	}
	if aws.ToInt64(out.ContentLength) != size {
		t.Fatalf("object size %d, want %d", aws.ToInt64(out.ContentLength), int64(size))
	}
	if etag := aws.ToString(out.ETag); !strings.Contains(etag, "-") {
		t.Errorf("ETag %s: not a multipart upload", etag)
	}
	ranged := func(off, n int64) []byte {
		t.Helper()
		o, err := srv.Client(t).GetObject(context.Background(), &s3.GetObjectInput{Bucket: aws.String(b), Key: aws.String("sparse"),
			Range: aws.String(fmt.Sprintf("bytes=%d-%d", off, off+n-1))})
		if err != nil {
			t.Fatalf("ranged GET at %d: %v", off, err)
		}
		defer o.Body.Close()
		got, err := io.ReadAll(o.Body)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	if got := ranged(0, 8); string(got) != "head\x00\x00\x00\x00" {
		t.Errorf("bytes 0-7: %q", got)
	}
	if got := ranged(5<<30, 16); !bytes.Equal(got, make([]byte, 16)) {
		t.Errorf("bytes at 5 GiB: %q, want zeros", got)
	}
	if got := ranged(size-int64(len(tail))-4, int64(len(tail))+4); !bytes.Equal(got, append(make([]byte, 4), tail...)) {
		t.Errorf("the last bytes: %q", got)
	}
}

// hiddenLogs counts, per key, the daemon's log lines that say key is hidden
// (not a valid file name, or shadowed by a directory).
func hiddenLogs(log string) map[string]int {
	n := map[string]int{}
	for _, line := range strings.Split(log, "\n") {
		if !strings.Contains(line, "hidden") {
			continue
		}
		m := hiddenKey.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		key := m[2]
		if m[1] != "" {
			if uq, err := strconv.Unquote(m[1]); err == nil {
				key = uq
			}
		}
		n[key]++
	}
	return n
}

var hiddenKey = regexp.MustCompile(`\bkey=(?:("(?:[^"\\]|\\.)*")|(\S+))`)

// TestBadInputShadowedAndInvalidKeys runs against the in-memory fake S3
// (versitygw's posix backend cannot hold these keys): a key x beside keys
// under x/ shows as the directory x, its children visible, the file x
// hidden; keys that cannot be file names (an empty segment, ".", "..", a
// name over 255 bytes) are left out of listings; each hidden key is logged
// once, however often its directory is listed; and new files under x/ and
// next to the bad keys work.
func TestBadInputShadowedAndInvalidKeys(t *testing.T) {
	fake := harness.StartFake(t)
	b := fake.NewBucket(t)
	long := strings.Repeat("n", 256)
	keys := map[string]string{
		"x":                           "the file x, shadowed",
		"x/child":                     "child of the directory x",
		"x/sub/deep":                  "deeper",
		"a//b":                        "empty segment",
		"dots/./x":                    "dot",
		"dots/../y":                   "dot dot",
		"dots/fine":                   "a valid neighbour",
		".":                           "dot at the top",
		"..":                          "dot dot at the top",
		"long/" + long:                "256 bytes",
		"long/" + long[:255]:          "255 bytes is fine",
		"ok":                          "plain",
		"trailing//":                  "",
		"y/":                          "",
		"y":                           "a file shadowed by a directory marker",
		"z//":                         "",
		"deep/er/x":                   "file x inside",
		"deep/er/x/inner":             "shadowing it",
		"space in name/ü and emoji 🙂": "valid, odd",
	}
	for k, v := range keys {
		fake.PutDirect(t, b, k, []byte(v), nil)
	}
	// One through the SDK too, to show the fake keeps what a client sends.
	fake.Put(t, b, "sdk//double", []byte("put over HTTP"), nil)
	if got, ok := fake.GetDirect(t, b, "sdk//double"); !ok || string(got) != "put over HTTP" {
		t.Fatalf("the fake did not keep the key a//b as sent: %q %v", got, ok)
	}
	// What a listing shows, and so what is logged, is the hidden entry:
	// the object, or the common prefix that rolls the bad keys up.
	hidden := []string{"a//", "dots/./", "dots/../", ".", "..", "long/" + long, "trailing//", "z//", "sdk//", // invalid
		"x", "y", "deep/er/x"} // shadowed by a directory

	m := fake.Mount(t, b, harness.MountOptions{Args: []string{"--metadata-ttl", "300ms"}})
	m.AllowLog(`conditional writes`) // the fake may not enforce If-None-Match
	for pass := 0; pass < 3; pass++ {
		wantNames(t, m.Dir, "a", "deep", "dots", "long", "ok", "sdk", "space in name", "trailing", "x", "y", "z")
		wantNames(t, m.Path("x"), "child", "sub")
		wantNames(t, m.Path("x", "sub"), "deep")
		wantNames(t, m.Path("a"))
		wantNames(t, m.Path("dots"), "fine")
		wantNames(t, m.Path("long"), long[:255])
		wantNames(t, m.Path("trailing"))
		wantNames(t, m.Path("z"))
		wantNames(t, m.Path("sdk"))
		wantNames(t, m.Path("y"))
		wantNames(t, m.Path("deep", "er"), "x")
		wantNames(t, m.Path("deep", "er", "x"), "inner")
		time.Sleep(400 * time.Millisecond) // past the TTL: list again
	}
	for _, dir := range []string{"x", "y", "deep/er/x"} {
		if st := stat(t, m.Path(dir)); st.Mode&syscall.S_IFMT != syscall.S_IFDIR {
			t.Errorf("%s: mode %o, want a directory (the directory wins)", dir, st.Mode)
		}
	}
	if _, err := os.ReadFile(m.Path("x")); !isErrno(err, syscall.EISDIR) {
		t.Errorf("reading x: %v, want EISDIR (the file is hidden)", err)
	}
	for name, want := range map[string]string{"x/child": keys["x/child"], "x/sub/deep": "deeper", "dots/fine": keys["dots/fine"],
		"long/" + long[:255]: keys["long/"+long[:255]], "space in name/ü and emoji 🙂": "valid, odd", "deep/er/x/inner": "shadowing it"} {
		if got, err := os.ReadFile(m.Path(name)); err != nil || string(got) != want {
			t.Errorf("read %s: %q, %v", name, got, err)
		}
	}
	for _, name := range []string{"a/b", "dots/x", "dots/y"} {
		if _, err := os.Stat(m.Path(name)); !os.IsNotExist(err) {
			t.Errorf("stat %s: %v, want ENOENT", name, err)
		}
	}
	if err := os.WriteFile(m.Path("long", long), []byte("x"), 0o644); !isErrno(err, syscall.ENAMETOOLONG) {
		t.Errorf("create a 256-byte name: %v, want ENAMETOOLONG", err)
	}
	// Writing around them works, and leaves the hidden objects alone.
	if err := os.WriteFile(m.Path("x", "new"), []byte("new under x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(m.Path("a", "b"), []byte("a/b, not a//b"), 0o644); err != nil {
		t.Fatal(err)
	}
	m.Flush()
	for k, v := range map[string]string{"x/new": "new under x", "a/b": "a/b, not a//b", "x": keys["x"], "a//b": keys["a//b"], "y": keys["y"]} {
		if got, ok := fake.GetDirect(t, b, k); !ok || string(got) != v {
			t.Errorf("object %q: %q (exists %v), want %q", k, got, ok, v)
		}
	}
	// Each hidden entry was logged, once, however often it was listed.
	logged := hiddenLogs(m.Log())
	for _, k := range hidden {
		if logged[k] != 1 {
			t.Errorf("hidden %q logged %d times, want once", k, logged[k])
		}
	}
	if len(logged) != len(hidden) {
		t.Errorf("logged as hidden: %d entries, want %d", len(logged), len(hidden))
	}
	if t.Failed() {
		t.Logf("hidden-key log lines: %v", logged)
	}
}

// TestBadInputStressHugeDirectory: a directory of 100 000 objects (20 000 in the
// short run) in the fake S3 lists whole through the mount (ls | wc -l),
// and the daemon's peak memory stays bounded: the listing is streamed into
// the cache, not held. What does grow with the directory is go-fuse's node
// for every entry the kernel looked up (READDIRPLUS), a few hundred bytes
// each, freed when the kernel forgets them.
//
// The bound is 400 MiB for a normal build (measured: 111 MiB for 20 000
// entries, 181 MiB for 100 000). The race detector's shadow memory about
// triples that (429 MiB and 667 MiB), so a race build gets twice the room.
func TestBadInputStressHugeDirectory(t *testing.T) {
	n := 20000
	if stress() {
		n = 100000
	}
	fake := harness.StartFake(t)
	b := fake.NewBucket(t)
	start := time.Now()
	for i := 0; i < n; i++ {
		fake.PutDirect(t, b, fmt.Sprintf("huge/file-%06d", i), []byte("x"), nil)
	}
	t.Logf("%d keys in the fake in %v", n, time.Since(start))
	// A TTL longer than the listing takes: with the default 1s, entries
	// looked up after the TTL ran out are each asked about again (a HEAD
	// and a LIST apiece), which is a performance problem of its own.
	m := fake.Mount(t, b, harness.MountOptions{Args: []string{"--metadata-ttl", "10m"}})
	m.AllowLog(`conditional writes`)
	start = time.Now()
	out := harness.Run(t, m.Dir, "ls huge | wc -l")
	t.Logf("ls of %d entries: %v", n, time.Since(start))
	if got := strings.TrimSpace(out); got != strconv.Itoa(n) {
		t.Fatalf("ls | wc -l = %s, want %d", got, n)
	}
	if stress() {
		start = time.Now()
		out = harness.Run(t, m.Dir, "ls -l huge | tail -n +2 | wc -l")
		t.Logf("ls -l of %d entries: %v", n, time.Since(start))
		if got := strings.TrimSpace(out); got != strconv.Itoa(n) {
			t.Fatalf("ls -l | wc -l = %s, want %d", got, n)
		}
	}
	limit := int64(400 << 20)
	race := raceBuild(t, harness.Binary(t))
	if race {
		limit *= 2
	}
	hwm := vmHWM(t, m.Pid())
	t.Logf("daemon peak RSS (VmHWM) after listing %d entries: %d MiB (race build: %v, limit %d MiB)", n, hwm>>20, race, limit>>20)
	if hwm > limit {
		t.Errorf("daemon peak RSS %d MiB for a directory of %d entries, want under %d MiB", hwm>>20, n, limit>>20)
	}
	if got, err := os.ReadFile(m.Path("huge", fmt.Sprintf("file-%06d", n-1))); err != nil || string(got) != "x" {
		t.Errorf("read the last file: %q, %v", got, err)
	}
}

// raceBuild reports whether the binary at path was built with -race.
func raceBuild(t *testing.T, path string) bool {
	t.Helper()
	info, err := buildinfo.ReadFile(path)
	if err != nil {
		t.Fatalf("build info of %s: %v", path, err)
	}
	for _, s := range info.Settings {
		if s.Key == "-race" {
			return s.Value == "true"
		}
	}
	return false
}

// vmHWM returns the peak resident set size of process pid, in bytes.
func vmHWM(t *testing.T, pid int) int64 {
	t.Helper()
	if pid == 0 {
		t.Fatal("the daemon is not running")
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "VmHWM:" && f[2] == "kB" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no VmHWM in /proc/%d/status", pid)
	return 0
}
