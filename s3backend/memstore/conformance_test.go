package memstore_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keelfs/keelfs/s3backend"
	"github.com/keelfs/keelfs/s3backend/memstore"
	"github.com/keelfs/keelfs/test/harness"
)

var sentinels = []error{
	s3backend.ErrNotFound, s3backend.ErrNoSuchBucket, s3backend.ErrAccessDenied, s3backend.ErrInvalidCredentials,
	s3backend.ErrPrecondition, s3backend.ErrConflict, s3backend.ErrThrottled, s3backend.ErrUnavailable,
	s3backend.ErrNotImplemented, s3backend.ErrInvalidRange, s3backend.ErrInvalidRequest,
}

func outcome(v any, err error) string {
	if err == nil {
		return fmt.Sprint(v)
	}
	for _, k := range sentinels {
		if errors.Is(err, k) {
			return "error: " + k.Error()
		}
	}
	return "unmapped error: " + err.Error()
}

// scenario runs the same requests on any ObjectStore and writes down what
// a caller can observe: ETags, bytes, listings and error kinds.
func scenario(t *testing.T, s s3backend.ObjectStore) []string {
	var log []string
	note := func(step string) func(any, error) {
		return func(v any, err error) { log = append(log, step+" -> "+outcome(v, err)) }
	}
	putc := func(key, data string, cond s3backend.Condition) (string, error) {
		return s.Put(ctx, s3backend.PutInput{Key: key, Body: strings.NewReader(data), Size: int64(len(data)), Cond: cond})
	}

	e1, err := putc("f", "one", s3backend.Condition{IfNoneMatch: true})
	note("put f if-none-match")(e1, err)
	note("put f if-none-match again")(first(putc("f", "x", s3backend.Condition{IfNoneMatch: true})))
	e2, err := putc("f", "two!", s3backend.Condition{IfMatch: e1})
	note("put f if-match")(e2, err)
	note("put f if-match stale")(first(putc("f", "x", s3backend.Condition{IfMatch: e1})))
	note("put missing if-match")(first(putc("missing", "x", s3backend.Condition{IfMatch: e1})))
	for _, r := range [][2]int64{{0, -1}, {1, 2}, {2, 100}, {3, 1}, {4, 1}, {9, -1}} {
		note(fmt.Sprintf("get f %d+%d", r[0], r[1]))(get(s, "f", r[0], r[1], e2))
	}
	note("get f stale etag")(get(s, "f", 0, -1, e1))
	note("get missing")(get(s, "missing", 0, -1, ""))
	info, err := s.Head(ctx, "f")
	note("head f")(fmt.Sprint(info.Size, info.ETag), err)
	note("head missing")(first(s.Head(ctx, "missing")))

	note("copy stale source")(first(s.Copy(ctx, s3backend.CopyInput{Src: "f", SrcETag: e1, Dst: "g"})))
	note("copy missing source")(first(s.Copy(ctx, s3backend.CopyInput{Src: "missing", Dst: "g"})))
	g, err := s.Copy(ctx, s3backend.CopyInput{Src: "f", SrcETag: e2, Dst: "g", Metadata: s3backend.Metadata{"mode": "33188"}})
	note("copy f g")(g, err)
	info, err = s.Head(ctx, "g")
	note("head g")(fmt.Sprint(info.Size, info.ETag, info.Metadata), err)
	note("delete g stale")(nil, s.Delete(ctx, "g", s3backend.Condition{IfMatch: e1}))
	note("delete g")(nil, s.Delete(ctx, "g", s3backend.Condition{IfMatch: g}))
	note("delete g again")(nil, s.Delete(ctx, "g", s3backend.Condition{}))
	note("get g")(get(s, "g", 0, -1, ""))

	em, err := putc("empty", "", s3backend.Condition{})
	note("put empty")(em, err)
	note("get empty")(get(s, "empty", 0, -1, ""))
	note("get empty 0+10")(get(s, "empty", 0, 10, ""))

	big := bytes.Repeat([]byte("0123456789"), s3backend.MinPartSize/10+100)
	bt, err := s.Put(ctx, s3backend.PutInput{Key: "big", Body: bytes.NewReader(big), Size: int64(len(big))})
	note("put big")(bt, err)
	id, err := s.CreateMultipart(ctx, "m", s3backend.Metadata{"uid": "5"}, "text/plain")
	note("create m")("", err)
	p1data := bytes.Repeat([]byte{'x'}, s3backend.MinPartSize)
	p1, err := s.UploadPart(ctx, s3backend.UploadPartInput{Key: "m", UploadID: id, Part: 1, Body: bytes.NewReader(p1data), Size: int64(len(p1data))})
	note("part 1")(p1, err)
	p2, err := s.UploadPartCopy(ctx, s3backend.UploadPartCopyInput{Key: "m", UploadID: id, Part: 2, Src: "big", SrcETag: bt, Off: 7, Length: s3backend.MinPartSize})
	note("part 2 copy")(p2, err)
	note("part 3 copy stale")(first(s.UploadPartCopy(ctx, s3backend.UploadPartCopyInput{Key: "m", UploadID: id, Part: 3, Src: "f", SrcETag: e1, Off: 0, Length: 2})))
	note("part 3 copy past end")(first(s.UploadPartCopy(ctx, s3backend.UploadPartCopyInput{Key: "m", UploadID: id, Part: 3, Src: "f", Off: 2, Length: 5})))
	p3, err := s.UploadPartCopy(ctx, s3backend.UploadPartCopyInput{Key: "m", UploadID: id, Part: 3, Src: "f", SrcETag: e2, Off: 1, Length: 2})
	note("part 3 copy")(p3, err)
	parts := []s3backend.CompletedPart{{Part: 3, ETag: p3}, {Part: 1, ETag: p1}, {Part: 2, ETag: p2}}
	note("complete wrong part etag")(first(s.CompleteMultipart(ctx, "m", id, []s3backend.CompletedPart{{Part: 1, ETag: p2}}, s3backend.Condition{})))
	note("complete small middle part")(first(s.CompleteMultipart(ctx, "m", id, []s3backend.CompletedPart{{Part: 1, ETag: p1}, {Part: 3, ETag: p3}, {Part: 4, ETag: p3}}, s3backend.Condition{})))
	mt, err := s.CompleteMultipart(ctx, "m", id, parts, s3backend.Condition{IfNoneMatch: true})
	note("complete m")(mt, err)
	m, err := get(s, "m", s3backend.MinPartSize-2, 6, "")
	note("get m around part 1")(m, err)
	m, err = get(s, "m", 2*s3backend.MinPartSize-2, -1, mt)
	note("get m tail")(m, err)
	info, err = s.Head(ctx, "m")
	note("head m")(fmt.Sprint(info.Size, info.ETag, info.Metadata, info.ContentType), err)
	note("abort completed")(nil, s.AbortMultipart(ctx, "m", id))

	for _, k := range []string{"d/a", "d/b/c", "d/b/d", "d.txt", "d/", "e"} {
		data := k
		if strings.HasSuffix(k, "/") {
			data = "" // versitygw refuses data in a directory marker
		}
		if _, err := putc(k, data, s3backend.Condition{}); err != nil {
			t.Fatalf("put %s: %v", k, err)
		}
	}
	for _, in := range []s3backend.ListInput{{Delimiter: "/"}, {Prefix: "d/", Delimiter: "/"}, {Prefix: "d"}, {Delimiter: "/", MaxKeys: 2},
		{Delimiter: "/", StartAfter: "d"}, {Prefix: "d/", Delimiter: "/", StartAfter: "d/a", MaxKeys: 2}} {
		var entries []string
		err := s.List(ctx, in, func(e s3backend.ListEntry) error {
			entries = append(entries, fmt.Sprint(e.Key, " ", e.IsPrefix, " ", e.Size, " ", e.ETag))
			return nil
		})
		note(fmt.Sprintf("list %+v", in))(entries, err)
	}
	return log
}

func first[T any](v T, err error) (T, error) { return v, err }

// TestConformsToVersitygw runs one scenario on memstore and on the real
// store against versitygw: unit tests of the cache are only worth as much
// as memstore's likeness to S3.
func TestConformsToVersitygw(t *testing.T) {
	srv := harness.StartServer(t)
	for _, kv := range srv.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	none := filepath.Join(t.TempDir(), "none")
	t.Setenv("AWS_CONFIG_FILE", none)
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", none)
	real, err := s3backend.New(ctx, s3backend.Config{Bucket: srv.NewBucket(t), Endpoint: srv.Endpoint, ForcePathStyle: true,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	want := scenario(t, real)
	got := scenario(t, memstore.New())
	if len(got) != len(want) {
		t.Fatalf("transcripts differ in length: %d vs %d", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("memstore: %s\nversitygw: %s", trim(got[i]), trim(want[i]))
		}
	}
}

func trim(s string) string {
	if len(s) > 300 {
		return s[:300] + "..."
	}
	return s
}
