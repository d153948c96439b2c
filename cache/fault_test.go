package cache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keelfs/keelfs/s3backend"
)

// flakyStore wraps an ObjectStore and makes it fail at random, the ways
// S3 does once the SDK's own retries are spent: a request refused before
// it did anything (ErrUnavailable, ErrThrottled), a write that took effect
// but whose answer was lost, and a GET body that breaks off after some
// bytes. Faults happen only while on is set.
type flakyStore struct {
	s3backend.ObjectStore
	on   atomic.Bool
	rate int // one request in rate fails

	mu  sync.Mutex // guards rng
	rng *rand.Rand

	refused, lost, broken atomic.Int64
}

func newFlakyStore(s s3backend.ObjectStore, seed uint64, rate int) *flakyStore {
	return &flakyStore{ObjectStore: s, rate: rate, rng: rand.New(rand.NewPCG(seed, seed^0x5eed))}
}

func (f *flakyStore) roll(n int) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.rng.IntN(n)
}

// before fails a request before it reaches the store, sometimes.
func (f *flakyStore) before(op, key string) error {
	if !f.on.Load() || f.roll(f.rate) != 0 {
		return nil
	}
	f.refused.Add(1)
	if f.roll(2) == 0 {
		return &s3backend.Error{Op: op, Key: key, Status: 503, Code: "SlowDown", Kind: s3backend.ErrThrottled, Cause: errors.New("injected")}
	}
	return &s3backend.Error{Op: op, Key: key, Status: 500, Code: "InternalError", Kind: s3backend.ErrUnavailable, Cause: errors.New("injected")}
}

// after turns a successful write into a lost answer, sometimes.
func (f *flakyStore) after(op, key string, err error) error {
	if err != nil || !f.on.Load() || f.roll(f.rate) != 0 {
		return err
	}
	f.lost.Add(1)
	return &s3backend.Error{Op: op, Key: key, Kind: s3backend.ErrUnavailable, Cause: errors.New("injected: answer lost")}
}

func (f *flakyStore) Head(ctx context.Context, key string) (s3backend.ObjectInfo, error) {
	if err := f.before("HeadObject", key); err != nil {
		return s3backend.ObjectInfo{}, err
	}
	return f.ObjectStore.Head(ctx, key)
}

func (f *flakyStore) Get(ctx context.Context, key string, off, length int64, etag string) (io.ReadCloser, error) {
	if err := f.before("GetObject", key); err != nil {
		return nil, err
	}
	body, err := f.ObjectStore.Get(ctx, key, off, length, etag)
	if err != nil || !f.on.Load() || f.roll(f.rate) != 0 {
		return body, err
	}
	// The body breaks off after some bytes, as s3backend reports a
	// connection cut mid-body: the bytes before are right, then an error.
	f.broken.Add(1)
	limit := int64(f.roll(200 << 10))
	return &brokenBody{r: io.LimitReader(body, limit), c: body, key: key}, nil
}

type brokenBody struct {
	r   io.Reader
	c   io.Closer
	key string
}

func (b *brokenBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err == io.EOF {
		err = &s3backend.Error{Op: "GetObject", Key: b.key, Kind: s3backend.ErrUnavailable, Cause: io.ErrUnexpectedEOF}
	}
	return n, err
}

func (b *brokenBody) Close() error { return b.c.Close() }

func (f *flakyStore) List(ctx context.Context, in s3backend.ListInput, fn func(s3backend.ListEntry) error) error {
	if err := f.before("ListObjectsV2", in.Prefix); err != nil {
		return err
	}
	return f.ObjectStore.List(ctx, in, fn)
}

func (f *flakyStore) Put(ctx context.Context, in s3backend.PutInput) (string, error) {
	if err := f.before("PutObject", in.Key); err != nil {
		return "", err
	}
	etag, err := f.ObjectStore.Put(ctx, in)
	if err = f.after("PutObject", in.Key, err); err != nil {
		return "", err
	}
	return etag, nil
}

func (f *flakyStore) Copy(ctx context.Context, in s3backend.CopyInput) (string, error) {
	if err := f.before("CopyObject", in.Dst); err != nil {
		return "", err
	}
	etag, err := f.ObjectStore.Copy(ctx, in)
	if err = f.after("CopyObject", in.Dst, err); err != nil {
		return "", err
	}
	return etag, nil
}

func (f *flakyStore) Delete(ctx context.Context, key string, cond s3backend.Condition) error {
	if err := f.before("DeleteObject", key); err != nil {
		return err
	}
	return f.after("DeleteObject", key, f.ObjectStore.Delete(ctx, key, cond))
}

func (f *flakyStore) CreateMultipart(ctx context.Context, key string, meta s3backend.Metadata, ct string) (string, error) {
	if err := f.before("CreateMultipartUpload", key); err != nil {
		return "", err
	}
	return f.ObjectStore.CreateMultipart(ctx, key, meta, ct)
}

func (f *flakyStore) UploadPart(ctx context.Context, in s3backend.UploadPartInput) (string, error) {
	if err := f.before("UploadPart", in.Key); err != nil {
		return "", err
	}
	etag, err := f.ObjectStore.UploadPart(ctx, in)
	if err = f.after("UploadPart", in.Key, err); err != nil {
		return "", err
	}
	return etag, nil
}

func (f *flakyStore) UploadPartCopy(ctx context.Context, in s3backend.UploadPartCopyInput) (string, error) {
	if err := f.before("UploadPartCopy", in.Key); err != nil {
		return "", err
	}
	return f.ObjectStore.UploadPartCopy(ctx, in)
}

func (f *flakyStore) CompleteMultipart(ctx context.Context, key, id string, parts []s3backend.CompletedPart, cond s3backend.Condition) (string, error) {
	if err := f.before("CompleteMultipartUpload", key); err != nil {
		return "", err
	}
	etag, err := f.ObjectStore.CompleteMultipart(ctx, key, id, parts, cond)
	if err = f.after("CompleteMultipartUpload", key, err); err != nil {
		return "", err
	}
	return etag, nil
}

// transient reports whether err is what a failing S3 may legitimately
// cause: the request failed, try again later. Anything else (ENOENT for a
// file that exists, corruption) is a bug under these faults.
//
// ErrStale is tolerated too, for now: when an upload lands but its answer
// is lost, the inode still names the old ETag until the retry finds its
// own upload token, so fetching an evicted unchanged block of that file
// meets a 412 (see TestFaultRandomStoreErrors's log for how often).
func transient(err error) bool {
	return errors.Is(err, s3backend.ErrUnavailable) || errors.Is(err, s3backend.ErrThrottled) ||
		errors.Is(err, ErrUploadFailed) || errors.Is(err, ErrStale)
}

// TestFaultRandomStoreErrors runs random writes, overwrites, appends,
// truncates, fsyncs and reads through the cache while the store fails one
// request in four. Reads may fail, but never return a wrong byte; writes
// never fail because of S3; once the faults stop everything reaches the
// store exactly, and the cache works again without a reopen.
// KEELFS_FAULT_SEED replays a run's operations (which requests fail also
// depends on the uploader's timing); KEELFS_STRESS=1 runs more steps.
func TestFaultRandomStoreErrors(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("KEELFS_FAULT_SEED"); s != "" {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	steps := 150
	if os.Getenv("KEELFS_STRESS") != "" {
		steps = 3000
	}
	t.Logf("seed %d (rerun with KEELFS_FAULT_SEED=%d), %d steps", seed, seed, steps)
	var fs *flakyStore
	e := newEnv(t, func(o *Options) {
		fs = newFlakyStore(o.Store, seed, 4)
		o.Store = fs
		// Small enough that clean blocks are evicted and read again from
		// the store; large enough for all the dirty data the writes below
		// can leave while uploads fail (writers would wait, then ENOSPC).
		o.CacheSize = 16 << 20
		o.WriteBackDelay = 20 * time.Millisecond
	})
	for _, s := range []string{"upload failed; will retry", "read from s3 broke off", "abort multipart upload",
		"delete failed; will retry", "read attributes"} {
		e.logs.allow(s)
	}
	rng := rand.New(rand.NewPCG(seed, 1))
	bs := int(e.opt.BlockSize)
	randData := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	// model holds what every file must read as; objects in the store
	// before the test are files too.
	model := map[string][]byte{}
	// history keeps the first bytes of every version of every file, to
	// tell a stale read (an older version) from garbage.
	history := map[string][][]byte{}
	remember := func(name string) {
		v := model[name]
		history[name] = append(history[name], bytes.Clone(v[:min(len(v), 16*bs)]))
	}
	for i := 0; i < 4; i++ {
		name := fmt.Sprintf("pre%d", i)
		model[name] = randData(rng.IntN(20 * bs))
		e.store.PutObject(name, model[name], nil)
		remember(name)
	}
	model["pre-multipart"] = randData(6<<20 + 5)
	e.store.PutObject("pre-multipart", model["pre-multipart"], nil)
	remember("pre-multipart")
	// pre-multipart is only read; big is the one file written past the
	// part size; the others stay under 16 blocks.
	names := []string{"a", "b", "c", "d", "big", "pre0", "pre1", "pre2", "pre3", "pre-multipart"}
	const maxSmall = 16

	var readsOK, readsFailed, readsStale, writesFailed, fsyncFailed, lookupsFailed int
	var ops []string
	defer func() {
		if t.Failed() {
			t.Logf("operations: %s", strings.Join(ops[max(0, len(ops)-60):], "; "))
			e.logs.mu.Lock()
			t.Logf("cache log:\n%s", strings.Join(e.logs.lines[max(0, len(e.logs.lines)-60):], ""))
			e.logs.mu.Unlock()
		}
	}()
	// lookup resolves name under the root, tolerating transient errors.
	lookup := func(name string) (Attr, bool) {
		a, err := e.c.Lookup(ctx, RootIno, name)
		_, exists := model[name]
		switch {
		case err == nil && !exists:
			t.Fatalf("lookup %q: found a file that was never written", name)
		case err == nil:
			return a, true
		case !exists && errors.Is(err, ErrNotExist):
		case transient(err):
			lookupsFailed++
		default:
			t.Fatalf("lookup %q: %v (exists: %v)", name, err, exists)
		}
		return Attr{}, false
	}
	// check reads name whole and compares every byte that came back.
	check := func(name string) {
		a, ok := lookup(name)
		if !ok {
			return
		}
		want := model[name]
		if a.Size != int64(len(want)) {
			t.Fatalf("%s: size %d, want %d", name, a.Size, len(want))
		}
		h, _, err := e.c.Open(ctx, a.Ino, false, false)
		if err != nil {
			if !transient(err) {
				t.Fatalf("open %s: %v", name, err)
			}
			readsFailed++
			return
		}
		defer h.Release(ctx)
		buf := make([]byte, 3*bs+17) // reads straddle blocks
		for off := 0; ; {
			n, err := h.Read(ctx, buf, int64(off))
			if off+n > len(want) || !bytes.Equal(buf[:n], want[off:off+n]) {
				t.Fatalf("CORRUPT READ of %s at %d: %d bytes differ from what was written: %s", name, off, n,
					describeMismatch(buf[:n], want[min(off, len(want)):min(off+n, len(want))], off, bs, history[name]))
			}
			if err != nil {
				if errors.Is(err, ErrStale) {
					readsStale++
					ops = append(ops, fmt.Sprintf("STALE read %s at %d: %v", name, off, err))
					return
				}
				if !transient(err) {
					t.Fatalf("read %s at %d: %v", name, off, err)
				}
				readsFailed++
				return
			}
			if n == 0 {
				if off != len(want) {
					t.Fatalf("SHORT READ of %s: ends at %d, want %d", name, off, len(want))
				}
				readsOK++
				return
			}
			off += n
		}
	}
	// write applies one random change to name through the cache, and to
	// the model.
	write := func(name string) {
		if name == "pre-multipart" {
			check(name)
			return
		}
		a, ok := lookup(name)
		if !ok {
			if _, exists := model[name]; exists {
				return
			}
			var err error
			if a, err = e.c.Create(ctx, RootIno, name, 0o644, 1, 1); err != nil {
				if transient(err) {
					return
				}
				t.Fatalf("create %s: %v", name, err)
			}
			model[name] = []byte{}
			remember(name)
		}
		h, _, err := e.c.Open(ctx, a.Ino, true, false)
		if err != nil {
			if transient(err) {
				return
			}
			t.Fatalf("open %s for writing: %v", name, err)
		}
		cur := model[name]
		var data []byte
		var off int
		op := rng.IntN(5)
		if name != "big" && len(cur) > (maxSmall-4)*bs {
			op = 4
		}
		switch op {
		case 0: // overwrite somewhere inside
			off = rng.IntN(len(cur) + 1)
			data = randData(rng.IntN(2 * bs))
		case 1: // append
			off, data = len(cur), randData(rng.IntN(3*bs))
		case 2: // sparse, past the end
			off, data = len(cur)+rng.IntN(2*bs), randData(1+rng.IntN(100))
		case 3: // big grows into multipart; the others get a small rewrite
			if name == "big" && len(cur) < 5<<20 {
				off, data = len(cur), randData(5<<20-len(cur)+rng.IntN(512<<10))
			} else {
				off, data = 0, randData(rng.IntN(bs))
			}
		case 4: // truncate, shorter or longer
			size := rng.IntN(min(len(cur)+bs, maxSmall*bs))
			if name == "big" {
				size = rng.IntN(len(cur) + bs)
			}
			if err := e.c.Truncate(ctx, a.Ino, int64(size)); err != nil {
				if transient(err) {
					h.Release(ctx)
					return
				}
				t.Fatalf("truncate %s: %v", name, err)
			}
			nb := make([]byte, size)
			copy(nb, cur)
			model[name] = nb
			remember(name)
			ops = append(ops, fmt.Sprintf("  truncate %s %d->%d", name, len(cur), size))
			e.close(h)
			return
		}
		n, err := h.Write(ctx, data, int64(off))
		if err != nil {
			if transient(err) { // a read-modify-write may need a block from S3
				writesFailed++
				h.Release(ctx)
				return
			}
			t.Fatalf("write %s: %v", name, err)
		}
		if n < len(data) {
			// A short write: a later block needed its old content from S3
			// and the fetch failed. The application writes the rest again
			// (and then sees the error); the first n bytes are in.
			writesFailed++
			data = data[:n]
		}
		if end := off + len(data); end > len(cur) {
			cur = append(cur, make([]byte, end-len(cur))...)
		}
		copy(cur[off:], data)
		model[name] = cur
		remember(name)
		ops = append(ops, fmt.Sprintf("  write %s op %d at %d len %d -> size %d", name, op, off, len(data), len(cur)))
		if rng.IntN(6) == 0 {
			if err := h.Fsync(ctx); err != nil && !transient(err) {
				t.Fatalf("fsync %s: %v", name, err)
			} else if err != nil {
				fsyncFailed++
			}
		}
		e.close(h) // close must never fail because of S3
	}

	fs.on.Store(true)
	for i := 0; i < steps; i++ {
		name := names[rng.IntN(len(names))]
		if rng.IntN(2) == 0 {
			ops = append(ops, "write "+name)
			write(name)
		} else if _, ok := model[name]; ok {
			ops = append(ops, "read "+name)
			check(name)
		}
		if rng.IntN(10) == 0 {
			e.clock.Advance(2 * e.opt.MetadataTTL) // let listings and HEADs go to the store again
		}
	}
	fs.on.Store(false)
	t.Logf("under faults: %d reads whole, %d failed (%d stale); %d writes, %d lookups and %d fsyncs failed; injected %d refusals, %d lost answers, %d broken bodies",
		readsOK, readsFailed+readsStale, readsStale, writesFailed, lookupsFailed, fsyncFailed, fs.refused.Load(), fs.lost.Load(), fs.broken.Load())
	if fs.refused.Load()+fs.lost.Load()+fs.broken.Load() == 0 {
		t.Fatal("no fault was injected: the test did not test anything")
	}

	// Once the store behaves, everything reaches it exactly...
	e.drain()
	for name, want := range model {
		if got := e.object(name); !bytes.Equal(got, want) {
			t.Errorf("LOST: %s in the store has %d bytes, written %d (or different content)", name, len(got), len(want))
		}
	}
	eqKeys(t, e.keys(), names2keys(model)...)
	e.waitNoUploads() // those whose abort failed are aborted in the background
	if n := e.c.Stats().Conflicts.Load(); n != 0 {
		t.Errorf("%d conflicts from our own retried uploads", n)
	}
	// ...every read works again, from the store...
	e.clock.Advance(2 * e.opt.MetadataTTL)
	readsFailed = 0
	for name := range model {
		check(name)
	}
	if readsFailed != 0 {
		t.Errorf("%d reads still fail after the faults stopped", readsFailed)
	}
	// ...and so does a new write, without a reopen.
	h := e.openW("after")
	if _, err := h.Write(ctx, []byte("recovered"), 0); err != nil {
		t.Fatal(err)
	}
	if err := h.Fsync(ctx); err != nil {
		t.Fatalf("fsync after the faults stopped: %v", err)
	}
	e.close(h)
	if got := string(e.object("after")); got != "recovered" {
		t.Fatalf("after = %q", got)
	}
}

// describeMismatch says where got differs from want (both read at off)
// and whether got matches an older version of the file there.
func describeMismatch(got, want []byte, off, bs int, versions [][]byte) string {
	var blocks []string
	for b := 0; b*bs < len(got); b++ {
		g := got[b*bs : min((b+1)*bs, len(got))]
		w := want[min(b*bs, len(want)):min((b+1)*bs, len(want))]
		if bytes.Equal(g, w) {
			continue
		}
		what := "garbage"
		if !bytes.ContainsFunc(g, func(r rune) bool { return r != 0 }) {
			what = "zeros"
		}
		for i := len(versions) - 1; i >= 0; i-- {
			v := versions[i]
			lo, hi := off+b*bs, off+b*bs+len(g)
			if hi <= len(v) && bytes.Equal(v[lo:hi], g) {
				what = fmt.Sprintf("version %d of %d", i, len(versions))
				break
			}
		}
		blocks = append(blocks, fmt.Sprintf("block %d: %s", (off+b*bs)/bs, what))
	}
	return fmt.Sprintf("got %d want %d bytes; %s", len(got), len(want), strings.Join(blocks, ", "))
}

func names2keys(m map[string][]byte) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	return keys
}

// TestFsyncNewHandleWaitsForClosedWrites: fsync on a descriptor opened
// after the writes were closed (as `sync FILE` or `dd conv=fsync` does)
// still waits until they are in S3. It used to return at once, because a
// freshly loaded inode state counted no changes to wait for.
func TestFsyncNewHandleWaitsForClosedWrites(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.WriteBackDelay = time.Hour })
	for i, write := range []bool{false, true} {
		want := fmt.Sprintf("closed before the fsync, round %d", i)
		e.write("f", 0, []byte(want))
		a := e.mustLookup("f")
		h, _, err := e.c.Open(ctx, a.Ino, write, false)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.Fsync(ctx); err != nil {
			t.Fatalf("fsync: %v", err)
		}
		if got, _, ok := e.store.Object("f"); !ok || string(got) != want {
			t.Fatalf("fsync on a new handle returned; the store has %q (%v), want %q", got, ok, want)
		}
		e.close(h)
	}
}

// TestLostAnswerPartialEdit: an edit that changes part of a file whose
// other blocks were never read (an append) is uploaded, S3 applies it, and
// the answer is lost. The retry must not stall: the unchanged blocks can
// no longer be fetched from the version the edit started from (412), but
// the object that replaced it is our own upload, which holds the same
// bytes there. It used to retry forever ("upload failed; will retry"), so
// that flush and SIGTERM never finished.
func TestLostAnswerPartialEdit(t *testing.T) {
	for _, c := range []struct {
		size  int
		every bool // touch every part, so that no part is copied server-side
	}{{3 << 20, false}, {12 << 20, false}, {12 << 20, true}} {
		size := c.size
		t.Run(fmt.Sprintf("%dMiB-every-part-%v", size>>20, c.every), func(t *testing.T) {
			var wrapped *lostAnswersAll
			e := newEnv(t, func(o *Options) {
				wrapped = &lostAnswersAll{ObjectStore: o.Store}
				o.Store = wrapped
				o.CacheSize = 8 * o.BlockSize // the unchanged blocks do not stay cached
			})
			e.logs.allow("upload failed; will retry")
			base := randBytes(size)
			e.store.PutObject("log", base, nil)
			e.mustLookup("log")
			wrapped.n.Store(1)
			tail := []byte("one more line\n")
			if c.every {
				h := e.openW("log")
				for off := 0; off < size; off += int(e.opt.PartSize) {
					if _, err := h.Write(ctx, []byte{'#'}, int64(off)); err != nil {
						t.Fatal(err)
					}
					base[off] = '#'
				}
				e.close(h)
			}
			e.write("log", int64(size), tail)
			dctx, cancel := context.WithTimeout(ctx, 15*time.Second)
			defer cancel()
			if left, err := e.c.Drain(dctx); err != nil || len(left) > 0 {
				t.Fatalf("drain after a lost answer: %v, left %v", err, left)
			}
			if got := e.object("log"); !bytes.Equal(got, append(base, tail...)) {
				t.Fatalf("log in the store: %d bytes, want %d", len(got), size+len(tail))
			}
			if n := e.c.Stats().Conflicts.Load(); n != 0 {
				t.Fatalf("%d conflicts from our own upload", n)
			}
			eqKeys(t, e.keys(), "log")
		})
	}
}

// lostAnswersAll loses the answer of the next n writes that complete an
// object (PUT or CompleteMultipartUpload) after the store applied them.
type lostAnswersAll struct {
	s3backend.ObjectStore
	n atomic.Int32
}

func (l *lostAnswersAll) lose(key string) error {
	if l.n.Add(-1) >= 0 {
		return &s3backend.Error{Op: "PutObject", Key: key, Kind: s3backend.ErrUnavailable, Cause: errors.New("answer lost")}
	}
	return nil
}

func (l *lostAnswersAll) Put(ctx context.Context, in s3backend.PutInput) (string, error) {
	etag, err := l.ObjectStore.Put(ctx, in)
	if err == nil {
		if err := l.lose(in.Key); err != nil {
			return "", err
		}
	}
	return etag, err
}

func (l *lostAnswersAll) CompleteMultipart(ctx context.Context, key, id string, parts []s3backend.CompletedPart, cond s3backend.Condition) (string, error) {
	etag, err := l.ObjectStore.CompleteMultipart(ctx, key, id, parts, cond)
	if err == nil {
		if err := l.lose(key); err != nil {
			return "", err
		}
	}
	return etag, err
}

// TestFsyncReportsAccessDenied: when S3 refuses the write (read-only
// credentials or policy), fsync says so (the S3 error, EACCES at the
// FUSE boundary) rather than a generic upload failure (EIO); the data
// stays pending and lands once writing is allowed.
func TestFsyncReportsAccessDenied(t *testing.T) {
	e := newEnv(t, nil)
	e.logs.allow("access denied") // an ERROR: not retried until a flush
	e.logs.allow("upload succeeded after failed attempts")
	var deny atomic.Bool
	deny.Store(true)
	e.store.SetHook(func(op, key string) error {
		if op == "Put" && deny.Load() {
			return &s3backend.Error{Op: "PutObject", Key: key, Status: 403, Code: "AccessDenied", Kind: s3backend.ErrAccessDenied, Cause: errors.New("injected")}
		}
		return nil
	})
	h := e.openW("f")
	if _, err := h.Write(ctx, []byte("data"), 0); err != nil {
		t.Fatal(err)
	}
	err := h.Fsync(ctx)
	if !errors.Is(err, s3backend.ErrAccessDenied) || errors.Is(err, ErrUploadFailed) {
		t.Fatalf("fsync with writes denied: %v, want the access-denied error", err)
	}
	e.close(h)
	deny.Store(false)
	e.drain()
	if got := string(e.object("f")); got != "data" {
		t.Fatalf("f = %q", got)
	}
}

// TestLostAnswerThenManyFailures: an upload lands but its answer is lost,
// then many more attempts fail before reaching S3 (an outage). When S3 is
// back, the next attempt meets a 412 and finds an upload token on the
// object: it must still know the token as its own. It used to keep only
// the last 8, so after a long enough outage it took its own upload for
// another writer's: a conflict copy, and the name back at an older
// version.
func TestLostAnswerThenManyFailures(t *testing.T) {
	var wrapped *lostAnswersAll
	e := newEnv(t, func(o *Options) {
		wrapped = &lostAnswersAll{ObjectStore: o.Store}
		o.Store = wrapped
	})
	e.logs.allow("upload failed; will retry")
	e.store.PutObject("f", []byte("version zero"), nil)
	e.mustLookup("f")
	var refuse atomic.Int32
	e.store.SetHook(func(op, key string) error {
		if op == "Put" && key == "f" && refuse.Add(-1) >= 0 {
			return &s3backend.Error{Op: "PutObject", Key: key, Status: 503, Code: "ServiceUnavailable", Kind: s3backend.ErrUnavailable, Cause: errors.New("injected outage")}
		}
		return nil
	})
	wrapped.n.Store(1) // the first upload lands; its answer is lost
	e.write("f", 0, []byte("version ONE!"))
	deadline := time.Now().Add(10 * time.Second)
	for {
		if got, _, _ := e.store.Object("f"); string(got) == "version ONE!" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the first upload never landed")
		}
		time.Sleep(5 * time.Millisecond)
	}
	refuse.Store(20) // then twenty attempts fail before they reach S3
	e.drain()
	if n := e.c.Stats().Conflicts.Load(); n != 0 {
		t.Fatalf("%d conflicts with our own upload; keys %v", n, e.keys())
	}
	if got := string(e.object("f")); got != "version ONE!" {
		t.Fatalf("f = %q", got)
	}
	eqKeys(t, e.keys(), "f")
}
