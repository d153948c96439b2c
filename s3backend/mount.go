package s3backend

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// CheckAccess sends one small listing of the prefix so that a mount with a
// wrong bucket, endpoint or credentials fails at once with a clear Kind
// (ErrNoSuchBucket, ErrInvalidCredentials, ErrAccessDenied, ErrUnavailable)
// instead of on the first file access. Retries stop at ctx's deadline.
func (s *Store) CheckAccess(ctx context.Context) error {
	// Credentials first, once: inside the listing each attempt would
	// walk the whole chain again (twice as long when instance metadata
	// is slow), and the news is the same.
	if creds := s.client.Options().Credentials; creds != nil {
		if _, err := creds.Retrieve(ctx); err != nil {
			return s.wrap(ctx, nil, "RetrieveCredentials", "", err)
		}
	}
	ctx, c := s.track(ctx, "", 0)
	_, err := s.client.ListObjectsV2(ctx, &s3.ListObjectsV2Input{
		Bucket: &s.bucket, Prefix: optional(s.prefix), MaxKeys: aws.Int32(1), RequestPayer: s.payer,
	})
	return s.wrap(ctx, c, "ListObjectsV2", "", err)
}

// ProbeConditionalWrites reports whether the endpoint enforces
// If-None-Match on PUT. Some S3-compatible servers ignore the header and
// overwrite silently, which would turn every conflict into a lost update;
// the cache must know before it relies on 412s. Where PUT enforces it, a
// CopyObject is tried too: a server that ignores it there (versitygw
// v1.8.0) makes Copy check its destination first (checkCopyDest). The
// probe objects are deleted whatever happens.
func (s *Store) ProbeConditionalWrites(ctx context.Context) (bool, error) {
	var b [8]byte
	rand.Read(b[:])
	key := ".keelfs-probe-" + hex.EncodeToString(b[:])
	created := false
	create := func() error {
		// Not Put: a PUT with no answer becomes ErrPrecondition there once
		// a HEAD finds the object the first PUT made, which says nothing
		// about whether the server checks the header. Only its 412 does.
		_, err := s.put(ctx, PutInput{Key: key, Body: bytes.NewReader(nil), Cond: Condition{IfNoneMatch: true}})
		created = created || err == nil
		return err
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		// A failed delete matters only if the probe exists: on a
		// read-only bucket the PUT failed too and there is nothing to say.
		if err := s.Delete(dctx, key, Condition{}); err != nil && created {
			s.log.Warn("could not delete conditional-write probe object", "key", key, "err", err)
		}
	}()
	err := create()
	if err == nil {
		err = create()
		if err == nil {
			return false, nil
		}
	}
	switch {
	case errors.Is(err, ErrPrecondition):
		s.probeCopyConditions(ctx, key)
		return true, nil
	case errors.Is(err, ErrNotImplemented), errors.Is(err, ErrInvalidRequest):
		return false, nil
	}
	return false, err
}

// probeCopyConditions copies the probe object src onto a second one with
// If-None-Match: an endpoint that enforces it answers 412. Anything else
// (the copy done, refused otherwise, or no answer) makes Copy check its
// destination itself: one HEAD per conditional copy, the safe side.
func (s *Store) probeCopyConditions(ctx context.Context, src string) {
	dst := src + "-copy"
	_, err := s.put(ctx, PutInput{Key: dst, Body: bytes.NewReader(nil)})
	if err == nil {
		_, err = s.Copy(ctx, CopyInput{Src: src, Dst: dst, Cond: Condition{IfNoneMatch: true}})
	}
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if derr := s.Delete(dctx, dst, Condition{}); derr != nil {
		s.log.Warn("could not delete conditional-write probe object", "key", dst, "err", derr)
	}
	if errors.Is(err, ErrPrecondition) {
		return
	}
	s.checkCopyDest.Store(true)
	msg := "the endpoint does not check If-Match/If-None-Match on CopyObject; renames check the destination with a HEAD first"
	if err != nil {
		s.log.Info(msg, "copy_err", err)
		return
	}
	s.log.Info(msg)
}
