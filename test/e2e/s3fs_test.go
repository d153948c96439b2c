package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/keelfs/keelfs/test/harness"
)

// mountS3fs mounts prefix of bucket with s3fs (the Debian package, which
// `make tools` installs) and its xattr option, in the foreground of a
// child process that is stopped and unmounted at cleanup.
func mountS3fs(t *testing.T, srv *harness.Server, bucket, prefix string) string {
	t.Helper()
	bin, err := exec.LookPath("s3fs")
	if err != nil {
		t.Fatalf("s3fs not found (%v): install the s3fs package (make tools does)", err)
	}
	passwd := filepath.Join(t.TempDir(), "passwd")
	if err := os.WriteFile(passwd, []byte(srv.AccessKey+":"+srv.SecretKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	out := &lockedBuffer{} // s3fs may still write while a timeout reads it
	cmd := exec.Command(bin, bucket+":/"+prefix, dir, "-f", "-o",
		"url="+srv.Endpoint+",use_path_request_style,passwd_file="+passwd+",use_xattr,dbglevel=warn")
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start s3fs: %v", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		exec.Command("fusermount3", "-u", dir).Run()
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		if isMountpoint(dir) {
			syscall.Unmount(dir, syscall.MNT_DETACH)
		}
	})
	waitChildMounted(t, "s3fs", func() bool { return isMountpoint(dir) }, 20*time.Second, exited, out)
	return dir
}

// waitChildMounted waits until mounted reports true, failing the test
// with the child's output if the child (who) exits first or within does
// not suffice.
func waitChildMounted(t *testing.T, who string, mounted func() bool, within time.Duration, exited <-chan struct{}, out *lockedBuffer) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !mounted() {
		select {
		case <-exited:
			t.Fatalf("%s exited before it mounted:\n%s", who, out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not mount within %v:\n%s", who, within, out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func isMountpoint(dir string) bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 4 && f[4] == dir {
			return true
		}
	}
	return false
}

// interopNode is what one tool made and the other must read back.
type interopNode struct {
	name  string
	mode  uint32 // full st_mode
	rdev  int    // as made; s3fs keeps none
	body  string // regular files
	attrs map[string]string
}

var (
	interopAtime = time.Date(2001, 2, 3, 4, 5, 6, 500_000_000, time.UTC)
	interopMtime = time.Date(2011, 12, 13, 14, 15, 16, 250_000_000, time.UTC)
)

var interopNodes = []interopNode{
	{name: "fifo", mode: syscall.S_IFIFO | 0o644},
	{name: "chr", mode: syscall.S_IFCHR | 0o640, rdev: int(unix.Mkdev(1, 3))},
	{name: "blk", mode: syscall.S_IFBLK | 0o600, rdev: int(unix.Mkdev(7, 9))},
	{name: "sock", mode: syscall.S_IFSOCK | 0o755},
	{name: "file", mode: syscall.S_IFREG | 0o4755, body: "content", attrs: map[string]string{"user.a": "1", "user.bin": "\x00\x01\xff"}},
	{name: "dir", mode: syscall.S_IFDIR | 0o750, attrs: map[string]string{"user.d": "dv"}},
}

// makeInteropNodes makes every node under dir, with its attributes and
// times, through whatever mount dir is on.
func makeInteropNodes(t *testing.T, dir string) {
	t.Helper()
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	for _, n := range interopNodes {
		p := filepath.Join(dir, n.name)
		var err error
		switch n.mode & syscall.S_IFMT {
		case syscall.S_IFREG:
			err = os.WriteFile(p, []byte(n.body), 0o644)
			if err == nil {
				err = syscall.Chmod(p, n.mode&0o7777)
			}
		case syscall.S_IFDIR:
			err = syscall.Mkdir(p, n.mode&0o7777)
		default:
			err = syscall.Mknod(p, n.mode, n.rdev)
		}
		if err != nil {
			t.Fatalf("make %s: %v", p, err)
		}
		for k, v := range n.attrs {
			if err := syscall.Setxattr(p, k, []byte(v), 0); err != nil {
				t.Fatalf("setxattr %s %s: %v", p, k, err)
			}
		}
		ts := []unix.Timespec{unix.NsecToTimespec(interopAtime.UnixNano()), unix.NsecToTimespec(interopMtime.UnixNano())}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			t.Fatalf("utimensat %s: %v", p, err)
		}
	}
}

// checkInteropNodes checks what the other tool shows under dir. Device
// numbers are checked only where the maker keeps them (keelfs does, s3fs
// does not: its devices read 0, 0 everywhere).
func checkInteropNodes(t *testing.T, who, dir string, rdevKept bool) {
	t.Helper()
	for _, n := range interopNodes {
		p := filepath.Join(dir, n.name)
		var st syscall.Stat_t
		if err := syscall.Lstat(p, &st); err != nil {
			t.Errorf("%s: lstat %s: %v", who, n.name, err)
			continue
		}
		rdev := uint64(0)
		if rdevKept {
			rdev = uint64(n.rdev)
		}
		if st.Mode != n.mode || st.Rdev != rdev || st.Uid != 0 || st.Gid != 0 {
			t.Errorf("%s: %s: mode %o rdev %d uid %d gid %d, want mode %o rdev %d", who, n.name, st.Mode, st.Rdev, st.Uid, st.Gid, n.mode, rdev)
		}
		if at, mt := time.Unix(st.Atim.Unix()), time.Unix(st.Mtim.Unix()); !at.Equal(interopAtime) || !mt.Equal(interopMtime) {
			t.Errorf("%s: %s: atime %v mtime %v, want %v and %v", who, n.name, at, mt, interopAtime, interopMtime)
		}
		if n.body != "" {
			if got, err := os.ReadFile(p); err != nil || string(got) != n.body {
				t.Errorf("%s: %s: content %q %v", who, n.name, got, err)
			}
		}
		for k, v := range n.attrs {
			buf := make([]byte, 256)
			sz, err := syscall.Getxattr(p, k, buf)
			if err != nil || string(buf[:sz]) != v {
				t.Errorf("%s: %s: %s = %q %v, want %q", who, n.name, k, buf[:max(sz, 0)], err, v)
			}
		}
	}
}

// TestS3fsInterop: a prefix written through keelfs reads the same through
// s3fs, and the other way round: special files, modes with set-ID bits,
// owners, atime and mtime, extended attributes (s3fs's xattr option). The
// one difference is device numbers, which s3fs does not store.
func TestS3fsInterop(t *testing.T) {
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)

	// keelfs writes, s3fs reads.
	m := srv.Mount(t, b+"/shared", harness.MountOptions{Args: []string{"--write-back-delay", "100ms"}})
	byKeelfs := filepath.Join(m.Dir, "by-keelfs")
	if err := os.Mkdir(byKeelfs, 0o755); err != nil {
		t.Fatal(err)
	}
	makeInteropNodes(t, byKeelfs)
	m.Flush()
	s3 := mountS3fs(t, srv, b, "shared")
	checkInteropNodes(t, "s3fs reading keelfs's", filepath.Join(s3, "by-keelfs"), false)

	// s3fs writes, keelfs (with an empty cache) reads.
	byS3fs := filepath.Join(s3, "by-s3fs")
	if err := os.Mkdir(byS3fs, 0o755); err != nil {
		t.Fatal(err)
	}
	makeInteropNodes(t, byS3fs)
	if out, err := exec.Command("fusermount3", "-u", s3).CombinedOutput(); err != nil { // s3fs uploads at unmount at the latest
		t.Fatalf("unmount s3fs: %v %s", err, out)
	}
	fresh := srv.Mount(t, b+"/shared", harness.MountOptions{})
	checkInteropNodes(t, "keelfs reading s3fs's", filepath.Join(fresh.Dir, "by-s3fs"), false)
	checkInteropNodes(t, "keelfs reading its own", filepath.Join(fresh.Dir, "by-keelfs"), true)
}
