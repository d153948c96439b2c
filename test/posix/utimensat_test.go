package posix

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func utimens(p string, atime, mtime unix.Timespec, flags int) error {
	return unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{atime, mtime}, flags)
}

func mtimeOf(t *testing.T, p string) time.Time {
	t.Helper()
	st := lstat(t, p)
	return time.Unix(st.Mtim.Unix())
}

// TestUtimensat: utimensat(2) and the times stat reports.
func TestUtimensat(t *testing.T) {
	f := newSharedFixture(t)
	a := time.Date(2001, 2, 3, 4, 5, 6, 123456789, time.UTC)
	m := time.Date(2011, 12, 13, 14, 15, 16, 987654321, time.UTC)

	// POSIX: explicit times are stored as given, to the nanosecond;
	// s3fs's x-amz-meta-mtime carries them as "sec.nsec".
	t.Run("ExplicitMtime", func(t *testing.T) {
		d := f.dir(t)
		p := filepath.Join(d, "f")
		writeFile(t, p, []byte("x"))
		must(t, utimens(p, unix.NsecToTimespec(a.UnixNano()), unix.NsecToTimespec(m.UnixNano()), 0), "utimensat")
		st := lstat(t, p)
		if got := time.Unix(st.Mtim.Unix()); !got.Equal(m) {
			t.Fatalf("mtime %v, want %v", got, m)
		}
		f.m.Flush()
		if h := f.srv.Head(t, f.bucket, f.key(t, p)); h["mtime"] != "1323785716.987654321" {
			t.Fatalf("x-amz-meta-mtime %q", h["mtime"])
		}
	})

	// POSIX: atime is stored as given too, and utimensat marks ctime.
	// keelfs keeps it in s3fs's x-amz-meta-atime, so a mount with an
	// empty cache (or s3fs) reads it back.
	t.Run("Atime", func(t *testing.T) {
		d := f.dir(t)
		p := filepath.Join(d, "f")
		writeFile(t, p, []byte("x"))
		before := lstat(t, p).Ctim
		must(t, utimens(p, unix.NsecToTimespec(a.UnixNano()), unix.NsecToTimespec(m.UnixNano()), 0), "utimensat")
		st := lstat(t, p)
		if got := time.Unix(st.Atim.Unix()); !got.Equal(a) {
			t.Fatalf("atime %v, want %v", got, a)
		}
		if st.Ctim == before {
			t.Fatal("utimensat left ctime alone")
		}
		// Only the atime: mtime stays.
		must(t, utimens(p, unix.NsecToTimespec(m.UnixNano()), unix.Timespec{Nsec: unix.UTIME_OMIT}, 0), "utimensat atime only")
		if st := lstat(t, p); !time.Unix(st.Atim.Unix()).Equal(m) || !time.Unix(st.Mtim.Unix()).Equal(m) {
			t.Fatalf("after setting atime only: atime %v mtime %v", time.Unix(st.Atim.Unix()), time.Unix(st.Mtim.Unix()))
		}
		must(t, utimens(p, unix.NsecToTimespec(a.UnixNano()), unix.Timespec{Nsec: unix.UTIME_OMIT}, 0), "utimensat atime only")
		f.m.Flush()
		if h := f.srv.Head(t, f.bucket, f.key(t, p)); h["atime"] != "981173106.123456789" {
			t.Fatalf("x-amz-meta-atime %q", h["atime"])
		}
		other := f.fresh(t)
		if st := lstat(t, other(p)); !time.Unix(st.Atim.Unix()).Equal(a) || !time.Unix(st.Mtim.Unix()).Equal(m) {
			t.Fatalf("on a fresh mount: atime %v mtime %v", time.Unix(st.Atim.Unix()), time.Unix(st.Mtim.Unix()))
		}
	})

	// Linux (relatime, the default): a read moves atime when it is not
	// newer than mtime or ctime, or is a day old. keelfs does so in its
	// cache, without an S3 request per read: S3 gets the new atime with
	// the file's next upload.
	t.Run("AtimeMovedByRead", func(t *testing.T) {
		d := f.dir(t)
		p := filepath.Join(d, "f")
		writeFile(t, p, []byte("some content"))
		old := time.Now().Add(-48 * time.Hour).Truncate(time.Second)
		must(t, utimens(p, unix.NsecToTimespec(old.UnixNano()), unix.Timespec{Nsec: unix.UTIME_OMIT}, 0), "utimensat")
		f.m.Flush()
		stored := f.srv.Head(t, f.bucket, f.key(t, p))["atime"]
		start := time.Now()
		// O_DIRECT: the read reaches keelfs, not the kernel's page cache.
		fd, err := sysOpen(p, syscall.O_RDONLY|syscall.O_DIRECT, 0)
		must(t, err, "open")
		_, err = syscall.Read(fd, make([]byte, 4096))
		syscall.Close(fd)
		must(t, err, "read")
		waitFor(t, "atime to move", func() bool {
			st := lstat(t, p)
			return !time.Unix(st.Atim.Unix()).Before(start.Add(-time.Second))
		})
		f.m.Flush()
		if h := f.srv.Head(t, f.bucket, f.key(t, p)); h["atime"] != stored {
			t.Fatalf("a read rewrote x-amz-meta-atime: %q, was %q", h["atime"], stored)
		}
	})

	// POSIX: ctime marks every change of the inode: chmod, chown, rename,
	// a write, a truncate, an extended attribute; S3 keeps it in
	// x-amz-meta-ctime.
	t.Run("Ctime", func(t *testing.T) {
		d := f.dir(t)
		p := filepath.Join(d, "f")
		writeFile(t, p, []byte("x"))
		changes := []struct {
			what string
			do   func() error
		}{
			{"chmod", func() error { return os.Chmod(p, 0o600) }},
			{"chown", func() error { return os.Chown(p, 5, 6) }},
			{"rename", func() error { q := p + "2"; err := os.Rename(p, q); p = q; return err }},
			{"write", func() error { return os.WriteFile(p, []byte("more"), 0o600) }},
			{"truncate", func() error { return os.Truncate(p, 1) }},
			{"setxattr", func() error { return syscall.Setxattr(p, "user.x", []byte("1"), 0) }},
		}
		for _, c := range changes {
			before := lstat(t, p).Ctim
			time.Sleep(10 * time.Millisecond)
			must(t, c.do(), c.what)
			after := lstat(t, p).Ctim
			if after == before {
				t.Fatalf("%s left ctime at %v", c.what, after)
			}
		}
		st := lstat(t, p)
		f.m.Flush()
		if h := f.srv.Head(t, f.bucket, f.key(t, p)); h["ctime"] != strconv.FormatInt(st.Ctim.Sec, 10)+"."+fmt.Sprintf("%09d", st.Ctim.Nsec) && h["ctime"] != strconv.FormatInt(st.Ctim.Sec, 10) {
			t.Fatalf("x-amz-meta-ctime %q, stat %d.%09d", h["ctime"], st.Ctim.Sec, st.Ctim.Nsec)
		}
	})

	// POSIX: UTIME_OMIT leaves a time alone; UTIME_NOW sets it to now.
	t.Run("OmitAndNow", func(t *testing.T) {
		d := f.dir(t)
		p := filepath.Join(d, "f")
		writeFile(t, p, []byte("x"))
		must(t, utimens(p, unix.NsecToTimespec(a.UnixNano()), unix.NsecToTimespec(m.UnixNano()), 0), "utimensat")
		must(t, utimens(p, unix.NsecToTimespec(a.UnixNano()), unix.Timespec{Nsec: unix.UTIME_OMIT}, 0), "utimensat omit mtime")
		if got := mtimeOf(t, p); !got.Equal(m) {
			t.Fatalf("UTIME_OMIT changed mtime to %v", got)
		}
		before := time.Now()
		must(t, utimens(p, unix.Timespec{Nsec: unix.UTIME_NOW}, unix.Timespec{Nsec: unix.UTIME_NOW}, 0), "utimensat now")
		got := mtimeOf(t, p)
		if got.Before(before.Add(-time.Second)) || got.After(time.Now().Add(time.Second)) {
			t.Fatalf("UTIME_NOW set mtime %v at %v", got, before)
		}
	})

	// Linux: AT_SYMLINK_NOFOLLOW sets the times of the link itself;
	// without it, of the target. Directories have times too.
	t.Run("SymlinkAndDirectory", func(t *testing.T) {
		d := f.dir(t)
		p := filepath.Join(d, "target")
		writeFile(t, p, nil)
		link := filepath.Join(d, "link")
		must(t, os.Symlink("target", link), "symlink")
		must(t, utimens(link, unix.NsecToTimespec(m.UnixNano()), unix.NsecToTimespec(m.UnixNano()), unix.AT_SYMLINK_NOFOLLOW), "utimensat nofollow")
		if got := mtimeOf(t, link); !got.Equal(m) {
			t.Fatalf("link mtime %v", got)
		}
		if got := mtimeOf(t, p); got.Equal(m) {
			t.Fatal("AT_SYMLINK_NOFOLLOW changed the target")
		}
		must(t, utimens(link, unix.NsecToTimespec(a.UnixNano()), unix.NsecToTimespec(a.UnixNano()), 0), "utimensat through the link")
		if got := mtimeOf(t, p); !got.Equal(a) {
			t.Fatalf("target mtime %v", got)
		}
		sub := filepath.Join(d, "sub")
		must(t, os.Mkdir(sub, 0o755), "mkdir")
		must(t, utimens(sub, unix.NsecToTimespec(m.UnixNano()), unix.NsecToTimespec(m.UnixNano()), 0), "utimensat dir")
		if got := mtimeOf(t, sub); !got.Equal(m) {
			t.Fatalf("dir mtime %v", got)
		}
	})

	// POSIX: explicit times need ownership (EPERM otherwise, even with
	// write permission); "now" needs ownership or write permission
	// (EACCES otherwise).
	t.Run("Permissions", func(t *testing.T) {
		d := f.dir(t)
		shared := filepath.Join(d, "shared")
		writeFile(t, shared, nil)
		must(t, os.Chmod(shared, 0o666), "chmod")
		private := filepath.Join(d, "private")
		writeFile(t, private, nil)
		must(t, os.Chmod(private, 0o644), "chmod")
		mine := filepath.Join(d, "mine")
		writeFile(t, mine, nil)
		chownNobody(t, mine)
		must(t, os.Chmod(mine, 0o444), "chmod")

		explicit := userOp{Op: "utimes", Atime: a.UnixNano(), Mtime: m.UnixNano()}
		explicit.Path = shared
		wantErrno(t, asNobody(t, explicit), syscall.EPERM, "explicit times on a writable file of another owner")
		explicit.Path = mine
		must(t, asNobody(t, explicit), "explicit times on one's own read-only file")
		if got := mtimeOf(t, mine); !got.Equal(m) {
			t.Fatalf("mine: mtime %v", got)
		}
		must(t, asNobody(t, userOp{Op: "utimes-now", Path: shared}), "now on a writable file")
		wantErrno(t, asNobody(t, userOp{Op: "utimes-now", Path: private}), syscall.EACCES, "now on a file one cannot write")
	})
}
