// Package model runs the same random filesystem operations on a keelfs
// mount and on a local directory, remounting and killing the daemon in
// between, and compares the two trees, byte for byte, after every step,
// and the bucket with the local tree at the end.
//
// Reproduce a failure with KEELFS_MODEL_SEED=<seed printed by the test>.
// KEELFS_STRESS=1 runs the long form (make stress).
package model

import (
	"bytes"
	"fmt"
	"io/fs"
	"math/rand"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keelfs/keelfs/test/harness"
)

type world struct {
	t     *testing.T
	rng   *rand.Rand
	local string
	m     *harness.Mount
	log   []string
}

var dirs = []string{"", "a", "b", "a/c"}
var names = []string{"f0", "f1", "f2", "f3", "log", "big"}

func (w *world) pickDir() string {
	// Only directories that exist locally.
	var live []string
	for _, d := range dirs {
		if st, err := os.Stat(filepath.Join(w.local, d)); err == nil && st.IsDir() {
			live = append(live, d)
		}
	}
	return live[w.rng.Intn(len(live))]
}

func (w *world) pickFile() (string, bool) {
	var files []string
	filepath.WalkDir(w.local, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(w.local, p)
			files = append(files, rel)
		}
		return nil
	})
	sort.Strings(files)
	if len(files) == 0 {
		return "", false
	}
	return files[w.rng.Intn(len(files))], true
}

func (w *world) randData() []byte {
	n := w.rng.Intn(70 << 10)
	if w.rng.Intn(15) == 0 {
		n = 5<<20 + w.rng.Intn(4<<20) // multipart sizes
	}
	b := make([]byte, n)
	w.rng.Read(b)
	return b
}

// both applies op to the local tree and the mount and checks that they
// fail or succeed alike.
func (w *world) both(desc string, op func(root string) error) {
	w.t.Helper()
	w.log = append(w.log, desc)
	errL := op(w.local)
	errM := op(w.m.Dir)
	if (errL == nil) != (errM == nil) || (errL != nil && errnoOf(errL) != errnoOf(errM)) {
		w.fail("%s: local error %v, mount error %v", desc, errL, errM)
	}
}

func errnoOf(err error) syscall.Errno {
	for err != nil {
		if e, ok := err.(syscall.Errno); ok {
			return e
		}
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return 0
		}
		err = u.Unwrap()
	}
	return 0
}

func (w *world) fail(format string, a ...any) {
	w.t.Helper()
	start := max(0, len(w.log)-30)
	w.t.Fatalf("%s\nlast operations:\n  %s", fmt.Sprintf(format, a...), strings.Join(w.log[start:], "\n  "))
}

func (w *world) step() {
	r := w.rng
	switch k := r.Intn(100); {
	case k < 25: // pwrite at a random offset
		p := filepath.Join(w.pickDir(), names[r.Intn(len(names))])
		data := w.randData()
		off := int64(r.Intn(200 << 10))
		w.both(fmt.Sprintf("pwrite %s at %d, %d bytes", p, off, len(data)), func(root string) error {
			f, err := os.OpenFile(filepath.Join(root, p), os.O_RDWR|os.O_CREATE, 0o644)
			if err != nil {
				return err
			}
			_, err = f.WriteAt(data, off)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			return err
		})
	case k < 40: // append
		p := filepath.Join(w.pickDir(), names[r.Intn(len(names))])
		line := []byte(fmt.Sprintf("line %d %s\n", r.Int(), strings.Repeat("x", r.Intn(100))))
		w.both("append "+p, func(root string) error {
			f, err := os.OpenFile(filepath.Join(root, p), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
			if err != nil {
				return err
			}
			_, err = f.Write(line)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			return err
		})
	case k < 50: // truncate
		p, ok := w.pickFile()
		if !ok {
			return
		}
		size := int64(r.Intn(300 << 10))
		w.both(fmt.Sprintf("truncate %s %d", p, size), func(root string) error {
			return os.Truncate(filepath.Join(root, p), size)
		})
	case k < 62: // rename a file, maybe over another
		p, ok := w.pickFile()
		if !ok {
			return
		}
		dst := filepath.Join(w.pickDir(), names[r.Intn(len(names))])
		w.both(fmt.Sprintf("rename %s %s", p, dst), func(root string) error {
			return os.Rename(filepath.Join(root, p), filepath.Join(root, dst))
		})
	case k < 70: // unlink
		p, ok := w.pickFile()
		if !ok {
			return
		}
		w.both("unlink "+p, func(root string) error { return os.Remove(filepath.Join(root, p)) })
	case k < 76: // mkdir
		d := dirs[1+r.Intn(len(dirs)-1)]
		w.both("mkdir "+d, func(root string) error { return os.Mkdir(filepath.Join(root, d), 0o755) })
	case k < 80: // rename a directory and back later by chance
		src := dirs[1+r.Intn(len(dirs)-1)]
		dst := dirs[1+r.Intn(len(dirs)-1)]
		w.both(fmt.Sprintf("rename dir %s %s", src, dst), func(root string) error {
			return os.Rename(filepath.Join(root, src), filepath.Join(root, dst))
		})
	case k < 84: // rmdir
		d := dirs[1+r.Intn(len(dirs)-1)]
		w.both("rmdir "+d, func(root string) error { return syscall.Rmdir(filepath.Join(root, d)) })
	case k < 90: // fsync
		p, ok := w.pickFile()
		if !ok {
			return
		}
		w.both("fsync "+p, func(root string) error {
			f, err := os.OpenFile(filepath.Join(root, p), os.O_RDWR, 0)
			if err != nil {
				return err
			}
			defer f.Close()
			return f.Sync()
		})
	case k < 95: // clean remount
		w.log = append(w.log, "remount (SIGTERM)")
		if code := w.m.Stop(); code != 0 {
			w.fail("SIGTERM: exit %d", code)
		}
		w.m.Remount()
	default: // crash
		w.log = append(w.log, "kill -9 and remount")
		w.m.Kill9()
		w.m.Remount()
	}
}

// compare checks that the mount shows exactly the local tree.
func (w *world) compare() {
	w.t.Helper()
	type entry struct {
		dir  bool
		data []byte
	}
	walk := func(root string) map[string]entry {
		out := map[string]entry{}
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(root, p)
			if rel == "." {
				return nil
			}
			if d.IsDir() {
				out[rel] = entry{dir: true}
				return nil
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			out[rel] = entry{data: b}
			return nil
		})
		if err != nil {
			w.fail("walk %s: %v", root, err)
		}
		return out
	}
	l, m := walk(w.local), walk(w.m.Dir)
	for k, le := range l {
		me, ok := m[k]
		switch {
		case !ok:
			w.fail("%s exists locally but not on the mount", k)
		case le.dir != me.dir:
			w.fail("%s: dir %v locally, %v on the mount", k, le.dir, me.dir)
		case !bytes.Equal(le.data, me.data):
			w.fail("%s: %s", k, describeDiff(le.data, me.data))
		}
	}
	for k := range m {
		if _, ok := l[k]; !ok {
			w.fail("%s exists on the mount but not locally", k)
		}
	}
}

func TestModel(t *testing.T) {
	steps := 150
	if os.Getenv("KEELFS_STRESS") != "" {
		steps = 3000
	}
	if s := os.Getenv("KEELFS_MODEL_STEPS"); s != "" {
		steps, _ = strconv.Atoi(s)
	}
	seed := time.Now().UnixNano()
	if s := os.Getenv("KEELFS_MODEL_SEED"); s != "" {
		seed, _ = strconv.ParseInt(s, 10, 64)
	}
	t.Logf("seed %d (rerun with KEELFS_MODEL_SEED=%d), %d steps", seed, seed, steps)
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	m := srv.Mount(t, b+"/model", harness.MountOptions{Args: []string{"--block-size", "64K", "--part-size", "5M", "--write-back-delay", "200ms"}})
	m.AllowLog(`stale mount`)
	w := &world{t: t, rng: rand.New(rand.NewSource(seed)), local: t.TempDir(), m: m}
	for i := 0; i < steps; i++ {
		w.step()
		w.compare()
	}
	m.Flush()
	bucketMatches(t, srv, b, "model/", w.local)
	// And a fresh mount with an empty cache sees the same tree, from S3 alone.
	m.Stop()
	fresh := srv.Mount(t, b+"/model", harness.MountOptions{})
	w.m = fresh
	w.compare()
}

// describeDiff says where two contents first differ and how.
func describeDiff(want, got []byte) string {
	i := 0
	for i < len(want) && i < len(got) && want[i] == got[i] {
		i++
	}
	j := i
	for j < len(want) && j < len(got) && want[j] != got[j] {
		j++
	}
	snip := func(b []byte) string {
		end := min(len(b), i+24)
		if i >= len(b) {
			return "(end)"
		}
		return fmt.Sprintf("%q", b[i:end])
	}
	return fmt.Sprintf("local %d bytes, mount %d bytes; first difference at offset %d (block %d of 64K), differing run ends at %d; local %s, mount %s",
		len(want), len(got), i, i/(64<<10), j, snip(want), snip(got))
}

// bucketMatches checks the objects under prefix against the local tree.
func bucketMatches(t *testing.T, srv *harness.Server, bucket, prefix, dir string) {
	t.Helper()
	want := map[string][]byte{}
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(dir, p)
			b, _ := os.ReadFile(p)
			want[prefix+filepath.ToSlash(rel)] = b
		}
		return nil
	})
	for _, k := range srv.Keys(t, bucket, prefix) {
		if strings.HasSuffix(k, "/") {
			continue
		}
		w, ok := want[k]
		if !ok {
			t.Errorf("bucket has %q, the local tree does not", k)
			continue
		}
		got, _ := srv.Get(t, bucket, k)
		if !bytes.Equal(got, w) {
			t.Errorf("%q differs in the bucket (%d bytes, want %d)", k, len(got), len(w))
		}
		delete(want, k)
	}
	for k := range want {
		t.Errorf("bucket lacks %q", k)
	}
}
