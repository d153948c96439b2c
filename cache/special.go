package cache

import (
	"context"
	"syscall"
)

// Special files (FIFOs, sockets, character and block devices) are stored as
// s3fs stores them: a zero-byte object whose x-amz-meta-mode carries the
// file type bits (a FIFO of mode 0644 is "4516", 0o10644), with the usual
// uid, gid and time headers beside it. The kernel gives them their meaning:
// a FIFO opened on the mount is a pipe between the processes that open it,
// a device node opens the device (on a mount with the dev option), a socket
// is bound and connected to by its path. keelfs only stores the node.
//
// A device's number is kept in x-amz-meta-rdev, in the encoding FUSE uses
// (that of st_rdev for majors below 4096 and minors below 2^20). s3fs does
// not keep device numbers: a device it creates reads back as 0, 0 in either
// tool, and it ignores the header keelfs writes.

// isSpecial reports a FIFO, socket or device node.
func (k Kind) isSpecial() bool { return k >= KindFIFO && k <= KindBlockDev }

// isDevice reports a character or block device.
func (k Kind) isDevice() bool { return k == KindCharDev || k == KindBlockDev }

// entryExtra is what a new entry of some kinds carries beside its mode.
type entryExtra struct {
	Target string // symlinks
	Rdev   uint32 // devices
}

// Mknod creates a node of the type in mode's S_IFMT bits: a regular file
// (as Create), a FIFO, a socket or a device with number rdev. Whether the
// caller may make devices (CAP_MKNOD) was checked by the kernel.
func (c *Cache) Mknod(ctx context.Context, parent uint64, name string, mode, rdev, uid, gid uint32) (Attr, error) {
	var kind Kind
	switch mode & syscall.S_IFMT {
	case syscall.S_IFREG, 0:
		return c.Create(ctx, parent, name, mode&0o7777, uid, gid)
	case syscall.S_IFIFO:
		kind = KindFIFO
	case syscall.S_IFSOCK:
		kind = KindSocket
	case syscall.S_IFCHR:
		kind = KindCharDev
	case syscall.S_IFBLK:
		kind = KindBlockDev
	default:
		return Attr{}, ErrInvalid
	}
	ex := entryExtra{}
	if kind.isDevice() {
		ex.Rdev = rdev
	}
	return c.createEntry(parent, name, kind, mode&0o7777, uid, gid, ex)
}

// inheritGroup applies a set-group-ID directory's rule to a new entry in
// it, as Linux file systems do: the entry takes the directory's group
// instead of the creator's, and a new subdirectory is set-group-ID too.
// (Whether a new file keeps a set-group-ID bit it asked for was decided by
// the kernel before the request reached keelfs.)
func inheritGroup(dir, n *Inode) {
	if dir.Perm&syscall.S_ISGID == 0 {
		return
	}
	n.GID = dir.GID
	if n.Kind == KindDir {
		n.Perm |= syscall.S_ISGID
	}
}
