package e2e

import (
	"bytes"
	"flag"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/keelfs/keelfs/test/harness"
)

// timeoutChildEnv names the mount point of the child of
// TestTimeoutDetachesMounts.
const timeoutChildEnv = "KEELFS_TIMEOUT_CHILD_DIR"

// go test's -timeout panics without running t.Cleanup: the daemons die
// with the test process, and their mounts stayed behind (a by-hand run of
// go test -count=40 left one). harness.Main detaches the mounts still up
// shortly before. A child test process with a 15 s -timeout mounts and
// hangs; its mount must be gone by the time the timeout would end it.
func TestTimeoutDetachesMounts(t *testing.T) {
	harness.RequireFUSE(t)
	dir := t.TempDir()
	out := &lockedBuffer{}
	cmd := exec.Command(os.Args[0], "-test.timeout=15s")
	cmd.Env = append(os.Environ(), timeoutChildEnv+"="+dir)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		if harness.IsMounted(dir) { // the check below failed: clean up all the same
			harness.AbortFUSE(dir)
			syscall.Unmount(dir, syscall.MNT_DETACH)
		}
	})
	wait := func(what string, limit time.Duration, done func() bool) {
		t.Helper()
		deadline := time.Now().Add(limit)
		for !done() {
			select {
			case <-exited:
				t.Fatalf("the child exited before %s:\n%s", what, out.String())
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within %v:\n%s", what, limit, out.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	wait("the child mounted", 30*time.Second, func() bool { return harness.IsMounted(dir) })
	// The child's test never ends; its -timeout is 15 s, so the mount must
	// go 5 s before that (the margin for short timeouts).
	wait("the mount was detached before the child's -timeout", 30*time.Second, func() bool { return !harness.IsMounted(dir) })
	if !strings.Contains(out.String(), "harness: go test's -timeout is near") {
		t.Fatalf("the child did not say why its mount went:\n%s", out.String())
	}
}

// lockedBuffer is a bytes.Buffer a child process writes to while the test
// reads it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// runTimeoutChild is the child's side of TestTimeoutDetachesMounts: with
// the watch of harness.Main armed, it mounts at dir and hangs until the
// parent kills it.
func runTimeoutChild(m *testing.M, dir string) {
	flag.Parse()
	if err := flag.Set("test.run", "^$"); err != nil {
		panic(err)
	}
	stop := harness.DetachNearTimeout()
	m.Run() // sets up the testing package for RunTests
	testing.RunTests(func(pat, str string) (bool, error) { return true, nil },
		[]testing.InternalTest{{Name: "mountAndHang", F: func(t *testing.T) {
			s := harness.StartServer(t)
			s.Mount(t, s.NewBucket(t), harness.MountOptions{Dir: dir})
			time.Sleep(time.Hour)
		}}})
	stop()
	os.Exit(1)
}
