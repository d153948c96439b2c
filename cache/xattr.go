package cache

import (
	"context"
	"encoding/base64"
	"sort"
	"strings"
)

// Extended attributes are kept in the object's user metadata, in the
// format s3fs uses with its xattr option, so that either tool reads what
// the other wrote:
//
//	x-amz-meta-xattr: urlencode({"user.a":"<base64>","user.b":"<base64>"})
//
// The names are sorted, each value is standard base64 of its bytes, and
// the JSON text is percent-encoded except for letters, digits and
// ".-_~/". Only the user namespace can be read and written through the
// mount; attributes of other namespaces that s3fs stored (POSIX ACLs) are
// kept when keelfs rewrites the header, but not shown.
//
// # Limits
//
// S3 limits user metadata to 2 KB per object, the attribute headers
// (mode, owner, times) included. A setxattr that would not fit fails with
// ENOSPC, or E2BIG when the attribute could not fit even alone; nothing
// already stored is lost. The size is counted as the sum of header names,
// with their x-amz-meta- prefix, and values, with every time at its
// longest: a little stricter than S3, so that an upload can never be
// refused for it.

// Flags of Setxattr, as setxattr(2).
const (
	XattrCreate  = 1 // fail with ErrExist if the attribute exists
	XattrReplace = 2 // fail with ErrNoAttr if it does not
)

// xattrPrefix is the one namespace the mount serves.
const xattrPrefix = "user."

// maxUserMeta is S3's limit on the user metadata of one object.
const maxUserMeta = 2048

// Getxattr returns the value of an extended attribute.
func (c *Cache) Getxattr(ctx context.Context, ino uint64, name string) ([]byte, error) {
	if err := checkXattrName(name); err != nil {
		return nil, err
	}
	n, err := c.attrsOf(ctx, ino)
	if err != nil {
		return nil, err
	}
	v, ok := n.Xattrs[name]
	if !ok {
		return nil, ErrNoAttr
	}
	return []byte(v), nil
}

// Listxattr returns the names of the extended attributes the mount
// serves, sorted.
func (c *Cache) Listxattr(ctx context.Context, ino uint64) ([]string, error) {
	n, err := c.attrsOf(ctx, ino)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, name := range sortedNames(n.Xattrs) {
		if strings.HasPrefix(name, xattrPrefix) {
			names = append(names, name)
		}
	}
	return names, nil
}

// Setxattr sets an extended attribute; flags are XattrCreate and
// XattrReplace. Like chmod it changes ctime and is written to S3 by
// write-back (a copy of the object onto itself with the new headers).
func (c *Cache) Setxattr(ctx context.Context, ino uint64, name string, value []byte, flags uint32) error {
	if err := checkXattrName(name); err != nil {
		return err
	}
	if strings.ContainsAny(name, `",`) {
		// s3fs's format cannot hold them: its parser splits at commas
		// and quotes, and would lose the attribute and its neighbours.
		return ErrInvalid
	}
	return c.changeXattrs(ctx, ino, name, func(cur map[string]string) (map[string]string, error) {
		_, exists := cur[name]
		switch {
		case flags&XattrCreate != 0 && exists:
			return nil, ErrExist
		case flags&XattrReplace != 0 && !exists:
			return nil, ErrNoAttr
		}
		next := make(map[string]string, len(cur)+1)
		for k, v := range cur {
			next[k] = v
		}
		next[name] = string(value)
		return next, nil
	})
}

// Removexattr removes an extended attribute.
func (c *Cache) Removexattr(ctx context.Context, ino uint64, name string) error {
	if err := checkXattrName(name); err != nil {
		return err
	}
	return c.changeXattrs(ctx, ino, name, func(cur map[string]string) (map[string]string, error) {
		if _, ok := cur[name]; !ok {
			return nil, ErrNoAttr
		}
		next := make(map[string]string, len(cur))
		for k, v := range cur {
			if k != name {
				next[k] = v
			}
		}
		if len(next) == 0 {
			next = nil
		}
		return next, nil
	})
}

// checkXattrName refuses names outside the user namespace.
func checkXattrName(name string) error {
	if !strings.HasPrefix(name, xattrPrefix) {
		return ErrNotSupported
	}
	if len(name) == len(xattrPrefix) {
		return ErrInvalid
	}
	return nil
}

// attrsOf returns a record whose attributes, extended ones included, are
// as fresh as the TTL asks: a clean file is revalidated like getattr
// does, and an object whose headers were never read is asked about now.
func (c *Cache) attrsOf(ctx context.Context, ino uint64) (*Inode, error) {
	n, err := c.snapshot(ino)
	if err != nil {
		return nil, err
	}
	switch {
	case n.Kind == KindFile && !c.fresh(n):
		return c.revalidateOrStale(ctx, n)
	case n.Kind != KindDir && !n.AttrsKnown && !c.opt.SkipHeaders && n.RemoteKey != "" && !busy(n):
		return c.recheck(ctx, ino, n)
	}
	return n, nil
}

// changeXattrs replaces an inode's extended attributes with what fn
// returns, if they fit in S3's user metadata. name is the attribute fn
// sets or removes.
func (c *Cache) changeXattrs(ctx context.Context, ino uint64, name string, fn func(map[string]string) (map[string]string, error)) error {
	if c.opt.ReadOnly {
		return ErrReadOnly
	}
	if ino == RootIno {
		// The root has no object of its own to carry them.
		return ErrNotSupported
	}
	// Start from what S3 has if the TTL ran out, as getxattr would.
	if _, err := c.attrsOf(ctx, ino); err != nil {
		return err
	}
	st, err := c.acquire(ino)
	if err != nil {
		return err
	}
	defer c.release(st)
	st.mu.Lock()
	defer st.mu.Unlock()
	n := st.rec
	if n == nil {
		return ErrNotExist
	}
	next, err := fn(n.Xattrs)
	if err != nil {
		return err
	}
	probe := n.clone()
	probe.Xattrs = next
	if size := metaSize(probe); size > maxUserMeta && size > metaSize(n) {
		// Only a change that grows the headers past the limit fails: a
		// removal always goes through.
		probe.Xattrs = map[string]string{name: next[name]}
		if metaSize(probe) > maxUserMeta {
			return ErrXattrTooBig
		}
		return ErrXattrNoRoom
	}
	old := n.clone()
	n.Xattrs = next
	n.Ctime = c.now()
	n.MetaVer++
	if n.Kind == KindDir {
		n.Pending |= pendMarker
	} else {
		n.Pending |= pendMeta
	}
	if err := c.persistLocked(st, old); err != nil {
		*n = *old
		return err
	}
	return nil
}

// worstTime is a time whose header is as long as any a file can have.
const worstTime = -999_999_999_999_999_999

// metaSize is the most user metadata n's headers can take in any upload:
// every header counted with its x-amz-meta- prefix, times at their
// longest, and an upload token.
func metaSize(n *Inode) int {
	w := *n
	w.Mtime, w.Ctime, w.Atime = worstTime, worstTime, worstTime
	size := 0
	for k, v := range headersOf(&w, newToken()) {
		size += len("x-amz-meta-") + len(k) + len(v)
	}
	return size
}

// sortedNames returns the names of m in byte order (s3fs's order).
func sortedNames(m map[string]string) []string {
	names := make([]string, 0, len(m))
	for k := range m {
		names = append(names, k)
	}
	sort.Strings(names)
	return names
}

// encodeXattrs writes attributes in s3fs's x-amz-meta-xattr format.
func encodeXattrs(m map[string]string) string {
	var b strings.Builder
	b.WriteByte('{')
	for i, name := range sortedNames(m) {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteByte('"')
		b.WriteString(name)
		b.WriteString(`":"`)
		b.WriteString(base64.StdEncoding.EncodeToString([]byte(m[name])))
		b.WriteByte('"')
	}
	b.WriteByte('}')
	return percentEncode(b.String())
}

// decodeXattrs reads an x-amz-meta-xattr header as s3fs does: leniently,
// skipping a pair it cannot read rather than failing the whole header.
func decodeXattrs(h string) map[string]string {
	s := percentDecode(h)
	open, end := strings.IndexByte(s, '{'), strings.LastIndexByte(s, '}')
	if open < 0 || end <= open {
		return nil
	}
	var m map[string]string
	for _, pair := range strings.Split(s[open+1:end], ",") {
		colon := strings.LastIndexByte(pair, ':')
		if colon < 0 {
			continue
		}
		name, ok1 := unquote(pair[:colon])
		val, ok2 := unquote(pair[colon+1:])
		if !ok1 || !ok2 || name == "" {
			continue
		}
		v, err := base64.StdEncoding.DecodeString(val)
		if err != nil {
			if v, err = base64.RawStdEncoding.DecodeString(strings.TrimRight(val, "=")); err != nil {
				continue
			}
		}
		if m == nil {
			m = make(map[string]string)
		}
		m[name] = string(v)
	}
	return m
}

// unquote takes the text between the first and the last double quote, as
// s3fs's takeout_str_dquart does; text without quotes is taken whole.
func unquote(s string) (string, bool) {
	i := strings.IndexByte(s, '"')
	if i < 0 {
		return strings.TrimSpace(s), true
	}
	s = s[i+1:]
	j := strings.LastIndexByte(s, '"')
	if j < 0 {
		return "", false
	}
	s = s[:j]
	return s, !strings.Contains(s, `"`)
}

// percentEncode escapes every byte but ASCII letters, digits and ".-_~/",
// as s3fs's urlEncode does (upper-case hex).
func percentEncode(s string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		ch := s[i]
		if ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9' || strings.IndexByte(".-_~/", ch) >= 0 {
			b.WriteByte(ch)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hex[ch>>4])
		b.WriteByte(hex[ch&15])
	}
	return b.String()
}

// percentDecode undoes percentEncode, leniently: a malformed escape
// decodes as s3fs would read it.
func percentDecode(s string) string {
	if !strings.Contains(s, "%") {
		return s
	}
	unhex := func(ch byte) byte {
		switch {
		case ch >= '0' && ch <= '9':
			return ch - '0'
		case ch >= 'a' && ch <= 'f':
			return ch - 'a' + 10
		case ch >= 'A' && ch <= 'F':
			return ch - 'A' + 10
		}
		return 0
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '%' {
			b.WriteByte(s[i])
			continue
		}
		if i+2 >= len(s) {
			break
		}
		b.WriteByte(unhex(s[i+1])<<4 | unhex(s[i+2]))
		i += 2
	}
	return b.String()
}
