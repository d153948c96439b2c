package posix

import (
	"bytes"
	"crypto/rand"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

func randBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// TestReadWrite: read(2), write(2), pread(2), pwrite(2).
func TestReadWrite(t *testing.T) {
	f := newFixture(t)

	// POSIX: write advances the file offset by the bytes written; read
	// returns the bytes written, and 0 at end of file.
	t.Run("WriteReadOffsets", func(t *testing.T) {
		d := f.dir(t)
		p := filepath.Join(d, "f")
		fd, err := sysOpen(p, syscall.O_CREAT|syscall.O_RDWR, 0o644)
		must(t, err, "create")
		defer syscall.Close(fd)
		for _, s := range []string{"hello ", "world"} {
			n, err := syscall.Write(fd, []byte(s))
			if err != nil || n != len(s) {
				t.Fatalf("write %q: %d %v", s, n, err)
			}
		}
		if off, _ := syscall.Seek(fd, 0, 1); off != 11 {
			t.Fatalf("offset after writes %d, want 11", off)
		}
		_, err = syscall.Seek(fd, 0, 0)
		must(t, err, "lseek")
		buf := make([]byte, 100)
		n, err := syscall.Read(fd, buf)
		if err != nil || string(buf[:n]) != "hello world" {
			t.Fatalf("read %q %v", buf[:n], err)
		}
		if n, err := syscall.Read(fd, buf); n != 0 || err != nil {
			t.Fatalf("read at EOF: %d %v, want 0 nil", n, err)
		}
	})

	// POSIX: pread and pwrite use the given offset and leave the file
	// offset alone. Writing into the middle keeps the bytes around it.
	t.Run("PreadPwrite", func(t *testing.T) {
		d := f.dir(t)
		p := filepath.Join(d, "f")
		data := randBytes(3<<20 + 12345) // crosses 1 MiB cache blocks
		writeFile(t, p, data)
		fd, err := sysOpen(p, syscall.O_RDWR, 0)
		must(t, err, "open")
		defer syscall.Close(fd)
		patch := []byte("PATCH-ACROSS-A-BLOCK-BOUNDARY")
		off := int64(1<<20 - 7)
		n, err := syscall.Pwrite(fd, patch, off)
		if err != nil || n != len(patch) {
			t.Fatalf("pwrite: %d %v", n, err)
		}
		copy(data[off:], patch)
		if cur, _ := syscall.Seek(fd, 0, 1); cur != 0 {
			t.Fatalf("pwrite moved the offset to %d", cur)
		}
		buf := make([]byte, 100)
		n, err = syscall.Pread(fd, buf, off-10)
		if err != nil || !bytes.Equal(buf[:n], data[off-10:off-10+100]) {
			t.Fatalf("pread: %d %v %q", n, err, buf[:n])
		}
		if cur, _ := syscall.Seek(fd, 0, 1); cur != 0 {
			t.Fatalf("pread moved the offset to %d", cur)
		}
		// pread past the end returns 0; a read straddling it returns
		// what is there.
		if n, err := syscall.Pread(fd, buf, int64(len(data))+10); n != 0 || err != nil {
			t.Fatalf("pread past EOF: %d %v", n, err)
		}
		if n, _ := syscall.Pread(fd, buf, int64(len(data))-5); n != 5 {
			t.Fatalf("pread straddling EOF: %d bytes, want 5", n)
		}
		// A negative offset is EINVAL.
		_, err = syscall.Pread(fd, buf, -1)
		wantErrno(t, err, syscall.EINVAL, "pread at -1")
		_, err = syscall.Pwrite(fd, buf, -1)
		wantErrno(t, err, syscall.EINVAL, "pwrite at -1")
		must(t, syscall.Close(fd), "close")
		wantContent(t, p, data)
		if got, _ := f.object(t, p); !bytes.Equal(got, data) {
			t.Fatalf("object differs (%d bytes, want %d)", len(got), len(data))
		}
	})

	// POSIX: a write past the end of file leaves a gap (a hole) that
	// reads as zeros. keelfs stores the whole file, zeros included, as one
	// object (see docs/compatibility.md).
	t.Run("SparseHoles", func(t *testing.T) {
		d := f.dir(t)
		p := filepath.Join(d, "sparse")
		fd, err := sysOpen(p, syscall.O_CREAT|syscall.O_RDWR, 0o644)
		must(t, err, "create")
		_, err = syscall.Pwrite(fd, []byte("head"), 0)
		must(t, err, "pwrite head")
		far := int64(5<<20 + 3)
		_, err = syscall.Pwrite(fd, []byte("tail"), far)
		must(t, err, "pwrite tail")
		var st syscall.Stat_t
		must(t, syscall.Fstat(fd, &st), "fstat")
		if st.Size != far+4 {
			t.Fatalf("size %d, want %d", st.Size, far+4)
		}
		buf := make([]byte, 3<<20)
		n, err := syscall.Pread(fd, buf, 2)
		if err != nil || n != len(buf) {
			t.Fatalf("pread hole: %d %v", n, err)
		}
		if string(buf[:2]) != "ad" || !bytes.Equal(buf[2:], make([]byte, len(buf)-2)) {
			t.Fatal("hole does not read as zeros")
		}
		must(t, syscall.Close(fd), "close")
		want := make([]byte, far+4)
		copy(want, "head")
		copy(want[far:], "tail")
		wantContent(t, p, want)
		got, _ := f.object(t, p)
		if !bytes.Equal(got, want) {
			t.Fatalf("object: %d bytes, want %d with zeros in the hole", len(got), len(want))
		}
	})

	// POSIX: after a write returns, a read of that range through any
	// descriptor returns the new data (within one mount).
	t.Run("ReadAfterWriteOtherFd", func(t *testing.T) {
		d := f.dir(t)
		p := filepath.Join(d, "f")
		writeFile(t, p, []byte("aaaaaaaaaa"))
		r, err := os.Open(p)
		must(t, err, "open r")
		defer r.Close()
		buf := make([]byte, 10)
		r.ReadAt(buf, 0) // fill the page cache with the old data
		w, err := os.OpenFile(p, os.O_WRONLY, 0)
		must(t, err, "open w")
		_, err = w.WriteAt([]byte("BBB"), 4)
		must(t, err, "write")
		n, err := r.ReadAt(buf, 0)
		if n != 10 || string(buf) != "aaaaBBBaaa" {
			t.Fatalf("other fd reads %q (%v)", buf[:n], err)
		}
		must(t, w.Close(), "close w")
	})

	// POSIX: a successful write marks st_mtime and st_ctime for update.
	t.Run("WriteUpdatesMtime", func(t *testing.T) {
		d := f.dir(t)
		p := filepath.Join(d, "f")
		writeFile(t, p, []byte("x"))
		old := time.Unix(1_000_000_000, 0)
		must(t, os.Chtimes(p, old, old), "chtimes")
		w, err := os.OpenFile(p, os.O_WRONLY, 0)
		must(t, err, "open")
		_, err = w.Write([]byte("y"))
		must(t, err, "write")
		must(t, w.Close(), "close")
		if st := lstat(t, p); st.Mtim.Sec <= old.Unix() || st.Ctim.Sec <= old.Unix() {
			t.Fatalf("mtime %v ctime %v after a write", st.Mtim, st.Ctim)
		}
	})

	// POSIX: read(2) of a directory fails with EISDIR (Linux).
	t.Run("ReadDirectory", func(t *testing.T) {
		d := f.dir(t)
		fd, err := sysOpen(d, syscall.O_RDONLY, 0)
		must(t, err, "open dir")
		defer syscall.Close(fd)
		_, err = syscall.Read(fd, make([]byte, 10))
		wantErrno(t, err, syscall.EISDIR, "read on a directory")
	})

	// keelfs contract: fsync returns once the file is in S3, so the
	// object is there without a flush.
	t.Run("FsyncMeansInS3", func(t *testing.T) {
		d := f.dir(t)
		p := filepath.Join(d, "f")
		w, err := os.Create(p)
		must(t, err, "create")
		_, err = w.Write([]byte("durable"))
		must(t, err, "write")
		must(t, within(t, "fsync", w.Sync), "fsync")
		got, ok := f.srv.Get(t, f.bucket, f.key(t, p))
		w.Close()
		if !ok || string(got) != "durable" {
			t.Fatalf("after fsync the object is %q (%v)", got, ok)
		}
	})
}
