package fs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"syscall"

	"github.com/keelfs/keelfs/cache"
	"github.com/keelfs/keelfs/s3backend"
)

// The one place where errors become errnos. go-fuse's own fs.ToErrno
// compares with == and turns anything it does not know into ENOSYS, which
// tells the kernel an operation does not exist; every error from below goes
// through toErrno instead, and what it does not know becomes EIO and is
// logged once.

var errnoTable = []struct {
	err   error
	errno syscall.Errno
}{
	{cache.ErrNotExist, syscall.ENOENT},
	{cache.ErrExist, syscall.EEXIST},
	{cache.ErrNotEmpty, syscall.ENOTEMPTY},
	{cache.ErrNotDir, syscall.ENOTDIR},
	{cache.ErrIsDir, syscall.EISDIR},
	{cache.ErrInvalid, syscall.EINVAL},
	{cache.ErrNameTooLong, syscall.ENAMETOOLONG},
	{cache.ErrReadOnly, syscall.EROFS},
	{cache.ErrNoSpace, syscall.ENOSPC},
	{cache.ErrNoHardLinks, syscall.EPERM},
	{cache.ErrFileTooBig, syscall.EFBIG},
	{cache.ErrStale, syscall.ESTALE},
	{cache.ErrCorrupt, syscall.EIO},
	{cache.ErrUploadFailed, syscall.EIO},
	{cache.ErrClosed, syscall.EIO},
	{cache.ErrNoAttr, syscall.ENODATA},
	{cache.ErrNotSupported, syscall.ENOTSUP},
	{cache.ErrXattrNoRoom, syscall.ENOSPC},
	{cache.ErrXattrTooBig, syscall.E2BIG},
	{s3backend.ErrNotFound, syscall.ENOENT},
	{s3backend.ErrAccessDenied, syscall.EACCES},
	{s3backend.ErrInvalidCredentials, syscall.EACCES},
	{s3backend.ErrPrecondition, syscall.ESTALE},
	{context.Canceled, syscall.EINTR},
}

var (
	unknownMu     sync.Mutex
	unknownLogged = map[string]bool{}
)

// toErrno maps an error from the cache or S3 layer to the errno the kernel
// gets. op names the FUSE operation, for the log line of an unknown error.
func toErrno(op string, err error) syscall.Errno {
	if err == nil {
		return 0
	}
	for _, e := range errnoTable {
		if errors.Is(err, e.err) {
			return e.errno
		}
	}
	// S3 errors that are not about the file itself (outage, throttling,
	// a missing bucket) surface as I/O errors, logged where they happened.
	// They come before any errno wrapped inside them: a network errno
	// (ECONNREFUSED, ECONNRESET, ETIMEDOUT) means nothing to a program
	// reading a file.
	if errors.Is(err, s3backend.ErrUnavailable) || errors.Is(err, s3backend.ErrThrottled) ||
		errors.Is(err, s3backend.ErrNoSuchBucket) || errors.Is(err, s3backend.ErrConflict) ||
		errors.Is(err, s3backend.ErrInvalidRequest) || errors.Is(err, s3backend.ErrNotImplemented) ||
		errors.Is(err, s3backend.ErrInvalidRange) || errors.Is(err, context.DeadlineExceeded) {
		return syscall.EIO
	}
	var errno syscall.Errno
	if errors.As(err, &errno) && errno != syscall.ENOSYS {
		return errno
	}
	key := fmt.Sprintf("%s %T", op, err)
	unknownMu.Lock()
	first := !unknownLogged[key]
	unknownLogged[key] = true
	unknownMu.Unlock()
	if first {
		slog.Error("unexpected error; returning EIO", "op", op, "err", err)
	}
	return syscall.EIO
}
