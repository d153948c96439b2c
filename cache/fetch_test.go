package cache

import (
	"bytes"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/keelfs/keelfs/s3backend"
)

// randomReads reads 4 KiB at n places of path that are never in sequence,
// checking the bytes, and returns the open handle.
func randomReads(t *testing.T, e *env, path string, data []byte, n int) *Handle {
	t.Helper()
	a := e.mustLookup(path)
	h, _, err := e.c.Open(ctx, a.Ino, false, false)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	for i := 0; i < n; i++ {
		off := int64(len(data)) - int64(i+1)*int64(len(data))/int64(n+1) // backwards, far apart
		if got, err := h.Read(ctx, buf, off); err != nil || !bytes.Equal(buf[:got], data[off:off+int64(got)]) {
			t.Fatalf("random read at %d: %d bytes, %v, or wrong bytes", off, got, err)
		}
	}
	return h
}

// waitFill waits until no background fill runs for h's file.
func waitFill(t *testing.T, h *Handle) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		ra := &h.st.readAhead
		ra.mu.Lock()
		busy := ra.filling
		ra.mu.Unlock()
		if !busy {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the background fill did not finish in 10s")
		}
	}
}

// TestRandomReadsFetchWholeFile: a file read at random places is fetched
// whole in the background, in large GETs, so that later reads cost no
// request; a seek or two does not start that, nor does a file too big
// for a quarter of the cache.
func TestRandomReadsFetchWholeFile(t *testing.T) {
	e := newEnv(t, nil) // 64 KiB blocks, 64 MiB of cache
	data := randBytes(4<<20 + 1234)
	e.store.PutObject("db", data, s3backend.Metadata{"mode": "33188"})
	e.store.ResetCounts()

	h := randomReads(t, e, "db", data, randomFillAfter-1)
	time.Sleep(50 * time.Millisecond)
	if got := e.store.Counts()["Get"]; got != randomFillAfter-1 {
		t.Fatalf("%d random reads cost %d GETs, want one each and no fill yet", randomFillAfter-1, got)
	}
	h.Release(ctx)

	h = randomReads(t, e, "db", data, randomFillAfter)
	defer h.Release(ctx)
	waitFill(t, h)
	nblocks := (len(data) + 64<<10 - 1) / (64 << 10)
	gets := e.store.Counts()["Get"]
	// One GET per random read (2*randomFillAfter-1 of them), and the fill's
	// GETs of up to prefetchChunk blocks each, plus one for every block
	// the reads cached, which splits a chunk in two.
	if most := 2*(2*randomFillAfter-1) + (nblocks+prefetchChunk-1)/prefetchChunk; gets > most {
		t.Fatalf("random reads and the fill of %d blocks cost %d GETs, want at most %d", nblocks, gets, most)
	}
	e.store.ResetCounts()
	if got := e.read("db"); !bytes.Equal(got, data) {
		t.Fatal("whole read after the fill: wrong bytes")
	}
	if c := e.store.Counts(); len(c) != 0 {
		t.Fatalf("read after the fill cost %v, want nothing", c)
	}
}

func TestRandomReadsOfBigFileFetchBlocksOnly(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.CacheSize = 8 << 20 }) // a quarter is 2 MiB
	data := randBytes(4 << 20)
	e.store.PutObject("big", data, s3backend.Metadata{"mode": "33188"})
	e.store.ResetCounts()
	const n = 3 * randomFillAfter
	h := randomReads(t, e, "big", data, n)
	defer h.Release(ctx)
	waitFill(t, h)
	time.Sleep(50 * time.Millisecond)
	if got := e.store.Counts()["Get"]; got != n {
		t.Fatalf("%d random reads of a file too big to fill cost %d GETs, want %d", n, got, n)
	}
}

// TestSequentialReadOutOfOrderIsNotRandom: the kernel sends its read-ahead
// as several requests at once (here a 256 KiB window of 64 KiB requests,
// as 4 MiB of 1 MiB requests on a mount), and they arrive in any order.
// Such a reader is sequential: it must never start the whole-file fetch
// meant for random readers. It used to, after a few reordered requests,
// and a cold sequential read then fetched the file twice at once.
func TestSequentialReadOutOfOrderIsNotRandom(t *testing.T) {
	e := newEnv(t, nil)
	data := randBytes(12 << 20)
	e.store.PutObject("movie", data, nil)
	h, _, err := e.c.Open(ctx, e.mustLookup("movie").Ino, false, false)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Release(ctx)
	const req, window = 64 << 10, 256 << 10
	buf := make([]byte, req)
	rng := rand.New(rand.NewPCG(1, 2))
	for base := int64(0); base < int64(len(data)); base += window {
		offs := []int64{}
		for off := base; off < base+window && off < int64(len(data)); off += req {
			offs = append(offs, off)
		}
		rng.Shuffle(len(offs), func(a, b int) { offs[a], offs[b] = offs[b], offs[a] })
		for _, off := range offs {
			n, err := h.Read(ctx, buf, off)
			if err != nil || !bytes.Equal(buf[:n], data[off:off+int64(n)]) {
				t.Fatalf("read at %d: %v or wrong bytes", off, err)
			}
		}
	}
	ra := &h.st.readAhead
	ra.mu.Lock()
	defer ra.mu.Unlock()
	if ra.filled != 0 || ra.filling {
		t.Fatalf("a sequential reader started the whole-file fetch for random readers (%d jumps counted)", ra.random)
	}
}
