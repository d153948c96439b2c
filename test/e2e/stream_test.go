package e2e

import (
	"bytes"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keelfs/keelfs/test/harness"
)

// writeChunks writes data to f in 1 MiB writes, as cp does.
func writeChunks(t *testing.T, f *os.File, data []byte) {
	t.Helper()
	for off := 0; off < len(data); off += 1 << 20 {
		if _, err := f.Write(data[off:min(len(data), off+1<<20)]); err != nil {
			t.Fatal(err)
		}
	}
}

// waitOps waits until the proxy has seen op n times.
func waitOps(t *testing.T, p *harness.Proxy, op string, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for p.Counts()[op] < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d %s requests after 30 s, want %d: %v", p.Counts()[op], op, n, p.Counts())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// headerTime parses an x-amz-meta-mtime value ("sec" or "sec.frac").
func headerTime(t *testing.T, v string) syscall.Timespec {
	t.Helper()
	sec, frac, _ := strings.Cut(v, ".")
	s, err := strconv.ParseInt(sec, 10, 64)
	if err != nil || len(frac) > 9 {
		t.Fatalf("bad mtime header %q", v)
	}
	var ns int64
	if frac != "" {
		if ns, err = strconv.ParseInt(frac+strings.Repeat("0", 9-len(frac)), 10, 64); err != nil {
			t.Fatalf("bad mtime header %q", v)
		}
	}
	return syscall.Timespec{Sec: s, Nsec: ns}
}

// TestStreamWhileWriting: the parts of a big file go to S3 while it is
// still open for writing, although the write-back delay has not passed;
// the object appears only after close, whole, with the closed file's
// mtime in its headers, and no multipart upload is left open.
func TestStreamWhileWriting(t *testing.T) {
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	proxy := srv.StartProxy(t)
	m := srv.Mount(t, b, harness.MountOptions{Endpoint: proxy.Endpoint,
		Args: []string{"--part-size", "5MiB", "--write-back-delay", "1h"}})
	const ps = 5 << 20
	data := randBytes(4*ps + 12345) // four whole parts and a tail
	f, err := os.Create(m.Path("video.bin"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	writeChunks(t, f, data)
	waitOps(t, proxy, "UploadPart", 4)
	if _, ok := srv.Get(t, b, "video.bin"); ok {
		t.Fatal("object visible while the file is still open")
	}
	time.Sleep(100 * time.Millisecond) // a later mtime than the upload's headers
	if _, err := f.WriteAt([]byte("LAST"), int64(len(data)-4)); err != nil {
		t.Fatal(err)
	}
	copy(data[len(data)-4:], "LAST")
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	m.Flush()
	got, ok := srv.Get(t, b, "video.bin")
	if !ok || !bytes.Equal(got, data) {
		t.Fatalf("object after flush: %d bytes (found %v), want %d", len(got), ok, len(data))
	}
	if n := proxy.Counts()["UploadPart"]; n != 5 {
		t.Errorf("%d UploadPart requests, want 5: the 4 streamed parts and the tail", n)
	}
	st := stat(t, m.Path("video.bin"))
	if h := srv.Head(t, b, "video.bin"); headerTime(t, h["mtime"]) != st.Mtim {
		t.Errorf("mtime header %q, file mtime %v", h["mtime"], st.Mtim)
	}
	if n := openUploads(t, srv, b); n != 0 {
		t.Errorf("%d multipart uploads left open", n)
	}
}

// TestStreamKill9: a file is written, fsynced (which completes its first
// stream) and written on (a second stream sends the new whole parts);
// then the daemon is killed. The next mount aborts the multipart upload
// the crash left open and uploads the file whole from the cache.
func TestStreamKill9(t *testing.T) {
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	proxy := srv.StartProxy(t)
	m := srv.Mount(t, b, harness.MountOptions{Endpoint: proxy.Endpoint,
		Args: []string{"--part-size", "5MiB", "--write-back-delay", "1h"}})
	data := randBytes(3*(5<<20) + 7)
	f, err := os.Create(m.Path("log.bin"))
	if err != nil {
		t.Fatal(err)
	}
	writeChunks(t, f, data)
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if n := proxy.Counts()["UploadPart"]; n != 4 {
		t.Fatalf("%d UploadPart requests after fsync, want 4: 3 streamed parts and the tail", n)
	}
	more := randBytes(3 * (5 << 20))
	writeChunks(t, f, more)
	data = append(data, more...)
	// Part 4 holds the old tail, now clean: it is left to the upload.
	// Parts 5 and 6 are all new and go up in a second multipart upload.
	waitOps(t, proxy, "UploadPart", 6)
	if n := proxy.Counts()["CreateMultipartUpload"]; n != 2 {
		t.Fatalf("%d multipart uploads created, want 2 (one per stream)", n)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if openUploads(t, srv, b) == 0 {
		t.Fatal("no multipart upload open before the crash: nothing to test")
	}
	m.Kill9()
	m.AllowLog(`stale mount`)
	m.Remount()
	m.Flush()
	got, ok := srv.Get(t, b, "log.bin")
	if !ok || !bytes.Equal(got, data) {
		t.Fatalf("object after kill -9, remount and flush: %d bytes, want %d", len(got), len(data))
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		n := openUploads(t, srv, b)
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d multipart uploads still open 30 s after the remount", n)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
