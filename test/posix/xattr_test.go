package posix

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// listxattr returns the names listxattr(2) gives for p.
func listxattr(t *testing.T, p string) []string {
	t.Helper()
	buf := make([]byte, 4096)
	n, err := syscall.Listxattr(p, buf)
	must(t, err, "listxattr "+p)
	var names []string
	for _, s := range strings.Split(string(buf[:n]), "\x00") {
		if s != "" {
			names = append(names, s)
		}
	}
	return names
}

func getxattr(t *testing.T, p, name string) []byte {
	t.Helper()
	buf := make([]byte, 4096)
	n, err := syscall.Getxattr(p, name, buf)
	must(t, err, "getxattr "+name)
	return buf[:n]
}

// TestXattr: setxattr(2), getxattr(2), listxattr(2), removexattr(2).
// keelfs stores attributes of the user namespace in the object's
// metadata, in the header s3fs uses with its xattr option.
func TestXattr(t *testing.T) {
	f := newSharedFixture(t)

	// Linux (xattr(7)): user attributes of files and directories are set,
	// read, listed and removed; XATTR_CREATE fails with EEXIST on an
	// existing name, XATTR_REPLACE and getxattr with ENODATA on a missing
	// one; a buffer too small gives ERANGE and size 0 asks for the size.
	// Setting one changes ctime.
	t.Run("UserNamespace", func(t *testing.T) {
		d := f.dir(t)
		p := filepath.Join(d, "f")
		writeFile(t, p, []byte("content"))
		for _, target := range []string{p, d} {
			before := lstat(t, target).Ctim
			value := []byte("a value\x00with a NUL and \xff")
			must(t, syscall.Setxattr(target, "user.test", value, 0), "setxattr")
			if got := getxattr(t, target, "user.test"); !bytes.Equal(got, value) {
				t.Fatalf("%s: getxattr %q, want %q", target, got, value)
			}
			if after := lstat(t, target).Ctim; after == before {
				t.Fatalf("%s: setxattr left ctime at %v", target, after)
			}
			n, err := syscall.Getxattr(target, "user.test", nil)
			if err != nil || n != len(value) {
				t.Fatalf("size query: %d %v, want %d", n, err, len(value))
			}
			_, err = syscall.Getxattr(target, "user.test", make([]byte, 3))
			wantErrno(t, err, syscall.ERANGE, "getxattr into a small buffer")
			wantErrno(t, syscall.Setxattr(target, "user.test", []byte("x"), unix.XATTR_CREATE), syscall.EEXIST, "XATTR_CREATE on an existing name")
			wantErrno(t, syscall.Setxattr(target, "user.other", []byte("x"), unix.XATTR_REPLACE), syscall.ENODATA, "XATTR_REPLACE on a missing name")
			must(t, syscall.Setxattr(target, "user.test", []byte("new"), unix.XATTR_REPLACE), "XATTR_REPLACE")
			must(t, syscall.Setxattr(target, "user.empty", nil, unix.XATTR_CREATE), "XATTR_CREATE of an empty value")
			if got := listxattr(t, target); strings.Join(got, ",") != "user.empty,user.test" {
				t.Fatalf("%s: listxattr %q", target, got)
			}
			_, err = syscall.Getxattr(target, "user.missing", make([]byte, 16))
			wantErrno(t, err, syscall.ENODATA, "getxattr of a missing name")
			must(t, syscall.Removexattr(target, "user.test"), "removexattr")
			must(t, syscall.Removexattr(target, "user.empty"), "removexattr")
			wantErrno(t, syscall.Removexattr(target, "user.test"), syscall.ENODATA, "removexattr of a missing name")
			if got := listxattr(t, target); len(got) != 0 {
				t.Fatalf("%s: listxattr after removing all: %q", target, got)
			}
		}
		wantContent(t, p, []byte("content"))
	})

	// Linux: other namespaces are optional; keelfs stores none of them
	// (trusted and security need a place S3 does not give, system holds
	// POSIX ACLs, which keelfs does not implement): ENOTSUP.
	t.Run("OtherNamespacesENOTSUP", func(t *testing.T) {
		d := f.dir(t)
		p := filepath.Join(d, "f")
		writeFile(t, p, []byte("x"))
		for _, name := range []string{"trusted.a", "security.b", "system.posix_acl_access"} {
			err := syscall.Setxattr(p, name, []byte{2, 0, 0, 0}, 0)
			if !errorsIsAny(err, syscall.ENOTSUP, syscall.EINVAL) { // the kernel may refuse a malformed ACL itself
				t.Fatalf("setxattr %s: %v, want ENOTSUP", name, err)
			}
			_, err = syscall.Getxattr(p, name, make([]byte, 64))
			if !errorsIsAny(err, syscall.ENOTSUP, syscall.ENODATA) {
				t.Fatalf("getxattr %s: %v", name, err)
			}
		}
		if got := listxattr(t, p); len(got) != 0 {
			t.Fatalf("listxattr %q", got)
		}
	})

	// keelfs: the attributes are the object's x-amz-meta-xattr header, in
	// s3fs's encoding (percent-encoded JSON of base64 values, names
	// sorted), and what s3fs writes there reads back.
	t.Run("S3fsFormat", func(t *testing.T) {
		d := f.dir(t)
		p := filepath.Join(d, "f")
		writeFile(t, p, []byte("x"))
		must(t, syscall.Setxattr(p, "user.foo", []byte("bar"), 0), "setxattr")
		must(t, syscall.Setxattr(p, "user.bin", []byte{0, 1, 0xff}, 0), "setxattr")
		f.m.Flush()
		if h := f.srv.Head(t, f.bucket, f.key(t, p)); h["xattr"] != "%7B%22user.bin%22%3A%22AAH/%22%2C%22user.foo%22%3A%22YmFy%22%7D" {
			t.Fatalf("x-amz-meta-xattr %q", h["xattr"])
		}
		// As s3fs 1.90 wrote it for a file and a directory marker.
		kp := f.key(t, d) + "/"
		f.srv.Put(t, f.bucket, kp+"s3fs-file", []byte("s3data"), map[string]string{"mode": "33188", "uid": "0", "gid": "0",
			"xattr": "%7B%22user.bin%22%3A%22AAH/%22%2C%22user.k%22%3A%22djE%3D%22%7D"})
		f.srv.Put(t, f.bucket, kp+"s3fs-dir/", nil, map[string]string{"mode": "493", "uid": "0", "gid": "0",
			"xattr": "%7B%22user.dx%22%3A%22ZHY%3D%22%7D"})
		sp := filepath.Join(d, "s3fs-file")
		waitFor(t, "the objects to show", func() bool { return exists(sp) && exists(filepath.Join(d, "s3fs-dir")) })
		if got := listxattr(t, sp); strings.Join(got, ",") != "user.bin,user.k" {
			t.Fatalf("listxattr of s3fs's file %q", got)
		}
		if got := getxattr(t, sp, "user.bin"); !bytes.Equal(got, []byte{0, 1, 0xff}) {
			t.Fatalf("user.bin %q", got)
		}
		if got := getxattr(t, filepath.Join(d, "s3fs-dir"), "user.dx"); string(got) != "dv" {
			t.Fatalf("user.dx of s3fs's directory %q", got)
		}
	})

	// keelfs: attributes go with a rename and are there for a mount with
	// an empty cache; removing the last one removes the header.
	t.Run("KeptAcrossRenameAndRemount", func(t *testing.T) {
		d := f.dir(t)
		p := filepath.Join(d, "f")
		writeFile(t, p, []byte("x"))
		sub := filepath.Join(d, "sub")
		must(t, os.Mkdir(sub, 0o755), "mkdir")
		must(t, syscall.Setxattr(p, "user.a", []byte("1"), 0), "setxattr")
		must(t, syscall.Setxattr(sub, "user.d", []byte("2"), 0), "setxattr")
		q, sub2 := filepath.Join(d, "g"), filepath.Join(d, "sub2")
		must(t, os.Rename(p, q), "rename")
		must(t, os.Rename(sub, sub2), "rename dir")
		other := f.fresh(t)
		if got := getxattr(t, other(q), "user.a"); string(got) != "1" {
			t.Fatalf("user.a after rename and remount %q", got)
		}
		if got := getxattr(t, other(sub2), "user.d"); string(got) != "2" {
			t.Fatalf("user.d of the renamed dir %q", got)
		}
		must(t, syscall.Removexattr(q, "user.a"), "removexattr")
		f.m.Flush()
		if h := f.srv.Head(t, f.bucket, f.key(t, q)); h["xattr"] != "" {
			t.Fatalf("x-amz-meta-xattr after the last removal %q", h["xattr"])
		}
	})

	// S3 allows 2 KB of user metadata per object, keelfs's attribute
	// headers included. Linux (setxattr(2)): E2BIG for a value the file
	// system can never hold, ENOSPC when there is no room left for it; in
	// both cases nothing stored is lost.
	t.Run("MetadataLimit", func(t *testing.T) {
		d := f.dir(t)
		p := filepath.Join(d, "f")
		writeFile(t, p, []byte("x"))
		wantErrno(t, syscall.Setxattr(p, "user.huge", make([]byte, 1600), 0), syscall.E2BIG, "a value that can never fit")
		big := bytes.Repeat([]byte("v"), 700)
		must(t, syscall.Setxattr(p, "user.one", big, 0), "a 700-byte value")
		wantErrno(t, syscall.Setxattr(p, "user.two", big, 0), syscall.ENOSPC, "a second 700-byte value")
		if got := listxattr(t, p); strings.Join(got, ",") != "user.one" {
			t.Fatalf("listxattr after the refusals %q", got)
		}
		if got := getxattr(t, p, "user.one"); !bytes.Equal(got, big) {
			t.Fatalf("user.one lost: %d bytes", len(got))
		}
		f.m.Flush()
		h := f.srv.Head(t, f.bucket, f.key(t, p))
		size := 0
		for k, v := range h {
			size += len("x-amz-meta-") + len(k) + len(v)
		}
		if size > 2048 || !strings.Contains(h["xattr"], "user.one") {
			t.Fatalf("stored metadata: %d bytes, %v", size, h)
		}
		wantContent(t, p, []byte("x"))
	})

	// Linux: any name of up to 255 bytes. keelfs refuses names with '"'
	// or ',' with EINVAL: s3fs's header cannot hold them (see
	// EXPECTED_FAILURES.md, "xattr names s3fs cannot hold").
	t.Run("NamesS3fsCannotHold", func(t *testing.T) {
		d := f.dir(t)
		p := filepath.Join(d, "f")
		writeFile(t, p, []byte("x"))
		for _, name := range []string{`user.a"b`, "user.a,b"} {
			wantErrno(t, syscall.Setxattr(p, name, []byte("v"), 0), syscall.EINVAL, "setxattr "+name+" (EXPECTED_FAILURES.md: xattr names s3fs cannot hold)")
		}
		must(t, syscall.Setxattr(p, "user.a:b c", []byte("v"), 0), "a name with a colon and a space")
		if got := listxattr(t, p); strings.Join(got, ",") != "user.a:b c" {
			t.Fatalf("listxattr %q", got)
		}
	})

	// Linux: the root directory has attributes like any other. keelfs's
	// root has no object to keep them: setxattr is ENOTSUP (see
	// EXPECTED_FAILURES.md, "xattrs on the mount's root").
	t.Run("NotOnRoot", func(t *testing.T) {
		wantErrno(t, syscall.Setxattr(f.m.Dir, "user.a", []byte("v"), 0), syscall.ENOTSUP, "setxattr on the root (EXPECTED_FAILURES.md: xattrs on the mount's root)")
		_, err := syscall.Getxattr(f.m.Dir, "user.a", make([]byte, 16))
		wantErrno(t, err, syscall.ENODATA, "getxattr on the root")
		if got := listxattr(t, f.m.Dir); len(got) != 0 {
			t.Fatalf("listxattr of the root %q", got)
		}
	})

	// Linux (xattr(7)): reading a user attribute needs read permission,
	// writing one write permission (EACCES otherwise); user attributes
	// exist only on regular files and directories (EPERM elsewhere); in a
	// sticky directory only the owner of a directory may set them on it.
	t.Run("Permissions", func(t *testing.T) {
		d := f.dir(t)
		p := filepath.Join(d, "roots")
		writeFile(t, p, []byte("x"))
		must(t, os.Chmod(p, 0o644), "chmod")
		must(t, syscall.Setxattr(p, "user.a", []byte("1"), 0), "setxattr")
		must(t, asNobody(t, userOp{Op: "getxattr", Path: p, Name: "user.a"}), "getxattr of a readable file")
		wantErrno(t, asNobody(t, userOp{Op: "setxattr", Path: p, Name: "user.b", Data: []byte("x")}), syscall.EACCES, "setxattr without write permission")
		private := filepath.Join(d, "private")
		writeFile(t, private, nil)
		must(t, os.Chmod(private, 0o600), "chmod")
		must(t, syscall.Setxattr(private, "user.a", []byte("1"), 0), "setxattr")
		wantErrno(t, asNobody(t, userOp{Op: "getxattr", Path: private, Name: "user.a"}), syscall.EACCES, "getxattr without read permission")
		shared := filepath.Join(d, "shared")
		writeFile(t, shared, nil)
		must(t, os.Chmod(shared, 0o666), "chmod")
		must(t, asNobody(t, userOp{Op: "setxattr", Path: shared, Name: "user.n", Data: []byte("by nobody")}), "setxattr with write permission")
		if got := getxattr(t, shared, "user.n"); string(got) != "by nobody" {
			t.Fatalf("user.n %q", got)
		}
		fifo := filepath.Join(d, "fifo")
		must(t, syscall.Mkfifo(fifo, 0o666), "mkfifo")
		wantErrno(t, syscall.Setxattr(fifo, "user.a", []byte("1"), 0), syscall.EPERM, "user attribute on a FIFO")
		link := filepath.Join(d, "link")
		must(t, os.Symlink("roots", link), "symlink")
		wantErrno(t, unix.Lsetxattr(link, "user.a", []byte("1"), 0), syscall.EPERM, "user attribute on a symlink")
		sticky := filepath.Join(d, "sticky")
		must(t, os.Mkdir(sticky, 0o777), "mkdir")
		must(t, syscall.Chmod(sticky, 0o1777), "chmod +t")
		wantErrno(t, asNobody(t, userOp{Op: "setxattr", Path: sticky, Name: "user.a", Data: []byte("1")}), syscall.EPERM, "user attribute on another's sticky directory")
	})
}

func errorsIsAny(err error, errnos ...syscall.Errno) bool {
	for _, e := range errnos {
		if err == e {
			return true
		}
	}
	return false
}
