package s3backend

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go/logging"
)

// Store is the ObjectStore for a real S3 endpoint, built on aws-sdk-go-v2.
type Store struct {
	client *s3.Client
	bucket string
	prefix string // "" or ends in "/"
	obs    Observer
	log    *slog.Logger

	sse          types.ServerSideEncryption
	kmsKeyID     *string
	storageClass types.StorageClass
	payer        types.RequestPayer
	bodyOpts     []func(*s3.Options) // for requests that carry object data

	// Tests lower these to reach the multipart-copy and multi-page list
	// paths without creating 5 GiB objects or thousands of keys.
	copyThreshold int64 // Copy uses a multipart copy above this SrcSize
	copyPartSize  int64
	listPageSize  int32

	// checkCopyDest: the endpoint ignores If-Match and If-None-Match on
	// CopyObject although it enforces them on PUT (the probe found it), so
	// Copy checks its destination with a HEAD first (checkDest).
	checkCopyDest atomic.Bool
}

var _ ObjectStore = (*Store)(nil)

const (
	defaultMaxAttempts    = 5
	defaultMaxBackoff     = 4 * time.Second
	defaultMaxConnections = 64
	defaultIdleTimeout    = 2 * time.Minute
	defaultRegion         = "us-east-1"

	// copyParallelism bounds the UploadPartCopy requests of one multipart
	// copy; they are server-side, so more would only queue at S3.
	copyParallelism = 8
)

// New builds a Store. It resolves configuration and credentials providers
// but sends no request: CheckAccess is the network check.
func New(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.Bucket == "" {
		return nil, errors.New("s3backend: no bucket")
	}
	if err := CheckEndpoint(cfg.Endpoint); err != nil {
		return nil, &Error{Op: "New", Kind: ErrInvalidRequest, Cause: err}
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = defaultMaxAttempts
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = defaultMaxBackoff
	}
	if cfg.MaxConnections <= 0 {
		cfg.MaxConnections = defaultMaxConnections
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = defaultIdleTimeout
	}
	s := &Store{
		bucket:        cfg.Bucket,
		prefix:        normalizePrefix(cfg.Prefix),
		obs:           cfg.Observer,
		log:           cfg.Logger,
		sse:           types.ServerSideEncryption(cfg.SSE),
		storageClass:  types.StorageClass(cfg.StorageClass),
		copyThreshold: MaxPutSize,
		copyPartSize:  MaxPartSize,
		listPageSize:  1000,
	}
	if s.obs == nil {
		s.obs = nopObserver{}
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	if cfg.SSE != "" && cfg.SSEKMSKeyID != "" {
		s.kmsKeyID = aws.String(cfg.SSEKMSKeyID)
	}
	if cfg.RequesterPays {
		s.payer = types.RequestPayerRequester
	}
	if cfg.UnsignedPayload {
		s.bodyOpts = []func(*s3.Options){s3.WithAPIOptions(v4.SwapComputePayloadSHA256ForUnsignedPayloadMiddleware)}
	}

	// The SDK can add a CA bundle only to its own buildable client, so the
	// connection pool is sized through transport options rather than by
	// handing it an *http.Client.
	httpClient := awshttp.NewBuildableClient().WithTransportOptions(func(tr *http.Transport) {
		tr.MaxIdleConns = cfg.MaxConnections
		tr.MaxIdleConnsPerHost = cfg.MaxConnections
		if dial := tr.DialContext; dial != nil {
			tr.DialContext = idleTimeoutDial(dial, cfg.IdleTimeout, cfg.DialFailed)
		}
	})
	opts := []func(*config.LoadOptions) error{
		config.WithHTTPClient(httpClient),
		config.WithRetryer(func() aws.Retryer {
			return retry.NewStandard(func(o *retry.StandardOptions) {
				o.MaxAttempts = cfg.MaxAttempts
				o.MaxBackoff = cfg.MaxBackoff
				o.RateLimiter = ratelimit.None
				o.Retryables = append(o.Retryables, retry.RetryableHTTPStatusCode{
					Codes: map[int]struct{}{http.StatusTooManyRequests: {}},
				})
			})
		}),
		// The SDK prints its own warnings ("falling back to IMDSv1") to
		// stderr, where they would break the one line a failed mount
		// prints; they go to the log, at debug level.
		config.WithLogger(logging.LoggerFunc(func(c logging.Classification, format string, v ...any) {
			s.log.Debug("aws sdk: "+fmt.Sprintf(format, v...), "class", string(c))
		})),
		// Checksums cost CPU on every byte; S3 does not need them and
		// 2-core hosts feel it.
		config.WithRequestChecksumCalculation(aws.RequestChecksumCalculationWhenRequired),
		config.WithResponseChecksumValidation(aws.ResponseChecksumValidationWhenRequired),
	}
	if cfg.Region != "" {
		opts = append(opts, config.WithRegion(cfg.Region))
	}
	if cfg.Profile != "" {
		opts = append(opts, config.WithSharedConfigProfile(cfg.Profile))
	}
	if cfg.NoSignRequest {
		opts = append(opts, config.WithCredentialsProvider(aws.AnonymousCredentials{}))
	}
	if cfg.CABundle != "" {
		pem, err := caBundle(cfg.CABundle)
		if err != nil {
			return nil, err
		}
		opts = append(opts, config.WithCustomCABundle(bytes.NewReader(pem)))
	}
	awsCfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		var noProfile config.SharedConfigProfileNotExistError
		if errors.As(err, &noProfile) {
			return nil, &Error{Op: "LoadConfig", Kind: ErrInvalidCredentials, Cause: err}
		}
		return nil, fmt.Errorf("s3backend: load aws config: %w", err)
	}
	if awsCfg.Region == "" {
		awsCfg.Region = defaultRegion
	}
	if !cfg.NoSignRequest && awsCfg.Credentials != nil {
		awsCfg.Credentials = markedCredentials{awsCfg.Credentials}
	}
	s.client = s3.NewFromConfig(awsCfg, func(o *s3.Options) {
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
		}
		o.UsePathStyle = cfg.ForcePathStyle
		o.APIOptions = append(o.APIOptions, s.addAttemptObserver)
	})
	return s, nil
}

// caBundle reads Config.CABundle. The SDK takes one bundle and would drop
// AWS_CA_BUNDLE in favour of ours, so both are concatenated.
func caBundle(path string) ([]byte, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("s3backend: read ca bundle: %w", err)
	}
	if env := os.Getenv("AWS_CA_BUNDLE"); env != "" {
		more, err := os.ReadFile(env)
		if err != nil {
			return nil, fmt.Errorf("s3backend: read AWS_CA_BUNDLE: %w", err)
		}
		pem = append(append(pem, '\n'), more...)
	}
	return pem, nil
}

func normalizePrefix(p string) string {
	p = strings.TrimLeft(p, "/")
	if p != "" && !strings.HasSuffix(p, "/") {
		p += "/"
	}
	return p
}

func (s *Store) full(key string) *string { return aws.String(s.prefix + key) }

// copySource is the x-amz-copy-source value. S3 URL-decodes it, so every
// byte outside the unreserved set is escaped; '+' in particular would
// otherwise come back as a space.
func (s *Store) copySource(key string) *string {
	const hex = "0123456789ABCDEF"
	p := s.bucket + "/" + s.prefix + key
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		c := p[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("-_.~/", c) >= 0 {
			b.WriteByte(c)
		} else {
			b.WriteByte('%')
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&15])
		}
	}
	return aws.String(b.String())
}

func optional(v string) *string {
	if v == "" {
		return nil
	}
	return aws.String(v)
}

func ifNoneMatch(c Condition) *string {
	if c.IfNoneMatch {
		return aws.String("*")
	}
	return nil
}

// rewind puts a body at its start: the interface promises the whole body is
// sent, and the SDK would otherwise start from wherever the caller left it.
func rewind(op, key string, body io.ReadSeeker) (io.ReadSeeker, error) {
	if body == nil {
		return bytes.NewReader(nil), nil
	}
	if _, err := body.Seek(0, io.SeekStart); err != nil {
		return nil, &Error{Op: op, Key: key, Kind: ErrInvalidRequest, Cause: fmt.Errorf("rewind body: %w", err)}
	}
	return body, nil
}

func (s *Store) Head(ctx context.Context, key string) (ObjectInfo, error) {
	return s.head(ctx, key, "")
}

func (s *Store) head(ctx context.Context, key, ifMatch string) (ObjectInfo, error) {
	ctx, c := s.track(ctx, key, 0)
	out, err := s.client.HeadObject(ctx, &s3.HeadObjectInput{
		Bucket: &s.bucket, Key: s.full(key), IfMatch: optional(ifMatch), RequestPayer: s.payer,
	})
	if err != nil {
		return ObjectInfo{}, s.wrap(ctx, c, "HeadObject", key, err)
	}
	meta := make(Metadata, len(out.Metadata))
	for k, v := range out.Metadata {
		meta[strings.ToLower(k)] = v
	}
	return ObjectInfo{
		Key:          key,
		Size:         aws.ToInt64(out.ContentLength),
		ETag:         aws.ToString(out.ETag),
		LastModified: aws.ToTime(out.LastModified),
		ContentType:  aws.ToString(out.ContentType),
		Metadata:     meta,
	}, nil
}

func (s *Store) Get(ctx context.Context, key string, off, length int64, etag string) (io.ReadCloser, error) {
	if length == 0 {
		// HTTP cannot ask for an empty range; nothing to fetch.
		return io.NopCloser(strings.NewReader("")), nil
	}
	in := &s3.GetObjectInput{Bucket: &s.bucket, Key: s.full(key), IfMatch: optional(etag), RequestPayer: s.payer}
	switch {
	case length > 0:
		in.Range = aws.String(fmt.Sprintf("bytes=%d-%d", off, off+length-1))
	case off > 0:
		in.Range = aws.String(fmt.Sprintf("bytes=%d-", off))
	}
	tctx, c := s.track(ctx, key, 0)
	out, err := s.client.GetObject(tctx, in)
	if err != nil {
		err = s.wrap(tctx, c, "GetObject", key, err)
		if off != 0 || in.Range == nil || !errors.Is(err, ErrInvalidRange) {
			return nil, err
		}
		// bytes=0-N of an empty object is unsatisfiable, yet reading an
		// empty file must work: ask for the whole object instead.
		in.Range = nil
		tctx, c = s.track(ctx, key, 0)
		if out, err = s.client.GetObject(tctx, in); err != nil {
			return nil, s.wrap(tctx, c, "GetObject", key, err)
		}
	}
	want := int64(-1)
	if out.ContentLength != nil {
		want = *out.ContentLength
	}
	var body io.Reader = out.Body
	if in.Range == nil && length > 0 && (want < 0 || want > length) {
		body = io.LimitReader(out.Body, length)
		want = length
	}
	return &bodyReader{s: s, key: key, body: body, closer: out.Body, want: want}, nil
}

// bodyReader turns a GET body that ends early into an error: the SDK hands
// back whatever arrived, and a short read taken for the end of the data
// would put zeros into a file.
type bodyReader struct {
	s      *Store
	key    string
	body   io.Reader
	closer io.Closer
	want   int64 // -1 when the server sent no Content-Length
	n      int64
	err    error
}

func (r *bodyReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	n, err := r.body.Read(p)
	r.n += int64(n)
	if n > 0 {
		r.s.obs.Transferred(0, int64(n))
	}
	switch {
	case err == io.EOF && r.want >= 0 && r.n < r.want:
		err = &Error{Op: "GetObject", Key: r.key, Kind: ErrUnavailable,
			Cause: fmt.Errorf("body ended after %d of %d bytes: %w", r.n, r.want, io.ErrUnexpectedEOF)}
	case err != nil && err != io.EOF:
		err = &Error{Op: "GetObject", Key: r.key, Kind: ErrUnavailable, Cause: err}
	}
	r.err = err
	return n, err
}

func (r *bodyReader) Close() error { return r.closer.Close() }

func (s *Store) List(ctx context.Context, in ListInput, fn func(ListEntry) error) error {
	input := &s3.ListObjectsV2Input{
		Bucket:       &s.bucket,
		Prefix:       optional(s.prefix + in.Prefix),
		Delimiter:    optional(in.Delimiter),
		MaxKeys:      aws.Int32(s.listPageSize),
		RequestPayer: s.payer,
	}
	if in.MaxKeys > 0 && in.MaxKeys < int(s.listPageSize) {
		input.MaxKeys = aws.Int32(int32(in.MaxKeys))
	}
	if in.StartAfter != "" {
		input.StartAfter = aws.String(s.prefix + in.StartAfter)
	}
	pages := s3.NewListObjectsV2Paginator(s.client, input)
	n := 0
	for pages.HasMorePages() {
		pctx, c := s.track(ctx, in.Prefix, 0)
		page, err := pages.NextPage(pctx)
		if err != nil {
			return s.wrap(pctx, c, "ListObjectsV2", in.Prefix, err)
		}
		// S3 sends objects and common prefixes as two sorted lists;
		// merging them gives the caller one ascending walk.
		objs, dirs := page.Contents, page.CommonPrefixes
		for len(objs) > 0 || len(dirs) > 0 {
			var e ListEntry
			if len(dirs) == 0 || len(objs) > 0 && aws.ToString(objs[0].Key) < aws.ToString(dirs[0].Prefix) {
				o := objs[0]
				objs = objs[1:]
				e = ListEntry{
					Key:          strings.TrimPrefix(aws.ToString(o.Key), s.prefix),
					Size:         aws.ToInt64(o.Size),
					ETag:         aws.ToString(o.ETag),
					LastModified: aws.ToTime(o.LastModified),
				}
			} else {
				e = ListEntry{Key: strings.TrimPrefix(aws.ToString(dirs[0].Prefix), s.prefix), IsPrefix: true}
				dirs = dirs[1:]
			}
			if err := fn(e); err != nil {
				return err
			}
			if n++; in.MaxKeys > 0 && n >= in.MaxKeys {
				return nil
			}
		}
	}
	return nil
}

func (s *Store) Put(ctx context.Context, in PutInput) (string, error) {
	etag, err := s.put(ctx, in)
	if err != nil {
		return "", s.unanswered(ctx, err, in.Key, in.Cond)
	}
	return etag, nil
}

// put is one PutObject, its error classified as S3 (or the lack of an
// answer) says.
func (s *Store) put(ctx context.Context, in PutInput) (string, error) {
	body, err := rewind("PutObject", in.Key, in.Body)
	if err != nil {
		return "", err
	}
	ctx, c := s.track(ctx, in.Key, in.Size)
	out, err := s.client.PutObject(ctx, &s3.PutObjectInput{
		Bucket:               &s.bucket,
		Key:                  s.full(in.Key),
		Body:                 body,
		ContentLength:        aws.Int64(in.Size),
		Metadata:             in.Metadata,
		ContentType:          optional(in.ContentType),
		IfMatch:              optional(in.Cond.IfMatch),
		IfNoneMatch:          ifNoneMatch(in.Cond),
		ServerSideEncryption: s.sse,
		SSEKMSKeyId:          s.kmsKeyID,
		StorageClass:         s.storageClass,
		RequestPayer:         s.payer,
	}, s.bodyOpts...)
	if err != nil {
		return "", targetGone(s.wrap(ctx, c, "PutObject", in.Key, err), in.Cond)
	}
	return aws.ToString(out.ETag), nil
}

// unanswered decides a conditional write that got no answer at all (the
// connection was reset or closed: Status 0) by the object's state. A
// server may answer 412 before it reads the body and then close the
// connection, and a client still sending may then meet the reset and
// never see the 412; an attempt that landed but whose answer was lost is
// retried into the object it made. Either way the object, not the
// endpoint, is the news: if a HEAD shows the condition does not hold, the
// error becomes ErrPrecondition, which the caller handles as it handles
// a 412 (it tells an upload of its own that landed from another writer's
// by the object's headers). Otherwise, or if the HEAD fails too, the
// error stays what it was.
func (s *Store) unanswered(ctx context.Context, err error, key string, cond Condition) error {
	var e *Error
	if (cond.IfMatch == "" && !cond.IfNoneMatch) || !errors.As(err, &e) || e.Status != 0 || e.Kind != ErrUnavailable ||
		ctx.Err() != nil || !connectionCut(err) {
		return err
	}
	info, herr := s.Head(ctx, key)
	var holds bool
	switch {
	case errors.Is(herr, ErrNotFound):
		holds = cond.IfMatch == "" // absent: If-None-Match holds, If-Match does not
	case herr != nil:
		return err
	case cond.IfNoneMatch:
		holds = false
	default:
		holds = strings.Trim(info.ETag, `"`) == strings.Trim(cond.IfMatch, `"`)
	}
	if holds {
		return err
	}
	e.Kind = ErrPrecondition // Error() says how it was decided
	return err
}

// connectionCut reports whether err is a connection the server reset or
// closed, as opposed to one that went silent (a timeout): a HEAD to decide
// by would follow the latter into the same black hole.
func connectionCut(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false
	}
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}

// targetGone reports a write conditional on an ETag whose target no longer
// exists as ErrPrecondition. S3 answers 404 NoSuchKey there, but for the
// caller it is the same news as a 412: the object it edited has changed
// behind its back. (CopyObject cannot get this treatment: there NoSuchKey
// may just as well mean the source is gone.)
func targetGone(err error, cond Condition) error {
	var e *Error
	if cond.IfMatch != "" && errors.As(err, &e) && e.Code == "NoSuchKey" {
		e.Kind = ErrPrecondition
	}
	return err
}

func (s *Store) Copy(ctx context.Context, in CopyInput) (string, error) {
	if s.checkCopyDest.Load() {
		if err := s.checkDest(ctx, in.Dst, in.Cond); err != nil {
			return "", err
		}
	}
	if in.SrcSize > s.copyThreshold {
		return s.copyMultipart(ctx, in)
	}
	cin := &s3.CopyObjectInput{
		Bucket:               &s.bucket,
		Key:                  s.full(in.Dst),
		CopySource:           s.copySource(in.Src),
		CopySourceIfMatch:    optional(in.SrcETag),
		IfMatch:              optional(in.Cond.IfMatch),
		IfNoneMatch:          ifNoneMatch(in.Cond),
		ServerSideEncryption: s.sse,
		SSEKMSKeyId:          s.kmsKeyID,
		StorageClass:         s.storageClass,
		RequestPayer:         s.payer,
	}
	if in.Metadata != nil {
		cin.MetadataDirective = types.MetadataDirectiveReplace
		cin.Metadata = in.Metadata
		cin.ContentType = optional(in.ContentType)
	}
	ctx, c := s.track(ctx, in.Dst, 0)
	out, err := s.client.CopyObject(ctx, cin)
	if err != nil {
		return "", s.wrap(ctx, c, "CopyObject", in.Dst, err)
	}
	if out.CopyObjectResult == nil {
		return "", nil
	}
	return aws.ToString(out.CopyObjectResult.ETag), nil
}

// checkDest checks a copy's destination condition with a HEAD, for an
// endpoint that ignores it on CopyObject: a destination taken (If-None-
// Match) or changed (If-Match) fails as its 412 would. Another writer can
// still get in between the HEAD and the copy; that window is what such an
// endpoint leaves.
func (s *Store) checkDest(ctx context.Context, key string, cond Condition) error {
	if !cond.IfNoneMatch && cond.IfMatch == "" {
		return nil
	}
	info, err := s.head(ctx, key, "")
	exists := err == nil
	if err != nil && !errors.Is(err, ErrNotFound) {
		return err
	}
	var why string
	switch {
	case cond.IfNoneMatch && exists:
		why = "the destination exists"
	case cond.IfMatch != "" && !exists:
		why = "the destination is gone"
	case cond.IfMatch != "" && info.ETag != cond.IfMatch:
		why = "the destination changed"
	default:
		return nil
	}
	return &Error{Op: "CopyObject", Key: key, Kind: ErrPrecondition,
		Cause: errors.New(why + " (checked before the copy: this endpoint does not check conditions on CopyObject)")}
}

// copyMultipart copies an object too large for CopyObject. All parts are
// pinned to one source ETag so the result never mixes two versions, even
// when the caller did not name one.
func (s *Store) copyMultipart(ctx context.Context, in CopyInput) (string, error) {
	meta, ctype, etag, size := in.Metadata, in.ContentType, in.SrcETag, in.SrcSize
	if meta == nil || etag == "" {
		info, err := s.head(ctx, in.Src, in.SrcETag)
		if err != nil {
			return "", err
		}
		if meta == nil {
			meta, ctype = info.Metadata, info.ContentType
		}
		etag, size = info.ETag, info.Size
		if size <= s.copyThreshold {
			in.SrcETag, in.SrcSize, in.Metadata, in.ContentType = etag, size, meta, ctype
			return s.Copy(ctx, in)
		}
	}
	id, err := s.CreateMultipart(ctx, in.Dst, meta, ctype)
	if err != nil {
		return "", err
	}
	// abort ends the upload of a copy that failed. Once the caller gave
	// up (a stop) it is not tried: waiting for it into an S3 that does
	// not answer would overrun the stop. The caller gets the upload, to
	// abort later, then and when the abort fails.
	abort := func(err error) error {
		if ctx.Err() == nil {
			actx, cancel := context.WithTimeout(ctx, 30*time.Second)
			aerr := s.AbortMultipart(actx, in.Dst, id)
			cancel()
			if aerr == nil || errors.Is(aerr, ErrNotFound) {
				return err
			}
			s.log.Debug("abort multipart copy; left to the caller", "key", in.Dst, "err", aerr)
		}
		return &UploadLeft{Key: in.Dst, UploadID: id, Err: err}
	}

	n := int((size + s.copyPartSize - 1) / s.copyPartSize)
	parts := make([]CompletedPart, n)
	pctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
		sem      = make(chan struct{}, copyParallelism)
	)
	for i := range n {
		off := int64(i) * s.copyPartSize
		length := min(s.copyPartSize, size-off)
		select {
		case sem <- struct{}{}:
		case <-pctx.Done():
		}
		if pctx.Err() != nil {
			break
		}
		wg.Go(func() {
			defer func() { <-sem }()
			tag, err := s.UploadPartCopy(pctx, UploadPartCopyInput{
				Key: in.Dst, UploadID: id, Part: int32(i + 1), Src: in.Src, SrcETag: etag, Off: off, Length: length,
			})
			if err != nil {
				mu.Lock()
				if firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
				cancel()
				return
			}
			parts[i] = CompletedPart{Part: int32(i + 1), ETag: tag}
		})
	}
	wg.Wait()
	if firstErr == nil && ctx.Err() != nil {
		firstErr = &Error{Op: "UploadPartCopy", Key: in.Dst, Kind: ErrUnavailable, Cause: ctx.Err()}
	}
	if firstErr != nil {
		return "", abort(firstErr)
	}
	tag, err := s.CompleteMultipart(ctx, in.Dst, id, parts, in.Cond)
	if err != nil {
		return "", abort(err)
	}
	return tag, nil
}

// UploadLeft is the error of a multipart copy that failed and whose
// upload was not aborted (the caller gave up, or the abort failed): the
// caller aborts it later. It wraps the copy's error.
type UploadLeft struct {
	Key, UploadID string
	Err           error
}

func (e *UploadLeft) Error() string {
	return fmt.Sprintf("%v (multipart upload %s of %q left to abort)", e.Err, e.UploadID, e.Key)
}

func (e *UploadLeft) Unwrap() error { return e.Err }

func (s *Store) Delete(ctx context.Context, key string, cond Condition) error {
	ctx, c := s.track(ctx, key, 0)
	_, err := s.client.DeleteObject(ctx, &s3.DeleteObjectInput{
		Bucket: &s.bucket, Key: s.full(key), IfMatch: optional(cond.IfMatch), RequestPayer: s.payer,
	})
	if err = s.wrap(ctx, c, "DeleteObject", key, err); errors.Is(err, ErrNotFound) {
		return nil
	}
	return err
}

func (s *Store) CreateMultipart(ctx context.Context, key string, meta Metadata, contentType string) (string, error) {
	ctx, c := s.track(ctx, key, 0)
	out, err := s.client.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{
		Bucket:               &s.bucket,
		Key:                  s.full(key),
		Metadata:             meta,
		ContentType:          optional(contentType),
		ServerSideEncryption: s.sse,
		SSEKMSKeyId:          s.kmsKeyID,
		StorageClass:         s.storageClass,
		RequestPayer:         s.payer,
	})
	if err != nil {
		return "", s.wrap(ctx, c, "CreateMultipartUpload", key, err)
	}
	return aws.ToString(out.UploadId), nil
}

func (s *Store) UploadPart(ctx context.Context, in UploadPartInput) (string, error) {
	body, err := rewind("UploadPart", in.Key, in.Body)
	if err != nil {
		return "", err
	}
	ctx, c := s.track(ctx, in.Key, in.Size)
	out, err := s.client.UploadPart(ctx, &s3.UploadPartInput{
		Bucket:        &s.bucket,
		Key:           s.full(in.Key),
		UploadId:      &in.UploadID,
		PartNumber:    aws.Int32(in.Part),
		Body:          body,
		ContentLength: aws.Int64(in.Size),
		RequestPayer:  s.payer,
	}, s.bodyOpts...)
	if err != nil {
		return "", s.wrap(ctx, c, "UploadPart", in.Key, err)
	}
	return aws.ToString(out.ETag), nil
}

func (s *Store) UploadPartCopy(ctx context.Context, in UploadPartCopyInput) (string, error) {
	ctx, c := s.track(ctx, in.Key, 0)
	out, err := s.client.UploadPartCopy(ctx, &s3.UploadPartCopyInput{
		Bucket:            &s.bucket,
		Key:               s.full(in.Key),
		UploadId:          &in.UploadID,
		PartNumber:        aws.Int32(in.Part),
		CopySource:        s.copySource(in.Src),
		CopySourceRange:   aws.String(fmt.Sprintf("bytes=%d-%d", in.Off, in.Off+in.Length-1)),
		CopySourceIfMatch: optional(in.SrcETag),
		RequestPayer:      s.payer,
	})
	if err != nil {
		return "", s.wrap(ctx, c, "UploadPartCopy", in.Key, err)
	}
	if out.CopyPartResult == nil {
		return "", nil
	}
	return aws.ToString(out.CopyPartResult.ETag), nil
}

func (s *Store) CompleteMultipart(ctx context.Context, key, uploadID string, parts []CompletedPart, cond Condition) (string, error) {
	sorted := slices.SortedFunc(slices.Values(parts), func(a, b CompletedPart) int { return int(a.Part) - int(b.Part) })
	done := make([]types.CompletedPart, len(sorted))
	for i, p := range sorted {
		done[i] = types.CompletedPart{PartNumber: aws.Int32(p.Part), ETag: aws.String(p.ETag)}
	}
	ctx, c := s.track(ctx, key, 0)
	out, err := s.client.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{
		Bucket:          &s.bucket,
		Key:             s.full(key),
		UploadId:        &uploadID,
		MultipartUpload: &types.CompletedMultipartUpload{Parts: done},
		IfMatch:         optional(cond.IfMatch),
		IfNoneMatch:     ifNoneMatch(cond),
		RequestPayer:    s.payer,
	})
	if err != nil {
		// A conditional completion that got no answer is decided as a
		// PUT's is: the completion may have landed and lost its answer.
		return "", s.unanswered(ctx, targetGone(s.wrap(ctx, c, "CompleteMultipartUpload", key, err), cond), key, cond)
	}
	return aws.ToString(out.ETag), nil
}

func (s *Store) AbortMultipart(ctx context.Context, key, uploadID string) error {
	ctx, c := s.track(ctx, key, 0)
	_, err := s.client.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{
		Bucket: &s.bucket, Key: s.full(key), UploadId: &uploadID, RequestPayer: s.payer,
	})
	if err = s.wrap(ctx, c, "AbortMultipartUpload", key, err); errors.Is(err, ErrNotFound) {
		return nil
	}
	return err
}

type nopObserver struct{}

func (nopObserver) RequestDone(string, int, time.Duration)   {}
func (nopObserver) Retry(string, string, string, int, error) {}
func (nopObserver) Transferred(int64, int64)                 {}
