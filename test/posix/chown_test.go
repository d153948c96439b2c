package posix

import (
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
)

// TestChown: chown(2), lchown(2), and the owner of new files.
func TestChown(t *testing.T) {
	f := newSharedFixture(t)

	// POSIX: a privileged process may set any uid and gid; -1 leaves one
	// alone. S3 keeps them in x-amz-meta-uid/gid (s3fs's headers).
	t.Run("RootSetsOwner", func(t *testing.T) {
		d := f.dir(t)
		p := filepath.Join(d, "f")
		writeFile(t, p, []byte("x"))
		must(t, os.Chown(p, 1234, 5678), "chown")
		if st := lstat(t, p); st.Uid != 1234 || st.Gid != 5678 {
			t.Fatalf("uid %d gid %d", st.Uid, st.Gid)
		}
		must(t, os.Chown(p, -1, 42), "chgrp only")
		if st := lstat(t, p); st.Uid != 1234 || st.Gid != 42 {
			t.Fatalf("after chown -1 42: uid %d gid %d", st.Uid, st.Gid)
		}
		f.m.Flush()
		if h := f.srv.Head(t, f.bucket, f.key(t, p)); h["uid"] != "1234" || h["gid"] != "42" {
			t.Fatalf("headers %v", h)
		}
	})

	// POSIX: lchown changes the link itself, chown what it points to.
	t.Run("Lchown", func(t *testing.T) {
		d := f.dir(t)
		p := filepath.Join(d, "target")
		writeFile(t, p, nil)
		link := filepath.Join(d, "link")
		must(t, os.Symlink("target", link), "symlink")
		must(t, os.Lchown(link, 77, 88), "lchown")
		if st := lstat(t, link); st.Uid != 77 || st.Gid != 88 {
			t.Fatalf("link uid %d gid %d", st.Uid, st.Gid)
		}
		if st := lstat(t, p); st.Uid != 0 || st.Gid != 0 {
			t.Fatalf("lchown changed the target: uid %d gid %d", st.Uid, st.Gid)
		}
		must(t, os.Chown(link, 99, 99), "chown through the link")
		if st := lstat(t, p); st.Uid != 99 {
			t.Fatalf("target uid %d", st.Uid)
		}
	})

	// POSIX: without privilege, chown to another uid is EPERM, also on
	// one's own file; chgrp to a group one is not in is EPERM; on
	// someone else's file anything is EPERM.
	t.Run("NonRootEPERM", func(t *testing.T) {
		d := f.dir(t)
		mine := filepath.Join(d, "mine")
		writeFile(t, mine, nil)
		chownNobody(t, mine)
		roots := filepath.Join(d, "roots")
		writeFile(t, roots, nil)
		must(t, os.Chmod(roots, 0o666), "chmod")
		wantErrno(t, asNobody(t, userOp{Op: "chown", Path: mine, UID: 0, GID: -1}), syscall.EPERM, "give away one's own file")
		wantErrno(t, asNobody(t, userOp{Op: "chown", Path: mine, UID: -1, GID: 0}), syscall.EPERM, "chgrp to a group one is not in")
		wantErrno(t, asNobody(t, userOp{Op: "chown", Path: roots, UID: nobody, GID: nobody}), syscall.EPERM, "take someone else's file")
		// A no-op chown of one's own file is allowed.
		must(t, asNobody(t, userOp{Op: "chown", Path: mine, UID: nobody, GID: nobody}), "chown to oneself")
		if st := lstat(t, mine); st.Uid != nobody || st.Gid != nobody {
			t.Fatalf("mine: uid %d gid %d", st.Uid, st.Gid)
		}
		if st := lstat(t, roots); st.Uid != 0 || st.Gid != 0 {
			t.Fatalf("roots: uid %d gid %d", st.Uid, st.Gid)
		}
	})

	// Linux: chown of a regular file clears set-user-ID and set-group-ID
	// (POSIX requires it for unprivileged callers and allows it for
	// privileged ones).
	t.Run("ClearsSetID", func(t *testing.T) {
		d := f.dir(t)
		p := filepath.Join(d, "f")
		writeFile(t, p, nil)
		must(t, syscall.Chmod(p, 0o6755), "chmod ug+s")
		if st := lstat(t, p); st.Mode != syscall.S_IFREG|0o6755 {
			t.Fatalf("mode %o before chown", st.Mode)
		}
		must(t, os.Chown(p, 1, 1), "chown")
		if st := lstat(t, p); st.Mode != syscall.S_IFREG|0o755 {
			t.Fatalf("mode after chown %o, want %o", st.Mode, syscall.S_IFREG|0o755)
		}
	})

	// POSIX: a new file's owner is the caller's euid, its group the
	// caller's egid (or the directory's; see below). What another uid
	// creates carries that uid into S3.
	t.Run("NewFileOwner", func(t *testing.T) {
		d := f.dir(t)
		chownNobody(t, d)
		p := filepath.Join(d, "made-by-nobody")
		must(t, asNobody(t, userOp{Op: "create", Path: p, Mode: 0o640, Data: []byte("hi")}), "create as nobody")
		st := lstat(t, p)
		if st.Uid != nobody || st.Gid != nobody {
			t.Fatalf("uid %d gid %d, want %d", st.Uid, st.Gid, nobody)
		}
		f.m.Flush()
		if h := f.srv.Head(t, f.bucket, f.key(t, p)); h["uid"] != "65534" || h["gid"] != "65534" {
			t.Fatalf("headers %v", h)
		}
		must(t, asNobody(t, userOp{Op: "mkdir", Path: filepath.Join(d, "sub"), Mode: 0o755}), "mkdir as nobody")
		if st := lstat(t, filepath.Join(d, "sub")); st.Uid != nobody || st.Gid != nobody {
			t.Fatalf("sub: uid %d gid %d", st.Uid, st.Gid)
		}
	})

	// Linux (BSD semantics, allowed by POSIX): in a set-group-ID
	// directory a new entry takes the directory's group, whoever makes
	// it, and a new subdirectory inherits set-group-ID. Under FUSE the
	// file system does this; S3 keeps the group in x-amz-meta-gid.
	t.Run("SetgidDirectory", func(t *testing.T) {
		d := f.dir(t)
		must(t, os.Chown(d, 0, 4321), "chgrp")
		must(t, syscall.Chmod(d, 0o2777), "chmod g+s")
		p := filepath.Join(d, "f")
		writeFile(t, p, nil)
		must(t, os.Mkdir(filepath.Join(d, "sub"), 0o755), "mkdir")
		if st := lstat(t, p); st.Gid != 4321 || st.Mode&syscall.S_ISGID != 0 {
			t.Fatalf("file: gid %d mode %o, want the directory's group 4321", st.Gid, st.Mode)
		}
		if st := lstat(t, filepath.Join(d, "sub")); st.Gid != 4321 || st.Mode != syscall.S_IFDIR|syscall.S_ISGID|0o755&^uint32(umask()) {
			t.Fatalf("subdir: gid %d mode %o, want gid 4321 and set-group-ID", st.Gid, st.Mode)
		}
		// Someone outside the group gets the directory's group too.
		theirs := filepath.Join(d, "theirs")
		must(t, asNobody(t, userOp{Op: "create", Path: theirs, Mode: 0o644}), "create as uid 65534")
		if st := lstat(t, theirs); st.Uid != nobody || st.Gid != 4321 {
			t.Fatalf("file of uid 65534: uid %d gid %d, want gid 4321", st.Uid, st.Gid)
		}
		f.m.Flush()
		if h := f.srv.Head(t, f.bucket, f.key(t, theirs)); h["gid"] != "4321" {
			t.Fatalf("x-amz-meta-gid %q", h["gid"])
		}
		if h := f.srv.Head(t, f.bucket, f.key(t, filepath.Join(d, "sub"))+"/"); h["mode"] != strconv.Itoa(syscall.S_IFDIR|syscall.S_ISGID|0o755&^umask()) {
			t.Fatalf("subdir marker mode %q", h["mode"])
		}
	})

	// Linux: a write or a truncate by a user without CAP_FSETID clears
	// set-user-ID, and set-group-ID when group execute is set; root's
	// write keeps them (POSIX: "may" clear, Linux does not for root).
	t.Run("WriteClearsSetID", func(t *testing.T) {
		d := f.dir(t)
		p := filepath.Join(d, "f")
		writeFile(t, p, []byte("x"))
		must(t, syscall.Chmod(p, 0o6777), "chmod ug+s")
		writeAt(t, p, []byte("root"))
		if st := lstat(t, p); st.Mode != syscall.S_IFREG|0o6777 {
			t.Fatalf("mode after root's write %o", st.Mode)
		}
		must(t, asNobody(t, userOp{Op: "write", Path: p, Data: []byte("nobody")}), "write as uid 65534")
		if st := lstat(t, p); st.Mode != syscall.S_IFREG|0o777 {
			t.Fatalf("mode after uid 65534's write %o, want %o", st.Mode, syscall.S_IFREG|0o777)
		}
		f.m.Flush()
		if h := f.srv.Head(t, f.bucket, f.key(t, p)); h["mode"] != strconv.Itoa(syscall.S_IFREG|0o777) {
			t.Fatalf("x-amz-meta-mode %q", h["mode"])
		}
		must(t, syscall.Chmod(p, 0o4777), "chmod u+s")
		must(t, asNobody(t, userOp{Op: "truncate", Path: p, Size: 2}), "truncate as uid 65534")
		if st := lstat(t, p); st.Mode != syscall.S_IFREG|0o777 || st.Size != 2 {
			t.Fatalf("after uid 65534's truncate: mode %o size %d", st.Mode, st.Size)
		}
		// Set-group-ID without group execute marks mandatory locking: a
		// write leaves it, as Linux's FUSE does.
		must(t, syscall.Chmod(p, 0o2766), "chmod g+s g-x")
		must(t, asNobody(t, userOp{Op: "write", Path: p, Data: []byte("n")}), "write as uid 65534")
		if st := lstat(t, p); st.Mode != syscall.S_IFREG|0o2766 {
			t.Fatalf("mode after a write to a locking-marked file %o", st.Mode)
		}
	})
}

// writeAt overwrites the start of p without truncating it.
func writeAt(t *testing.T, p string, data []byte) {
	t.Helper()
	fd, err := sysOpen(p, syscall.O_WRONLY, 0)
	must(t, err, "open "+p)
	_, err = syscall.Write(fd, data)
	cerr := syscall.Close(fd)
	must(t, err, "write "+p)
	must(t, cerr, "close "+p)
}
