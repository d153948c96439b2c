package posix

import (
	"bytes"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestUnlink: unlink(2).
func TestUnlink(t *testing.T) {
	f := newFixture(t)

	// POSIX: unlink removes the name; the object leaves S3 (by
	// write-back). The parent's st_mtime and st_ctime are updated.
	t.Run("RemovesName", func(t *testing.T) {
		d := f.dir(t)
		p := filepath.Join(d, "f")
		writeFile(t, p, []byte("gone soon"))
		writeFile(t, filepath.Join(d, "stays"), []byte("x"))
		f.wantKeys(t, d, "f", "stays")
		before := lstat(t, d)
		must(t, syscall.Unlink(p), "unlink")
		if exists(p) {
			t.Fatal("name still there")
		}
		if after := lstat(t, d); after.Mtim == before.Mtim {
			t.Fatal("parent mtime not updated")
		}
		f.wantKeys(t, d, "stays")
	})

	// Linux: unlink of a directory is EISDIR (POSIX allows EPERM).
	t.Run("Directory", func(t *testing.T) {
		d := f.dir(t)
		must(t, os.Mkdir(filepath.Join(d, "sub"), 0o755), "mkdir")
		wantErrno(t, syscall.Unlink(filepath.Join(d, "sub")), syscall.EISDIR, "unlink a directory")
		if st := lstat(t, filepath.Join(d, "sub")); st.Mode&syscall.S_IFMT != syscall.S_IFDIR {
			t.Fatal("directory gone")
		}
	})

	// POSIX: ENOENT for a missing name, ENOTDIR when a prefix component
	// is a file.
	t.Run("Missing", func(t *testing.T) {
		d := f.dir(t)
		wantErrno(t, syscall.Unlink(filepath.Join(d, "nothing")), syscall.ENOENT, "unlink missing")
		writeFile(t, filepath.Join(d, "file"), nil)
		wantErrno(t, syscall.Unlink(filepath.Join(d, "file", "x")), syscall.ENOTDIR, "unlink file/x")
	})

	// POSIX: unlink of a symlink removes the link, not its target.
	t.Run("Symlink", func(t *testing.T) {
		d := f.dir(t)
		writeFile(t, filepath.Join(d, "target"), []byte("t"))
		must(t, os.Symlink("target", filepath.Join(d, "link")), "symlink")
		must(t, syscall.Unlink(filepath.Join(d, "link")), "unlink link")
		wantContent(t, filepath.Join(d, "target"), []byte("t"))
		f.wantKeys(t, d, "target")
	})

	// POSIX: when the last name is gone but the file is still open, its
	// content stays readable and writable through the descriptor until
	// the last close; only then is it removed. A new file of the same
	// name is a different file. S3 sees neither the unlinked file's
	// writes nor, after the close, its object.
	t.Run("OpenUnlinked", func(t *testing.T) {
		d := f.dir(t)
		p := filepath.Join(d, "f")
		data := randBytes(2<<20 + 5)
		writeFile(t, p, data)
		f.wantKeys(t, d, "f") // the object exists in S3 before the unlink
		fd, err := sysOpen(p, syscall.O_RDWR, 0)
		must(t, err, "open")
		must(t, syscall.Unlink(p), "unlink")
		if exists(p) {
			t.Fatal("name still there")
		}
		buf := make([]byte, len(data))
		n, err := syscall.Pread(fd, buf, 0)
		if err != nil || !bytes.Equal(buf[:n], data) {
			t.Fatalf("read after unlink: %d bytes, %v", n, err)
		}
		_, err = syscall.Pwrite(fd, []byte("still writable"), 10)
		must(t, err, "write after unlink")
		copy(data[10:], "still writable")
		n, err = syscall.Pread(fd, buf, 0)
		if err != nil || !bytes.Equal(buf[:n], data) {
			t.Fatalf("read back after write: %d bytes, %v", n, err)
		}
		var st syscall.Stat_t
		must(t, syscall.Fstat(fd, &st), "fstat")
		if st.Nlink != 0 {
			t.Errorf("fstat of an unlinked file: nlink %d, want 0", st.Nlink)
		}
		// The name is free for a new, different file.
		writeFile(t, p, []byte("new"))
		n, _ = syscall.Pread(fd, buf, 0)
		if !bytes.Equal(buf[:n], data) {
			t.Fatal("the open descriptor sees the new file")
		}
		// POSIX: fsync succeeds; there is nothing left to bring to S3.
		must(t, within(t, "fsync of an unlinked file", func() error { return syscall.Fsync(fd) }), "fsync of an unlinked file")
		must(t, syscall.Close(fd), "close")
		wantContent(t, p, []byte("new"))
		f.wantKeys(t, d, "f")
		if got, _ := f.object(t, p); string(got) != "new" {
			t.Fatalf("object is %d bytes, want the new file", len(got))
		}
	})
}
