package harness

import (
	"flag"
	"fmt"
	"os"
	"sort"
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

// Main runs the tests of a package that mounts (from its TestMain), with
// DetachNearTimeout armed.
func Main(m *testing.M) int {
	if !flag.Parsed() {
		flag.Parse() // the -timeout is known only then; m.Run would parse too
	}
	defer DetachNearTimeout()()
	return m.Run()
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
}
