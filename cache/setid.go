package cache

import (
	"context"
	"syscall"
)

// Set-user-ID and set-group-ID bits are cleared as Linux clears them when
// a file is written or truncated by a user without CAP_FSETID, or chowned:
// set-user-ID always, set-group-ID when group execute is set too (without
// it the bit marks mandatory locking and stays). The kernel decides when
// (keelfs mounts with FUSE's handle_killpriv_v2, so that a write does not
// cost a getxattr request; see fs.Options) and keelfs does the clearing.

// dropSetID returns perm without the bits a write or chown clears.
func dropSetID(perm uint32) uint32 {
	perm &^= syscall.S_ISUID
	if perm&(syscall.S_ISGID|syscall.S_IXGRP) == syscall.S_ISGID|syscall.S_IXGRP {
		perm &^= syscall.S_ISGID
	}
	return perm
}

// DropSetID clears the set-ID bits of a file that is about to be chowned
// or truncated. It changes nothing, and costs no write, when they are not
// set; directories keep theirs.
func (c *Cache) DropSetID(ctx context.Context, ino uint64) error {
	st, err := c.acquire(ino)
	if err != nil {
		return err
	}
	defer c.release(st)
	return c.dropSetIDOf(st)
}

// DropSetID is Cache.DropSetID for the file being written through h.
func (h *Handle) DropSetID() error { return h.c.dropSetIDOf(h.st) }

func (c *Cache) dropSetIDOf(st *inodeState) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	n := st.rec
	if n == nil || n.Kind == KindDir || dropSetID(n.Perm) == n.Perm {
		return nil
	}
	if c.opt.ReadOnly {
		return ErrReadOnly
	}
	old := n.clone()
	n.Perm = dropSetID(n.Perm)
	n.Ctime = c.now()
	n.MetaVer++
	n.Pending |= pendMeta
	if err := c.persistLocked(st, old); err != nil {
		*n = *old
		return err
	}
	return nil
}
