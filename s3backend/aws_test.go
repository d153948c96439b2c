package s3backend

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/keelfs/keelfs/test/harness"
)

// useServerCreds points the standard credential chain at srv and nowhere
// else: no IMDS, no shared files from the developer's home.
func useServerCreds(t *testing.T, srv *harness.Server) {
	t.Helper()
	for _, kv := range srv.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	none := filepath.Join(t.TempDir(), "none")
	t.Setenv("AWS_CONFIG_FILE", none)
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", none)
	t.Setenv("AWS_PROFILE", "")
	t.Setenv("AWS_SESSION_TOKEN", "")
}

func setup(t *testing.T) (*harness.Server, string) {
	t.Helper()
	srv := harness.StartServer(t)
	useServerCreds(t, srv)
	return srv, srv.NewBucket(t)
}

// logRecorder keeps log records so tests can assert on them. Unless a test
// says it expects warnings, any WARN or ERROR fails it.
type logRecorder struct {
	mu       sync.Mutex
	records  []slog.Record
	expected bool
}

func (l *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *logRecorder) WithGroup(string) slog.Handler            { return l }
func (l *logRecorder) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	l.records = append(l.records, r.Clone())
	l.mu.Unlock()
	return nil
}

func (l *logRecorder) warnings() []slog.Record {
	l.mu.Lock()
	defer l.mu.Unlock()
	var w []slog.Record
	for _, r := range l.records {
		if r.Level >= slog.LevelWarn {
			w = append(w, r)
		}
	}
	return w
}

// retryLines returns the records that report a retry (at debug level:
// a retry that works is no news).
func (l *logRecorder) retryLines() []slog.Record {
	l.mu.Lock()
	defer l.mu.Unlock()
	var w []slog.Record
	for _, r := range l.records {
		if r.Message == "s3 request failed; retrying" {
			w = append(w, r)
		}
	}
	return w
}

func attrs(r slog.Record) map[string]string {
	m := map[string]string{}
	r.Attrs(func(a slog.Attr) bool { m[a.Key] = a.Value.String(); return true })
	return m
}

type retryCall struct {
	op, key, requestID string
	attempt            int
	err                error
}

type doneCall struct {
	op     string
	status int
}

type recordingObserver struct {
	mu      sync.Mutex
	done    []doneCall
	retries []retryCall
	up      atomic.Int64
	down    atomic.Int64
}

func (o *recordingObserver) RequestDone(op string, status int, d time.Duration) {
	o.mu.Lock()
	o.done = append(o.done, doneCall{op, status})
	o.mu.Unlock()
}

func (o *recordingObserver) Retry(op, key, requestID string, attempt int, err error) {
	o.mu.Lock()
	o.retries = append(o.retries, retryCall{op, key, requestID, attempt, err})
	o.mu.Unlock()
}

func (o *recordingObserver) Transferred(up, down int64) {
	o.up.Add(up)
	o.down.Add(down)
}

func (o *recordingObserver) snapshot() ([]doneCall, []retryCall) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.done), slices.Clone(o.retries)
}

type testStore struct {
	*Store
	obs *recordingObserver
	log *logRecorder
}

func newStore(t *testing.T, endpoint, bucket string, mods ...func(*Config)) testStore {
	t.Helper()
	obs, rec := &recordingObserver{}, &logRecorder{}
	cfg := Config{Bucket: bucket, Endpoint: endpoint, ForcePathStyle: true, Observer: obs, Logger: slog.New(rec)}
	for _, m := range mods {
		m(&cfg)
	}
	s, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if rec.expected {
			return
		}
		for _, r := range rec.warnings() {
			t.Errorf("unexpected log line: %s %s %v", r.Level, r.Message, attrs(r))
		}
	})
	return testStore{s, obs, rec}
}

func put(t *testing.T, s ObjectStore, key, data string, cond Condition) string {
	t.Helper()
	etag, err := s.Put(context.Background(), PutInput{Key: key, Body: strings.NewReader(data), Size: int64(len(data)), Cond: cond})
	if err != nil {
		t.Fatalf("put %q: %v", key, err)
	}
	return etag
}

func readAll(t *testing.T, s ObjectStore, key string, off, length int64, etag string) (string, error) {
	t.Helper()
	r, err := s.Get(context.Background(), key, off, length, etag)
	if err != nil {
		return "", err
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	return string(b), err
}

func rawGet(t *testing.T, c *s3.Client, bucket, key string) (string, bool) {
	t.Helper()
	out, err := c.GetObject(context.Background(), &s3.GetObjectInput{Bucket: &bucket, Key: &key})
	if err != nil {
		return "", false
	}
	defer out.Body.Close()
	b, err := io.ReadAll(out.Body)
	if err != nil {
		t.Fatalf("raw get %q: %v", key, err)
	}
	return string(b), true
}

func rawKeys(t *testing.T, c *s3.Client, bucket string) []string {
	t.Helper()
	var keys []string
	p := s3.NewListObjectsV2Paginator(c, &s3.ListObjectsV2Input{Bucket: &bucket})
	for p.HasMorePages() {
		page, err := p.NextPage(context.Background())
		if err != nil {
			t.Fatalf("raw list: %v", err)
		}
		for _, o := range page.Contents {
			keys = append(keys, *o.Key)
		}
	}
	return keys
}

func listAll(t *testing.T, s ObjectStore, in ListInput) []string {
	t.Helper()
	var got []string
	err := s.List(context.Background(), in, func(e ListEntry) error {
		got = append(got, e.Key)
		return nil
	})
	if err != nil {
		t.Fatalf("list %+v: %v", in, err)
	}
	return got
}

func wantKind(t *testing.T, what string, err error, kind error) *Error {
	t.Helper()
	var e *Error
	if !errors.Is(err, kind) || !errors.As(err, &e) {
		t.Fatalf("%s: got %v, want an *Error wrapping %q", what, err, kind)
	}
	return e
}

func TestStorePrefixMapping(t *testing.T) {
	srv, bucket := setup(t)
	s := newStore(t, srv.Endpoint, bucket, func(c *Config) { c.Prefix = "/p/q" })
	raw := srv.Client(t)
	ctx := context.Background()

	put(t, s, "a/b", "ab", Condition{})
	if got, ok := rawGet(t, raw, bucket, "p/q/a/b"); !ok || got != "ab" {
		t.Fatalf("object under prefix: %q %v", got, ok)
	}
	for _, k := range []string{"p/q/c", "p/qx", "other"} {
		if _, err := raw.PutObject(ctx, &s3.PutObjectInput{Bucket: &bucket, Key: aws.String(k), Body: strings.NewReader(k)}); err != nil {
			t.Fatal(err)
		}
	}
	if got, want := listAll(t, s, ListInput{Delimiter: "/"}), []string{"a/", "c"}; !slices.Equal(got, want) {
		t.Errorf("list: %q, want %q", got, want)
	}
	if got, want := listAll(t, s, ListInput{}), []string{"a/b", "c"}; !slices.Equal(got, want) {
		t.Errorf("flat list: %q, want %q", got, want)
	}
	info, err := s.Head(ctx, "c")
	if err != nil || info.Key != "c" || info.Size != 5 {
		t.Errorf("head c: %+v %v", info, err)
	}
	if _, err := s.Copy(ctx, CopyInput{Src: "c", Dst: "d"}); err != nil {
		t.Fatal(err)
	}
	if got, _ := rawGet(t, raw, bucket, "p/q/d"); got != "p/q/c" {
		t.Errorf("copy landed as %q", got)
	}
	if err := s.Delete(ctx, "c", Condition{}); err != nil {
		t.Fatal(err)
	}
	if got, want := rawKeys(t, raw, bucket), []string{"other", "p/q/a/b", "p/q/d", "p/qx"}; !slices.Equal(got, want) {
		t.Errorf("bucket holds %q, want %q", got, want)
	}
}

func TestStoreHeadGet(t *testing.T) {
	srv, bucket := setup(t)
	s := newStore(t, srv.Endpoint, bucket)
	ctx := context.Background()

	etag, err := s.Put(ctx, PutInput{Key: "f", Body: strings.NewReader("0123456789"), Size: 10,
		Metadata: Metadata{"mode": "33188", "uid": "1000", "mtime": "1700000000"}, ContentType: "text/plain"})
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Head(ctx, "f")
	if err != nil {
		t.Fatal(err)
	}
	if info.Key != "f" || info.Size != 10 || info.ETag != etag || info.ContentType != "text/plain" || info.LastModified.IsZero() {
		t.Errorf("head: %+v (put etag %s)", info, etag)
	}
	if want := (Metadata{"mode": "33188", "uid": "1000", "mtime": "1700000000"}); !mapsEqual(info.Metadata, want) {
		t.Errorf("metadata %v, want %v", info.Metadata, want)
	}

	s.obs.down.Store(0)
	for _, c := range []struct {
		off, length int64
		want        string
	}{
		{0, -1, "0123456789"},
		{3, 4, "3456"},
		{7, -1, "789"},
		{8, 100, "89"},
		{0, 1, "0"},
	} {
		got, err := readAll(t, s, "f", c.off, c.length, etag)
		if err != nil || got != c.want {
			t.Errorf("get %d+%d: %q %v, want %q", c.off, c.length, got, err, c.want)
		}
	}
	if got := s.obs.down.Load(); got != 10+4+3+2+1 {
		t.Errorf("observer counted %d bytes down, want 20", got)
	}

	put(t, s, "f", "changed", Condition{})
	_, err = s.Get(ctx, "f", 0, -1, etag)
	wantKind(t, "get with stale etag", err, ErrPrecondition)
	_, err = s.Get(ctx, "f", 100, 10, "")
	wantKind(t, "get past the end", err, ErrInvalidRange)
	_, err = s.Get(ctx, "missing", 0, -1, "")
	e := wantKind(t, "get missing", err, ErrNotFound)
	if e.Op != "GetObject" || e.Key != "missing" || e.Status != 404 || e.RequestID == "" {
		t.Errorf("error fields: %+v", e)
	}
	_, err = s.Head(ctx, "missing")
	wantKind(t, "head missing", err, ErrNotFound)

	put(t, s, "empty", "", Condition{})
	for _, length := range []int64{-1, 10} {
		if got, err := readAll(t, s, "empty", 0, length, ""); err != nil || got != "" {
			t.Errorf("get empty object, length %d: %q %v", length, got, err)
		}
	}
}

// Real S3 answers 416 to bytes=0-N on an empty object (versitygw answers
// 200); reading an empty file must work either way.
func TestStoreGetEmptyObjectUnsatisfiableRange(t *testing.T) {
	srv, bucket := setup(t)
	var ranged atomic.Int32
	proxy := proxyTo(t, srv.Endpoint, func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodGet && r.Header.Get("Range") != "" {
			ranged.Add(1)
			s3Error(w, 416, "InvalidRange", "r-1")
			return true
		}
		return false
	})
	s := newStore(t, proxy, bucket)
	put(t, s, "empty", "", Condition{})
	if got, err := readAll(t, s, "empty", 0, 4096, ""); err != nil || got != "" {
		t.Fatalf("read of an empty object: %q %v", got, err)
	}
	if ranged.Load() != 1 {
		t.Errorf("%d ranged GETs", ranged.Load())
	}
	put(t, s, "full", "0123456789", Condition{})
	if got, err := readAll(t, s, "full", 0, 4, ""); err != nil || got != "0123" {
		t.Errorf("fallback read of a non-empty object: %q %v", got, err)
	}
	_, err := s.Get(context.Background(), "full", 20, 4, "")
	wantKind(t, "ranged read past the end", err, ErrInvalidRange)
}

func mapsEqual(a, b Metadata) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func TestStoreListPagesMergeOrder(t *testing.T) {
	srv, bucket := setup(t)
	s := newStore(t, srv.Endpoint, bucket)
	s.listPageSize = 3
	ctx := context.Background()
	// Objects and prefixes interleave, so within every page S3's two
	// lists must be merged; "b.txt" sorts between "b" rolled-up prefixes
	// and "b/" because '.' < '/'.
	keys := []string{"a", "b.txt", "b/1", "b/2", "c", "d/x", "d/y/z", "e", "f-", "f/g", "g", "h/i", "j"}
	for _, k := range keys {
		put(t, s, k, k, Condition{})
	}
	s.obs.mu.Lock()
	s.obs.done = nil
	s.obs.mu.Unlock()

	want := []string{"a", "b.txt", "b/", "c", "d/", "e", "f-", "f/", "g", "h/", "j"}
	if got := listAll(t, s, ListInput{Delimiter: "/"}); !slices.Equal(got, want) {
		t.Errorf("list with delimiter:\n got %q\nwant %q", got, want)
	}
	done, _ := s.obs.snapshot()
	if len(done) < 4 {
		t.Errorf("%d list requests for %d entries with pages of 3: pagination not exercised", len(done), len(want))
	}
	if got := listAll(t, s, ListInput{}); !slices.Equal(got, keys) {
		t.Errorf("flat list:\n got %q\nwant %q", got, keys)
	}
	if got, want := listAll(t, s, ListInput{Prefix: "d/", Delimiter: "/"}), []string{"d/x", "d/y/"}; !slices.Equal(got, want) {
		t.Errorf("list d/: %q, want %q", got, want)
	}
	if got := listAll(t, s, ListInput{Delimiter: "/", MaxKeys: 5}); !slices.Equal(got, want[:5]) {
		t.Errorf("MaxKeys 5: %q", got)
	}
	if got := listAll(t, s, ListInput{Prefix: "zz"}); len(got) != 0 {
		t.Errorf("empty prefix listed %q", got)
	}

	var entries []ListEntry
	stop := errors.New("stop")
	err := s.List(ctx, ListInput{Delimiter: "/"}, func(e ListEntry) error {
		entries = append(entries, e)
		if len(entries) == 3 {
			return stop
		}
		return nil
	})
	if err != stop || len(entries) != 3 {
		t.Fatalf("fn error: %v after %d entries", err, len(entries))
	}
	if e := entries[0]; e.IsPrefix || e.Size != 1 || e.ETag == "" || e.LastModified.IsZero() {
		t.Errorf("object entry %+v", e)
	}
	if e := entries[2]; !e.IsPrefix || e.Key != "b/" || e.ETag != "" {
		t.Errorf("prefix entry %+v", e)
	}
}

func TestStoreListOverThousandKeys(t *testing.T) {
	srv, bucket := setup(t)
	s := newStore(t, srv.Endpoint, bucket)
	var want []string
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for i := range 1100 {
		k := fmt.Sprintf("k%04d", i)
		if i%10 == 0 {
			k += "/x"
		}
		want = append(want, k)
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if _, err := s.Put(context.Background(), PutInput{Key: k, Body: bytes.NewReader(nil)}); err != nil {
				mu.Lock()
				t.Errorf("put %s: %v", k, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	slices.Sort(want)
	if got := listAll(t, s, ListInput{}); !slices.Equal(got, want) {
		t.Fatalf("flat list of 1100 keys: got %d keys", len(got))
	}
	var rolled []string
	for _, k := range want {
		rolled = append(rolled, strings.TrimSuffix(k, "x"))
	}
	if got := listAll(t, s, ListInput{Delimiter: "/"}); !slices.Equal(got, rolled) {
		t.Fatalf("delimited list of 1100 keys: got %d entries", len(got))
	}
}

func TestStoreConditionalWrites(t *testing.T) {
	srv, bucket := setup(t)
	s := newStore(t, srv.Endpoint, bucket)
	raw := srv.Client(t)
	ctx := context.Background()

	v1 := put(t, s, "f", "one", Condition{IfNoneMatch: true})
	_, err := s.Put(ctx, PutInput{Key: "f", Body: strings.NewReader("two"), Size: 3, Cond: Condition{IfNoneMatch: true}})
	if e := wantKind(t, "put if-none-match over existing", err, ErrPrecondition); e.Status != 412 {
		t.Errorf("status %d", e.Status)
	}
	v2 := put(t, s, "f", "two", Condition{IfMatch: v1})
	_, err = s.Put(ctx, PutInput{Key: "f", Body: strings.NewReader("three"), Size: 5, Cond: Condition{IfMatch: v1}})
	wantKind(t, "put if-match stale", err, ErrPrecondition)
	_, err = s.Put(ctx, PutInput{Key: "gone", Body: strings.NewReader("x"), Size: 1, Cond: Condition{IfMatch: v1}})
	wantKind(t, "put if-match on a missing key", err, ErrPrecondition)
	if got, _ := rawGet(t, raw, bucket, "f"); got != "two" {
		t.Fatalf("f = %q after failed conditional puts", got)
	}

	_, err = s.Copy(ctx, CopyInput{Src: "f", SrcETag: v1, Dst: "c"})
	wantKind(t, "copy with stale source etag", err, ErrPrecondition)
	if _, ok := rawGet(t, raw, bucket, "c"); ok {
		t.Fatal("copy of a stale source landed")
	}
	if _, err := s.Copy(ctx, CopyInput{Src: "f", SrcETag: v2, Dst: "c", Cond: Condition{IfNoneMatch: true}}); err != nil {
		t.Fatal(err)
	}
	_, err = s.Copy(ctx, CopyInput{Src: "missing", Dst: "c2"})
	wantKind(t, "copy of a missing source", err, ErrNotFound)

	err = s.Delete(ctx, "f", Condition{IfMatch: v1})
	wantKind(t, "delete with stale etag", err, ErrPrecondition)
	if _, ok := rawGet(t, raw, bucket, "f"); !ok {
		t.Fatal("conditional delete removed the object")
	}
	if err := s.Delete(ctx, "f", Condition{IfMatch: v2}); err != nil {
		t.Fatal(err)
	}
	if _, ok := rawGet(t, raw, bucket, "f"); ok {
		t.Fatal("delete left the object")
	}
	if err := s.Delete(ctx, "f", Condition{}); err != nil {
		t.Errorf("delete of a missing key: %v", err)
	}
	if err := s.Delete(ctx, "f", Condition{IfMatch: v2}); err != nil {
		t.Errorf("conditional delete of a missing key: %v", err)
	}
}

// TestStoreCopyConditionsCheckedWhereIgnored: on an endpoint that ignores
// If-Match and If-None-Match on CopyObject (versitygw v1.8.0 copies
// anyway) but enforces them on PUT, the probe notices, and Copy checks
// the destination itself: a rename onto a name another mount took or
// changed fails as a 412 would, rather than overwrite it (found by hand:
// renames overwrote another mount's object with no log line).
func TestStoreCopyConditionsCheckedWhereIgnored(t *testing.T) {
	srv, bucket := setup(t)
	s := newStore(t, srv.Endpoint, bucket)
	ctx := context.Background()
	if ok, err := s.ProbeConditionalWrites(ctx); !ok || err != nil {
		t.Fatalf("probe: %v %v, want PUT conditions enforced", ok, err)
	}
	if keys := listAll(t, s, ListInput{}); len(keys) != 0 {
		t.Fatalf("the probe left %v", keys)
	}
	src := put(t, s, "src", "data", Condition{})
	dst := put(t, s, "dst", "other mount's", Condition{})
	_, err := s.Copy(ctx, CopyInput{Src: "src", SrcETag: src, SrcSize: 4, Dst: "dst", Cond: Condition{IfNoneMatch: true}})
	wantKind(t, "copy onto a name taken, if-none-match", err, ErrPrecondition)
	_, err = s.Copy(ctx, CopyInput{Src: "src", SrcETag: src, SrcSize: 4, Dst: "dst", Cond: Condition{IfMatch: src}})
	wantKind(t, "copy onto a name changed, if-match", err, ErrPrecondition)
	_, err = s.Copy(ctx, CopyInput{Src: "src", SrcETag: src, SrcSize: 4, Dst: "gone", Cond: Condition{IfMatch: src}})
	wantKind(t, "copy onto a name deleted, if-match", err, ErrPrecondition)
	if got, err := readAll(t, s, "dst", 0, -1, ""); err != nil || got != "other mount's" {
		t.Fatalf("dst after refused copies: %q %v", got, err)
	}
	if _, err := s.Copy(ctx, CopyInput{Src: "src", SrcETag: src, SrcSize: 4, Dst: "dst", Cond: Condition{IfMatch: dst}}); err != nil {
		t.Fatalf("copy onto the version expected: %v", err)
	}
	if _, err := s.Copy(ctx, CopyInput{Src: "src", SrcETag: src, SrcSize: 4, Dst: "new", Cond: Condition{IfNoneMatch: true}}); err != nil {
		t.Fatalf("copy to a free name: %v", err)
	}
}

// versitygw v1.8.0 ignores If-Match and If-None-Match on CopyObject (it
// copies anyway), so this checks that the headers are sent and that S3's
// answers to them map right.
func TestStoreCopyDestinationConditions(t *testing.T) {
	srv, bucket := setup(t)
	var mu sync.Mutex
	var got []string
	proxy := proxyTo(t, srv.Endpoint, func(w http.ResponseWriter, r *http.Request) bool {
		if r.Header.Get("X-Amz-Copy-Source") == "" {
			return false
		}
		mu.Lock()
		got = append(got, fmt.Sprintf("%s|%s|%s", r.Header.Get("X-Amz-Copy-Source-If-Match"), r.Header.Get("If-Match"), r.Header.Get("If-None-Match")))
		mu.Unlock()
		if r.Header.Get("If-Match") == `"stale"` || r.Header.Get("If-None-Match") == "*" {
			s3Error(w, 412, "PreconditionFailed", "pf-1")
			return true
		}
		if r.Header.Get("If-Match") == `"gone"` {
			s3Error(w, 409, "ConditionalRequestConflict", "c-1")
			return true
		}
		return false
	})
	s := newStore(t, proxy, bucket)
	ctx := context.Background()
	src := put(t, s, "src", "data", Condition{})
	dst := put(t, s, "dst", "old", Condition{})

	_, err := s.Copy(ctx, CopyInput{Src: "src", SrcETag: src, Dst: "dst", Cond: Condition{IfNoneMatch: true}})
	if e := wantKind(t, "copy with if-none-match", err, ErrPrecondition); e.RequestID != "pf-1" || e.Status != 412 || e.Key != "dst" {
		t.Errorf("error fields %+v", e)
	}
	_, err = s.Copy(ctx, CopyInput{Src: "src", Dst: "dst", Cond: Condition{IfMatch: `"stale"`}})
	wantKind(t, "copy with stale if-match", err, ErrPrecondition)
	_, err = s.Copy(ctx, CopyInput{Src: "src", Dst: "dst", Cond: Condition{IfMatch: `"gone"`}})
	wantKind(t, "copy racing another write", err, ErrConflict)
	if _, err := s.Copy(ctx, CopyInput{Src: "src", SrcETag: src, Dst: "dst", Cond: Condition{IfMatch: dst}}); err != nil {
		t.Fatal(err)
	}
	want := []string{src + "||*", `|"stale"|`, `|"gone"|`, src + "|" + dst + "|"}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(got, want) {
		t.Errorf("copy headers (source-if-match|if-match|if-none-match):\n got %q\nwant %q", got, want)
	}
}

func TestStoreMultipartUpload(t *testing.T) {
	srv, bucket := setup(t)
	s := newStore(t, srv.Endpoint, bucket, func(c *Config) { c.UnsignedPayload = true })
	raw := srv.Client(t)
	ctx := context.Background()

	src := bytes.Repeat([]byte("0123456789abcdef"), MinPartSize/16*2) // 10 MiB
	srcTag, err := s.Put(ctx, PutInput{Key: "src", Body: bytes.NewReader(src), Size: int64(len(src))})
	if err != nil {
		t.Fatal(err)
	}
	target := put(t, s, "dst", "old", Condition{})

	id, err := s.CreateMultipart(ctx, "dst", Metadata{"mode": "33188"}, "text/plain")
	if err != nil {
		t.Fatal(err)
	}
	part1 := bytes.Repeat([]byte{'x'}, MinPartSize)
	s.obs.up.Store(0)
	e1, err := s.UploadPart(ctx, UploadPartInput{Key: "dst", UploadID: id, Part: 1, Body: bytes.NewReader(part1), Size: int64(len(part1))})
	if err != nil {
		t.Fatal(err)
	}
	if got := s.obs.up.Load(); got != int64(len(part1)) {
		t.Errorf("observer counted %d bytes up, want %d", got, len(part1))
	}
	_, err = s.UploadPartCopy(ctx, UploadPartCopyInput{Key: "dst", UploadID: id, Part: 2, Src: "src", SrcETag: target, Off: 0, Length: 10})
	wantKind(t, "part copy with stale source etag", err, ErrPrecondition)
	e2, err := s.UploadPartCopy(ctx, UploadPartCopyInput{Key: "dst", UploadID: id, Part: 2, Src: "src", SrcETag: srcTag, Off: 100, Length: 1000})
	if err != nil {
		t.Fatal(err)
	}
	parts := []CompletedPart{{Part: 2, ETag: e2}, {Part: 1, ETag: e1}} // out of order on purpose

	_, err = s.CompleteMultipart(ctx, "dst", id, parts, Condition{IfMatch: srcTag})
	wantKind(t, "complete with stale if-match", err, ErrPrecondition)
	_, err = s.CompleteMultipart(ctx, "dst", id, parts, Condition{IfNoneMatch: true})
	wantKind(t, "complete with if-none-match over existing", err, ErrPrecondition)
	etag, err := s.CompleteMultipart(ctx, "dst", id, parts, Condition{IfMatch: target})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(etag, `-2"`) {
		t.Errorf("multipart etag %s", etag)
	}
	got, err := readAll(t, s, "dst", 0, -1, etag)
	if want := string(part1) + string(src[100:1100]); err != nil || got != want {
		t.Fatalf("assembled object: %d bytes, %v; want %d", len(got), err, len(want))
	}
	info, err := s.Head(ctx, "dst")
	if err != nil || info.Metadata["mode"] != "33188" || info.ContentType != "text/plain" {
		t.Errorf("head after multipart: %+v %v", info, err)
	}
	if err := s.AbortMultipart(ctx, "dst", id); err != nil {
		t.Errorf("abort of a completed upload: %v", err)
	}

	id, err = s.CreateMultipart(ctx, "other", nil, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.AbortMultipart(ctx, "other", id); err != nil {
		t.Fatal(err)
	}
	ups, err := raw.ListMultipartUploads(ctx, &s3.ListMultipartUploadsInput{Bucket: &bucket})
	if err != nil || len(ups.Uploads) != 0 {
		t.Errorf("uploads left: %v %v", ups, err)
	}
	_, err = s.UploadPart(ctx, UploadPartInput{Key: "other", UploadID: id, Part: 1, Body: strings.NewReader("x"), Size: 1})
	wantKind(t, "upload part to an aborted upload", err, ErrNotFound)
}

func TestStoreMultipartCopy(t *testing.T) {
	srv, bucket := setup(t)
	s := newStore(t, srv.Endpoint, bucket)
	s.copyThreshold = 1 << 20
	s.copyPartSize = MinPartSize
	raw := srv.Client(t)
	ctx := context.Background()

	data := make([]byte, 2*MinPartSize+12345)
	rand.Read(data)
	srcTag, err := s.Put(ctx, PutInput{Key: "big src", Body: bytes.NewReader(data), Size: int64(len(data)),
		Metadata: Metadata{"mode": "33261"}, ContentType: "application/x-thing"})
	if err != nil {
		t.Fatal(err)
	}
	s.obs.mu.Lock()
	s.obs.done = nil
	s.obs.mu.Unlock()

	etag, err := s.Copy(ctx, CopyInput{Src: "big src", SrcSize: int64(len(data)), Dst: "big+dst", Cond: Condition{IfNoneMatch: true}})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(etag, `-3"`) {
		t.Errorf("etag %s: not a 3-part multipart copy", etag)
	}
	done, _ := s.obs.snapshot()
	var copies int
	for _, d := range done {
		if d.op == "UploadPartCopy" {
			copies++
		}
	}
	if copies != 3 {
		t.Errorf("%d UploadPartCopy requests, want 3", copies)
	}
	if got, _ := rawGet(t, raw, bucket, "big+dst"); got != string(data) {
		t.Fatalf("copied data differs (%d bytes)", len(got))
	}
	info, err := s.Head(ctx, "big+dst")
	if err != nil || info.Metadata["mode"] != "33261" || info.ContentType != "application/x-thing" {
		t.Errorf("source metadata not carried over: %+v %v", info, err)
	}

	if _, err := s.Copy(ctx, CopyInput{Src: "big src", SrcETag: srcTag, SrcSize: int64(len(data)), Dst: "with meta",
		Metadata: Metadata{"uid": "7"}, ContentType: "text/plain"}); err != nil {
		t.Fatal(err)
	}
	info, err = s.Head(ctx, "with meta")
	if err != nil || info.Metadata["uid"] != "7" || info.Metadata["mode"] != "" || info.ContentType != "text/plain" {
		t.Errorf("replaced metadata: %+v %v", info, err)
	}

	_, err = s.Copy(ctx, CopyInput{Src: "big src", SrcETag: etag, SrcSize: int64(len(data)), Dst: "x"})
	wantKind(t, "multipart copy of a changed source", err, ErrPrecondition)
	_, err = s.Copy(ctx, CopyInput{Src: "big src", SrcETag: srcTag, SrcSize: int64(len(data)), Dst: "big+dst", Cond: Condition{IfNoneMatch: true}})
	wantKind(t, "multipart copy onto existing with if-none-match", err, ErrPrecondition)
	ups, err := raw.ListMultipartUploads(ctx, &s3.ListMultipartUploadsInput{Bucket: &bucket})
	if err != nil || len(ups.Uploads) != 0 {
		t.Errorf("failed copies left %d uploads (%v)", len(ups.Uploads), err)
	}
}

// TestStoreMultipartCopyCutShortLeavesItsUpload: a multipart copy whose
// caller gives up (a stop) does not then wait for an abort into an S3 that
// does not answer; it hands the upload to the caller to abort later.
func TestStoreMultipartCopyCutShortLeavesItsUpload(t *testing.T) {
	srv, bucket := setup(t)
	px := srv.StartProxy(t)
	s := newStore(t, px.Endpoint, bucket)
	s.copyThreshold = 1 << 20
	s.copyPartSize = MinPartSize
	raw := srv.Client(t)
	data := make([]byte, 2*MinPartSize+1)
	rand.Read(data)
	srcTag, err := s.Put(context.Background(), PutInput{Key: "src", Body: bytes.NewReader(data), Size: int64(len(data))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var aborts atomic.Int64
	px.SetFaults(func(op string, r *http.Request) harness.Fault {
		switch op {
		case "UploadPartCopy":
			cancel() // the stop comes while the parts are copied
			return harness.Fault{Delay: time.Minute}
		case "AbortMultipartUpload":
			aborts.Add(1)
			return harness.Fault{Delay: time.Minute}
		}
		return harness.Fault{}
	})
	start := time.Now()
	_, err = s.Copy(ctx, CopyInput{Src: "src", SrcETag: srcTag, SrcSize: int64(len(data)), Dst: "dst"})
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("a cut multipart copy returned after %v (%v)", took, err)
	}
	var left *UploadLeft
	if !errors.As(err, &left) || left.Key != "dst" || left.UploadID == "" || !errors.Is(err, ErrUnavailable) {
		t.Fatalf("cut multipart copy: %v, want an unavailable error naming the upload left", err)
	}
	if n := aborts.Load(); n != 0 {
		t.Fatalf("%d aborts sent after the caller gave up", n)
	}
	px.SetFaults(nil)
	if err := s.AbortMultipart(context.Background(), left.Key, left.UploadID); err != nil {
		t.Fatal(err)
	}
	ups, err := raw.ListMultipartUploads(context.Background(), &s3.ListMultipartUploadsInput{Bucket: &bucket})
	if err != nil || len(ups.Uploads) != 0 {
		t.Fatalf("uploads left: %v %v", ups.Uploads, err)
	}
}

func TestStoreAwkwardKeys(t *testing.T) {
	srv, bucket := setup(t)
	s := newStore(t, srv.Endpoint, bucket, func(c *Config) { c.Prefix = "pre fix+/" })
	raw := srv.Client(t)
	ctx := context.Background()
	keys := []string{"with space", "ünïcødé/日本語.txt", "plus+sign", "per%25cent", "q?uestion", "hash#tag", "amp&eq=;", "tilde~'quote'"}
	for _, k := range keys {
		etag := put(t, s, k, "data of "+k, Condition{})
		dst := "copy of " + k
		if _, err := s.Copy(ctx, CopyInput{Src: k, SrcETag: etag, Dst: dst}); err != nil {
			t.Errorf("copy %q: %v", k, err)
			continue
		}
		if got, err := readAll(t, s, dst, 0, -1, ""); err != nil || got != "data of "+k {
			t.Errorf("read back copy of %q: %q %v", k, got, err)
		}
		if got, ok := rawGet(t, raw, bucket, "pre fix+/"+dst); !ok || got != "data of "+k {
			t.Errorf("raw key for copy of %q: %q %v", k, got, ok)
		}
	}
	got := listAll(t, s, ListInput{})
	var want []string
	for _, k := range keys {
		want = append(want, k, "copy of "+k)
	}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("list:\n got %q\nwant %q", got, want)
	}
}

func TestStoreProbeConditionalWrites(t *testing.T) {
	srv, bucket := setup(t)
	s := newStore(t, srv.Endpoint, bucket, func(c *Config) { c.Prefix = "p" })
	raw := srv.Client(t)
	ok, err := s.ProbeConditionalWrites(context.Background())
	if err != nil || !ok {
		t.Fatalf("probe on versitygw: %v %v, want true", ok, err)
	}
	if keys := rawKeys(t, raw, bucket); len(keys) != 0 {
		t.Errorf("probe left %q", keys)
	}

	// Endpoints that ignore the header (every PUT succeeds) or refuse it.
	for _, status := range []int{200, 501, 400} {
		var deletes atomic.Int32
		proxy := proxyTo(t, srv.Endpoint, func(w http.ResponseWriter, r *http.Request) bool {
			if r.Method == http.MethodDelete && strings.Contains(r.URL.Path, "/p/.keelfs-probe-") {
				deletes.Add(1)
			}
			if r.Method != http.MethodPut || r.Header.Get("If-None-Match") != "*" {
				return false
			}
			io.Copy(io.Discard, r.Body)
			if status == 200 {
				w.Header().Set("ETag", `"d41d8cd98f00b204e9800998ecf8427e"`)
				w.WriteHeader(200)
			} else {
				s3Error(w, status, map[int]string{501: "NotImplemented", 400: "InvalidArgument"}[status], "")
			}
			return true
		})
		s2 := newStore(t, proxy, bucket, func(c *Config) { c.Prefix = "p" })
		ok, err = s2.ProbeConditionalWrites(context.Background())
		if err != nil || ok {
			t.Errorf("probe of an endpoint answering %d: %v %v, want false, nil", status, ok, err)
		}
		if deletes.Load() != 1 {
			t.Errorf("endpoint answering %d: %d probe deletes", status, deletes.Load())
		}
	}

	// Not being allowed to write is an error, not "unsupported".
	deny := proxyTo(t, srv.Endpoint, func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodPut {
			s3Error(w, 403, "AccessDenied", "ro-1")
			return true
		}
		return false
	})
	ro := newStore(t, deny, bucket)
	ok, err = ro.ProbeConditionalWrites(context.Background())
	if ok {
		t.Fatal("probe on a read-only bucket reported support")
	}
	wantKind(t, "probe on a read-only bucket", err, ErrAccessDenied)

	// The second PUT gets no answer. A HEAD then finds the object the
	// first made, which a write would take for a hidden 412; the probe
	// must not: only the server's own 412 says it enforces the header.
	var puts atomic.Int32
	cut := proxyTo(t, srv.Endpoint, func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodPut || puts.Add(1) == 1 {
			return false
		}
		dropConn(t, w, true)
		return true
	})
	s3 := newStore(t, cut, bucket, func(c *Config) { c.Prefix = "p"; c.MaxAttempts = 2; c.MaxBackoff = 10 * time.Millisecond })
	s3.log.expected = true
	ok, err = s3.ProbeConditionalWrites(context.Background())
	if ok {
		t.Fatal("a probe whose second PUT got no answer reported support")
	}
	wantKind(t, "probe whose second PUT got no answer", err, ErrUnavailable)
}

// proxyTo starts a reverse proxy to target. intercept may answer a request
// itself (returning true) or adjust it before it is forwarded.
func proxyTo(t *testing.T, target string, intercept func(w http.ResponseWriter, r *http.Request) bool) string {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(u)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if intercept != nil && intercept(w, r) {
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

func s3Error(w http.ResponseWriter, status int, code, requestID string) {
	w.Header().Set("Content-Type", "application/xml")
	if requestID != "" {
		w.Header().Set("x-amz-request-id", requestID)
	}
	w.WriteHeader(status)
	fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>%s</Code><Message>injected</Message><RequestId>%s</RequestId></Error>`, code, requestID)
}

func TestStoreRetriesThrottling(t *testing.T) {
	srv, bucket := setup(t)
	const failures = 3
	var n atomic.Int32
	proxy := proxyTo(t, srv.Endpoint, func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodPut {
			return false
		}
		i := n.Add(1)
		if i > failures {
			return false
		}
		io.Copy(io.Discard, r.Body)
		s3Error(w, 503, "SlowDown", fmt.Sprintf("slow-%d", i))
		return true
	})
	s := newStore(t, proxy, bucket, func(c *Config) { c.MaxBackoff = 20 * time.Millisecond })
	s.log.expected = true

	put(t, s, "k", "data", Condition{IfNoneMatch: true})
	if got, err := readAll(t, s, "k", 0, -1, ""); err != nil || got != "data" {
		t.Fatalf("read back: %q %v", got, err)
	}
	done, retries := s.obs.snapshot()
	if len(retries) != failures {
		t.Fatalf("%d retries reported, want %d: %+v", len(retries), failures, retries)
	}
	for i, r := range retries {
		if r.op != "PutObject" || r.key != "k" || r.attempt != i+1 || r.requestID != fmt.Sprintf("slow-%d", i+1) || !errors.Is(r.err, ErrThrottled) {
			t.Errorf("retry %d: %+v", i, r)
		}
	}
	var statuses []int
	for _, d := range done {
		if d.op == "PutObject" {
			statuses = append(statuses, d.status)
		}
	}
	if want := []int{503, 503, 503, 200}; !slices.Equal(statuses, want) {
		t.Errorf("PutObject attempts seen with statuses %v, want %v", statuses, want)
	}
	if warns := s.log.warnings(); len(warns) != 0 {
		t.Fatalf("%d warnings for retries that worked", len(warns))
	}
	lines := s.log.retryLines()
	if len(lines) != failures {
		t.Fatalf("%d retry lines, want one per retry", len(lines))
	}
	for i, w := range lines {
		a := attrs(w)
		if w.Level != slog.LevelDebug || a["op"] != "PutObject" || a["key"] != "k" || a["request_id"] != fmt.Sprintf("slow-%d", i+1) ||
			a["attempt"] != fmt.Sprint(i+1) || !strings.Contains(a["err"], "SlowDown") {
			t.Errorf("warning %d: %s %v", i, w.Message, a)
		}
		line := w.Message + fmt.Sprint(a)
		for _, secret := range []string{srv.SecretKey, "Signature=", "Authorization", "X-Amz-Credential"} {
			if strings.Contains(line, secret) {
				t.Errorf("log line contains %q: %s", secret, line)
			}
		}
	}
}

func TestStoreRetriesRunOut(t *testing.T) {
	srv, bucket := setup(t)
	var n atomic.Int32
	proxy := proxyTo(t, srv.Endpoint, func(w http.ResponseWriter, r *http.Request) bool {
		switch r.URL.Path {
		case "/" + bucket + "/slow":
			s3Error(w, 503, "SlowDown", "x")
		case "/" + bucket + "/broken":
			s3Error(w, 500, "InternalError", "y")
		case "/" + bucket + "/busy":
			s3Error(w, 429, "TooManyRequests", "z")
		case "/" + bucket + "/reset":
			if n.Add(1) <= 2 {
				dropConn(t, w, false)
			} else {
				return false
			}
		default:
			return false
		}
		return true
	})
	s := newStore(t, proxy, bucket, func(c *Config) { c.MaxBackoff = 10 * time.Millisecond; c.MaxAttempts = 3 })
	s.log.expected = true
	ctx := context.Background()

	_, err := s.Head(ctx, "slow")
	if e := wantKind(t, "head through persistent SlowDown", err, ErrThrottled); e.Status != 503 {
		t.Errorf("status %d", e.Status)
	}
	_, err = s.Head(ctx, "broken")
	wantKind(t, "head through persistent 500", err, ErrUnavailable)
	_, err = s.Head(ctx, "busy")
	wantKind(t, "head through persistent 429", err, ErrThrottled)
	if _, retries := s.obs.snapshot(); len(retries) != 6 {
		t.Errorf("%d retries reported for 3 requests of 3 attempts", len(retries))
	}
	// A connection dropped without an answer is retried like a 5xx.
	put(t, s, "reset", "x", Condition{})
	if got, err := readAll(t, s, "reset", 0, -1, ""); err != nil || got != "x" {
		t.Errorf("after resets: %q %v", got, err)
	}
}

// dropConn drops a client's connection, answering nothing: closed (the
// client reads EOF) or, with reset, with a TCP reset.
func dropConn(t *testing.T, w http.ResponseWriter, reset bool) {
	conn, _, err := w.(http.Hijacker).Hijack()
	if err != nil {
		t.Errorf("hijack: %v", err)
		return
	}
	if tc, ok := conn.(*net.TCPConn); ok && reset {
		tc.SetLinger(0)
	}
	conn.Close()
}

func TestStoreTruncatedBody(t *testing.T) {
	srv, bucket := setup(t)
	for _, chunked := range []bool{false, true} {
		t.Run(fmt.Sprintf("chunked=%v", chunked), func(t *testing.T) {
			proxy := proxyTo(t, srv.Endpoint, func(w http.ResponseWriter, r *http.Request) bool {
				if r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, "/cut") {
					return false
				}
				conn, buf, err := w.(http.Hijacker).Hijack()
				if err != nil {
					t.Error(err)
					return true
				}
				defer conn.Close()
				if chunked {
					fmt.Fprintf(buf, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nETag: \"e\"\r\n\r\n%x\r\n%s\r\n", 50, strings.Repeat("a", 50))
				} else {
					fmt.Fprintf(buf, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\nETag: \"e\"\r\n\r\n%s", strings.Repeat("a", 50))
				}
				buf.Flush()
				return true
			})
			s := newStore(t, proxy, bucket)
			r, err := s.Get(context.Background(), "cut", 0, -1, "")
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			b, err := io.ReadAll(r)
			if !errors.Is(err, ErrUnavailable) {
				t.Fatalf("read %d bytes, err %v; want an error wrapping ErrUnavailable", len(b), err)
			}
			if got := s.obs.down.Load(); got != 50 {
				t.Errorf("observer counted %d bytes down, want 50", got)
			}
		})
	}
}

func TestStoreUnsignedPayload(t *testing.T) {
	srv, bucket := setup(t)
	for _, unsigned := range []bool{false, true} {
		t.Run(fmt.Sprintf("unsigned=%v", unsigned), func(t *testing.T) {
			var mu sync.Mutex
			seen := map[string]string{} // method+query op -> x-amz-content-sha256
			proxy := proxyTo(t, srv.Endpoint, func(w http.ResponseWriter, r *http.Request) bool {
				if r.Method == http.MethodPut {
					op := "PutObject"
					if r.URL.Query().Has("partNumber") {
						op = "UploadPart"
					}
					mu.Lock()
					seen[op] = r.Header.Get("X-Amz-Content-Sha256")
					mu.Unlock()
				}
				return false
			})
			s := newStore(t, proxy, bucket, func(c *Config) { c.UnsignedPayload = unsigned })
			ctx := context.Background()
			put(t, s, "u", "payload", Condition{})
			id, err := s.CreateMultipart(ctx, "m", nil, "")
			if err != nil {
				t.Fatal(err)
			}
			e1, err := s.UploadPart(ctx, UploadPartInput{Key: "m", UploadID: id, Part: 1, Body: strings.NewReader("part"), Size: 4})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.CompleteMultipart(ctx, "m", id, []CompletedPart{{1, e1}}, Condition{}); err != nil {
				t.Fatal(err)
			}
			if got, err := readAll(t, s, "m", 0, -1, ""); err != nil || got != "part" {
				t.Errorf("read back: %q %v", got, err)
			}
			for _, op := range []string{"PutObject", "UploadPart"} {
				h := seen[op]
				if unsigned != (h == "UNSIGNED-PAYLOAD") || h == "" {
					t.Errorf("%s sent x-amz-content-sha256 %q", op, h)
				}
			}
		})
	}
}

func TestStoreBucketAndCredentialErrors(t *testing.T) {
	srv, bucket := setup(t)
	ctx := context.Background()

	s := newStore(t, srv.Endpoint, "keelfs-no-such-bucket")
	e := wantKind(t, "check access to a missing bucket", s.CheckAccess(ctx), ErrNoSuchBucket)
	if e.Code != "NoSuchBucket" || e.Status != 404 {
		t.Errorf("error fields %+v", e)
	}
	if err := newStore(t, srv.Endpoint, bucket, func(c *Config) { c.Prefix = "p" }).CheckAccess(ctx); err != nil {
		t.Fatalf("check access with good credentials: %v", err)
	}

	t.Setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
	err := newStore(t, srv.Endpoint, bucket).CheckAccess(ctx)
	wantKind(t, "check access with a wrong secret", err, ErrInvalidCredentials)
	if strings.Contains(fmt.Sprint(err), "wrong-secret") {
		t.Errorf("error shows the secret: %v", err)
	}
	t.Setenv("AWS_ACCESS_KEY_ID", "unknown-key")
	wantKind(t, "check access with an unknown key", newStore(t, srv.Endpoint, bucket).CheckAccess(ctx), ErrInvalidCredentials)

	if errors.Is(err, ErrNoCredentials) {
		t.Errorf("an unknown key is reported as no credentials: %v", err)
	}
	os.Unsetenv("AWS_ACCESS_KEY_ID")
	os.Unsetenv("AWS_SECRET_ACCESS_KEY")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	err = newStore(t, srv.Endpoint, bucket).CheckAccess(ctx)
	e = wantKind(t, "check access without credentials", err, ErrInvalidCredentials)
	if e.Status != 0 {
		t.Errorf("credential chain failure reported HTTP %d", e.Status)
	}
	if !errors.Is(err, ErrNoCredentials) {
		t.Errorf("check access without credentials: %v does not say ErrNoCredentials", err)
	}
	// Instance metadata that never answers: the deadline ends the search,
	// and the error is still about credentials, not an unreachable S3.
	t.Setenv("AWS_EC2_METADATA_DISABLED", "false")
	t.Setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://"+silentListener(t))
	dctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	wantKind(t, "check access while instance metadata is silent", newStore(t, srv.Endpoint, bucket).CheckAccess(dctx), ErrInvalidCredentials)

	err = newStore(t, srv.Endpoint, bucket, func(c *Config) { c.NoSignRequest = true }).CheckAccess(ctx)
	wantKind(t, "anonymous check access to a private bucket", err, ErrAccessDenied)
}

func TestStoreCheckAccessUnreachable(t *testing.T) {
	useServerCreds(t, &harness.Server{AccessKey: harness.AccessKey, SecretKey: harness.SecretKey, Region: harness.Region})
	port := harness.FreePort(t) // closed again: connections are refused
	s := newStore(t, fmt.Sprintf("http://127.0.0.1:%d", port), "b")
	s.log.expected = true
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	defer cancel()
	start := time.Now()
	err := s.CheckAccess(ctx)
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("CheckAccess took %v", d)
	}
	wantKind(t, "check access on a closed port", err, ErrUnavailable)
	if cause := err.(*Error).Cause; !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(cause.Error(), "refused") {
		t.Errorf("cause %v: want the deadline and the refused connection", cause)
	}
	if r := NetworkReason(err); r != "connection refused" {
		t.Errorf("NetworkReason = %q, want connection refused", r)
	}
	if h := RequestHost(err); h != fmt.Sprintf("http://127.0.0.1:%d", port) {
		t.Errorf("RequestHost = %q", h)
	}
	if _, retries := s.obs.snapshot(); len(retries) == 0 || len(s.log.retryLines()) != len(retries) {
		t.Errorf("%d retries, %d retry lines: want one line per retry", len(retries), len(s.log.retryLines()))
	}
}

// silentListener accepts connections on a loopback port and never answers
// on them; it is closed at cleanup.
func silentListener(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c) // held open, never answered
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	return l.Addr().String()
}

func TestStoreCheckAccessHangingServer(t *testing.T) {
	useServerCreds(t, &harness.Server{AccessKey: harness.AccessKey, SecretKey: harness.SecretKey, Region: harness.Region})
	s := newStore(t, "http://"+silentListener(t), "b")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	start := time.Now()
	err := s.CheckAccess(ctx)
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("CheckAccess took %v with a 2s deadline", d)
	}
	wantKind(t, "check access on a silent server", err, ErrUnavailable)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err %v does not wrap context.DeadlineExceeded", err)
	}
}

func TestStoreContextCanceled(t *testing.T) {
	srv, bucket := setup(t)
	s := newStore(t, srv.Endpoint, bucket)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := s.Head(ctx, "k")
	wantKind(t, "head with a cancelled context", err, ErrUnavailable)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("%v does not wrap context.Canceled", err)
	}
}

// TestStoreCABundle proves the CA bundle reaches the SDK's own HTTP client:
// an https endpoint signed by a private CA works only with the bundle.
func TestStoreCABundle(t *testing.T) {
	srv, bucket := setup(t)
	u, _ := url.Parse(srv.Endpoint)
	tlsProxy := httptest.NewTLSServer(httputil.NewSingleHostReverseProxy(u))
	t.Cleanup(tlsProxy.Close)
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: tlsProxy.Certificate().Raw})
	if err := os.WriteFile(caFile, caPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	const systemBundle = "/etc/ssl/certs/ca-certificates.crt"
	ctx := context.Background()

	t.Run("AWS_CA_BUNDLE on plain http", func(t *testing.T) {
		t.Setenv("AWS_CA_BUNDLE", systemBundle)
		s := newStore(t, srv.Endpoint, bucket)
		put(t, s, "k", "v", Condition{})
		if got, err := readAll(t, s, "k", 0, -1, ""); err != nil || got != "v" {
			t.Fatalf("read back: %q %v", got, err)
		}
	})
	t.Run("AWS_CA_BUNDLE with private CA", func(t *testing.T) {
		t.Setenv("AWS_CA_BUNDLE", caFile)
		if err := newStore(t, tlsProxy.URL, bucket).CheckAccess(ctx); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("Config.CABundle with private CA", func(t *testing.T) {
		t.Setenv("AWS_CA_BUNDLE", systemBundle)
		if err := newStore(t, tlsProxy.URL, bucket, func(c *Config) { c.CABundle = caFile }).CheckAccess(ctx); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("without the private CA", func(t *testing.T) {
		t.Setenv("AWS_CA_BUNDLE", systemBundle)
		s := newStore(t, tlsProxy.URL, bucket, func(c *Config) { c.MaxAttempts = 1 })
		wantKind(t, "https to an unknown CA", s.CheckAccess(ctx), ErrUnavailable)
	})
	t.Run("unreadable AWS_CA_BUNDLE", func(t *testing.T) {
		t.Setenv("AWS_CA_BUNDLE", filepath.Join(t.TempDir(), "missing.pem"))
		if _, err := New(ctx, Config{Bucket: bucket, Endpoint: srv.Endpoint}); err == nil {
			t.Fatal("New ignored an unreadable AWS_CA_BUNDLE")
		}
	})
}

func TestCheckEndpoint(t *testing.T) {
	for in, want := range map[string]string{
		"":                       "",
		"http://127.0.0.1:9000":  "",
		"https://s3.example.com": "",
		"HTTP://h:1/base":        "",
		"127.0.0.1:9000":         "no scheme: write http://127.0.0.1:9000",
		"localhost:9000":         "no scheme: write http://localhost:9000",
		"minio":                  "no scheme",
		"ftp://h":                "must be http or https",
		"http://":                "no host",
		"http://user:pw@h:1":     "do not go in the URL",
		"user:secret@h:1":        "no scheme",
	} {
		err := CheckEndpoint(in)
		switch {
		case want == "" && err != nil:
			t.Errorf("CheckEndpoint(%q) = %v, want nil", in, err)
		case want != "" && (err == nil || !strings.Contains(err.Error(), want)):
			t.Errorf("CheckEndpoint(%q) = %v, want %q", in, err, want)
		case err != nil && strings.Contains(err.Error(), "secret") || err != nil && strings.Contains(err.Error(), ":pw"):
			t.Errorf("CheckEndpoint(%q) shows the secret: %v", in, err)
		}
	}
	if _, err := New(context.Background(), Config{Bucket: "b", Endpoint: "127.0.0.1:9000"}); !errors.Is(err, ErrInvalidRequest) {
		t.Errorf("New with an endpoint without scheme: %v, want ErrInvalidRequest", err)
	}
}

func TestNormalizePrefix(t *testing.T) {
	for in, want := range map[string]string{"": "", "/": "", "a": "a/", "/a/b": "a/b/", "a/": "a/", "//a": "a/"} {
		if got := normalizePrefix(in); got != want {
			t.Errorf("normalizePrefix(%q) = %q, want %q", in, got, want)
		}
	}
}

// A transport that reports a clean EOF before Content-Length is reached
// (net/http itself says io.ErrUnexpectedEOF) must not produce a short read.
func TestBodyReaderEarlyEOF(t *testing.T) {
	obs := &recordingObserver{}
	r := &bodyReader{s: &Store{obs: obs}, key: "k", body: strings.NewReader("abc"), closer: io.NopCloser(nil), want: 5}
	b, err := io.ReadAll(r)
	if string(b) != "abc" || !errors.Is(err, ErrUnavailable) || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("read %q, %v", b, err)
	}
	if _, err2 := r.Read(make([]byte, 1)); !errors.Is(err2, ErrUnavailable) {
		t.Errorf("read after failure: %v", err2)
	}
	r = &bodyReader{s: &Store{obs: obs}, key: "k", body: strings.NewReader("abcde"), closer: io.NopCloser(nil), want: 5}
	if b, err := io.ReadAll(r); string(b) != "abcde" || err != nil {
		t.Errorf("complete body: %q %v", b, err)
	}
	if got := obs.down.Load(); got != 8 {
		t.Errorf("counted %d bytes, want 8", got)
	}
}

func TestStoreWriteOptions(t *testing.T) {
	srv, bucket := setup(t)
	var mu sync.Mutex
	var seen []string
	proxy := proxyTo(t, srv.Endpoint, func(w http.ResponseWriter, r *http.Request) bool {
		op := r.Method
		switch {
		case r.Header.Get("X-Amz-Copy-Source") != "":
			op = "COPY"
		case r.URL.Query().Has("uploads"):
			op = "CREATE"
		}
		mu.Lock()
		seen = append(seen, fmt.Sprintf("%s sse=%s kms=%s class=%s payer=%s", op, r.Header.Get("X-Amz-Server-Side-Encryption"),
			r.Header.Get("X-Amz-Server-Side-Encryption-Aws-Kms-Key-Id"), r.Header.Get("X-Amz-Storage-Class"), r.Header.Get("X-Amz-Request-Payer")))
		mu.Unlock()
		return false
	})
	s := newStore(t, proxy, bucket, func(c *Config) {
		c.SSE, c.SSEKMSKeyID, c.StorageClass, c.RequesterPays = "aws:kms", "key-1", "STANDARD_IA", true
	})
	ctx := context.Background()
	put(t, s, "a", "x", Condition{})
	if _, err := s.Copy(ctx, CopyInput{Src: "a", Dst: "b"}); err != nil {
		t.Fatal(err)
	}
	id, err := s.CreateMultipart(ctx, "c", nil, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.AbortMultipart(ctx, "c", id); err != nil {
		t.Fatal(err)
	}
	if _, err := readAll(t, s, "a", 0, -1, ""); err != nil {
		t.Fatal(err)
	}
	write := "sse=aws:kms kms=key-1 class=STANDARD_IA payer=requester"
	want := []string{"PUT " + write, "COPY " + write, "CREATE " + write, "DELETE sse= kms= class= payer=requester", "GET sse= kms= class= payer=requester"}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(seen, want) {
		t.Errorf("headers:\n got %q\nwant %q", seen, want)
	}
}

func TestNewRegionAndProfile(t *testing.T) {
	srv, bucket := setup(t)
	ctx := context.Background()
	region := func(cfg Config) string {
		t.Helper()
		cfg.Bucket, cfg.Endpoint, cfg.ForcePathStyle = bucket, srv.Endpoint, true
		s, err := New(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		return s.client.Options().Region
	}
	t.Setenv("AWS_REGION", "")
	t.Setenv("AWS_DEFAULT_REGION", "")
	if got := region(Config{}); got != "us-east-1" {
		t.Errorf("default region %q", got)
	}
	t.Setenv("AWS_REGION", "eu-west-3")
	if got := region(Config{}); got != "eu-west-3" {
		t.Errorf("region from the environment: %q", got)
	}
	if got := region(Config{Region: "ap-south-1"}); got != "ap-south-1" {
		t.Errorf("region from Config: %q", got)
	}

	// A named profile supplies both region and credentials.
	dir := t.TempDir()
	conf := filepath.Join(dir, "config")
	creds := filepath.Join(dir, "credentials")
	os.WriteFile(conf, []byte("[profile keelfs]\nregion = us-east-1\n"), 0o600)
	os.WriteFile(creds, []byte(fmt.Sprintf("[keelfs]\naws_access_key_id = %s\naws_secret_access_key = %s\n", srv.AccessKey, srv.SecretKey)), 0o600)
	t.Setenv("AWS_CONFIG_FILE", conf)
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", creds)
	t.Setenv("AWS_REGION", "")
	os.Unsetenv("AWS_ACCESS_KEY_ID")
	os.Unsetenv("AWS_SECRET_ACCESS_KEY")
	if err := newStore(t, srv.Endpoint, bucket, func(c *Config) { c.Profile = "keelfs" }).CheckAccess(ctx); err != nil {
		t.Errorf("check access with a profile: %v", err)
	}
	_, err := New(ctx, Config{Bucket: bucket, Profile: "no-such-profile"})
	wantKind(t, "New with a missing profile", err, ErrInvalidCredentials)
}

// TestStoreIdleTimeout: an upload into a peer that accepts the connection
// and then never answers fails once the connection has been idle for
// IdleTimeout, instead of waiting for ever with its upload job.
func TestStoreIdleTimeout(t *testing.T) {
	endpoint := "http://" + silentListener(t)
	s := newStore(t, endpoint, "bucket", func(c *Config) {
		c.IdleTimeout = 300 * time.Millisecond
		c.MaxAttempts = 1
		c.NoSignRequest = true
	})
	s.log.expected = true
	done := make(chan error, 1)
	go func() {
		_, err := s.Put(context.Background(), PutInput{Key: "k", Body: strings.NewReader("data"), Size: 4})
		done <- err
	}()
	select {
	case err := <-done:
		wantKind(t, "put into a black hole", err, ErrUnavailable)
	case <-time.After(10 * time.Second):
		t.Fatal("a request into a black hole did not end with the idle timeout")
	}
}

// A connection refused is no answer, and none is coming: Config.DialFailed
// hears of it at once, and a Reach told so fails the request at once,
// rather than after the SDK's retries and its own Wait (a cat of a cached
// file on a mount whose server had stopped took 5.4 s, every Wait long).
func TestDialRefusedMakesReachUnreachableAtOnce(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", "k")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "s")
	t.Setenv("AWS_REGION", "us-east-1")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now: connections are refused
	var reach atomic.Pointer[Reach]
	var told atomic.Int32
	s := newStore(t, "http://"+addr, "b", func(c *Config) {
		c.MaxAttempts, c.MaxBackoff = 5, 4*time.Second
		c.DialFailed = func(err error) {
			told.Add(1)
			if r := reach.Load(); r != nil {
				r.DialFailed(err)
			}
		}
	})
	s.log.expected = true // the SDK's retries and Reach's WARN
	r := NewReach(s.Store, ReachOptions{Wait: time.Minute, Logger: slog.New(s.log)})
	defer r.Close()
	reach.Store(r)
	done := make(chan error, 1)
	go func() {
		_, err := r.Head(context.Background(), "x")
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, ErrUnavailable) {
			t.Fatalf("HEAD against a refused port: %v, want ErrUnavailable", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("HEAD against a refused port did not end within 30 s (Wait is a minute)")
	}
	if told.Load() == 0 || r.Reachable() {
		t.Fatalf("DialFailed told %d times, reachable %v; want told and unreachable", told.Load(), r.Reachable())
	}
}

// A conditional PUT whose answer never arrives (the connection reset: a
// server that answers 412 before it reads the body and then closes, or a
// lost answer) is news about the object, not about the endpoint, when the
// object shows the condition does not hold: the caller must see
// ErrPrecondition, as it would have from the 412, and not an outage. When
// the condition does hold, the reset stays what it is.
func TestStoreConditionalPutWithoutAnAnswer(t *testing.T) {
	srv, bucket := setup(t)
	direct := newStore(t, srv.Endpoint, bucket)
	v1 := put(t, direct, "f", "one", Condition{})

	var mu sync.Mutex
	land := map[string]bool{} // keys whose next conditional PUT lands before its answer is lost
	proxy := proxyTo(t, srv.Endpoint, func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodPut || (r.Header.Get("If-Match") == "" && r.Header.Get("If-None-Match") == "") {
			return false
		}
		mu.Lock()
		landIt := land[r.URL.Path]
		delete(land, r.URL.Path)
		mu.Unlock()
		if landIt {
			forward(t, srv.Endpoint, r)
		}
		dropConn(t, w, true)
		return true
	})
	s := newStore(t, proxy, bucket, func(c *Config) { c.MaxBackoff = 10 * time.Millisecond; c.MaxAttempts = 2 })
	s.log.expected = true
	ctx := context.Background()
	try := func(key, data string, cond Condition) error {
		_, err := s.Put(ctx, PutInput{Key: key, Body: strings.NewReader(data), Size: int64(len(data)), Cond: cond})
		return err
	}

	err := try("f", "two", Condition{IfNoneMatch: true})
	wantKind(t, "if-none-match over an existing key, reset", err, ErrPrecondition)
	if !strings.Contains(err.Error(), "a HEAD shows the condition does not hold") {
		t.Errorf("the error does not say how it was decided: %v", err)
	}
	wantKind(t, "if-match on a stale etag, reset", try("f", "two", Condition{IfMatch: `"stale"`}), ErrPrecondition)
	wantKind(t, "if-match on a missing key, reset", try("gone", "two", Condition{IfMatch: v1}), ErrPrecondition)
	// The condition holds: nothing says the object changed.
	wantKind(t, "if-match on the current etag, reset", try("f", "two", Condition{IfMatch: v1}), ErrUnavailable)
	wantKind(t, "if-none-match on a missing key, reset", try("new", "two", Condition{IfNoneMatch: true}), ErrUnavailable)
	if got, _ := rawGet(t, srv.Client(t), bucket, "f"); got != "one" {
		t.Fatalf("f = %q after PUTs that never reached the server", got)
	}
	// The first attempt lands and its answer is lost; the retry meets the
	// object it made: the same news as the 412 a retry gets, for the
	// caller to tell its own upload by its headers.
	mu.Lock()
	land["/"+bucket+"/landed"] = true
	mu.Unlock()
	wantKind(t, "if-none-match whose first attempt landed", try("landed", "mine", Condition{IfNoneMatch: true}), ErrPrecondition)
	if got, _ := rawGet(t, srv.Client(t), bucket, "landed"); got != "mine" {
		t.Fatalf("landed = %q", got)
	}
}

// A conditional CompleteMultipartUpload without an answer is decided by
// a HEAD as a PUT is: one that landed and lost its answer is the news a
// 412 brings (the cache then tells its own upload by the headers), not an
// outage after which the whole upload is sent again.
func TestStoreConditionalCompleteWithoutAnAnswer(t *testing.T) {
	srv, bucket := setup(t)
	direct := newStore(t, srv.Endpoint, bucket)
	v1 := put(t, direct, "f", "one", Condition{})

	var mu sync.Mutex
	land := false // the next conditional completion lands before its answer is lost
	proxy := proxyTo(t, srv.Endpoint, func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodPost || r.URL.Query().Get("uploadId") == "" ||
			(r.Header.Get("If-Match") == "" && r.Header.Get("If-None-Match") == "") {
			return false
		}
		mu.Lock()
		landIt := land
		land = false
		mu.Unlock()
		if landIt {
			forward(t, srv.Endpoint, r)
		}
		dropConn(t, w, true)
		return true
	})
	s := newStore(t, proxy, bucket, func(c *Config) { c.MaxBackoff = 10 * time.Millisecond; c.MaxAttempts = 2 })
	s.log.expected = true
	ctx := context.Background()
	complete := func(key string, cond Condition) error {
		t.Helper()
		id, err := s.CreateMultipart(ctx, key, nil, "")
		if err != nil {
			t.Fatal(err)
		}
		e, err := s.UploadPart(ctx, UploadPartInput{Key: key, UploadID: id, Part: 1, Body: strings.NewReader("mine"), Size: 4})
		if err != nil {
			t.Fatal(err)
		}
		_, err = s.CompleteMultipart(ctx, key, id, []CompletedPart{{Part: 1, ETag: e}}, cond)
		return err
	}
	wantKind(t, "if-match on a stale etag, reset", complete("f", Condition{IfMatch: `"stale"`}), ErrPrecondition)
	wantKind(t, "if-none-match on a missing key, reset", complete("new", Condition{IfNoneMatch: true}), ErrUnavailable)
	wantKind(t, "if-match on the current etag, reset", complete("f", Condition{IfMatch: v1}), ErrUnavailable)
	mu.Lock()
	land = true
	mu.Unlock()
	err := complete("landed", Condition{IfNoneMatch: true})
	wantKind(t, "if-none-match whose completion landed", err, ErrPrecondition)
	if err != nil && !strings.Contains(err.Error(), "a HEAD shows the condition does not hold") {
		t.Errorf("the error does not say how it was decided: %v", err)
	}
	if got, _ := rawGet(t, srv.Client(t), bucket, "landed"); got != "mine" {
		t.Fatalf("landed = %q", got)
	}
}

// forward sends r on to the server at endpoint as it came, and expects
// 200: a request that lands before the proxy drops its connection.
func forward(t *testing.T, endpoint string, r *http.Request) {
	t.Helper()
	out, err := http.NewRequest(r.Method, endpoint+r.URL.RequestURI(), r.Body)
	if err != nil {
		t.Error(err)
		return
	}
	out.Header, out.Host, out.ContentLength = r.Header.Clone(), r.Host, r.ContentLength
	resp, err := http.DefaultClient.Do(out)
	if err != nil {
		t.Errorf("forward %s %s: %v", r.Method, r.URL, err)
		return
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("forwarded %s %s: %s", r.Method, r.URL, resp.Status)
	}
}

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

// Only a connection the server cut sends unanswered to a HEAD: one that
// went silent would send the HEAD into the same black hole.
func TestConnectionCut(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{&net.OpError{Op: "write", Err: os.NewSyscallError("write", syscall.ECONNRESET)}, true},
		{&net.OpError{Op: "write", Err: os.NewSyscallError("write", syscall.EPIPE)}, true},
		{fmt.Errorf("read: %w", net.ErrClosed), true},
		{fmt.Errorf("http: server closed: %w", io.EOF), true},
		{&net.OpError{Op: "read", Err: timeoutErr{}}, false},
		{context.DeadlineExceeded, false},
		{errors.New("something else"), false},
	} {
		if got := connectionCut(c.err); got != c.want {
			t.Errorf("connectionCut(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
