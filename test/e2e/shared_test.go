package e2e

// Two mounts of one prefix, each with its own cache directory, as two
// replicas of an app run them (rules 6 and 7 of DESIGN.md): close-to-open
// visibility after the metadata TTL, never a mix of two versions, no
// silent lost update, and locks within one mount.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"golang.org/x/sys/unix"

	"github.com/keelfs/keelfs/test/harness"
)

// sharedPair mounts source twice, each mount with its own cache directory.
func sharedPair(t *testing.T, srv *harness.Server, source string, args ...string) (a, b *harness.Mount) {
	t.Helper()
	a = srv.Mount(t, source, harness.MountOptions{Args: args})
	b = srv.Mount(t, source, harness.MountOptions{Args: args})
	return a, b
}

// sharedWriteSync replaces path's content and fsyncs it: once it returns
// the content is in S3 (rule 5).
func sharedWriteSync(t *testing.T, path string, data []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		t.Fatalf("write %s: %v", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		t.Fatalf("fsync %s: %v", path, err)
	}
	if err := f.Close(); err != nil {
		t.Fatalf("close %s: %v", path, err)
	}
}

// sharedEventually calls check until it returns "" and fails the test with
// its last answer if that takes longer than timeout.
func sharedEventually(t *testing.T, timeout time.Duration, check func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		msg := check()
		if msg == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("still not the case after %v: %s", timeout, msg)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// sharedAfterTTL sleeps until ttl plus a margin has passed since changed,
// so that every cached name and attribute of the other mount has expired.
func sharedAfterTTL(changed time.Time, ttl time.Duration) {
	time.Sleep(time.Until(changed.Add(ttl + time.Second)))
}

// sharedErrno extracts the errno from an error of the os package.
func sharedErrno(err error) (syscall.Errno, bool) {
	var errno syscall.Errno
	ok := errors.As(err, &errno)
	return errno, ok
}

// sharedDescribe says which of the versions data is, or how far it
// matches each of them.
func sharedDescribe(data []byte, versions map[string][]byte) (string, bool) {
	for name, v := range versions {
		if bytes.Equal(data, v) {
			return name, true
		}
	}
	var parts []string
	for name, v := range versions {
		i := 0
		for i < len(data) && i < len(v) && data[i] == v[i] {
			i++
		}
		parts = append(parts, fmt.Sprintf("%s up to byte %d of %d", name, i, len(v)))
	}
	return fmt.Sprintf("%d bytes, none of the versions (matches %s)", len(data), strings.Join(parts, ", ")), false
}

// TestSharedWriteThenReadWithinTTL: within the metadata TTL a mount keeps
// serving the content it has cached, even after another mount's fsync put
// a new version in S3.
func TestSharedWriteThenReadWithinTTL(t *testing.T) {
	srv := harness.StartServer(t)
	bucket := srv.NewBucket(t)
	a, b := sharedPair(t, srv, bucket+"/app", "--metadata-ttl", "30s")
	v1, v2 := []byte("version one\n"), []byte("version two, a longer one\n")
	sharedWriteSync(t, a.Path("f"), v1)
	if got, err := os.ReadFile(b.Path("f")); err != nil || !bytes.Equal(got, v1) {
		t.Fatalf("B's first read: %q %v, want %q", got, err, v1)
	}
	seen := time.Now()
	sharedWriteSync(t, a.Path("f"), v2)
	if got, _ := srv.Get(t, bucket, "app/f"); !bytes.Equal(got, v2) {
		t.Fatalf("after A's fsync the bucket has %q, want %q", got, v2)
	}
	if got, err := os.ReadFile(a.Path("f")); err != nil || !bytes.Equal(got, v2) {
		t.Fatalf("A reads its own write: %q %v", got, err)
	}
	got, err := os.ReadFile(b.Path("f"))
	if err != nil {
		t.Fatal(err)
	}
	if time.Since(seen) > 25*time.Second {
		t.Fatalf("too slow to check the TTL (%v since B's read)", time.Since(seen))
	}
	if !bytes.Equal(got, v1) {
		t.Fatalf("within the 30s TTL B reads %q, want the content it cached, %q", got, v1)
	}
}

// TestSharedWriteThenReadAfterTTL: once a version is in S3, the other
// mount's next open after the TTL reads exactly it, whether its size
// changed or not, in either direction.
func TestSharedWriteThenReadAfterTTL(t *testing.T) {
	const ttl = time.Second
	srv := harness.StartServer(t)
	bucket := srv.NewBucket(t)
	a, b := sharedPair(t, srv, bucket+"/app", "--metadata-ttl", ttl.String())
	sharedWriteSync(t, a.Path("f"), []byte("version one\n"))
	if got, err := os.ReadFile(b.Path("f")); err != nil || string(got) != "version one\n" {
		t.Fatalf("B's first read: %q %v", got, err)
	}
	steps := []struct {
		name           string
		writer, reader *harness.Mount
		data           string
	}{
		{"longer, A to B", a, b, "version two is longer\n"},
		{"same size, A to B", a, b, "VERSION TWO IS LONGER\n"},
		{"shorter, B to A", b, a, "v3 from B\n"},
	}
	// The reader has read the file (the kernel has its pages) before each
	// change, as a long-lived replica would.
	for _, s := range steps {
		if _, err := os.ReadFile(s.reader.Path("f")); err != nil {
			t.Fatalf("%s: read before the change: %v", s.name, err)
		}
		sharedWriteSync(t, s.writer.Path("f"), []byte(s.data))
		landed := time.Now()
		if got, _ := srv.Get(t, bucket, "app/f"); string(got) != s.data {
			t.Fatalf("%s: after fsync the bucket has %q, want %q", s.name, got, s.data)
		}
		sharedAfterTTL(landed, ttl)
		if got, err := os.ReadFile(s.reader.Path("f")); err != nil || string(got) != s.data {
			t.Fatalf("%s: after the TTL the other mount reads %q (%v), want %q", s.name, got, err, s.data)
		}
		st := stat(t, s.reader.Path("f"))
		if st.Size != int64(len(s.data)) {
			t.Fatalf("%s: after the TTL the other mount's stat says %d bytes, want %d", s.name, st.Size, len(s.data))
		}
	}
}

// TestSharedAppendWhileReading is a log and its sidecar: one mount appends
// lines with fsync while the other re-opens and reads the file over and
// over. Every read is a prefix of the final log made of whole lines (or
// fails with ESTALE, when the version it opened was replaced in S3 before
// it was fetched), and the reader ends up with all of it.
func TestSharedAppendWhileReading(t *testing.T) {
	const ttl = time.Second
	srv := harness.StartServer(t)
	bucket := srv.NewBucket(t)
	a, b := sharedPair(t, srv, bucket+"/logs", "--metadata-ttl", ttl.String())
	var final bytes.Buffer
	var lines []string
	for i := 0; i < 40; i++ {
		line := fmt.Sprintf("%03d request served in %dms %s\n", i, i*7%113, strings.Repeat("x", i*37%200))
		lines = append(lines, line)
		final.WriteString(line)
	}
	want := final.Bytes()
	// The log exists, with its first line, before the reader starts.
	sharedWriteSync(t, a.Path("app.log"), []byte(lines[0]))
	sharedEventually(t, 10*time.Second, func() string {
		if got, err := os.ReadFile(b.Path("app.log")); err != nil || string(got) != lines[0] {
			return fmt.Sprintf("B reads %q (%v)", got, err)
		}
		return ""
	})

	stop := make(chan struct{})
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		bad     []string
		reads   int
		stale   int
		lengths = map[int]bool{}
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			data, err := os.ReadFile(b.Path("app.log"))
			errno, _ := sharedErrno(err)
			mu.Lock()
			switch {
			case errno == syscall.ESTALE:
				// The version B opened was replaced in S3 before B
				// fetched it: a clean failure, not a wrong answer.
				stale++
			case err != nil:
				bad = append(bad, fmt.Sprintf("read: %v", err))
			case !bytes.HasPrefix(want, data):
				bad = append(bad, fmt.Sprintf("read %d bytes that are not a prefix of the log: %q", len(data), data[max(0, len(data)-80):]))
			case len(data) > 0 && data[len(data)-1] != '\n':
				bad = append(bad, fmt.Sprintf("read %d bytes ending in a torn line", len(data)))
			default:
				reads++
				lengths[len(data)] = true
			}
			mu.Unlock()
			time.Sleep(20 * time.Millisecond)
		}
	}()

	f, err := os.OpenFile(a.Path("app.log"), os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	for i, line := range lines[1:] {
		time.Sleep(50 * time.Millisecond) // requests come in over a few TTLs
		if _, err := f.WriteString(line); err != nil {
			t.Fatalf("append line %d: %v", i+1, err)
		}
		if err := f.Sync(); err != nil {
			t.Fatalf("fsync after line %d: %v", i+1, err)
		}
		if i%10 == 9 { // a logger that reopens its file now and then
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			if f, err = os.OpenFile(a.Path("app.log"), os.O_WRONLY|os.O_APPEND, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if got, _ := srv.Get(t, bucket, "logs/app.log"); !bytes.Equal(got, want) {
		t.Fatalf("bucket has %d bytes of log, want %d", len(got), len(want))
	}
	sharedEventually(t, 15*time.Second, func() string {
		data, err := os.ReadFile(b.Path("app.log"))
		if err != nil || !bytes.Equal(data, want) {
			return fmt.Sprintf("B reads %d bytes (%v), want the whole log of %d", len(data), err, len(want))
		}
		return ""
	})
	close(stop)
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if len(bad) > 0 {
		t.Fatalf("%d bad reads on B, the first: %s", len(bad), strings.Join(bad[:min(len(bad), 5)], "\n"))
	}
	t.Logf("B read the log %d times and saw %d different lengths; %d reads failed with ESTALE", reads, len(lengths), stale)
}

// TestSharedReplacedBetweenHeadAndGet: the object is replaced in the
// moment between the mount learning its version and fetching its content.
// That read fails cleanly (ESTALE) or returns the new version whole, and
// the next open, long before the TTL runs out, reads the new version.
func TestSharedReplacedBetweenHeadAndGet(t *testing.T) {
	srv := harness.StartServer(t)
	bucket := srv.NewBucket(t)
	v1, v2 := "version one\n", "version two, which replaced it\n"
	srv.Put(t, bucket, "p/f", []byte(v1), nil)
	// A proxy that, once armed, puts v2 in the bucket just before it
	// passes on the mount's first GET of the object.
	var armed atomic.Bool
	var putErr atomic.Value
	target, err := url.Parse(srv.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(target)
	client := srv.Client(t)
	px := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && r.URL.Path == "/"+bucket+"/p/f" && armed.CompareAndSwap(true, false) {
			_, err := client.PutObject(context.Background(), &s3.PutObjectInput{Bucket: aws.String(bucket),
				Key: aws.String("p/f"), Body: strings.NewReader(v2)})
			if err != nil {
				putErr.Store(err)
			}
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(px.Close)
	m := srv.Mount(t, bucket+"/p", harness.MountOptions{Endpoint: px.URL, Args: []string{"--metadata-ttl", "30s"}})
	if st := stat(t, m.Path("f")); st.Size != int64(len(v1)) {
		t.Fatalf("size %d before the change, want %d", st.Size, len(v1))
	}
	armed.Store(true)
	got, err := os.ReadFile(m.Path("f"))
	if err, ok := putErr.Load().(error); ok {
		t.Fatalf("put v2: %v", err)
	}
	if armed.Load() {
		t.Fatal("the mount read f without a GET")
	}
	if errno, _ := sharedErrno(err); err != nil && errno != syscall.ESTALE {
		t.Fatalf("the read that lost the race failed with %v, want ESTALE", err)
	} else if err == nil && string(got) != v2 {
		t.Fatalf("the read that lost the race returned %q, want an error or %q", got, v2)
	}
	t.Logf("the read that lost the race: %q, %v", got, err)
	// The failed read made the mount ask S3 again: the next open gets v2,
	// not ESTALE until the 30s TTL ends.
	sharedEventually(t, 5*time.Second, func() string {
		got, err := os.ReadFile(m.Path("f"))
		if err == nil && string(got) == v2 {
			return ""
		}
		if errno, _ := sharedErrno(err); err != nil && errno != syscall.ESTALE {
			t.Fatalf("after the lost race, a new open reads: %v", err)
		}
		if err == nil {
			t.Fatalf("after the lost race, a new open reads %q, want %q", got, v2)
		}
		t.Logf("a new open reads %q (%v); trying again", got, err)
		return fmt.Sprintf("a new open reads %q (%v), want %q", got, err, v2)
	})
}

// sharedConflictKey matches the name rule 7 gives the losing version.
func sharedConflictKey(t *testing.T, key string) *regexp.Regexp {
	t.Helper()
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	return regexp.MustCompile(`^` + regexp.QuoteMeta(key) + `\.conflict-` + regexp.QuoteMeta(host) + `-\d{8}T\d{6}Z$`)
}

// sharedOpenWrite opens path for writing from the start, as an editor that
// saves in place does, and writes data without closing.
func sharedOpenWrite(t *testing.T, path string, data []byte) *os.File {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if _, err := f.Write(data); err != nil {
		t.Fatalf("write %s: %v", path, err)
	}
	return f
}

// sharedBucketFiles returns the objects under prefix and their content.
func sharedBucketFiles(t *testing.T, srv *harness.Server, bucket, prefix string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, k := range srv.Keys(t, bucket, prefix) {
		data, _ := srv.Get(t, bucket, k)
		out[strings.TrimPrefix(k, prefix)] = string(data)
	}
	return out
}

// TestSharedConcurrentEditKeepsBoth: two mounts edit the same file from the
// same version. The first upload wins the name; the second is kept beside
// it as NAME.conflict-HOST-TIME, both after close and flush and when the
// loser calls fsync, which returns only once its version is safe in S3.
func TestSharedConcurrentEditKeepsBoth(t *testing.T) {
	const ttl = time.Second
	srv := harness.StartServer(t)
	bucket := srv.NewBucket(t)
	srv.Put(t, bucket, "p/doc", []byte("original\n"), nil)
	srv.Put(t, bucket, "p/notes", []byte("original notes\n"), nil)
	a, b := sharedPair(t, srv, bucket+"/p", "--metadata-ttl", ttl.String(), "--write-back-delay", "1h")
	for _, m := range []*harness.Mount{a, b} {
		m.AllowLog(`msg="conflict: `)
	}

	// Close, then flush A before B.
	fa := sharedOpenWrite(t, a.Path("doc"), []byte("edit from A\n"))
	fb := sharedOpenWrite(t, b.Path("doc"), []byte("edit from B, longer\n"))
	if err := fa.Close(); err != nil {
		t.Fatal(err)
	}
	if err := fb.Close(); err != nil {
		t.Fatal(err)
	}
	a.Flush()
	b.Flush()
	files := sharedBucketFiles(t, srv, bucket, "p/")
	if files["doc"] != "edit from A\n" {
		t.Fatalf("doc in the bucket is %q, want the first upload's %q (all: %q)", files["doc"], "edit from A\n", files)
	}
	conflictRe := sharedConflictKey(t, "doc")
	var conflict string
	for k, v := range files {
		if strings.HasPrefix(k, "doc.") {
			if !conflictRe.MatchString(k) || conflict != "" {
				t.Fatalf("unexpected object %q in %q", k, files)
			}
			conflict = k
			if v != "edit from B, longer\n" {
				t.Fatalf("%s holds %q, want B's edit", k, v)
			}
		}
	}
	if conflict == "" {
		t.Fatalf("B's edit was lost: no doc.conflict-* object in %q", files)
	}

	// fsync on both: A's lands, B's fsync returns once B's version is
	// saved under a conflict name.
	ga := sharedOpenWrite(t, a.Path("notes"), []byte("notes from A\n"))
	gb := sharedOpenWrite(t, b.Path("notes"), []byte("notes from B\n"))
	if err := ga.Sync(); err != nil {
		t.Fatalf("fsync on A: %v", err)
	}
	if err := gb.Sync(); err != nil {
		t.Fatalf("fsync on B, the losing writer: %v", err)
	}
	files = sharedBucketFiles(t, srv, bucket, "p/")
	if files["notes"] != "notes from A\n" {
		t.Fatalf("after both fsyncs notes is %q, want A's", files["notes"])
	}
	notesRe := sharedConflictKey(t, "notes")
	var notesConflict string
	for k, v := range files {
		if notesRe.MatchString(k) && v == "notes from B\n" {
			notesConflict = k
		}
	}
	if notesConflict == "" {
		t.Fatalf("B's fsync returned before its version was in S3: %q", files)
	}
	ga.Close()
	gb.Close()

	// Both mounts then show the winner under the name and the loser
	// beside it.
	for _, m := range []*harness.Mount{a, b} {
		sharedEventually(t, 10*time.Second, func() string {
			names := strings.Join(readDirNames(t, m.Dir), " ")
			if !strings.Contains(names, conflict) || !strings.Contains(names, notesConflict) {
				return fmt.Sprintf("%s lists %s", m.Dir, names)
			}
			for name, want := range map[string]string{"doc": "edit from A\n", conflict: "edit from B, longer\n",
				"notes": "notes from A\n", notesConflict: "notes from B\n"} {
				if got, err := os.ReadFile(m.Path(name)); err != nil || string(got) != want {
					return fmt.Sprintf("%s: %q (%v), want %q", m.Path(name), got, err, want)
				}
			}
			return ""
		})
	}
	if n := strings.Count(b.Log(), `msg="conflict: another writer changed`); n != 2 {
		t.Fatalf("B logged %d conflicts, want 2", n)
	}
	if strings.Contains(a.Log(), "conflict:") {
		t.Fatal("A, whose uploads won, logged a conflict")
	}
}

// TestSharedConflictOverwrite: with --conflict overwrite the last upload
// wins and no conflict copy is made.
func TestSharedConflictOverwrite(t *testing.T) {
	srv := harness.StartServer(t)
	bucket := srv.NewBucket(t)
	srv.Put(t, bucket, "p/doc", []byte("original\n"), nil)
	a, b := sharedPair(t, srv, bucket+"/p", "--conflict", "overwrite", "--write-back-delay", "1h")
	fa := sharedOpenWrite(t, a.Path("doc"), []byte("edit from A\n"))
	fb := sharedOpenWrite(t, b.Path("doc"), []byte("edit from B\n"))
	fa.Close()
	fb.Close()
	a.Flush()
	if got, _ := srv.Get(t, bucket, "p/doc"); string(got) != "edit from A\n" {
		t.Fatalf("after A's flush doc is %q", got)
	}
	b.Flush()
	files := sharedBucketFiles(t, srv, bucket, "p/")
	if len(files) != 1 || files["doc"] != "edit from B\n" {
		t.Fatalf("bucket %q, want only doc with B's edit (last writer wins)", files)
	}
}

// TestSharedRemoteDeleteAndRename: deletes and renames made by the other
// mount or directly in the bucket show in listings and stat after the TTL.
// A file open when it is deleted elsewhere reads its old content whole or
// fails with an error, never short or mixed.
func TestSharedRemoteDeleteAndRename(t *testing.T) {
	const ttl = time.Second
	srv := harness.StartServer(t)
	bucket := srv.NewBucket(t)
	content := map[string][]byte{}
	for _, k := range []string{"gone-a", "moved-a", "gone-b", "moved-b", "stays", "dir/inner"} {
		content[k] = []byte("content of " + k + "\n")
		srv.Put(t, bucket, "p/"+k, content[k], nil)
	}
	heldA, heldB := randBytes(20<<20+333), randBytes(20<<20+777)
	srv.Put(t, bucket, "p/held-a", heldA, nil)
	srv.Put(t, bucket, "p/held-b", heldB, nil)
	a, b := sharedPair(t, srv, bucket+"/p", "--metadata-ttl", ttl.String())

	wantNames(t, b.Dir, "dir", "gone-a", "gone-b", "held-a", "held-b", "moved-a", "moved-b", "stays")
	for k, v := range content {
		if got, err := os.ReadFile(b.Path(k)); err != nil || !bytes.Equal(got, v) {
			t.Fatalf("B reads %s: %q %v", k, got, err)
		}
	}
	// B holds both big files open, with their first bytes read: most of
	// their blocks are not cached.
	held := map[string]*os.File{}
	for name, data := range map[string][]byte{"held-a": heldA, "held-b": heldB} {
		f, err := os.Open(b.Path(name))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		head := make([]byte, 64<<10)
		if _, err := io.ReadFull(f, head); err != nil || !bytes.Equal(head, data[:len(head)]) {
			t.Fatalf("%s: first bytes on B: %v", name, err)
		}
		held[name] = f
	}

	// Changes through A...
	if err := os.Remove(a.Path("gone-a")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(a.Path("moved-a"), a.Path("renamed-a")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(a.Path("dir"), a.Path("dir2")); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(a.Path("held-a")); err != nil {
		t.Fatal(err)
	}
	a.Flush()
	// ...and directly in the bucket.
	srv.Delete(t, bucket, "p/gone-b")
	srv.Put(t, bucket, "p/renamed-b", content["moved-b"], nil)
	srv.Delete(t, bucket, "p/moved-b")
	srv.Delete(t, bucket, "p/held-b")
	landed := time.Now()
	var keys []string
	for _, k := range srv.Keys(t, bucket, "p/") {
		if !strings.HasSuffix(k, "/") { // directory markers may come and go
			keys = append(keys, k)
		}
	}
	wantKeys := "p/dir2/inner p/renamed-a p/renamed-b p/stays"
	if got := strings.Join(keys, " "); got != wantKeys {
		t.Fatalf("bucket keys %s, want %s", got, wantKeys)
	}

	sharedAfterTTL(landed, ttl)
	for _, name := range []string{"gone-a", "moved-a", "gone-b", "moved-b", "held-a", "held-b", "dir"} {
		if _, err := os.Stat(b.Path(name)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("after the TTL, stat %s on B: %v, want ENOENT", name, err)
		}
	}
	wantNames(t, b.Dir, "dir2", "renamed-a", "renamed-b", "stays")
	wantNames(t, b.Path("dir2"), "inner")
	for name, want := range map[string][]byte{"renamed-a": content["moved-a"], "renamed-b": content["moved-b"],
		"stays": content["stays"], "dir2/inner": content["dir/inner"]} {
		if got, err := os.ReadFile(b.Path(name)); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("after the TTL B reads %s: %q %v, want %q", name, got, err, want)
		}
		if st := stat(t, b.Path(name)); st.Size != int64(len(want)) {
			t.Fatalf("after the TTL B's stat of %s says %d bytes, want %d", name, st.Size, len(want))
		}
	}

	// The open handles: the rest of the old content, or an error.
	for name, data := range map[string][]byte{"held-a": heldA, "held-b": heldB} {
		rest, err := io.ReadAll(held[name])
		want := data[64<<10:]
		switch {
		case err == nil && !bytes.Equal(rest, want):
			what, _ := sharedDescribe(rest, map[string][]byte{"the old content": want})
			t.Errorf("%s deleted elsewhere: B's open handle read %s, with no error", name, what)
		case err != nil && !bytes.HasPrefix(want, rest):
			t.Errorf("%s deleted elsewhere: B's open handle read %d wrong bytes before failing with %v", name, len(rest), err)
		case err != nil:
			if errno, ok := sharedErrno(err); !ok || (errno != syscall.ESTALE && errno != syscall.EIO && errno != syscall.ENOENT) {
				t.Errorf("%s: read failed with %v, want ESTALE, EIO or ENOENT", name, err)
			}
			t.Logf("%s deleted elsewhere: B's open handle read %d more bytes, then %v", name, len(rest), err)
		default:
			t.Logf("%s deleted elsewhere: B's open handle read the old content whole", name)
		}
	}
}

// TestSharedOverwriteNeverMixes: a multi-block file replaced by the other
// mount, then directly in the bucket, while this mount holds it open and
// reads it over and over. Every read is one version whole: a handle goes
// on with the version it opened (or fails), and an open after the TTL gets
// the new version, whatever older handles read meanwhile.
func TestSharedOverwriteNeverMixes(t *testing.T) {
	const ttl = time.Second
	srv := harness.StartServer(t)
	bucket := srv.NewBucket(t)
	v1, v2, v3 := randBytes(8<<20), randBytes(8<<20), randBytes(8<<20)
	versions := map[string][]byte{"v1": v1, "v2": v2, "v3": v3}
	srv.Put(t, bucket, "p/big", v1, nil)
	a, b := sharedPair(t, srv, bucket+"/p", "--metadata-ttl", ttl.String())

	// B reads part of v1 (so some blocks of v1 are cached and some not) and
	// keeps the file open.
	held, err := os.Open(b.Path("big"))
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	pos := 2<<20 + 100
	if _, err := io.ReadFull(held, make([]byte, pos)); err != nil {
		t.Fatal(err)
	}
	// readHeld reads n more bytes through the handle opened on v1: they
	// must be v1's, unless the read fails.
	heldFailed := false
	readHeld := func(n int, when string) {
		t.Helper()
		if heldFailed {
			return
		}
		buf := make([]byte, n)
		got, err := io.ReadFull(held, buf)
		want := v1[pos : pos+got]
		if !bytes.Equal(buf[:got], want) {
			what, _ := sharedDescribe(buf[:got], map[string][]byte{"v1": want, "v2": v2[pos : pos+got], "v3": v3[pos : pos+got]})
			t.Fatalf("%s, the handle opened on v1 read %s at offset %d (err %v)", when, what, pos, err)
		}
		if err != nil {
			if errno, ok := sharedErrno(err); !ok || (errno != syscall.ESTALE && errno != syscall.EIO) {
				t.Fatalf("%s, the handle opened on v1 failed with %v, want ESTALE or EIO", when, err)
			}
			t.Logf("%s, the handle opened on v1 read %d bytes, then failed: %v", when, got, err)
			heldFailed = true
		}
		pos += got
	}
	wantVersion := func(m *harness.Mount, want, when string) {
		t.Helper()
		got, err := os.ReadFile(m.Path("big"))
		if err != nil {
			t.Fatalf("%s: %v", when, err)
		}
		if what, _ := sharedDescribe(got, versions); what != want {
			t.Fatalf("%s, %s reads %s, want %s", when, m.Dir, what, want)
		}
	}

	// A replaces it.
	wantVersion(a, "v1", "before the overwrite")
	sharedWriteSync(t, a.Path("big"), v2)
	if got, _ := srv.Get(t, bucket, "p/big"); !bytes.Equal(got, v2) {
		t.Fatal("after A's fsync the bucket does not hold v2")
	}
	sharedAfterTTL(time.Now(), ttl)

	// A new open on B gets v2. Before it reads anything, the old handle
	// reads on: what it reads must not show through the new one.
	fresh, err := os.Open(b.Path("big"))
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.Close()
	readHeld(2<<20, "after the overwrite")
	got, err := io.ReadAll(fresh)
	if err != nil {
		t.Fatal(err)
	}
	if what, _ := sharedDescribe(got, versions); what != "v2" {
		t.Fatalf("a handle opened after the overwrite and the TTL reads %s, want v2", what)
	}
	readHeld(1<<20, "after a new handle read v2")
	wantVersion(b, "v2", "after the overwrite and the TTL")

	// Then the bucket is written directly while B reads it in a loop.
	stop := make(chan struct{})
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		bad  []string
		seen = map[string]int{}
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			data, err := os.ReadFile(b.Path("big"))
			mu.Lock()
			if err != nil {
				bad = append(bad, fmt.Sprintf("read: %v", err))
			} else if what, ok := sharedDescribe(data, versions); !ok || what == "v1" {
				bad = append(bad, what)
			} else {
				seen[what]++
			}
			mu.Unlock()
		}
	}()
	time.Sleep(200 * time.Millisecond)
	srv.Put(t, bucket, "p/big", v3, nil)
	sharedAfterTTL(time.Now(), ttl)
	wantVersion(b, "v3", "after the bucket was written directly and the TTL")
	wantVersion(a, "v3", "after the bucket was written directly and the TTL")
	readHeld(1<<20, "while B reads v3 in a loop")
	close(stop)
	wg.Wait()
	readHeld(len(v1)-pos, "at the end")
	// Once the old handle is closed, its pages must not show either.
	if err := held.Close(); err != nil {
		t.Fatal(err)
	}
	wantVersion(b, "v3", "after the old handle closed")
	wantVersion(b, "v3", "again")
	mu.Lock()
	defer mu.Unlock()
	if len(bad) > 0 {
		t.Fatalf("%d bad whole-file reads on B, the first: %s", len(bad), strings.Join(bad[:min(len(bad), 5)], "\n"))
	}
	t.Logf("whole-file reads on B: %v", seen)
}

// sharedReplica is a tiny web app as it would run in each replica: uploads
// are saved as files of its mount, and files are served from it.
func sharedReplica(t *testing.T, dir string) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("POST /upload/{name}", func(w http.ResponseWriter, r *http.Request) {
		data, err := io.ReadAll(r.Body)
		if err == nil {
			err = os.MkdirAll(filepath.Join(dir, "uploads"), 0o755)
		}
		if err == nil {
			err = os.WriteFile(filepath.Join(dir, "uploads", r.PathValue("name")), data, 0o644)
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusCreated)
	})
	mux.Handle("GET /files/", http.StripPrefix("/files/", http.FileServer(http.Dir(filepath.Join(dir, "uploads")))))
	s := httptest.NewServer(mux)
	t.Cleanup(s.Close)
	return s
}

// TestSharedWebReplicas is the motivating case: two replicas of a web app,
// each with its own mount of one prefix. A file uploaded to one is served,
// byte for byte, by the other, and so is a new version of it.
func TestSharedWebReplicas(t *testing.T) {
	srv := harness.StartServer(t)
	bucket := srv.NewBucket(t)
	m1, m2 := sharedPair(t, srv, bucket+"/site")
	r1, r2 := sharedReplica(t, m1.Dir), sharedReplica(t, m2.Dir)

	upload := func(r *httptest.Server, name string, data []byte) {
		t.Helper()
		resp, err := http.Post(r.URL+"/upload/"+name, "application/octet-stream", bytes.NewReader(data))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("upload %s: %s %s", name, resp.Status, body)
		}
	}
	// fetch GETs name until it serves want; every 200 before must be one
	// of the allowed versions whole.
	fetch := func(r *httptest.Server, name string, want []byte, allowed ...[]byte) {
		t.Helper()
		start := time.Now()
		sharedEventually(t, 15*time.Second, func() string {
			resp, err := http.Get(r.URL + "/files/" + name)
			if err != nil {
				return err.Error()
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				return err.Error()
			}
			if resp.StatusCode == http.StatusNotFound {
				return "404"
			}
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("GET %s: %s %s", name, resp.Status, body)
			}
			if bytes.Equal(body, want) {
				return ""
			}
			for _, a := range allowed {
				if bytes.Equal(body, a) {
					return "still the previous version"
				}
			}
			t.Fatalf("GET %s served %d bytes that are no version of it", name, len(body))
			return ""
		})
		t.Logf("%s served by the other replica %v after the upload", name, time.Since(start))
	}

	photo := randBytes(3<<20 + 99)
	upload(r1, "photo.jpg", photo)
	fetch(r2, "photo.jpg", photo)
	photo2 := randBytes(2<<20 + 5)
	upload(r2, "photo.jpg", photo2)
	fetch(r1, "photo.jpg", photo2, photo)
	fetch(r2, "photo.jpg", photo2)
	m1.Flush()
	m2.Flush()
	if got, _ := srv.Get(t, bucket, "site/uploads/photo.jpg"); !bytes.Equal(got, photo2) {
		t.Fatalf("bucket holds %d bytes for the photo, want the second upload", len(got))
	}
	if keys := srv.Keys(t, bucket, "site/"); len(keys) != 2 { // the marker of uploads/ and the photo
		t.Fatalf("bucket keys %q", keys)
	}
}

// sharedLockChildEnv makes the test binary, re-run by TestSharedLocks, try
// a POSIX record lock on the file it names from another process.
const sharedLockChildEnv = "KEELFS_TEST_LOCK_CHILD"

func sharedLockChild(path string) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		fmt.Printf("lockresult=open:%v\n", err)
		os.Exit(0)
	}
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: io.SeekStart}
	err = unix.FcntlFlock(f.Fd(), unix.F_SETLK, &lk)
	if errno, ok := sharedErrno(err); ok {
		fmt.Printf("lockresult=%d\n", int(errno))
	} else if err != nil {
		fmt.Printf("lockresult=%v\n", err)
	} else {
		fmt.Printf("lockresult=0\n")
	}
	os.Exit(0)
}

// TestSharedLocks: flock, open file description locks and POSIX record
// locks work between descriptors and processes of one mount (the kernel
// keeps them; they cannot span mounts, S3 has no locks).
func TestSharedLocks(t *testing.T) {
	if p := os.Getenv(sharedLockChildEnv); p != "" {
		sharedLockChild(p)
	}
	srv := harness.StartServer(t)
	bucket := srv.NewBucket(t)
	m := srv.Mount(t, bucket, harness.MountOptions{})
	path := m.Path("lockfile")
	if err := os.WriteFile(path, []byte("0123456789"), 0o644); err != nil {
		t.Fatal(err)
	}
	open := func() *os.File {
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	f1, f2 := open(), open()
	// flock(1) from another process; -E picks its exit code on conflict.
	otherFlock := func() int {
		cmd := exec.Command("flock", "-n", "-E", "99", path, "true")
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		if err != nil {
			t.Fatalf("flock(1): %v %s", err, out)
		}
		return 0
	}

	// flock(2)
	if err := unix.Flock(int(f1.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		t.Fatalf("flock LOCK_EX on the first descriptor: %v", err)
	}
	if err := unix.Flock(int(f2.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != unix.EWOULDBLOCK {
		t.Fatalf("flock LOCK_EX|LOCK_NB on a second descriptor while the first holds it: %v, want EWOULDBLOCK", err)
	}
	if err := unix.Flock(int(f2.Fd()), unix.LOCK_SH|unix.LOCK_NB); err != unix.EWOULDBLOCK {
		t.Fatalf("flock LOCK_SH|LOCK_NB while another holds LOCK_EX: %v, want EWOULDBLOCK", err)
	}
	if code := otherFlock(); code != 99 {
		t.Fatalf("flock(1) in another process while locked: exit %d, want 99 (conflict)", code)
	}
	if err := unix.Flock(int(f1.Fd()), unix.LOCK_UN); err != nil {
		t.Fatal(err)
	}
	if err := unix.Flock(int(f2.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		t.Fatalf("flock on the second descriptor once the first let go: %v", err)
	}
	if err := unix.Flock(int(f2.Fd()), unix.LOCK_UN); err != nil {
		t.Fatal(err)
	}
	if code := otherFlock(); code != 0 {
		t.Fatalf("flock(1) in another process once unlocked: exit %d", code)
	}

	// Open file description locks (fcntl F_OFD_SETLK).
	wr := func(start, length int64) *unix.Flock_t {
		return &unix.Flock_t{Type: unix.F_WRLCK, Whence: io.SeekStart, Start: start, Len: length}
	}
	if err := unix.FcntlFlock(f1.Fd(), unix.F_OFD_SETLK, wr(0, 5)); err != nil {
		t.Fatalf("F_OFD_SETLK on bytes 0-4: %v", err)
	}
	if err := unix.FcntlFlock(f2.Fd(), unix.F_OFD_SETLK, wr(3, 4)); err != unix.EAGAIN && err != unix.EACCES {
		t.Fatalf("F_OFD_SETLK on an overlapping range from another descriptor: %v, want EAGAIN", err)
	}
	probe := wr(0, 0)
	if err := unix.FcntlFlock(f2.Fd(), unix.F_OFD_GETLK, probe); err != nil || probe.Type != unix.F_WRLCK || probe.Start != 0 || probe.Len != 5 {
		t.Fatalf("F_OFD_GETLK: %v, lock %+v, want the write lock on bytes 0-4", err, probe)
	}
	if err := unix.FcntlFlock(f2.Fd(), unix.F_OFD_SETLK, wr(5, 5)); err != nil {
		t.Fatalf("F_OFD_SETLK on a range that does not overlap: %v", err)
	}
	unlock := &unix.Flock_t{Type: unix.F_UNLCK, Whence: io.SeekStart}
	if err := unix.FcntlFlock(f1.Fd(), unix.F_OFD_SETLK, unlock); err != nil {
		t.Fatal(err)
	}
	if err := unix.FcntlFlock(f2.Fd(), unix.F_OFD_SETLK, wr(0, 0)); err != nil {
		t.Fatalf("F_OFD_SETLK of the whole file once the other descriptor unlocked: %v", err)
	}
	unlock = &unix.Flock_t{Type: unix.F_UNLCK, Whence: io.SeekStart}
	if err := unix.FcntlFlock(f2.Fd(), unix.F_OFD_SETLK, unlock); err != nil {
		t.Fatal(err)
	}

	// POSIX record locks belong to a process: another one is refused
	// while this one holds the lock.
	child := func() string {
		cmd := exec.Command(os.Args[0], "-test.run=^TestSharedLocks$", "-test.count=1")
		cmd.Env = append(os.Environ(), sharedLockChildEnv+"="+path)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("lock child: %v\n%s", err, out)
		}
		sc := bufio.NewScanner(bytes.NewReader(out))
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "lockresult="); ok {
				return v
			}
		}
		t.Fatalf("lock child said nothing:\n%s", out)
		return ""
	}
	if err := unix.FcntlFlock(f1.Fd(), unix.F_SETLK, wr(0, 0)); err != nil {
		t.Fatalf("F_SETLK: %v", err)
	}
	if got := child(); got != fmt.Sprint(int(unix.EAGAIN)) && got != fmt.Sprint(int(unix.EACCES)) {
		t.Fatalf("F_SETLK from another process while this one holds the lock: %s, want EAGAIN", got)
	}
	unlock = &unix.Flock_t{Type: unix.F_UNLCK, Whence: io.SeekStart}
	if err := unix.FcntlFlock(f1.Fd(), unix.F_SETLK, unlock); err != nil {
		t.Fatal(err)
	}
	if got := child(); got != "0" {
		t.Fatalf("F_SETLK from another process once unlocked: %s, want success", got)
	}
}
