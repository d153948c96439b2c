package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/keelfs/keelfs/cache"
)

// A plain unmount returns to its caller at once, while the daemon goes on
// uploading what is pending, for up to --shutdown-timeout, and holds the
// cache directory until it is done. A mount of the same cache in that
// window (umount then mount in a script, a restart of an fstab mount)
// would find the cache in use. So the stopping daemon leaves a note in
// the cache directory naming itself and its deadline, and a new mount
// that finds the cache locked while that process lives waits for it, up
// to the deadline and drainGrace. A cache held by a mount that is not
// stopping is refused once noteWait has passed without a note.

// drainNoteName is the note's file in the cache directory.
const drainNoteName = "stopping"

// drainGrace is how long past its drain deadline a stopping daemon may
// take to close the cache and exit.
const drainGrace = 10 * time.Second

// noteWait is how long a cache in use without a note is tried again: an
// umount(2) returns before the daemon has seen it and written its note.
const noteWait = 2 * time.Second

// drainPoll is how often a waiting mount tries the cache again.
const drainPoll = 100 * time.Millisecond

type drainNote struct {
	pid   int
	until time.Time // the drain's deadline
	pidNS string    // the PID namespace pid belongs to ("" if unknown)
}

// pidNamespace names this process's PID namespace, so that a pid in a
// note written in another container is not taken for one of ours.
func pidNamespace() string {
	ns, err := os.Readlink("/proc/self/ns/pid")
	if err != nil {
		return ""
	}
	return ns
}

// writeDrainNote records that this process is stopping and holds the
// cache at most until until (and drainGrace). It returns what it wrote,
// for removeDrainNote.
func writeDrainNote(dir string, until time.Time) (string, error) {
	body := fmt.Sprintf("%d %d %s\n", os.Getpid(), until.UnixNano(), pidNamespace())
	if err := writeFileAtomic(filepath.Join(dir, drainNoteName), []byte(body)); err != nil {
		return "", err
	}
	return body, nil
}

// removeDrainNote removes the note if it is still the one written (body):
// a mount that waited for us may have removed it and written its own.
func removeDrainNote(dir, body string) error {
	if body == "" {
		return nil
	}
	p := filepath.Join(dir, drainNoteName)
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if string(b) != body {
		return nil
	}
	return removeIfPresent(p)
}

// removeIfPresent removes p; that it is already gone is no error.
func removeIfPresent(p string) error {
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// readDrainNote reads the note; ok is false when there is none. A note
// that cannot be parsed counts as none.
func readDrainNote(dir string) (n drainNote, ok bool, err error) {
	b, err := os.ReadFile(filepath.Join(dir, drainNoteName))
	if errors.Is(err, fs.ErrNotExist) {
		return n, false, nil
	}
	if err != nil {
		return n, false, err
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return n, false, nil
	}
	p, err1 := strconv.Atoi(f[0])
	u, err2 := strconv.ParseInt(f[1], 10, 64)
	if err1 != nil || err2 != nil || p <= 0 {
		return n, false, nil
	}
	n = drainNote{pid: p, until: time.Unix(0, u)}
	if len(f) > 2 {
		n.pidNS = f[2]
	}
	return n, true, nil
}

// mayBeStopping reports whether the process the note names may still be
// the one stopping: it exists, or it is in another PID namespace, where
// only the deadline tells.
func (n drainNote) mayBeStopping() bool {
	if n.pidNS != "" && n.pidNS != pidNamespace() {
		return true
	}
	err := syscall.Kill(n.pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// openCacheWaiting opens the cache with open, waiting while a stopping
// keelfs that the note names holds it, up to that one's deadline and
// drainGrace; a cache in use without a note is tried for noteWait, in
// case its holder has been unmounted but has not yet written its note.
// Any other failure is returned at once, and so is "in use" once those
// waits are over or ctx ends (a stop signal). notify, if not nil, tells
// the user once that the mount waits. now and sleep are the clock.
func openCacheWaiting(ctx context.Context, dir string, log *slog.Logger, open func() (*cache.Cache, error),
	notify func(string), now func() time.Time, sleep func(context.Context, time.Duration) error) (*cache.Cache, error) {
	told := false
	first := now()
	for {
		c, err := open()
		if err == nil {
			// We hold the cache: a note still there is stale (its writer
			// was killed before removing it).
			if rerr := removeIfPresent(filepath.Join(dir, drainNoteName)); rerr != nil {
				log.Warn("removing the note of an earlier mount", "err", rerr)
			}
			return c, nil
		}
		if !errors.Is(err, cache.ErrCacheInUse) {
			return nil, err
		}
		n, ok, rerr := readDrainNote(dir)
		if rerr != nil {
			return nil, fmt.Errorf("%w (and its note: %v)", err, rerr)
		}
		switch {
		case !ok || !n.mayBeStopping():
			if now().Sub(first) >= noteWait {
				return nil, err
			}
		case !now().Before(n.until.Add(drainGrace)):
			return nil, fmt.Errorf("%w: keelfs process %d has been stopping since before %s and still holds it",
				err, n.pid, n.until.Format(time.RFC3339))
		case !told:
			limit := n.until.Add(drainGrace)
			log.Info("the previous mount of this cache is still uploading what was pending; waiting for it",
				"pid", n.pid, "until", limit.Format(time.RFC3339))
			if notify != nil {
				notify(fmt.Sprintf("the previous mount of this cache (process %d) is still uploading what was pending; waiting for it, at most until %s",
					n.pid, limit.Format(time.RFC3339)))
			}
			told = true
		}
		if serr := sleep(ctx, drainPoll); serr != nil {
			return nil, fmt.Errorf("%w (stopped waiting for it: %w)", err, serr)
		}
	}
}

// sleepCtx sleeps for d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
