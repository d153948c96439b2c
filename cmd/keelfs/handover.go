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
// stopping is refused at once, as before.

// drainNoteName is the note's file in the cache directory.
const drainNoteName = "stopping"

// drainGrace is how long past its drain deadline a stopping daemon may
// take to close the cache and exit.
const drainGrace = 10 * time.Second

// drainPoll is how often a waiting mount tries the cache again.
const drainPoll = 100 * time.Millisecond

type drainNote struct {
	pid   int
	until time.Time // the drain's deadline
}

// writeDrainNote records that this process is stopping and holds the
// cache at most until until (and drainGrace).
func writeDrainNote(dir string, until time.Time) error {
	p := filepath.Join(dir, drainNoteName)
	tmp := p + ".tmp"
	body := fmt.Sprintf("%d %d\n", os.Getpid(), until.UnixNano())
	if err := os.WriteFile(tmp, []byte(body), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}

// removeDrainNote removes the note if it is this process's (a mount that
// waited for us may have removed it and written its own since).
func removeDrainNote(dir string) error {
	n, ok, err := readDrainNote(dir)
	if err != nil || !ok || n.pid != os.Getpid() {
		return err
	}
	if err := os.Remove(filepath.Join(dir, drainNoteName)); err != nil && !errors.Is(err, fs.ErrNotExist) {
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
	pid, until, found := strings.Cut(strings.TrimSpace(string(b)), " ")
	if !found {
		return n, false, nil
	}
	p, err1 := strconv.Atoi(pid)
	u, err2 := strconv.ParseInt(until, 10, 64)
	if err1 != nil || err2 != nil || p <= 0 {
		return n, false, nil
	}
	return drainNote{pid: p, until: time.Unix(0, u)}, true, nil
}

// alive reports whether process pid exists.
func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// openCacheWaiting opens the cache with open, waiting while a stopping
// keelfs that the note names holds it. The first failure other than "in
// use", or "in use" by anything else, is returned at once; so is "in use"
// once the stopping process's deadline and drainGrace have passed. now
// and sleep are the clock (a test's may be fake).
func openCacheWaiting(ctx context.Context, dir string, log *slog.Logger, open func() (*cache.Cache, error),
	now func() time.Time, sleep func(context.Context, time.Duration) error) (*cache.Cache, error) {
	logged := false
	for {
		c, err := open()
		if err == nil {
			// A note left by a stopping process that was killed before it
			// could remove it is stale now: we hold the cache.
			if n, ok, rerr := readDrainNote(dir); rerr != nil {
				log.Warn("reading the note of an earlier mount", "err", rerr)
			} else if ok && n.pid != os.Getpid() {
				if rerr := os.Remove(filepath.Join(dir, drainNoteName)); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
					log.Warn("removing the note of an earlier mount", "err", rerr)
				}
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
		if !ok || !alive(n.pid) {
			return nil, err
		}
		limit := n.until.Add(drainGrace)
		if !now().Before(limit) {
			return nil, fmt.Errorf("%w: keelfs process %d has been stopping since before %s and still holds it",
				err, n.pid, n.until.Format(time.RFC3339))
		}
		if !logged {
			log.Info("the previous mount of this cache is still uploading what was pending; waiting for it",
				"pid", n.pid, "until", limit.Format(time.RFC3339))
			logged = true
		}
		if serr := sleep(ctx, drainPoll); serr != nil {
			return nil, fmt.Errorf("%w (stopped waiting for keelfs process %d: %v)", err, n.pid, serr)
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
