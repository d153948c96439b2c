package e2e

// The unhappy paths of issue 13, through a real mount of the built binary
// against versitygw: what a user observes when an upload can never be
// made, when another writer replaced the object an edit started from, when
// an application fsyncs a directory, and when a new version of a file
// reaches the kernel's page cache. Each test says what the contract
// (DESIGN.md) requires, whatever the implementation.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keelfs/keelfs/test/harness"
)

// flushResult is what one `keelfs flush` did.
type flushResult struct {
	out      string
	code     int // exit status; -1 when it had to be killed
	took     time.Duration
	timedOut bool
}

func (r flushResult) String() string {
	if r.timedOut {
		return fmt.Sprintf("still running after %v (killed); output so far %q", r.took.Round(time.Millisecond), tailOf(r.out, 600))
	}
	return fmt.Sprintf("exit %d after %v: %q", r.code, r.took.Round(time.Millisecond), tailOf(r.out, 600))
}

// runFlush runs `keelfs flush` on m and kills it if it has not ended
// within limit: a flush that never returns is one of the failures these
// tests look for, so it must not hang the test.
func runFlush(t *testing.T, m *harness.Mount, limit time.Duration) flushResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	start := time.Now()
	cmd := exec.CommandContext(ctx, harness.Binary(t), "flush", m.Dir)
	out, err := cmd.CombinedOutput()
	r := flushResult{out: string(out), took: time.Since(start)}
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		r.timedOut, r.code = true, -1
	case err == nil:
		r.code = 0
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	default:
		t.Fatalf("run keelfs flush: %v", err)
	}
	return r
}

// syncResult is what one fsync did within a time limit.
type syncResult struct {
	err      error
	took     time.Duration
	returned bool
}

func (r syncResult) String() string {
	if !r.returned {
		return fmt.Sprintf("had not returned after %v", r.took.Round(time.Millisecond))
	}
	return fmt.Sprintf("returned %v after %v", r.err, r.took.Round(time.Millisecond))
}

// syncWithin calls f.Sync and waits at most limit for it. An fsync that
// does not return is left running (the daemon's stop at cleanup ends it).
func syncWithin(f *os.File, limit time.Duration) syncResult {
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- f.Sync() }()
	select {
	case err := <-done:
		return syncResult{err: err, took: time.Since(start), returned: true}
	case <-time.After(limit):
		return syncResult{took: time.Since(start)}
	}
}

// writeOps sums the requests that write objects: what a retry loop on an
// upload multiplies.
func writeOps(counts map[string]int) int {
	n := 0
	for _, op := range []string{"PutObject", "CreateMultipartUpload", "UploadPart", "UploadPartCopy",
		"CompleteMultipartUpload", "CopyObject"} {
		n += counts[op]
	}
	return n
}

// levelLines returns the log lines at level (WARN, ERROR) that contain
// every one of subs.
func levelLines(log, level string, subs ...string) []string {
	var out []string
	for _, line := range strings.Split(log, "\n") {
		if !strings.Contains(line, "level="+level) && !strings.Contains(line, `"level":"`+level+`"`) {
			continue
		}
		ok := true
		for _, s := range subs {
			if !strings.Contains(line, s) {
				ok = false
				break
			}
		}
		if ok {
			out = append(out, line)
		}
	}
	return out
}

// crashSigns are what a daemon killed by its own fault leaves in its log.
var crashSigns = regexp.MustCompile(`unexpected fault address|SIGBUS|panic:|fatal error:|SIGSEGV`)

// TestUnhappyFsyncDir (issue 13 case 5): fsync of a directory makes the
// namespace changes under it durable, which for keelfs means in S3. The
// write-back delay is an hour, so only the fsync can have brought them
// there.
func TestUnhappyFsyncDir(t *testing.T) {
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	m := srv.Mount(t, b, harness.MountOptions{Args: []string{"--write-back-delay", "1h"}})
	if err := os.Mkdir(m.Path("d"), 0o755); err != nil {
		t.Fatal(err)
	}
	syncDir := func(what string) {
		t.Helper()
		d, err := os.Open(m.Path("d"))
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		r := syncWithin(d, 60*time.Second)
		if !r.returned || r.err != nil {
			t.Fatalf("fsync(d) after %s: %s, want success", what, r)
		}
		t.Logf("fsync(d) after %s: %s", what, r)
	}

	// write tmp; fsync(tmp); rename(tmp, f); fsync(dirfd)
	data := randBytes(100 << 10)
	f, err := os.Create(m.Path("d", "f.tmp"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatalf("fsync(tmp): %v", err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if got, ok := srv.Get(t, b, "d/f.tmp"); !ok || !bytes.Equal(got, data) {
		t.Fatalf("after fsync(tmp) the bucket has %d bytes of d/f.tmp (present %v), want %d", len(got), ok, len(data))
	}
	if err := os.Rename(m.Path("d", "f.tmp"), m.Path("d", "f")); err != nil {
		t.Fatal(err)
	}
	syncDir("rename(tmp, f)")
	var problems []string
	if got, ok := srv.Get(t, b, "d/f"); !ok || !bytes.Equal(got, data) {
		problems = append(problems, fmt.Sprintf("the bucket has %d bytes of d/f (present %v), want the %d written", len(got), ok, len(data)))
	}
	if _, ok := srv.Get(t, b, "d/f.tmp"); ok {
		problems = append(problems, "the bucket still holds d/f.tmp")
	}

	// unlink; fsync(dirfd)
	if err := os.WriteFile(m.Path("d", "g"), []byte("to be removed"), 0o644); err != nil {
		t.Fatal(err)
	}
	g, err := os.OpenFile(m.Path("d", "g"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Sync(); err != nil {
		t.Fatalf("fsync(g): %v", err)
	}
	g.Close()
	if _, ok := srv.Get(t, b, "d/g"); !ok {
		t.Fatal("after fsync(g) the bucket does not hold d/g")
	}
	if err := os.Remove(m.Path("d", "g")); err != nil {
		t.Fatal(err)
	}
	syncDir("unlink(g)")
	if _, ok := srv.Get(t, b, "d/g"); ok {
		problems = append(problems, "after unlink(g) and fsync(d) the bucket still holds d/g")
	}

	// mkdir; fsync(dirfd): the new directory's marker is a namespace
	// change under d as well.
	if err := os.Mkdir(m.Path("d", "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	syncDir("mkdir(sub)")
	if _, ok := srv.Get(t, b, "d/sub/"); !ok {
		problems = append(problems, "after mkdir(d/sub) and fsync(d) the bucket does not hold the marker d/sub/")
	}
	for _, p := range problems {
		t.Error(p)
	}
	if len(problems) > 0 {
		t.Logf("bucket: %q", srv.Keys(t, b, ""))
	}
}

// readNoStat reads path from the start to EOF with plain read(2) calls,
// without the fstat that os.ReadFile makes, so that the kernel's idea of
// the file's size is the one it already had.
func readNoStat(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []byte
	buf := make([]byte, 64<<10)
	for {
		n, err := f.Read(buf)
		out = append(out, buf[:n]...)
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
	}
}

// TestUnhappyPageCacheNewVersion (issue 13 case 9, page cache): mount B
// has a small file in its page cache; mount A replaces it with a longer
// version and fsyncs. B opens and reads the file again and again until an
// open sees the new version. Every read must return one complete version:
// never the new content cut to the old size (the kernel still holding the
// old size while the open already serves the new content), never a mix.
func TestUnhappyPageCacheNewVersion(t *testing.T) {
	const ttl = 300 * time.Millisecond
	const rounds = 40
	srv := harness.StartServer(t)
	bucket := srv.NewBucket(t)
	version := func(i int) []byte {
		// Each version is longer than the one before and differs from it
		// in every byte, so that a cut or a mix cannot pass for either.
		return bytes.Repeat([]byte{byte('A' + i%26)}, 1000+i*517)
	}
	srv.Put(t, bucket, "p/f", version(0), nil)
	a, b := sharedPair(t, srv, bucket+"/p", "--metadata-ttl", ttl.String(), "--write-back-delay", "1h")
	if got, err := readNoStat(b.Path("f")); err != nil || !bytes.Equal(got, version(0)) {
		t.Fatalf("B's first read: %d bytes (%v), want %d", len(got), err, len(version(0)))
	}
	var bad []string
	reads, cut := 0, 0
	for i := 1; i <= rounds; i++ {
		old, cur := version(i-1), version(i)
		sharedWriteSync(t, a.Path("f"), cur)
		deadline := time.Now().Add(10 * time.Second)
		for {
			if i%2 == 0 {
				// A stat between the opens refreshes the kernel's
				// attributes from B's cache, as `ls -l` would, which is
				// what leaves the kernel with the old size while the
				// cache's own record expires first.
				if _, err := os.Stat(b.Path("f")); err != nil {
					t.Fatalf("round %d: stat on B: %v", i, err)
				}
			}
			got, err := readNoStat(b.Path("f"))
			reads++
			if err != nil {
				t.Fatalf("round %d: read on B: %v", i, err)
			}
			if bytes.Equal(got, cur) {
				break
			}
			if !bytes.Equal(got, old) {
				desc, _ := sharedDescribe(got, map[string][]byte{"old": old, "new": cur})
				if len(got) == len(old) && bytes.Equal(got, cur[:len(old)]) {
					cut++
					desc = fmt.Sprintf("the new version cut to the old size (%d of %d bytes)", len(got), len(cur))
				}
				bad = append(bad, fmt.Sprintf("round %d: B read %s", i, desc))
			}
			if time.Now().After(deadline) {
				t.Fatalf("round %d: B still reads the old version 10s after A's fsync (TTL %v)", i, ttl)
			}
			time.Sleep(time.Duration(rand.IntN(40)) * time.Millisecond)
		}
	}
	t.Logf("%d rounds, %d reads on B; %d returned neither version whole (%d the new one cut to the old size)", rounds, reads, len(bad), cut)
	for i, s := range bad {
		if i == 10 {
			t.Errorf("... and %d more", len(bad)-10)
			break
		}
		t.Error(s)
	}
}

// errnoName names the errno inside err, for logs.
func errnoName(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return fmt.Sprintf("%v (%d)", errno, int(errno))
	}
	return fmt.Sprint(err)
}
