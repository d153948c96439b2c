package posix

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// TestRename: rename(2) and renameat2(2).
func TestRename(t *testing.T) {
	f := newFixture(t)

	// POSIX: a file renamed over another file replaces it atomically; the
	// old name is gone. In S3 the old key goes and the new key holds the
	// renamed content.
	t.Run("FileOverFile", func(t *testing.T) {
		d := f.dir(t)
		a, b := filepath.Join(d, "a"), filepath.Join(d, "b")
		writeFile(t, a, []byte("from a"))
		writeFile(t, b, []byte("old b"))
		f.wantKeys(t, d, "a", "b")
		must(t, syscall.Rename(a, b), "rename a b")
		if exists(a) {
			t.Fatal("a still exists")
		}
		wantContent(t, b, []byte("from a"))
		f.wantKeys(t, d, "b")
		if got, _ := f.object(t, b); string(got) != "from a" {
			t.Fatalf("object b = %q", got)
		}
	})

	// POSIX: a file moves to another directory; the attributes go with
	// it.
	t.Run("CrossDirectory", func(t *testing.T) {
		d := f.dir(t)
		must(t, os.Mkdir(filepath.Join(d, "x"), 0o755), "mkdir x")
		must(t, os.Mkdir(filepath.Join(d, "y"), 0o755), "mkdir y")
		src, dst := filepath.Join(d, "x", "f"), filepath.Join(d, "y", "g")
		writeFile(t, src, []byte("moving"))
		must(t, os.Chmod(src, 0o600), "chmod")
		must(t, syscall.Rename(src, dst), "rename x/f y/g")
		wantContent(t, dst, []byte("moving"))
		if st := lstat(t, dst); st.Mode != syscall.S_IFREG|0o600 {
			t.Fatalf("mode after rename %o", st.Mode)
		}
		f.wantKeys(t, d, "x/", "y/", "y/g")
	})

	// POSIX: a directory renamed over an empty directory replaces it; a
	// directory moves with everything under it.
	t.Run("DirOverEmptyDir", func(t *testing.T) {
		d := f.dir(t)
		src, dst := filepath.Join(d, "src"), filepath.Join(d, "dst")
		must(t, os.MkdirAll(filepath.Join(src, "deep"), 0o755), "mkdir")
		writeFile(t, filepath.Join(src, "deep", "f"), []byte("deep file"))
		writeFile(t, filepath.Join(src, "top"), []byte("top file"))
		must(t, os.Mkdir(dst, 0o755), "mkdir dst")
		must(t, syscall.Rename(src, dst), "rename src dst")
		if exists(src) {
			t.Fatal("src still exists")
		}
		wantContent(t, filepath.Join(dst, "deep", "f"), []byte("deep file"))
		wantContent(t, filepath.Join(dst, "top"), []byte("top file"))
		// Directory markers may or may not be there for non-empty
		// directories; the files must be exactly the moved ones.
		if got := fileKeys(f.keysUnder(t, d)); strings.Join(got, " ") != "dst/deep/f dst/top" {
			t.Fatalf("file keys %q, want dst/deep/f dst/top", got)
		}
	})

	// POSIX: a directory renamed over a non-empty directory fails with
	// EEXIST or ENOTEMPTY (Linux: ENOTEMPTY), changing nothing.
	t.Run("DirOverNonEmptyDir", func(t *testing.T) {
		d := f.dir(t)
		src, dst := filepath.Join(d, "src"), filepath.Join(d, "dst")
		must(t, os.Mkdir(src, 0o755), "mkdir src")
		must(t, os.Mkdir(dst, 0o755), "mkdir dst")
		writeFile(t, filepath.Join(dst, "f"), []byte("x"))
		wantErrno(t, syscall.Rename(src, dst), syscall.ENOTEMPTY, "rename dir over non-empty dir")
		wantContent(t, filepath.Join(dst, "f"), []byte("x"))
		if !exists(src) {
			t.Fatal("src gone")
		}
	})

	// POSIX: a file over a directory is EISDIR; a directory over a
	// file is ENOTDIR.
	t.Run("TypeMismatch", func(t *testing.T) {
		d := f.dir(t)
		file, dir := filepath.Join(d, "file"), filepath.Join(d, "dir")
		writeFile(t, file, []byte("x"))
		must(t, os.Mkdir(dir, 0o755), "mkdir")
		wantErrno(t, syscall.Rename(file, dir), syscall.EISDIR, "rename file over dir")
		wantErrno(t, syscall.Rename(dir, file), syscall.ENOTDIR, "rename dir over file")
		wantContent(t, file, []byte("x"))
		if st := lstat(t, dir); st.Mode&syscall.S_IFMT != syscall.S_IFDIR {
			t.Fatal("dir changed")
		}
	})

	// POSIX: EINVAL when the new path would be inside the directory being
	// moved; ENOTEMPTY (Linux) when the target is an ancestor of the
	// source.
	t.Run("IntoOwnSubtree", func(t *testing.T) {
		d := f.dir(t)
		a := filepath.Join(d, "a")
		must(t, os.MkdirAll(filepath.Join(a, "b", "c"), 0o755), "mkdir")
		wantErrno(t, syscall.Rename(a, filepath.Join(a, "b", "c", "a")), syscall.EINVAL, "rename a a/b/c/a")
		wantErrno(t, syscall.Rename(a, filepath.Join(a, "x")), syscall.EINVAL, "rename a a/x")
		wantErrno(t, syscall.Rename(filepath.Join(a, "b", "c"), a), syscall.ENOTEMPTY, "rename a/b/c a")
		if !exists(filepath.Join(a, "b", "c")) {
			t.Fatal("tree changed")
		}
	})

	// POSIX: if old and new name the same file, rename does nothing and
	// succeeds.
	t.Run("ToItself", func(t *testing.T) {
		d := f.dir(t)
		p := filepath.Join(d, "f")
		writeFile(t, p, []byte("same"))
		must(t, syscall.Rename(p, p), "rename f f")
		must(t, syscall.Rename(p, d+"/./f"), "rename f ./f")
		must(t, os.Mkdir(filepath.Join(d, "dir"), 0o755), "mkdir")
		must(t, syscall.Rename(filepath.Join(d, "dir"), filepath.Join(d, "dir")), "rename dir dir")
		wantContent(t, p, []byte("same"))
		f.wantKeys(t, d, "dir/", "f")
	})

	// POSIX: ENOENT when the source is missing or the target's directory
	// does not exist; ENOTDIR when a component of the target's prefix is
	// a file. Linux: EBUSY or EINVAL for "." and "..".
	t.Run("Errors", func(t *testing.T) {
		d := f.dir(t)
		p := filepath.Join(d, "f")
		writeFile(t, p, []byte("x"))
		wantErrno(t, syscall.Rename(filepath.Join(d, "nothing"), filepath.Join(d, "g")), syscall.ENOENT, "rename missing")
		wantErrno(t, syscall.Rename(p, filepath.Join(d, "no", "g")), syscall.ENOENT, "rename into a missing dir")
		writeFile(t, filepath.Join(d, "file"), nil)
		wantErrno(t, syscall.Rename(p, filepath.Join(d, "file", "g")), syscall.ENOTDIR, "rename under a file")
		wantErrno(t, syscall.Rename(d+"/.", filepath.Join(d, "x")), syscall.EBUSY, "rename .")
		wantContent(t, p, []byte("x"))
	})

	// Linux renameat2: RENAME_NOREPLACE fails with EEXIST when the target
	// exists and otherwise renames.
	t.Run("NoReplace", func(t *testing.T) {
		d := f.dir(t)
		a, b := filepath.Join(d, "a"), filepath.Join(d, "b")
		writeFile(t, a, []byte("a"))
		writeFile(t, b, []byte("b"))
		err := unix.Renameat2(unix.AT_FDCWD, a, unix.AT_FDCWD, b, unix.RENAME_NOREPLACE)
		wantErrno(t, err, syscall.EEXIST, "RENAME_NOREPLACE over an existing file")
		wantContent(t, b, []byte("b"))
		must(t, unix.Renameat2(unix.AT_FDCWD, a, unix.AT_FDCWD, filepath.Join(d, "c"), unix.RENAME_NOREPLACE), "RENAME_NOREPLACE to a new name")
		wantContent(t, filepath.Join(d, "c"), []byte("a"))
	})

	// Linux renameat2: RENAME_EXCHANGE swaps two names atomically. keelfs
	// does not implement it and fails with EINVAL (see
	// EXPECTED_FAILURES.md, "RENAME_EXCHANGE").
	t.Run("Exchange", func(t *testing.T) {
		d := f.dir(t)
		a, b := filepath.Join(d, "a"), filepath.Join(d, "b")
		writeFile(t, a, []byte("a"))
		writeFile(t, b, []byte("b"))
		err := unix.Renameat2(unix.AT_FDCWD, a, unix.AT_FDCWD, b, unix.RENAME_EXCHANGE)
		wantErrno(t, err, syscall.EINVAL, "RENAME_EXCHANGE (EXPECTED_FAILURES.md: RENAME_EXCHANGE)")
		wantContent(t, a, []byte("a"))
		wantContent(t, b, []byte("b"))
	})

	// POSIX: renaming a file over one that is open leaves the open
	// descriptor on the old (now unlinked) file.
	t.Run("OverOpenFile", func(t *testing.T) {
		d := f.dir(t)
		a, b := filepath.Join(d, "a"), filepath.Join(d, "b")
		writeFile(t, a, []byte("new content"))
		writeFile(t, b, []byte("old content"))
		r, err := os.Open(b)
		must(t, err, "open b")
		defer r.Close()
		must(t, syscall.Rename(a, b), "rename a b")
		buf := make([]byte, 32)
		n, _ := r.ReadAt(buf, 0)
		if string(buf[:n]) != "old content" {
			t.Fatalf("open descriptor reads %q", buf[:n])
		}
		wantContent(t, b, []byte("new content"))
	})
}
