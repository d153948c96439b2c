package posix

import (
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestCreate: creat(2), O_CREAT and mknod(2).
func TestCreate(t *testing.T) {
	f := newSharedFixture(t)

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

	// POSIX: mkfifo(3) and mknod(2) make FIFOs, sockets and (with
	// privilege) character and block devices, with the mode less the
	// umask and the device number given. keelfs stores each as s3fs does:
	// a zero-byte object whose x-amz-meta-mode holds the type bits (a FIFO
	// 0644 is 4516, a character device 0644 is 8612, a socket 0755 is
	// 49645), the device number in x-amz-meta-rdev.
	t.Run("MknodSpecial", func(t *testing.T) {
		d := f.dir(t)
		nodes := []struct {
			name string
			mode uint32
			dev  int
			hdr  string
		}{
			{"fifo", syscall.S_IFIFO | 0o644, 0, "4516"},
			{"chr", syscall.S_IFCHR | 0o644, int(unix.Mkdev(1, 3)), "8612"},
			{"blk", syscall.S_IFBLK | 0o640, int(unix.Mkdev(7, 9)), "24992"},
			{"sock", syscall.S_IFSOCK | 0o755, 0, "49645"},
		}
		withUmask(0o022, func() {
			for _, n := range nodes {
				must(t, syscall.Mknod(filepath.Join(d, n.name), n.mode|0o022, n.dev), "mknod "+n.name)
			}
		})
		for _, n := range nodes {
			p := filepath.Join(d, n.name)
			st := lstat(t, p)
			if st.Mode != n.mode || st.Rdev != uint64(n.dev) || st.Size != 0 || st.Nlink != 1 {
				t.Fatalf("%s: mode %o rdev %d size %d nlink %d, want mode %o rdev %d", n.name, st.Mode, st.Rdev, st.Size, st.Nlink, n.mode, n.dev)
			}
			if body, ok := f.object(t, p); !ok || len(body) != 0 {
				t.Fatalf("%s: object %q %v, want a zero-byte object", n.name, body, ok)
			}
			h := f.srv.Head(t, f.bucket, f.key(t, p))
			if h["mode"] != n.hdr || h["uid"] != "0" || h["gid"] != "0" || h["mtime"] == "" || h["ctime"] == "" || h["atime"] == "" {
				t.Fatalf("%s: headers %v, want mode %s", n.name, h, n.hdr)
			}
			want := ""
			if n.dev != 0 {
				want = strconv.Itoa(n.dev)
			}
			if h["rdev"] != want {
				t.Fatalf("%s: x-amz-meta-rdev %q, want %q", n.name, h["rdev"], want)
			}
		}
		ents, err := os.ReadDir(d)
		must(t, err, "readdir")
		types := map[string]os.FileMode{}
		for _, e := range ents {
			types[e.Name()] = e.Type()
		}
		if types["fifo"] != os.ModeNamedPipe || types["sock"] != os.ModeSocket || types["chr"] != os.ModeDevice|os.ModeCharDevice || types["blk"] != os.ModeDevice {
			t.Fatalf("readdir types %v", types)
		}
		// A FUSE mount is nodev unless mounted with dev: the kernel refuses
		// to open the device.
		wantErrno(t, openErr(filepath.Join(d, "chr"), syscall.O_RDONLY, 0), syscall.EACCES, "open a device on a nodev mount")
		// Another mount with an empty cache sees the same nodes.
		other := f.fresh(t)
		for _, n := range nodes {
			if st := lstat(t, other(filepath.Join(d, n.name))); st.Mode != n.mode || st.Rdev != uint64(n.dev) {
				t.Fatalf("%s on a fresh mount: mode %o rdev %d", n.name, st.Mode, st.Rdev)
			}
		}
	})

	// POSIX: mknod fails with EEXIST on an existing name, ENOENT in a
	// missing directory, ENOTDIR under a file; Linux: a device needs
	// CAP_MKNOD (EPERM without it), a FIFO or socket does not.
	t.Run("MknodErrors", func(t *testing.T) {
		d := f.dir(t)
		must(t, os.Chmod(d, 0o777), "chmod")
		p := filepath.Join(d, "fifo")
		must(t, syscall.Mkfifo(p, 0o644), "mkfifo")
		wantErrno(t, syscall.Mkfifo(p, 0o644), syscall.EEXIST, "mkfifo over a FIFO")
		wantErrno(t, syscall.Mknod(p, syscall.S_IFCHR|0o644, 0), syscall.EEXIST, "mknod over a FIFO")
		wantErrno(t, syscall.Mkfifo(filepath.Join(d, "none", "x"), 0o644), syscall.ENOENT, "mkfifo in a missing dir")
		file := filepath.Join(d, "file")
		writeFile(t, file, nil)
		wantErrno(t, syscall.Mkfifo(filepath.Join(file, "x"), 0o644), syscall.ENOTDIR, "mkfifo under a file")
		wantErrno(t, asNobody(t, userOp{Op: "mknod", Path: filepath.Join(d, "dev"), Mode: syscall.S_IFCHR | 0o644, Dev: int(unix.Mkdev(1, 3))}),
			syscall.EPERM, "mknod of a device without CAP_MKNOD")
		must(t, asNobody(t, userOp{Op: "mknod", Path: filepath.Join(d, "theirs"), Mode: syscall.S_IFIFO | 0o600}), "mkfifo as uid 65534")
		if st := lstat(t, filepath.Join(d, "theirs")); st.Uid != nobody || st.Gid != nobody || st.Mode != syscall.S_IFIFO|0o600 {
			t.Fatalf("FIFO of uid 65534: uid %d gid %d mode %o", st.Uid, st.Gid, st.Mode)
		}
		if exists(filepath.Join(d, "dev")) {
			t.Fatal("a refused mknod left a name")
		}
	})

	// POSIX: a FIFO opened for reading and for writing is a pipe between
	// the two processes. The kernel makes it; keelfs only stores the node.
	t.Run("FifoCarriesData", func(t *testing.T) {
		d := f.dir(t)
		p := filepath.Join(d, "pipe")
		must(t, syscall.Mkfifo(p, 0o600), "mkfifo")
		writer := exec.Command("sh", "-c", `printf 'through the pipe' > "$1"`, "sh", p)
		must(t, writer.Start(), "start the writer")
		var got []byte
		err := within(t, "read the FIFO", func() error {
			var err error
			got, err = os.ReadFile(p)
			return err
		})
		must(t, err, "read the FIFO")
		must(t, writer.Wait(), "writer")
		if string(got) != "through the pipe" {
			t.Fatalf("read %q from the FIFO", got)
		}
		if st := lstat(t, p); st.Size != 0 {
			t.Fatalf("FIFO size %d after use", st.Size)
		}
		if body, ok := f.object(t, p); !ok || len(body) != 0 {
			t.Fatalf("FIFO object after use: %q %v", body, ok)
		}
	})

	// POSIX: bind(2) of a UNIX socket creates the socket node; connect(2)
	// to the path reaches the listener.
	t.Run("UnixSocket", func(t *testing.T) {
		d := f.dir(t)
		p := filepath.Join(d, "s.sock")
		l, err := net.Listen("unix", p)
		must(t, err, "listen on the mount")
		defer l.Close()
		go func() {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("hello over the socket"))
			c.Close()
		}()
		if st := lstat(t, p); st.Mode&syscall.S_IFMT != syscall.S_IFSOCK {
			t.Fatalf("socket node mode %o", st.Mode)
		}
		c, err := net.Dial("unix", p)
		must(t, err, "connect")
		got, err := io.ReadAll(c)
		c.Close()
		must(t, err, "read from the socket")
		if string(got) != "hello over the socket" {
			t.Fatalf("read %q", got)
		}
		f.m.Flush()
		if h := f.srv.Head(t, f.bucket, f.key(t, p)); h["mode"] != strconv.Itoa(syscall.S_IFSOCK|0o777&^umask()) {
			t.Fatalf("socket object headers %v", h)
		}
	})

	// POSIX: special files are renamed, chmod'ed, chown'ed and removed like
	// any file; S3 follows.
	t.Run("SpecialLifecycle", func(t *testing.T) {
		d := f.dir(t)
		p := filepath.Join(d, "fifo")
		must(t, syscall.Mkfifo(p, 0o644), "mkfifo")
		q := filepath.Join(d, "moved")
		must(t, os.Rename(p, q), "rename")
		must(t, syscall.Chmod(q, 0o600), "chmod")
		must(t, os.Lchown(q, 12, 34), "chown")
		if st := lstat(t, q); st.Mode != syscall.S_IFIFO|0o600 || st.Uid != 12 || st.Gid != 34 {
			t.Fatalf("after rename, chmod, chown: mode %o uid %d gid %d", st.Mode, st.Uid, st.Gid)
		}
		f.wantKeys(t, d, "moved")
		if h := f.srv.Head(t, f.bucket, f.key(t, q)); h["mode"] != "4480" || h["uid"] != "12" || h["gid"] != "34" {
			t.Fatalf("headers %v, want mode 4480 (0o10600) uid 12 gid 34", h)
		}
		must(t, os.Remove(q), "unlink")
		f.wantKeys(t, d)
	})

	// keelfs: what s3fs stores reads back as the same node: type from the
	// mode header; s3fs keeps no device number, so its devices read 0, 0.
	t.Run("SpecialFromS3fs", func(t *testing.T) {
		d := f.dir(t)
		f.m.Flush()
		kp := f.key(t, d) + "/"
		for name, mode := range map[string]string{"f": "4516", "c": "8612", "s": "49645", "b": "25008"} {
			f.srv.Put(t, f.bucket, kp+name, nil, map[string]string{"mode": mode, "uid": "0", "gid": "0",
				"mtime": "1600000000", "ctime": "1600000000", "atime": "1600000000"})
		}
		want := map[string]uint32{"f": syscall.S_IFIFO | 0o644, "c": syscall.S_IFCHR | 0o644, "s": syscall.S_IFSOCK | 0o755, "b": syscall.S_IFBLK | 0o660}
		waitFor(t, "the objects to show", func() bool { return exists(filepath.Join(d, "b")) })
		for name, mode := range want {
			st := lstat(t, filepath.Join(d, name))
			if st.Mode != mode || st.Rdev != 0 || st.Mtim.Sec != 1600000000 {
				t.Fatalf("%s: mode %o rdev %d mtime %d, want mode %o", name, st.Mode, st.Rdev, st.Mtim.Sec, mode)
			}
		}
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
