package harness

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	appOnce sync.Once
	appPath string
	appErr  error
)

// TestApp returns the test app (test/testapp), built once per test
// process as a static binary, so that it runs in a FROM scratch image too.
// It goes to one directory per checkout under os.TempDir, open to every
// user (an app run with --app-user must reach it, which a checkout under
// /root would not allow), and is replaced atomically there, since test
// processes may build it at once. (Under harness.Main, os.TempDir is the
// process's own directory, so each such process has its own copy.)
func TestApp(t testing.TB) string {
	t.Helper()
	appOnce.Do(func() {
		sum := sha256.Sum256([]byte(RepoRoot()))
		dir := filepath.Join(os.TempDir(), "keelfs-testapp-"+hex.EncodeToString(sum[:6]))
		if appErr = os.MkdirAll(dir, 0o755); appErr != nil {
			return
		}
		if appErr = os.Chmod(dir, 0o755); appErr != nil {
			return
		}
		tmp, err := os.CreateTemp(dir, ".testapp-")
		if err != nil {
			appErr = err
			return
		}
		tmp.Close()
		cmd := exec.Command("go", "build", "-o", tmp.Name(), "./test/testapp")
		cmd.Dir = RepoRoot()
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			os.Remove(tmp.Name())
			appErr = fmt.Errorf("go build: %v\n%s", err, out)
			return
		}
		// Any user may run it (--app-user).
		appPath = filepath.Join(dir, "testapp")
		if err := os.Chmod(tmp.Name(), 0o755); err != nil {
			appErr = err
			return
		}
		appErr = os.Rename(tmp.Name(), appPath)
	})
	if appErr != nil {
		t.Fatalf("harness: build the test app: %v", appErr)
	}
	return appPath
}

// AppRun is one `keelfs run` started as a container starts its PID 1: in
// fresh PID and mount namespaces (unshare --pid --fork --mount-proc). The
// mount lives in that mount namespace, invisible to the test; the test
// looks at S3 and at the app's status directory.
type AppRun struct {
	Dir    string // mount point, inside the namespace
	Status string // the test app's status directory (-status)
	Source string

	t       testing.TB
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	exitErr error
	allowed []*regexp.Regexp
	notPID1 bool
}

// RunOptions tunes an AppRun.
type RunOptions struct {
	Dir      string   // mount point; default a new temp dir
	CacheDir string   // default a new temp dir
	Args     []string // keelfs flags
	App      []string // the command after --; default the test app with AppArgs
	AppArgs  []string // test app flags (-dir and -status are added)
	Env      []string
	Endpoint string // instead of the server's
	// NotPID1 runs keelfs run as an ordinary process in the test's
	// namespaces (a shell, a systemd unit) instead of as PID 1.
	NotPID1 bool
}

// StartRun starts `keelfs run` on source in new namespaces and returns at
// once; WaitStatus waits for the app. The process tree is killed at
// cleanup if it is still running, and its log checked for warnings.
func (s *Server) StartRun(t testing.TB, source string, o RunOptions) *AppRun {
	t.Helper()
	RequireFUSE(t)
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Fatalf("harness: unshare (util-linux) not found: %v", err)
	}
	// The mount point and the status directory are where an app running
	// as another user (--app-user) can reach them: t.TempDir's parent is
	// private to root.
	if o.Dir == "" {
		o.Dir = openTempDir(t, "keelfs-run-mnt-", 0o755)
	}
	if o.CacheDir == "" {
		o.CacheDir = t.TempDir()
	}
	r := &AppRun{Dir: o.Dir, Status: openTempDir(t, "keelfs-run-status-", 0o777), Source: "s3://" + source, t: t}
	endpoint := s.Endpoint
	if o.Endpoint != "" {
		endpoint = o.Endpoint
	}
	app := o.App
	if app == nil {
		app = append([]string{TestApp(t), "-dir", r.Dir, "-status", r.Status}, o.AppArgs...)
	}
	args := []string{"--pid", "--fork", "--mount-proc", "--kill-child", Binary(t), "run", r.Source, r.Dir,
		"--endpoint", endpoint, "--force-path-style", "--cache-dir", o.CacheDir, "--log-level", "debug"}
	args = append(append(append(args, o.Args...), "--"), app...)
	name := "unshare"
	if o.NotPID1 {
		name, args = args[4], args[5:]
		r.notPID1 = true
		t.Cleanup(func() { // after the process is gone (cleanups run last first)
			if IsMounted(r.Dir) {
				t.Errorf("keelfs run left %s mounted", r.Dir)
				detach(r.Dir)
			}
		})
	}
	r.logPath = filepath.Join(t.TempDir(), "keelfs-run.log")
	logf, err := os.Create(r.logPath)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(logf, "=== %s %s\n", name, strings.Join(args, " "))
	r.cmd = exec.Command(name, args...)
	r.cmd.Env = append(append(os.Environ(), s.Env()...), o.Env...)
	r.cmd.Stdout, r.cmd.Stderr = logf, logf
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := r.cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("harness: start unshare: %v", err)
	}
	r.done = make(chan struct{})
	go func() {
		r.exitErr = r.cmd.Wait()
		logf.Close()
		close(r.done)
	}()
	t.Cleanup(r.cleanup)
	return r
}

// openTempDir makes a directory under os.TempDir with mode, removed at
// cleanup.
func openTempDir(t testing.TB, pattern string, mode os.FileMode) string {
	t.Helper()
	dir, err := os.MkdirTemp("", pattern)
	if err == nil {
		err = os.Chmod(dir, mode)
	}
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("harness: remove %s: %v", dir, err)
		}
	})
	return dir
}

// AllowLog lets WARN and ERROR lines matching re pass the log check.
func (r *AppRun) AllowLog(re string) { r.allowed = append(r.allowed, regexp.MustCompile(re)) }

// Log is keelfs's (and the app's) output so far.
func (r *AppRun) Log() string {
	b, _ := os.ReadFile(r.logPath)
	return string(b)
}

// Pid1 is the host's pid of the namespace's PID 1 (keelfs run), or 0.
func (r *AppRun) Pid1() int {
	if r.notPID1 {
		select {
		case <-r.done:
			return 0
		default:
			return r.cmd.Process.Pid
		}
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", r.cmd.Process.Pid, r.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	pid, _ := strconv.Atoi(f[0])
	return pid
}

// Signal sends sig to keelfs run, the namespace's PID 1. (unshare itself
// ignores SIGTERM and SIGINT while it waits.)
func (r *AppRun) Signal(sig syscall.Signal) {
	r.t.Helper()
	pid := r.Pid1()
	if pid == 0 {
		r.t.Fatalf("harness: keelfs run is not running:\n%s", tailStr(r.Log(), 4000))
	}
	if err := syscall.Kill(pid, sig); err != nil {
		r.t.Fatalf("harness: signal keelfs run: %v", err)
	}
}

// WaitFile waits until the app's status directory holds name.
func (r *AppRun) WaitFile(name string, timeout time.Duration) {
	r.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if _, err := os.Stat(filepath.Join(r.Status, name)); err == nil {
			return
		}
		select {
		case <-r.done:
			r.t.Fatalf("keelfs run exited (%v) before the app wrote %s:\n%s", r.exitErr, name, tailStr(r.Log(), 8000))
		default:
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("the app did not write %s within %v:\n%s", name, timeout, tailStr(r.Log(), 8000))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// HasFile reports whether the app's status directory holds name.
func (r *AppRun) HasFile(name string) bool {
	_, err := os.Stat(filepath.Join(r.Status, name))
	return err == nil
}

// StatusFiles lists the status directory.
func (r *AppRun) StatusFiles() []string {
	ents, _ := os.ReadDir(r.Status)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// Wait waits for keelfs run (and so the namespace) to end and returns its
// exit status; it fails the test after timeout.
func (r *AppRun) Wait(timeout time.Duration) int {
	r.t.Helper()
	select {
	case <-r.done:
	case <-time.After(timeout):
		r.t.Fatalf("keelfs run still running after %v:\n%s", timeout, tailStr(r.Log(), 8000))
	}
	var ee *exec.ExitError
	if errors.As(r.exitErr, &ee) {
		return ee.ExitCode()
	}
	if r.exitErr != nil {
		r.t.Fatalf("keelfs run: %v", r.exitErr)
	}
	return 0
}

// Mountinfo is the mount table as keelfs run sees it.
func (r *AppRun) Mountinfo() string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", r.Pid1()))
	return string(b)
}

func (r *AppRun) cleanup() {
	select {
	case <-r.done:
	default:
		// --kill-child: killing unshare kills PID 1, and with it the
		// namespace and its mounts.
		r.cmd.Process.Kill()
		<-r.done
	}
	log := r.Log()
	if !r.t.Failed() {
		checkLog(r.t, log, r.allowed)
	}
	if r.t.Failed() {
		if races := raceReports(log); races != "" {
			r.t.Logf("data races in keelfs:\n%s", races)
		}
		r.t.Logf("keelfs run log:\n%s", tailStr(log, 12000))
	}
}

// checkLog fails the test on a warning or error in log that no pattern in
// allowed lets pass.
func checkLog(t testing.TB, log string, allowed []*regexp.Regexp) {
	t.Helper()
	for _, line := range strings.Split(log, "\n") {
		if !badLine.MatchString(line) {
			continue
		}
		ok := false
		for _, re := range allowed {
			if re.MatchString(line) {
				ok = true
				break
			}
		}
		if !ok {
			t.Errorf("unexpected log line from keelfs: %s", line)
		}
	}
}
