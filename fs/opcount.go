package fs

import (
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// OpObserver is told about every FUSE request keelfs answers, for the
// keelfs_fuse_ops_total metric. It must not block.
type OpObserver func(op string, ok bool, d time.Duration)

// countingFS wraps the node filesystem at the FUSE boundary so every
// operation is counted in one place, whichever node type serves it.
// go-fuse's own latency hook (Server.RecordLatencies) is a no-op since v2.
//
// It also drops the kernel's INTERRUPT: every operation gets a cancel
// channel that is never closed (nil, or a mark: see killSetID and
// ptState.begin). The kernel sends INTERRUPT for any signal, including the Go
// runtime's preemption signal (SIGURG) in the calling app; honouring it
// turned an open or rename into a spurious EINTR that the app never asked
// for. A fatal signal still ends the caller's wait at once (the kernel
// stops waiting for the reply), and every operation is bounded anyway by
// the S3 retry limits.
type countingFS struct {
	fuse.RawFileSystem
	obs OpObserver
	pt  *ptState // completes the replies of passthrough opens
}

func (c *countingFS) done(op string, st fuse.Status, start time.Time) {
	c.obs(op, st == fuse.OK, time.Since(start))
}

func (c *countingFS) Lookup(cancel <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	t := time.Now()
	st := c.RawFileSystem.Lookup(nil, h, name, out)
	// A negative lookup is an answer, not a failure.
	c.obs("lookup", st == fuse.OK || st == fuse.ENOENT, time.Since(t))
	return st
}

func (c *countingFS) GetAttr(cancel <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	t := time.Now()
	st := c.RawFileSystem.GetAttr(nil, in, out)
	c.done("getattr", st, t)
	return st
}

func (c *countingFS) SetAttr(cancel <-chan struct{}, in *fuse.SetAttrIn, out *fuse.AttrOut) fuse.Status {
	t := time.Now()
	st := c.RawFileSystem.SetAttr(nil, in, out)
	c.done("setattr", st, t)
	return st
}

func (c *countingFS) Mkdir(cancel <-chan struct{}, in *fuse.MkdirIn, name string, out *fuse.EntryOut) fuse.Status {
	t := time.Now()
	st := c.RawFileSystem.Mkdir(nil, in, name, out)
	c.done("mkdir", st, t)
	return st
}

func (c *countingFS) Mknod(cancel <-chan struct{}, in *fuse.MknodIn, name string, out *fuse.EntryOut) fuse.Status {
	t := time.Now()
	st := c.RawFileSystem.Mknod(nil, in, name, out)
	c.done("mknod", st, t)
	return st
}

func (c *countingFS) Unlink(cancel <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	t := time.Now()
	st := c.RawFileSystem.Unlink(nil, h, name)
	c.done("unlink", st, t)
	return st
}

func (c *countingFS) Rmdir(cancel <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	t := time.Now()
	st := c.RawFileSystem.Rmdir(nil, h, name)
	c.done("rmdir", st, t)
	return st
}

func (c *countingFS) Rename(cancel <-chan struct{}, in *fuse.RenameIn, oldName, newName string) fuse.Status {
	t := time.Now()
	st := c.RawFileSystem.Rename(nil, in, oldName, newName)
	c.done("rename", st, t)
	return st
}

func (c *countingFS) Link(cancel <-chan struct{}, in *fuse.LinkIn, name string, out *fuse.EntryOut) fuse.Status {
	t := time.Now()
	st := c.RawFileSystem.Link(nil, in, name, out)
	c.done("link", st, t)
	return st
}

func (c *countingFS) Symlink(cancel <-chan struct{}, h *fuse.InHeader, target, name string, out *fuse.EntryOut) fuse.Status {
	t := time.Now()
	st := c.RawFileSystem.Symlink(nil, h, target, name, out)
	c.done("symlink", st, t)
	return st
}

func (c *countingFS) Readlink(cancel <-chan struct{}, h *fuse.InHeader) ([]byte, fuse.Status) {
	t := time.Now()
	b, st := c.RawFileSystem.Readlink(nil, h)
	c.done("readlink", st, t)
	return b, st
}

func (c *countingFS) Create(cancel <-chan struct{}, in *fuse.CreateIn, name string, out *fuse.CreateOut) fuse.Status {
	t := time.Now()
	slot := c.pt.begin()
	st := c.RawFileSystem.Create(slot.ch, in, name, out)
	c.pt.finish(slot, st == fuse.OK, &out.OpenOut)
	c.done("create", st, t)
	return st
}

func (c *countingFS) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	t := time.Now()
	slot := c.pt.begin()
	st := c.RawFileSystem.Open(slot.ch, in, out)
	c.pt.finish(slot, st == fuse.OK, out)
	c.done("open", st, t)
	return st
}

func (c *countingFS) Read(cancel <-chan struct{}, in *fuse.ReadIn, buf []byte) (fuse.ReadResult, fuse.Status) {
	t := time.Now()
	r, st := c.RawFileSystem.Read(nil, in, buf)
	c.done("read", st, t)
	return r, st
}

func (c *countingFS) Write(cancel <-chan struct{}, in *fuse.WriteIn, data []byte) (uint32, fuse.Status) {
	t := time.Now()
	n, st := c.RawFileSystem.Write(writeMark(in), in, data)
	c.done("write", st, t)
	return n, st
}

// killSetID marks a WRITE whose writer lacks CAP_FSETID, so that the
// file's set-ID bits must go (FUSE_WRITE_KILL_SUIDGID, see
// the ExtraCapabilities note in FS.Mount). go-fuse gives a file's Write nothing of
// the request but the caller and the cancel channel, so the mark travels
// as that channel: the context's Done. It is never closed, which to Write
// is the same as the nil channel every other request gets.
var killSetID <-chan struct{} = make(chan struct{})

func writeMark(in *fuse.WriteIn) <-chan struct{} {
	if in.WriteFlags&fuse.WRITE_KILL_SUIDGID != 0 {
		return killSetID
	}
	return nil
}

// Writev is what the server calls first for WRITE; ENOSYS makes it fall
// back to Write, which counts then.
func (c *countingFS) Writev(cancel <-chan struct{}, in *fuse.WriteIn, data [][]byte) (uint32, fuse.Status) {
	t := time.Now()
	n, st := c.RawFileSystem.Writev(writeMark(in), in, data)
	if st != fuse.ENOSYS {
		c.done("write", st, t)
	}
	return n, st
}

func (c *countingFS) Flush(cancel <-chan struct{}, in *fuse.FlushIn) fuse.Status {
	t := time.Now()
	st := c.RawFileSystem.Flush(nil, in)
	c.done("flush", st, t)
	return st
}

func (c *countingFS) Fsync(cancel <-chan struct{}, in *fuse.FsyncIn) fuse.Status {
	t := time.Now()
	st := c.RawFileSystem.Fsync(nil, in)
	c.done("fsync", st, t)
	return st
}

func (c *countingFS) Fallocate(cancel <-chan struct{}, in *fuse.FallocateIn) fuse.Status {
	t := time.Now()
	st := c.RawFileSystem.Fallocate(nil, in)
	c.done("fallocate", st, t)
	return st
}

func (c *countingFS) Release(cancel <-chan struct{}, in *fuse.ReleaseIn) {
	t := time.Now()
	c.RawFileSystem.Release(nil, in)
	c.done("release", fuse.OK, t)
}

func (c *countingFS) OpenDir(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	t := time.Now()
	st := c.RawFileSystem.OpenDir(nil, in, out)
	c.done("opendir", st, t)
	return st
}

func (c *countingFS) ReadDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	t := time.Now()
	st := c.RawFileSystem.ReadDir(nil, in, out)
	c.done("readdir", st, t)
	return st
}

func (c *countingFS) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	t := time.Now()
	st := c.RawFileSystem.ReadDirPlus(nil, in, out)
	c.done("readdirplus", st, t)
	return st
}

func (c *countingFS) StatFs(cancel <-chan struct{}, h *fuse.InHeader, out *fuse.StatfsOut) fuse.Status {
	t := time.Now()
	st := c.RawFileSystem.StatFs(nil, h, out)
	c.done("statfs", st, t)
	return st
}

func (c *countingFS) GetXAttr(cancel <-chan struct{}, h *fuse.InHeader, attr string, dest []byte) (uint32, fuse.Status) {
	t := time.Now()
	n, st := c.RawFileSystem.GetXAttr(nil, h, attr, dest)
	// ENODATA, ERANGE and ENOTSUP (a namespace keelfs does not store)
	// are ordinary answers to getxattr.
	c.obs("getxattr", st == fuse.OK || st == fuse.ENODATA || st == fuse.ERANGE || st == fuse.Status(syscall.ENOTSUP), time.Since(t))
	return n, st
}

func (c *countingFS) SetXAttr(cancel <-chan struct{}, in *fuse.SetXAttrIn, attr string, data []byte) fuse.Status {
	t := time.Now()
	st := c.RawFileSystem.SetXAttr(nil, in, attr, data)
	c.done("setxattr", st, t)
	return st
}
