package fs

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/keelfs/keelfs/cache"
)

// Options configure the FUSE side of a mount.
type Options struct {
	FsName     string // shown as the first column of df/mount
	ReadOnly   bool
	AllowOther bool
	AllowRoot  bool
	// Suid and Dev lift the kernel's nosuid and nodev, which a FUSE mount
	// has by default; NoExec adds noexec. They need root.
	Suid, Dev, NoExec bool
	// DirSync makes every create, delete and rename wait until the
	// change is durable (Cache.SyncDir of the directories it changed).
	DirSync  bool
	TTL      time.Duration // entry, attribute and negative-entry timeouts
	MaxWrite int           // bytes per READ/WRITE request; default 1 MiB
	// KernelReadAhead is the kernel's read-ahead for the mount, in bytes
	// (default 4 MiB; negative leaves the kernel's own, 128 KiB).
	KernelReadAhead int
	ControlPath     string // answered by ControlIoctl on the root
	Debug           bool
	Logger          *slog.Logger
	Ops             OpObserver // told about every FUSE request; may be nil
	// Passthrough hands reads of files wholly in the cache to the kernel
	// (FUSE passthrough) where the kernel, the privileges and the cache
	// allow it; see passthrough.go.
	Passthrough bool
}

// FS is a mounted keelfs: the go-fuse server and the node registry that
// lets the cache tell the kernel about changes made behind its back.
type FS struct {
	c    *cache.Cache
	opt  Options
	log  *slog.Logger
	root *Node

	mu    sync.Mutex
	nodes map[uint64]*Node // live nodes by inode number, for notifications

	server *fuse.Server
	pt     ptState
	// directWrites: write-only opens may be FOPEN_DIRECT_IO (see ioOpen).
	directWrites atomic.Bool
}

// New returns the filesystem for c. Pass its Invalidate and InvalidateEntry
// methods to the cache (cache.Options) before opening it, or call Bind.
func New(opt Options) *FS {
	if opt.MaxWrite <= 0 {
		opt.MaxWrite = 1 << 20
	}
	if opt.TTL <= 0 {
		opt.TTL = time.Second
	}
	if opt.KernelReadAhead == 0 {
		opt.KernelReadAhead = 4 << 20
	}
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	f := &FS{opt: opt, log: opt.Logger, nodes: make(map[uint64]*Node)}
	f.root = &Node{fsys: f}
	return f
}

// SetControlPath sets the control socket path the root advertises.
func (f *FS) SetControlPath(p string) { f.opt.ControlPath = p }

// Bind attaches the cache the filesystem serves.
func (f *FS) Bind(c *cache.Cache) { f.c = c }

// Mount mounts the filesystem at dir and starts serving it. It returns
// once the kernel has the mount.
func (f *FS) Mount(dir string) error {
	if f.c == nil {
		return fmt.Errorf("fs: no cache bound")
	}
	ttl := f.opt.TTL
	opts := &gofs.Options{
		EntryTimeout:    &ttl,
		AttrTimeout:     &ttl,
		NegativeTimeout: &ttl,
		RootStableAttr:  &gofs.StableAttr{Ino: cache.RootIno},
		// Report permission bits as they are. Without it go-fuse shows
		// mode 0000 as 0644 (0755 for a directory), and the kernel,
		// which checks permissions against what we report, would let
		// everyone read a file chmod'ed to 0.
		NullPermissions: true,
		MountOptions: fuse.MountOptions{
			FsName:        f.opt.FsName,
			Name:          "keelfs",
			AllowOther:    f.opt.AllowOther,
			MaxWrite:      f.opt.MaxWrite,
			MaxReadAhead:  f.opt.MaxWrite,
			MaxBackground: 64,
			// Read replies are data in memory: writev them. Splicing
			// copies them into a pipe first, and a 1 MiB reply does not
			// fit the pipe, fails and is logged before the fallback.
			DisableSplice:        true,
			Debug:                f.opt.Debug,
			DirectMount:          true,
			EnableSymlinkCaching: false,
			// Locks are handled by the kernel within this mount; they
			// cannot span mounts (S3 has no locks).
			EnableLocks: false,
			Options:     []string{"default_permissions"},
			// keelfs clears set-ID bits itself on write, truncate and
			// chown, as the kernel asks (cache.DropSetID). In return the
			// kernel checks a file for security.capability once per
			// attribute refresh rather than with a GETXATTR before every
			// write(2), which FUSE's nosec-less default costs a mount that
			// answers getxattr.
			//
			// READDIRPLUS_AUTO: the kernel asks for entries with their
			// attributes (a lookup each, which waits for the entry's
			// headers) only where a listing is followed by stats (ls -l),
			// not for a program that wants names only (find, ls -f).
			ExtraCapabilities: fuse.CAP_HANDLE_KILLPRIV_V2 | fuse.CAP_READDIRPLUS_AUTO,
		},
	}
	if f.opt.ReadOnly {
		opts.MountOptions.Options = append(opts.MountOptions.Options, "ro")
	}
	if f.opt.AllowRoot && !f.opt.AllowOther {
		opts.MountOptions.Options = append(opts.MountOptions.Options, "allow_root")
	}
	opts.MountOptions.Options = append(opts.MountOptions.Options, kernelFlags(f.opt)...)
	if f.opt.Debug {
		opts.MountOptions.Logger = log.New(slogWriter{f.log}, "", 0)
	}
	// gofs.Mount, with the raw filesystem wrapped so that operations are
	// counted, and interrupts dropped, at the boundary (countingFS).
	obs := f.opt.Ops
	if obs == nil {
		obs = func(string, bool, time.Duration) {}
	}
	raw := &countingFS{RawFileSystem: gofs.NewNodeFS(f.root, opts), obs: obs, pt: &f.pt}
	server, err := fuse.NewServer(raw, dir, &opts.MountOptions)
	if err != nil {
		return fmt.Errorf("mount %s: %w", dir, err)
	}
	f.server = server // before any request: the replies of passthrough opens use it
	go server.Serve()
	if err := server.WaitMount(); err != nil {
		server.Unmount()
		return fmt.Errorf("mount %s: %w", dir, err)
	}
	f.startPassthrough(server)
	f.startDirectWrites(server)
	f.register(cache.RootIno, f.root)
	if f.opt.KernelReadAhead > 0 {
		if err := setReadAhead(dir, f.opt.KernelReadAhead); err != nil {
			// Not fatal: only slower sequential reads (an unprivileged
			// container's /sys is read-only, for one).
			f.log.Debug("fs: kernel read-ahead left at its default", "err", err)
		}
	}
	return nil
}

// kernelFlags are the mount(8) flags the kernel applies to the mount. go-fuse
// (and fusermount3, for a mount by another user) turns suid, dev and
// noexec into mount flags on top of FUSE's own nosuid and nodev. dirsync
// is shown in the mount table; keelfs itself does what it asks (see
// syncDirs). The sync option is not passed on: the kernel would send an
// fsync, that is an upload, after every write(2); keelfs's sync-on-close
// makes close wait instead.
func kernelFlags(o Options) []string {
	var flags []string
	if o.Suid {
		flags = append(flags, "suid")
	}
	if o.Dev {
		flags = append(flags, "dev")
	}
	if o.NoExec {
		flags = append(flags, "noexec")
	}
	if o.DirSync {
		flags = append(flags, "dirsync")
	}
	return flags
}

// setReadAhead sets the kernel's read-ahead for the filesystem mounted at
// dir. FUSE caps it at the mount at 128 KiB (the smaller of the kernel's
// default and what the filesystem asks for), so sequential reads reach
// keelfs as 128 KiB requests, one or two at a time. The mount's backing
// device info in sysfs raises it: the kernel then asks for 1 MiB requests,
// several at once, which halves the CPU per byte of a read served from the
// cache.
func setReadAhead(dir string, bytes int) error {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return err
	}
	p := fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", unix.Major(st.Dev), unix.Minor(st.Dev))
	return os.WriteFile(p, []byte(strconv.Itoa(bytes>>10)), 0)
}

// Wait blocks until the filesystem is unmounted.
func (f *FS) Wait() { f.server.Wait() }

// Unmount asks the kernel to unmount. It fails with EBUSY while files are
// open, like umount.
func (f *FS) Unmount() error { return f.server.Unmount() }

func (f *FS) register(ino uint64, n *Node) {
	f.mu.Lock()
	f.nodes[ino] = n
	f.mu.Unlock()
}

func (f *FS) forget(ino uint64, n *Node) {
	f.mu.Lock()
	if f.nodes[ino] == n {
		delete(f.nodes, ino)
	}
	f.mu.Unlock()
}

func (f *FS) node(ino uint64) *Node {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.nodes[ino]
}

// Invalidate drops the kernel's cached pages and attributes of ino. It is
// called by the cache when another writer's version replaced a file. It
// runs asynchronously: a notification sent from inside a FUSE request on
// the same inode could deadlock.
func (f *FS) Invalidate(ino uint64) {
	n := f.node(ino)
	if n == nil {
		return
	}
	go n.NotifyContent(0, 0)
}

// InvalidateEntry drops the kernel's dentry for name in parent.
func (f *FS) InvalidateEntry(parent uint64, name string) {
	n := f.node(parent)
	if n == nil {
		return
	}
	go n.NotifyEntry(name)
}

type slogWriter struct{ l *slog.Logger }

func (w slogWriter) Write(p []byte) (int, error) {
	w.l.Debug("fuse: " + strings.TrimSpace(string(p)))
	return len(p), nil
}

func callerIDs(ctx context.Context) (uid, gid uint32) {
	if c, ok := fuse.FromContext(ctx); ok {
		return c.Uid, c.Gid
	}
	return 0, 0
}

func fillAttr(a cache.Attr, out *fuse.Attr) {
	out.Ino = a.Ino
	out.Mode = a.Mode
	out.Size = uint64(a.Size)
	out.Blocks = uint64(a.Blocks)
	out.Nlink = a.Nlink
	out.Owner = fuse.Owner{Uid: a.UID, Gid: a.GID}
	out.Rdev = a.Rdev
	out.Blksize = 1 << 20
	at, mt, ct := a.Atime, a.Mtime, a.Ctime
	out.SetTimes(&at, &mt, &ct)
}
