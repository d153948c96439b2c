package e2e

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keelfs/keelfs/test/harness"
)

// The outages of issue 14, each through a real mount: the server stopped
// (connection refused), a black hole (it accepts and never answers), and
// a storm of 503 SlowDown that lasts 60 s. For each: what is cached
// (names, listings, blocks) is served past the TTL with its exact bytes;
// creates, writes, renames and deletes go to the cache and reach S3 once
// it answers; what is not cached fails with EIO (never a network errno)
// within a bound; keelfs status, /healthz and keelfs flush answer at once;
// SIGTERM keeps its deadline and exits 7; the next mount uploads it all.
func TestOutage(t *testing.T) {
	for _, kind := range []string{"refused", "blackhole", "storm"} {
		t.Run(kind, func(t *testing.T) { testOutage(t, kind) })
	}
}

const outageS3Timeout = 2 * time.Second

// within runs f and fails the test if it takes longer than d: a liveness
// bound (nothing may hang), not a speed target.
func within(t *testing.T, d time.Duration, what string, f func()) {
	t.Helper()
	start := time.Now()
	f()
	if took := time.Since(start); took > d {
		t.Errorf("%s took %v, more than %v", what, took.Round(time.Millisecond), d)
	}
}

func testOutage(t *testing.T, kind string) {
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	cached := randBytes(3 << 20)
	srv.Put(t, b, "docs/cached.bin", cached, nil)
	srv.Put(t, b, "docs/never-read.txt", []byte("listed, never read"), nil)
	srv.Put(t, b, "docs/tomove.txt", []byte("moved while S3 was away"), nil)
	srv.Put(t, b, "docs/gone.txt", []byte("deleted while S3 was away"), nil)
	srv.Put(t, b, "docs/log.txt", []byte("line 1\n"), nil)
	srv.Put(t, b, "unlisted/x", []byte("in a directory never listed"), nil)
	endpoint := srv.Endpoint
	var px *harness.Proxy
	if kind != "refused" {
		px = srv.StartProxy(t)
		endpoint = px.Endpoint
	}
	addr := fmt.Sprintf("127.0.0.1:%d", harness.FreePort(t))
	m := srv.Mount(t, b, harness.MountOptions{Endpoint: endpoint, Args: []string{
		"--s3-timeout", outageS3Timeout.String(), "--metadata-ttl", "200ms", "--write-back-delay", "100ms",
		"--metrics-addr", addr, "--shutdown-timeout", "3s"}})
	m.AllowLog(`s3 is unreachable|upload failed; will retry|not yet in S3|read attributes`)

	// What the mount knows before the outage: the listing of docs, every
	// block of cached.bin, and the listing of the root (so "unlisted" is
	// a known directory whose names are not).
	if got, err := os.ReadFile(m.Path("docs/cached.bin")); err != nil || !bytes.Equal(got, cached) {
		t.Fatalf("read before the outage: %d bytes, %v", len(got), err)
	}
	// An append needs the file's last block: log.txt is read (cached) too.
	if got, err := os.ReadFile(m.Path("docs/log.txt")); err != nil || string(got) != "line 1\n" {
		t.Fatalf("read log.txt before the outage: %q, %v", got, err)
	}
	names := func() []string {
		ents, err := os.ReadDir(m.Path("docs"))
		if err != nil {
			t.Errorf("list docs: %v", err)
			return nil
		}
		var out []string
		for _, e := range ents {
			out = append(out, e.Name())
		}
		sort.Strings(out)
		return out
	}
	before := strings.Join(names(), " ")
	if _, err := os.Stat(m.Path("unlisted")); err != nil {
		t.Fatal(err)
	}

	// The outage.
	outageStart := time.Now()
	switch kind {
	case "refused":
		srv.Stop()
	case "blackhole":
		px.SetFaults(func(string, *http.Request) harness.Fault { return harness.Fault{Delay: time.Hour} })
	case "storm":
		px.SetFaults(func(string, *http.Request) harness.Fault {
			return harness.Fault{Status: 503, Code: "SlowDown"}
		})
	}
	time.Sleep(400 * time.Millisecond) // past the TTL: everything cached is stale

	// The first request that finds S3 gone may wait up to --s3-timeout
	// (and the SDK's retries within it); the rest do not wait.
	bound := 2*outageS3Timeout + 2*time.Second
	within(t, bound, "the first stat after the outage began", func() {
		if _, err := os.Stat(m.Path("docs/cached.bin")); err != nil {
			t.Errorf("stat of a cached file: %v", err)
		}
	})
	for i := 0; i < 2; i++ {
		within(t, bound, "read of a cached file", func() {
			if got, err := os.ReadFile(m.Path("docs/cached.bin")); err != nil || !bytes.Equal(got, cached) {
				t.Errorf("read of a cached file during the outage: %d bytes, %v", len(got), err)
			}
		})
		within(t, bound, "listing of a cached directory", func() {
			if got := strings.Join(names(), " "); got != before {
				t.Errorf("listing during the outage: %q, want %q", got, before)
			}
		})
		time.Sleep(300 * time.Millisecond)
	}
	// What is not cached fails with EIO, within the bound.
	within(t, bound, "lookup of an unknown name", func() {
		if _, err := os.Stat(m.Path("unlisted/x")); !isErrno(err, syscall.EIO) {
			t.Errorf("lookup in a directory never listed: %v, want EIO", err)
		}
	})
	within(t, bound, "read of blocks never fetched", func() {
		if _, err := os.ReadFile(m.Path("docs/never-read.txt")); !isErrno(err, syscall.EIO) {
			t.Errorf("read of a file never read: %v, want EIO", err)
		}
	})
	// A name the last listing did not show does not exist.
	within(t, bound, "lookup of a name the listing did not show", func() {
		if _, err := os.Stat(m.Path("docs/nothing-here")); !isErrno(err, syscall.ENOENT) {
			t.Errorf("lookup of a missing name in a listed directory: %v, want ENOENT", err)
		}
	})

	// Writes go to the cache.
	newData := []byte("written while S3 was away")
	within(t, bound, "create, write and close", func() {
		if err := os.WriteFile(m.Path("docs/new.txt"), newData, 0o644); err != nil {
			t.Errorf("create during the outage: %v", err)
		}
	})
	within(t, bound, "append", func() {
		f, err := os.OpenFile(m.Path("docs/log.txt"), os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Errorf("open for append: %v", err)
			return
		}
		if _, err := f.WriteString("line 2\n"); err != nil {
			t.Errorf("append: %v", err)
		}
		if err := f.Close(); err != nil {
			t.Errorf("close after append: %v", err)
		}
	})
	within(t, bound, "rename", func() {
		if err := os.Rename(m.Path("docs/tomove.txt"), m.Path("docs/moved.txt")); err != nil {
			t.Errorf("rename during the outage: %v", err)
		}
	})
	within(t, bound, "unlink", func() {
		if err := os.Remove(m.Path("docs/gone.txt")); err != nil {
			t.Errorf("unlink during the outage: %v", err)
		}
	})
	if got, err := os.ReadFile(m.Path("docs/new.txt")); err != nil || !bytes.Equal(got, newData) {
		t.Errorf("read back a file written during the outage: %q, %v", got, err)
	}

	// Operations: status, /healthz and flush answer promptly and say why.
	within(t, 2*time.Second, "keelfs status", func() {
		code, out := runKeelfs(t, srv, 10*time.Second, "status", m.Dir)
		if code != 0 || !strings.Contains(out, "UNREACHABLE") || !strings.Contains(out, "pending uploads:") {
			t.Errorf("status during the outage (exit %d):\n%s", code, out)
		}
	})
	within(t, time.Second, "/healthz", func() {
		code, body := healthz(t, "http://"+addr+"/healthz")
		if code != http.StatusServiceUnavailable || !strings.Contains(body, "unreachable") {
			t.Errorf("healthz during the outage: %d %q", code, body)
		}
	})
	within(t, 2*time.Second+bound, "keelfs flush --timeout 2s", func() {
		code, out := runKeelfs(t, srv, 20*time.Second, "flush", "--timeout", "2s", m.Dir)
		if code != 7 || !strings.Contains(out, "docs/new.txt") || !strings.Contains(out, "unreachable") {
			t.Errorf("flush during the outage: exit %d, want 7 naming docs/new.txt and why:\n%s", code, out)
		}
	})

	// The storm lasts 60 s; the others end as soon as the checks are done.
	if kind == "storm" {
		time.Sleep(time.Until(outageStart.Add(60 * time.Second)))
		// It is still up: the mount still answers from its cache.
		if got, err := os.ReadFile(m.Path("docs/cached.bin")); err != nil || !bytes.Equal(got, cached) {
			t.Errorf("read of a cached file after 60 s of 503: %d bytes, %v", len(got), err)
		}
	}

	// SIGTERM keeps its deadline (--shutdown-timeout 3s) and exits 7.
	start := time.Now()
	m.Signal(syscall.SIGTERM)
	code, ok := m.Wait(10 * time.Second)
	took := time.Since(start)
	if !ok || code != 7 {
		t.Errorf("SIGTERM during the outage: exit %d (exited %v), want 7", code, ok)
	}
	if took > 5*time.Second {
		t.Errorf("SIGTERM with --shutdown-timeout 3s took %v", took.Round(time.Millisecond))
	}
	if !strings.Contains(m.Log(), "docs/new.txt") {
		t.Errorf("the log does not name what was left pending")
	}

	// S3 is back: the next mount on the same cache uploads it all, within
	// 30 s, through the conditional path.
	switch kind {
	case "refused":
		srv.Restart(t)
	default:
		px.SetFaults(nil)
	}
	m.Remount()
	deadline := time.Now().Add(30 * time.Second)
	want := map[string]string{"docs/new.txt": string(newData), "docs/log.txt": "line 1\nline 2\n",
		"docs/moved.txt": "moved while S3 was away"}
	for {
		var missing []string
		for k, v := range want {
			if got, ok := srv.Get(t, b, k); !ok || string(got) != v {
				missing = append(missing, k)
			}
		}
		for _, k := range []string{"docs/gone.txt", "docs/tomove.txt"} {
			if _, ok := srv.Get(t, b, k); ok {
				missing = append(missing, "(delete) "+k)
			}
		}
		if len(missing) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("30 s after S3 came back, not yet in S3: %v\n%s", missing, m.Log())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got, ok := srv.Get(t, b, "docs/cached.bin"); !ok || !bytes.Equal(got, cached) {
		t.Errorf("docs/cached.bin changed")
	}
}

// TestOutageRecoversWithoutRemount: a mount that stays up through an
// outage uploads what was written during it by itself, within 30 s of S3
// answering again (the probe notices, the backoff is cut short).
func TestOutageRecoversWithoutRemount(t *testing.T) {
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	px := srv.StartProxy(t)
	m := srv.Mount(t, b, harness.MountOptions{Endpoint: px.Endpoint, Args: []string{
		"--s3-timeout", outageS3Timeout.String(), "--write-back-delay", "100ms"}})
	m.AllowLog(`s3 is unreachable|upload failed; will retry`)
	if err := os.WriteFile(m.Path("before.txt"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	m.Flush()
	// The app's directory is listed before the outage: new names in it
	// are then known not to exist in S3 without asking (stale-if-error).
	if _, err := os.ReadDir(m.Dir); err != nil {
		t.Fatal(err)
	}
	px.SetFaults(func(string, *http.Request) harness.Fault { return harness.Fault{Cut: true} })
	for i := 0; i < 20; i++ {
		if err := os.WriteFile(m.Path(fmt.Sprintf("during-%02d.txt", i)), []byte(fmt.Sprint(i)), 0o644); err != nil {
			t.Fatalf("write during the outage: %v", err)
		}
	}
	// Long enough for the uploads to back off well past a few seconds.
	time.Sleep(20 * time.Second)
	px.SetFaults(nil)
	back := time.Now()
	for i := 0; i < 20; i++ {
		k := fmt.Sprintf("during-%02d.txt", i)
		for {
			if got, ok := srv.Get(t, b, k); ok && string(got) == fmt.Sprint(i) {
				break
			}
			if time.Since(back) > 30*time.Second {
				t.Fatalf("%s not in S3 30 s after it came back", k)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	t.Logf("everything written during the outage was in S3 %v after it came back", time.Since(back).Round(10*time.Millisecond))
	if n := strings.Count(m.Log(), `level=WARN msg="s3 is unreachable`); n != 1 {
		t.Errorf("%d WARN lines about S3 being unreachable for one outage, want 1", n)
	}
	if n := strings.Count(m.Log(), `level=INFO msg="s3 is reachable again"`); n != 1 {
		t.Errorf("%d INFO lines about S3 being back for one outage, want 1", n)
	}
	if n := strings.Count(m.Log(), "level=WARN"); n > 3 {
		t.Errorf("%d WARN lines for one outage of 20 files", n)
	}
}
