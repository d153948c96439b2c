package e2e

import (
	"bytes"
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
// go test -count=40 left one). harness.Main, which this package's TestMain
// runs, detaches the mounts still up shortly before. This test runs itself
// again in a child test process with a 15 s -timeout, where it mounts and
// hangs: the child must end in the timeout's panic, with no mount left.
func TestTimeoutDetachesMounts(t *testing.T) {
	if dir := os.Getenv(timeoutChildEnv); dir != "" {
		// The child's side: mount at dir and hang until the -timeout.
		s := harness.StartServer(t)
		s.Mount(t, s.NewBucket(t), harness.MountOptions{Dir: dir})
		time.Sleep(time.Hour)
		return
	}
	harness.RequireFUSE(t)
	dir := t.TempDir()
	out := &lockedBuffer{}
	cmd := exec.Command(os.Args[0], "-test.run=^TestTimeoutDetachesMounts$", "-test.timeout=15s")
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
	deadline := time.Now().Add(30 * time.Second)
	for !harness.IsMounted(dir) {
		select {
		case <-exited:
			t.Fatalf("the child exited before it mounted:\n%s", out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the child did not mount within 30s:\n%s", out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	select {
	case <-exited:
	case <-time.After(45 * time.Second):
		t.Fatalf("the child did not end within 45s of its 15s -timeout:\n%s", out.String())
	}
	log := out.String()
	if !strings.Contains(log, "panic: test timed out") {
		t.Fatalf("the child did not end in go test's timeout:\n%s", log)
	}
	if harness.IsMounted(dir) {
		t.Fatalf("the child's mount stayed behind its -timeout:\n%s", log)
	}
	if !strings.Contains(log, "harness: go test's -timeout is near") {
		t.Fatalf("the child did not say why its mount went:\n%s", log)
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
