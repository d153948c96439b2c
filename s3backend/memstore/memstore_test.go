package memstore_test

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keelfs/keelfs/s3backend"
	"github.com/keelfs/keelfs/s3backend/memstore"
)

var ctx = context.Background()

func put(t *testing.T, s s3backend.ObjectStore, key, data string, cond s3backend.Condition) string {
	t.Helper()
	etag, err := s.Put(ctx, s3backend.PutInput{Key: key, Body: strings.NewReader(data), Size: int64(len(data)), Cond: cond})
	if err != nil {
		t.Fatalf("put %q: %v", key, err)
	}
	return etag
}

func get(s s3backend.ObjectStore, key string, off, length int64, etag string) (string, error) {
	r, err := s.Get(ctx, key, off, length, etag)
	if err != nil {
		return "", err
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	return string(b), err
}

func wantKind(t *testing.T, what string, err error, kind error, status int) {
	t.Helper()
	var e *s3backend.Error
	if !errors.Is(err, kind) || !errors.As(err, &e) {
		t.Fatalf("%s: got %v, want an *s3backend.Error wrapping %q", what, err, kind)
	}
	if e.Status != status {
		t.Errorf("%s: status %d, want %d", what, e.Status, status)
	}
}

func list(t *testing.T, s s3backend.ObjectStore, in s3backend.ListInput) []string {
	t.Helper()
	var got []string
	err := s.List(ctx, in, func(e s3backend.ListEntry) error {
		got = append(got, e.Key)
		return nil
	})
	if err != nil {
		t.Fatalf("list %+v: %v", in, err)
	}
	return got
}

func md5hex(b []byte) string {
	s := md5.Sum(b)
	return hex.EncodeToString(s[:])
}

func TestPutHeadGet(t *testing.T) {
	s := memstore.New()
	now := time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.FixedZone("X", 3600))
	s.SetClock(func() time.Time { return now })

	etag, err := s.Put(ctx, s3backend.PutInput{Key: "f", Body: strings.NewReader("hello"), Size: 5,
		Metadata: s3backend.Metadata{"Mode": "33188"}, ContentType: "text/plain"})
	if err != nil {
		t.Fatal(err)
	}
	if want := `"` + md5hex([]byte("hello")) + `"`; etag != want {
		t.Errorf("etag %s, want %s", etag, want)
	}
	info, err := s.Head(ctx, "f")
	if err != nil {
		t.Fatal(err)
	}
	want := s3backend.ObjectInfo{Key: "f", Size: 5, ETag: etag, LastModified: time.Date(2024, 5, 6, 6, 8, 9, 0, time.UTC),
		ContentType: "text/plain", Metadata: s3backend.Metadata{"mode": "33188"}}
	if fmt.Sprint(info) != fmt.Sprint(want) {
		t.Errorf("head:\n got %+v\nwant %+v", info, want)
	}

	for _, c := range []struct {
		off, length int64
		want        string
	}{{0, -1, "hello"}, {1, 3, "ell"}, {3, -1, "lo"}, {4, 10, "o"}} {
		if got, err := get(s, "f", c.off, c.length, etag); err != nil || got != c.want {
			t.Errorf("get %d+%d: %q %v, want %q", c.off, c.length, got, err, c.want)
		}
	}
	_, err = get(s, "f", 5, 1, "")
	wantKind(t, "get at the end", err, s3backend.ErrInvalidRange, 416)
	_, err = get(s, "f", 0, -1, `"0123"`)
	wantKind(t, "get with stale etag", err, s3backend.ErrPrecondition, 412)
	_, err = get(s, "nope", 0, -1, "")
	wantKind(t, "get missing", err, s3backend.ErrNotFound, 404)
	_, err = s.Head(ctx, "nope")
	wantKind(t, "head missing", err, s3backend.ErrNotFound, 404)

	put(t, s, "empty", "", s3backend.Condition{})
	for _, length := range []int64{-1, 10} {
		if got, err := get(s, "empty", 0, length, ""); err != nil || got != "" {
			t.Errorf("empty object, length %d: %q %v", length, got, err)
		}
	}
	_, err = s.Put(ctx, s3backend.PutInput{Key: "short", Body: strings.NewReader("abc"), Size: 4})
	wantKind(t, "put with a body shorter than Size", err, s3backend.ErrInvalidRequest, 0)
}

func TestConditions(t *testing.T) {
	s := memstore.New()
	v1 := put(t, s, "f", "one", s3backend.Condition{IfNoneMatch: true})
	_, err := s.Put(ctx, s3backend.PutInput{Key: "f", Body: strings.NewReader("x"), Size: 1, Cond: s3backend.Condition{IfNoneMatch: true}})
	wantKind(t, "put if-none-match over existing", err, s3backend.ErrPrecondition, 412)
	v2 := put(t, s, "f", "two", s3backend.Condition{IfMatch: v1})
	_, err = s.Put(ctx, s3backend.PutInput{Key: "f", Body: strings.NewReader("x"), Size: 1, Cond: s3backend.Condition{IfMatch: v1}})
	wantKind(t, "put if-match stale", err, s3backend.ErrPrecondition, 412)
	_, err = s.Put(ctx, s3backend.PutInput{Key: "new", Body: strings.NewReader("x"), Size: 1, Cond: s3backend.Condition{IfMatch: v1}})
	wantKind(t, "put if-match on a missing key", err, s3backend.ErrPrecondition, 412)
	put(t, s, "f", "three", s3backend.Condition{IfMatch: strings.Trim(put(t, s, "f", "two", s3backend.Condition{IfMatch: v2}), `"`)})

	cur, _, _ := s.Object("f")
	src := put(t, s, "src", "source", s3backend.Condition{})
	g := put(t, s, "g", "gee", s3backend.Condition{})
	_, err = s.Copy(ctx, s3backend.CopyInput{Src: "src", SrcETag: g, Dst: "c"})
	wantKind(t, "copy with stale source etag", err, s3backend.ErrPrecondition, 412)
	_, err = s.Copy(ctx, s3backend.CopyInput{Src: "src", Dst: "g", Cond: s3backend.Condition{IfNoneMatch: true}})
	wantKind(t, "copy onto existing with if-none-match", err, s3backend.ErrPrecondition, 412)
	_, err = s.Copy(ctx, s3backend.CopyInput{Src: "src", Dst: "g", Cond: s3backend.Condition{IfMatch: src}})
	wantKind(t, "copy onto changed destination", err, s3backend.ErrPrecondition, 412)
	_, err = s.Copy(ctx, s3backend.CopyInput{Src: "nope", Dst: "g"})
	wantKind(t, "copy of a missing source", err, s3backend.ErrNotFound, 404)
	_, err = s.Copy(ctx, s3backend.CopyInput{Src: "g", Dst: "g"})
	wantKind(t, "copy onto itself without new metadata", err, s3backend.ErrInvalidRequest, 400)
	if data, _, _ := s.Object("g"); string(data) != "gee" {
		t.Fatalf("g = %q after failed copies", data)
	}
	if etag, err := s.Copy(ctx, s3backend.CopyInput{Src: "src", SrcETag: src, Dst: "g", Cond: s3backend.Condition{IfMatch: g}}); err != nil || etag != src {
		t.Fatalf("copy: %s %v, want etag %s", etag, err, src)
	}
	if string(cur) != "three" {
		t.Errorf("f = %q", cur)
	}

	err = s.Delete(ctx, "g", s3backend.Condition{IfMatch: g})
	wantKind(t, "delete with stale etag", err, s3backend.ErrPrecondition, 412)
	if err := s.Delete(ctx, "g", s3backend.Condition{IfMatch: src}); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := s.Object("g"); ok {
		t.Fatal("delete left the object")
	}
	if err := s.Delete(ctx, "g", s3backend.Condition{IfMatch: src}); err != nil {
		t.Errorf("delete of a missing key: %v", err)
	}
}

func TestCopyMetadata(t *testing.T) {
	s := memstore.New()
	s.PutObject("a", []byte("data"), s3backend.Metadata{"mode": "1", "uid": "2"})
	if _, err := s.Copy(ctx, s3backend.CopyInput{Src: "a", Dst: "keep"}); err != nil {
		t.Fatal(err)
	}
	if _, info, _ := s.Object("keep"); info.Metadata["mode"] != "1" || info.Metadata["uid"] != "2" {
		t.Errorf("kept metadata %v", info.Metadata)
	}
	if _, err := s.Copy(ctx, s3backend.CopyInput{Src: "a", Dst: "a", Metadata: s3backend.Metadata{"mode": "3"}, ContentType: "text/x"}); err != nil {
		t.Fatal(err)
	}
	if data, info, _ := s.Object("a"); string(data) != "data" || len(info.Metadata) != 1 || info.Metadata["mode"] != "3" || info.ContentType != "text/x" {
		t.Errorf("replaced metadata: %q %+v", data, info)
	}
}

func TestListDelimiterPagination(t *testing.T) {
	keys := []string{"a", "a//b", "b", "b.txt", "b/", "b/1", "b/2/3", "c", "d/x", "e-", "e/f", "z/", "é"}
	for _, pageSize := range []int{1, 2, 3, 1000} {
		t.Run(fmt.Sprint("page=", pageSize), func(t *testing.T) {
			s := memstore.New()
			s.PageSize = pageSize
			for _, k := range keys {
				s.PutObject(k, []byte(k), nil)
			}
			if got := s.Keys(); !slices.Equal(got, keys) {
				t.Fatalf("Keys: %q", got)
			}
			if got := list(t, s, s3backend.ListInput{}); !slices.Equal(got, keys) {
				t.Errorf("flat:\n got %q\nwant %q", got, keys)
			}
			// "b" and "b/" coexist as on S3; "a//b" rolls up into "a/".
			want := []string{"a", "a/", "b", "b.txt", "b/", "c", "d/", "e-", "e/", "z/", "é"}
			s.ResetCounts()
			if got := list(t, s, s3backend.ListInput{Delimiter: "/"}); !slices.Equal(got, want) {
				t.Errorf("delimiter:\n got %q\nwant %q", got, want)
			}
			if got, want := s.Counts()["List"], (len(want)+pageSize-1)/pageSize; got != want {
				t.Errorf("%d list pages, want %d", got, want)
			}
			if got, want := list(t, s, s3backend.ListInput{Prefix: "b/", Delimiter: "/"}), []string{"b/", "b/1", "b/2/"}; !slices.Equal(got, want) {
				t.Errorf("prefix b/: %q, want %q", got, want)
			}
			if got, want := list(t, s, s3backend.ListInput{Prefix: "a/", Delimiter: "/"}), []string{"a//"}; !slices.Equal(got, want) {
				t.Errorf("prefix a/: %q, want %q", got, want)
			}
			if got := list(t, s, s3backend.ListInput{Delimiter: "/", MaxKeys: 4}); !slices.Equal(got, want[:4]) {
				t.Errorf("MaxKeys 4: %q", got)
			}
			if got := list(t, s, s3backend.ListInput{Prefix: "q"}); got != nil {
				t.Errorf("no match: %q", got)
			}
		})
	}
}

func TestListEntriesAndStop(t *testing.T) {
	s := memstore.New()
	etag := s.PutObject("d/f", []byte("12345"), nil)
	s.PutObject("d/g/h", nil, nil)
	var got []s3backend.ListEntry
	stop := errors.New("stop")
	err := s.List(ctx, s3backend.ListInput{Prefix: "d/", Delimiter: "/"}, func(e s3backend.ListEntry) error {
		got = append(got, e)
		return stop
	})
	if err != stop || len(got) != 1 {
		t.Fatalf("%v after %d entries", err, len(got))
	}
	if e := got[0]; e.Key != "d/f" || e.Size != 5 || e.ETag != etag || e.IsPrefix || e.LastModified.IsZero() {
		t.Errorf("entry %+v", e)
	}
	s.PutObject("d/", nil, nil) // a directory marker is an object, not a prefix
	got = nil
	s.List(ctx, s3backend.ListInput{Prefix: "d/", Delimiter: "/"}, func(e s3backend.ListEntry) error {
		got = append(got, e)
		return nil
	})
	if len(got) != 3 || got[0].Key != "d/" || got[0].IsPrefix || got[2].Key != "d/g/" || !got[2].IsPrefix || got[2].ETag != "" {
		t.Errorf("entries %+v", got)
	}
}

func TestMultipart(t *testing.T) {
	s := memstore.New()
	src := bytes.Repeat([]byte("abcdefgh"), s3backend.MinPartSize/4) // 10 MiB
	srcTag := s.PutObject("src", src, nil)
	old := s.PutObject("dst", []byte("old"), nil)

	id, err := s.CreateMultipart(ctx, "dst", s3backend.Metadata{"mode": "33188"}, "text/plain")
	if err != nil {
		t.Fatal(err)
	}
	if s.Uploads() != 1 {
		t.Fatalf("%d uploads", s.Uploads())
	}
	p1 := bytes.Repeat([]byte{'x'}, s3backend.MinPartSize)
	e1, err := s.UploadPart(ctx, s3backend.UploadPartInput{Key: "dst", UploadID: id, Part: 1, Body: bytes.NewReader(p1), Size: int64(len(p1))})
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.UploadPartCopy(ctx, s3backend.UploadPartCopyInput{Key: "dst", UploadID: id, Part: 2, Src: "src", SrcETag: old, Off: 0, Length: 1})
	wantKind(t, "part copy of a changed source", err, s3backend.ErrPrecondition, 412)
	_, err = s.UploadPartCopy(ctx, s3backend.UploadPartCopyInput{Key: "dst", UploadID: id, Part: 2, Src: "src", Off: int64(len(src)) - 5, Length: 10})
	wantKind(t, "part copy past the end", err, s3backend.ErrInvalidRequest, 400)
	e2, err := s.UploadPartCopy(ctx, s3backend.UploadPartCopyInput{Key: "dst", UploadID: id, Part: 2, Src: "src", SrcETag: srcTag, Off: 3, Length: s3backend.MinPartSize})
	if err != nil {
		t.Fatal(err)
	}
	if want := `"` + md5hex(src[3:3+s3backend.MinPartSize]) + `"`; e2 != want {
		t.Errorf("part copy etag %s, want %s", e2, want)
	}
	e3, err := s.UploadPart(ctx, s3backend.UploadPartInput{Key: "dst", UploadID: id, Part: 3, Body: strings.NewReader("tail"), Size: 4})
	if err != nil {
		t.Fatal(err)
	}
	parts := []s3backend.CompletedPart{{Part: 3, ETag: e3}, {Part: 1, ETag: e1}, {Part: 2, ETag: e2}}

	_, err = s.CompleteMultipart(ctx, "dst", id, parts, s3backend.Condition{IfMatch: srcTag})
	wantKind(t, "complete with stale if-match", err, s3backend.ErrPrecondition, 412)
	_, err = s.CompleteMultipart(ctx, "dst", id, parts, s3backend.Condition{IfNoneMatch: true})
	wantKind(t, "complete with if-none-match over existing", err, s3backend.ErrPrecondition, 412)
	_, err = s.CompleteMultipart(ctx, "dst", id, []s3backend.CompletedPart{{Part: 1, ETag: e2}}, s3backend.Condition{})
	wantKind(t, "complete naming a wrong part etag", err, s3backend.ErrInvalidRequest, 400)
	_, err = s.CompleteMultipart(ctx, "dst", id, []s3backend.CompletedPart{{Part: 3, ETag: e3}, {Part: 1, ETag: e1}}, s3backend.Condition{})
	if err != nil {
		// parts 1 and 3 are a valid upload: part 1 is large enough
		t.Fatalf("complete with a gap in part numbers: %v", err)
	}
	// That consumed the upload; do it again with all three parts.
	id, _ = s.CreateMultipart(ctx, "dst", s3backend.Metadata{"mode": "33188"}, "text/plain")
	for _, p := range []struct {
		n    int32
		data []byte
	}{{1, p1}, {2, src[3 : 3+s3backend.MinPartSize]}, {3, []byte("tail")}} {
		if _, err := s.UploadPart(ctx, s3backend.UploadPartInput{Key: "dst", UploadID: id, Part: p.n, Body: bytes.NewReader(p.data), Size: int64(len(p.data))}); err != nil {
			t.Fatal(err)
		}
	}
	_, cur, _ := s.Object("dst")
	etag, err := s.CompleteMultipart(ctx, "dst", id, parts, s3backend.Condition{IfMatch: cur.ETag})
	if err != nil {
		t.Fatal(err)
	}
	var sums []byte
	for _, e := range []string{e1, e2, e3} {
		b, _ := hex.DecodeString(strings.Trim(e, `"`))
		sums = append(sums, b...)
	}
	if want := `"` + md5hex(sums) + `-3"`; etag != want {
		t.Errorf("multipart etag %s, want %s", etag, want)
	}
	data, info, _ := s.Object("dst")
	if want := string(p1) + string(src[3:3+s3backend.MinPartSize]) + "tail"; string(data) != want || info.ETag != etag {
		t.Errorf("assembled %d bytes etag %s", len(data), info.ETag)
	}
	if info.Metadata["mode"] != "33188" || info.ContentType != "text/plain" {
		t.Errorf("metadata %+v", info)
	}
	if s.Uploads() != 0 {
		t.Errorf("%d uploads left", s.Uploads())
	}
	_, err = s.CompleteMultipart(ctx, "dst", id, parts, s3backend.Condition{})
	wantKind(t, "complete twice", err, s3backend.ErrNotFound, 404)

	id, _ = s.CreateMultipart(ctx, "small", nil, "")
	a, _ := s.UploadPart(ctx, s3backend.UploadPartInput{Key: "small", UploadID: id, Part: 1, Body: strings.NewReader("a"), Size: 1})
	b, _ := s.UploadPart(ctx, s3backend.UploadPartInput{Key: "small", UploadID: id, Part: 2, Body: strings.NewReader("b"), Size: 1})
	_, err = s.CompleteMultipart(ctx, "small", id, []s3backend.CompletedPart{{Part: 1, ETag: a}, {Part: 2, ETag: b}}, s3backend.Condition{})
	wantKind(t, "complete with a small first part", err, s3backend.ErrInvalidRequest, 400)
	if err := s.AbortMultipart(ctx, "small", id); err != nil || s.Uploads() != 0 {
		t.Errorf("abort: %v, %d uploads", err, s.Uploads())
	}
	if err := s.AbortMultipart(ctx, "small", id); err != nil {
		t.Errorf("abort twice: %v", err)
	}
	_, err = s.UploadPart(ctx, s3backend.UploadPartInput{Key: "small", UploadID: id, Part: 1, Body: strings.NewReader("a"), Size: 1})
	wantKind(t, "part of an aborted upload", err, s3backend.ErrNotFound, 404)
}

func TestHookAndCounts(t *testing.T) {
	s := memstore.New()
	injected := &s3backend.Error{Op: "PutObject", Kind: s3backend.ErrThrottled, Cause: errors.New("injected")}
	s.SetHook(func(op, key string) error {
		if op == "Put" && key == "bad" {
			return injected
		}
		return nil
	})
	if _, err := s.Put(ctx, s3backend.PutInput{Key: "bad", Body: strings.NewReader(""), Size: 0}); err != injected {
		t.Fatalf("hook error not returned: %v", err)
	}
	if _, _, ok := s.Object("bad"); ok {
		t.Fatal("failed put stored the object")
	}
	put(t, s, "good", "x", s3backend.Condition{})
	get(s, "good", 0, -1, "")
	s.Head(ctx, "good")
	s.List(ctx, s3backend.ListInput{}, func(s3backend.ListEntry) error { return nil })
	s.Delete(ctx, "good", s3backend.Condition{})
	want := map[string]int{"Put": 2, "Get": 1, "Head": 1, "List": 1, "Delete": 1}
	if got := s.Counts(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("counts %v, want %v", got, want)
	}
	s.ResetCounts()
	if got := s.Counts(); len(got) != 0 {
		t.Errorf("counts after reset: %v", got)
	}

	// A hook that holds an upload until the test lets it go.
	started := make(chan string)
	release := make(chan error)
	s.SetHook(func(op, key string) error {
		if op != "Put" {
			return nil
		}
		started <- key
		return <-release
	})
	done := make(chan error)
	go func() {
		_, err := s.Put(ctx, s3backend.PutInput{Key: "held", Body: strings.NewReader("v"), Size: 1})
		done <- err
	}()
	if key := <-started; key != "held" {
		t.Fatalf("hook saw %q", key)
	}
	// The store stays usable while the hook blocks.
	if _, err := s.Head(ctx, "held"); !errors.Is(err, s3backend.ErrNotFound) {
		t.Fatalf("head while held: %v", err)
	}
	release <- nil
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if data, _, _ := s.Object("held"); string(data) != "v" {
		t.Errorf("held put stored %q", data)
	}

	// A request whose context ends while held fails as a cancelled one.
	cctx, cancel := context.WithCancel(ctx)
	go func() {
		_, err := s.Put(cctx, s3backend.PutInput{Key: "cancelled", Body: strings.NewReader("v"), Size: 1})
		done <- err
	}()
	<-started
	cancel()
	release <- nil
	if err := <-done; !errors.Is(err, s3backend.ErrUnavailable) || !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled put: %v", err)
	}
	if _, _, ok := s.Object("cancelled"); ok {
		t.Error("cancelled put stored the object")
	}
}

func TestConcurrentUse(t *testing.T) {
	s := memstore.New()
	s.PageSize = 7
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for j := range 50 {
				k := fmt.Sprintf("d%d/k%02d", i, j)
				put(t, s, k, k, s3backend.Condition{})
				s.List(ctx, s3backend.ListInput{Prefix: fmt.Sprintf("d%d/", i)}, func(s3backend.ListEntry) error { return nil })
				if j%2 == 0 {
					s.Delete(ctx, k, s3backend.Condition{})
				}
			}
		})
	}
	wg.Wait()
	if n := len(s.Keys()); n != 8*25 {
		t.Errorf("%d keys, want 200", n)
	}
}
