package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// mountEntry is one line of /proc/self/mountinfo.
type mountEntry struct {
	id, parent string
	dir        string
	fstype     string // "tmpfs", "fuse.keelfs", ...
	source     string // "keelfs:bucket/prefix" for keelfs
}

// mountsAt returns the mounts whose mount point is dir, bottom first:
// several can be stacked on one directory, and only the last one is seen.
func mountsAt(dir string) ([]mountEntry, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	var at []mountEntry
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 || unescapeMount(f[4]) != dir {
			continue
		}
		e := mountEntry{id: f[0], parent: f[1], dir: dir}
		for i, x := range f {
			if x == "-" && i+2 < len(f) {
				e.fstype, e.source = f[i+1], unescapeMount(f[i+2])
				break
			}
		}
		at = append(at, e)
	}
	// A mount stacked on dir has the mount below it as its parent; the
	// top is the one that is nobody's parent.
	sorted := make([]mountEntry, 0, len(at))
	parent := map[string]bool{}
	for _, e := range at {
		parent[e.parent] = true
	}
	for len(at) > 0 {
		top := -1
		for i, e := range at {
			if !parent[e.id] {
				top = i
				break
			}
		}
		if top < 0 { // not a chain: keep mountinfo's order
			return append(at, sorted...), nil
		}
		sorted = append([]mountEntry{at[top]}, sorted...)
		delete(parent, at[top].parent)
		at = append(at[:top], at[top+1:]...)
	}
	return sorted, nil
}

var mountEscape = regexp.MustCompile(`\\([0-7]{3})`)

func unescapeMount(s string) string {
	return mountEscape.ReplaceAllStringFunc(s, func(m string) string {
		n, _ := strconv.ParseUint(m[1:], 8, 8)
		return string(rune(n))
	})
}

// daemonState is what a FUSE mount's daemon is doing.
type daemonState int

const (
	daemonLive   daemonState = iota // it answered
	daemonDead                      // it is gone (ENOTCONN)
	daemonSilent                    // no answer within the timeout
	daemonError                     // the question failed otherwise
)

// probeDaemon asks the filesystem at dir for its statistics (statfs). FUSE
// passes every statfs to the daemon, never from a cache, so a dead daemon
// shows at once: unlike a stat, which the kernel answers from its
// attribute cache for a while after the daemon died. It costs keelfs no
// S3 request, where an open of the directory (OPENDIR) would list it.
func probeDaemon(dir string, timeout time.Duration) (daemonState, error) {
	ch := make(chan error, 1)
	go func() {
		var st unix.Statfs_t
		ch <- unix.Statfs(dir, &st)
	}()
	select {
	case err := <-ch:
		switch {
		case err == nil:
			return daemonLive, nil
		case errors.Is(err, syscall.ENOTCONN), errors.Is(err, syscall.ECONNABORTED):
			return daemonDead, err
		}
		return daemonError, err
	case <-time.After(timeout):
		// The goroutine stays blocked in the kernel; the caller exits.
		return daemonSilent, fmt.Errorf("no answer within %v", timeout)
	}
}

// mountPointProbeTimeout bounds how long a daemon at the mount point may
// take to answer before the mount point counts as busy.
const mountPointProbeTimeout = 5 * time.Second

// checkMountPoint makes sure dir can be mounted on. dir may itself be a
// mount point (a Docker volume, --tmpfs, a Kubernetes emptyDir): keelfs
// mounts over it. Only a live keelfs mount there is refused. A FUSE mount
// whose daemon died (kill -9, an OOM kill) is detached first, however
// recently the kernel answered a stat of it.
func checkMountPoint(dir string, log *slog.Logger) error {
	for detached := 0; ; detached++ {
		at, err := mountsAt(dir)
		if err != nil {
			return withCode(exitMountPoint, fmt.Errorf("mount point %s: %v", dir, err))
		}
		if len(at) == 0 || !strings.HasPrefix(at[len(at)-1].fstype, "fuse") {
			break
		}
		top := at[len(at)-1]
		state, err := probeDaemon(dir, mountPointProbeTimeout)
		switch {
		case state == daemonLive && top.fstype == "fuse.keelfs":
			return withCode(exitMountPoint, fmt.Errorf("%s is already a live keelfs mount (%s); unmount it first: keelfs unmount %s", dir, top.source, dir))
		case state == daemonSilent:
			return withCode(exitMountPoint, fmt.Errorf("%s is a FUSE mount (%s) whose daemon does not answer (%v); unmount it first: umount -l %s", dir, top.source, err, dir))
		case state == daemonError:
			return withCode(exitMountPoint, fmt.Errorf("mount point %s: %v", dir, err))
		case state == daemonLive:
			// Another live FUSE filesystem: mount over it like any other.
		}
		if state != daemonDead {
			break
		}
		if detached >= 8 {
			return withCode(exitMountPoint, fmt.Errorf("mount point %s: still a dead FUSE mount after detaching %d", dir, detached))
		}
		log.Warn("mount point has a stale mount from a process that died; detaching it", "mountpoint", dir, "source", top.source)
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			if out, ferr := exec.Command("fusermount3", "-u", "-z", dir).CombinedOutput(); ferr != nil {
				return withCode(exitMountPoint, fmt.Errorf("mount point %s has a stale mount that could not be detached: %v %s", dir, err, strings.TrimSpace(string(out))))
			}
		}
	}
	st, err := os.Stat(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return withCode(exitMountPoint, fmt.Errorf("mount point %s does not exist", dir))
		}
		return withCode(exitMountPoint, fmt.Errorf("mount point %s: %v", dir, err))
	}
	if !st.IsDir() {
		return withCode(exitMountPoint, fmt.Errorf("mount point %s is not a directory", dir))
	}
	return nil
}
