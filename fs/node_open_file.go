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

// open opens the node. Each handle reads one content version (see
// pageCache for how the kernel's page cache is kept to it).
func (n *Node) open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	write := flags&syscall.O_ACCMODE != syscall.O_RDONLY
	trunc := flags&syscall.O_TRUNC != 0
	h, res, err := n.fsys.c.Open(ctx, n.ino(), write, trunc)
	if err != nil {
		return nil, 0, toErrno("open", err)
	}
	direct := flags&syscall.O_DIRECT != 0
	writeOnly := flags&syscall.O_ACCMODE == syscall.O_WRONLY
	mode, ep, fuseFlags, changed := n.ioOpen(ctx, h, write, writeOnly, direct, res.ContentVer)
	if changed {
		// Another writer's version replaced the one the kernel has seen.
		// The open's answer drops its pages, but not the size it caches:
		// without this it would serve the new content cut to the old
		// size until its attribute timeout. Invalidating the attributes
		// alone (offset -1) touches no page, so it cannot deadlock with
		// this request, and it is done before the open returns.
		if errno := n.NotifyContent(-1, 0); errno != 0 && errno != syscall.ENOENT {
			n.fsys.log.Debug("fs: invalidate attributes after a new version", "ino", n.ino(), "errno", errno)
		}
	}
	return &fileHandle{h: h, node: n, mode: mode, ep: ep}, fuseFlags, 0
}

// pageCache keeps the kernel's page cache of a node to one content
// version. The kernel has one page cache per inode, shared by every open
// file, while the cache layer lets a handle go on reading the version it
// opened after another writer's version replaced it. A handle opened on
// the new version while one of the old version still reads through the
// page cache would see the old handle's pages, and the old handle the new
// one's: a mix of versions. So such a handle bypasses the page cache
// (FOPEN_DIRECT_IO) until the old handles are closed.
//
// It is guarded by nodeIO.mu.
type pageCache struct {
	known bool   // ver is set: the kernel may hold pages of it
	ver   uint64 // the version the page cache holds
	users int    // open handles that read through the page cache, all of ver
}

// acquire decides how a handle opened on version ver uses the page cache:
// through it (cached), keeping what it holds when it is of ver, or not at
// all.
// changed says the kernel saw another version before this one.
func (p *pageCache) acquire(ver uint64) (fuseFlags uint32, cached, changed bool) {
	switch {
	case p.users > 0 && p.ver != ver:
		// Leave the pages to the handles of their version.
		return fuse.FOPEN_DIRECT_IO | fuse.FOPEN_KEEP_CACHE, false, true
	case p.known && p.ver == ver:
		p.users++
		return fuse.FOPEN_KEEP_CACHE, true, false
	default:
		// Without KEEP_CACHE the kernel drops the pages it has.
		changed = p.known
		p.known, p.ver = true, ver
		p.users++
		return 0, true, changed
	}
}

// release is called when a handle that read through the page cache closes.
func (p *pageCache) release() {
	p.users--
}

// fileHandle is an open file.
type fileHandle struct {
	h    *cache.Handle
	node *Node
	mode ioMode // how the kernel does its I/O (see nodeIO)
	ep   *epoch // the passthrough epoch it is in (mode ioEpoch)
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
	if fc, ok := ctx.(*fuse.Context); ok && fc.Cancel == killSetID {
		if err := f.h.DropSetID(); err != nil {
			return 0, toErrno("write", err)
		}
	}
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
	if err := f.takeInMapped(ctx); err != nil {
		return toErrno("flush", err)
	}
	return toErrno("flush", f.h.Flush(ctx))
}

// takeInMapped brings into the cache what a writer's shared mapping wrote
// to the passthrough backing file (its msync goes there, not to keelfs),
// so that a close or fsync covers it as it covers write(2)s.
func (f *fileHandle) takeInMapped(ctx context.Context) error {
	if f.mode != ioEpoch || !f.h.Writable() {
		return nil
	}
	return f.ep.bk.TakeInMapped(ctx)
}

var _ = (gofs.FileFsyncer)((*fileHandle)(nil))

// Fsync returns once the file is in S3, or EIO.
func (f *fileHandle) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	if err := f.takeInMapped(ctx); err != nil {
		return toErrno("fsync", err)
	}
	return toErrno("fsync", f.h.Fsync(ctx))
}

var _ = (gofs.FileReleaser)((*fileHandle)(nil))

func (f *fileHandle) Release(ctx context.Context) syscall.Errno {
	f.node.ioRelease(ctx, f)
	return toErrno("release", f.h.Release(ctx))
}

var _ = (gofs.FileAllocater)((*fileHandle)(nil))

func (f *fileHandle) Allocate(ctx context.Context, off uint64, size uint64, mode uint32) syscall.Errno {
	return toErrno("fallocate", f.h.Allocate(ctx, int64(off), int64(size), mode))
}

var _ = (gofs.NodeFsyncer)((*Node)(nil))

// Fsync without a file handle is fsync of a directory: it returns once
// the namespace changes in it (names created, renamed into it or removed)
// are in S3, as rename(tmp, f); fsync(dir) expects.
func (n *Node) Fsync(ctx context.Context, fh gofs.FileHandle, flags uint32) syscall.Errno {
	if f, ok := fh.(*fileHandle); ok {
		return f.Fsync(ctx, flags)
	}
	return toErrno("fsyncdir", n.fsys.c.SyncDir(ctx, n.ino()))
}
