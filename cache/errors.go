package cache

import (
	"errors"

	"github.com/keelfs/keelfs/cache/blocks"
)

// Sentinel errors of the cache layer. fs/errno.go turns each into an errno;
// anything else from below (s3backend errors included) is mapped there too.
var (
	ErrNotExist    = errors.New("no such file or directory")
	ErrExist       = errors.New("file exists")
	ErrNotEmpty    = errors.New("directory not empty")
	ErrNotDir      = errors.New("not a directory")
	ErrIsDir       = errors.New("is a directory")
	ErrInvalid     = errors.New("invalid argument")
	ErrNameTooLong = errors.New("file name too long")
	ErrReadOnly    = errors.New("read-only mount")
	// ErrNoSpace: dirty data fills the cache and uploads could not make
	// room in time. Nothing was written; the caller may retry later.
	ErrNoSpace = blocks.ErrNoSpace
	// ErrNoHardLinks: objects in S3 cannot share content.
	ErrNoHardLinks = errors.New("hard links are not supported")
	ErrFileTooBig  = errors.New("file larger than S3 allows (5 TiB)")
	// ErrStale: the object changed or vanished in S3 in a way that makes
	// this handle's view impossible to continue.
	ErrStale = errors.New("stale file handle")
	// ErrCorrupt: a cached block failed its checksum or is missing. The
	// block is dropped; clean data is fetched again on the next read.
	ErrCorrupt = blocks.ErrCorrupt
	// ErrUploadFailed: fsync could not get the file into S3. The data is
	// safe in the cache and the upload is retried in the background.
	ErrUploadFailed = errors.New("upload to s3 failed")
	ErrClosed       = errors.New("cache closed")
	// ErrNoAttr: no extended attribute of that name.
	ErrNoAttr = errors.New("no such attribute")
	// ErrNotSupported: an extended attribute outside the user namespace,
	// which keelfs does not store.
	ErrNotSupported = errors.New("operation not supported")
	// ErrXattrNoRoom: the extended attributes would not fit beside the
	// others in S3's 2 KB of user metadata; remove some first.
	ErrXattrNoRoom = errors.New("no room left in the object's 2 KB of s3 metadata")
	// ErrXattrTooBig: the attribute alone would not fit in S3's 2 KB of
	// user metadata.
	ErrXattrTooBig = errors.New("attribute larger than the object's 2 KB of s3 metadata allow")
)
