package fs

import (
	"context"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/keelfs/keelfs/cache"
)

// Node is one file, directory or symlink known to the kernel.
type Node struct {
	gofs.Inode
	fsys *FS
	// st is made by the node's first open or opendir. Most nodes the
	// kernel knows are never opened (every entry of a directory `ls -l`
	// listed), and 100 000 of them are 8 MB smaller without it.
	st atomic.Pointer[nodeState]
}

// nodeState is what a node keeps once it has been opened.
type nodeState struct {
	io nodeIO

	// The names the kernel may hold for this directory (FOPEN_CACHE_DIR)
	// are of cache.DirVersion dirVer; see OpendirHandle.
	dirMu    sync.Mutex
	dirKnown bool
	dirVer   uint64
}

// state returns the node's state, making it at the first call.
func (n *Node) state() *nodeState {
	if s := n.st.Load(); s != nil {
		return s
	}
	n.st.CompareAndSwap(nil, &nodeState{})
	return n.st.Load()
}

var _ = (gofs.InodeEmbedder)((*Node)(nil))

func (n *Node) ino() uint64 { return n.StableAttr().Ino }

// newChild returns the node for a, registering it for notifications.
func (n *Node) newChild(ctx context.Context, a cache.Attr) *gofs.Inode {
	child := &Node{fsys: n.fsys}
	in := n.NewInode(ctx, child, gofs.StableAttr{Mode: a.Mode & syscall.S_IFMT, Ino: a.Ino, Gen: a.Gen})
	if got, ok := in.Operations().(*Node); ok {
		n.fsys.register(a.Ino, got)
	}
	return in
}

var _ = (gofs.NodeOnForgetter)((*Node)(nil))

// OnForget drops the node from the registry once the kernel forgot it.
func (n *Node) OnForget() { n.fsys.forget(n.ino(), n) }

var _ = (gofs.NodeGetattrer)((*Node)(nil))

// Getattr revalidates a clean file older than the TTL against S3.
func (n *Node) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	n.noteReads()
	a, err := n.fsys.c.Getattr(ctx, n.ino())
	if err != nil {
		return toErrno("getattr", err)
	}
	fillAttr(a, &out.Attr)
	return 0
}

var _ = (gofs.NodeSetattrer)((*Node)(nil))

// Setattr changes mode, owner, times or size; the kernel has checked
// permissions (default_permissions).
func (n *Node) Setattr(ctx context.Context, fh gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	var sa cache.SetAttr
	if m, ok := in.GetMode(); ok {
		m &= 0o7777
		sa.Mode = &m
	}
	if u, ok := in.GetUID(); ok {
		sa.UID = &u
	}
	if g, ok := in.GetGID(); ok {
		sa.GID = &g
	}
	if s, ok := in.GetSize(); ok {
		size := int64(s)
		sa.Size = &size
	}
	// utimensat(UTIME_NOW) reaches keelfs as "now" flags: both times
	// take one clock reading.
	now := time.Now()
	if t, ok := in.GetMTime(); ok {
		if in.Valid&fuse.FATTR_MTIME_NOW != 0 {
			t = now
		}
		sa.Mtime = &t
	}
	if t, ok := in.GetATime(); ok {
		if in.Valid&fuse.FATTR_ATIME_NOW != 0 {
			t = now
		}
		sa.Atime = &t
	}
	if in.Valid&fuse.FATTR_KILL_SUIDGID != 0 {
		// A chown, or a truncate by a user without CAP_FSETID.
		if err := n.fsys.c.DropSetID(ctx, n.ino()); err != nil {
			return toErrno("setattr", err)
		}
	}
	if f, ok := fh.(*fileHandle); ok && sa.Size != nil && f.h.Writable() {
		// ftruncate: through the descriptor, which a conflict may
		// have ended (ESTALE), as it ends its writes.
		if err := f.h.Truncate(ctx, *sa.Size); err != nil {
			return toErrno("setattr", err)
		}
		sa.Size = nil
	}
	a, err := n.fsys.c.Setattr(ctx, n.ino(), sa)
	if err != nil {
		return toErrno("setattr", err)
	}
	fillAttr(a, &out.Attr)
	return 0
}

var _ = (gofs.NodeReadlinker)((*Node)(nil))

func (n *Node) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	t, err := n.fsys.c.Readlink(ctx, n.ino())
	if err != nil {
		return nil, toErrno("readlink", err)
	}
	return []byte(t), 0
}

var _ = (gofs.NodeStatfser)((*Node)(nil))

func (n *Node) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	s := n.fsys.c.Statfs()
	out.Blocks, out.Bfree, out.Bavail = s.Blocks, s.Bfree, s.Bavail
	out.Files, out.Ffree = s.Files, s.Ffree
	out.Bsize, out.Frsize, out.NameLen = s.Bsize, s.Bsize, s.NameLen
	return 0
}

// ControlXattr is the extended attribute of a mount's root directory
// whose value is the path of the daemon's control socket. Unlike the
// ioctl, getxattr needs no open of the directory, whose OPENDIR lists it
// in S3 when its listing is stale: `keelfs status` must not wait for S3.
const ControlXattr = "user.keelfs.control-socket"

// ControlIoctl is the ioctl on a mount's root directory that returns the
// path of the daemon's control socket (NUL-terminated), so that `keelfs
// status MOUNTPOINT` can find it. It is _IOR('k', 1, [4096]byte): the
// kernel passes only ioctls whose size the number carries.
const ControlIoctl = 2<<30 | controlPathMax<<16 | 'k'<<8 | 1

// controlPathMax is the size of ControlIoctl's answer.
const controlPathMax = 4096

var _ = (gofs.NodeIoctler)((*Node)(nil))

func (n *Node) Ioctl(ctx context.Context, f gofs.FileHandle, cmd uint32, arg uint64, input []byte, output []byte) (int32, syscall.Errno) {
	v := n.fsys.opt.ControlPath
	if n.ino() != cache.RootIno || cmd != ControlIoctl || v == "" {
		return 0, syscall.ENOTTY
	}
	if len(v)+1 > len(output) {
		return 0, syscall.ENAMETOOLONG
	}
	copy(output, v)
	output[len(v)] = 0
	return 0, 0
}
