package e2e

import (
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keelfs/keelfs/test/harness"
)

// TestOpsSystemdNotify: with NOTIFY_SOCKET set (a Type=notify unit),
// keelfs says READY=1 only once the mount answers, so that units ordered
// after it find it live, and STOPPING=1 when a stop begins.
func TestOpsSystemdNotify(t *testing.T) {
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	sock := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	type note struct {
		text string
		live bool // whether the mount answered when the note came
	}
	dir := t.TempDir()
	notes := make(chan note, 16)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				close(notes)
				return
			}
			notes <- note{string(buf[:n]), harness.Answers(dir)}
		}
	}()
	next := func(want string) note {
		t.Helper()
		select {
		case n, ok := <-notes:
			if !ok || !strings.Contains(n.text, want) {
				t.Fatalf("notification %q (open %v), want %s", n.text, ok, want)
			}
			return n
		case <-time.After(30 * time.Second):
			t.Fatalf("no %s notification within 30s", want)
		}
		return note{}
	}
	m := srv.Mount(t, b, harness.MountOptions{Dir: dir, Env: []string{"NOTIFY_SOCKET=" + sock}})
	if n := next("READY=1"); !n.live {
		t.Errorf("READY=1 came before the mount answered: %q", n.text)
	}
	if code := m.Stop(); code != 0 {
		t.Fatalf("exit %d", code)
	}
	next("STOPPING=1")
}

// TestOpsUmountThenSigterm: a unit whose ExecStop unmounts, or a user's
// umount, starts the drain; the SIGTERM that systemd sends right after
// must not cut it short (only a second signal does), so everything
// pending still lands and the exit status is 0.
func TestOpsUmountThenSigterm(t *testing.T) {
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	px := srv.StartProxy(t)
	m := srv.Mount(t, b, harness.MountOptions{Endpoint: px.Endpoint, Args: []string{"--write-back-delay", "1h"}})
	if err := os.WriteFile(m.Path("late"), []byte("uploaded after the umount"), 0o644); err != nil {
		t.Fatal(err)
	}
	px.SetFaults(func(op string, r *http.Request) harness.Fault {
		if op == "PutObject" {
			return harness.Fault{Delay: 2 * time.Second}
		}
		return harness.Fault{}
	})
	if err := syscall.Unmount(m.Dir, 0); err != nil {
		t.Fatalf("umount: %v", err)
	}
	time.Sleep(500 * time.Millisecond) // the drain is waiting on the slow PUT
	m.Signal(syscall.SIGTERM)
	code, done := m.Wait(30 * time.Second)
	if !done || code != 0 {
		t.Fatalf("exit %d (done %v) after umount and one SIGTERM, want 0 with the upload done", code, done)
	}
	if got, _ := srv.Get(t, b, "late"); string(got) != "uploaded after the umount" {
		t.Fatalf("late in S3: %q", got)
	}
}
