package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/keelfs/keelfs/test/harness"
)

// timeoutChildEnv names the three mount points of the child of
// TestTimeoutDetachesMounts, separated by colons.
const timeoutChildEnv = "KEELFS_TIMEOUT_CHILD_DIRS"

// go test's -timeout panics without running t.Cleanup: the daemons die
// with the test process, and their mounts stayed behind (a by-hand run of
// go test -count=40 left one). harness.Main, which this package's TestMain
// runs, detaches the mounts still up shortly before, and refuses mounts
// from then on. This test runs itself again in a child test process with
// a 15 s -timeout, where it mounts, then starts a mount that never comes
// up, which must be stopped when the watch fires, then mounts again:
// that mount must be refused, and no mount may be left once the child
// has ended. Before that, the child makes two
// mounts the harness does not start (a daemonised keelfs and a tmpfs)
// below its temporary directory: they must go too, and the daemon end.
func TestTimeoutDetachesMounts(t *testing.T) {
	if dirs := os.Getenv(timeoutChildEnv); dirs != "" {
		// The child's side. Its -timeout bounds the wait.
		d := strings.Split(dirs, ":")
		first, second, third := d[0], d[1], d[2]
		s := harness.StartServer(t)
		b := s.NewBucket(t)
		// Mounts made other than through the harness, below the child's
		// temporary directory: a daemonised keelfs and a tmpfs.
		daemonised := t.TempDir()
		if code, out := runKeelfsEnv(t, s.Env(), 30*time.Second, "mount", "s3://"+b, daemonised,
			"--endpoint", s.Endpoint, "--force-path-style", "--cache-dir", t.TempDir()); code != 0 {
			t.Fatalf("daemonised mount: exit %d:\n%s", code, out)
		}
		if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", t.TempDir()).CombinedOutput(); err != nil {
			t.Fatalf("mount tmpfs: %v\n%s", err, out)
		}
		s.Mount(t, b, harness.MountOptions{Dir: first})
		// A mount still coming up when the watch fires: a stand-in for
		// a daemon that never mounts.
		t.Run("mounting", func(t *testing.T) {
			slow := filepath.Join(t.TempDir(), "keelfs")
			if err := os.WriteFile(slow, []byte("#!/bin/sh\nexec sleep 3600\n"), 0o755); err != nil {
				t.Fatal(err)
			}
			t.Setenv("KEELFS_BIN", slow)
			s.Mount(t, b, harness.MountOptions{Dir: third})
		})
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
	first, second, third, tmp := t.TempDir(), t.TempDir(), t.TempDir(), t.TempDir()
	out := &lockedBuffer{}
	cmd := exec.Command(os.Args[0], "-test.run=^TestTimeoutDetachesMounts$", "-test.timeout=15s")
	// Through a symlink, which mountinfo does not show: the child must
	// still find its mounts below its temporary directory.
	link := filepath.Join(t.TempDir(), "tmp")
	if err := os.Symlink(tmp, link); err != nil {
		t.Fatal(err)
	}
	cmd.Env = append(os.Environ(), timeoutChildEnv+"="+first+":"+second+":"+third, "TMPDIR="+link, "GOTMPDIR=")
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
		// A check below failed: clean up all the same.
		for _, dir := range append(harness.MountsUnder(tmp), first, second, third) {
			if dir == tmp || !strings.HasPrefix(dir, tmp+"/") && !harness.IsMounted(dir) {
				continue
			}
			harness.AbortFUSE(dir)
			syscall.Unmount(dir, syscall.MNT_DETACH)
		}
		for _, pid := range keelfsUnder(tmp) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	waitChildMounted(t, "the child", func() bool { return harness.IsMounted(first) }, 30*time.Second, exited, out)
	select {
	case <-exited:
	case <-time.After(45 * time.Second):
		t.Fatalf("the child did not end within 45s of its 15s -timeout:\n%s", out.String())
	}
	log := out.String()
	for _, dir := range []string{first, second, third} {
		if harness.IsMounted(dir) {
			t.Errorf("the child's mount at %s stayed behind its -timeout", dir)
		}
	}
	if left := harness.MountsUnder(tmp); len(left) > 0 {
		t.Errorf("the child's other mounts stayed behind its -timeout: %v", left)
	}
	// The daemonised keelfs outlives the child; with its mount gone, it
	// must end.
	deadline := time.Now().Add(30 * time.Second)
	for len(keelfsUnder(tmp)) > 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if pids := keelfsUnder(tmp); len(pids) > 0 {
		t.Errorf("the child's daemonised keelfs (pids %v) still runs 30s after its mount was detached", pids)
	}
	if !strings.Contains(log, "harness: go test's -timeout is near: detaching") {
		t.Errorf("the child did not say why its first mount went")
	}
	if !strings.Contains(log, "harness: detaching the 2 other mounts below") {
		t.Errorf("the child did not say it detached its other mounts")
	}
	if !strings.Contains(log, "while "+third+" was mounting: stopped it") {
		t.Errorf("the child's mount under way when the watch fired was not stopped")
	}
	if !strings.Contains(log, "not mounting "+second) && !strings.Contains(log, "while "+second+" mounted: detached it") {
		t.Errorf("the child's late mount was not refused")
	}
	if t.Failed() {
		t.Fatalf("the child's output:\n%s", log)
	}
}

// keelfsUnder returns the pids of the keelfs processes with an argument
// below dir.
func keelfsUnder(dir string) []int {
	var pids []int
	for pid, args := range keelfsProcs() {
		if slices.ContainsFunc(args[1:], func(a string) bool { return strings.HasPrefix(a, dir+"/") }) {
			pids = append(pids, pid)
		}
	}
	return pids
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
