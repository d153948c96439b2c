package cache

import (
	"strconv"
	"strings"
	"syscall"

	"github.com/keelfs/keelfs/s3backend"
)

// Attributes live in user metadata under the names s3fs uses, so that a
// bucket moves freely between the two tools:
//
//	x-amz-meta-mode   st_mode in decimal, file type bits included
//	x-amz-meta-uid    decimal
//	x-amz-meta-gid    decimal
//	x-amz-meta-mtime  seconds since the epoch, "123" or "123.000000456"
//	x-amz-meta-ctime  likewise
//	x-amz-meta-atime  likewise
//	x-amz-meta-xattr  extended attributes, s3fs's encoding (see xattr.go)
//	x-amz-meta-rdev   device number of a device node, decimal (keelfs's own:
//	                  s3fs keeps none)
//
// Symlinks are objects whose body is the target and whose mode has S_IFLNK.
// FIFOs, sockets and device nodes are zero-byte objects whose mode has
// their type (see special.go).
const (
	metaMode  = "mode"
	metaUID   = "uid"
	metaGID   = "gid"
	metaMtime = "mtime"
	metaCtime = "ctime"
	metaAtime = "atime"
	metaXattr = "xattr"
	metaRdev  = "rdev"
	// metaUpload is keelfs's own: a random token per upload, so that after a
	// crash, or a 412 on a retried request, the mount can tell its own
	// object from another writer's.
	metaUpload = "keelfs-upload"
)

// ownedHeaders are the headers keelfs writes for an inode's attributes.
var ownedHeaders = []string{metaMode, metaUID, metaGID, metaMtime, metaCtime, metaAtime, metaXattr, metaRdev}

// headerAttrs are the attributes found in an object's user metadata. A
// field whose has-flag is false was absent or unparseable.
type headerAttrs struct {
	Mode                uint32 // full st_mode
	UID, GID            uint32
	Mtime, Ctime, Atime int64 // Unix ns
	Rdev                uint32
	Xattrs              map[string]string
	HasMode             bool
	HasUID, HasGID      bool
	HasMtime            bool
	HasCtime            bool
	HasAtime            bool
	HasRdev             bool
	UploadToken         string
	// Kind is the type the mode names when it is one an object of
	// content can have (symlink, FIFO, socket, device); 0 otherwise.
	Kind Kind
}

func parseHeaders(m s3backend.Metadata) headerAttrs {
	var a headerAttrs
	if v, ok := m[metaMode]; ok {
		if n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32); err == nil {
			a.Mode, a.HasMode = uint32(n), true
			a.Kind = objectKind(a.Mode)
		}
	}
	if v, ok := m[metaUID]; ok {
		if n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32); err == nil {
			a.UID, a.HasUID = uint32(n), true
		}
	}
	if v, ok := m[metaGID]; ok {
		if n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32); err == nil {
			a.GID, a.HasGID = uint32(n), true
		}
	}
	if v, ok := m[metaMtime]; ok {
		a.Mtime, a.HasMtime = parseUnixTime(v)
	}
	if v, ok := m[metaCtime]; ok {
		a.Ctime, a.HasCtime = parseUnixTime(v)
	}
	if v, ok := m[metaAtime]; ok {
		a.Atime, a.HasAtime = parseUnixTime(v)
	}
	if v, ok := m[metaRdev]; ok {
		if n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32); err == nil {
			a.Rdev, a.HasRdev = uint32(n), true
		}
	}
	if v, ok := m[metaXattr]; ok {
		a.Xattrs = decodeXattrs(v)
	}
	a.UploadToken = m[metaUpload]
	return a
}

// parseUnixTime parses "sec" or "sec.frac" (up to 9 fraction digits) into
// Unix nanoseconds.
func parseUnixTime(v string) (int64, bool) {
	v = strings.TrimSpace(v)
	neg := strings.HasPrefix(v, "-")
	if neg {
		v = v[1:]
	}
	secStr, fracStr, hasFrac := strings.Cut(v, ".")
	if secStr == "" || (hasFrac && (fracStr == "" || len(fracStr) > 9)) {
		return 0, false
	}
	sec, err := strconv.ParseInt(secStr, 10, 64)
	if err != nil || sec > 1<<33 { // year 2242: beyond that it is garbage
		return 0, false
	}
	var ns int64
	if hasFrac {
		f, err := strconv.ParseUint(fracStr, 10, 32)
		if err != nil {
			return 0, false
		}
		ns = int64(f)
		for i := len(fracStr); i < 9; i++ {
			ns *= 10
		}
	}
	t := sec*1e9 + ns
	if neg {
		t = -t
	}
	return t, true
}

// formatUnixTime writes Unix nanoseconds the way parseUnixTime reads
// them: "sec" or "sec.fraction", with the sign in front of the whole
// number, so "-0.5" is half a second before 1970. (It used to write the
// floor of the seconds and a positive fraction, "-1.500000000", which
// reads back a second off.)
func formatUnixTime(ns int64) string {
	sign, mag := "", uint64(ns)
	if ns < 0 {
		sign, mag = "-", uint64(-ns) // two's complement: right for MinInt64 too
	}
	sec, frac := mag/1e9, mag%1e9
	if frac == 0 {
		return sign + strconv.FormatUint(sec, 10)
	}
	return sign + strconv.FormatUint(sec, 10) + "." + leftPad9(strconv.FormatUint(frac, 10))
}

func leftPad9(s string) string {
	for len(s) < 9 {
		s = "0" + s
	}
	return s
}

// modeBits returns the st_mode type bits of a kind.
func modeBits(k Kind) uint32 {
	switch k {
	case KindDir:
		return syscall.S_IFDIR
	case KindSymlink:
		return syscall.S_IFLNK
	case KindFIFO:
		return syscall.S_IFIFO
	case KindSocket:
		return syscall.S_IFSOCK
	case KindCharDev:
		return syscall.S_IFCHR
	case KindBlockDev:
		return syscall.S_IFBLK
	}
	return syscall.S_IFREG
}

// objectKind is the kind an object's mode header names, when it is a
// kind that a (non-directory) object can be other than a regular file.
func objectKind(mode uint32) Kind {
	switch mode & syscall.S_IFMT {
	case syscall.S_IFLNK:
		return KindSymlink
	case syscall.S_IFIFO:
		return KindFIFO
	case syscall.S_IFSOCK:
		return KindSocket
	case syscall.S_IFCHR:
		return KindCharDev
	case syscall.S_IFBLK:
		return KindBlockDev
	}
	return 0
}

// headersOf builds the user metadata that records n's attributes.
func headersOf(n *Inode, token string) s3backend.Metadata {
	m := s3backend.Metadata{
		metaMode:  strconv.FormatUint(uint64(modeBits(n.Kind)|n.Perm), 10),
		metaUID:   strconv.FormatUint(uint64(n.UID), 10),
		metaGID:   strconv.FormatUint(uint64(n.GID), 10),
		metaMtime: formatUnixTime(n.Mtime),
		metaCtime: formatUnixTime(n.Ctime),
		metaAtime: formatUnixTime(n.Atime),
	}
	if n.Kind.isDevice() {
		m[metaRdev] = strconv.FormatUint(uint64(n.Rdev), 10)
	}
	if len(n.Xattrs) > 0 {
		m[metaXattr] = encodeXattrs(n.Xattrs)
	}
	if token != "" {
		m[metaUpload] = token
	}
	return m
}
