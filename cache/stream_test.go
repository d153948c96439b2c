package cache

import (
	"bytes"
	"sync"
	"testing"
	"time"

	"github.com/keelfs/keelfs/cache/blocks"
)

// streamEnv has 5 MiB parts of 64 KiB blocks and a write-back delay that
// never passes, so that only the stream sends anything before a drain.
func streamEnv(t *testing.T) *env {
	return newEnv(t, func(o *Options) { o.WriteBackDelay = time.Hour })
}

// writeSeq writes data at off in 256 KiB writes, as cp or dd would.
func writeSeq(t *testing.T, h *Handle, data []byte, off int64) {
	t.Helper()
	for i := 0; i < len(data); i += 256 << 10 {
		chunk := data[i:min(len(data), i+256<<10)]
		if _, err := h.Write(ctx, chunk, off+int64(i)); err != nil {
			t.Fatalf("write at %d: %v", off+int64(i), err)
		}
	}
}

// waitCount waits until the store has seen op at least n times.
func (e *env) waitCount(op string, n int) {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for e.store.Counts()[op] < n {
		if time.Now().After(deadline) {
			e.t.Fatalf("%s: %d requests after 10 s, want %d (all: %v)", op, e.store.Counts()[op], n, e.store.Counts())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (e *env) waitNoUploads() {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for e.store.Uploads() != 0 {
		if time.Now().After(deadline) {
			e.t.Fatalf("%d multipart uploads still open after 10 s", e.store.Uploads())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestStreamSendsPartsWhileWriting: the parts a sequential writer has
// finished are in S3 before it closes; a part rewritten afterwards is sent
// again; the upload after close sends only what is missing, and the
// headers end up those of the closed file.
func TestStreamSendsPartsWhileWriting(t *testing.T) {
	e := streamEnv(t)
	ps := int(e.opt.PartSize)
	data := randBytes(3*ps + 1<<20)
	h := e.openW("big.bin")
	writeSeq(t, h, data, 0)
	// Parts 1-3 are complete (the writer went past their ends); the tail
	// is not, so it must wait.
	e.waitCount("UploadPart", 3)
	if _, _, ok := e.store.Object("big.bin"); ok {
		t.Fatal("object visible before the file was closed")
	}
	if c := e.store.Counts(); c["CreateMultipart"] != 1 || c["CompleteMultipart"] != 0 || c["UploadPart"] != 3 {
		t.Fatalf("requests while writing %v, want one multipart upload with 3 parts", c)
	}
	// Rewrite a few bytes of the second part: it must be sent again.
	copy(data[ps+100:], "REWRITTEN")
	if _, err := h.Write(ctx, []byte("REWRITTEN"), int64(ps+100)); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(time.Minute) // a later mtime than the headers the upload was created with
	if _, err := h.Write(ctx, data[len(data)-10:], int64(len(data)-10)); err != nil {
		t.Fatal(err)
	}
	e.close(h)
	e.drain()
	if got := e.object("big.bin"); !bytes.Equal(got, data) {
		t.Fatal("content differs")
	}
	c := e.store.Counts()
	if c["CreateMultipart"] != 1 || c["UploadPart"] != 5 || c["CompleteMultipart"] != 1 {
		t.Fatalf("requests %v, want 1 multipart upload of 3 streamed parts, part 2 again and the tail", c)
	}
	if got := e.c.Stats().PartsReused.Load(); got != 2 {
		t.Fatalf("%d streamed parts used, want 2 (parts 1 and 3)", got)
	}
	// The headers were set before the last write: a copy rewrites them.
	if c["Copy"] != 1 {
		t.Fatalf("requests %v, want one copy to rewrite the headers", c)
	}
	_, info, _ := e.store.Object("big.bin")
	a := e.mustLookup("big.bin")
	if want := formatUnixTime(a.Mtime.UnixNano()); info.Metadata[metaMtime] != want {
		t.Fatalf("mtime header %q, want %q", info.Metadata[metaMtime], want)
	}
	if e.store.Uploads() != 0 {
		t.Fatalf("%d multipart uploads left open", e.store.Uploads())
	}
}

// TestStreamDroppedWhenUnusable: a stream the sealed file cannot use is
// aborted, and the file is uploaded as usual.
func TestStreamDroppedWhenUnusable(t *testing.T) {
	for _, tc := range []struct {
		name  string
		after func(e *env, h *Handle, data []byte) (key string, want []byte)
	}{
		{"renamed", func(e *env, h *Handle, data []byte) (string, []byte) {
			if err := e.c.Rename(ctx, RootIno, "f", RootIno, "g", 0); err != nil {
				e.t.Fatal(err)
			}
			return "g", data
		}},
		{"shrunk below a part", func(e *env, h *Handle, data []byte) (string, []byte) {
			if err := e.c.Truncate(ctx, h.Ino(), 1000); err != nil {
				e.t.Fatal(err)
			}
			return "f", data[:1000]
		}},
		{"cut inside a streamed part", func(e *env, h *Handle, data []byte) (string, []byte) {
			n := int(e.opt.PartSize) + 7
			if err := e.c.Truncate(ctx, h.Ino(), int64(n)); err != nil {
				e.t.Fatal(err)
			}
			return "f", data[:n]
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := streamEnv(t)
			data := randBytes(3*int(e.opt.PartSize) + 5)
			h := e.openW("f")
			writeSeq(t, h, data, 0)
			e.waitCount("UploadPart", 3)
			key, want := tc.after(e, h, data)
			e.close(h)
			e.drain()
			if got := e.object(key); !bytes.Equal(got, want) {
				t.Fatalf("content of %s differs: %d bytes, want %d", key, len(got), len(want))
			}
			eqKeys(t, e.keys(), key)
			e.waitNoUploads()
		})
	}
}

// streamLeftByACrash writes name whole, two parts and a few bytes, and
// closes the cache once the stream sent the two parts, with the file still
// open, as kill -9 leaves it. It returns what was written.
func (e *env) streamLeftByACrash(name string) []byte {
	e.t.Helper()
	data := randBytes(2*int(e.opt.PartSize) + 5)
	h := e.openW(name)
	writeSeq(e.t, h, data, 0)
	e.waitCount("UploadPart", 2)
	if err := h.Flush(ctx); err != nil {
		e.t.Fatal(err)
	}
	e.c.Close() // the handle is never released
	return data
}

// TestStreamAfterCrash: a mount that stops while a file is written leaves
// a multipart upload open; the next one aborts it and uploads the file.
func TestStreamAfterCrash(t *testing.T) {
	e := streamEnv(t)
	data := e.streamLeftByACrash("f")
	if e.store.Uploads() != 1 {
		t.Fatalf("%d multipart uploads open after the crash, want the stream's", e.store.Uploads())
	}
	e.open()
	e.drain()
	if got := e.object("f"); !bytes.Equal(got, data) {
		t.Fatal("content differs")
	}
	e.waitNoUploads()
}

// TestStreamSkipsCopiedParts: appending to a big object streams only new
// data; the unchanged head is still copied server-side.
func TestStreamSkipsCopiedParts(t *testing.T) {
	e := streamEnv(t)
	ps := int(e.opt.PartSize)
	base := randBytes(2 * ps)
	e.store.PutObject("log", base, nil)
	more := randBytes(2*ps + 3)
	h := e.openW("log")
	writeSeq(t, h, more, int64(len(base)))
	e.waitCount("UploadPart", 2) // parts 3 and 4; part 5 is the tail
	e.close(h)
	e.drain()
	if got := e.object("log"); !bytes.Equal(got, append(base, more...)) {
		t.Fatal("content differs")
	}
	c := e.store.Counts()
	if c["UploadPartCopy"] != 2 || c["UploadPart"] != 3 || e.c.Stats().PartsReused.Load() != 2 {
		t.Fatalf("requests %v, %d streamed parts used; want 2 part copies, 2 streamed parts used and the tail",
			c, e.c.Stats().PartsReused.Load())
	}
	e.waitNoUploads()
}

// TestBigUploadDropsPages: once a part of a big file is in S3, the page
// cache of the blocks it was read from is dropped, for the parts sent
// while writing and for those the upload after close sends; a file small
// enough for one PUT keeps its pages.
func TestBigUploadDropsPages(t *testing.T) {
	e := streamEnv(t)
	var mu sync.Mutex
	dropped := map[blocks.ID]int{}
	testHookDropPages = func(ids []blocks.ID) {
		mu.Lock()
		defer mu.Unlock()
		for _, id := range ids {
			dropped[id]++
		}
	}
	t.Cleanup(func() { testHookDropPages = nil })
	count := func() (n int, idx map[int64]bool) {
		mu.Lock()
		defer mu.Unlock()
		idx = map[int64]bool{}
		for id, k := range dropped {
			n += k
			idx[id.Idx] = true
		}
		return n, idx
	}
	e.write("small.bin", 0, randBytes(100<<10))
	e.drain()
	if n, _ := count(); n != 0 {
		t.Fatalf("a single-PUT file had %d blocks dropped", n)
	}
	ps, bs := int(e.opt.PartSize), int(e.opt.BlockSize)
	data := randBytes(3*ps + 1<<20)
	h := e.openW("big.bin")
	writeSeq(t, h, data, 0)
	e.waitCount("UploadPart", 3)
	deadline := time.Now().Add(10 * time.Second)
	for n, _ := count(); n < 3*ps/bs; n, _ = count() {
		if time.Now().After(deadline) {
			t.Fatalf("%d blocks dropped after 3 parts were sent, want %d", n, 3*ps/bs)
		}
		time.Sleep(5 * time.Millisecond)
	}
	e.close(h)
	e.drain()
	n, idx := count()
	want := (len(data) + bs - 1) / bs
	if n != want || len(idx) != want {
		t.Fatalf("%d drops of %d blocks, want each of the %d blocks once", n, len(idx), want)
	}
	if got := e.object("big.bin"); !bytes.Equal(got, data) {
		t.Fatal("content differs")
	}
}
