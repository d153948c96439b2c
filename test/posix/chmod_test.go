package posix

import (
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// TestChmod: chmod(2). The kernel checks permissions (default_permissions)
// against the owner keelfs reports; the unprivileged calls run as uid
// 65534 in a child process.
func TestChmod(t *testing.T) {
	f := newSharedFixture(t)

	// POSIX: chmod sets the permission bits (set-user-ID, set-group-ID
	// and sticky included) and keeps the file type; st_ctime is updated.
	// S3 gets the new mode in x-amz-meta-mode.
	t.Run("SetsMode", func(t *testing.T) {
		d := f.dir(t)
		p := filepath.Join(d, "f")
		writeFile(t, p, []byte("x"))
		before := lstat(t, p)
		time.Sleep(10 * time.Millisecond)
		for _, mode := range []uint32{0o600, 0o4755, 0o2711, 0o1777, 0o000, 0o640} {
			must(t, syscall.Chmod(p, mode), "chmod")
			if st := lstat(t, p); st.Mode != syscall.S_IFREG|mode {
				t.Fatalf("chmod %o: mode %o", mode, st.Mode)
			}
		}
		if after := lstat(t, p); after.Ctim == before.Ctim || after.Mtim != before.Mtim {
			t.Fatalf("chmod: ctime %v -> %v, mtime %v -> %v; want a new ctime and the same mtime", before.Ctim, after.Ctim, before.Mtim, after.Mtim)
		}
		must(t, syscall.Chmod(d, 0o2775), "chmod dir")
		if st := lstat(t, d); st.Mode != syscall.S_IFDIR|0o2775 {
			t.Fatalf("dir mode %o", st.Mode)
		}
		f.m.Flush()
		if h := f.srv.Head(t, f.bucket, f.key(t, p)); h["mode"] != strconv.Itoa(syscall.S_IFREG|0o640) {
			t.Fatalf("x-amz-meta-mode %q, want %d", h["mode"], syscall.S_IFREG|0o640)
		}
		if h := f.srv.Head(t, f.bucket, f.key(t, d)+"/"); h["mode"] != strconv.Itoa(syscall.S_IFDIR|0o2775) {
			t.Fatalf("dir marker x-amz-meta-mode %q, want %d", h["mode"], syscall.S_IFDIR|0o2775)
		}
		must(t, syscall.Chmod(d, 0o755), "chmod dir back")
	})

	// POSIX: chmod follows symlinks; the link itself keeps 0777.
	t.Run("FollowsSymlink", func(t *testing.T) {
		d := f.dir(t)
		p := filepath.Join(d, "target")
		writeFile(t, p, nil)
		must(t, os.Symlink("target", filepath.Join(d, "link")), "symlink")
		must(t, syscall.Chmod(filepath.Join(d, "link"), 0o600), "chmod link")
		if st := lstat(t, p); st.Mode != syscall.S_IFREG|0o600 {
			t.Fatalf("target mode %o", st.Mode)
		}
		if st := lstat(t, filepath.Join(d, "link")); st.Mode != syscall.S_IFLNK|0o777 {
			t.Fatalf("link mode %o", st.Mode)
		}
	})

	// POSIX: only the owner (or a privileged process) may change the
	// mode: anyone else gets EPERM, whatever the permission bits say.
	t.Run("NonOwnerEPERM", func(t *testing.T) {
		d := f.dir(t)
		p := filepath.Join(d, "roots")
		writeFile(t, p, []byte("x"))
		must(t, os.Chmod(p, 0o666), "chmod")
		wantErrno(t, asNobody(t, userOp{Op: "chmod", Path: p, Mode: 0o777}), syscall.EPERM, "chmod by a non-owner")
		if st := lstat(t, p); st.Mode != syscall.S_IFREG|0o666 {
			t.Fatalf("mode changed to %o", st.Mode)
		}
	})

	// POSIX: the owner may chmod without privilege. Linux: when the file's
	// group is not one of the caller's, set-group-ID is cleared silently.
	t.Run("OwnerMay", func(t *testing.T) {
		d := f.dir(t)
		p := filepath.Join(d, "mine")
		writeFile(t, p, []byte("x"))
		chownNobody(t, p)
		must(t, asNobody(t, userOp{Op: "chmod", Path: p, Mode: 0o4700}), "chmod by the owner")
		if st := lstat(t, p); st.Mode != syscall.S_IFREG|0o4700 {
			t.Fatalf("mode %o, want %o", st.Mode, syscall.S_IFREG|0o4700)
		}
		must(t, os.Lchown(p, nobody, 0), "chgrp root")
		must(t, asNobody(t, userOp{Op: "chmod", Path: p, Mode: 0o2755}), "chmod g+s by the owner")
		if st := lstat(t, p); st.Mode != syscall.S_IFREG|0o755 {
			t.Fatalf("mode %o: set-group-ID should be cleared (group not the caller's)", st.Mode)
		}
	})
}
