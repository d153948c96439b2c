package e2e

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keelfs/keelfs/test/appdata"
	"github.com/keelfs/keelfs/test/harness"
)

// The `keelfs run` tests start it as a container starts its PID 1, in
// fresh PID and mount namespaces (unshare --pid --fork --mount-proc), with
// the test app (test/testapp) as the app.

// wantAppFiles checks that the bucket holds the files the test app wrote,
// byte for byte.
func wantAppFiles(t *testing.T, srv *harness.Server, b string, names []string, size int) {
	t.Helper()
	for _, n := range names {
		got, ok := srv.Get(t, b, n)
		if !ok || !bytes.Equal(got, appdata.Content(n, size)) {
			t.Errorf("LOST: %s in S3: %d bytes (exists %v), want the app's %d", n, len(got), ok, size)
		}
	}
}

func appNames(prefix string, n int) []string {
	var names []string
	for i := 0; i < n; i++ {
		names = append(names, fmt.Sprintf("%s-%03d", prefix, i))
	}
	return names
}

// zombies lists the processes whose parent is pid and that have exited
// without being reaped.
func zombies(pid int) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) > 1 && f[0] == "Z" && f[1] == strconv.Itoa(pid) {
			out = append(out, p)
		}
	}
	return out
}

// TestRunAsPID1: keelfs run as a namespace's PID 1 with an app that
// writes while uploads wait (--write-back-delay 1h), orphans children and
// gets signals. HUP and USR1 reach the app; orphans are reaped (no
// zombies); SIGTERM stops the app first, which still writes through the
// live mount while it stops, then everything is uploaded, and the exit
// status is the app's.
func TestRunAsPID1(t *testing.T) {
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	const size = 200 << 10
	r := srv.StartRun(t, b, harness.RunOptions{
		Args:    []string{"--write-back-delay", "1h", "--shutdown-timeout", "60s"},
		AppArgs: []string{"-files", "20", "-size", strconv.Itoa(size), "-on-term", "goodbye", "-exit", "23", "-orphans", "3"},
	})
	r.WaitFile("written", 60*time.Second)
	if keys := srv.Keys(t, b, ""); len(keys) != 0 {
		t.Fatalf("before the stop, S3 already has %v: the uploads were not pending", keys)
	}
	pid1 := r.Pid1()
	deadline := time.Now().Add(10 * time.Second)
	for {
		orphans := 0
		for _, f := range r.StatusFiles() {
			if strings.HasPrefix(f, "orphan-") {
				orphans++
			}
		}
		z := zombies(pid1)
		if orphans == 3 && len(z) == 0 {
			// Each orphan lives 300ms: after a second more, all have
			// exited, and none may be left unreaped.
			time.Sleep(time.Second)
			if z := zombies(pid1); len(z) != 0 {
				t.Fatalf("zombies under keelfs run (PID 1): %v", z)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 10s: %d orphans started, zombies %v (want 3 and none)", orphans, z)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, sig := range []syscall.Signal{syscall.SIGHUP, syscall.SIGUSR1} {
		r.Signal(sig)
		r.WaitFile("signal-"+strings.ReplaceAll(sig.String(), " ", "-"), 10*time.Second)
	}
	start := time.Now()
	r.Signal(syscall.SIGTERM)
	code := r.Wait(90 * time.Second)
	t.Logf("keelfs run exited %d, %v after SIGTERM", code, time.Since(start))
	if code != 23 {
		t.Errorf("exit status %d, want the app's 23", code)
	}
	if !r.HasFile("signal-terminated") {
		t.Errorf("the app did not get the SIGTERM")
	}
	wantAppFiles(t, srv, b, append(appNames("f", 20), "goodbye"), size)
	log := r.Log()
	at := 0
	for _, step := range []string{"app started", "stopping the app first", "app exited", "stopped; everything is in S3"} {
		i := strings.Index(log[at:], step)
		if i < 0 {
			t.Errorf("the log lacks %q, or has it out of order", step)
			break
		}
		at += i
	}
}

// TestRunAppExitsByItself: the app finishes on its own with status 3,
// leaving a process running. That process is stopped before the drain,
// the files are uploaded, and keelfs run exits 3. The mount point did not
// exist (an app's directory in an image without it): keelfs run made it.
func TestRunAppExitsByItself(t *testing.T) {
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	r := srv.StartRun(t, b, harness.RunOptions{Dir: filepath.Join(t.TempDir(), "not", "there", "yet"),
		Args:    []string{"--write-back-delay", "1h"},
		AppArgs: []string{"-files", "5", "-size", "1000", "-then", "exit", "-exit", "3", "-linger"},
	})
	if code := r.Wait(60 * time.Second); code != 3 {
		t.Errorf("exit status %d, want the app's 3", code)
	}
	wantAppFiles(t, srv, b, appNames("f", 5), 1000)
	stopped := false
	for _, f := range r.StatusFiles() {
		stopped = stopped || strings.HasPrefix(f, "sleeper-") && strings.HasSuffix(f, "-term")
	}
	if !stopped {
		t.Errorf("the process the app left running got no SIGTERM (status files %v)", r.StatusFiles())
	}
}

// TestRunAppIgnoresSIGTERM: an app that ignores SIGTERM gets SIGKILL
// after --app-stop-timeout; what it wrote is uploaded; the status says it
// was killed (128+9).
func TestRunAppIgnoresSIGTERM(t *testing.T) {
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	r := srv.StartRun(t, b, harness.RunOptions{
		Args:    []string{"--write-back-delay", "1h", "--app-stop-timeout", "1s"},
		AppArgs: []string{"-files", "3", "-size", "5000", "-ignore-term"},
	})
	r.AllowLog(`did not exit within --app-stop-timeout`)
	r.WaitFile("written", 60*time.Second)
	start := time.Now()
	r.Signal(syscall.SIGTERM)
	code := r.Wait(60 * time.Second)
	if code != 137 {
		t.Errorf("exit status %d, want 137 (the app killed by SIGKILL)", code)
	}
	if d := time.Since(start); d < time.Second {
		t.Errorf("stopped after %v: the app did not get its second", d)
	}
	if !r.HasFile("signal-terminated") {
		t.Errorf("the app never saw the SIGTERM")
	}
	wantAppFiles(t, srv, b, appNames("f", 3), 5000)
}

// TestRunMountFails: when the mount fails, the app never starts, and the
// exit status says why.
func TestRunMountFails(t *testing.T) {
	srv := harness.StartServer(t)
	r := srv.StartRun(t, "keelfs-no-such-bucket", harness.RunOptions{AppArgs: []string{"-files", "1"}})
	if code := r.Wait(30 * time.Second); code != 5 {
		t.Errorf("exit status %d, want 5 (bucket missing)", code)
	}
	if !strings.Contains(r.Log(), "bucket does not exist") {
		t.Errorf("the log does not say why")
	}
	if r.HasFile("started") {
		t.Errorf("the app started although the mount failed")
	}
}

// TestRunAppCannotStart: a command that does not exist exits 127, as a
// shell would, after the mount is removed (outside a namespace, so that a
// mount left behind shows).
func TestRunAppCannotStart(t *testing.T) {
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	r := srv.StartRun(t, b, harness.RunOptions{App: []string{"/no/such/app"}, NotPID1: true})
	r.AllowLog(`cannot start the app`)
	if code := r.Wait(30 * time.Second); code != 127 {
		t.Errorf("exit status %d, want 127", code)
	}
	if !strings.Contains(r.Log(), "/no/such/app") {
		t.Errorf("the log does not name the command")
	}
}

// TestRunPendingExit7: S3 refuses uploads while the app stops: keelfs run
// exits 7 at --shutdown-timeout, and the next mount on the same cache
// uploads everything.
func TestRunPendingExit7(t *testing.T) {
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	px := srv.StartProxy(t)
	cache := t.TempDir()
	r := srv.StartRun(t, b, harness.RunOptions{Endpoint: px.Endpoint, CacheDir: cache,
		Args:    []string{"--write-back-delay", "1h", "--shutdown-timeout", "2s"},
		AppArgs: []string{"-files", "4", "-size", "3000"},
	})
	r.AllowLog(`upload failed|s3 request failed|not yet in S3|retrying`)
	r.WaitFile("written", 60*time.Second)
	px.SetFaults(func(op string, req *http.Request) harness.Fault {
		if op == "PutObject" || op == "CreateMultipartUpload" {
			return harness.Fault{Status: 503, Code: "ServiceUnavailable"}
		}
		return harness.Fault{}
	})
	r.Signal(syscall.SIGTERM)
	if code := r.Wait(60 * time.Second); code != 7 {
		t.Fatalf("exit status %d with uploads refused, want 7", code)
	}
	if !strings.Contains(r.Log(), "not yet in S3") {
		t.Errorf("the log does not name what is pending")
	}
	px.SetFaults(nil)
	// The same endpoint too: the cache's subdirectory is per endpoint,
	// bucket and prefix.
	m := srv.Mount(t, b, harness.MountOptions{CacheDir: cache, Endpoint: px.Endpoint})
	m.AllowLog(`resuming`)
	m.Flush()
	wantAppFiles(t, srv, b, appNames("f", 4), 3000)
}

// TestRunMountGoneStopsApp: the mount dies under the app (its FUSE
// connection aborted): the app is stopped, not left writing into a dead
// mount, what it wrote is still uploaded from the cache, the dead mount
// is removed, and keelfs run fails.
func TestRunMountGoneStopsApp(t *testing.T) {
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	r := srv.StartRun(t, b, harness.RunOptions{
		Args:    []string{"--write-back-delay", "1h"},
		AppArgs: []string{"-files", "3", "-size", "4000"},
	})
	r.AllowLog(`the mount went away|unmount`)
	r.WaitFile("written", 60*time.Second)
	minor := ""
	for _, line := range strings.Split(r.Mountinfo(), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && f[4] == r.Dir && strings.Contains(line, " - fuse.keelfs ") {
			_, minor, _ = strings.Cut(f[2], ":")
		}
	}
	if minor == "" {
		t.Fatalf("no keelfs mount at %s in keelfs run's mount table:\n%s", r.Dir, r.Mountinfo())
	}
	if err := os.WriteFile(filepath.Join("/sys/fs/fuse/connections", minor, "abort"), []byte("1"), 0o200); err != nil {
		t.Fatalf("abort the FUSE connection: %v", err)
	}
	code := r.Wait(60 * time.Second)
	if code == 0 {
		t.Errorf("keelfs run exited 0 after its mount died")
	}
	if !r.HasFile("signal-terminated") {
		t.Errorf("the app was not stopped when the mount died")
	}
	if !strings.Contains(r.Log(), "went away") {
		t.Errorf("the log does not say the mount went away")
	}
	wantAppFiles(t, srv, b, appNames("f", 3), 4000)
}

// TestRunAppUser: --app-user runs the app as www-data's uid (33) and
// implies --allow-other, so the app can use the mount.
func TestRunAppUser(t *testing.T) {
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	r := srv.StartRun(t, b, harness.RunOptions{
		Args:    []string{"--app-user", "33:33", "--uid", "33", "--gid", "33"},
		AppArgs: []string{"-files", "2", "-size", "100", "-then", "exit"},
	})
	if code := r.Wait(60 * time.Second); code != 0 {
		t.Fatalf("exit status %d", code)
	}
	started, err := os.ReadFile(filepath.Join(r.Status, "started"))
	if err != nil || !strings.Contains(string(started), "uid 33 gid 33") {
		t.Errorf("the app ran as %q (%v), want uid 33 gid 33", started, err)
	}
	wantAppFiles(t, srv, b, appNames("f", 2), 100)
}

// TestRunNotPID1: keelfs run as an ordinary process (a shell, a systemd
// unit) is a subreaper: the app's orphans come to it, are reaped, and
// what the app leaves running is stopped before the drain. The mount is
// gone afterwards.
func TestRunNotPID1(t *testing.T) {
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	r := srv.StartRun(t, b, harness.RunOptions{NotPID1: true,
		Args:    []string{"--write-back-delay", "1h"},
		AppArgs: []string{"-files", "4", "-size", "2000", "-orphans", "2", "-linger", "-then", "exit", "-exit", "4"},
	})
	if code := r.Wait(60 * time.Second); code != 4 {
		t.Errorf("exit status %d, want the app's 4", code)
	}
	wantAppFiles(t, srv, b, appNames("f", 4), 2000)
	stopped := false
	for _, f := range r.StatusFiles() {
		stopped = stopped || strings.HasPrefix(f, "sleeper-") && strings.HasSuffix(f, "-term")
	}
	if !stopped {
		t.Errorf("the process the app left running got no SIGTERM (status files %v)", r.StatusFiles())
	}
	if !strings.Contains(r.Log(), "stopping processes the app left running") {
		t.Errorf("the log does not say it stopped what the app left")
	}
	if harness.IsMounted(r.Dir) {
		t.Errorf("%s is still mounted after keelfs run exited", r.Dir)
	}
}
