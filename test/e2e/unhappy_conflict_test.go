package e2e

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/keelfs/keelfs/test/harness"
)

// Issue 13 case 1: mount B appends to a file; before B's upload, another
// writer replaces the object behind B's back. B's upload is conditional
// (rule 7), so it loses. What B can do then depends on whether it has
// the rest of its version:
//
//   - B has cached only part of the file (it read the tail, or nothing):
//     the unchanged ranges were to come from the version the edit started
//     from, which is gone. B's version cannot be completed. Required:
//     fsync returns an error (EIO) promptly, `keelfs flush` exits non-zero
//     promptly naming the file and why, B's dirty data is kept (SIGTERM
//     exits 7 naming it), one ERROR line says so, the other writer's
//     object is intact, and no request storm.
//   - B has the whole file cached: its version is saved beside the other
//     one as NAME.conflict-HOST-TIME (rule 7), fsync returns, flush
//     succeeds, no storm.
//
// On the code of commit 1e7ad73 the first spins: 412 on the copy source
// taken for a 412 on the target, retried at once, forever.

// conflictStorm is the most object-writing requests one conflict may
// cost B, all retries included. A handful is normal (the failed upload,
// the conflict copy's parts); the spin of issue 13 made thousands.
const conflictStorm = 20

// conflictReason matches the words a message about the lost base can use.
var conflictReason = regexp.MustCompile(`(?i)chang|conflict|replaced|gone|vanish|modified|precondition|412|base`)

// conflictEnv is a bucket holding name (size bytes) and mount B on it
// through a proxy that can hold B's GETs of name.
type conflictEnv struct {
	t    *testing.T
	srv  *harness.Server
	b    string
	px   *harness.Proxy
	m    *harness.Mount
	name string
	base []byte

	hold    atomic.Bool
	release chan struct{}
	unhold  func()
}

func newConflictEnv(t *testing.T, name string, size int) *conflictEnv {
	t.Helper()
	e := &conflictEnv{t: t, srv: harness.StartServer(t), name: name, base: randBytes(size), release: make(chan struct{})}
	e.unhold = sync.OnceFunc(func() { e.hold.Store(false); close(e.release) })
	e.b = e.srv.NewBucket(t)
	e.srv.Put(t, e.b, name, e.base, nil)
	e.px = e.srv.StartProxy(t)
	// While hold is set, B's GETs of the file wait until the object has
	// been replaced: whatever B tries to fetch of the version its edit
	// started from (to complete its version) then meets the new object.
	e.px.SetFaults(func(op string, r *http.Request) harness.Fault {
		if op == "GetObject" && e.hold.Load() && strings.HasSuffix(r.URL.Path, "/"+name) {
			<-e.release
		}
		return harness.Fault{}
	})
	// Smallest part and block sizes the flags allow; the write-back
	// delay leaves time to replace the object before B uploads (B has
	// not uploaded the file lately, so it may go once nothing has changed
	// for a quarter of it: 3 s).
	e.m = e.srv.Mount(t, e.b, harness.MountOptions{Endpoint: e.px.Endpoint, Args: []string{
		"--part-size", "5M", "--block-size", "64K", "--write-back-delay", "12s", "--shutdown-timeout", "3s"}})
	t.Cleanup(e.unhold) // after the mount's cleanup was registered: runs before it
	e.m.AllowLog(regexp.QuoteMeta(name) + `|` + faultLogs)
	return e
}

// appendAndReplace appends a line to the file on B (no fsync) and replaces
// the object in S3 directly, well within B's write-back delay. It returns
// B's open file, the line and the other writer's content.
func (e *conflictEnv) appendAndReplace(holdGets bool) (*os.File, []byte, []byte) {
	t := e.t
	t.Helper()
	if holdGets {
		e.hold.Store(true)
	}
	e.px.Reset()
	line := []byte("one more line, appended on B\n")
	type opened struct {
		f   *os.File
		err error
	}
	// The append runs on its own: should B fetch the rest of the file
	// while it opens or writes, that fetch waits for the replacement.
	appended := make(chan opened, 1)
	go func() {
		f, err := os.OpenFile(e.m.Path(e.name), os.O_WRONLY|os.O_APPEND, 0)
		if err == nil {
			if _, err = f.Write(line); err != nil {
				f.Close()
			}
		}
		appended <- opened{f, err}
	}()
	var a opened
	waited := false
	select {
	case a = <-appended:
	case <-time.After(time.Second):
		waited = true
	}
	other := randBytes(len(e.base)/2 + 4321)
	e.srv.Put(t, e.b, e.name, other, nil)
	e.unhold()
	if waited {
		select {
		case a = <-appended:
			t.Logf("the append on B waited for the object to be replaced")
		case <-time.After(10 * time.Second):
			t.Fatalf("the append on B (open O_APPEND, one write) had not returned 10s after the object was replaced")
		}
	}
	if a.err != nil {
		t.Fatalf("append on B: %v", a.err)
	}
	t.Cleanup(func() { a.f.Close() })
	return a.f, line, other
}

// TestUnhappyConflictPartlyCached: B never fetched the head of the file
// (it read the last bytes of the big one, and only stat'ed the small
// one), so when the object is replaced B cannot complete its version.
func TestUnhappyConflictPartlyCached(t *testing.T) {
	for _, tc := range []struct {
		name     string
		size     int
		readTail bool
	}{
		{"big.log", 12 << 20, true},   // over the part size: multipart, UploadPartCopy
		{"small.log", 1 << 20, false}, // under it: one PUT, the rest fetched by GET
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newConflictEnv(t, tc.name, tc.size)
			st, err := os.Stat(e.m.Path(tc.name))
			if err != nil || st.Size() != int64(tc.size) {
				t.Fatalf("stat on B: %v, %v", st, err)
			}
			if tc.readTail {
				r, err := os.Open(e.m.Path(tc.name))
				if err != nil {
					t.Fatal(err)
				}
				buf := make([]byte, 100)
				if _, err := r.ReadAt(buf, int64(tc.size-100)); err != nil || !bytes.Equal(buf, e.base[tc.size-100:]) {
					t.Fatalf("read the tail on B: %v", err)
				}
				r.Close()
			}
			f, _, other := e.appendAndReplace(true)

			// fsync on B: an error, promptly.
			synced := syncWithin(f, 10*time.Second)
			t.Logf("fsync on B: %s", synced)
			switch {
			case !synced.returned:
				t.Errorf("fsync on B %s; want EIO well under 10s (requests so far: %v)", synced, e.px.Counts())
			case !isErrno(synced.err, syscall.EIO):
				t.Errorf("fsync on B returned %v (%s), want EIO: B's version cannot be completed", synced.err, errnoName(synced.err))
			case synced.took > 5*time.Second:
				t.Errorf("fsync on B returned EIO after %v; want it well under 10s", synced.took)
			}

			// keelfs flush: non-zero, promptly, naming the file and why.
			fl := runFlush(t, e.m, 20*time.Second)
			t.Logf("keelfs flush: %s", fl)
			switch {
			case fl.timedOut:
				t.Errorf("keelfs flush %s; want a non-zero exit within seconds", fl)
			case fl.code == 0:
				t.Errorf("keelfs flush succeeded (%s) while B's change cannot be uploaded", fl)
			default:
				if fl.took > 15*time.Second {
					t.Errorf("keelfs flush took %v to report the file", fl.took)
				}
				if !strings.Contains(fl.out, tc.name) || !conflictReason.MatchString(fl.out) {
					t.Errorf("keelfs flush output %q does not name %s and a reason", fl.out, tc.name)
				}
			}

			// No storm: let any retry loop run a little longer, then count.
			time.Sleep(2 * time.Second)
			counts := e.px.Counts()
			t.Logf("requests from the append on: %v", counts)
			if n := writeOps(counts); n > conflictStorm {
				t.Errorf("B sent %d object-writing requests for one lost race (%v), want at most %d", n, counts, conflictStorm)
			}

			// The other writer's object is intact, and nothing was saved
			// under a conflict name: B does not have its whole version.
			if got, _ := e.srv.Get(t, e.b, tc.name); !bytes.Equal(got, other) {
				t.Errorf("the other writer's %s was overwritten: the bucket has %d bytes, it wrote %d", tc.name, len(got), len(other))
			}
			if keys := e.srv.Keys(t, e.b, ""); len(keys) != 1 {
				t.Errorf("bucket holds %q; want %s alone (B's version is incomplete: a copy of it would hold bytes nobody wrote)", keys, tc.name)
			}

			// One ERROR line about it, not one per attempt.
			errs := levelLines(e.m.Log(), "ERROR", tc.name)
			if len(errs) == 0 || len(errs) > 3 {
				t.Errorf("B logged %d ERROR lines naming %s, want one (at most 3): %q", len(errs), tc.name, firstN(errs, 5))
			}
			t.Logf("B's log: %d ERROR and %d WARN lines naming %s", len(errs), len(levelLines(e.m.Log(), "WARN", tc.name)), tc.name)

			// B's change is kept, not dropped: SIGTERM says it is still
			// pending (exit 7) and names it.
			if err := f.Close(); err != nil {
				t.Logf("close on B after the failed fsync: %v", err)
			}
			logged := len(e.m.Log())
			start := time.Now()
			e.m.Signal(syscall.SIGTERM)
			code, ok := e.m.Wait(15 * time.Second)
			took := time.Since(start)
			t.Logf("SIGTERM with --shutdown-timeout 3s: exit %d after %v", code, took)
			if !ok {
				t.Fatalf("keelfs still running 15s after SIGTERM with --shutdown-timeout 3s")
			}
			if code != 7 || !strings.Contains(e.m.Log()[logged:], tc.name) {
				t.Errorf("SIGTERM: exit %d, want 7 with %s named as not in S3 (B's change must be kept); log after the signal:\n%s",
					code, tc.name, tailOf(e.m.Log()[logged:], 2000))
			}
		})
	}
}

// TestUnhappyConflictFullyCached: B read the whole file before appending,
// so its version is complete in its cache. The conflict ends with the
// other writer's object under the name and B's version beside it (rule 7).
func TestUnhappyConflictFullyCached(t *testing.T) {
	for _, tc := range []struct {
		name string
		size int
	}{
		{"big.log", 12 << 20},
		{"small.log", 1 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newConflictEnv(t, tc.name, tc.size)
			e.m.AllowLog(`conflict`)
			if got, err := os.ReadFile(e.m.Path(tc.name)); err != nil || !bytes.Equal(got, e.base) {
				t.Fatalf("read the whole file on B: %d bytes, %v", len(got), err)
			}
			f, line, other := e.appendAndReplace(false)
			mine := append(append([]byte{}, e.base...), line...)

			synced := syncWithin(f, 10*time.Second)
			t.Logf("fsync on B (success or EIO both allowed): %s", synced)
			if !synced.returned {
				t.Errorf("fsync on B %s; want it to return well under 10s (requests so far: %v)", synced, e.px.Counts())
			} else if synced.err != nil && !isErrno(synced.err, syscall.EIO) {
				t.Errorf("fsync on B returned %v (%s), want success or EIO", synced.err, errnoName(synced.err))
			}
			fl := runFlush(t, e.m, 20*time.Second)
			t.Logf("keelfs flush: %s", fl)
			if fl.timedOut || fl.code != 0 {
				t.Errorf("keelfs flush %s; want success: B's version is saved under a conflict name", fl)
			}
			time.Sleep(2 * time.Second)
			counts := e.px.Counts()
			t.Logf("requests from the append on: %v", counts)
			if n := writeOps(counts); n > conflictStorm {
				t.Errorf("B sent %d object-writing requests for one lost race (%v), want at most %d", n, counts, conflictStorm)
			}

			files := map[string][]byte{}
			for _, k := range e.srv.Keys(t, e.b, "") {
				files[k], _ = e.srv.Get(t, e.b, k)
			}
			if !bytes.Equal(files[tc.name], other) {
				t.Errorf("%s in the bucket: %d bytes, want the other writer's %d", tc.name, len(files[tc.name]), len(other))
			}
			re := sharedConflictKey(t, tc.name)
			var copies []string
			for k, v := range files {
				if k == tc.name {
					continue
				}
				if !re.MatchString(k) {
					t.Errorf("unexpected object %q (%d bytes)", k, len(v))
					continue
				}
				copies = append(copies, k)
				if !bytes.Equal(v, mine) {
					desc, _ := sharedDescribe(v, map[string][]byte{"B's version": mine, "the other": other, "the base": e.base})
					t.Errorf("%s holds %s, want B's version (%d bytes)", k, desc, len(mine))
				}
			}
			if len(copies) != 1 {
				t.Errorf("%d conflict copies %q, want exactly one (%s.conflict-HOST-TIME)", len(copies), copies, tc.name)
			}
			f.Close()
		})
	}
}

func firstN(s []string, n int) []string {
	if len(s) > n {
		return append(s[:n:n], fmt.Sprintf("... %d more", len(s)-n))
	}
	return s
}
