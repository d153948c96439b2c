package posix

import (
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestCreate: creat(2), O_CREAT and mknod(2).
func TestCreate(t *testing.T) {
	f := newFixture(t)

	// POSIX: creat(path, mode) is open(path, O_WRONLY|O_CREAT|O_TRUNC,
	// mode): an existing file is truncated to 0 and keeps its mode.
	t.Run("CreatTruncatesExisting", func(t *testing.T) {
		d := f.dir(t)
		p := filepath.Join(d, "f")
		writeFile(t, p, []byte("some content"))
		must(t, os.Chmod(p, 0o600), "chmod")
		fd, err := syscall.Creat(p, 0o777)
		must(t, err, "creat")
		syscall.Close(fd)
		st := lstat(t, p)
		if st.Size != 0 || st.Mode != syscall.S_IFREG|0o600 {
			t.Fatalf("after creat: size %d mode %o, want 0 and %o", st.Size, st.Mode, syscall.S_IFREG|0o600)
		}
		if got, ok := f.object(t, p); !ok || len(got) != 0 {
			t.Fatalf("object %q %v, want empty", got, ok)
		}
	})

	// POSIX: a new file is empty, regular, owned by the caller's euid and
	// egid, has its times set to now, and marks the parent's st_mtime and
	// st_ctime for update. S3 gets a zero-byte object carrying the
	// attributes in s3fs's headers.
	t.Run("NewFile", func(t *testing.T) {
		d := f.dir(t)
		before := lstat(t, d)
		time.Sleep(20 * time.Millisecond)
		start := time.Now()
		p := filepath.Join(d, "new")
		fd, err := sysOpen(p, syscall.O_CREAT|syscall.O_EXCL|syscall.O_WRONLY, 0o640)
		must(t, err, "create")
		var st syscall.Stat_t
		must(t, syscall.Fstat(fd, &st), "fstat")
		syscall.Close(fd)
		if st.Mode != syscall.S_IFREG|0o640&^uint32(umask()) || st.Size != 0 || st.Uid != uint32(os.Geteuid()) || st.Gid != uint32(os.Getegid()) {
			t.Fatalf("new file: mode %o size %d uid %d gid %d", st.Mode, st.Size, st.Uid, st.Gid)
		}
		if mt := time.Unix(st.Mtim.Unix()); mt.Before(start.Add(-time.Second)) || mt.After(time.Now().Add(time.Second)) {
			t.Fatalf("new file mtime %v, created at %v", mt, start)
		}
		after := lstat(t, d)
		if after.Mtim == before.Mtim || after.Ctim == before.Ctim {
			t.Fatalf("parent mtime/ctime not updated: %v/%v -> %v/%v", before.Mtim, before.Ctim, after.Mtim, after.Ctim)
		}
		ents, err := os.ReadDir(d)
		must(t, err, "readdir")
		if len(ents) != 1 || ents[0].Name() != "new" || !ents[0].Type().IsRegular() {
			t.Fatalf("readdir: %v", ents)
		}
		got, ok := f.object(t, p)
		if !ok || len(got) != 0 {
			t.Fatalf("object %q %v, want an empty object", got, ok)
		}
		h := f.srv.Head(t, f.bucket, f.key(t, p))
		if h["mode"] != strconv.Itoa(int(st.Mode)) || h["uid"] != strconv.Itoa(int(st.Uid)) || h["gid"] != strconv.Itoa(int(st.Gid)) {
			t.Fatalf("headers %v, stat mode %d uid %d gid %d", h, st.Mode, st.Uid, st.Gid)
		}
	})

	// POSIX: an empty file is a file; it must survive as a zero-byte
	// object and not be taken for a directory marker.
	t.Run("EmptyFileStaysAFile", func(t *testing.T) {
		d := f.dir(t)
		p := filepath.Join(d, "empty")
		writeFile(t, p, nil)
		f.wantKeys(t, d, "empty")
		if st := lstat(t, p); st.Mode&syscall.S_IFMT != syscall.S_IFREG {
			t.Fatalf("mode %o", st.Mode)
		}
	})

	// POSIX: mknod(2) of a regular file (S_IFREG) creates an empty
	// file, like creat.
	t.Run("MknodRegular", func(t *testing.T) {
		d := f.dir(t)
		p := filepath.Join(d, "reg")
		err := syscall.Mknod(p, syscall.S_IFREG|0o644, 0)
		must(t, err, "mknod S_IFREG")
		if st := lstat(t, p); st.Mode != syscall.S_IFREG|0o644&^uint32(umask()) || st.Size != 0 {
			t.Fatalf("mknod S_IFREG: mode %o size %d", st.Mode, st.Size)
		}
	})

	// POSIX: mkfifo(3) and mknod(2) of sockets and devices create special
	// files. S3 cannot hold them: keelfs fails with EPERM (see
	// EXPECTED_FAILURES.md, "mknod").
	t.Run("MknodSpecial", func(t *testing.T) {
		d := f.dir(t)
		err := syscall.Mkfifo(filepath.Join(d, "fifo"), 0o644)
		wantErrno(t, err, syscall.EPERM, "mkfifo (EXPECTED_FAILURES.md: mknod)")
		err = syscall.Mknod(filepath.Join(d, "sock"), syscall.S_IFSOCK|0o644, 0)
		wantErrno(t, err, syscall.EPERM, "mknod S_IFSOCK (EXPECTED_FAILURES.md: mknod)")
		if exists(filepath.Join(d, "fifo")) || exists(filepath.Join(d, "sock")) {
			t.Fatal("a failed mknod left a name behind")
		}
		f.wantKeys(t, d)
	})

	// Linux: open(O_TMPFILE) makes an unnamed file in a directory, which
	// linkat(2) may later name. It is optional: a file system without it
	// fails with EOPNOTSUPP. keelfs has no unnamed files (see
	// EXPECTED_FAILURES.md, "O_TMPFILE").
	t.Run("Tmpfile", func(t *testing.T) {
		d := f.dir(t)
		err := openErr(d, unix.O_TMPFILE|syscall.O_RDWR, 0o600)
		wantErrno(t, err, syscall.EOPNOTSUPP, "O_TMPFILE (EXPECTED_FAILURES.md: O_TMPFILE)")
		f.wantKeys(t, d)
	})
}

// umask returns the process umask.
func umask() int {
	m := syscall.Umask(0)
	syscall.Umask(m)
	return m
}
