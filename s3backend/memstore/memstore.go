// Package memstore is an in-memory s3backend.ObjectStore for fast tests of
// the layers above S3. It follows S3 where a filesystem can tell the
// difference: ETags (MD5, and the "-N" form for multipart uploads),
// conditional writes and reads, ranges, listing order, delimiters and
// pagination, multipart rules (part sizes, part order, UploadPartCopy
// ranges). Unlike the posix-backed test server it lets a key "x" coexist
// with keys under "x/" and keeps "a//b" as it is, as real S3 does.
//
// Tests reach behind the store's back with PutObject, Object, Keys,
// DeleteObject and Uploads, inject faults or hold requests with SetHook,
// and count requests with Counts.
package memstore

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/hex"
	"fmt"
	"io"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/keelfs/keelfs/s3backend"
)

// defaultContentType is what S3 stores when a write names none.
const defaultContentType = "binary/octet-stream"

// Store is the in-memory object store. The zero value is not usable; call New.
type Store struct {
	// PageSize is how many entries one List page holds (S3: 1000). Tests
	// lower it to exercise pagination; set it before the store is used.
	PageSize int
	// RangeFirst makes UploadPartCopy check the source range before the
	// source's x-amz-copy-source-if-match, as versitygw does: a copy from
	// a version that was replaced by a shorter one then fails with 400
	// InvalidArgument rather than 412. S3 does not document the order.
	// Set it before the store is used.
	RangeFirst bool

	mu      sync.Mutex
	objects map[string]*object         // guarded by mu
	keys    []string                   // sorted keys of objects; guarded by mu
	uploads map[string]*upload         // by upload ID; guarded by mu
	nextID  int                        // guarded by mu
	counts  map[string]int             // requests per op; guarded by mu
	hook    func(op, key string) error // guarded by mu
	now     func() time.Time           // guarded by mu
}

// object is one stored version. data is never modified in place, so readers
// may keep slices of it without holding the lock.
type object struct {
	data  []byte
	etag  string
	meta  s3backend.Metadata
	ctype string
	mod   time.Time
}

type upload struct {
	key   string
	meta  s3backend.Metadata
	ctype string
	parts map[int32]part
}

type part struct {
	data []byte
	etag string
}

var _ s3backend.ObjectStore = (*Store)(nil)

// New returns an empty store.
func New() *Store {
	return &Store{
		PageSize: 1000,
		objects:  map[string]*object{},
		uploads:  map[string]*upload{},
		counts:   map[string]int{},
		now:      time.Now,
	}
}

// SetHook installs fn, called at the start of every request with the op
// name (as in Counts) and its key (List: the prefix, once per page; Copy
// and UploadPartCopy: the destination). A non-nil result is returned as the
// operation's error. fn runs without the store's lock held, so it may
// block, e.g. to hold an upload until the test lets it go. nil removes it.
func (s *Store) SetHook(fn func(op, key string) error) {
	s.mu.Lock()
	s.hook = fn
	s.mu.Unlock()
}

// SetClock replaces the clock that stamps LastModified. Like S3, the
// stamp is kept to whole seconds.
func (s *Store) SetClock(now func() time.Time) {
	s.mu.Lock()
	s.now = now
	s.mu.Unlock()
}

// Counts returns the number of requests per op name: "Head", "Get", "List"
// (one per page), "Put", "Copy", "Delete", "CreateMultipart", "UploadPart",
// "UploadPartCopy", "CompleteMultipart", "AbortMultipart".
func (s *Store) Counts() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.counts)
}

// ResetCounts sets every count back to zero.
func (s *Store) ResetCounts() {
	s.mu.Lock()
	clear(s.counts)
	s.mu.Unlock()
}

// PutObject stores data under key directly (no hook, not counted) and
// returns its ETag, as another S3 client writing to the bucket would.
func (s *Store) PutObject(key string, data []byte, meta s3backend.Metadata) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	o := &object{data: bytes.Clone(data), etag: md5ETag(data), meta: cloneMeta(meta), ctype: defaultContentType}
	s.storeLocked(key, o)
	return o.etag
}

// Object returns a copy of what is stored under key.
func (s *Store) Object(key string) (data []byte, info s3backend.ObjectInfo, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	o := s.objects[key]
	if o == nil {
		return nil, s3backend.ObjectInfo{}, false
	}
	return bytes.Clone(o.data), o.info(key), true
}

// Keys returns every stored key in S3 listing order.
func (s *Store) Keys() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.keys)
}

// DeleteObject removes key directly (no hook, not counted).
func (s *Store) DeleteObject(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.removeLocked(key)
}

// Uploads returns the number of multipart uploads neither completed nor
// aborted: a leak check for the uploader.
func (s *Store) Uploads() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.uploads)
}

// sdkOps names each op as the real store names it in s3backend.Error.Op.
var sdkOps = map[string]string{
	"Head": "HeadObject", "Get": "GetObject", "List": "ListObjectsV2", "Put": "PutObject",
	"Copy": "CopyObject", "Delete": "DeleteObject", "CreateMultipart": "CreateMultipartUpload",
	"UploadPart": "UploadPart", "UploadPartCopy": "UploadPartCopy",
	"CompleteMultipart": "CompleteMultipartUpload", "AbortMultipart": "AbortMultipartUpload",
}

// begin counts one request and runs the hook. A context that ended while
// the hook held the request fails it as a cancelled request would.
func (s *Store) begin(ctx context.Context, op, key string) error {
	s.mu.Lock()
	s.counts[op]++
	hook := s.hook
	s.mu.Unlock()
	if hook != nil {
		if err := hook(op, key); err != nil {
			return err
		}
	}
	if err := ctx.Err(); err != nil {
		return &s3backend.Error{Op: sdkOps[op], Key: key, Kind: s3backend.ErrUnavailable, Cause: err}
	}
	return nil
}

func fail(op, key string, status int, code string, kind error, format string, args ...any) error {
	return &s3backend.Error{Op: sdkOps[op], Key: key, Status: status, Code: code, Kind: kind,
		Cause: fmt.Errorf("memstore: "+format, args...)}
}

func notFound(op, key string) error {
	return fail(op, key, 404, "NoSuchKey", s3backend.ErrNotFound, "no object %q", key)
}

func noUpload(op, key, id string) error {
	return fail(op, key, 404, "NoSuchUpload", s3backend.ErrNotFound, "no upload %q", id)
}

func precondition(op, key string, format string, args ...any) error {
	return fail(op, key, 412, "PreconditionFailed", s3backend.ErrPrecondition, format, args...)
}

func invalid(op, key, code string, format string, args ...any) error {
	return fail(op, key, 400, code, s3backend.ErrInvalidRequest, format, args...)
}

// sameETag compares ETags the way S3 compares If-Match values: quotes are
// optional, "*" matches any.
func sameETag(want, have string) bool {
	return want == "*" || strings.Trim(want, `"`) == strings.Trim(have, `"`)
}

// checkCond applies a write condition to the current object (nil: none).
// If-Match on a missing object is a precondition failure here; real S3
// says 404 NoSuchKey and the real store reports that as ErrPrecondition.
func checkCond(op, key string, cur *object, c s3backend.Condition) error {
	if c.IfNoneMatch && cur != nil {
		return precondition(op, key, "%q exists", key)
	}
	if c.IfMatch != "" {
		if cur == nil {
			return precondition(op, key, "%q does not exist", key)
		}
		if !sameETag(c.IfMatch, cur.etag) {
			return precondition(op, key, "%q has etag %s, not %s", key, cur.etag, c.IfMatch)
		}
	}
	return nil
}

func md5ETag(data []byte) string {
	sum := md5.Sum(data)
	return `"` + hex.EncodeToString(sum[:]) + `"`
}

func cloneMeta(m s3backend.Metadata) s3backend.Metadata {
	if m == nil {
		return s3backend.Metadata{}
	}
	c := make(s3backend.Metadata, len(m))
	for k, v := range m {
		c[strings.ToLower(k)] = v
	}
	return c
}

func (o *object) info(key string) s3backend.ObjectInfo {
	return s3backend.ObjectInfo{
		Key: key, Size: int64(len(o.data)), ETag: o.etag, LastModified: o.mod,
		ContentType: o.ctype, Metadata: maps.Clone(o.meta),
	}
}

// storeLocked makes o the current version of key. Call with mu held.
func (s *Store) storeLocked(key string, o *object) {
	o.mod = s.now().UTC().Truncate(time.Second)
	if _, ok := s.objects[key]; !ok {
		i, _ := slices.BinarySearch(s.keys, key)
		s.keys = slices.Insert(s.keys, i, key)
	}
	s.objects[key] = o
}

// removeLocked deletes key if present. Call with mu held.
func (s *Store) removeLocked(key string) {
	if _, ok := s.objects[key]; !ok {
		return
	}
	delete(s.objects, key)
	if i, ok := slices.BinarySearch(s.keys, key); ok {
		s.keys = slices.Delete(s.keys, i, i+1)
	}
}

// readBody reads a request body from its start and checks it against the
// declared size, as Content-Length would be.
func readBody(op, key string, body io.ReadSeeker, size int64) ([]byte, error) {
	if body == nil {
		body = bytes.NewReader(nil)
	}
	if _, err := body.Seek(0, io.SeekStart); err != nil {
		return nil, fail(op, key, 0, "", s3backend.ErrInvalidRequest, "rewind body: %v", err)
	}
	data, err := io.ReadAll(body)
	if err != nil {
		return nil, fail(op, key, 0, "", s3backend.ErrUnavailable, "read body: %v", err)
	}
	if int64(len(data)) != size {
		return nil, fail(op, key, 0, "", s3backend.ErrInvalidRequest, "body has %d bytes, size says %d", len(data), size)
	}
	return data, nil
}

func (s *Store) Head(ctx context.Context, key string) (s3backend.ObjectInfo, error) {
	if err := s.begin(ctx, "Head", key); err != nil {
		return s3backend.ObjectInfo{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	o := s.objects[key]
	if o == nil {
		return s3backend.ObjectInfo{}, fail("Head", key, 404, "NotFound", s3backend.ErrNotFound, "no object %q", key)
	}
	return o.info(key), nil
}

func (s *Store) Get(ctx context.Context, key string, off, length int64, etag string) (io.ReadCloser, error) {
	if err := s.begin(ctx, "Get", key); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	o := s.objects[key]
	if o == nil {
		return nil, notFound("Get", key)
	}
	if etag != "" && !sameETag(etag, o.etag) {
		return nil, precondition("Get", key, "%q has etag %s, not %s", key, o.etag, etag)
	}
	size := int64(len(o.data))
	if off < 0 || off > 0 && off >= size {
		return nil, fail("Get", key, 416, "InvalidRange", s3backend.ErrInvalidRange, "offset %d of %d bytes", off, size)
	}
	end := size
	if length >= 0 && off+length < end {
		end = off + length
	}
	return io.NopCloser(bytes.NewReader(o.data[off:end])), nil
}

func (s *Store) List(ctx context.Context, in s3backend.ListInput, fn func(s3backend.ListEntry) error) error {
	var (
		token   = in.StartAfter // last entry of the previous page
		skipDir string          // token, when it was a common prefix: skip what it rolled up
		n       int
	)
	for {
		if err := s.begin(ctx, "List", in.Prefix); err != nil {
			return err
		}
		page, more := s.page(in, token, skipDir)
		for _, e := range page {
			if err := fn(e); err != nil {
				return err
			}
			if n++; in.MaxKeys > 0 && n >= in.MaxKeys {
				return nil
			}
		}
		if !more {
			return nil
		}
		last := page[len(page)-1]
		token, skipDir = last.Key, ""
		if last.IsPrefix {
			skipDir = last.Key
		}
	}
}

// page returns one ListObjectsV2 page after token, and whether another
// page follows.
func (s *Store) page(in s3backend.ListInput, token, skipDir string) (page []s3backend.ListEntry, more bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	size := s.PageSize
	if size <= 0 {
		size = 1000
	}
	i := sort.SearchStrings(s.keys, in.Prefix)
	if token != "" {
		i = max(i, sort.Search(len(s.keys), func(j int) bool { return s.keys[j] > token }))
	}
	for ; i < len(s.keys); i++ {
		key := s.keys[i]
		if !strings.HasPrefix(key, in.Prefix) {
			break
		}
		if skipDir != "" && strings.HasPrefix(key, skipDir) {
			continue
		}
		if len(page) == size {
			return page, true
		}
		if in.Delimiter != "" {
			rest := key[len(in.Prefix):]
			if j := strings.Index(rest, in.Delimiter); j >= 0 {
				skipDir = key[:len(in.Prefix)+j+len(in.Delimiter)]
				page = append(page, s3backend.ListEntry{Key: skipDir, IsPrefix: true})
				continue
			}
		}
		o := s.objects[key]
		page = append(page, s3backend.ListEntry{Key: key, Size: int64(len(o.data)), ETag: o.etag, LastModified: o.mod})
	}
	return page, false
}

func (s *Store) Put(ctx context.Context, in s3backend.PutInput) (string, error) {
	if err := s.begin(ctx, "Put", in.Key); err != nil {
		return "", err
	}
	if in.Size > s3backend.MaxPutSize {
		return "", invalid("Put", in.Key, "EntityTooLarge", "%d bytes in one PUT", in.Size)
	}
	data, err := readBody("Put", in.Key, in.Body, in.Size)
	if err != nil {
		return "", err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := checkCond("Put", in.Key, s.objects[in.Key], in.Cond); err != nil {
		return "", err
	}
	o := &object{data: data, etag: md5ETag(data), meta: cloneMeta(in.Metadata), ctype: in.ContentType}
	if o.ctype == "" {
		o.ctype = defaultContentType
	}
	s.storeLocked(in.Key, o)
	return o.etag, nil
}

func (s *Store) Copy(ctx context.Context, in s3backend.CopyInput) (string, error) {
	if err := s.begin(ctx, "Copy", in.Dst); err != nil {
		return "", err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	src := s.objects[in.Src]
	if src == nil {
		return "", notFound("Copy", in.Src)
	}
	if in.SrcETag != "" && !sameETag(in.SrcETag, src.etag) {
		return "", precondition("Copy", in.Dst, "source %q has etag %s, not %s", in.Src, src.etag, in.SrcETag)
	}
	if in.Src == in.Dst && in.Metadata == nil {
		return "", invalid("Copy", in.Dst, "InvalidRequest", "copy of %q onto itself without changing metadata", in.Src)
	}
	if err := checkCond("Copy", in.Dst, s.objects[in.Dst], in.Cond); err != nil {
		return "", err
	}
	o := &object{data: src.data, etag: md5ETag(src.data), meta: cloneMeta(src.meta), ctype: src.ctype}
	if in.Metadata != nil {
		o.meta, o.ctype = cloneMeta(in.Metadata), in.ContentType
		if o.ctype == "" {
			o.ctype = defaultContentType
		}
	}
	s.storeLocked(in.Dst, o)
	return o.etag, nil
}

func (s *Store) Delete(ctx context.Context, key string, cond s3backend.Condition) error {
	if err := s.begin(ctx, "Delete", key); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	o := s.objects[key]
	if o == nil {
		return nil
	}
	if cond.IfMatch != "" && !sameETag(cond.IfMatch, o.etag) {
		return precondition("Delete", key, "%q has etag %s, not %s", key, o.etag, cond.IfMatch)
	}
	s.removeLocked(key)
	return nil
}

func (s *Store) CreateMultipart(ctx context.Context, key string, meta s3backend.Metadata, contentType string) (string, error) {
	if err := s.begin(ctx, "CreateMultipart", key); err != nil {
		return "", err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nextID++
	id := fmt.Sprintf("memstore-upload-%d", s.nextID)
	if contentType == "" {
		contentType = defaultContentType
	}
	s.uploads[id] = &upload{key: key, meta: cloneMeta(meta), ctype: contentType, parts: map[int32]part{}}
	return id, nil
}

// uploadLocked finds the upload id for key. Call with mu held.
func (s *Store) uploadLocked(op, key, id string) (*upload, error) {
	u := s.uploads[id]
	if u == nil || u.key != key {
		return nil, noUpload(op, key, id)
	}
	return u, nil
}

func checkPartNumber(op, key string, n int32) error {
	if n < 1 || n > s3backend.MaxParts {
		return invalid(op, key, "InvalidArgument", "part number %d", n)
	}
	return nil
}

func (s *Store) UploadPart(ctx context.Context, in s3backend.UploadPartInput) (string, error) {
	if err := s.begin(ctx, "UploadPart", in.Key); err != nil {
		return "", err
	}
	if err := checkPartNumber("UploadPart", in.Key, in.Part); err != nil {
		return "", err
	}
	if in.Size > s3backend.MaxPartSize {
		return "", invalid("UploadPart", in.Key, "EntityTooLarge", "part of %d bytes", in.Size)
	}
	data, err := readBody("UploadPart", in.Key, in.Body, in.Size)
	if err != nil {
		return "", err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	u, err := s.uploadLocked("UploadPart", in.Key, in.UploadID)
	if err != nil {
		return "", err
	}
	p := part{data: data, etag: md5ETag(data)}
	u.parts[in.Part] = p
	return p.etag, nil
}

func (s *Store) UploadPartCopy(ctx context.Context, in s3backend.UploadPartCopyInput) (string, error) {
	if err := s.begin(ctx, "UploadPartCopy", in.Key); err != nil {
		return "", err
	}
	if err := checkPartNumber("UploadPartCopy", in.Key, in.Part); err != nil {
		return "", err
	}
	if in.Length > s3backend.MaxPartSize {
		return "", invalid("UploadPartCopy", in.Key, "InvalidRequest", "part of %d bytes", in.Length)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	u, err := s.uploadLocked("UploadPartCopy", in.Key, in.UploadID)
	if err != nil {
		return "", err
	}
	src := s.objects[in.Src]
	if src == nil {
		return "", notFound("UploadPartCopy", in.Src)
	}
	badRange := in.Off < 0 || in.Length <= 0 || in.Off+in.Length > int64(len(src.data))
	if badRange && s.RangeFirst {
		return "", invalid("UploadPartCopy", in.Key, "InvalidArgument", "range %d+%d of %d bytes", in.Off, in.Length, len(src.data))
	}
	if in.SrcETag != "" && !sameETag(in.SrcETag, src.etag) {
		return "", precondition("UploadPartCopy", in.Key, "source %q has etag %s, not %s", in.Src, src.etag, in.SrcETag)
	}
	if badRange {
		return "", invalid("UploadPartCopy", in.Key, "InvalidArgument", "range %d+%d of %d bytes", in.Off, in.Length, len(src.data))
	}
	data := src.data[in.Off : in.Off+in.Length]
	p := part{data: data, etag: md5ETag(data)}
	u.parts[in.Part] = p
	return p.etag, nil
}

func (s *Store) CompleteMultipart(ctx context.Context, key, uploadID string, parts []s3backend.CompletedPart, cond s3backend.Condition) (string, error) {
	const op = "CompleteMultipart"
	if err := s.begin(ctx, op, key); err != nil {
		return "", err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	u, err := s.uploadLocked(op, key, uploadID)
	if err != nil {
		return "", err
	}
	if len(parts) == 0 {
		return "", invalid(op, key, "MalformedXML", "no parts")
	}
	parts = slices.SortedFunc(slices.Values(parts), func(a, b s3backend.CompletedPart) int { return int(a.Part) - int(b.Part) })
	var (
		data []byte
		sums []byte
	)
	for i, cp := range parts {
		if i > 0 && parts[i-1].Part == cp.Part {
			return "", invalid(op, key, "InvalidPartOrder", "part %d listed twice", cp.Part)
		}
		p, ok := u.parts[cp.Part]
		if !ok || !sameETag(cp.ETag, p.etag) || cp.ETag == "*" {
			return "", invalid(op, key, "InvalidPart", "part %d with etag %s was not uploaded", cp.Part, cp.ETag)
		}
		if i < len(parts)-1 && len(p.data) < s3backend.MinPartSize {
			return "", invalid(op, key, "EntityTooSmall", "part %d has %d bytes", cp.Part, len(p.data))
		}
		sum, _ := hex.DecodeString(strings.Trim(p.etag, `"`))
		sums = append(sums, sum...)
		data = append(data, p.data...)
	}
	if err := checkCond(op, key, s.objects[key], cond); err != nil {
		return "", err
	}
	total := md5.Sum(sums)
	o := &object{data: data, etag: fmt.Sprintf(`"%s-%d"`, hex.EncodeToString(total[:]), len(parts)), meta: u.meta, ctype: u.ctype}
	s.storeLocked(key, o)
	delete(s.uploads, uploadID)
	return o.etag, nil
}

func (s *Store) AbortMultipart(ctx context.Context, key, uploadID string) error {
	if err := s.begin(ctx, "AbortMultipart", key); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if u := s.uploads[uploadID]; u != nil && u.key == key {
		delete(s.uploads, uploadID)
	}
	return nil
}
