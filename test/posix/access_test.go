package posix

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestAccess: permission checks on reads, writes and directory changes,
// made by the kernel (default_permissions) against the mode, uid and gid
// keelfs reports. The calls run as uid/gid 65534.
func TestAccess(t *testing.T) {
	f := newSharedFixture(t)

	// POSIX: opening for writing needs write permission: EACCES on a
	// 0644 file owned by root; so does truncate. Reading a 0600 file of
	// another owner is EACCES; a 0644 one may be read.
	t.Run("ReadWriteBits", func(t *testing.T) {
		d := f.dir(t)
		p := filepath.Join(d, "f")
		writeFile(t, p, []byte("root's"))
		must(t, os.Chmod(p, 0o644), "chmod")
		wantErrno(t, asNobody(t, userOp{Op: "write", Path: p, Data: []byte("mine now")}), syscall.EACCES, "write a 0644 root file")
		wantErrno(t, asNobody(t, userOp{Op: "truncate", Path: p}), syscall.EACCES, "truncate a 0644 root file")
		must(t, asNobody(t, userOp{Op: "read", Path: p}), "read a 0644 file")
		must(t, os.Chmod(p, 0o600), "chmod")
		wantErrno(t, asNobody(t, userOp{Op: "read", Path: p}), syscall.EACCES, "read a 0600 root file")
		must(t, os.Chmod(p, 0o666), "chmod")
		must(t, asNobody(t, userOp{Op: "write", Path: p, Data: []byte("X")}), "write a 0666 file")
		wantContent(t, p, []byte("Xoot's"))
		// Mode 0000 means no access at all (keelfs once showed it as 0644).
		must(t, os.Chmod(p, 0), "chmod 0")
		if st := lstat(t, p); st.Mode != syscall.S_IFREG {
			t.Fatalf("mode after chmod 0: %o", st.Mode)
		}
		wantErrno(t, asNobody(t, userOp{Op: "read", Path: p}), syscall.EACCES, "read a 0000 file")
	})

	// POSIX: the owner's bits apply to the owner even when they grant
	// less than the others' bits.
	t.Run("OwnerBitsFirst", func(t *testing.T) {
		d := f.dir(t)
		p := filepath.Join(d, "f")
		writeFile(t, p, []byte("x"))
		chownNobody(t, p)
		must(t, os.Chmod(p, 0o066), "chmod")
		wantErrno(t, asNobody(t, userOp{Op: "read", Path: p}), syscall.EACCES, "owner with ---rw-rw-")
	})

	// POSIX: creating, removing or renaming an entry needs write and
	// search permission on the directory: EACCES in a 0755 root
	// directory.
	t.Run("DirectoryWrite", func(t *testing.T) {
		d := f.dir(t)
		writeFile(t, filepath.Join(d, "existing"), []byte("x"))
		must(t, os.Chmod(filepath.Join(d, "existing"), 0o666), "chmod")
		wantErrno(t, asNobody(t, userOp{Op: "create", Path: filepath.Join(d, "new"), Mode: 0o644}), syscall.EACCES, "create in a root dir")
		wantErrno(t, asNobody(t, userOp{Op: "mkdir", Path: filepath.Join(d, "newdir"), Mode: 0o755}), syscall.EACCES, "mkdir in a root dir")
		wantErrno(t, asNobody(t, userOp{Op: "unlink", Path: filepath.Join(d, "existing")}), syscall.EACCES, "unlink in a root dir")
		wantErrno(t, asNobody(t, userOp{Op: "rename", Path: filepath.Join(d, "existing"), To: filepath.Join(d, "moved")}), syscall.EACCES, "rename in a root dir")
		f.wantKeys(t, d, "existing")
	})

	// POSIX: walking through a directory needs search (x) permission.
	t.Run("Search", func(t *testing.T) {
		d := f.dir(t)
		sub := filepath.Join(d, "closed")
		must(t, os.Mkdir(sub, 0o755), "mkdir")
		writeFile(t, filepath.Join(sub, "f"), []byte("x"))
		must(t, os.Chmod(filepath.Join(sub, "f"), 0o644), "chmod")
		must(t, os.Chmod(sub, 0o700), "chmod")
		wantErrno(t, asNobody(t, userOp{Op: "read", Path: filepath.Join(sub, "f")}), syscall.EACCES, "read through a 0700 dir")
		must(t, os.Chmod(sub, 0o711), "chmod")
		must(t, asNobody(t, userOp{Op: "read", Path: filepath.Join(sub, "f")}), "read through a 0711 dir")
	})

	// POSIX (XSI): in a sticky directory only the owner of an entry (or
	// of the directory) may remove or rename it: EPERM for others.
	t.Run("StickyDirectory", func(t *testing.T) {
		d := f.dir(t)
		tmp := filepath.Join(d, "tmp")
		must(t, os.Mkdir(tmp, 0o777), "mkdir")
		must(t, syscall.Chmod(tmp, 0o1777), "chmod +t")
		if st := lstat(t, tmp); st.Mode != syscall.S_IFDIR|0o1777 {
			t.Fatalf("sticky dir mode %o", st.Mode)
		}
		theirs := filepath.Join(tmp, "roots")
		writeFile(t, theirs, []byte("x"))
		wantErrno(t, asNobody(t, userOp{Op: "unlink", Path: theirs}), syscall.EPERM, "unlink another's file in a sticky dir")
		wantErrno(t, asNobody(t, userOp{Op: "rename", Path: theirs, To: filepath.Join(tmp, "x")}), syscall.EPERM, "rename another's file in a sticky dir")
		mine := filepath.Join(tmp, "mine")
		must(t, asNobody(t, userOp{Op: "create", Path: mine, Mode: 0o644}), "create in a sticky dir")
		must(t, asNobody(t, userOp{Op: "unlink", Path: mine}), "unlink one's own file in a sticky dir")
		wantContent(t, theirs, []byte("x"))
	})

	// keelfs: attributes written by other tools (s3fs headers) are what
	// the kernel checks: an object whose headers say uid 65534, mode
	// 0600 is writable by that uid.
	t.Run("HeadersDecide", func(t *testing.T) {
		d := f.dir(t)
		f.m.Flush()
		key := f.key(t, d) + "/external"
		f.srv.Put(t, f.bucket, key, []byte("from s3"), map[string]string{"mode": "33152", "uid": "65534", "gid": "65534"}) // 0100600
		p := filepath.Join(d, "external")
		waitFor(t, "the object to show", func() bool { return exists(p) })
		if st := lstat(t, p); st.Uid != nobody || st.Mode != syscall.S_IFREG|0o600 {
			t.Fatalf("uid %d mode %o", st.Uid, st.Mode)
		}
		must(t, asNobody(t, userOp{Op: "write", Path: p, Data: []byte("FROM")}), "write as the owner from the headers")
		wantContent(t, p, []byte("FROM s3"))
	})
}
