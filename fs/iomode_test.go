package fs

import (
	"context"
	"testing"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// testOpen runs ioOpen as an open of version 1 with no passthrough.
func (n *Node) testOpen(t *testing.T, write, readable bool) *fileHandle {
	t.Helper()
	mode, ep, flags, _ := n.ioOpen(context.Background(), nil, write, readable, false, 1)
	f := &fileHandle{node: n, mode: mode, ep: ep}
	t.Logf("write=%v readable=%v: mode %d, flags %#x", write, readable, mode, flags)
	if (mode == ioCached) == (flags&fuse.FOPEN_DIRECT_IO != 0) {
		t.Fatalf("mode %d with flags %#x", mode, flags)
	}
	return f
}

// TestWriteOnlyOpensGoAroundThePageCache: a write-only open of a file the
// kernel holds no page of is direct, and so is every open while it is
// open; one of a file whose pages the kernel may hold (and a process may
// still map) writes through them.
func TestWriteOnlyOpensGoAroundThePageCache(t *testing.T) {
	n := &Node{fsys: &FS{}}
	ctx := context.Background()
	w := n.testOpen(t, true, false)
	if w.mode != ioDirectWrite {
		t.Fatalf("write-only open of a new file: mode %d, want ioDirectWrite", w.mode)
	}
	r := n.testOpen(t, false, true)
	if r.mode != ioDirect {
		t.Fatalf("open while a write-only open writes around the page cache: mode %d, want ioDirect", r.mode)
	}
	n.ioRelease(ctx, r)
	n.ioRelease(ctx, w)
	r = n.testOpen(t, false, true)
	if r.mode != ioCached {
		t.Fatalf("open after the writer closed: mode %d, want ioCached", r.mode)
	}
	n.ioRelease(ctx, r)
	w = n.testOpen(t, true, false)
	if w.mode != ioCached {
		t.Fatalf("write-only open of a file the page cache may hold: mode %d, want ioCached", w.mode)
	}
	n.ioRelease(ctx, w)
	rw := n.testOpen(t, true, true)
	if rw.mode != ioCached {
		t.Fatalf("read-write open: mode %d, want ioCached", rw.mode)
	}
	n.ioRelease(ctx, rw)
	if io := &n.state().io; io.direct != 0 || io.dwrite != 0 || io.pages.users != 0 {
		t.Fatalf("after every release: direct %d, dwrite %d, users %d; want 0", io.direct, io.dwrite, io.pages.users)
	}
}
