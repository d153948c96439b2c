package harness

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// live holds the mount points of the mounts that are up, so that they can
// be detached when go test's -timeout is near (see DetachNearTimeout).
// Once they were (expired), no mount may stay up: the timeout's panic
// would leave it behind.
var live = struct {
	sync.Mutex
	dirs    map[string]bool
	expired bool
}{dirs: make(map[string]bool)}

// addLive records a mount that came up. After the watch detached the
// others, it detaches this one at once too and returns false.
func addLive(dir string) bool {
	live.Lock()
	if live.expired {
		live.Unlock()
		detach(dir)
		return false
	}
	live.dirs[dir] = true
	live.Unlock()
	return true
}

// NearTimeout reports whether go test's -timeout is near: the mounts
// were detached, and no new one may start.
func NearTimeout() bool {
	live.Lock()
	defer live.Unlock()
	return live.expired
}

func dropLive(dir string) {
	live.Lock()
	delete(live.dirs, dir)
	live.Unlock()
}

// tmpRoot is the directory Main made for this test process: TMPDIR points
// there, so every t.TempDir is below it, and so is every mount point a
// test makes other than through Mount (a daemonised or fstab mount of
// keelfs, a tmpfs for a cache). The timeout watch detaches those too, and
// Main fails the run if one is left at the end.
var tmpRoot string

// Main runs the tests of a package that mounts (from its TestMain), with
// DetachNearTimeout armed, in a temporary directory of its own (tmpRoot).
func Main(m *testing.M) int {
	if !flag.Parsed() {
		flag.Parse() // the -timeout is known only then; m.Run would parse too
	}
	root, err := os.MkdirTemp("", "keelfs-tests-")
	if err == nil {
		// As /tmp: an app run as another user makes its files there too.
		err = os.Chmod(root, 0o777|os.ModeSticky)
	}
	if err == nil {
		// The path mountinfo shows: a symlinked or relative TMPDIR would
		// hide every mount below it from MountsUnder.
		root, err = filepath.Abs(root)
	}
	if err == nil {
		root, err = filepath.EvalSymlinks(root)
	}
	if err == nil {
		err = os.Setenv("TMPDIR", root)
	}
	if err == nil {
		err = os.Setenv("GOTMPDIR", root) // t.TempDir prefers it to TMPDIR
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "harness: temporary directory: %v\n", err)
		return 1
	}
	live.Lock()
	tmpRoot = root
	live.Unlock()
	code := func() int {
		defer DetachNearTimeout()()
		return m.Run()
	}()
	if left := MountsUnder(root); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "harness: FAIL: the tests left %d mounts behind: %v; detaching them\n", len(left), left)
		for _, dir := range left {
			detach(dir)
		}
		code = 1
	}
	if len(MountsUnder(root)) == 0 { // never remove through a mount
		if err := os.RemoveAll(root); err != nil {
			fmt.Fprintf(os.Stderr, "harness: remove %s: %v\n", root, err)
		}
	}
	return code
}

// MountsUnder lists the mount points below root (not root itself), the
// deepest first, so that each can be detached before what holds it.
func MountsUnder(root string) []string {
	var dirs []string
	for _, e := range mountTable() {
		if strings.HasPrefix(e.dir, root+"/") {
			dirs = append(dirs, e.dir)
		}
	}
	sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
	return dirs
}

// DetachNearTimeout detaches every mount still up shortly before go test's
// -timeout ends the process, and returns a func that disarms it. The
// timeout's panic runs no t.Cleanup: the daemons die with the process
// (Pdeathsig), and their mounts would stay behind, each a directory that
// answers ENOTCONN until someone unmounts it by hand. Detached a little
// earlier, the tests that still use them fail at once and the panic
// that follows names the one that hung. flag.Parse must have run: before,
// the -timeout reads as none, and nothing is armed.
func DetachNearTimeout() (stop func()) {
	f := flag.Lookup("test.timeout")
	if f == nil {
		return func() {}
	}
	g, ok := f.Value.(flag.Getter)
	if !ok {
		return func() {}
	}
	d, ok := g.Get().(time.Duration)
	if !ok || d <= 0 {
		return func() {}
	}
	margin := min(max(d/20, 5*time.Second), 30*time.Second)
	timer := time.AfterFunc(d-margin, detachLive)
	return func() { timer.Stop() }
}

func detachLive() {
	live.Lock()
	live.expired = true
	root := tmpRoot
	dirs := make([]string, 0, len(live.dirs))
	for dir := range live.dirs {
		dirs = append(dirs, dir)
	}
	live.Unlock()
	sort.Strings(dirs)
	fmt.Fprintf(os.Stderr, "harness: go test's -timeout is near: detaching the %d mounts still up: %v\n", len(dirs), dirs)
	for _, dir := range dirs {
		detach(dir)
	}
	if root == "" {
		return
	}
	// The mounts made other than through Mount; and, until the panic
	// ends the process, those that come up after this sweep (a daemon
	// that was still starting).
	if others := MountsUnder(root); len(others) > 0 {
		fmt.Fprintf(os.Stderr, "harness: detaching the %d other mounts below %s: %v\n", len(others), root, others)
		for _, dir := range others {
			detach(dir)
		}
	}
	go func() {
		for {
			time.Sleep(100 * time.Millisecond)
			for _, dir := range MountsUnder(root) {
				fmt.Fprintf(os.Stderr, "harness: detaching %s, mounted after the timeout's sweep\n", dir)
				detach(dir)
			}
		}
	}()
}
