package fs

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"testing"

	"github.com/keelfs/keelfs/cache"
	"github.com/keelfs/keelfs/s3backend"
)

func TestToErrno(t *testing.T) {
	wrap := func(err error) error { return fmt.Errorf("layer: %w", err) }
	cases := []struct {
		err  error
		want syscall.Errno
	}{
		{nil, 0},
		{wrap(cache.ErrNotExist), syscall.ENOENT},
		{wrap(cache.ErrNotEmpty), syscall.ENOTEMPTY},
		{wrap(cache.ErrNoHardLinks), syscall.EPERM},
		{wrap(cache.ErrReadOnly), syscall.EROFS},
		{wrap(cache.ErrNoSpace), syscall.ENOSPC},
		{wrap(cache.ErrNameTooLong), syscall.ENAMETOOLONG},
		{&s3backend.Error{Op: "PutObject", Kind: s3backend.ErrAccessDenied, Cause: errors.New("403")}, syscall.EACCES},
		{&s3backend.Error{Op: "GetObject", Kind: s3backend.ErrUnavailable, Cause: errors.New("reset")}, syscall.EIO},
		{wrap(context.Canceled), syscall.EINTR},
		// An outage never leaks a network errno (it used to: the errno
		// inside was found before the S3 error around it).
		{&s3backend.Error{Op: "HeadObject", Kind: s3backend.ErrUnavailable,
			Cause: fmt.Errorf("dial tcp: %w", syscall.ECONNREFUSED)}, syscall.EIO},
		{&s3backend.Error{Op: "GetObject", Kind: s3backend.ErrUnavailable,
			Cause: fmt.Errorf("read: %w", syscall.ECONNRESET)}, syscall.EIO},
		{&s3backend.Error{Op: "ListObjectsV2", Kind: s3backend.ErrUnavailable,
			Cause: fmt.Errorf("%w: %w", context.DeadlineExceeded, syscall.ETIMEDOUT)}, syscall.EIO},
		{wrap(syscall.EBADF), syscall.EBADF},
		// ENOSYS would tell the kernel the operation does not exist.
		{syscall.ENOSYS, syscall.EIO},
		{errors.New("something new"), syscall.EIO},
	}
	for _, c := range cases {
		if got := toErrno("test", c.err); got != c.want {
			t.Errorf("toErrno(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
