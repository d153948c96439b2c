package posix

import (
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
)

// TestMkdirRmdir: mkdir(2) and rmdir(2).
func TestMkdirRmdir(t *testing.T) {
	f := newFixture(t)

	// POSIX: a new directory gets the mode argument less the umask, the
	// caller's euid/egid, and is empty. keelfs persists it as a zero-byte
	// marker "dir/" carrying the mode in x-amz-meta-mode.
	t.Run("MkdirMode", func(t *testing.T) {
		d := f.dir(t)
		cases := []struct {
			umask      int
			mode, want uint32
		}{
			{0o022, 0o777, 0o755},
			{0o077, 0o755, 0o700},
			{0o000, 0o1777, 0o1777}, // the sticky bit is kept
			// Linux: mkdir drops set-group-ID (a directory inherits it
			// from its parent instead); chmod can set it.
			{0o000, 0o2750, 0o750},
		}
		for i, c := range cases {
			p := filepath.Join(d, "d"+strconv.Itoa(i))
			withUmask(c.umask, func() { must(t, syscall.Mkdir(p, c.mode), "mkdir") })
			st := lstat(t, p)
			if st.Mode != syscall.S_IFDIR|c.want || st.Uid != uint32(os.Geteuid()) || st.Gid != uint32(os.Getegid()) {
				t.Errorf("umask %o mkdir %o: mode %o uid %d gid %d, want mode %o", c.umask, c.mode, st.Mode, st.Uid, st.Gid, syscall.S_IFDIR|c.want)
			}
			if ents, err := os.ReadDir(p); err != nil || len(ents) != 0 {
				t.Errorf("new directory: %v %v", ents, err)
			}
		}
		f.wantKeys(t, d, "d0/", "d1/", "d2/", "d3/")
		for i, c := range cases {
			h := f.srv.Head(t, f.bucket, f.key(t, filepath.Join(d, "d"+strconv.Itoa(i)))+"/")
			if h["mode"] != strconv.Itoa(int(syscall.S_IFDIR|c.want)) {
				t.Errorf("d%d: x-amz-meta-mode %q, want %d", i, h["mode"], syscall.S_IFDIR|c.want)
			}
		}
	})

	// POSIX: st_nlink of a directory counts its links: its name, its "."
	// and the ".." of each subdirectory, so 2 plus the subdirectories, as
	// Linux file systems report; mkdir, rmdir and rename keep it.
	t.Run("Nlink", func(t *testing.T) {
		d := f.dir(t)
		e := filepath.Join(d, "e")
		must(t, os.Mkdir(e, 0o755), "mkdir")
		nlink := func(p string) uint64 { st := lstat(t, p); return uint64(st.Nlink) }
		if n := nlink(e); n != 2 {
			t.Fatalf("empty dir nlink %d", n)
		}
		must(t, os.Mkdir(filepath.Join(e, "a"), 0o755), "mkdir")
		must(t, os.Mkdir(filepath.Join(e, "b"), 0o755), "mkdir")
		writeFile(t, filepath.Join(e, "file"), nil)
		if n := nlink(e); n != 4 {
			t.Fatalf("nlink with two subdirs and a file: %d", n)
		}
		must(t, os.Rename(filepath.Join(e, "a"), filepath.Join(d, "a")), "rename out")
		if n, m := nlink(e), nlink(d); n != 3 || m != 4 {
			t.Fatalf("after moving a subdir out: %d and parent %d, want 3 and 4", n, m)
		}
		must(t, os.Remove(filepath.Join(e, "b")), "rmdir")
		if n := nlink(e); n != 2 {
			t.Fatalf("after rmdir: %d", n)
		}
	})

	// POSIX: EEXIST if the path exists, whatever it is (file, directory,
	// symlink, even a dangling one).
	t.Run("MkdirExists", func(t *testing.T) {
		d := f.dir(t)
		writeFile(t, filepath.Join(d, "file"), []byte("x"))
		must(t, os.Mkdir(filepath.Join(d, "dir"), 0o755), "mkdir")
		must(t, os.Symlink("nowhere", filepath.Join(d, "dangling")), "symlink")
		for _, name := range []string{"file", "dir", "dangling"} {
			wantErrno(t, syscall.Mkdir(filepath.Join(d, name), 0o755), syscall.EEXIST, "mkdir over "+name)
		}
		wantContent(t, filepath.Join(d, "file"), []byte("x"))
		if exists(filepath.Join(d, "nowhere")) {
			t.Fatal("mkdir followed a dangling symlink")
		}
	})

	// POSIX: ENOENT if a parent is missing, ENOTDIR if one is a file.
	t.Run("MkdirBadParent", func(t *testing.T) {
		d := f.dir(t)
		wantErrno(t, syscall.Mkdir(filepath.Join(d, "no", "x"), 0o755), syscall.ENOENT, "mkdir under a missing dir")
		writeFile(t, filepath.Join(d, "file"), nil)
		wantErrno(t, syscall.Mkdir(filepath.Join(d, "file", "x"), 0o755), syscall.ENOTDIR, "mkdir under a file")
	})

	// POSIX: rmdir removes an empty directory, and its marker leaves S3.
	t.Run("Rmdir", func(t *testing.T) {
		d := f.dir(t)
		p := filepath.Join(d, "e")
		must(t, os.Mkdir(p, 0o755), "mkdir")
		f.wantKeys(t, d, "e/")
		must(t, syscall.Rmdir(p), "rmdir")
		if exists(p) {
			t.Fatal("still there after rmdir")
		}
		f.wantKeys(t, d)
	})

	// POSIX: rmdir of a directory with entries fails with ENOTEMPTY (or
	// EEXIST; Linux says ENOTEMPTY), also when the only entry was written
	// to S3 by another client.
	t.Run("RmdirNotEmpty", func(t *testing.T) {
		d := f.dir(t)
		p := filepath.Join(d, "full")
		must(t, os.Mkdir(p, 0o755), "mkdir")
		writeFile(t, filepath.Join(p, "x"), nil)
		wantErrno(t, syscall.Rmdir(p), syscall.ENOTEMPTY, "rmdir with a file")
		must(t, os.Remove(filepath.Join(p, "x")), "unlink")
		must(t, os.Mkdir(filepath.Join(p, "sub"), 0o755), "mkdir sub")
		wantErrno(t, syscall.Rmdir(p), syscall.ENOTEMPTY, "rmdir with a subdirectory")
		must(t, os.Remove(filepath.Join(p, "sub")), "rmdir sub")
		must(t, syscall.Rmdir(p), "rmdir once empty")

		// A directory whose content only another S3 client wrote.
		f.m.Flush()
		f.srv.Put(t, f.bucket, f.key(t, d)+"/ext/obj", []byte("from elsewhere"), nil)
		waitFor(t, "ext/ to show on the mount", func() bool { return exists(filepath.Join(d, "ext")) })
		wantErrno(t, syscall.Rmdir(filepath.Join(d, "ext")), syscall.ENOTEMPTY, "rmdir of a dir with only a remote object")
		wantContent(t, filepath.Join(d, "ext", "obj"), []byte("from elsewhere"))
	})

	// POSIX: rmdir of a non-directory is ENOTDIR; of a missing name,
	// ENOENT; of a path ending in "." EINVAL; of a mount point, EBUSY.
	t.Run("RmdirErrors", func(t *testing.T) {
		d := f.dir(t)
		writeFile(t, filepath.Join(d, "file"), []byte("x"))
		wantErrno(t, syscall.Rmdir(filepath.Join(d, "file")), syscall.ENOTDIR, "rmdir a file")
		must(t, os.Symlink(".", filepath.Join(d, "link")), "symlink")
		wantErrno(t, syscall.Rmdir(filepath.Join(d, "link")), syscall.ENOTDIR, "rmdir a symlink to a directory")
		wantErrno(t, syscall.Rmdir(filepath.Join(d, "nothing")), syscall.ENOENT, "rmdir missing")
		must(t, os.Mkdir(filepath.Join(d, "e"), 0o755), "mkdir")
		wantErrno(t, syscall.Rmdir(filepath.Join(d, "e")+"/."), syscall.EINVAL, "rmdir e/.")
		wantErrno(t, syscall.Rmdir(f.m.Dir), syscall.EBUSY, "rmdir the mount point")
		wantContent(t, filepath.Join(d, "file"), []byte("x"))
	})
}
