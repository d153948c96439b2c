package posix

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/keelfs/keelfs/test/harness"
)

// prefix is the part of the bucket every fixture mounts: a prefix, as most
// deployments use, so that keys are checked with it.
const prefix = "px/"

// fixture is one server and one mount, shared by the subtests of a
// top-level test; each subtest works in a directory of its own.
type fixture struct {
	srv    *harness.Server
	bucket string
	m      *harness.Mount
}

// newFixture starts a versitygw and mounts a fresh bucket under prefix.
func newFixture(t *testing.T, args ...string) *fixture {
	t.Helper()
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	m := srv.Mount(t, b+"/"+strings.TrimSuffix(prefix, "/"), harness.MountOptions{Args: append(fastArgs(), args...)})
	return &fixture{srv: srv, bucket: b, m: m}
}

// newSharedFixture is newFixture for cases that run a child as another
// user: the mount point sits in a directory everyone can enter, and the
// mount is made with --allow-other (without it the kernel refuses every
// other uid with EACCES before keelfs or the permission bits are asked).
func newSharedFixture(t *testing.T) *fixture {
	t.Helper()
	parent, err := os.MkdirTemp("", "keelfs-posix-")
	if err != nil {
		t.Fatal(err)
	}
	// Registered before the mount, so it runs after the unmount.
	t.Cleanup(func() { os.RemoveAll(parent) })
	dir := filepath.Join(parent, "mnt")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(parent, 0o755); err != nil {
		t.Fatal(err)
	}
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	m := srv.Mount(t, b+"/"+strings.TrimSuffix(prefix, "/"), harness.MountOptions{Dir: dir, Args: append(fastArgs(), "--allow-other")})
	return &fixture{srv: srv, bucket: b, m: m}
}

// fastArgs are the flags of every fixture. A short write-back delay makes
// each flush (which waits for the uploads) cheap; it changes nothing a
// POSIX case can observe.
func fastArgs() []string { return []string{"--write-back-delay", "100ms"} }

// dir makes a directory (0755) for the running subtest and returns its
// path on the mount.
func (f *fixture) dir(t *testing.T) string {
	t.Helper()
	name := strings.NewReplacer("/", "_", " ", "_").Replace(t.Name())
	p := f.m.Path(name)
	if err := os.Mkdir(p, 0o755); err != nil {
		t.Fatalf("mkdir %s: %v", p, err)
	}
	// The process umask must not narrow it: children as another uid need
	// to enter it.
	if err := os.Chmod(p, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// key returns the bucket key of a path on the mount.
func (f *fixture) key(t *testing.T, p string) string {
	t.Helper()
	rel, err := filepath.Rel(f.m.Dir, p)
	if err != nil || strings.HasPrefix(rel, "..") {
		t.Fatalf("%s is not on the mount", p)
	}
	return prefix + filepath.ToSlash(rel)
}

// keysUnder flushes the mount and returns the keys under the directory p
// (relative to it), so a case can check what S3 holds.
func (f *fixture) keysUnder(t *testing.T, p string) []string {
	t.Helper()
	f.m.Flush()
	kp := f.key(t, p) + "/"
	var out []string
	for _, k := range f.srv.Keys(t, f.bucket, kp) {
		if k != kp { // the directory's own marker
			out = append(out, strings.TrimPrefix(k, kp))
		}
	}
	return out
}

// wantKeys checks the keys under directory p after a flush.
func (f *fixture) wantKeys(t *testing.T, p string, want ...string) {
	t.Helper()
	got := f.keysUnder(t, p)
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("keys under %s: %q, want %q", f.key(t, p), got, want)
	}
}

// fileKeys drops the directory markers from keys.
func fileKeys(keys []string) []string {
	var out []string
	for _, k := range keys {
		if !strings.HasSuffix(k, "/") {
			out = append(out, k)
		}
	}
	return out
}

// object reads the object behind a path on the mount, after a flush.
func (f *fixture) object(t *testing.T, p string) ([]byte, bool) {
	t.Helper()
	f.m.Flush()
	return f.srv.Get(t, f.bucket, f.key(t, p))
}

// fresh flushes the mount and mounts the same prefix again with an empty
// cache of its own: what it shows is what S3 holds. It returns a function
// that maps a path on the fixture's mount to the same path on the new one.
func (f *fixture) fresh(t *testing.T) func(string) string {
	t.Helper()
	f.m.Flush()
	m := f.srv.Mount(t, f.bucket+"/"+strings.TrimSuffix(prefix, "/"), harness.MountOptions{Args: fastArgs()})
	return func(p string) string {
		rel, err := filepath.Rel(f.m.Dir, p)
		if err != nil || strings.HasPrefix(rel, "..") {
			t.Fatalf("%s is not on the mount", p)
		}
		return m.Path(rel)
	}
}

// wantErrno fails unless err carries errno want.
func wantErrno(t *testing.T, err error, want syscall.Errno, what string) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("%s: got %v, want %s (%v)", what, err, unix.ErrnoName(want), want)
	}
}

// sysOpen is open(2) with O_CLOEXEC, so that descriptors a case holds
// open do not leak into the children it starts (keelfs flush, the uid
// 65534 calls) and keep files open behind its back.
func sysOpen(p string, flags int, mode uint32) (int, error) {
	return syscall.Open(p, flags|syscall.O_CLOEXEC, mode)
}

// openErr opens p, closes it again if that worked, and returns the error:
// for cases that expect open to fail, so that an unexpected success leaks
// no descriptor (which would keep the mount busy at cleanup).
func openErr(p string, flags int, mode uint32) error {
	fd, err := sysOpen(p, flags, mode)
	if err == nil {
		syscall.Close(fd)
	}
	return err
}

// must fails on any error.
func must(t *testing.T, err error, what string) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func writeFile(t *testing.T, p string, data []byte) {
	t.Helper()
	must(t, os.WriteFile(p, data, 0o644), "write "+p)
}

func wantContent(t *testing.T, p string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("read %s: %v", p, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: read %d bytes %.40q, want %d bytes %.40q", p, len(got), got, len(want), want)
	}
}

func lstat(t *testing.T, p string) syscall.Stat_t {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Lstat(p, &st); err != nil {
		t.Fatalf("lstat %s: %v", p, err)
	}
	return st
}

func exists(p string) bool {
	var st syscall.Stat_t
	return syscall.Lstat(p, &st) == nil
}

// waitFor polls cond until it holds or the deadline passes. Listings
// reflect changes made in S3 within the metadata TTL (1 s by default).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// within runs a call that may block on the daemon (fsync waits for S3)
// and fails the test if it has not returned after a minute, rather than
// hanging the whole suite.
func within(t *testing.T, what string, fn func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- fn() }()
	select {
	case err := <-done:
		return err
	case <-time.After(time.Minute):
		t.Fatalf("%s did not return within a minute", what)
		return nil
	}
}

// withUmask runs fn with the process umask set to mask. The umask is
// process wide: callers must not run in parallel.
func withUmask(mask int, fn func()) {
	old := syscall.Umask(mask)
	defer syscall.Umask(old)
	fn()
}

// The unprivileged side of permission cases.

// nobody is the uid and gid the child processes run as.
const nobody = 65534

// userOp is one system call for the child process to make.
type userOp struct {
	Op    string // chmod chown utimes utimes-now write read create truncate unlink mkdir rename fcntl-lock setxattr getxattr mknod
	Path  string
	To    string // rename target
	Mode  uint32
	UID   int
	GID   int
	Size  int64
	Data  []byte
	Atime int64 // Unix ns, for utimes
	Mtime int64
	Name  string // xattr name
	Dev   int    // mknod's device number
}

const asUserEnv = "KEELFS_POSIX_USER_OP"

func TestMain(m *testing.M) {
	if spec := os.Getenv(asUserEnv); spec != "" {
		os.Exit(runUserOp(spec))
	}
	// The daemon, `keelfs flush` and the uid 65534 children are race
	// binaries, which sleep a second at exit by default; nothing here
	// needs that (races still fail the test through the daemon's log).
	os.Setenv("GORACE", strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	code := harness.Main(m)
	if childDir != "" {
		os.RemoveAll(childDir)
	}
	os.Exit(code)
}

// runUserOp is the child's side: it makes the call and prints the errno
// (0 on success).
func runUserOp(spec string) int {
	var op userOp
	if err := json.Unmarshal([]byte(spec), &op); err != nil {
		fmt.Fprintln(os.Stderr, "bad op:", err)
		return 2
	}
	err := op.do()
	var errno syscall.Errno
	switch {
	case err == nil:
	case errors.As(err, &errno):
	default:
		fmt.Fprintln(os.Stderr, "not an errno:", err)
		return 2
	}
	fmt.Println(int(errno))
	return 0
}

func (op userOp) do() error {
	switch op.Op {
	case "chmod":
		return syscall.Chmod(op.Path, op.Mode)
	case "chown":
		return syscall.Chown(op.Path, op.UID, op.GID)
	case "utimes":
		ts := []unix.Timespec{unix.NsecToTimespec(op.Atime), unix.NsecToTimespec(op.Mtime)}
		return unix.UtimesNanoAt(unix.AT_FDCWD, op.Path, ts, 0)
	case "utimes-now": // what touch(1) does
		ts := []unix.Timespec{{Nsec: unix.UTIME_NOW}, {Nsec: unix.UTIME_NOW}}
		return unix.UtimesNanoAt(unix.AT_FDCWD, op.Path, ts, 0)
	case "write", "create":
		flags := syscall.O_WRONLY
		if op.Op == "create" {
			flags |= syscall.O_CREAT | syscall.O_EXCL
		}
		fd, err := sysOpen(op.Path, flags, op.Mode)
		if err != nil {
			return err
		}
		_, werr := syscall.Write(fd, op.Data)
		cerr := syscall.Close(fd)
		if werr != nil {
			return werr
		}
		return cerr
	case "read":
		fd, err := sysOpen(op.Path, syscall.O_RDONLY, 0)
		if err != nil {
			return err
		}
		defer syscall.Close(fd)
		_, err = syscall.Read(fd, make([]byte, 4096))
		return err
	case "truncate":
		return syscall.Truncate(op.Path, op.Size)
	case "unlink":
		return syscall.Unlink(op.Path)
	case "mkdir":
		return syscall.Mkdir(op.Path, op.Mode)
	case "rename":
		return syscall.Rename(op.Path, op.To)
	case "setxattr":
		return syscall.Setxattr(op.Path, op.Name, op.Data, 0)
	case "getxattr":
		_, err := syscall.Getxattr(op.Path, op.Name, make([]byte, 4096))
		return err
	case "mknod":
		return syscall.Mknod(op.Path, op.Mode, op.Dev)
	case "fcntl-lock": // a read lock on the whole file, without waiting
		fd, err := sysOpen(op.Path, syscall.O_RDONLY, 0)
		if err != nil {
			return err
		}
		defer syscall.Close(fd)
		return syscall.FcntlFlock(uintptr(fd), syscall.F_SETLK, &syscall.Flock_t{Type: syscall.F_RDLCK})
	}
	return fmt.Errorf("unknown op %q", op.Op)
}

var (
	childOnce sync.Once
	childDir  string
	childBin  string
	childErr  error
)

// childBinary is a copy of this test binary that uid 65534 can execute:
// the one go test built sits in a directory only root may enter.
func childBinary(t *testing.T) string {
	t.Helper()
	childOnce.Do(func() {
		self, err := os.Executable()
		if err != nil {
			childErr = err
			return
		}
		if childDir, childErr = os.MkdirTemp("", "keelfs-posix-bin-"); childErr != nil {
			return
		}
		if childErr = os.Chmod(childDir, 0o755); childErr != nil {
			return
		}
		childBin = filepath.Join(childDir, "posix.test")
		src, err := os.Open(self)
		if err != nil {
			childErr = err
			return
		}
		defer src.Close()
		dst, err := os.OpenFile(childBin, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
		if err != nil {
			childErr = err
			return
		}
		if _, err := io.Copy(dst, src); err != nil {
			dst.Close()
			childErr = err
			return
		}
		childErr = dst.Close()
	})
	if childErr != nil {
		t.Fatalf("copy the test binary for uid %d: %v", nobody, childErr)
	}
	return childBin
}

// asNobody makes one call as uid/gid 65534 (no supplementary groups) and
// returns its errno, or nil if it succeeded.
func asNobody(t *testing.T, op userOp) error {
	t.Helper()
	spec, err := json.Marshal(op)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(childBinary(t))
	cmd.Dir = "/"
	cmd.Env = append(os.Environ(), asUserEnv+"="+string(spec))
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody, Groups: []uint32{}}}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("child %s as uid %d: %v\n%s%s", op.Op, nobody, err, stdout.String(), stderr.String())
	}
	n, err := strconv.Atoi(strings.TrimSpace(stdout.String()))
	if err != nil {
		t.Fatalf("child %s: output %q: %v\n%s", op.Op, stdout.String(), err, stderr.String())
	}
	if n == 0 {
		return nil
	}
	return syscall.Errno(n)
}

// chownNobody gives p to uid/gid 65534 (the test runs as root).
func chownNobody(t *testing.T, p string) {
	t.Helper()
	must(t, os.Lchown(p, nobody, nobody), "chown "+p)
}
