package e2e

import (
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keelfs/keelfs/test/harness"
)

// TestOpsHealth: keelfs health, the image's health check, says ok for a
// live mount, and fails with one line saying why for a daemon that does
// not answer (stopped), one that died (kill -9) and a directory that is
// no keelfs mount.
func TestOpsHealth(t *testing.T) {
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	m := srv.Mount(t, b, harness.MountOptions{})
	m.AllowLog(`stale mount`)
	check := func(what string, wantCode int, want string, dirs ...string) {
		t.Helper()
		start := time.Now()
		code, out := runKeelfs(t, srv, 30*time.Second, append([]string{"health", "--timeout", "1s"}, dirs...)...)
		d := time.Since(start)
		if code != wantCode || !strings.Contains(out, want) {
			t.Errorf("%s: exit %d after %v: %q; want exit %d and %q", what, code, d, out, wantCode, want)
		}
		if d > 5*time.Second {
			t.Errorf("%s: took %v with --timeout 1s", what, d)
		}
	}
	check("a live mount", 0, "ok "+m.Dir+": keelfs:"+b, m.Dir)
	check("a plain directory", 1, "not a keelfs mount", t.TempDir())
	check("a live mount and a plain directory", 1, "unhealthy", m.Dir, t.TempDir())
	stopDaemon(t, m)
	check("a stopped daemon", 1, "does not answer", m.Dir)
	m.Signal(syscall.SIGCONT)
	check("a live mount again", 0, "ok "+m.Dir, m.Dir)
	m.Crash()
	check("a dead daemon", 1, "gone", m.Dir)
}
