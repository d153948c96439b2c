package cache

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Kind is the type of an inode.
type Kind uint8

const (
	KindFile Kind = iota + 1
	KindDir
	KindSymlink
	// Special files: zero-byte objects whose x-amz-meta-mode carries the
	// type, as s3fs stores them (see special.go).
	KindFIFO
	KindSocket
	KindCharDev
	KindBlockDev

	kindMax = KindBlockDev
)

func (k Kind) String() string {
	switch k {
	case KindFile:
		return "file"
	case KindDir:
		return "dir"
	case KindSymlink:
		return "symlink"
	case KindFIFO:
		return "fifo"
	case KindSocket:
		return "socket"
	case KindCharDev:
		return "char device"
	case KindBlockDev:
		return "block device"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Pending work bits of an inode (Inode.Pending). An inode with any bit set,
// or whose name moved away from its object, or that was unlinked, has an
// entry in the journal (see needsWork).
const (
	// pendData: the content differs from the object (dirty runs, or the
	// file was created and never uploaded).
	pendData uint8 = 1 << iota
	// pendMeta: mode, owner or mtime changed; the object's headers must be
	// rewritten.
	pendMeta
	// pendMarker: a directory needs its marker object written (mkdir,
	// chmod of a directory, an implicit directory that lost a child).
	pendMarker
)

// Inode is the persistent record of one file, directory or symlink. It is
// stored at key i/<ino>. Apart from Ino, every field may change; the
// in-memory copy in an inodeState is authoritative while one exists.
type Inode struct {
	Ino    uint64
	Gen    uint64 // tells reuses of Ino apart (FUSE generation)
	Parent uint64 // 0 once unlinked
	Name   string
	Path   string // key relative to the store prefix; "" for the root
	Kind   Kind

	Perm         uint32 // mode & 07777
	UID, GID     uint32
	Mtime, Ctime int64 // Unix nanoseconds
	Size         int64
	Unlinked     bool // no name any more; kept while handles are open

	// The object this inode's content and name derive from: where it was
	// listed, or where this mount last uploaded it. Directories use the
	// prefix with its trailing "/" and ETag "" when no marker exists.
	RemoteKey  string
	ETag       string
	RemoteSize int64
	AttrsKnown bool  // headers of this ETag were read or written by us
	ValidUntil int64 // attributes fresh until (Unix ns)
	SyncedSeq  uint64

	Target string // symlinks
	// ContentVer changes when another writer's version replaces the
	// content, so that the kernel's page cache of the old one is dropped.
	ContentVer uint64

	Runs    []Run  // block map of a file
	OpenGen uint64 // generation receiving writes; 0 before the first

	Pending uint8
	MetaVer uint32 // bumped on every attribute change

	// An upload in flight, recorded before it starts so that a restart
	// can recognise its own object (UploadToken) or abort the multipart
	// upload (UploadID).
	UploadKey     string
	UploadTokens  string // tokens of attempts at UploadKey, newest first, comma-separated
	UploadIfMatch string // ETag expected at UploadKey ("" = must not exist)
	UploadID      string

	// A lost race with another writer: the local version is being saved
	// under ConflictKey before the name takes the other writer's version.
	ConflictKey  string
	ConflictETag string

	// Directories.
	ListedUntil int64  // listing fresh until (Unix ns)
	FillEpoch   uint64 // epoch of the last listing merged into this directory
	Entries     uint32 // children seen in the last listing

	// Added in record version 2.
	Rdev  uint32 // device number of a character or block device (FUSE's encoding)
	Atime int64  // Unix nanoseconds
	// Xattrs are the extended attributes, name to value, as stored in
	// x-amz-meta-xattr (see xattr.go). The map is never changed in place:
	// a change installs a new one, so clones may share it.
	Xattrs map[string]string

	// Appended to version 2, optional: a record written before decodes it
	// as 0 (unknown), and an older keelfs ignores it.
	//
	// RemoteMod is S3's LastModified of the version ETag names, in Unix
	// seconds, as the last listing showed it; 0 if unknown; below zero
	// after this mount's own upload (see ownUploadMod). Another mount's
	// attribute change is a copy of the object onto itself: the same
	// content, so the same ETag, and a new LastModified. A listing that
	// shows one reads the headers again (notePlaceRewrite).
	RemoteMod int64
}

// Run maps the blocks [Start, End) of a file to a content generation.
// Gen 0 is a hole that reads as zeros. A clean run's blocks may be missing
// from the block store; they are then fetched from the inode's object. A
// dirty run's blocks are always present.
type Run struct {
	Start, End int64
	Gen        uint64
	Dirty      bool
}

// expectedKey is where this inode's object belongs given its current name.
func (n *Inode) expectedKey() string {
	if n.Kind == KindDir {
		if n.Path == "" {
			return ""
		}
		return n.Path + "/"
	}
	return n.Path
}

// moved reports that the inode's object lives under another key than its
// name says, so a copy (or marker write) and a delete are pending.
func (n *Inode) moved() bool {
	return n.RemoteKey != "" && n.RemoteKey != n.expectedKey()
}

// needsWork reports whether the inode belongs in the journal.
func (n *Inode) needsWork() bool {
	return n.Pending != 0 || n.Unlinked || n.ConflictKey != "" || (n.Ino != RootIno && n.moved())
}

// hasDirtyRuns reports whether any block differs from the object.
func (n *Inode) hasDirtyRuns() bool {
	for _, r := range n.Runs {
		if r.Dirty {
			return true
		}
	}
	return false
}

func (n *Inode) clone() *Inode {
	c := *n
	c.Runs = append([]Run(nil), n.Runs...)
	return &c
}

// recordVersion 2 appended Rdev, Atime and Xattrs to version 1's fields.
// Version 1 records (written by the previous release) still decode: their
// atime is their mtime, as that release reported it.
const (
	recordVersion   = 2
	recordVersionV1 = 1
)

func (n *Inode) marshal() []byte {
	var e encoder
	e.b = make([]byte, 0, 128+len(n.Path)+len(n.Name)+len(n.Runs)*8)
	e.b = append(e.b, recordVersion)
	e.u(n.Ino)
	e.u(n.Gen)
	e.u(n.Parent)
	e.s(n.Name)
	e.s(n.Path)
	e.u(uint64(n.Kind))
	e.u(uint64(n.Perm))
	e.u(uint64(n.UID))
	e.u(uint64(n.GID))
	e.i(n.Mtime)
	e.i(n.Ctime)
	e.i(n.Size)
	e.bool(n.Unlinked)
	e.s(n.RemoteKey)
	e.s(n.ETag)
	e.i(n.RemoteSize)
	e.bool(n.AttrsKnown)
	e.i(n.ValidUntil)
	e.u(n.SyncedSeq)
	e.s(n.Target)
	e.u(n.ContentVer)
	e.u(uint64(len(n.Runs)))
	for _, r := range n.Runs {
		e.i(r.Start)
		e.i(r.End - r.Start)
		e.u(r.Gen)
		e.bool(r.Dirty)
	}
	e.u(n.OpenGen)
	e.u(uint64(n.Pending))
	e.u(uint64(n.MetaVer))
	e.s(n.UploadKey)
	e.s(n.UploadTokens)
	e.s(n.UploadIfMatch)
	e.s(n.UploadID)
	e.s(n.ConflictKey)
	e.s(n.ConflictETag)
	e.i(n.ListedUntil)
	e.u(n.FillEpoch)
	e.u(uint64(n.Entries))
	e.u(uint64(n.Rdev))
	e.i(n.Atime)
	e.u(uint64(len(n.Xattrs)))
	for _, name := range sortedNames(n.Xattrs) {
		e.s(name)
		e.s(n.Xattrs[name])
	}
	e.i(n.RemoteMod)
	return e.b
}

var errCorruptRecord = errors.New("corrupt inode record")

func unmarshalInode(b []byte) (*Inode, error) {
	if len(b) == 0 || (b[0] != recordVersion && b[0] != recordVersionV1) {
		return nil, errCorruptRecord
	}
	d := decoder{b: b[1:]}
	n := &Inode{}
	n.Ino = d.u()
	n.Gen = d.u()
	n.Parent = d.u()
	n.Name = d.s()
	n.Path = d.s()
	n.Kind = Kind(d.u())
	n.Perm = uint32(d.u())
	n.UID = uint32(d.u())
	n.GID = uint32(d.u())
	n.Mtime = d.i()
	n.Ctime = d.i()
	n.Size = d.i()
	n.Unlinked = d.bool()
	n.RemoteKey = d.s()
	n.ETag = d.s()
	n.RemoteSize = d.i()
	n.AttrsKnown = d.bool()
	n.ValidUntil = d.i()
	n.SyncedSeq = d.u()
	n.Target = d.s()
	n.ContentVer = d.u()
	nr := d.u()
	if nr > uint64(len(b)) {
		return nil, errCorruptRecord
	}
	if nr > 0 {
		n.Runs = make([]Run, nr)
		for i := range n.Runs {
			r := &n.Runs[i]
			r.Start = d.i()
			r.End = r.Start + d.i()
			r.Gen = d.u()
			r.Dirty = d.bool()
		}
	}
	n.OpenGen = d.u()
	n.Pending = uint8(d.u())
	n.MetaVer = uint32(d.u())
	n.UploadKey = d.s()
	n.UploadTokens = d.s()
	n.UploadIfMatch = d.s()
	n.UploadID = d.s()
	n.ConflictKey = d.s()
	n.ConflictETag = d.s()
	n.ListedUntil = d.i()
	n.FillEpoch = d.u()
	n.Entries = uint32(d.u())
	if b[0] == recordVersionV1 {
		n.Atime = n.Mtime
		if d.err != nil || n.Kind < KindFile || n.Kind > KindSymlink {
			return nil, errCorruptRecord
		}
		return n, nil
	}
	n.Rdev = uint32(d.u())
	n.Atime = d.i()
	nx := d.u()
	if nx > uint64(len(b)) {
		return nil, errCorruptRecord
	}
	if nx > 0 {
		n.Xattrs = make(map[string]string, nx)
		for range nx {
			name := d.s()
			n.Xattrs[name] = d.s()
		}
	}
	if len(d.b) > 0 {
		n.RemoteMod = d.i()
	}
	if d.err != nil || n.Kind < KindFile || n.Kind > kindMax {
		return nil, errCorruptRecord
	}
	return n, nil
}

type encoder struct{ b []byte }

func (e *encoder) u(v uint64) { e.b = binary.AppendUvarint(e.b, v) }
func (e *encoder) i(v int64)  { e.b = binary.AppendVarint(e.b, v) }
func (e *encoder) s(v string) { e.u(uint64(len(v))); e.b = append(e.b, v...) }
func (e *encoder) bool(v bool) {
	if v {
		e.b = append(e.b, 1)
	} else {
		e.b = append(e.b, 0)
	}
}

type decoder struct {
	b   []byte
	err error
}

func (d *decoder) u() uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = errCorruptRecord
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) i() int64 {
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.err = errCorruptRecord
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) s() string {
	l := d.u()
	if l > uint64(len(d.b)) {
		d.err = errCorruptRecord
		return ""
	}
	v := string(d.b[:l])
	d.b = d.b[l:]
	return v
}

func (d *decoder) bool() bool {
	if len(d.b) == 0 {
		d.err = errCorruptRecord
		return false
	}
	v := d.b[0] != 0
	d.b = d.b[1:]
	return v
}
