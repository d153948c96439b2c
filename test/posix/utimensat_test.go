package posix

import (
	"os"
	"path/filepath"
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

	// POSIX: atime is stored as given too. keelfs keeps no atime: stat
	// reports the mtime as atime, whatever was set (see
	// EXPECTED_FAILURES.md, "atime").
	t.Run("Atime", func(t *testing.T) {
		d := f.dir(t)
		p := filepath.Join(d, "f")
		writeFile(t, p, []byte("x"))
		must(t, utimens(p, unix.NsecToTimespec(a.UnixNano()), unix.NsecToTimespec(m.UnixNano()), 0), "utimensat")
		st := lstat(t, p)
		if got := time.Unix(st.Atim.Unix()); !got.Equal(m) {
			t.Fatalf("atime %v; keelfs reported the mtime %v so far (EXPECTED_FAILURES.md: atime)", got, m)
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
