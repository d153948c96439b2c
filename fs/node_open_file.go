package fs

import (
	"context"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/keelfs/keelfs/cache"
)

var _ = (gofs.NodeOpener)((*Node)(nil))

func (n *Node) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	return n.open(ctx, flags)
}

// open opens the node. The kernel keeps its page cache across opens only
// while the content version is unchanged: a new version from another writer
// is never served from stale pages.
func (n *Node) open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	write := flags&syscall.O_ACCMODE != syscall.O_RDONLY
	trunc := flags&syscall.O_TRUNC != 0
	h, res, err := n.fsys.c.Open(ctx, n.ino(), write, trunc)
	if err != nil {
		return nil, 0, toErrno("open", err)
	}
	var fuseFlags uint32
	if n.openedVer.Swap(res.ContentVer) == res.ContentVer {
		fuseFlags |= fuse.FOPEN_KEEP_CACHE
	}
	return &fileHandle{h: h}, fuseFlags, 0
}

// fileHandle is an open file.
type fileHandle struct {
	h *cache.Handle
}

var _ = (gofs.FileReader)((*fileHandle)(nil))

func (f *fileHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	n, err := f.h.Read(ctx, dest, off)
	if err != nil {
		return nil, toErrno("read", err)
	}
	return fuse.ReadResultData(dest[:n]), 0
}

var _ = (gofs.FileWriter)((*fileHandle)(nil))

func (f *fileHandle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	n, err := f.h.Write(ctx, data, off)
	if err != nil && n == 0 {
		return 0, toErrno("write", err)
	}
	return uint32(n), 0
}

var _ = (gofs.FileFlusher)((*fileHandle)(nil))

// Flush runs at every close(2): the data is durable in the cache when it
// returns (and in S3 with --sync-on-close).
func (f *fileHandle) Flush(ctx context.Context) syscall.Errno {
	return toErrno("flush", f.h.Flush(ctx))
}

var _ = (gofs.FileFsyncer)((*fileHandle)(nil))

// Fsync returns once the file is in S3, or EIO.
func (f *fileHandle) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	return toErrno("fsync", f.h.Fsync(ctx))
}

var _ = (gofs.FileReleaser)((*fileHandle)(nil))

func (f *fileHandle) Release(ctx context.Context) syscall.Errno {
	return toErrno("release", f.h.Release(ctx))
}

var _ = (gofs.FileAllocater)((*fileHandle)(nil))

func (f *fileHandle) Allocate(ctx context.Context, off uint64, size uint64, mode uint32) syscall.Errno {
	return toErrno("fallocate", f.h.Allocate(ctx, int64(off), int64(size), mode))
}

var _ = (gofs.NodeFsyncer)((*Node)(nil))

// Fsync on a node without a handle (fsync of a directory) has nothing to
// wait for: directory changes are journaled as they happen.
func (n *Node) Fsync(ctx context.Context, fh gofs.FileHandle, flags uint32) syscall.Errno {
	if f, ok := fh.(*fileHandle); ok {
		return f.Fsync(ctx, flags)
	}
	return 0
}
