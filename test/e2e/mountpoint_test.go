package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keelfs/keelfs/test/harness"
)

// TestMountPointRemountAfterKill9: a mount whose daemon was killed with
// SIGKILL is replaced by the next mount on the same directory, at once and
// every time, even while the kernel still holds the dead mount's root
// attributes (a stat of it does not fail yet). A new user saw "already a
// mount point" on 3 of 4 quick remounts.
func TestMountPointRemountAfterKill9(t *testing.T) {
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	m := srv.Mount(t, b, harness.MountOptions{Args: []string{"--write-back-delay", "1h", "--metadata-ttl", "1m"}})
	m.AllowLog(`stale mount|resuming`)
	want := map[string]string{}
	for round := 0; round < 5; round++ {
		name := fmt.Sprintf("round-%d", round)
		want[name] = fmt.Sprintf("written before kill -9 number %d", round)
		if err := os.WriteFile(m.Path(name), []byte(want[name]), 0o644); err != nil {
			t.Fatal(err)
		}
		// What a user's shell does: the root's attributes are now in the
		// kernel's cache for the TTL.
		if _, err := os.Stat(m.Dir); err != nil {
			t.Fatal(err)
		}
		m.Crash()
		start := time.Now()
		m.Remount()
		t.Logf("round %d: remounted %v after kill -9", round, time.Since(start))
		for n, data := range want {
			if got, err := os.ReadFile(m.Path(n)); err != nil || string(got) != data {
				t.Fatalf("round %d: %s after remount: %q, %v", round, n, got, err)
			}
		}
		if n := keelfsLayers(t, m.Dir); n != 1 {
			t.Fatalf("round %d: %d keelfs mounts stacked at %s, want 1 (the dead one replaced)", round, n, m.Dir)
		}
	}
	m.Flush()
	for n, data := range want {
		if got, _ := srv.Get(t, b, n); string(got) != data {
			t.Errorf("%s in S3: %q, want %q", n, got, data)
		}
	}
}

// TestMountPointOverAMountPoint: the target directory is itself a mount
// point, as a Docker volume, --tmpfs or a Kubernetes emptyDir is. keelfs
// mounts over it, and once keelfs is gone what was there is there again.
func TestMountPointOverAMountPoint(t *testing.T) {
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	srv.Put(t, b, "from-s3", []byte("in the bucket"), nil)
	for _, kind := range []string{"tmpfs", "bind"} {
		t.Run(kind, func(t *testing.T) {
			dir := t.TempDir()
			switch kind {
			case "tmpfs":
				mustMount(t, "mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", dir)
			case "bind": // what docker run -v HOSTDIR:DIR makes
				mustMount(t, "mount", "--bind", t.TempDir(), dir)
			}
			if err := os.WriteFile(filepath.Join(dir, "underneath"), []byte("on the "+kind), 0o644); err != nil {
				t.Fatal(err)
			}
			m := srv.Mount(t, b, harness.MountOptions{Dir: dir})
			if got, err := os.ReadFile(m.Path("from-s3")); err != nil || string(got) != "in the bucket" {
				t.Fatalf("read through keelfs over a %s: %q, %v", kind, got, err)
			}
			if _, err := os.Stat(m.Path("underneath")); !os.IsNotExist(err) {
				t.Fatalf("the %s's file shows through keelfs: %v", kind, err)
			}
			if err := os.WriteFile(m.Path("new-"+kind), []byte("through keelfs"), 0o644); err != nil {
				t.Fatal(err)
			}
			if code := m.Stop(); code != 0 {
				t.Fatalf("keelfs exited %d", code)
			}
			if got, _ := srv.Get(t, b, "new-"+kind); string(got) != "through keelfs" {
				t.Errorf("new-%s in S3: %q", kind, got)
			}
			if got, err := os.ReadFile(filepath.Join(dir, "underneath")); err != nil || string(got) != "on the "+kind {
				t.Errorf("after keelfs stopped, the %s below: %q, %v", kind, got, err)
			}
		})
	}
}

// TestMountPointDeadOverAMountPoint: keelfs over a tmpfs is killed with
// SIGKILL; the next mount replaces the dead one (no second layer) and the
// tmpfs stays where it was.
func TestMountPointDeadOverAMountPoint(t *testing.T) {
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	dir := t.TempDir()
	mustMount(t, "mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", dir)
	if err := os.WriteFile(filepath.Join(dir, "underneath"), []byte("tmpfs"), 0o644); err != nil {
		t.Fatal(err)
	}
	m := srv.Mount(t, b, harness.MountOptions{Dir: dir, Args: []string{"--write-back-delay", "1h"}})
	m.AllowLog(`stale mount|resuming`)
	if err := os.WriteFile(m.Path("kept"), []byte("survives the crash"), 0o644); err != nil {
		t.Fatal(err)
	}
	m.Crash()
	m.Remount()
	if n := keelfsLayers(t, dir); n != 1 {
		t.Fatalf("%d keelfs mounts stacked at %s after the remount, want 1", n, dir)
	}
	if got, err := os.ReadFile(m.Path("kept")); err != nil || string(got) != "survives the crash" {
		t.Fatalf("kept after the remount: %q, %v", got, err)
	}
	if code := m.Stop(); code != 0 {
		t.Fatalf("keelfs exited %d", code)
	}
	if got, _ := srv.Get(t, b, "kept"); string(got) != "survives the crash" {
		t.Errorf("kept in S3: %q", got)
	}
	if got, err := os.ReadFile(filepath.Join(dir, "underneath")); err != nil || string(got) != "tmpfs" {
		t.Errorf("the tmpfs after keelfs stopped: %q, %v", got, err)
	}
}

// TestMountPointLiveRefused: a second mount on a directory a live keelfs
// serves is refused with exit 3 and a message that says so, and so is one
// on a mount whose daemon is stopped (SIGSTOP) and does not answer; the
// first mount goes on working.
func TestMountPointLiveRefused(t *testing.T) {
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	m := srv.Mount(t, b, harness.MountOptions{})
	for _, fg := range []bool{false, true} {
		args := []string{"mount", "s3://" + b, m.Dir, "--endpoint", srv.Endpoint, "--force-path-style", "--cache-dir", t.TempDir()}
		if fg {
			args = append(args, "-f")
		}
		code, out := runKeelfs(t, srv, 30*time.Second, args...)
		if code != 3 || !strings.Contains(out, "live keelfs mount") || strings.Count(strings.TrimSpace(out), "\n") != 0 {
			t.Errorf("second mount (foreground %v) on a live mount: exit %d, want 3 and one line that says why:\n%s", fg, code, out)
		}
	}
	// A daemon that is alive but does not answer (stopped, here) is not
	// taken for a dead one: its mount is not pulled from under it.
	stopDaemon(t, m)
	start := time.Now()
	code, out := runKeelfs(t, srv, 30*time.Second, "mount", "s3://"+b, m.Dir, "--endpoint", srv.Endpoint, "--force-path-style", "--cache-dir", t.TempDir(), "-f")
	m.Signal(syscall.SIGCONT)
	if code != 3 || !strings.Contains(out, "does not answer") {
		t.Errorf("mount on a stopped daemon's mount: exit %d after %v, want 3 and why:\n%s", code, time.Since(start), out)
	}
	if n := keelfsLayers(t, m.Dir); n != 1 {
		t.Fatalf("%d keelfs mounts at %s, want 1", n, m.Dir)
	}
	if err := os.WriteFile(m.Path("still"), []byte("working"), 0o644); err != nil {
		t.Fatalf("the first mount after a refused second one: %v", err)
	}
	m.Flush()
	if got, _ := srv.Get(t, b, "still"); string(got) != "working" {
		t.Errorf("still in S3: %q", got)
	}
}

// runKeelfs runs the keelfs binary with the server's credentials and
// returns its exit code and output. It fails the test if the command runs
// longer than timeout.
func runKeelfs(t *testing.T, srv *harness.Server, timeout time.Duration, args ...string) (int, string) {
	t.Helper()
	return runKeelfsEnv(t, append(os.Environ(), srv.Env()...), timeout, args...)
}

func runKeelfsEnv(t *testing.T, env []string, timeout time.Duration, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, harness.Binary(t), args...)
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("keelfs %s did not finish within %v:\n%s", strings.Join(args, " "), timeout, out)
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), string(out)
	}
	if err != nil {
		t.Fatalf("keelfs %s: %v", strings.Join(args, " "), err)
	}
	return 0, string(out)
}

// mustMount runs mount(8) and undoes the mount at cleanup, after the
// test's keelfs mounts (registered later) are gone.
func mustMount(t *testing.T, args ...string) {
	t.Helper()
	dir := args[len(args)-1]
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s (needs root): %v\n%s", strings.Join(args, " "), err, out)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
			syscall.Unmount(dir, syscall.MNT_DETACH)
		}
	})
}

// keelfsLayers counts the keelfs mounts at dir.
func keelfsLayers(t *testing.T, dir string) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && f[4] == dir && strings.Contains(line, " - fuse.keelfs ") {
			n++
		}
	}
	return n
}

// stopDaemon stops the daemon with SIGSTOP and waits until every thread
// of it has stopped: the signal is delivered asynchronously, and a thread
// still running could answer one more request.
func stopDaemon(t *testing.T, m *harness.Mount) {
	t.Helper()
	pid := m.Pid()
	m.Signal(syscall.SIGSTOP)
	deadline := time.Now().Add(10 * time.Second)
	for {
		tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		if err != nil {
			t.Fatal(err)
		}
		stopped := 0
		for _, task := range tasks {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", pid, task.Name()))
			if i := strings.LastIndexByte(string(b), ')'); err == nil && i > 0 && strings.HasPrefix(string(b[i+1:]), " T") {
				stopped++
			}
		}
		if stopped == len(tasks) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the daemon's threads did not all stop within 10s (%d of %d)", stopped, len(tasks))
		}
		time.Sleep(10 * time.Millisecond)
	}
}
