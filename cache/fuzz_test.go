package cache

import (
	"strconv"
	"strings"
	"syscall"
	"testing"
	"unicode/utf8"

	"github.com/keelfs/keelfs/s3backend"
)

// Fuzz targets for the two places where bytes from S3 (keys, headers)
// become filesystem names and attributes. Run one with
//
//	go test -run='^$' -fuzz=FuzzNameFromListing -fuzztime=30s ./cache/
//
// The seeds below run as ordinary tests.

// FuzzNameFromListing: a listed key either becomes a name that an
// application could have created itself (checkName accepts it) and that
// maps back to exactly the same key, or it is hidden; nothing panics.
func FuzzNameFromListing(f *testing.F) {
	for _, s := range []struct {
		dir, key string
		prefix   bool
	}{
		{"", "a", false}, {"", "a/", true}, {"d/", "d/x", false}, {"d/", "d/x/", true},
		{"d/", "d//", true}, {"d/", "d/./", true}, {"d/", "d/../", true}, {"", ".", false}, {"", "..", false},
		{"d/", "d/" + strings.Repeat("n", 255), false}, {"d/", "d/" + strings.Repeat("n", 256), false},
		{"d/", "d/\xff\xfe", false}, {"d/", "d/a\x00b", false}, {"d/", "e/x", false}, {"d/", "d/", false},
		{"a/b/", "a/b/ü 🙂", false}, {"", "x/y", false}, {"", "x", true},
	} {
		f.Add(s.dir, s.key, s.prefix)
	}
	f.Fuzz(func(t *testing.T, dirKey, key string, isPrefix bool) {
		name, ok := nameFromListing(dirKey, key, isPrefix)
		if !ok {
			if name != "" {
				t.Fatalf("rejected %q but returned name %q", key, name)
			}
			return
		}
		if err := checkName(name); err != nil {
			t.Fatalf("listing %q under %q gives name %q that an application could not create: %v", key, dirKey, name, err)
		}
		if !utf8.ValidString(name) || strings.Contains(name, "/") || len(name) > MaxNameLen {
			t.Fatalf("name %q from key %q", name, key)
		}
		back := dirKey + name
		if isPrefix {
			back += "/"
		}
		if back != key {
			t.Fatalf("key %q under %q gives name %q, which maps back to %q", key, dirKey, name, back)
		}
		// When dirKey is the listing prefix of a directory path, the
		// entry's path is the key without a common prefix's slash.
		if dir := strings.TrimSuffix(dirKey, "/"); dirPrefix(dir) == dirKey {
			if p := childPath(dir, name); p != strings.TrimSuffix(key, "/") {
				t.Fatalf("childPath(%q, %q) = %q, key %q", dir, name, p, key)
			}
		}
	})
}

// FuzzCheckName: a name an application may create (checkName) is stored
// under a key that a listing turns back into the same name; otherwise the
// file would vanish from its directory once the listing is refreshed.
func FuzzCheckName(f *testing.F) {
	for _, s := range []string{"a", ".", "..", "", "a/b", "a\x00", strings.Repeat("x", 255), strings.Repeat("x", 256),
		"\xff", "caf\xe9", "ü", "name with spaces", ".hidden", "..."} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		if checkName(name) != nil {
			return
		}
		for _, dir := range []string{"", "some/dir"} {
			key := childPath(dir, name)
			got, ok := nameFromListing(dirPrefix(dir), key, false)
			if !ok || got != name {
				t.Fatalf("name %q is accepted, but its key %q lists as (%q, %v)", name, key, got, ok)
			}
			got, ok = nameFromListing(dirPrefix(dir), key+"/", true)
			if !ok || got != name {
				t.Fatalf("directory %q is accepted, but its prefix %q lists as (%q, %v)", name, key+"/", got, ok)
			}
		}
	})
}

// FuzzParseUnixTime: any header value parses without panic; a value that
// parses formats back to one that parses to the same time; and the time
// read back from what formatUnixTime wrote is the time written.
func FuzzParseUnixTime(f *testing.F) {
	for _, s := range []string{"0", "1", "1609556645", "1609556645.5", "1609556645.123456789", "-1", "-1.5", "-0.5",
		" 12 ", "1.", ".5", "1.1234567890", "8589934592", "8589934593", "-8589934592", "+3", "1e9", "0x10", "١٢٣",
		"9223372036854775807", "-9223372036854775808", "--1", "-", ""} {
		f.Add(s, int64(0))
	}
	for _, ns := range []int64{0, 1, -1, 1e9, -1e9, 1609556645123456789, -500000000, -1500000000, 1 << 33 * 1e9, -(1 << 33 * 1e9)} {
		f.Add("", ns)
	}
	f.Fuzz(func(t *testing.T, v string, ns int64) {
		if got, ok := parseUnixTime(v); ok {
			s := formatUnixTime(got)
			if again, ok := parseUnixTime(s); !ok || again != got {
				t.Fatalf("%q parses to %d, which formats as %q, which parses to (%d, %v)", v, got, s, again, ok)
			}
		}
		const limit = 1 << 33 * 1e9 // what parseUnixTime takes as sane
		if ns > limit || ns < -limit {
			return
		}
		s := formatUnixTime(ns)
		if got, ok := parseUnixTime(s); !ok || got != ns {
			t.Fatalf("%d formats as %q, which parses to (%d, %v)", ns, s, got, ok)
		}
	})
}

// FuzzParseHeaders: any user metadata parses without panic, and the
// headers keelfs writes for an inode parse back to its attributes.
func FuzzParseHeaders(f *testing.F) {
	f.Add("33188", "1000", "1000", "1609556645", "1609556645.5", "tok", uint32(0o644), uint32(1000), uint32(1000), int64(1), int64(2), uint8(1))
	f.Add("41471", "0", "0", "-1.5", "", "", uint32(0o777), uint32(0), uint32(0), int64(-1), int64(-1500000000), uint8(3))
	f.Add("16877", "4294967295", "4294967296", "x", " 7 ", "", uint32(0o7755), uint32(1<<32-1), uint32(7), int64(1e18), int64(-5e8), uint8(2))
	f.Add("", "-1", "1e3", "99999999999999999999", "1.0000000001", "t", uint32(0), uint32(1), uint32(2), int64(0), int64(0), uint8(0))
	f.Fuzz(func(t *testing.T, mode, uid, gid, mtime, ctime, token string, perm, u, g uint32, mt, ct int64, kind uint8) {
		m := s3backend.Metadata{metaMode: mode, metaUID: uid, metaGID: gid, metaMtime: mtime, metaCtime: ctime, metaUpload: token}
		a := parseHeaders(m)
		if a.HasMode && strconv.FormatUint(uint64(a.Mode), 10) != strings.TrimLeft(strings.TrimSpace(mode), "0") && a.Mode != 0 {
			t.Fatalf("mode %q parsed as %d", mode, a.Mode)
		}
		if a.Kind == KindDir || a.Kind == KindFile {
			t.Fatalf("mode %q gives an object kind %v", mode, a.Kind)
		}
		if a.UploadToken != token {
			t.Fatalf("token %q read as %q", token, a.UploadToken)
		}

		// What keelfs writes for an inode reads back the same.
		const limit = 1 << 33 * 1e9
		if mt > limit || mt < -limit || ct > limit || ct < -limit {
			return
		}
		n := &Inode{Kind: Kind(kind%uint8(kindMax)) + KindFile, Perm: perm & 0o7777, UID: u, GID: g, Mtime: mt, Ctime: ct, Atime: ct ^ mt}
		if n.Kind.isDevice() {
			n.Rdev = u ^ g
		}
		if n.Atime > limit || n.Atime < -limit {
			n.Atime = mt
		}
		b := parseHeaders(headersOf(n, token))
		if !b.HasMode || !b.HasUID || !b.HasGID || !b.HasMtime || !b.HasCtime || !b.HasAtime {
			t.Fatalf("headers of %+v parse incompletely: %+v", n, b)
		}
		if b.Mode != modeBits(n.Kind)|n.Perm || b.UID != n.UID || b.GID != n.GID || b.Mtime != n.Mtime || b.Ctime != n.Ctime {
			t.Fatalf("headers of %+v parse as %+v", n, b)
		}
		wantKind := n.Kind
		if n.Kind == KindDir || n.Kind == KindFile {
			wantKind = 0
		}
		if b.Kind != wantKind || b.Mode&syscall.S_IFMT != modeBits(n.Kind) {
			t.Fatalf("kind %v parses as %v (mode %o)", n.Kind, b.Kind, b.Mode)
		}
		if b.Atime != n.Atime || b.HasRdev != n.Kind.isDevice() || b.Rdev != n.Rdev {
			t.Fatalf("atime %d rdev %d parse as %d %d (%v)", n.Atime, n.Rdev, b.Atime, b.Rdev, b.HasRdev)
		}
		if b.UploadToken != token {
			t.Fatalf("token %q read back as %q", token, b.UploadToken)
		}
	})
}
