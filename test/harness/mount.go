package harness

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

var (
	buildOnce sync.Once
	buildPath string
	buildErr  error
)

// Binary returns the keelfs binary under test: $KEELFS_BIN (the Makefile
// sets it), else one built once per test process.
func Binary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("KEELFS_BIN"); p != "" {
		if abs, err := filepath.Abs(p); err == nil {
			return abs
		}
		return p
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "keelfs-bin-")
		if err != nil {
			buildErr = err
			return
		}
		buildPath = filepath.Join(dir, "keelfs")
		cmd := exec.Command("go", "build", "-o", buildPath, "./cmd/keelfs")
		cmd.Dir = RepoRoot()
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatalf("harness: build keelfs: %v", buildErr)
	}
	return buildPath
}

// RequireFUSE fails the test, loudly, when this machine cannot mount FUSE.
func RequireFUSE(t testing.TB) {
	t.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Fatalf("harness: FUSE is not available (/dev/fuse: %v); this test needs it (install fuse3, run as root or with /dev/fuse access)", err)
	}
	if _, err := exec.LookPath("fusermount3"); err != nil {
		t.Fatalf("harness: fusermount3 not found; install the fuse3 package (make test does it)")
	}
}

// Mount is one running keelfs process serving a mount point.
type Mount struct {
	Dir      string // mount point
	CacheDir string
	Source   string // s3://bucket/prefix
	Server   *Server

	t       testing.TB
	args    []string
	env     []string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	exitErr error
	allowed []*regexp.Regexp
	mu      sync.Mutex
}

// MountOptions tunes a test mount.
type MountOptions struct {
	Dir      string   // mount point; default a new temp dir
	CacheDir string   // default a new temp dir
	Args     []string // extra flags
	Env      []string // extra environment
	Endpoint string   // S3 endpoint to use instead of the server's (a Proxy)
}

// Mount starts keelfs in the foreground on source ("bucket" or
// "bucket/prefix") and waits until the mount is live. It is unmounted and
// stopped at cleanup, whatever happens in the test.
func (s *Server) Mount(t testing.TB, source string, o MountOptions) *Mount {
	t.Helper()
	RequireFUSE(t)
	if o.Dir == "" {
		o.Dir = t.TempDir()
	}
	if o.CacheDir == "" {
		o.CacheDir = t.TempDir()
	}
	m := &Mount{Dir: o.Dir, CacheDir: o.CacheDir, Source: "s3://" + source, Server: s, t: t,
		env: append(append(os.Environ(), s.Env()...), o.Env...)}
	endpoint := s.Endpoint
	if o.Endpoint != "" {
		endpoint = o.Endpoint
	}
	m.args = append([]string{"mount", m.Source, m.Dir, "-f", "--endpoint", endpoint, "--force-path-style",
		"--cache-dir", m.CacheDir, "--log-level", "debug"}, o.Args...)
	m.logPath = filepath.Join(t.TempDir(), "keelfs.log")
	t.Cleanup(m.cleanup)
	m.start()
	return m
}

func (m *Mount) start() {
	m.t.Helper()
	if NearTimeout() {
		m.t.Fatalf("harness: go test's -timeout is near: not mounting %s", m.Dir)
	}
	logf, err := os.OpenFile(m.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		m.t.Fatalf("harness: %v", err)
	}
	fmt.Fprintf(logf, "=== keelfs %s\n", strings.Join(m.args, " "))
	cmd := exec.Command(Binary(m.t), m.args...)
	cmd.Env = m.env
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		m.t.Fatalf("harness: start keelfs: %v", err)
	}
	done := make(chan struct{})
	m.mu.Lock()
	m.cmd, m.done = cmd, done
	m.mu.Unlock()
	go func() {
		err := cmd.Wait()
		logf.Close()
		m.mu.Lock()
		m.exitErr = err
		m.mu.Unlock()
		close(done)
	}()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-done:
			m.t.Fatalf("harness: keelfs exited before mounting (%v):\n%s", m.exitErr, m.Log())
		default:
		}
		if NearTimeout() {
			// The watch has detached the mounts: this one must not come
			// up after it, for the timeout's panic would leave it.
			cmd.Process.Kill()
			<-done
			if IsMounted(m.Dir) {
				detach(m.Dir)
			}
			m.t.Fatalf("harness: go test's -timeout came near while %s was mounting: stopped it", m.Dir)
		}
		// A mount left behind by a crash is listed too, and the kernel
		// may answer a stat of it from its attribute cache: only a daemon
		// that answers a statfs is live.
		if IsMounted(m.Dir) && Answers(m.Dir) {
			if !addLive(m.Dir) {
				m.t.Fatalf("harness: go test's -timeout came near while %s mounted: detached it", m.Dir)
			}
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	m.t.Fatalf("harness: %s not mounted after 30s:\n%s", m.Dir, m.Log())
}

// IsMounted reports whether dir is a keelfs mount point.
func IsMounted(dir string) bool { return len(keelfsMounts(dir)) > 0 }

// keelfsMounts returns the mount ids of the keelfs mounts at dir, live or
// stale, from /proc/self/mountinfo.
func keelfsMounts(dir string) map[string]bool {
	ids := map[string]bool{}
	for _, e := range mountTable() {
		if e.dir == dir && strings.HasPrefix(e.fstype, "fuse.keelfs") {
			ids[e.id] = true
		}
	}
	return ids
}

// mountEntry is one line of /proc/self/mountinfo, the fields the harness
// uses.
type mountEntry struct {
	id     string // mount id
	minor  string // of the device: the FUSE connection's number
	dir    string // mount point, unescaped
	fstype string
}

// mountTable reads /proc/self/mountinfo (nothing if it cannot).
func mountTable() []mountEntry {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []mountEntry
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		sep := slices.Index(f, "-")
		if len(f) < 5 || sep < 0 || sep+1 >= len(f) {
			continue
		}
		_, minor, _ := strings.Cut(f[2], ":")
		out = append(out, mountEntry{id: f[0], minor: minor, dir: unescapeMountinfo(f[4]), fstype: f[sep+1]})
	}
	return out
}

// Answers reports whether a live daemon serves the FUSE mount at dir:
// FUSE passes every statfs to the daemon, never from a cache (a stat may
// be answered from the attribute cache after the daemon died), and
// keelfs answers it without S3 (an open of the directory would list it,
// and fill the cache the test is about). The answer must come from a
// FUSE filesystem: while a new daemon detaches the dead mount it replaces,
// dir briefly resolves to the directory underneath, whose statfs works.
func Answers(dir string) bool {
	const fuseSuperMagic = 0x65735546
	var st unix.Statfs_t
	return unix.Statfs(dir, &st) == nil && st.Type == fuseSuperMagic
}

// Path joins p to the mount point.
func (m *Mount) Path(p ...string) string { return filepath.Join(append([]string{m.Dir}, p...)...) }

// Log returns the daemon's log so far.
func (m *Mount) Log() string {
	b, _ := os.ReadFile(m.logPath)
	return string(b)
}

// AllowLog lets log lines at WARN or ERROR matching re pass; any other
// such line fails the test at cleanup.
func (m *Mount) AllowLog(re string) { m.allowed = append(m.allowed, regexp.MustCompile(re)) }

// Stop sends SIGTERM and waits for the process; it returns the exit code.
func (m *Mount) Stop() int {
	m.t.Helper()
	return m.signalAndWait(syscall.SIGTERM, 60*time.Second)
}

// Kill9 kills the daemon without warning, like a crash or an OOM kill,
// and detaches the dead mount.
func (m *Mount) Kill9() {
	m.t.Helper()
	m.signalAndWait(syscall.SIGKILL, 10*time.Second)
	detach(m.Dir)
}

// Remount starts keelfs again on the same mount point and cache directory.
func (m *Mount) Remount(extraArgs ...string) {
	m.t.Helper()
	if m.running() {
		m.t.Fatalf("harness: remount while still running")
	}
	m.args = append(m.args, extraArgs...)
	m.start()
}

// Flush runs `keelfs flush` on the mount and fails the test if it fails.
func (m *Mount) Flush() {
	m.t.Helper()
	cmd := exec.Command(Binary(m.t), "flush", m.Dir)
	cmd.Env = m.env
	if out, err := cmd.CombinedOutput(); err != nil {
		m.t.Fatalf("keelfs flush: %v\n%s\nlog:\n%s", err, out, tailStr(m.Log(), 4000))
	}
}

func (m *Mount) running() bool {
	m.mu.Lock()
	done := m.done
	m.mu.Unlock()
	if done == nil {
		return false
	}
	select {
	case <-done:
		return false
	default:
		return true
	}
}

func (m *Mount) signalAndWait(sig syscall.Signal, timeout time.Duration) int {
	m.mu.Lock()
	cmd, done := m.cmd, m.done
	m.mu.Unlock()
	if cmd == nil {
		return -1
	}
	select {
	case <-done:
	default:
		cmd.Process.Signal(sig)
		select {
		case <-done:
		case <-time.After(timeout):
			// Ask Go for every goroutine's stack (into the log) before the
			// kill, so a hang can be diagnosed.
			m.t.Errorf("harness: keelfs did not exit %v after %v; dumping goroutines and killing it", sig, timeout)
			cmd.Process.Signal(syscall.SIGQUIT)
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				AbortFUSE(m.Dir)
				cmd.Process.Kill()
				<-done
			}
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var ee *exec.ExitError
	if errors.As(m.exitErr, &ee) {
		return ee.ExitCode()
	}
	if m.exitErr != nil {
		return -1
	}
	return 0
}

func (m *Mount) cleanup() {
	if m.running() {
		if code := m.signalAndWait(syscall.SIGTERM, 60*time.Second); code != 0 && !m.t.Failed() {
			m.t.Errorf("harness: keelfs exited %d at cleanup:\n%s", code, tailStr(m.Log(), 4000))
		}
	}
	if IsMounted(m.Dir) {
		detach(m.Dir)
	}
	dropLive(m.Dir)
	if !m.t.Failed() {
		m.checkLog()
	}
	if m.t.Failed() {
		log := m.Log()
		if races := raceReports(log); races != "" {
			m.t.Logf("data races in keelfs:\n%s", races)
		}
		m.t.Logf("keelfs log (%s):\n%s", m.Dir, tailStr(log, 12000))
	}
}

// raceReports extracts the race detector's reports from a log, whole.
func raceReports(log string) string {
	var out []string
	in := false
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, "WARNING: DATA RACE") {
			in = true
		}
		if in {
			out = append(out, line)
			if strings.HasPrefix(line, "==================") && len(out) > 1 {
				in = false
			}
		}
	}
	return strings.Join(out, "\n")
}

var badLine = regexp.MustCompile(`level=(WARN|ERROR)|"level":"(WARN|ERROR)"|panic:|DATA RACE`)

// checkLog fails the test on a warning or error nobody expected: an
// unexpected S3 error or cache inconsistency must not pass quietly.
func (m *Mount) checkLog() { checkLog(m.t, m.Log(), m.allowed) }

func detach(dir string) {
	AbortFUSE(dir)
	if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
		exec.Command("fusermount3", "-u", "-z", dir).Run()
	}
}

// AbortFUSE aborts the FUSE connection of the mount at dir (through the
// fusectl filesystem), so that nothing waits forever on a dead daemon: a
// process blocked on the mount gets ENOTCONN instead. It does nothing if
// dir is not a FUSE mount.
func AbortFUSE(dir string) {
	for _, e := range mountTable() {
		if e.dir != dir || (e.fstype != "fuse" && !strings.HasPrefix(e.fstype, "fuse.")) || e.minor == "" {
			continue
		}
		const ctl = "/sys/fs/fuse/connections"
		if _, err := os.Stat(filepath.Join(ctl, e.minor)); err != nil {
			syscall.Mount("fusectl", ctl, "fusectl", 0, "")
		}
		os.WriteFile(filepath.Join(ctl, e.minor, "abort"), []byte("1"), 0o200)
		return
	}
}

func tailStr(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// Run runs a shell command in dir and returns its combined output; it
// fails the test if the command fails.
func Run(t testing.TB, dir, script string) string {
	t.Helper()
	cmd := exec.Command("bash", "-euo", "pipefail", "-c", script)
	cmd.Dir = dir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s: %v\n%s", script, err, out.String())
	}
	return out.String()
}

// unescapeMountinfo undoes the octal escapes of /proc/self/mountinfo.
func unescapeMountinfo(s string) string {
	return strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`).Replace(s)
}
