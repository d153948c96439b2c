package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/keelfs/keelfs/test/harness"
)

// daemon is one FUSE daemon (keelfs, s3fs or rclone) running in the
// foreground as our child, serving one mount point.
type daemon struct {
	dir     string // mount point
	logPath string
	cmd     *exec.Cmd
	done    chan struct{}
	// termBySignal: the daemon unmounts itself on SIGTERM (keelfs drains
	// its uploads first). Otherwise `fusermount3 -u` asks it to go.
	termBySignal bool

	mu      sync.Mutex
	exitErr error // guarded by mu; set when done is closed
	stopped sync.Once
}

// startDaemon starts argv and waits until dir is a FUSE mount.
func startDaemon(argv, env []string, dir, logPath string, termBySignal bool) (*daemon, error) {
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(logFile, "=== %s\n", strings.Join(argv, " "))
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, err
	}
	d := &daemon{dir: dir, logPath: logPath, cmd: cmd, done: make(chan struct{}), termBySignal: termBySignal}
	go func() {
		err := cmd.Wait()
		logFile.Close()
		d.mu.Lock()
		d.exitErr = err
		d.mu.Unlock()
		close(d.done)
	}()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-d.done:
			d.mu.Lock()
			err := d.exitErr
			d.mu.Unlock()
			return d, fmt.Errorf("%s exited before mounting (%v): %s", filepath.Base(argv[0]), err, d.logTail(1500))
		default:
		}
		if isMounted(dir) {
			return d, nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return d, fmt.Errorf("%s: %s not mounted after 30s: %s", filepath.Base(argv[0]), dir, d.logTail(1500))
}

func (d *daemon) logTail(n int) string {
	b, _ := os.ReadFile(d.logPath)
	return tail(strings.TrimSpace(string(b)), n)
}

// peakRSS is the daemon's VmHWM in bytes.
func (d *daemon) peakRSS() (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", d.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmHWM:" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no VmHWM in /proc/%d/status", d.cmd.Process.Pid)
}

func (d *daemon) wait(timeout time.Duration) bool {
	select {
	case <-d.done:
		return true
	case <-time.After(timeout):
		return false
	}
}

// stop unmounts and ends the daemon: politely first, then by force. The
// mount point is never left mounted. Safe to call twice.
func (d *daemon) stop() {
	d.stopped.Do(func() {
		select {
		case <-d.done:
		default:
			if d.termBySignal {
				d.cmd.Process.Signal(syscall.SIGTERM)
			} else {
				exec.Command("fusermount3", "-u", d.dir).Run()
			}
			if !d.wait(60 * time.Second) {
				logf("%s: daemon did not stop within 60s; killing it", d.dir)
				harness.AbortFUSE(d.dir)
				d.cmd.Process.Kill()
				d.wait(10 * time.Second)
			}
		}
		detach(d.dir)
	})
}

// kill ends a daemon that is stuck: the mount is aborted first, so that
// whatever waits on it gets ENOTCONN.
func (d *daemon) kill() {
	harness.AbortFUSE(d.dir)
	d.cmd.Process.Kill()
	d.wait(10 * time.Second)
	detach(d.dir)
}

// mountFields returns, for each mount in /proc/self/mountinfo, its mount
// point and file system type.
func mountFields() [][2]string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out [][2]string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		for i, x := range f {
			if x == "-" && i+1 < len(f) && len(f) > 4 {
				out = append(out, [2]string{unescapeMount(f[4]), f[i+1]})
				break
			}
		}
	}
	return out
}

func unescapeMount(s string) string {
	return strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`).Replace(s)
}

// isMounted reports whether dir is a FUSE mount point.
func isMounted(dir string) bool {
	for _, m := range mountFields() {
		if m[0] == dir && strings.HasPrefix(m[1], "fuse") {
			return true
		}
	}
	return false
}

// mountsUnder lists the mount points below root.
func mountsUnder(root string) []string {
	var out []string
	for _, m := range mountFields() {
		if strings.HasPrefix(m[0], root+"/") {
			out = append(out, m[0])
		}
	}
	return out
}

// detach lazily unmounts dir until it is no longer a mount point.
func detach(dir string) {
	for i := 0; i < 5 && isMounted(dir); i++ {
		if err := exec.Command("fusermount3", "-u", "-z", dir).Run(); err != nil {
			harness.AbortFUSE(dir)
			syscall.Unmount(dir, syscall.MNT_DETACH)
		}
	}
}

// dropCaches empties the kernel page cache (clean pages only), so the next
// read comes from the daemon, and the server's reads from its disk.
func dropCaches() error {
	return os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0o200)
}
