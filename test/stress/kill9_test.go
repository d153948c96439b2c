package stress

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io/fs"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keelfs/keelfs/test/harness"
)

func long() bool { return os.Getenv("KEELFS_STRESS") != "" }

func randBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// The ledger records what the mount acknowledged, and nothing else: a
// file's content counts once its close returned 0, a line of the log once
// the fsync after it returned 0, the growing file's bytes up to its last
// fsync that returned 0, a rename once the fsync of the target directory
// returned 0 after it.
type ledger struct {
	mu sync.Mutex

	files   map[string][]byte // closed new files
	written map[string]bool   // every line ever written to the log, acknowledged or not
	lines   []string          // acknowledged log lines, in order

	// temp files renamed into place. A file whose close returned 0 is
	// acknowledged under one of its two names; under the final name
	// only, once the directory fsync after the rename returned 0.
	renames []renameAck

	grow map[string]growAck // the writers that never close
}

type renameAck struct {
	tmp, final string
	data       []byte
	settled    bool // the fsync of final's directory returned 0 after the rename
}

type growAck struct {
	stream []byte // everything written, in order
	acked  int    // bytes up to the last fsync that returned 0
}

// load is one cycle's workers, writing through the mount until the
// daemon is killed.
type load struct {
	t      *testing.T
	m      *harness.Mount
	l      *ledger
	cycle  int
	killed atomic.Bool // set just before the SIGKILL: errors after it are expected
	wg     sync.WaitGroup
	errs   atomic.Int64 // errors seen after the kill (the mount died under the op)
}

// fail records an error of an operation: expected once the daemon is
// being killed, a test failure before.
func (ld *load) fail(op string, err error) {
	if ld.killed.Load() {
		ld.errs.Add(1)
		return
	}
	ld.t.Errorf("cycle %d: %s: %v (before the kill)", ld.cycle, op, err)
}

func (ld *load) start() {
	for _, w := range []func(){ld.newFiles, ld.appender, ld.renamer} {
		ld.wg.Add(1)
		go func() { defer ld.wg.Done(); w() }()
	}
	for g := 0; g < 3; g++ {
		ld.wg.Add(1)
		go func() { defer ld.wg.Done(); ld.grower(g) }()
	}
}

// newFiles writes new files of assorted sizes (some over the part size)
// and closes them.
func (ld *load) newFiles() {
	sizes := []int{0, 1, 3000, 100 << 10, 1<<20 + 7}
	for i := 0; !ld.killed.Load(); i++ {
		name := fmt.Sprintf("new/c%02d-%04d", ld.cycle, i)
		size := sizes[mrand.IntN(len(sizes))]
		if i%10 == 9 {
			size = 6<<20 + 3 // multipart, parts streamed while written
		}
		data := randBytes(size)
		f, err := os.Create(ld.m.Path(name))
		if err != nil {
			ld.fail("create "+name, err)
			return
		}
		if _, err := f.Write(data); err != nil {
			f.Close()
			ld.fail("write "+name, err)
			return
		}
		if err := f.Close(); err != nil {
			ld.fail("close "+name, err)
			return
		}
		ld.l.mu.Lock()
		ld.l.files[name] = data
		ld.l.mu.Unlock()
		time.Sleep(time.Duration(mrand.IntN(20)) * time.Millisecond)
	}
}

// appender appends lines to one log shared by all cycles, each followed
// by an fsync.
func (ld *load) appender() {
	name := "logs/app.log"
	f, err := os.OpenFile(ld.m.Path(name), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		ld.fail("open "+name, err)
		return
	}
	defer f.Close()
	for i := 0; !ld.killed.Load(); i++ {
		line := fmt.Sprintf("cycle %02d line %05d %x\n", ld.cycle, i, randBytes(8))
		ld.l.mu.Lock()
		ld.l.written[line] = true
		ld.l.mu.Unlock()
		if _, err := f.WriteString(line); err != nil {
			ld.fail("append to "+name, err)
			return
		}
		if err := f.Sync(); err != nil {
			ld.fail("fsync "+name, err)
			return
		}
		ld.l.mu.Lock()
		ld.l.lines = append(ld.l.lines, line)
		ld.l.mu.Unlock()
		time.Sleep(time.Duration(mrand.IntN(30)) * time.Millisecond)
	}
}

// renamer writes a temp file, fsyncs and closes it, renames it into
// place and fsyncs the target directory: the way to replace a file
// durably.
func (ld *load) renamer() {
	for i := 0; !ld.killed.Load(); i++ {
		tmp := fmt.Sprintf("tmp/c%02d-%04d.tmp", ld.cycle, i)
		final := fmt.Sprintf("final/c%02d-%04d", ld.cycle, i)
		data := randBytes(mrand.IntN(200 << 10))
		f, err := os.Create(ld.m.Path(tmp))
		if err != nil {
			ld.fail("create "+tmp, err)
			return
		}
		if _, err := f.Write(data); err != nil {
			f.Close()
			ld.fail("write "+tmp, err)
			return
		}
		if err := f.Sync(); err != nil {
			f.Close()
			ld.fail("fsync "+tmp, err)
			return
		}
		if err := f.Close(); err != nil {
			ld.fail("close "+tmp, err)
			return
		}
		ld.l.mu.Lock()
		ld.l.renames = append(ld.l.renames, renameAck{tmp: tmp, final: final, data: data})
		idx := len(ld.l.renames) - 1
		ld.l.mu.Unlock()
		if err := os.Rename(ld.m.Path(tmp), ld.m.Path(final)); err != nil {
			ld.fail("rename "+tmp, err)
			return
		}
		d, err := os.Open(ld.m.Path("final"))
		if err != nil {
			ld.fail("open final/", err)
			return
		}
		err = d.Sync()
		d.Close()
		if err != nil {
			ld.fail("fsync final/", err)
			return
		}
		ld.l.mu.Lock()
		ld.l.renames[idx].settled = true
		ld.l.mu.Unlock()
		time.Sleep(time.Duration(mrand.IntN(30)) * time.Millisecond)
	}
}

// grower writes a file it never closes, in 16 KiB writes, with an fsync
// every twelve of them (three 64 KiB blocks).
func (ld *load) grower(g int) {
	name := fmt.Sprintf("grow/c%02d-%d.bin", ld.cycle, g)
	f, err := os.Create(ld.m.Path(name))
	if err != nil {
		ld.fail("create "+name, err)
		return
	}
	// Never closed while the daemon lives: the kill ends it. The fd is
	// released when this goroutine returns.
	defer f.Close()
	for i := 1; !ld.killed.Load(); i++ {
		chunk := randBytes(16 << 10)
		ld.l.mu.Lock()
		g := ld.l.grow[name]
		g.stream = append(g.stream, chunk...)
		ld.l.grow[name] = g
		ld.l.mu.Unlock()
		if _, err := f.Write(chunk); err != nil {
			ld.fail("write "+name, err)
			return
		}
		if i%12 == 0 {
			if err := f.Sync(); err != nil {
				ld.fail("fsync "+name, err)
				return
			}
			ld.l.mu.Lock()
			g := ld.l.grow[name]
			g.acked = len(g.stream)
			ld.l.grow[name] = g
			ld.l.mu.Unlock()
		}
		time.Sleep(time.Duration(2+mrand.IntN(8)) * time.Millisecond)
	}
}

// TestStressKill9MixedLoad: cycles of load, kill -9 of the daemon in the
// middle of it, and a remount on the same cache directory; then a flush
// and the checks against S3 and the mount.
func TestStressKill9MixedLoad(t *testing.T) {
	cycles := 3
	if long() {
		cycles = 40
	}
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	m := srv.Mount(t, b, harness.MountOptions{Args: []string{"--block-size", "64K", "--part-size", "5M",
		"--write-back-delay", "300ms"}})
	// A kill leaves a dead mount (detached by the harness) and uploads
	// cut short, which the next mount finishes.
	m.AllowLog(`stale mount|upload failed; will retry|abort multipart upload|abort early upload|s3 request failed; retrying`)
	for _, d := range []string{"new", "logs", "tmp", "final", "grow"} {
		if err := os.Mkdir(m.Path(d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	l := &ledger{files: map[string][]byte{}, written: map[string]bool{}, grow: map[string]growAck{}}
	// What each remount showed of the files of the cycle before it:
	// nothing touches them again, so S3 must end up holding exactly that
	// (a remount must not show what it will never upload).
	shown := map[string][]byte{}
	start := time.Now()
	for c := 0; c < cycles; c++ {
		if c > 0 {
			m.Remount()
			for k, v := range cycleFiles(t, m.Dir, c-1) {
				shown[k] = v
			}
		}
		ld := &load{t: t, m: m, l: l, cycle: c}
		ld.start()
		time.Sleep(time.Duration(1000+mrand.IntN(1500)) * time.Millisecond)
		ld.killed.Store(true)
		m.Kill9()
		done := make(chan struct{})
		go func() { ld.wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Fatalf("cycle %d: the load's calls did not return 30s after the daemon was killed", c)
		}
		if t.Failed() {
			t.FailNow()
		}
		l.mu.Lock()
		t.Logf("cycle %d: killed; so far %d files, %d log lines, %d renames acknowledged; %d calls cut by the kill",
			c, len(l.files), len(l.lines), len(l.renames), ld.errs.Load())
		l.mu.Unlock()
	}
	m.Remount()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	fstart := time.Now()
	out, err := exec.CommandContext(ctx, harness.Binary(t), "flush", m.Dir).CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("keelfs flush after the last remount still running after 3 minutes: %s", tail(string(out), 1000))
	}
	if err != nil {
		t.Fatalf("keelfs flush after the last remount: %v\n%s", err, tail(string(out), 1000))
	}
	t.Logf("%d cycles in %v; flush after the last remount took %v", cycles, fstart.Sub(start).Round(time.Millisecond), time.Since(fstart).Round(time.Millisecond))

	bucket := bucketFiles(t, srv, b)
	checkAcknowledged(t, l, bucket)
	checkShown(t, l, shown, bucket)
	// The mount is the bucket's only writer: what it shows must not
	// change once its metadata TTL (1s) is over and it asks S3 again.
	sameFiles(t, l, "right after the flush", mountFiles(t, m.Dir), bucket)
	time.Sleep(1500 * time.Millisecond)
	sameFiles(t, l, "1.5s later", mountFiles(t, m.Dir), bucket)
}

// bucketFiles returns every object of the bucket but directory markers.
func bucketFiles(t *testing.T, srv *harness.Server, b string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	for _, k := range srv.Keys(t, b, "") {
		if strings.HasSuffix(k, "/") {
			continue
		}
		data, ok := srv.Get(t, b, k)
		if !ok {
			t.Fatalf("%s listed but gone", k)
		}
		out[k] = data
	}
	return out
}

// cycleFiles reads the files that cycle c created, as the mount shows
// them now.
func cycleFiles(t *testing.T, dir string, c int) map[string][]byte {
	t.Helper()
	tag := fmt.Sprintf("c%02d", c)
	out := map[string][]byte{}
	for k, v := range mountFiles(t, dir) {
		if strings.HasPrefix(filepath.Base(k), tag) {
			out[k] = v
		}
	}
	return out
}

// checkShown: what a remount showed of files nobody touched afterwards is
// what S3 holds at the end.
func checkShown(t *testing.T, l *ledger, shown, bucket map[string][]byte) {
	t.Helper()
	bad := 0
	for k, v := range shown {
		got, ok := bucket[k]
		if ok && bytes.Equal(got, v) {
			continue
		}
		bad++
		if bad <= 20 {
			t.Errorf("a remount showed %s with %d bytes (sha256 %x), untouched since; after the flush the bucket holds %d (present %v)%s",
				k, len(v), sha256.Sum256(v), len(got), ok, l.describe(k))
		}
	}
	t.Logf("files shown by the remounts and untouched since: %d, %d not what the bucket holds", len(shown), bad)
}

// mountFiles reads every regular file under dir.
func mountFiles(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		out[filepath.ToSlash(rel)] = data
		return nil
	})
	if err != nil {
		t.Fatalf("walk the mount: %v", err)
	}
	return out
}

func checkAcknowledged(t *testing.T, l *ledger, bucket map[string][]byte) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	lost := 0
	lose := func(format string, a ...any) {
		lost++
		if lost <= 20 {
			t.Errorf("LOST: "+format, a...)
		}
	}
	for name, data := range l.files {
		if got, ok := bucket[name]; !ok || !bytes.Equal(got, data) {
			lose("%s was closed (%d bytes); the bucket has %d bytes (present %v)", name, len(data), len(got), ok)
		}
	}

	// The log: every acknowledged line, in order, whole; other lines may
	// be there only if they were written.
	logData := bucket["logs/app.log"]
	var have []string
	for _, s := range strings.SplitAfter(string(logData), "\n") {
		if s != "" {
			have = append(have, s)
		}
	}
	unknown := 0
	for _, s := range have {
		if !l.written[s] {
			unknown++
			if unknown <= 5 {
				t.Errorf("logs/app.log in the bucket holds a line nobody wrote: %q", s)
			}
		}
	}
	j := 0
	for _, want := range l.lines {
		for j < len(have) && have[j] != want {
			j++
		}
		if j == len(have) {
			lose("logs/app.log: the acknowledged line %q is missing or out of order (%d lines acknowledged, %d in the bucket)",
				strings.TrimSpace(want), len(l.lines), len(have))
			break
		}
		j++
	}

	for _, r := range l.renames {
		atFinal := bytes.Equal(bucket[r.final], r.data)
		_, tmpThere := bucket[r.tmp]
		atTmp := tmpThere && bytes.Equal(bucket[r.tmp], r.data)
		switch {
		case r.settled && (!atFinal || tmpThere):
			lose("%s was renamed to %s and the directory fsynced; the bucket has it at the final name: %v, the temp name still there: %v",
				r.tmp, r.final, atFinal, tmpThere)
		case !atFinal && !atTmp:
			lose("%s (closed, %d bytes) is in the bucket under neither %s nor its temp name", r.tmp, len(r.data), r.final)
		}
	}

	for name, g := range l.grow {
		got := bucket[name]
		if len(got) < g.acked || !bytes.Equal(got[:g.acked], g.stream[:g.acked]) {
			lose("%s: %d bytes were fsynced by a writer that never closed; the bucket has %d bytes, not starting with them", name, g.acked, len(got))
		} else if len(got) > len(g.stream) || !bytes.Equal(got, g.stream[:len(got)]) {
			// Past the last fsync nothing was promised: note it only.
			t.Logf("note: %s: past the %d fsynced bytes the bucket holds bytes that were not written there (%d in all, %d written)",
				name, g.acked, len(got), len(g.stream))
		}
	}
	if lost > 20 {
		t.Errorf("... %d losses in all", lost)
	}
	settled, grown := 0, 0
	for _, r := range l.renames {
		if r.settled {
			settled++
		}
	}
	for _, g := range l.grow {
		grown += g.acked
	}
	t.Logf("checked against the bucket: %d closed files, %d fsynced log lines, %d renames (%d with the directory fsynced), %d never-closed files (%d bytes fsynced)",
		len(l.files), len(l.lines), len(l.renames), settled, len(l.grow), grown)
}

// sameFiles: after a flush, the mount shows the names and bytes S3 holds.
func sameFiles(t *testing.T, l *ledger, when string, mounted, bucket map[string][]byte) {
	t.Helper()
	var names []string
	for k := range mounted {
		names = append(names, k)
	}
	for k := range bucket {
		if _, ok := mounted[k]; !ok {
			names = append(names, k)
		}
	}
	sort.Strings(names)
	diffs := 0
	for _, k := range names {
		a, inMount := mounted[k]
		s, inBucket := bucket[k]
		var msg string
		switch {
		case !inMount:
			msg = fmt.Sprintf("%s: %s is in the bucket (%d bytes), not in the mount", when, k, len(s))
		case !inBucket:
			msg = fmt.Sprintf("%s: %s is in the mount (%d bytes), not in the bucket", when, k, len(a))
		case !bytes.Equal(a, s):
			msg = fmt.Sprintf("%s: %s: the mount shows %d bytes (sha256 %x), the bucket holds %d (sha256 %x)%s",
				when, k, len(a), sha256.Sum256(a), len(s), sha256.Sum256(s), l.describe(k))
		default:
			continue
		}
		diffs++
		if diffs <= 20 {
			t.Error(msg)
		}
	}
	if diffs > 20 {
		t.Errorf("... %d differences in all", diffs)
	}
	t.Logf("mount and bucket compared %s: %d files, %d differences", when, len(names), diffs)
}

// describe says what the ledger knows of name, for a failure message.
func (l *ledger) describe(name string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if g, ok := l.grow[name]; ok {
		return fmt.Sprintf(" (never closed: %d bytes written, %d fsynced)", len(g.stream), g.acked)
	}
	if name == "logs/app.log" {
		n := 0
		for _, s := range l.lines {
			n += len(s)
		}
		return fmt.Sprintf(" (%d lines fsynced, %d bytes; %d lines written)", len(l.lines), n, len(l.written))
	}
	return ""
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}
