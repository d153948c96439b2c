package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/keelfs/keelfs/test/harness"
)

// The fault tests put the harness proxy between keelfs and versitygw and
// make S3 misbehave (errors, throttling, resets, truncated bodies, slow
// answers, a restart) while files are written and read. Whatever S3 does:
//
//   - no acknowledged byte is lost: once the faults stop and the mount is
//     flushed, the bucket holds exactly what was written (sha256);
//   - no read ever returns wrong bytes: a read may fail (EIO), but what it
//     returns matches what was written;
//   - the mount recovers by itself: once the faults stop, a new write,
//     fsync and read work without a remount.
//
// KEELFS_STRESS=1 runs longer fault windows and more files.

// faultLogs are the log lines the injected faults legitimately cause.
const faultLogs = `s3 request failed; retrying|upload failed; will retry|read from s3 broke off; resuming|` +
	`abort multipart upload|delete failed; will retry|s3 is unreachable`

func stress() bool { return os.Getenv("KEELFS_STRESS") != "" }

// faultWindow is how long faults last in one phase.
func faultWindow() time.Duration {
	if stress() {
		return 40 * time.Second
	}
	return 5 * time.Second
}

// readWindowCap bounds how long a phase waits for its first whole read.
const readWindowCap = 90 * time.Second

// faultEnv is a versitygw behind a proxy, a bucket, and a writer mount
// through the proxy.
type faultEnv struct {
	t   *testing.T
	srv *harness.Server
	px  *harness.Proxy
	b   string
	w   *harness.Mount // writes
	r   *harness.Mount // reads, with a small cache so that reads go to S3

	readers     *sync.WaitGroup // the reads of the current phase
	stopReaders func()
}

func newFaultEnv(t *testing.T, writerArgs ...string) *faultEnv {
	t.Helper()
	e := &faultEnv{t: t, srv: harness.StartServer(t)}
	e.b = e.srv.NewBucket(t)
	e.px = e.srv.StartProxy(t)
	args := append([]string{"--write-back-delay", "200ms", "--part-size", "5M"}, writerArgs...)
	e.w = e.srv.Mount(t, e.b, harness.MountOptions{Endpoint: e.px.Endpoint, Args: args})
	e.w.AllowLog(faultLogs)
	// The reader evicts what it read almost at once, so that every pass
	// reads from S3 again, in many small GETs.
	e.r = e.srv.Mount(t, e.b, harness.MountOptions{Endpoint: e.px.Endpoint,
		Args: []string{"--block-size", "128K", "--cache-size", "4M", "--metadata-ttl", "500ms"}})
	e.r.AllowLog(faultLogs)
	return e
}

// corpus returns n files of assorted sizes under dir: empty, tiny,
// sub-block, multi-block and multipart (over the 5 MiB part size).
func corpus(dir string, n int) map[string][]byte {
	sizes := []int{0, 1, 4 << 10, 300 << 10, 1<<20 + 3, 3 << 20, 5<<20 + 12345}
	files := map[string][]byte{}
	for i := 0; i < n; i++ {
		files[fmt.Sprintf("%s/f%03d", dir, i)] = randBytes(sizes[i%len(sizes)])
	}
	return files
}

// readStats counts what the reads under faults saw.
type readStats struct {
	ok, failed, bytes atomic.Int64
}

func (s *readStats) String() string {
	return fmt.Sprintf("%d reads whole, %d failed, %d bytes checked", s.ok.Load(), s.failed.Load(), s.bytes.Load())
}

// checkRead reads path in 1 MiB preads with O_DIRECT (so that the kernel's
// page cache does not answer) and compares every byte it gets with want.
// A failed read is counted and tolerated; a wrong byte fails the test.
func checkRead(t *testing.T, path string, want []byte, st *readStats, abort <-chan struct{}) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_DIRECT, 0)
	if err != nil {
		if !isErrno(err, syscall.EIO) {
			t.Errorf("open %s: %v, want success or EIO", path, err)
		}
		st.failed.Add(1)
		return
	}
	defer f.Close()
	buf := alignedBuf(1 << 20)
	for off := 0; ; {
		select {
		case <-abort:
			return
		default:
		}
		n, err := f.ReadAt(buf, int64(off))
		if n > 0 {
			if off+n > len(want) || !bytes.Equal(buf[:n], want[off:off+n]) {
				t.Errorf("CORRUPT READ: %s at %d: %d bytes that differ from what was written (file is %d bytes)", path, off, n, len(want))
				return
			}
			st.bytes.Add(int64(n))
			off += n
		}
		if errors.Is(err, io.EOF) || (err == nil && n == 0) {
			if off != len(want) {
				t.Errorf("SHORT READ: %s ends at %d, want %d bytes", path, off, len(want))
			} else {
				st.ok.Add(1)
			}
			return
		}
		if err != nil {
			if !isErrno(err, syscall.EIO) {
				t.Errorf("read %s at %d: %v, want success or EIO", path, off, err)
			}
			st.failed.Add(1)
			return
		}
	}
}

// bucketHolds checks, by sha256, that every file is in the bucket exactly,
// and that the bucket holds nothing else but directory markers (no
// conflict copies, no probe objects).
func bucketHolds(t *testing.T, srv *harness.Server, b string, files map[string][]byte) {
	t.Helper()
	keys := srv.Keys(t, b, "")
	have := map[string]bool{}
	for _, k := range keys {
		have[k] = true
		if _, ok := files[k]; !ok && !strings.HasSuffix(k, "/") {
			t.Errorf("bucket holds an unexpected object %q", k)
		}
	}
	lost := 0
	for k, want := range files {
		if !have[k] {
			t.Errorf("LOST: %q is not in the bucket", k)
			lost++
			continue
		}
		got, _ := srv.Get(t, b, k)
		if sha256.Sum256(got) != sha256.Sum256(want) {
			t.Errorf("LOST: %q in the bucket has %d bytes (sha256 %x), written %d (sha256 %x)",
				k, len(got), sha256.Sum256(got), len(want), sha256.Sum256(want))
			lost++
		}
	}
	if lost == 0 {
		t.Logf("bucket holds all %d files byte for byte", len(files))
	}
}

// recovers shows that m works again without a remount: a new file is
// written, fsynced (so it is in S3), read back through the mount and found
// in the bucket.
func recovers(t *testing.T, srv *harness.Server, b string, m *harness.Mount, name string) {
	t.Helper()
	data := randBytes(5<<20 + 77) // multipart
	start := time.Now()
	defer func() { t.Logf("recovery write of %s: %v", name, time.Since(start)) }()
	f, err := os.Create(m.Path(name))
	if err != nil {
		t.Fatalf("after the faults: create: %v", err)
	}
	if _, err := f.Write(data); err != nil {
		t.Fatalf("after the faults: write: %v", err)
	}
	if err := f.Sync(); err != nil {
		t.Fatalf("after the faults: fsync: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Fatalf("after the faults: close: %v", err)
	}
	if got, err := os.ReadFile(m.Path(name)); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("after the faults: read back %d bytes (%v), want %d", len(got), err, len(data))
	}
	if got, _ := srv.Get(t, b, name); !bytes.Equal(got, data) {
		t.Fatalf("after the faults: the bucket has %d bytes of %s, want %d", len(got), name, len(data))
	}
}

// writeAll writes files through m, in parallel, with a few files
// overwritten several times; it returns what each file must finally hold.
// Writes land in the local cache, so none may fail because of S3.
func writeAll(t *testing.T, m *harness.Mount, files map[string][]byte) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, len(files))
	sem := make(chan struct{}, 4)
	for name, data := range files {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			p := m.Path(name)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				errs <- err
				return
			}
			if err := os.WriteFile(p, data, 0o644); err != nil {
				errs <- fmt.Errorf("write %s: %w", name, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("%v (writes must not fail because of S3)", err)
	}
}

// rewrite overwrites name with new versions, a little apart, so that some
// uploads of it happen during the faults; files[name] gets the last one.
func rewrite(t *testing.T, m *harness.Mount, files map[string][]byte, name string, versions int) {
	t.Helper()
	var last []byte
	if err := os.MkdirAll(filepath.Dir(m.Path(name)), 0o755); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < versions; i++ {
		last = randBytes(100<<10 + i*(1<<20))
		if err := os.WriteFile(m.Path(name), last, 0o644); err != nil {
			t.Fatalf("rewrite %s: %v", name, err)
		}
		time.Sleep(300 * time.Millisecond)
	}
	files[name] = last
}

// readLoop reads files through the reader mount until stop closes,
// checking every byte. Files not in S3 yet are skipped.
func readLoop(t *testing.T, m *harness.Mount, files map[string][]byte, stop <-chan struct{}, st *readStats) {
	names := make([]string, 0, len(files))
	for k := range files {
		names = append(names, k)
	}
	sort.Strings(names)
	rand.Shuffle(len(names), func(i, j int) { names[i], names[j] = names[j], names[i] })
	for {
		for _, k := range names {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := os.Stat(m.Path(k)); err != nil {
				continue
			}
			checkRead(t, m.Path(k), files[k], st, stop)
		}
	}
}

// phase runs the writer and readers for one fault window: pre-existing
// objects are read through the reader mount while new files are written
// through the writer mount. The readers are told to stop at the end of the
// window; finish waits for them (a read stuck in retries may end only once
// the faults are lifted).
func (e *faultEnv) phase(pre, written map[string][]byte) *readStats {
	t := e.t
	st := &readStats{}
	stop := make(chan struct{})
	e.readers = &sync.WaitGroup{}
	e.stopReaders = sync.OnceFunc(func() { close(stop) })
	t.Cleanup(func() { e.stopReaders(); e.readers.Wait() }) // before the unmounts
	for i := 0; i < 2; i++ {
		e.readers.Add(1)
		go func() { defer e.readers.Done(); readLoop(t, e.r, pre, stop, st) }()
	}
	start := time.Now()
	writeAll(t, e.w, written)
	rewrite(t, e.w, written, "new/rewritten", 5)
	wrote := time.Since(start)
	// Until the window ends, keep overwriting files already written, so
	// that uploads go on under the faults the whole time.
	names := make([]string, 0, len(written))
	for k := range written {
		names = append(names, k)
	}
	sort.Strings(names)
	rewrites := 0
	// The window stays open, up to readWindowCap, until one read has come
	// back whole under the faults: on a slow or loaded machine the first
	// reads may take longer than the window, and a phase that read nothing
	// whole would prove nothing about reads.
	for time.Since(start) < faultWindow() ||
		(len(pre) > 0 && st.ok.Load() == 0 && time.Since(start) < readWindowCap) {
		if len(names) == 0 {
			time.Sleep(200 * time.Millisecond)
			continue
		}
		name := names[rand.IntN(len(names))]
		data := randBytes([]int{0, 7, 200 << 10, 1<<20 + 1, 5<<20 + 9}[rand.IntN(5)])
		if err := os.WriteFile(e.w.Path(name), data, 0o644); err != nil {
			t.Errorf("overwrite %s: %v (writes must not fail because of S3)", name, err)
			break
		}
		written[name] = data
		rewrites++
		time.Sleep(200 * time.Millisecond)
	}
	e.stopReaders()
	t.Logf("fault window %v (first writes done after %v, then %d overwrites)", time.Since(start), wrote, rewrites)
	return st
}

// finish lifts the faults and checks the three properties.
func (e *faultEnv) finish(pre, written map[string][]byte, st *readStats) {
	t := e.t
	e.px.SetFaults(nil)
	start := time.Now()
	e.readers.Wait()
	t.Logf("under faults: %s; requests %v; last read ended %v after the faults", st, e.px.Counts(), time.Since(start))
	start = time.Now()
	e.w.Flush()
	t.Logf("flush after the faults took %v", time.Since(start))
	all := map[string][]byte{}
	for k, v := range pre {
		all[k] = v
	}
	for k, v := range written {
		all[k] = v
	}
	bucketHolds(t, e.srv, e.b, all)
	// Every file reads back whole now, through the reader, from S3.
	time.Sleep(600 * time.Millisecond) // the reader's metadata TTL
	start = time.Now()
	after := &readStats{}
	for k, v := range all {
		checkRead(t, e.r.Path(k), v, after, nil)
	}
	if after.failed.Load() != 0 {
		t.Errorf("after the faults stopped, %d of %d reads still failed", after.failed.Load(), len(all))
	}
	t.Logf("reading everything back after the faults took %v", time.Since(start))
	recovers(t, e.srv, e.b, e.w, "recovered")
}

// preload puts files straight into the bucket, for the reader to GET.
func (e *faultEnv) preload(files map[string][]byte) {
	for k, v := range files {
		e.srv.Put(e.t, e.b, k, v, nil)
	}
}

func nFiles() int {
	if stress() {
		return 40
	}
	return 7
}

// TestFaultServerErrors: bursts of 500 InternalError and 503 SlowDown on
// PUT, UploadPart, CompleteMultipartUpload and GET, a second on, a second
// and a half off, with some errors in between, while files are copied in
// and read back.
func TestFaultServerErrors(t *testing.T) {
	e := newFaultEnv(t)
	pre, written := corpus("pre", nFiles()), corpus("new", nFiles())
	e.preload(pre)
	start := time.Now()
	e.px.SetFaults(func(op string, r *http.Request) harness.Fault {
		switch op {
		case "PutObject", "UploadPart", "CompleteMultipartUpload", "GetObject":
		default:
			return harness.Fault{}
		}
		burst := time.Since(start)%(2500*time.Millisecond) < time.Second
		if !burst && rand.IntN(10) != 0 {
			return harness.Fault{}
		}
		if rand.IntN(2) == 0 {
			return harness.Fault{Status: 503, Code: "SlowDown"}
		}
		return harness.Fault{Status: 500, Code: "InternalError"}
	})
	st := e.phase(pre, written)
	e.finish(pre, written, st)
}

// TestFaultConnectionResets: connections reset before the answer, in the
// middle of a request body (PUT, UploadPart) or of a response body (GET),
// and requests whose answer is lost after S3 applied them.
func TestFaultConnectionResets(t *testing.T) {
	e := newFaultEnv(t)
	pre, written := corpus("pre", nFiles()), corpus("new", nFiles())
	e.preload(pre)
	var lost atomic.Int64
	e.px.SetFaults(func(op string, r *http.Request) harness.Fault {
		switch op {
		case "PutObject", "UploadPart", "CompleteMultipartUpload":
			switch rand.IntN(8) {
			case 0, 1:
				return harness.Fault{Cut: true} // mid-body for large ones
			case 2:
				lost.Add(1)
				return harness.Fault{DropResponse: true}
			}
		case "GetObject":
			switch rand.IntN(6) {
			case 0:
				return harness.Fault{Cut: true}
			case 1, 2:
				return harness.Fault{Cut: true, TruncateBody: 1 + rand.Int64N(512<<10)}
			}
		}
		return harness.Fault{}
	})
	st := e.phase(pre, written)
	t.Logf("%d answers dropped after S3 applied the request", lost.Load())
	e.finish(pre, written, st)
}

// TestFaultTruncatedBodies: GET answers that announce the full
// Content-Length and stop short, at any byte, then close the connection.
// The bytes that did arrive are right, so this is where a reader that
// takes a short body for the end of the data would fill a file with
// zeros or stop early.
func TestFaultTruncatedBodies(t *testing.T) {
	e := newFaultEnv(t)
	pre := corpus("pre", nFiles())
	pre["pre/odd"] = randBytes(128<<10*5 + 1) // ends one byte into a block
	e.preload(pre)
	var truncated atomic.Int64
	e.px.SetFaults(func(op string, r *http.Request) harness.Fault {
		if op != "GetObject" || rand.IntN(2) == 0 {
			return harness.Fault{}
		}
		truncated.Add(1)
		var n int64
		switch rand.IntN(4) {
		case 0:
			n = 1 // the smallest cut
		case 1:
			n = 128<<10 - 1 + rand.Int64N(3) // around a block boundary
		default:
			n = 1 + rand.Int64N(2<<20)
		}
		return harness.Fault{TruncateBody: n}
	})
	written := map[string][]byte{}
	st := e.phase(pre, written)
	t.Logf("%d GET answers truncated", truncated.Load())
	if truncated.Load() == 0 || st.bytes.Load() == 0 {
		t.Errorf("nothing read under truncation (%s): the test did not exercise the read path", st)
	}
	e.finish(pre, written, st)
}

// TestFaultSlowResponses: a random third of all requests wait up to three
// seconds before they reach S3. Nothing times out into data loss, nothing
// reads wrong, and the mount is still fine afterwards.
func TestFaultSlowResponses(t *testing.T) {
	e := newFaultEnv(t)
	pre, written := corpus("pre", nFiles()), corpus("new", nFiles())
	e.preload(pre)
	var slowed atomic.Int64
	e.px.SetFaults(func(op string, r *http.Request) harness.Fault {
		if rand.IntN(3) != 0 {
			return harness.Fault{}
		}
		slowed.Add(1)
		return harness.Fault{Delay: time.Duration(100+rand.IntN(2900)) * time.Millisecond}
	})
	st := e.phase(pre, written)
	t.Logf("%d requests slowed", slowed.Load())
	if st.ok.Load() == 0 {
		t.Errorf("no read completed with slow S3 answers: %s", st)
	}
	e.finish(pre, written, st)
}

// TestFaultRestartMidMultipart: versitygw stops and starts again while a
// 40 MiB file is in the middle of its multipart upload. The upload
// finishes once S3 is back; the object is exact; no multipart upload is
// left behind.
func TestFaultRestartMidMultipart(t *testing.T) {
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	px := srv.StartProxy(t)
	m := srv.Mount(t, b, harness.MountOptions{Endpoint: px.Endpoint,
		Args: []string{"--write-back-delay", "1h", "--part-size", "5M"}})
	m.AllowLog(faultLogs)
	rounds := 1
	if stress() {
		rounds = 4
	}
	for round := 0; round < rounds; round++ {
		name := fmt.Sprintf("big%d", round)
		// Hold the third part at the proxy until S3 has gone down and come
		// back: by then other parts have been sent, and some hit the
		// outage. Parts go up while the file is written (streamed), so
		// the third may be held before the write returns.
		held := make(chan struct{})
		release := make(chan struct{})
		var parts atomic.Int32
		px.SetFaults(func(op string, r *http.Request) harness.Fault {
			if op == "UploadPart" && parts.Add(1) == 3 {
				close(held)
				<-release
			}
			return harness.Fault{}
		})
		data := randBytes(40 << 20)
		if err := os.WriteFile(m.Path(name), data, 0o644); err != nil {
			t.Fatal(err)
		}
		synced := make(chan error, 1)
		go func() {
			f, err := os.OpenFile(m.Path(name), os.O_RDWR, 0)
			if err != nil {
				synced <- err
				return
			}
			defer f.Close()
			synced <- f.Sync()
		}()
		select {
		case <-held:
		case <-time.After(60 * time.Second):
			close(release)
			t.Fatalf("the multipart upload never reached its third part; requests %v", px.Counts())
		}
		srv.Stop()
		time.Sleep(2 * time.Second) // parts in flight meet a dead server
		srv.Restart(t)
		close(release)
		// fsync may report the outage (EIO) or wait it out; either way
		// the upload is finished after a flush.
		select {
		case err := <-synced:
			if err != nil && !isErrno(err, syscall.EIO) {
				t.Errorf("fsync across the restart: %v, want success or EIO", err)
			}
			t.Logf("round %d: fsync across the restart: %v", round, err)
		case <-time.After(3 * time.Minute):
			t.Fatalf("fsync hangs after the restart")
		}
		px.SetFaults(nil)
		m.Flush()
		if got, _ := srv.Get(t, b, name); sha256.Sum256(got) != sha256.Sum256(data) {
			t.Fatalf("round %d: %s in the bucket: %d bytes, sha256 differs from the %d written", round, name, len(got), len(data))
		}
		if got, err := os.ReadFile(m.Path(name)); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("round %d: read back %d bytes: %v", round, len(got), err)
		}
		t.Logf("round %d: requests %v", round, px.Counts())
		px.Reset()
	}
	if n := openUploads(t, srv, b); n != 0 {
		t.Errorf("%d multipart uploads left open after the restart", n)
	}
	recovers(t, srv, b, m, "after-restart")
}

// openUploads counts the bucket's unfinished multipart uploads.
func openUploads(t *testing.T, srv *harness.Server, b string) int {
	t.Helper()
	out, err := srv.Client(t).ListMultipartUploads(context.Background(), &s3.ListMultipartUploadsInput{Bucket: aws.String(b)})
	if err != nil {
		t.Fatalf("list multipart uploads: %v", err)
	}
	for _, u := range out.Uploads {
		t.Logf("open multipart upload: %s %s", aws.ToString(u.Key), aws.ToString(u.UploadId))
	}
	return len(out.Uploads)
}

// alignedBuf returns n bytes at a page-aligned address, as O_DIRECT wants.
func alignedBuf(n int) []byte {
	raw := make([]byte, n+4096)
	off := int(-uintptr(unsafe.Pointer(&raw[0])) & 4095)
	return raw[off : off+n : off+n]
}

// TestFaultLostAnswerAppend: an append to an object the mount never read
// is uploaded, S3 applies the PUT, and the answer is lost on the way back.
// The unchanged part of the file is not in the (small) cache, and the
// object it would come from has been replaced, by our own upload. The
// retry must see that and finish; it used to fail forever, so that flush
// hung and the append never reached S3 as far as the mount knew.
func TestFaultLostAnswerAppend(t *testing.T) {
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	base := randBytes(3 << 20)
	srv.Put(t, b, "log", base, nil)
	px := srv.StartProxy(t)
	m := srv.Mount(t, b, harness.MountOptions{Endpoint: px.Endpoint,
		Args: []string{"--write-back-delay", "1h", "--block-size", "128K", "--cache-size", "1M"}})
	m.AllowLog(faultLogs)
	var dropped atomic.Int32
	px.SetFaults(func(op string, r *http.Request) harness.Fault {
		if op == "PutObject" && strings.HasSuffix(r.URL.Path, "/log") && dropped.Add(1) == 1 {
			return harness.Fault{DropResponse: true}
		}
		return harness.Fault{}
	})
	f, err := os.OpenFile(m.Path("log"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	tail := []byte("one more line\n")
	if _, err := f.Write(tail); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, harness.Binary(t), "flush", m.Dir).CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("flush still waiting 60s after a lost answer; log:\n%s", tailOf(m.Log(), 3000))
	}
	if err != nil {
		t.Fatalf("keelfs flush: %v\n%s", err, out)
	}
	if dropped.Load() == 0 {
		t.Fatal("no PUT of log went through the proxy")
	}
	want := append(base, tail...)
	if got, _ := srv.Get(t, b, "log"); sha256.Sum256(got) != sha256.Sum256(want) {
		t.Fatalf("log in the bucket: %d bytes, want %d", len(got), len(want))
	}
	if keys := srv.Keys(t, b, ""); len(keys) != 1 {
		t.Fatalf("bucket holds %v, want log alone (no conflict copy)", keys)
	}
	checkRead(t, m.Path("log"), want, &readStats{}, nil)
}

func tailOf(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}
