package e2e

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"path"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/keelfs/keelfs/test/harness"
)

// deniedAttempts records when the proxy refused an upload of a key.
type deniedAttempts struct {
	mu    sync.Mutex
	times map[string][]time.Time
}

func (d *deniedAttempts) add(key string) {
	d.mu.Lock()
	d.times[key] = append(d.times[key], time.Now())
	d.mu.Unlock()
}

// between counts the attempts on key in [from, to).
func (d *deniedAttempts) between(key string, from, to time.Time) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for _, t := range d.times[key] {
		if !t.Before(from) && t.Before(to) {
			n++
		}
	}
	return n
}

// TestUnhappyDeniedUpload (issue 13 case 3): S3 refuses every upload of
// two keys with 403 AccessDenied, one small (PutObject) and one over the
// part size (multipart), as a bucket policy denying a path would. A
// refusal that will not change is not retried in a tight loop: the mount
// backs off (or stops), `keelfs flush` exits non-zero within bounded time
// naming each file and why, the other files written at the same time
// reach S3, SIGTERM ends within the shutdown timeout with status 7 naming
// the stuck files, and the log does not fill with a line per attempt.
// On the code of commit 1e7ad73 this loops: tens of thousands of PUTs and
// as many WARN lines, and flush never returns.
func TestUnhappyDeniedUpload(t *testing.T) {
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	px := srv.StartProxy(t)
	denied := []string{"denied-small.bin", "denied-big.bin"}
	att := &deniedAttempts{times: map[string][]time.Time{}}
	px.SetFaults(func(op string, r *http.Request) harness.Fault {
		switch op {
		case "PutObject", "CreateMultipartUpload", "UploadPart", "UploadPartCopy", "CompleteMultipartUpload", "CopyObject":
		default:
			return harness.Fault{}
		}
		for _, k := range denied {
			if strings.HasSuffix(r.URL.Path, "/"+k) {
				att.add(k)
				return harness.Fault{Status: http.StatusForbidden, Code: "AccessDenied"}
			}
		}
		return harness.Fault{}
	})
	m := srv.Mount(t, b, harness.MountOptions{Endpoint: px.Endpoint,
		Args: []string{"--write-back-delay", "200ms", "--part-size", "5M", "--shutdown-timeout", "5s"}})
	m.AllowLog(`denied-(small|big)\.bin|AccessDenied|(?i)access denied|` + faultLogs)

	files := map[string][]byte{
		"denied-small.bin": randBytes(100 << 10),
		"denied-big.bin":   randBytes(6 << 20),
		"ok-1":             randBytes(10),
		"ok-2":             randBytes(300 << 10),
		"ok-3":             randBytes(6<<20 + 5),
		"dir/ok-4":         []byte("in a directory\n"),
	}
	if err := os.Mkdir(m.Path("dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for name, data := range files {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := os.WriteFile(m.Path(name), data, 0o644); err != nil {
				t.Errorf("write %s: %v (the write goes to the cache; S3 refusing the upload must not fail it)", name, err)
			}
		}()
	}
	wg.Wait()
	closed := time.Now()

	fl := runFlush(t, m, 30*time.Second)
	t.Logf("keelfs flush: %s", fl)
	switch {
	case fl.timedOut:
		t.Errorf("keelfs flush %s; want a non-zero exit within 30s naming the refused files", fl)
	case fl.code == 0:
		t.Errorf("keelfs flush succeeded (%s) with two files S3 refuses", fl)
	default:
		for _, k := range denied {
			if !strings.Contains(fl.out, k) {
				t.Errorf("keelfs flush output does not name %s: %q", k, fl.out)
			}
		}
		if !regexp.MustCompile(`(?i)denied|forbidden|403`).MatchString(fl.out) {
			t.Errorf("keelfs flush output does not say why (access denied): %q", fl.out)
		}
	}

	// Back-off: count the attempts in the first 10 seconds after close.
	if d := time.Until(closed.Add(10 * time.Second)); d > 0 {
		time.Sleep(d)
	}
	for _, k := range denied {
		n := att.between(k, closed, closed.Add(10*time.Second))
		total := att.between(k, time.Time{}, time.Now())
		t.Logf("%s: %d refused upload requests in the 10s after close, %d in all", k, n, total)
		if n == 0 {
			t.Errorf("%s: no upload was even tried", k)
		}
		if n > 8 {
			t.Errorf("%s: %d upload requests refused with 403 in 10s; want a few (back off, or stop: 403 will not change)", k, n)
		}
	}

	// The other files are in S3.
	for name, data := range files {
		if strings.HasPrefix(name, "denied") {
			continue
		}
		if got, ok := srv.Get(t, b, name); !ok || !bytes.Equal(got, data) {
			t.Errorf("%s: the bucket has %d bytes (present %v), want the %d written: one refused file held up the others", name, len(got), ok, len(data))
		}
	}
	for _, k := range denied {
		if _, ok := srv.Get(t, b, k); ok {
			t.Errorf("%s is in the bucket though every upload of it was refused", k)
		}
	}

	// The log has a line or a few per file, not one per attempt.
	log := m.Log()
	warns := len(levelLines(log, "WARN"))
	for _, k := range denied {
		w, e := len(levelLines(log, "WARN", k)), len(levelLines(log, "ERROR", k))
		t.Logf("log lines naming %s: %d WARN, %d ERROR", k, w, e)
		if w+e > 20 {
			t.Errorf("%d WARN and %d ERROR lines naming %s; want a few, not one per attempt", w, e, k)
		}
	}
	t.Logf("WARN lines in the whole log: %d", warns)

	// SIGTERM: the refused files cannot be drained; the daemon gives up
	// after --shutdown-timeout (5s), exits 7 and names them.
	logged := len(log)
	start := time.Now()
	m.Signal(syscall.SIGTERM)
	code, ok := m.Wait(30 * time.Second)
	took := time.Since(start)
	t.Logf("SIGTERM with --shutdown-timeout 5s: exit %d after %v", code, took)
	if !ok {
		t.Fatalf("keelfs still running 30s after SIGTERM with --shutdown-timeout 5s")
	}
	after := m.Log()[logged:]
	if code != 7 {
		t.Errorf("exit %d after SIGTERM, want 7 (changes not in S3)", code)
	}
	if took > 7*time.Second {
		t.Errorf("SIGTERM took %v to exit with --shutdown-timeout 5s", took)
	}
	for _, k := range denied {
		if !strings.Contains(after, k) {
			t.Errorf("the daemon's last words do not name %s:\n%s", k, tailOf(after, 2000))
		}
	}
}

// TestUnhappyKeyTooLong (issue 13 case 3): S3 keys are at most 1 024
// bytes. A create, mkdir or rename whose key (prefix included) would be
// longer fails at once with ENAMETOOLONG, instead of succeeding locally
// and leaving an upload that can never be made; one that fits exactly
// works and reaches S3.
func TestUnhappyKeyTooLong(t *testing.T) {
	const prefix = "pfx/" // the mount's prefix: part of every key
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	// versitygw stores keys longer than 1 024 bytes; S3 refuses them
	// (400 KeyTooLongError). The proxy answers as S3 does.
	px := srv.StartProxy(t)
	px.SetFaults(func(op string, r *http.Request) harness.Fault {
		_, key, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), "/")
		if len(key) > 1024 {
			return harness.Fault{Status: http.StatusBadRequest, Code: "KeyTooLongError"}
		}
		return harness.Fault{}
	})
	m := srv.Mount(t, b+"/pfx", harness.MountOptions{Endpoint: px.Endpoint,
		Args: []string{"--write-back-delay", "200ms", "--shutdown-timeout", "3s"}})
	m.AllowLog(`(?i)too long|KeyTooLong|` + faultLogs)
	name := func(c byte, n int) string { return strings.Repeat(string(c), n) }
	keyLen := func(p string) int { return len(prefix) + len(p) }

	// Three directories of 255-byte names: a file there has room for a
	// name of 1024-772 = 252 bytes.
	deep := path.Join(name('a', 255), name('b', 255), name('c', 255))
	if err := os.MkdirAll(m.Path(deep), 0o755); err != nil {
		t.Fatalf("mkdir -p of a %d-byte path (key %d bytes): %v", len(deep), keyLen(deep)+1, err)
	}
	fits := path.Join(deep, name('f', 1024-keyLen(deep)-1))
	over := path.Join(deep, name('g', 1024-keyLen(deep)))
	if keyLen(fits) != 1024 || keyLen(over) != 1025 {
		t.Fatalf("test arithmetic: keys of %d and %d bytes", keyLen(fits), keyLen(over))
	}
	var problems []string
	check := func(what string, err error) {
		t.Helper()
		if !isErrno(err, syscall.ENAMETOOLONG) {
			problems = append(problems, fmt.Sprintf("%s: %v, want ENAMETOOLONG", what, err))
		}
	}
	if err := os.WriteFile(m.Path(fits), []byte("key of 1024 bytes\n"), 0o644); err != nil {
		t.Fatalf("create a file whose key is 1024 bytes: %v", err)
	}
	f, err := os.OpenFile(m.Path(over), os.O_CREATE|os.O_WRONLY, 0o644)
	if err == nil {
		f.Write([]byte("key of 1025 bytes\n"))
		f.Close()
	}
	check("create of a file whose key is 1025 bytes", err)

	// mkdir writes the marker DIR/: its key must fit too.
	dirFits := path.Join(deep, name('h', 1024-keyLen(deep)-2))
	dirOver := path.Join(deep, name('i', 1024-keyLen(deep)-1))
	if err := os.Mkdir(m.Path(dirFits), 0o755); err != nil {
		t.Errorf("mkdir whose marker key is 1024 bytes: %v", err)
	}
	check("mkdir whose marker key would be 1025 bytes", os.Mkdir(m.Path(dirOver), 0o755))

	// rename of a file to a name whose key is too long.
	short := path.Join(deep, "short")
	if err := os.WriteFile(m.Path(short), []byte("short\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	long := path.Join(deep, name('j', 1024-keyLen(deep)))
	err = os.Rename(m.Path(short), m.Path(long))
	check("rename of a file to a key of 1025 bytes", err)
	if err == nil {
		os.Rename(m.Path(long), m.Path(short)) // so that the checks below still hold
	}

	// rename of a directory so that a key under it is too long.
	parent := path.Join(name('a', 255), name('b', 255))
	inner := name('k', 255)
	if err := os.Mkdir(m.Path(parent, "s"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(m.Path(parent, "s", inner), []byte("inner\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// parent/NEW/inner: the longest NEW that fits.
	newFits := name('n', 1024-keyLen(parent)-2-len(inner))
	newOver := name('m', 1024-keyLen(parent)-1-len(inner))
	if keyLen(path.Join(parent, newFits, inner)) != 1024 || keyLen(path.Join(parent, newOver, inner)) != 1025 {
		t.Fatalf("test arithmetic: dir rename keys %d and %d", keyLen(path.Join(parent, newFits, inner)), keyLen(path.Join(parent, newOver, inner)))
	}
	err = os.Rename(m.Path(parent, "s"), m.Path(parent, newOver))
	check("rename of a directory so that a key under it is 1025 bytes", err)
	if err == nil {
		os.Rename(m.Path(parent, newOver), m.Path(parent, "s"))
	}
	if err := os.Rename(m.Path(parent, "s"), m.Path(parent, newFits)); err != nil {
		t.Errorf("rename of a directory so that the longest key under it is 1024 bytes: %v", err)
	}
	for _, p := range problems {
		t.Error(p)
	}

	// Nothing is left pending forever: flush ends, and what fits is in S3.
	fl := runFlush(t, m, 30*time.Second)
	t.Logf("keelfs flush: %s", fl)
	if fl.timedOut || fl.code != 0 {
		t.Errorf("keelfs flush %s; want success: nothing that S3 would refuse may be pending", fl)
	}
	keys := srv.Keys(t, b, prefix)
	have := map[string]bool{}
	for _, k := range keys {
		have[k] = true
		if len(k) > 1024 {
			t.Errorf("the bucket holds a key of %d bytes", len(k))
		}
	}
	for _, p := range []string{fits, short, path.Join(parent, newFits, inner), dirFits + "/"} {
		if !have[prefix+p] {
			t.Errorf("the bucket lacks the key of %d bytes %s...%s", keyLen(p), (prefix + p)[:20], p[len(p)-20:])
		}
	}
	if t.Failed() {
		var short []string
		for _, k := range keys {
			short = append(short, fmt.Sprintf("%d bytes ...%s", len(k), k[max(0, len(k)-30):]))
		}
		t.Logf("bucket keys: %q", short)
	}
}
