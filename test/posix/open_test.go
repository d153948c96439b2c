package posix

import (
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
)

// TestOpen: open(2) flags and modes.
func TestOpen(t *testing.T) {
	f := newFixture(t)

	// POSIX: O_CREAT|O_EXCL fails with EEXIST if the path exists, whatever
	// it is: a file, a directory, or a symlink (even a dangling one, which
	// is not followed).
	t.Run("ExclOnExisting", func(t *testing.T) {
		d := f.dir(t)
		writeFile(t, filepath.Join(d, "file"), []byte("keep"))
		must(t, os.Mkdir(filepath.Join(d, "dir"), 0o755), "mkdir")
		must(t, os.Symlink("nowhere", filepath.Join(d, "dangling")), "symlink")
		for _, name := range []string{"file", "dir", "dangling"} {
			err := openErr(filepath.Join(d, name), syscall.O_CREAT|syscall.O_EXCL|syscall.O_WRONLY, 0o644)
			wantErrno(t, err, syscall.EEXIST, "O_CREAT|O_EXCL on "+name)
		}
		wantContent(t, filepath.Join(d, "file"), []byte("keep"))
		if exists(filepath.Join(d, "nowhere")) {
			t.Fatal("O_CREAT|O_EXCL followed a dangling symlink")
		}
	})

	// POSIX: O_CREAT without O_EXCL on an existing file opens it, leaving
	// its content and mode alone (the mode argument only applies to a new
	// file).
	t.Run("CreatOnExistingOpensIt", func(t *testing.T) {
		d := f.dir(t)
		p := filepath.Join(d, "f")
		writeFile(t, p, []byte("old content"))
		must(t, os.Chmod(p, 0o640), "chmod")
		fd, err := sysOpen(p, syscall.O_CREAT|syscall.O_RDWR, 0o777)
		must(t, err, "open O_CREAT existing")
		buf := make([]byte, 64)
		n, err := syscall.Read(fd, buf)
		must(t, err, "read")
		syscall.Close(fd)
		if string(buf[:n]) != "old content" {
			t.Fatalf("read %q", buf[:n])
		}
		if st := lstat(t, p); st.Mode != syscall.S_IFREG|0o640 {
			t.Fatalf("mode %o, want %o", st.Mode, syscall.S_IFREG|0o640)
		}
	})

	// POSIX: O_TRUNC on a regular file opened for writing sets its length
	// to 0; mode and owner stay. S3 then holds an empty object.
	t.Run("Trunc", func(t *testing.T) {
		d := f.dir(t)
		p := filepath.Join(d, "f")
		writeFile(t, p, []byte("0123456789"))
		fd, err := sysOpen(p, syscall.O_WRONLY|syscall.O_TRUNC, 0)
		must(t, err, "open O_TRUNC")
		var st syscall.Stat_t
		must(t, syscall.Fstat(fd, &st), "fstat")
		if st.Size != 0 {
			t.Fatalf("size after O_TRUNC %d", st.Size)
		}
		_, err = syscall.Write(fd, []byte("ab"))
		must(t, err, "write")
		must(t, syscall.Close(fd), "close")
		wantContent(t, p, []byte("ab"))
		if got, ok := f.object(t, p); !ok || string(got) != "ab" {
			t.Fatalf("object %q %v", got, ok)
		}
	})

	// Linux: O_TRUNC with O_RDONLY truncates too (POSIX leaves it
	// unspecified) when the caller may write the file.
	t.Run("TruncReadOnly", func(t *testing.T) {
		d := f.dir(t)
		p := filepath.Join(d, "f")
		writeFile(t, p, []byte("0123456789"))
		fd, err := sysOpen(p, syscall.O_RDONLY|syscall.O_TRUNC, 0)
		must(t, err, "open O_RDONLY|O_TRUNC")
		syscall.Close(fd)
		if st := lstat(t, p); st.Size != 0 {
			t.Fatalf("size %d after O_RDONLY|O_TRUNC, want 0", st.Size)
		}
	})

	// POSIX: with O_APPEND the file offset is set to the end of the file
	// before each write, whatever lseek did.
	t.Run("Append", func(t *testing.T) {
		d := f.dir(t)
		p := filepath.Join(d, "f")
		writeFile(t, p, []byte("abc"))
		fd, err := sysOpen(p, syscall.O_WRONLY|syscall.O_APPEND, 0)
		must(t, err, "open O_APPEND")
		_, err = syscall.Seek(fd, 0, 0)
		must(t, err, "lseek")
		_, err = syscall.Write(fd, []byte("def"))
		must(t, err, "write")
		// Another descriptor grows the file; the appender still lands at
		// the new end.
		g, err := os.OpenFile(p, os.O_WRONLY, 0)
		must(t, err, "open second")
		_, err = g.WriteAt([]byte("GHI"), 6)
		must(t, err, "pwrite second")
		g.Close()
		_, err = syscall.Write(fd, []byte("jkl"))
		must(t, err, "write")
		must(t, syscall.Close(fd), "close")
		wantContent(t, p, []byte("abcdefGHIjkl"))
		if got, _ := f.object(t, p); string(got) != "abcdefGHIjkl" {
			t.Fatalf("object %q", got)
		}
	})

	// POSIX: a new file's permission bits are the mode argument with the
	// process umask cleared, and S3 keeps them in x-amz-meta-mode.
	t.Run("CreateModeUmask", func(t *testing.T) {
		d := f.dir(t)
		cases := []struct {
			umask      int
			mode, want uint32
		}{
			{0o022, 0o777, 0o755},
			{0o077, 0o666, 0o600},
			{0o000, 0o640, 0o640},
			{0o027, 0o4755, 0o4750}, // set-user-ID is kept
		}
		for i, c := range cases {
			p := filepath.Join(d, "f"+strconv.Itoa(i))
			withUmask(c.umask, func() {
				fd, err := sysOpen(p, syscall.O_CREAT|syscall.O_EXCL|syscall.O_WRONLY, c.mode)
				must(t, err, "create")
				syscall.Close(fd)
			})
			if st := lstat(t, p); st.Mode != syscall.S_IFREG|c.want {
				t.Errorf("umask %o mode %o: got %o, want %o", c.umask, c.mode, st.Mode, syscall.S_IFREG|c.want)
			}
		}
		f.m.Flush()
		for i, c := range cases {
			h := f.srv.Head(t, f.bucket, f.key(t, filepath.Join(d, "f"+strconv.Itoa(i))))
			if h["mode"] != strconv.Itoa(int(syscall.S_IFREG|c.want)) {
				t.Errorf("f%d: x-amz-meta-mode %q, want %d", i, h["mode"], syscall.S_IFREG|c.want)
			}
		}
	})

	// POSIX: O_DIRECTORY on something that is not a directory fails with
	// ENOTDIR; on a directory it opens it.
	t.Run("DirectoryFlag", func(t *testing.T) {
		d := f.dir(t)
		p := filepath.Join(d, "f")
		writeFile(t, p, nil)
		err := openErr(p, syscall.O_RDONLY|syscall.O_DIRECTORY, 0)
		wantErrno(t, err, syscall.ENOTDIR, "O_DIRECTORY on a file")
		fd, err := sysOpen(d, syscall.O_RDONLY|syscall.O_DIRECTORY, 0)
		must(t, err, "O_DIRECTORY on a directory")
		syscall.Close(fd)
	})

	// POSIX: ENOENT if the file is missing (without O_CREAT) or a
	// directory on the way is missing, even with O_CREAT; ENOTDIR if a
	// component of the path prefix is not a directory.
	t.Run("Missing", func(t *testing.T) {
		d := f.dir(t)
		err := openErr(filepath.Join(d, "nothing"), syscall.O_RDONLY, 0)
		wantErrno(t, err, syscall.ENOENT, "open missing")
		err = openErr(filepath.Join(d, "nothing"), syscall.O_WRONLY, 0)
		wantErrno(t, err, syscall.ENOENT, "open missing for write")
		err = openErr(filepath.Join(d, "no", "such"), syscall.O_CREAT|syscall.O_WRONLY, 0o644)
		wantErrno(t, err, syscall.ENOENT, "O_CREAT in a missing directory")
		writeFile(t, filepath.Join(d, "file"), nil)
		err = openErr(filepath.Join(d, "file", "x"), syscall.O_CREAT|syscall.O_WRONLY, 0o644)
		wantErrno(t, err, syscall.ENOTDIR, "O_CREAT under a file")
		err = openErr(filepath.Join(d, "file")+"/", syscall.O_RDONLY, 0)
		wantErrno(t, err, syscall.ENOTDIR, "open file/ (trailing slash)")
	})

	// POSIX: EISDIR when a directory is opened for writing. Linux: also
	// when O_CREAT names a directory, or a new name ends in a slash.
	t.Run("DirectoryForWriting", func(t *testing.T) {
		d := f.dir(t)
		err := openErr(d, syscall.O_WRONLY, 0)
		wantErrno(t, err, syscall.EISDIR, "open dir O_WRONLY")
		err = openErr(d, syscall.O_RDWR, 0)
		wantErrno(t, err, syscall.EISDIR, "open dir O_RDWR")
		err = openErr(d, syscall.O_CREAT|syscall.O_WRONLY, 0o644)
		wantErrno(t, err, syscall.EISDIR, "O_CREAT on a directory")
		err = openErr(filepath.Join(d, "new")+"/", syscall.O_CREAT|syscall.O_WRONLY, 0o644)
		wantErrno(t, err, syscall.EISDIR, "O_CREAT on new/")
		if exists(filepath.Join(d, "new")) {
			t.Fatal("new/ was created")
		}
	})

	// POSIX: read on a descriptor not open for reading, or write on one
	// not open for writing, fails with EBADF.
	t.Run("AccessMode", func(t *testing.T) {
		d := f.dir(t)
		p := filepath.Join(d, "f")
		writeFile(t, p, []byte("data"))
		fd, err := sysOpen(p, syscall.O_RDONLY, 0)
		must(t, err, "open O_RDONLY")
		_, err = syscall.Write(fd, []byte("x"))
		wantErrno(t, err, syscall.EBADF, "write on O_RDONLY")
		syscall.Close(fd)
		fd, err = sysOpen(p, syscall.O_WRONLY, 0)
		must(t, err, "open O_WRONLY")
		_, err = syscall.Read(fd, make([]byte, 4))
		wantErrno(t, err, syscall.EBADF, "read on O_WRONLY")
		syscall.Close(fd)
		wantContent(t, p, []byte("data"))
	})
}
