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
//
// Symlinks are objects whose body is the target and whose mode has S_IFLNK.
const (
	metaMode  = "mode"
	metaUID   = "uid"
	metaGID   = "gid"
	metaMtime = "mtime"
	metaCtime = "ctime"
	metaAtime = "atime"
	// metaUpload is keelfs's own: a random token per upload, so that after a
	// crash, or a 412 on a retried request, the mount can tell its own
	// object from another writer's.
	metaUpload = "keelfs-upload"
)

// headerAttrs are the attributes found in an object's user metadata. A
// field whose has-flag is false was absent or unparseable.
type headerAttrs struct {
	Mode             uint32 // full st_mode
	UID, GID         uint32
	Mtime, Ctime     int64 // Unix ns
	HasMode          bool
	HasUID, HasGID   bool
	HasMtime         bool
	HasCtime         bool
	UploadToken      string
	IsSymlink, IsDir bool
}

func parseHeaders(m s3backend.Metadata) headerAttrs {
	var a headerAttrs
	if v, ok := m[metaMode]; ok {
		if n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32); err == nil {
			a.Mode, a.HasMode = uint32(n), true
			switch a.Mode & syscall.S_IFMT {
			case syscall.S_IFLNK:
				a.IsSymlink = true
			case syscall.S_IFDIR:
				a.IsDir = true
			}
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
	}
	return syscall.S_IFREG
}

// headersOf builds the user metadata that records n's attributes.
func headersOf(n *Inode, token string) s3backend.Metadata {
	m := s3backend.Metadata{
		metaMode:  strconv.FormatUint(uint64(modeBits(n.Kind)|n.Perm), 10),
		metaUID:   strconv.FormatUint(uint64(n.UID), 10),
		metaGID:   strconv.FormatUint(uint64(n.GID), 10),
		metaMtime: formatUnixTime(n.Mtime),
		metaCtime: formatUnixTime(n.Ctime),
		metaAtime: formatUnixTime(n.Mtime),
	}
	if token != "" {
		m[metaUpload] = token
	}
	return m
}
