package fs

import (
	"context"
	"errors"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/keelfs/keelfs/cache"
)

var _ = (gofs.NodeLookuper)((*Node)(nil))

func (n *Node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	a, err := n.fsys.c.Lookup(ctx, n.ino(), name)
	if err != nil {
		return nil, toErrno("lookup", err)
	}
	fillAttr(a, &out.Attr)
	return n.newChild(ctx, a), 0
}

var _ = (gofs.NodeOpendirHandler)((*Node)(nil))

// OpendirHandle lists the directory in S3 when the cached listing is older
// than the TTL, and lets the kernel keep the names it read from this
// directory before (FOPEN_CACHE_DIR) as long as they are still the names
// the cache holds: a warm ls then costs one OPENDIR. When they changed,
// whether through this mount or in S3, the kernel's copy is dropped first.
func (n *Node) OpendirHandle(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	r, err := n.fsys.c.OpenDir(ctx, n.ino())
	if err != nil {
		return nil, 0, toErrno("opendir", err)
	}
	st := n.state()
	st.dirMu.Lock()
	if v := n.fsys.c.DirVersion(n.ino()); !st.dirKnown || v != st.dirVer {
		// Not from inside a request on this inode in general (see
		// Invalidate), but OPENDIR holds no lock on the directory, and
		// the kernel must drop its copy before this open reads it.
		if errno := n.NotifyContent(0, 0); st.dirKnown {
			n.fsys.log.Debug("fs: directory names changed; the kernel reads them again", "ino", n.ino(), "errno", errno)
		}
		st.dirKnown, st.dirVer = true, v
	}
	st.dirMu.Unlock()
	parentIno := n.ino()
	if _, p := n.Parent(); p != nil {
		parentIno = p.StableAttr().Ino
	}
	dot := []cache.DirEntry{
		{Name: ".", Ino: n.ino(), Mode: syscall.S_IFDIR},
		{Name: "..", Ino: parentIno, Mode: syscall.S_IFDIR},
	}
	return &dirStream{node: n, r: r, dots: dot, initDots: dot}, fuse.FOPEN_CACHE_DIR | fuse.FOPEN_KEEP_CACHE, 0
}

var _ = (gofs.FileLookuper)((*dirStream)(nil))

// Lookup answers the lookup a READDIRPLUS makes for each entry, from
// what the cache holds (Cache.Listed): never an S3 request, never a wait
// for an entry's headers. An entry it cannot answer so is sent as a name
// alone (node ID 0, which the kernel takes as "no attributes", not as
// ENOENT), and the kernel sends a LOOKUP if a program stats it.
func (d *dirStream) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if !d.have && d.next.Name == name && d.next.Mode == 0 {
		// The entry just read has no type: its headers were not read
		// when it was. Asking the cache again costs more than the
		// LOOKUP it may save (a cold ls -l of 2 000 objects spent
		// 50 ms here).
		return nil, syscall.EAGAIN
	}
	a, ok := d.node.fsys.c.Listed(d.node.ino(), name)
	if !ok {
		return nil, syscall.EAGAIN
	}
	fillAttr(a, &out.Attr)
	return d.node.newChild(ctx, a), 0
}

// dirStream yields "." and "..", then the cache's entries. Offsets are
// positions (1-based), so telldir/seekdir work: a seek restarts the
// stream and skips that many entries.
type dirStream struct {
	node     *Node
	r        *cache.DirReader
	dots     []cache.DirEntry
	initDots []cache.DirEntry
	next     cache.DirEntry
	pos      uint64
	have     bool
	done     bool
	err      error
}

var _ = (gofs.FileSeekdirer)((*dirStream)(nil))

func (d *dirStream) Seekdir(ctx context.Context, off uint64) syscall.Errno {
	d.r.Reset()
	d.dots, d.pos, d.have, d.done, d.err = d.initDots, 0, false, false, nil
	for d.pos < off && d.HasNext() {
		if d.err != nil {
			return toErrno("seekdir", d.err)
		}
		d.have = false
		d.pos++
	}
	return 0
}

func (d *dirStream) HasNext() bool {
	if d.have {
		return true
	}
	if len(d.dots) > 0 {
		d.next, d.dots, d.have = d.dots[0], d.dots[1:], true
		return true
	}
	if d.done {
		return false
	}
	e, ok, err := d.r.Next()
	if err != nil {
		d.err, d.done = err, true
		return true // Next reports the error
	}
	if !ok {
		d.done = true
		return false
	}
	d.next, d.have = e, true
	return true
}

func (d *dirStream) Next() (fuse.DirEntry, syscall.Errno) {
	if d.err != nil {
		err := d.err
		d.err = nil
		return fuse.DirEntry{}, toErrno("readdir", err)
	}
	d.have = false
	d.pos++
	return fuse.DirEntry{Name: d.next.Name, Ino: d.next.Ino, Mode: d.next.Mode, Off: d.pos}, 0
}

var _ = (gofs.FileReaddirenter)((*dirStream)(nil))

func (d *dirStream) Readdirent(ctx context.Context) (*fuse.DirEntry, syscall.Errno) {
	if !d.HasNext() {
		return nil, 0
	}
	e, errno := d.Next()
	return &e, errno
}

var _ = (gofs.FileReleasedirer)((*dirStream)(nil))

func (d *dirStream) Releasedir(ctx context.Context, flags uint32) {}

var _ = (gofs.NodeMkdirer)((*Node)(nil))

func (n *Node) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	uid, gid := callerIDs(ctx)
	a, err := n.fsys.c.Mkdir(ctx, n.ino(), name, mode, uid, gid)
	if err != nil {
		return nil, toErrno("mkdir", err)
	}
	if errno := n.syncDirs(ctx, "mkdir", n.ino()); errno != 0 {
		return nil, errno
	}
	fillAttr(a, &out.Attr)
	return n.newChild(ctx, a), 0
}

var _ = (gofs.NodeSymlinker)((*Node)(nil))

func (n *Node) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	uid, gid := callerIDs(ctx)
	a, err := n.fsys.c.Symlink(ctx, n.ino(), name, target, uid, gid)
	if err != nil {
		return nil, toErrno("symlink", err)
	}
	if errno := n.syncDirs(ctx, "symlink", n.ino()); errno != 0 {
		return nil, errno
	}
	fillAttr(a, &out.Attr)
	return n.newChild(ctx, a), 0
}

var _ = (gofs.NodeCreater)((*Node)(nil))

// Create makes and opens a file. If a file of that name appeared since the
// kernel's lookup and O_EXCL is not set, it is opened instead, as open(2)
// would.
func (n *Node) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	uid, gid := callerIDs(ctx)
	a, err := n.fsys.c.Create(ctx, n.ino(), name, mode, uid, gid)
	if errors.Is(err, cache.ErrExist) && flags&syscall.O_EXCL == 0 {
		a, err = n.fsys.c.Lookup(ctx, n.ino(), name)
		if err == nil && a.Mode&syscall.S_IFMT == syscall.S_IFDIR {
			err = cache.ErrIsDir
		}
	}
	if err != nil {
		return nil, nil, 0, toErrno("create", err)
	}
	if errno := n.syncDirs(ctx, "create", n.ino()); errno != 0 {
		return nil, nil, 0, errno
	}
	child := n.newChild(ctx, a)
	fh, fuseFlags, errno := child.Operations().(*Node).open(ctx, flags)
	if errno != 0 {
		return nil, nil, 0, errno
	}
	a, err = n.fsys.c.Getattr(ctx, a.Ino)
	if err != nil {
		// The kernel never sees this handle, so it will not release it.
		fh.(*fileHandle).Release(ctx)
		return nil, nil, 0, toErrno("create", err)
	}
	fillAttr(a, &out.Attr)
	return child, fh, fuseFlags, 0
}

var _ = (gofs.NodeUnlinker)((*Node)(nil))

func (n *Node) Unlink(ctx context.Context, name string) syscall.Errno {
	if err := n.fsys.c.Unlink(ctx, n.ino(), name); err != nil {
		return toErrno("unlink", err)
	}
	return n.syncDirs(ctx, "unlink", n.ino())
}

var _ = (gofs.NodeRmdirer)((*Node)(nil))

func (n *Node) Rmdir(ctx context.Context, name string) syscall.Errno {
	if err := n.fsys.c.Rmdir(ctx, n.ino(), name); err != nil {
		return toErrno("rmdir", err)
	}
	return n.syncDirs(ctx, "rmdir", n.ino())
}

var _ = (gofs.NodeRenamer)((*Node)(nil))

func (n *Node) Rename(ctx context.Context, name string, newParent gofs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	np, ok := newParent.(*Node)
	if !ok {
		return syscall.EXDEV
	}
	if err := n.fsys.c.Rename(ctx, n.ino(), name, np.ino(), newName, flags); err != nil {
		return toErrno("rename", err)
	}
	if np.ino() == n.ino() {
		return n.syncDirs(ctx, "rename", n.ino())
	}
	return n.syncDirs(ctx, "rename", n.ino(), np.ino())
}

// syncDirs makes a namespace change durable before the call returns, on
// a mount with the dirsync option. The change itself is made either way;
// if it cannot be made durable the call fails, as it does on a local file
// system whose dirsync write fails.
func (n *Node) syncDirs(ctx context.Context, op string, dirs ...uint64) syscall.Errno {
	if !n.fsys.opt.DirSync {
		return 0
	}
	for _, d := range dirs {
		if err := n.fsys.c.SyncDir(ctx, d); err != nil {
			return toErrno(op, err)
		}
	}
	return 0
}

var _ = (gofs.NodeLinker)((*Node)(nil))

// Link fails: an S3 object cannot have two names.
func (n *Node) Link(ctx context.Context, target gofs.InodeEmbedder, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, toErrno("link", cache.ErrNoHardLinks)
}

var _ = (gofs.NodeMknoder)((*Node)(nil))

// Mknod makes a regular file as creat(2) would (mknod(2) of S_IFREG
// reaches a FUSE filesystem as MKNOD, not CREATE), or a FIFO, socket or
// device node, stored as s3fs stores them. Binding a UNIX socket on the
// mount comes here too.
func (n *Node) Mknod(ctx context.Context, name string, mode uint32, dev uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	uid, gid := callerIDs(ctx)
	a, err := n.fsys.c.Mknod(ctx, n.ino(), name, mode, dev, uid, gid)
	if err != nil {
		return nil, toErrno("mknod", err)
	}
	if errno := n.syncDirs(ctx, "mknod", n.ino()); errno != 0 {
		return nil, errno
	}
	fillAttr(a, &out.Attr)
	return n.newChild(ctx, a), 0
}
