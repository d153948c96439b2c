package posix

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// TestSymlink: symlink(2), readlink(2), lstat(2) of links.
func TestSymlink(t *testing.T) {
	f := newFixture(t)

	// POSIX: readlink returns the target as given; lstat reports S_IFLNK
	// and a size equal to the target's length; stat and open follow the
	// link. keelfs stores the link as s3fs does: an object whose body is
	// the target, with S_IFLNK in x-amz-meta-mode.
	t.Run("CreateAndRead", func(t *testing.T) {
		d := f.dir(t)
		writeFile(t, filepath.Join(d, "target"), []byte("through the link"))
		link := filepath.Join(d, "link")
		must(t, os.Symlink("target", link), "symlink")
		if got, err := os.Readlink(link); err != nil || got != "target" {
			t.Fatalf("readlink %q %v", got, err)
		}
		st := lstat(t, link)
		if st.Mode&syscall.S_IFMT != syscall.S_IFLNK || st.Size != int64(len("target")) {
			t.Fatalf("lstat: mode %o size %d", st.Mode, st.Size)
		}
		// Linux: a symlink's permission bits are 0777 and are not used.
		if st.Mode&0o777 != 0o777 {
			t.Errorf("symlink permission bits %o, want 777", st.Mode&0o777)
		}
		var fst syscall.Stat_t
		must(t, syscall.Stat(link, &fst), "stat")
		if fst.Mode&syscall.S_IFMT != syscall.S_IFREG {
			t.Fatalf("stat through the link: mode %o", fst.Mode)
		}
		wantContent(t, link, []byte("through the link"))
		body, ok := f.object(t, link)
		if !ok || string(body) != "target" {
			t.Fatalf("object body %q %v, want the target", body, ok)
		}
		h := f.srv.Head(t, f.bucket, f.key(t, link))
		if mode, _ := strconv.Atoi(h["mode"]); uint32(mode)&syscall.S_IFMT != syscall.S_IFLNK {
			t.Fatalf("x-amz-meta-mode %q lacks S_IFLNK", h["mode"])
		}
	})

	// POSIX: the target is any string; it need not exist (a dangling
	// link). lstat works, stat and open fail with ENOENT, and open with
	// O_CREAT creates the target (Linux follows the link).
	t.Run("Dangling", func(t *testing.T) {
		d := f.dir(t)
		link := filepath.Join(d, "dangling")
		must(t, os.Symlink("missing", link), "symlink")
		if st := lstat(t, link); st.Mode&syscall.S_IFMT != syscall.S_IFLNK {
			t.Fatalf("lstat mode %o", st.Mode)
		}
		var st syscall.Stat_t
		wantErrno(t, syscall.Stat(link, &st), syscall.ENOENT, "stat a dangling link")
		err := openErr(link, syscall.O_RDONLY, 0)
		wantErrno(t, err, syscall.ENOENT, "open a dangling link")
		fd, err := sysOpen(link, syscall.O_CREAT|syscall.O_WRONLY, 0o644)
		must(t, err, "O_CREAT through a dangling link")
		syscall.Write(fd, []byte("made"))
		syscall.Close(fd)
		wantContent(t, filepath.Join(d, "missing"), []byte("made"))
	})

	// POSIX: targets keep their exact bytes: absolute, relative with
	// "..", spaces, unicode, up to PATH_MAX.
	t.Run("Targets", func(t *testing.T) {
		d := f.dir(t)
		targets := []string{"/etc/passwd", "../../x/./y", "with space ü 日本", strings.Repeat("a/", 2000) + "end"}
		for i, target := range targets {
			p := filepath.Join(d, "l"+strconv.Itoa(i))
			must(t, os.Symlink(target, p), "symlink")
			if got, err := os.Readlink(p); err != nil || got != target {
				t.Errorf("readlink l%d: %.60q %v, want %.60q", i, got, err, target)
			}
		}
		f.m.Flush()
		for i, target := range targets {
			body, _ := f.srv.Get(t, f.bucket, f.key(t, filepath.Join(d, "l"+strconv.Itoa(i))))
			if string(body) != target {
				t.Errorf("object l%d body %.60q, want %.60q", i, body, target)
			}
		}
	})

	// POSIX: symlink fails with EEXIST if the name exists (even as a
	// dangling link); ENOENT for an empty target (Linux).
	t.Run("Errors", func(t *testing.T) {
		d := f.dir(t)
		writeFile(t, filepath.Join(d, "file"), []byte("x"))
		must(t, os.Symlink("a", filepath.Join(d, "link")), "symlink")
		wantErrno(t, syscall.Symlink("b", filepath.Join(d, "file")), syscall.EEXIST, "symlink over a file")
		wantErrno(t, syscall.Symlink("b", filepath.Join(d, "link")), syscall.EEXIST, "symlink over a link")
		wantErrno(t, syscall.Symlink("b", d), syscall.EEXIST, "symlink over a directory")
		wantErrno(t, syscall.Symlink("", filepath.Join(d, "empty")), syscall.ENOENT, "symlink with an empty target")
		wantContent(t, filepath.Join(d, "file"), []byte("x"))
	})

	// POSIX: readlink of something that is not a link is EINVAL; of a
	// missing name ENOENT.
	t.Run("ReadlinkNotALink", func(t *testing.T) {
		d := f.dir(t)
		writeFile(t, filepath.Join(d, "file"), nil)
		buf := make([]byte, 100)
		_, err := syscall.Readlink(filepath.Join(d, "file"), buf)
		wantErrno(t, err, syscall.EINVAL, "readlink a file")
		_, err = syscall.Readlink(d, buf)
		wantErrno(t, err, syscall.EINVAL, "readlink a directory")
		_, err = syscall.Readlink(filepath.Join(d, "nothing"), buf)
		wantErrno(t, err, syscall.ENOENT, "readlink missing")
	})

	// POSIX: O_NOFOLLOW on a symlink fails with ELOOP; a loop of links
	// fails with ELOOP when followed.
	t.Run("Loops", func(t *testing.T) {
		d := f.dir(t)
		writeFile(t, filepath.Join(d, "target"), nil)
		must(t, os.Symlink("target", filepath.Join(d, "link")), "symlink")
		err := openErr(filepath.Join(d, "link"), syscall.O_RDONLY|syscall.O_NOFOLLOW, 0)
		wantErrno(t, err, syscall.ELOOP, "O_NOFOLLOW on a link")
		must(t, os.Symlink("loop2", filepath.Join(d, "loop1")), "symlink")
		must(t, os.Symlink("loop1", filepath.Join(d, "loop2")), "symlink")
		err = openErr(filepath.Join(d, "loop1"), syscall.O_RDONLY, 0)
		wantErrno(t, err, syscall.ELOOP, "open a loop")
	})

	// POSIX: a symlink to a directory can be walked through; rename moves
	// the link, not what it points to.
	t.Run("ToDirectoryAndRename", func(t *testing.T) {
		d := f.dir(t)
		must(t, os.Mkdir(filepath.Join(d, "dir"), 0o755), "mkdir")
		writeFile(t, filepath.Join(d, "dir", "inside"), []byte("in"))
		must(t, os.Symlink("dir", filepath.Join(d, "dl")), "symlink")
		wantContent(t, filepath.Join(d, "dl", "inside"), []byte("in"))
		must(t, os.Rename(filepath.Join(d, "dl"), filepath.Join(d, "dl2")), "rename link")
		if got, _ := os.Readlink(filepath.Join(d, "dl2")); got != "dir" {
			t.Fatalf("moved link reads %q", got)
		}
		wantContent(t, filepath.Join(d, "dl2", "inside"), []byte("in"))
		f.wantKeys(t, d, "dir/", "dir/inside", "dl2")
	})
}
