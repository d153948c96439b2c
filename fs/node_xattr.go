package fs

import (
	"context"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"

	"github.com/keelfs/keelfs/cache"
)

// Extended attributes of the user namespace are stored in the object's
// metadata, as s3fs stores them (see cache/xattr.go). Every other
// namespace answers ENOTSUP, not ENODATA: ls(1) takes it to mean the file
// system has no ACLs or security labels and stops asking, so an `ls -l`
// of 200 files cost 2 GETXATTR requests (security.selinux and
// system.posix_acl_access of the first), not 400. The kernel has checked
// permissions (default_permissions): user attributes only on files and
// directories, read or write permission as for the content.

var _ = (gofs.NodeGetxattrer)((*Node)(nil))

// Getxattr copies the value into dest, or answers ERANGE and the size
// the value needs when dest is too small (size 0 asks for the size).
func (n *Node) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	if attr == ControlXattr && n.ino() == cache.RootIno && n.fsys.opt.ControlPath != "" {
		v := n.fsys.opt.ControlPath
		if len(v) > len(dest) {
			return uint32(len(v)), syscall.ERANGE
		}
		return uint32(copy(dest, v)), 0
	}
	v, err := n.fsys.c.Getxattr(ctx, n.ino(), attr)
	if err != nil {
		return 0, toErrno("getxattr", err)
	}
	if len(v) > len(dest) {
		return uint32(len(v)), syscall.ERANGE
	}
	return uint32(copy(dest, v)), 0
}

var _ = (gofs.NodeListxattrer)((*Node)(nil))

// Listxattr writes the names, each NUL-terminated, like Getxattr.
func (n *Node) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	names, err := n.fsys.c.Listxattr(ctx, n.ino())
	if err != nil {
		return 0, toErrno("listxattr", err)
	}
	size := 0
	for _, name := range names {
		size += len(name) + 1
	}
	if size > len(dest) {
		return uint32(size), syscall.ERANGE
	}
	off := 0
	for _, name := range names {
		off += copy(dest[off:], name)
		dest[off] = 0
		off++
	}
	return uint32(size), 0
}

var _ = (gofs.NodeSetxattrer)((*Node)(nil))

func (n *Node) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	return toErrno("setxattr", n.fsys.c.Setxattr(ctx, n.ino(), attr, data, flags&(cache.XattrCreate|cache.XattrReplace)))
}

var _ = (gofs.NodeRemovexattrer)((*Node)(nil))

func (n *Node) Removexattr(ctx context.Context, attr string) syscall.Errno {
	return toErrno("removexattr", n.fsys.c.Removexattr(ctx, n.ino(), attr))
}
