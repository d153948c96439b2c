package posix

import (
	"path/filepath"
	"syscall"
	"testing"
)

// TestXattr: setxattr(2), getxattr(2), listxattr(2), removexattr(2).
func TestXattr(t *testing.T) {
	f := newFixture(t)

	// Linux (xattr(7)): extended attributes are optional; a file system
	// without them fails setxattr with ENOTSUP. S3 user metadata holds
	// keelfs's (and s3fs's) attributes, so keelfs stores no others:
	// setxattr and getxattr are ENOTSUP (getxattr is refused by the
	// kernel itself once keelfs answered ENOSYS, so that `ls -l` does not
	// pay two requests per file for it), removexattr finds nothing
	// (ENODATA) and the list is empty (see EXPECTED_FAILURES.md,
	// "xattrs").
	t.Run("NotStored", func(t *testing.T) {
		d := f.dir(t)
		p := filepath.Join(d, "f")
		writeFile(t, p, []byte("x"))
		for _, target := range []string{p, d} {
			err := syscall.Setxattr(target, "user.test", []byte("v"), 0)
			wantErrno(t, err, syscall.ENOTSUP, "setxattr (EXPECTED_FAILURES.md: xattrs)")
			_, err = syscall.Getxattr(target, "user.test", make([]byte, 64))
			wantErrno(t, err, syscall.ENOTSUP, "getxattr")
			wantErrno(t, syscall.Removexattr(target, "user.test"), syscall.ENODATA, "removexattr")
			n, err := syscall.Listxattr(target, make([]byte, 256))
			if err != nil || n != 0 {
				t.Fatalf("listxattr: %d %v, want an empty list", n, err)
			}
		}
		// POSIX ACLs are xattrs too: setfacl fails the same way.
		err := syscall.Setxattr(p, "system.posix_acl_access", []byte{2, 0, 0, 0}, 0)
		if err == nil {
			t.Fatal("setting an ACL succeeded")
		}
	})
}
