package posix

import (
	"bytes"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestTruncate: truncate(2) and ftruncate(2).
func TestTruncate(t *testing.T) {
	f := newFixture(t)

	// POSIX: shrinking discards the data past the new length; growing
	// adds bytes that read as zeros. Data cut off and then regrown reads
	// as zeros, not as the old bytes.
	t.Run("ShrinkGrow", func(t *testing.T) {
		d := f.dir(t)
		p := filepath.Join(d, "f")
		data := randBytes(2<<20 + 100)
		writeFile(t, p, data)
		must(t, syscall.Truncate(p, 1<<20+10), "truncate shrink")
		wantContent(t, p, data[:1<<20+10])
		must(t, syscall.Truncate(p, 3<<20), "truncate grow")
		want := make([]byte, 3<<20)
		copy(want, data[:1<<20+10])
		wantContent(t, p, want)
		if got, _ := f.object(t, p); !bytes.Equal(got, want) {
			t.Fatalf("object: %d bytes, want %d", len(got), len(want))
		}
		must(t, syscall.Truncate(p, 0), "truncate to 0")
		if st := lstat(t, p); st.Size != 0 {
			t.Fatalf("size %d", st.Size)
		}
		if got, _ := f.object(t, p); len(got) != 0 {
			t.Fatalf("object has %d bytes after truncate to 0", len(got))
		}
	})

	// POSIX: ftruncate does the same through a descriptor open for
	// writing, and does not move the offset.
	t.Run("Ftruncate", func(t *testing.T) {
		d := f.dir(t)
		p := filepath.Join(d, "f")
		writeFile(t, p, []byte("0123456789"))
		fd, err := sysOpen(p, syscall.O_RDWR, 0)
		must(t, err, "open")
		defer syscall.Close(fd)
		_, err = syscall.Seek(fd, 8, 0)
		must(t, err, "lseek")
		must(t, syscall.Ftruncate(fd, 4), "ftruncate shrink")
		must(t, syscall.Ftruncate(fd, 6), "ftruncate grow")
		var st syscall.Stat_t
		must(t, syscall.Fstat(fd, &st), "fstat")
		if st.Size != 6 {
			t.Fatalf("size %d, want 6", st.Size)
		}
		// The offset is still 8: a write there leaves a hole at 6..8.
		_, err = syscall.Write(fd, []byte("X"))
		must(t, err, "write")
		must(t, syscall.Close(fd), "close")
		wantContent(t, p, []byte("0123\x00\x00\x00\x00X"))
	})

	// POSIX: a negative length is EINVAL, for both calls.
	t.Run("Negative", func(t *testing.T) {
		d := f.dir(t)
		p := filepath.Join(d, "f")
		writeFile(t, p, []byte("abc"))
		wantErrno(t, syscall.Truncate(p, -1), syscall.EINVAL, "truncate -1")
		fd, err := sysOpen(p, syscall.O_RDWR, 0)
		must(t, err, "open")
		defer syscall.Close(fd)
		wantErrno(t, syscall.Ftruncate(fd, -1), syscall.EINVAL, "ftruncate -1")
		wantContent(t, p, []byte("abc"))
	})

	// POSIX: truncate of a directory is EISDIR. ftruncate of a descriptor
	// not open for writing is EINVAL (or EBADF; Linux says EINVAL).
	t.Run("DirectoryAndReadOnlyFd", func(t *testing.T) {
		d := f.dir(t)
		wantErrno(t, syscall.Truncate(d, 0), syscall.EISDIR, "truncate a directory")
		fd, err := sysOpen(d, syscall.O_RDONLY, 0)
		must(t, err, "open dir")
		wantErrno(t, syscall.Ftruncate(fd, 0), syscall.EINVAL, "ftruncate a directory")
		syscall.Close(fd)
		p := filepath.Join(d, "f")
		writeFile(t, p, []byte("abc"))
		fd, err = sysOpen(p, syscall.O_RDONLY, 0)
		must(t, err, "open O_RDONLY")
		wantErrno(t, syscall.Ftruncate(fd, 0), syscall.EINVAL, "ftruncate an O_RDONLY fd")
		syscall.Close(fd)
		wantContent(t, p, []byte("abc"))
	})

	// POSIX: ENOENT for a missing file; the file a symlink points to is
	// the one truncated.
	t.Run("MissingAndSymlink", func(t *testing.T) {
		d := f.dir(t)
		wantErrno(t, syscall.Truncate(filepath.Join(d, "nothing"), 0), syscall.ENOENT, "truncate missing")
		writeFile(t, filepath.Join(d, "target"), []byte("abcdef"))
		must(t, os.Symlink("target", filepath.Join(d, "link")), "symlink")
		must(t, syscall.Truncate(filepath.Join(d, "link"), 2), "truncate through a symlink")
		wantContent(t, filepath.Join(d, "target"), []byte("ab"))
		if target, _ := os.Readlink(filepath.Join(d, "link")); target != "target" {
			t.Fatalf("link now %q", target)
		}
	})

	// POSIX: a truncate that changes the size marks st_mtime and st_ctime
	// for update.
	t.Run("UpdatesMtime", func(t *testing.T) {
		d := f.dir(t)
		p := filepath.Join(d, "f")
		writeFile(t, p, []byte("abcdef"))
		old := time.Unix(1_000_000_000, 0)
		must(t, os.Chtimes(p, old, old), "chtimes")
		must(t, syscall.Truncate(p, 3), "truncate")
		if st := lstat(t, p); st.Mtim.Sec <= old.Unix() || st.Ctim.Sec <= old.Unix() {
			t.Fatalf("mtime %v ctime %v after truncate", st.Mtim, st.Ctim)
		}
	})

	// POSIX: EFBIG when the length exceeds the largest file the file
	// system allows; for keelfs that is S3's 5 TiB object limit.
	t.Run("TooBig", func(t *testing.T) {
		d := f.dir(t)
		p := filepath.Join(d, "f")
		writeFile(t, p, []byte("abc"))
		wantErrno(t, syscall.Truncate(p, 5<<40+1), syscall.EFBIG, "truncate past 5 TiB")
		wantContent(t, p, []byte("abc"))
	})
}
