// Package fs is the FUSE side of keelfs: a go-fuse node tree that turns
// kernel requests into calls on the cache package. It holds no filesystem
// state of its own beyond what go-fuse needs: each Node is a number the
// kernel knows, and every answer comes from the cache.
//
// # Errors
//
// Every error becomes an errno in errno.go, and only there. An error the
// mapper does not know becomes EIO and is logged once; none reaches the
// kernel as ENOSYS, which would tell it the operation does not exist.
//
// # Caching
//
// Entry, attribute and negative-entry timeouts are the metadata TTL. Open
// keeps the kernel's page cache (FOPEN_KEEP_CACHE) only while the content
// version is the one the kernel last opened; when another writer's version
// replaces a file, the cache calls Invalidate, which drops the kernel's
// pages asynchronously (a notification from inside a request on the same
// inode could deadlock). A write-only open made while no open reads through
// the page cache is FOPEN_DIRECT_IO on kernels that drop the pages a
// direct write covers (see ioOpen).
//
// # Locking
//
// Locks (flock, fcntl) are left to the kernel: they work between processes
// of one mount and do not span mounts.
package fs
