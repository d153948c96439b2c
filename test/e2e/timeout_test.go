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

// timeoutChildEnv names the two mount points of the child of
// TestTimeoutDetachesMounts, separated by a colon.
const timeoutChildEnv = "KEELFS_TIMEOUT_CHILD_DIRS"

// go test's -timeout panics without running t.Cleanup: the daemons die
// with the test process, and their mounts stayed behind (a by-hand run of
// go test -count=40 left one). harness.Main, which this package's TestMain
// runs, detaches the mounts still up shortly before, and refuses mounts
// from then on. This test runs itself again in a child test process with
// a 15 s -timeout, where it mounts and waits until the mount is detached,
// then mounts again: the second mount must be refused, and no mount may
// be left once the child has ended.
func TestTimeoutDetachesMounts(t *testing.T) {
	if dirs := os.Getenv(timeoutChildEnv); dirs != "" {
		// The child's side. Its -timeout bounds the wait.
		first, second, _ := strings.Cut(dirs, ":")
		s := harness.StartServer(t)
		b := s.NewBucket(t)
		s.Mount(t, b, harness.MountOptions{Dir: first})
		for harness.IsMounted(first) {
			time.Sleep(50 * time.Millisecond)
		}
		// Too late: the timeout's panic would leave this one behind.
		s.Mount(t, b, harness.MountOptions{Dir: second})
		time.Sleep(time.Hour)
		return
	}
	harness.RequireFUSE(t)
	if harness.NearTimeout() {
		t.Fatal("go test's -timeout is near: no time for a child that mounts")
	}
	first, second := t.TempDir(), t.TempDir()
	out := &lockedBuffer{}
	cmd := exec.Command(os.Args[0], "-test.run=^TestTimeoutDetachesMounts$", "-test.timeout=15s")
	cmd.Env = append(os.Environ(), timeoutChildEnv+"="+first+":"+second)
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
		for _, dir := range []string{first, second} {
			if harness.IsMounted(dir) { // a check below failed: clean up all the same
				harness.AbortFUSE(dir)
				syscall.Unmount(dir, syscall.MNT_DETACH)
			}
		}
	})
	waitChildMounted(t, "the child", func() bool { return harness.IsMounted(first) }, 30*time.Second, exited, out)
	select {
	case <-exited:
	case <-time.After(45 * time.Second):
		t.Fatalf("the child did not end within 45s of its 15s -timeout:\n%s", out.String())
	}
	log := out.String()
	for _, dir := range []string{first, second} {
		if harness.IsMounted(dir) {
			t.Errorf("the child's mount at %s stayed behind its -timeout", dir)
		}
	}
	if !strings.Contains(log, "harness: go test's -timeout is near: detaching") {
		t.Errorf("the child did not say why its first mount went")
	}
	if !strings.Contains(log, "not mounting "+second) && !strings.Contains(log, "while "+second+" mounted: detached it") {
		t.Errorf("the child's late mount was not refused")
	}
	if t.Failed() {
		t.Fatalf("the child's output:\n%s", log)
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
