package s3backend

import (
	"context"
	"io"
	"time"
)

// ObjectStore is everything keelfs asks of S3. Keys are relative to the
// store's prefix: an implementation bound to BUCKET/PREFIX maps key "a/b" to
// the S3 key "PREFIX/a/b", and List returns keys with PREFIX removed.
//
// Every method may block on the network and takes a context first. Errors
// wrap one of the sentinel errors in errors.go (test them with errors.Is) in
// an *Error that carries the operation, key and request ID.
type ObjectStore interface {
	// Head returns the size, ETag, modification time and user metadata of
	// the current version of key. ErrNotFound when there is none.
	Head(ctx context.Context, key string) (ObjectInfo, error)

	// Get returns length bytes of key starting at off. A negative length
	// means "to the end of the object". If etag is not empty the request is
	// conditional (If-Match) and fails with ErrPrecondition once the object
	// has changed, so a caller never mixes bytes of two versions. The reader
	// fails with an error (never a silent short read) if the body ends
	// before the promised length.
	Get(ctx context.Context, key string, off, length int64, etag string) (io.ReadCloser, error)

	// List calls fn for every entry under prefix, page after page, in the
	// order S3 returns them (UTF-8 binary key order). With delimiter "/",
	// keys that continue past the next "/" are rolled up into one entry
	// with IsPrefix set. fn returning an error stops the walk and List
	// returns that error. MaxKeys, if positive, stops the walk after that
	// many entries (used to probe whether a prefix is empty).
	List(ctx context.Context, in ListInput, fn func(ListEntry) error) error

	// Put uploads a whole object in one request. body is read from its
	// start; it must support Seek so the request can be signed and retried.
	Put(ctx context.Context, in PutInput) (etag string, err error)

	// Copy copies src (conditional on SrcETag when set) to dst server-side.
	// Metadata nil keeps the source's metadata; non-nil replaces it.
	// Objects larger than the single-request copy limit (5 GiB) are copied
	// with a multipart copy; SrcSize must then be set.
	Copy(ctx context.Context, in CopyInput) (etag string, err error)

	// Delete removes key. Deleting a key that does not exist succeeds.
	// Cond.IfMatch makes the delete conditional where the endpoint
	// supports it.
	Delete(ctx context.Context, key string, cond Condition) error

	// CreateMultipart starts a multipart upload whose object will carry
	// meta (and ContentType).
	CreateMultipart(ctx context.Context, key string, meta Metadata, contentType string) (uploadID string, err error)

	// UploadPart uploads part number part (1-based) of size bytes.
	UploadPart(ctx context.Context, in UploadPartInput) (etag string, err error)

	// UploadPartCopy fills part number part with length bytes of src
	// starting at off, server-side, conditional on srcETag.
	UploadPartCopy(ctx context.Context, in UploadPartCopyInput) (etag string, err error)

	// CompleteMultipart assembles the parts, conditional on cond.
	CompleteMultipart(ctx context.Context, key, uploadID string, parts []CompletedPart, cond Condition) (etag string, err error)

	// AbortMultipart discards an unfinished upload. Aborting one that no
	// longer exists succeeds.
	AbortMultipart(ctx context.Context, key, uploadID string) error
}

// Metadata is the user metadata of an object: the x-amz-meta-* headers with
// that prefix removed and the names in lower case ("mode", "uid", ...).
type Metadata map[string]string

// ObjectInfo describes one version of one object.
type ObjectInfo struct {
	Key          string
	Size         int64
	ETag         string // as S3 sends it, with the quotes
	LastModified time.Time
	ContentType  string
	Metadata     Metadata // nil when it comes from a listing
}

// ListInput selects what List walks.
type ListInput struct {
	Prefix     string
	Delimiter  string // "" for a flat, recursive walk
	MaxKeys    int    // 0: no limit
	StartAfter string // only keys after this one (relative, as Prefix); "" from the start
}

// ListEntry is one row of a listing: an object, or with IsPrefix a rolled-up
// common prefix ending in the delimiter (Size, ETag and LastModified unset).
type ListEntry struct {
	Key          string
	IsPrefix     bool
	Size         int64
	ETag         string
	LastModified time.Time
}

// Condition makes a write conditional on the current state of its target.
// The zero value is unconditional.
type Condition struct {
	IfMatch     string // the target must exist with this ETag
	IfNoneMatch bool   // the target must not exist
}

// PutInput is one single-request upload.
type PutInput struct {
	Key         string
	Body        io.ReadSeeker
	Size        int64
	Metadata    Metadata
	ContentType string
	Cond        Condition
}

// CopyInput is one server-side copy.
type CopyInput struct {
	Src         string
	SrcETag     string // copy only this version (x-amz-copy-source-if-match)
	SrcSize     int64  // needed above the single-request copy limit
	Dst         string
	Metadata    Metadata // nil: keep the source's metadata
	ContentType string   // with Metadata
	Cond        Condition
}

// UploadPartInput is one part of a multipart upload.
type UploadPartInput struct {
	Key      string
	UploadID string
	Part     int32
	Body     io.ReadSeeker
	Size     int64
}

// UploadPartCopyInput fills one part from a range of an existing object.
type UploadPartCopyInput struct {
	Key      string
	UploadID string
	Part     int32
	Src      string
	SrcETag  string
	Off      int64
	Length   int64
}

// CompletedPart names one uploaded part for CompleteMultipart.
type CompletedPart struct {
	Part int32
	ETag string
}

// Limits S3 puts on multipart uploads.
const (
	MinPartSize     = 5 << 20 // every part but the last
	MaxPartSize     = 5 << 30 // any part
	MaxParts        = 10000   // parts per upload
	MaxPutSize      = 5 << 30 // single PUT and single-request copy
	MaxObjectSize   = 5 << 40 // 5 TiB
	DirContentType  = "application/x-directory"
	FileContentType = "application/octet-stream"
)

// Observer receives one call per S3 request attempt and one per retry, so
// that metrics and logs live outside this package. All methods must be safe
// for concurrent use and must not block.
type Observer interface {
	// RequestDone is called when an attempt ends. status is the HTTP status,
	// or 0 when no response arrived (network error, cancel).
	RequestDone(op string, status int, d time.Duration)
	// Retry is called before a failed attempt is retried.
	Retry(op, key, requestID string, attempt int, err error)
	// Transferred counts payload bytes sent (up) and received (down).
	Transferred(up, down int64)
}
