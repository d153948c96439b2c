package fs

import (
	"context"
	"testing"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// testOpen runs ioOpen as an open of version ver with no passthrough.
func (n *Node) testOpen(t *testing.T, write, readable bool, ver uint64) (*fileHandle, uint32) {
	t.Helper()
	mode, ep, flags, _ := n.ioOpen(context.Background(), nil, write, write && !readable, false, ver)
	if (mode == ioCached) == (flags&fuse.FOPEN_DIRECT_IO != 0) {
		t.Fatalf("mode %d with flags %#x", mode, flags)
	}
	return &fileHandle{node: n, mode: mode, ep: ep}, flags
}

// TestWriteOnlyOpensGoAroundThePageCache: a write-only open made while no
// open reads through the page cache is direct, and leaves the opens made
// meanwhile their usual way (a shared mapping needs a cached open); once
// it wrote, the next open drops what the kernel holds. Where the kernel
// does not drop the pages a direct write covers, it is not direct.
func TestWriteOnlyOpensGoAroundThePageCache(t *testing.T) {
	ctx := context.Background()
	n := &Node{fsys: &FS{}}
	n.fsys.directWrites.Store(true)

	r, _ := n.testOpen(t, false, true, 1)
	if r.mode != ioCached {
		t.Fatalf("reader: mode %d, want ioCached", r.mode)
	}
	n.ioRelease(ctx, r)
	w, _ := n.testOpen(t, true, false, 1)
	if w.mode != ioDirect {
		t.Fatalf("write-only open with no open reading through the page cache: mode %d, want ioDirect", w.mode)
	}
	r, flags := n.testOpen(t, false, true, 1)
	if r.mode != ioCached || flags&fuse.FOPEN_KEEP_CACHE != 0 {
		t.Fatalf("reader opened while a direct writer writes: mode %d, flags %#x; want ioCached without KEEP_CACHE", r.mode, flags)
	}
	w2, _ := n.testOpen(t, true, false, 1)
	if w2.mode != ioCached {
		t.Fatalf("write-only open while a reader reads through the page cache: mode %d, want ioCached", w2.mode)
	}
	for _, f := range []*fileHandle{w2, r, w} {
		n.ioRelease(ctx, f)
	}
	rw, _ := n.testOpen(t, true, true, 1)
	if rw.mode != ioCached {
		t.Fatalf("read-write open: mode %d, want ioCached", rw.mode)
	}
	n.ioRelease(ctx, rw)
	if io := &n.state().io; io.direct != 0 || io.pages.users != 0 {
		t.Fatalf("after every release: direct %d, users %d; want 0", io.direct, io.pages.users)
	}

	old := &Node{fsys: &FS{}}
	w, _ = old.testOpen(t, true, false, 1)
	if w.mode != ioCached {
		t.Fatalf("write-only open on a kernel older than FUSE 7.40: mode %d, want ioCached", w.mode)
	}
	old.ioRelease(ctx, w)
}
