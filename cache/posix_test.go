package cache

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keelfs/keelfs/s3backend"
)

// A record written by the previous release (version 1, without Rdev,
// Atime and Xattrs) still decodes, its atime taken from its mtime: a cache
// directory survives the upgrade.
func TestInodeVersion1Decodes(t *testing.T) {
	n := &Inode{Ino: 77, Gen: 3, Parent: 1, Name: "a", Path: "x/a", Kind: KindSymlink, Perm: 0o640, UID: 7, GID: 8,
		Mtime: 1700000000123456789, Ctime: 5, Size: 9, RemoteKey: "x/a", ETag: `"e"`, Target: "t", Entries: 4}
	v2 := n.marshal()
	// Version 2 appends Rdev 0, Atime 0, no xattrs and RemoteMod 0: one
	// byte each.
	if tail := v2[len(v2)-4:]; string(tail) != "\x00\x00\x00\x00" {
		t.Fatalf("unexpected version 2 tail %v", tail)
	}
	v1 := append([]byte{recordVersionV1}, v2[1:len(v2)-4]...) // less Rdev, Atime, the xattr count and RemoteMod
	got, err := unmarshalInode(v1)
	if err != nil {
		t.Fatalf("version 1 record: %v", err)
	}
	if got.Path != "x/a" || got.Target != "t" || got.Entries != 4 || got.Atime != n.Mtime || got.Rdev != 0 || got.Xattrs != nil {
		t.Fatalf("version 1 decoded as %+v", got)
	}
	// A version 1 record never held the new kinds.
	v1[1+len(encodeU(77))+len(encodeU(3))+len(encodeU(1))+2+4] = byte(KindFIFO)
	if _, err := unmarshalInode(v1); err == nil {
		t.Fatal("version 1 record of kind fifo accepted")
	}
}

func encodeU(v uint64) []byte { var e encoder; e.u(v); return e.b }

func TestInodeVersion2RoundTrip(t *testing.T) {
	n := &Inode{Ino: 5, Gen: 1, Kind: KindCharDev, Perm: 0o600, Rdev: 259, Atime: -42, Mtime: 1,
		Xattrs: map[string]string{"user.b": "\x00\xff", "user.a": "", "system.posix_acl_access": "acl"}, RemoteMod: 1_700_000_000}
	got, err := unmarshalInode(n.marshal())
	if err != nil {
		t.Fatal(err)
	}
	if got.Kind != KindCharDev || got.Rdev != 259 || got.Atime != -42 || len(got.Xattrs) != 3 ||
		got.Xattrs["user.b"] != "\x00\xff" || got.Xattrs["user.a"] != "" || got.Xattrs["system.posix_acl_access"] != "acl" ||
		got.RemoteMod != 1_700_000_000 {
		t.Fatalf("round trip: %+v", got)
	}
	b := n.marshal()
	var tail encoder
	tail.i(n.RemoteMod)
	optional := len(b) - len(tail.b) // the optional fields begin here
	for cut := 1; cut < len(b); cut++ {
		got, err := unmarshalInode(b[:cut])
		switch {
		case cut == optional && (err != nil || got.RemoteMod != 0):
			t.Fatalf("record without its optional fields (as an older keelfs wrote it): %v %+v", err, got)
		case cut != optional && err == nil:
			t.Fatalf("record cut at %d of %d accepted", cut, len(b))
		}
	}
	bad := b[:optional:optional]
	bad[len(bad)-1-len("acl")-1-len("system.posix_acl_access")-1-len("\x00\xff")-1-len("user.b")-1-0-1-len("user.a")-1] = 200 // xattr count
	if _, err := unmarshalInode(bad); err == nil {
		t.Fatal("record with a bad xattr count accepted")
	}
}

// The x-amz-meta-xattr header is written exactly as s3fs writes it, and
// what s3fs writes (including '/' left unescaped, as s3fs 1.90 does) reads
// back.
func TestXattrHeaderS3fsFormat(t *testing.T) {
	cases := []struct {
		m   map[string]string
		hdr string
	}{
		{map[string]string{"user.foo": "bar"}, "%7B%22user.foo%22%3A%22YmFy%22%7D"},
		{map[string]string{"user.k": "v1", "user.bin": "\x00\x01\xff"}, "%7B%22user.bin%22%3A%22AAH/%22%2C%22user.k%22%3A%22djE%3D%22%7D"},
		{map[string]string{"user.color": "blue", "user.bin": "\x00\xff\x10"}, "%7B%22user.bin%22%3A%22AP8Q%22%2C%22user.color%22%3A%22Ymx1ZQ%3D%3D%22%7D"},
		{map[string]string{"user.empty": ""}, "%7B%22user.empty%22%3A%22%22%7D"},
	}
	for _, c := range cases {
		if got := encodeXattrs(c.m); got != c.hdr {
			t.Errorf("encode %q: %s, want %s", c.m, got, c.hdr)
		}
		got := decodeXattrs(c.hdr)
		if len(got) != len(c.m) {
			t.Errorf("decode %s: %q", c.hdr, got)
		}
		for k, v := range c.m {
			if got[k] != v {
				t.Errorf("decode %s: %q = %q, want %q", c.hdr, k, got[k], v)
			}
		}
	}
	// s3fs's parser skips a pair it cannot read and keeps the rest; so
	// does keelfs. An empty map ("{}", which s3fs writes after removing
	// the last one) is no attributes.
	got := decodeXattrs(`{"user.a":"YQ==",broken,"user.b":"Yg=="}`)
	if len(got) != 2 || got["user.a"] != "a" || got["user.b"] != "b" {
		t.Fatalf("lenient decode: %q", got)
	}
	for _, h := range []string{"%7B%7D", "", "not json", "%7", "}{"} {
		if got := decodeXattrs(h); len(got) != 0 {
			t.Errorf("decode %q: %q", h, got)
		}
	}
}

// FuzzXattrHeader: any header decodes without panic, and any attributes
// keelfs can store read back from the header it writes.
func FuzzXattrHeader(f *testing.F) {
	f.Add("%7B%22user.foo%22%3A%22YmFy%22%7D", "user.x", []byte("v"))
	f.Add("{\"a\":\"b\"", "user.:", []byte{0, 1, 2})
	f.Fuzz(func(t *testing.T, hdr, name string, value []byte) {
		decodeXattrs(hdr)
		if strings.ContainsAny(name, `",`) || name == "" {
			return
		}
		m := map[string]string{name: string(value), "user.other": "o"}
		got := decodeXattrs(encodeXattrs(m))
		if got[name] != string(value) || got["user.other"] != "o" {
			t.Fatalf("%q = %q round trips as %q", name, value, got)
		}
	})
}

func TestDropSetID(t *testing.T) {
	for _, c := range []struct{ in, want uint32 }{
		{0o6755, 0o755},  // both go: group execute is set
		{0o6745, 0o2745}, // set-group-ID without group execute marks locking: it stays
		{0o4700, 0o700},
		{0o1777, 0o1777}, // sticky is not a set-ID bit
		{0o644, 0o644},
	} {
		if got := dropSetID(c.in); got != c.want {
			t.Errorf("dropSetID(%o) = %o, want %o", c.in, got, c.want)
		}
	}
}

// Special files are zero-byte objects whose mode carries their type, as
// s3fs stores them; a device keeps its number. They survive a cache lost
// (a new cache on the same bucket) and a rename.
func TestSpecialFilesStored(t *testing.T) {
	e := newEnv(t, nil)
	for _, c := range []struct {
		name string
		mode uint32
		rdev uint32
		hdr  string
	}{
		{"fifo", syscall.S_IFIFO | 0o644, 0, "4516"},
		{"chr", syscall.S_IFCHR | 0o644, 259, "8612"},
		{"blk", syscall.S_IFBLK | 0o600, 7<<8 | 9, "24960"},
		{"sock", syscall.S_IFSOCK | 0o755, 0, "49645"},
	} {
		a, err := e.c.Mknod(ctx, RootIno, c.name, c.mode, c.rdev, 1000, 1000)
		if err != nil {
			t.Fatalf("mknod %s: %v", c.name, err)
		}
		if a.Mode != c.mode || a.Rdev != c.rdev || a.Size != 0 {
			t.Fatalf("%s: mode %o rdev %d size %d", c.name, a.Mode, a.Rdev, a.Size)
		}
		e.drain()
		data, info, ok := e.store.Object(c.name)
		if !ok || len(data) != 0 || info.Metadata[metaMode] != c.hdr {
			t.Fatalf("%s: object %q %v, headers %v", c.name, data, ok, info.Metadata)
		}
		rd, has := info.Metadata[metaRdev]
		if want := strconv.FormatUint(uint64(c.rdev), 10); has != (c.mode&syscall.S_IFMT == syscall.S_IFCHR || c.mode&syscall.S_IFMT == syscall.S_IFBLK) || has && rd != want {
			t.Fatalf("%s: rdev header %q (present %v), want %q", c.name, rd, has, want)
		}
	}
	if err := e.c.Rename(ctx, RootIno, "chr", RootIno, "chr2", 0); err != nil {
		t.Fatal(err)
	}
	e.drain()
	// A new mount with an empty cache reads what S3 holds.
	e2 := newEnvOn(t, e.store)
	for name, want := range map[string]uint32{"fifo": syscall.S_IFIFO | 0o644, "chr2": syscall.S_IFCHR | 0o644, "blk": syscall.S_IFBLK | 0o600, "sock": syscall.S_IFSOCK | 0o755} {
		a := e2.mustLookup(name)
		if a.Mode != want {
			t.Errorf("%s after remount: mode %o, want %o", name, a.Mode, want)
		}
		if name == "chr2" && a.Rdev != 259 || name == "blk" && a.Rdev != 7<<8|9 {
			t.Errorf("%s after remount: rdev %d", name, a.Rdev)
		}
	}
	if _, err := e2.lookup("chr"); !errors.Is(err, ErrNotExist) {
		t.Errorf("old name after rename: %v", err)
	}
}

// newEnvOn opens a second cache, in a directory of its own, on store.
func newEnvOn(t *testing.T, store s3backend.ObjectStore) *env {
	t.Helper()
	e := newEnv(t, func(o *Options) { o.Store = store })
	return e
}

// Extended attributes: set, replaced, listed and removed; stored in
// s3fs's header; kept across a rename and a new cache; a removal takes
// the header away.
func TestXattrs(t *testing.T) {
	e := newEnv(t, nil)
	e.write("f", 0, []byte("content"))
	e.drain()
	ino := e.mustLookup("f").Ino
	before := e.mustLookup("f").Ctime
	e.clock.Advance(time.Second)
	if err := e.c.Setxattr(ctx, ino, "user.b", []byte("2"), XattrReplace); !errors.Is(err, ErrNoAttr) {
		t.Fatalf("replace of a missing attribute: %v", err)
	}
	for _, kv := range [][2]string{{"user.b", "2"}, {"user.a", "1"}} {
		if err := e.c.Setxattr(ctx, ino, kv[0], []byte(kv[1]), XattrCreate); err != nil {
			t.Fatalf("setxattr %s: %v", kv[0], err)
		}
	}
	if err := e.c.Setxattr(ctx, ino, "user.a", []byte("x"), XattrCreate); !errors.Is(err, ErrExist) {
		t.Fatalf("create of an existing attribute: %v", err)
	}
	if a := e.mustLookup("f"); !a.Ctime.After(before) {
		t.Fatalf("setxattr left ctime at %v", a.Ctime)
	}
	for _, bad := range []string{"trusted.a", "security.selinux", "system.posix_acl_access", "a"} {
		if err := e.c.Setxattr(ctx, ino, bad, []byte("v"), 0); !errors.Is(err, ErrNotSupported) {
			t.Errorf("setxattr %s: %v", bad, err)
		}
		if _, err := e.c.Getxattr(ctx, ino, bad); !errors.Is(err, ErrNotSupported) {
			t.Errorf("getxattr %s: %v", bad, err)
		}
	}
	if err := e.c.Setxattr(ctx, ino, "user.a,b", []byte("v"), 0); !errors.Is(err, ErrInvalid) {
		t.Errorf("setxattr of a name s3fs cannot store: %v", err)
	}
	e.drain()
	_, info, _ := e.store.Object("f")
	if got := info.Metadata[metaXattr]; got != "%7B%22user.a%22%3A%22MQ%3D%3D%22%2C%22user.b%22%3A%22Mg%3D%3D%22%7D" {
		t.Fatalf("x-amz-meta-xattr %q", got)
	}
	if string(e.object("f")) != "content" {
		t.Fatal("an attribute change touched the content")
	}
	if err := e.c.Rename(ctx, RootIno, "f", RootIno, "g", 0); err != nil {
		t.Fatal(err)
	}
	e.drain()
	e2 := newEnvOn(t, e.store)
	g := e2.mustLookup("g").Ino
	names, err := e2.c.Listxattr(ctx, g)
	if err != nil || strings.Join(names, ",") != "user.a,user.b" {
		t.Fatalf("listxattr after rename and remount: %q %v", names, err)
	}
	if v, err := e2.c.Getxattr(ctx, g, "user.b"); err != nil || string(v) != "2" {
		t.Fatalf("getxattr: %q %v", v, err)
	}
	for _, name := range names {
		if err := e2.c.Removexattr(ctx, g, name); err != nil {
			t.Fatalf("removexattr %s: %v", name, err)
		}
	}
	if err := e2.c.Removexattr(ctx, g, "user.a"); !errors.Is(err, ErrNoAttr) {
		t.Fatalf("second removexattr: %v", err)
	}
	e2.drain()
	if _, info, _ := e.store.Object("g"); info.Metadata[metaXattr] != "" {
		t.Fatalf("header after the last attribute went: %v", info.Metadata)
	}
}

// S3 allows 2 KB of user metadata: a setxattr beyond it fails, E2BIG for
// an attribute that could never fit and ENOSPC for one that does not fit
// beside the others, and what was stored stays.
func TestXattrMetadataLimit(t *testing.T) {
	e := newEnv(t, nil)
	e.write("f", 0, []byte("x"))
	ino := e.mustLookup("f").Ino
	if err := e.c.Setxattr(ctx, ino, "user.big", make([]byte, 1600), 0); !errors.Is(err, ErrXattrTooBig) {
		t.Fatalf("1600 bytes (2133 in base64): %v", err)
	}
	one := []byte(strings.Repeat("a", 700))
	if err := e.c.Setxattr(ctx, ino, "user.one", one, 0); err != nil {
		t.Fatalf("700 bytes: %v", err)
	}
	if err := e.c.Setxattr(ctx, ino, "user.two", one, 0); !errors.Is(err, ErrXattrNoRoom) {
		t.Fatalf("700 more bytes: %v", err)
	}
	if v, err := e.c.Getxattr(ctx, ino, "user.one"); err != nil || string(v) != string(one) {
		t.Fatalf("the first attribute after the refused one: %d bytes, %v", len(v), err)
	}
	e.drain()
	_, info, _ := e.store.Object("f")
	size := 0
	for k, v := range info.Metadata {
		size += len("x-amz-meta-") + len(k) + len(v)
	}
	if size > 2048 {
		t.Fatalf("stored metadata is %d bytes", size)
	}
	if !strings.Contains(info.Metadata[metaXattr], "user.one") {
		t.Fatalf("headers %v", info.Metadata)
	}
}

// Set-group-ID directories: a new entry takes the directory's group, and
// a new subdirectory is set-group-ID too.
func TestSetgidDirectoryInherits(t *testing.T) {
	e := newEnv(t, nil)
	d, err := e.c.Mkdir(ctx, RootIno, "d", 0o2775, 1000, 4321)
	if err != nil {
		t.Fatal(err)
	}
	f, err := e.c.Create(ctx, d.Ino, "f", 0o644, 1000, 1000)
	if err != nil {
		t.Fatal(err)
	}
	sub, err := e.c.Mkdir(ctx, d.Ino, "sub", 0o755, 1000, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if f.GID != 4321 || f.Mode&syscall.S_ISGID != 0 {
		t.Errorf("file in a set-group-ID dir: gid %d mode %o", f.GID, f.Mode)
	}
	if sub.GID != 4321 || sub.Mode&syscall.S_ISGID == 0 {
		t.Errorf("subdirectory: gid %d mode %o", sub.GID, sub.Mode)
	}
	plain, err := e.c.Mkdir(ctx, RootIno, "plain", 0o755, 1000, 1000)
	if err != nil {
		t.Fatal(err)
	}
	g, err := e.c.Create(ctx, plain.Ino, "g", 0o644, 1000, 77)
	if err != nil || g.GID != 77 {
		t.Errorf("file in a plain dir: gid %d %v", g.GID, err)
	}
}

// atime: an explicit one is kept and written to x-amz-meta-atime; a read
// moves it as relatime does, without an upload of its own.
func TestAtime(t *testing.T) {
	e := newEnv(t, nil)
	e.write("f", 0, []byte("x"))
	e.drain()
	ino := e.mustLookup("f").Ino
	at := time.Date(2001, 2, 3, 4, 5, 6, 7, time.UTC)
	if _, err := e.c.Setattr(ctx, ino, SetAttr{Atime: &at}); err != nil {
		t.Fatal(err)
	}
	if a := e.mustLookup("f"); !a.Atime.Equal(at) {
		t.Fatalf("atime %v", a.Atime)
	}
	e.drain()
	_, info, _ := e.store.Object("f")
	if info.Metadata[metaAtime] != "981173106.000000007" {
		t.Fatalf("x-amz-meta-atime %q", info.Metadata[metaAtime])
	}
	e.store.ResetCounts()
	e.clock.Advance(time.Second)
	e.read("f") // atime older than mtime: relatime moves it
	now := e.clock.Now()
	if a := e.mustLookup("f"); !a.Atime.Equal(now) {
		t.Fatalf("atime after a read %v, want %v", a.Atime, now)
	}
	e.clock.Advance(time.Hour)
	e.read("f") // moved an hour ago, after the mtime: stays
	if a := e.mustLookup("f"); !a.Atime.Equal(now) {
		t.Fatalf("atime after a second read %v, want %v", a.Atime, now)
	}
	e.clock.Advance(relatimeAge)
	e.read("f") // a day old: moves
	if a := e.mustLookup("f"); !a.Atime.Equal(e.clock.Now()) {
		t.Fatalf("atime after a read a day later %v, want %v", a.Atime, e.clock.Now())
	}
	now = e.clock.Now()
	e.drain()
	if c := e.store.Counts(); c["put"]+c["copy"] != 0 {
		t.Fatalf("reads made S3 requests %v", c)
	}
	// It is kept in the cache across a remount, and goes to S3 with the
	// next upload.
	e.reopen()
	if a := e.mustLookup("f"); !a.Atime.Equal(now) {
		t.Fatalf("atime after remount %v, want %v", a.Atime, now)
	}
	mode := uint32(0o600)
	if _, err := e.c.Setattr(ctx, ino, SetAttr{Mode: &mode}); err != nil {
		t.Fatal(err)
	}
	e.drain()
	if _, info, _ := e.store.Object("f"); info.Metadata[metaAtime] != formatUnixTime(now.UnixNano()) {
		t.Fatalf("x-amz-meta-atime after the next upload %q, want %q", info.Metadata[metaAtime], formatUnixTime(now.UnixNano()))
	}
}

// A directory's link count is 2 plus its subdirectories.
func TestDirNlink(t *testing.T) {
	e := newEnv(t, nil)
	d, err := e.c.Mkdir(ctx, RootIno, "d", 0o755, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if d.Nlink != 2 {
		t.Fatalf("new dir nlink %d", d.Nlink)
	}
	for _, n := range []string{"a", "b"} {
		if _, err := e.c.Mkdir(ctx, d.Ino, n, 0o755, 0, 0); err != nil {
			t.Fatal(err)
		}
	}
	e.write("d/file", 0, nil)
	if a := e.mustLookup("d"); a.Nlink != 4 {
		t.Fatalf("nlink with two subdirs and a file: %d", a.Nlink)
	}
	if err := e.c.Rename(ctx, d.Ino, "a", RootIno, "a", 0); err != nil {
		t.Fatal(err)
	}
	if err := e.c.Rmdir(ctx, d.Ino, "b"); err != nil {
		t.Fatal(err)
	}
	if a := e.mustLookup("d"); a.Nlink != 2 {
		t.Fatalf("nlink after the subdirs went: %d", a.Nlink)
	}
	if a := e.mustLookup(""); a.Nlink != 4 { // d and a
		t.Fatalf("root nlink %d", a.Nlink)
	}
}

// Files coming and going in a directory do not make its link count be
// counted again: the kernel asks for a directory's attributes after every
// create in it, and a walk each time made bulk creates quadratic.
func TestDirNlinkNotRecountedForFiles(t *testing.T) {
	e := newEnv(t, nil)
	d, err := e.c.Mkdir(ctx, RootIno, "d", 0o755, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	walks := func() int {
		e.c.ns.nlinks.mu.Lock()
		defer e.c.ns.nlinks.mu.Unlock()
		return e.c.ns.nlinks.counts
	}
	e.mustLookup("d")
	before := walks()
	for i := 0; i < 50; i++ {
		if _, err := e.c.Create(ctx, d.Ino, fmt.Sprintf("f%d", i), 0o644, 0, 0); err != nil {
			t.Fatal(err)
		}
		if a, err := e.c.Getattr(ctx, d.Ino); err != nil || a.Nlink != 2 {
			t.Fatalf("nlink %d %v", a.Nlink, err)
		}
	}
	if err := e.c.Unlink(ctx, d.Ino, "f3"); err != nil {
		t.Fatal(err)
	}
	if a := e.mustLookup("d"); a.Nlink != 2 || walks() != before {
		t.Fatalf("nlink %d after %d walks for 50 creates and an unlink, want none", a.Nlink, walks()-before)
	}
	if _, err := e.c.Mkdir(ctx, d.Ino, "sub", 0o755, 0, 0); err != nil {
		t.Fatal(err)
	}
	if a := e.mustLookup("d"); a.Nlink != 3 {
		t.Fatalf("after mkdir: nlink %d", a.Nlink)
	}
}

// A read of a file whose changes are not uploaded yet moves its atime
// too, and the move outlives the open: it was kept only in memory, and
// lost when the last handle let the inode's state go.
func TestAtimeOfPendingFileKept(t *testing.T) {
	// The upload waits for the drain: the read comes before it.
	e := newEnv(t, func(o *Options) { o.WriteBackDelay = time.Hour })
	e.write("f", 0, []byte("x"))
	ino := e.mustLookup("f").Ino
	old := e.clock.Now().Add(-48 * time.Hour)
	if _, err := e.c.Setattr(ctx, ino, SetAttr{Atime: &old}); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(time.Second)
	e.read("f") // opens, reads, closes: nothing holds the inode after
	now := e.clock.Now()
	if a := e.mustLookup("f"); !a.Atime.Equal(now) {
		t.Fatalf("atime %v after a read of a pending file, want %v", a.Atime, now)
	}
	e.reopen()
	if a := e.mustLookup("f"); !a.Atime.Equal(now) {
		t.Fatalf("atime %v after a remount, want %v", a.Atime, now)
	}
	// It reaches S3 with the pending upload.
	e.drain()
	want := fmt.Sprint(now.Unix()) // whole seconds are written as such
	if _, info, _ := e.store.Object("f"); info.Metadata[metaAtime] != want {
		t.Fatalf("x-amz-meta-atime %q, want %q", info.Metadata[metaAtime], want)
	}
}

// A symlink listed from S3 has its target's length as its size before
// any readlink (its object's size), as after: lstat said 0 on a fresh
// cache, ls -l too.
func TestListedSymlinkSize(t *testing.T) {
	e := newEnv(t, nil)
	e.store.PutObject("d/ln", []byte("a-target-of-22-bytes!!"), s3backend.Metadata{"mode": "41471"})
	a := e.mustLookup("d/ln")
	if a.Mode&0o170000 != 0o120000 || a.Size != 22 {
		t.Fatalf("listed symlink: mode %o size %d, want a symlink of 22 bytes", a.Mode, a.Size)
	}
	if target, err := e.c.Readlink(ctx, a.Ino); err != nil || target != "a-target-of-22-bytes!!" {
		t.Fatalf("readlink: %q, %v", target, err)
	}
	if a := e.mustLookup("d/ln"); a.Size != 22 {
		t.Fatalf("after readlink: size %d, want 22", a.Size)
	}
}
