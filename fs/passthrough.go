package fs

import (
	"context"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/keelfs/keelfs/cache"
)

// FUSE passthrough (Linux 6.9 and later): an open gets a backing file,
// registered with the kernel, which then reads it, and maps it, without
// sending READs to keelfs. keelfs passes through reads of files whose
// content is wholly in the cache; writes stay on the normal path.
//
// The kernel's rules shape what is done here. An inode is in one I/O
// mode at a time: while any open of it passes through, every new open
// must too (or fail with EIO), with the same backing file; and a
// passthrough open fails while an open that uses the page cache exists.
// So the opens of a node are grouped in epochs: an epoch starts with a
// read-only open when no other open of the node exists and the cache
// has (or assembles) a backing file for its content, and every open
// until the last of them closes joins it. Joiners that must not read the
// backing file (writers, and opens of a newer version another writer
// made) are FOPEN_PASSTHROUGH with FOPEN_DIRECT_IO: their reads and
// writes come to keelfs, and the cache copies each write to the backing
// file so that the passthrough readers see it. A writer's mapping goes to
// the backing file itself: the cache takes in what it wrote when the
// writer closes, when the epoch ends, and, if a mapping outlives both,
// until it is gone (cache.Backing).
//
// keelfs registers and unregisters backing IDs itself (go-fuse's own
// handling, FilePassthroughFder, ties the ID to its own count of opens,
// which would let an open of a new epoch get the previous epoch's file).
// The open's reply is completed at the FUSE boundary (countingFS.Open):
// go-fuse hands a file's Open nothing of the reply but its flags, so
// Node.open leaves the decision in a slot found by the request's cancel
// channel, which countingFS makes unique per open.

// ptState is the filesystem's passthrough switch and the open slots.
type ptState struct {
	enabled atomic.Bool
	server  func() *fuse.Server
	log     func(msg string, args ...any)
	once    sync.Once
	slots   sync.Map // <-chan struct{} -> *openSlot
}

// openSlot carries an open's passthrough decision from Node.open to the
// reply.
type openSlot struct {
	ch   chan struct{} // never closed: to go-fuse, the same as no cancel
	node *Node
	ep   *epoch
}

// epoch is one run of passthrough opens of a node.
type epoch struct {
	bk      *cache.Backing
	id      int32 // the backing ID; 0 until the first reply registers it
	failed  bool  // registration failed: its opens are plain opens
	users   int   // opens in it
	writers bool  // a writer joined
}

// begin makes the slot of one OPEN or CREATE request.
func (p *ptState) begin() *openSlot {
	s := &openSlot{ch: make(chan struct{})}
	p.slots.Store((<-chan struct{})(s.ch), s)
	return s
}

// slotOf returns the slot of the request ctx belongs to, or nil.
func (p *ptState) slotOf(ctx context.Context) *openSlot {
	fc, ok := ctx.(*fuse.Context)
	if !ok || fc.Cancel == nil {
		return nil
	}
	if v, ok := p.slots.Load(fc.Cancel); ok {
		return v.(*openSlot)
	}
	return nil
}

// finish completes the reply of an open that joined an epoch: the first
// reply of an epoch registers its backing file. A registration that
// fails (not root, a cache on a stacked filesystem) turns passthrough off
// for the mount, and the epoch's opens go on as plain opens.
func (p *ptState) finish(s *openSlot, ok bool, out *fuse.OpenOut) {
	p.slots.Delete((<-chan struct{})(s.ch))
	if !ok || s.ep == nil {
		return
	}
	io := &s.node.state().io
	io.mu.Lock()
	defer io.mu.Unlock()
	ep := s.ep
	if ep.id == 0 && !ep.failed {
		id, errno := p.server().RegisterBackingFd(&fuse.BackingMap{Fd: int32(ep.bk.Fd())})
		if errno != 0 {
			ep.failed = true
			p.disable("the kernel refused the backing file", errno)
		} else {
			ep.id = id
		}
	}
	if ep.id != 0 {
		out.BackingID = ep.id
		if out.OpenFlags&fuse.FOPEN_DIRECT_IO == 0 {
			s.node.fsys.c.Stats().PassthroughOpens.Add(1)
		}
		out.OpenFlags |= fuse.FOPEN_PASSTHROUGH
		out.OpenFlags &^= fuse.FOPEN_KEEP_CACHE
	}
}

// disable turns passthrough off for the mount, saying why once.
func (p *ptState) disable(why string, errno syscall.Errno) {
	p.enabled.Store(false)
	p.once.Do(func() {
		p.log("fs: FUSE passthrough is off for this mount; reads of cached files go through keelfs", "reason", why, "errno", errno.Error())
	})
}

// ioMode is how one open file does its I/O.
type ioMode int

const (
	ioCached ioMode = iota // through the kernel's page cache
	ioDirect               // FOPEN_DIRECT_IO, outside any epoch
	ioEpoch                // in a passthrough epoch
)

// nodeIO is the I/O state of a node's open files: its page cache (see
// pageCache) and its passthrough epoch.
type nodeIO struct {
	mu     sync.Mutex
	pages  pageCache // guarded by mu
	direct int       // opens with FOPEN_DIRECT_IO outside an epoch
	ep     *epoch    // the epoch under way, or nil
}

// ioOpen decides how an open of version ver does its I/O, for the handle
// h the cache opened. The request's slot, if any, receives an epoch the
// open joins. An O_DIRECT open (direct) never reads the backing file: the
// backing file's filesystem would demand aligned buffers and offsets,
// which a FUSE file does not.
func (n *Node) ioOpen(ctx context.Context, h *cache.Handle, write, writeOnly, direct bool, ver uint64) (mode ioMode, ep *epoch, flags uint32, changed bool) {
	io := &n.state().io
	pt := &n.fsys.pt
	slot := pt.slotOf(ctx)
	io.mu.Lock()
	defer io.mu.Unlock()
	if io.ep != nil {
		ep = io.ep
		ep.users++
		if write || direct || ep.bk.Ver() != ver || !ep.bk.Current() {
			// Reads and writes come to keelfs; the kernel still wants
			// the backing file named.
			flags = fuse.FOPEN_DIRECT_IO
			if write {
				ep.writers = true
				ep.bk.AddWriter()
			}
		}
		if slot != nil {
			slot.node, slot.ep = n, ep
		}
		return ioEpoch, ep, flags, false
	}
	if !write && !direct && slot != nil && pt.enabled.Load() && io.pages.users == 0 && io.direct == 0 {
		bk, err := n.fsys.c.OpenBacking(ctx, h)
		if err != nil {
			n.fsys.log.Warn("fs: backing file for passthrough", "ino", n.ino(), "err", err)
		}
		if bk != nil {
			ep = &epoch{bk: bk, users: 1}
			io.ep = ep
			slot.node, slot.ep = n, ep
			return ioEpoch, ep, 0, false
		}
	}
	if writeOnly && io.pages.users == 0 && n.fsys.directWrites.Load() {
		// A write-only open reads nothing and cannot be mapped (mmap
		// needs read access), so its writes may go around the page
		// cache: keelfs has every byte of them anyway. Through the
		// page cache, a big write first fills new pages of this file
		// that nobody reads back, and a machine that hands unused
		// memory back to its host pays a fault for each of them (by
		// hand, a 1 GiB write after a 1 GiB read took 2.9-3.7 s to
		// close, and 1.6-1.7 s around the page cache).
		//
		// Only while no open reads through the page cache (a mapping
		// keeps its open until it is unmapped). Pages the kernel still
		// holds from earlier opens are dropped where the writes cover
		// them (the kernels directWrites admits, FUSE 7.40 and later,
		// do that before they send a direct write), and all of them by
		// the next open (known is false: no KEEP_CACHE). Opens made
		// while this one lasts take their usual way (a direct open
		// could not be mapped shared): a reader through the page cache
		// keeps what it reads, which the kernel drops where a later
		// direct write covers it. A page faulted in while such a write
		// is on its way may keep its old bytes (README).
		changed = io.pages.known && io.pages.ver != ver
		io.pages.known = false
		io.direct++
		return ioDirect, nil, fuse.FOPEN_DIRECT_IO, changed
	}
	flags, cached, changed := io.pages.acquire(ver)
	if cached {
		return ioCached, nil, flags, changed
	}
	io.direct++
	return ioDirect, nil, flags, changed
}

// ioRelease is called when an open file is released.
func (n *Node) ioRelease(ctx context.Context, f *fileHandle) {
	if f.mode == ioEpoch && f.h.Writable() {
		// While it still counts in the epoch, which keeps the backing
		// file.
		if err := f.ep.bk.TakeInMapped(ctx); err != nil {
			n.fsys.log.Error("fs: what a mapping wrote to a passthrough file could not be taken in", "ino", n.ino(), "err", err)
		}
	}
	io := &n.state().io
	io.mu.Lock()
	if f.mode == ioEpoch {
		// Reads that passed through move atime now, before the
		// epoch may end.
		f.ep.bk.NoteReads()
	}
	var end *epoch
	switch f.mode {
	case ioCached:
		io.pages.release()
	case ioDirect:
		io.direct--
	case ioEpoch:
		f.ep.users--
		if f.ep.users == 0 {
			end = f.ep
			io.ep = nil
			if end.writers {
				// Direct writes went around the page cache: do not keep
				// what it holds.
				io.pages.known = false
			}
			if end.id != 0 {
				if errno := n.fsys.server.UnregisterBackingFd(end.id); errno != 0 {
					n.fsys.log.Warn("fs: unregister backing file", "ino", n.ino(), "errno", errno.Error())
				}
			}
		}
	}
	io.mu.Unlock()
	if end != nil {
		if err := end.bk.Release(ctx); err != nil {
			n.fsys.log.Error("fs: what a mapping wrote to a passthrough file could not be taken in", "ino", n.ino(), "err", err)
		}
	}
}

// startPassthrough turns passthrough on if the mount asked for it and the
// kernel and the cache can do it, and says which.
func (f *FS) startPassthrough(server *fuse.Server) {
	f.pt.server = func() *fuse.Server { return f.server }
	f.pt.log = f.log.Info
	why := ""
	switch {
	case !f.opt.Passthrough:
		why = "turned off (--passthrough=false)"
	case server.KernelSettings().Flags64()&fuse.CAP_PASSTHROUGH == 0:
		why = "the kernel does not offer it (Linux 6.9 and later do)"
	case f.c == nil || !f.c.PassthroughPossible():
		why = "the cache is encrypted (the kernel would read plaintext from the disk)"
	}
	if why != "" {
		f.log.Info("fs: FUSE passthrough is off; reads of cached files go through keelfs", "reason", why)
		return
	}
	f.pt.enabled.Store(true)
	f.log.Debug("fs: FUSE passthrough is on for reads of files wholly in the cache")
}

// startDirectWrites lets write-only opens be direct (see ioOpen) where the
// kernel drops the pages a direct write covers: FUSE 7.40 (Linux 6.9,
// the first with passthrough) does.
func (f *FS) startDirectWrites(server *fuse.Server) {
	if ks := server.KernelSettings(); ks.Major > 7 || (ks.Major == 7 && ks.Minor >= 40) {
		f.directWrites.Store(true)
		return
	}
	f.log.Info("fs: write-only opens go through the page cache: the kernel's FUSE is older than 7.40")
}

// noteReads moves atime for the reads of n that passed through keelfs's
// back, if an epoch is under way (the kernel asks for the attributes
// again after such reads).
func (n *Node) noteReads() {
	st := n.st.Load()
	if st == nil {
		return // never opened
	}
	st.io.mu.Lock()
	defer st.io.mu.Unlock() // the epoch, and so its backing file, lasts while held
	if st.io.ep != nil {
		st.io.ep.bk.NoteReads()
	}
}
