package harness

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"testing"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
)

// Fake is an in-memory S3 (gofakes3) serving one test on a loopback port.
// DESIGN.md allows it for one thing versitygw cannot do: unlike a posix
// backend, it keeps a key "x" beside keys under "x/", and keeps "a//b",
// "." and ".." segments as they are, as real S3 does. Server is the
// *Server view of it: Mount, Put, Get, Keys and Client work as with
// versitygw (it ignores the credentials).
type Fake struct {
	*Server
	Backend *s3mem.Backend
}

// StartFake starts an empty fake S3. It stops at cleanup.
func StartFake(t testing.TB) *Fake {
	t.Helper()
	backend := s3mem.New()
	faker := gofakes3.New(markerFix{backend}, gofakes3.WithLogger(gofakes3.DiscardLog()))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	hs := &httptest.Server{Listener: l, Config: &http.Server{Handler: faker.Server()}}
	hs.Start()
	t.Cleanup(hs.Close)
	return &Fake{Server: &Server{Endpoint: hs.URL, AccessKey: AccessKey, SecretKey: SecretKey, Region: Region},
		Backend: backend}
}

// PutDirect stores an object through the fake's backend, without HTTP:
// fast enough to fill a directory with a hundred thousand keys, and free
// of any client-side cleaning of the key.
func (f *Fake) PutDirect(t testing.TB, bucket, key string, data []byte, meta map[string]string) {
	t.Helper()
	if meta == nil {
		meta = map[string]string{}
	}
	if _, err := f.Backend.PutObject(bucket, key, meta, bytes.NewReader(data), int64(len(data)), nil); err != nil {
		t.Fatalf("harness: fake put %s/%s: %v", bucket, key, err)
	}
}

// markerFix lists directory markers as S3 does. With a delimiter, gofakes3
// returns a key that ends with the delimiter right after the prefix
// ("dir/" when listing "") as an object, where S3 rolls it into the
// common prefix "dir/". Left alone, every directory made by mkdir would
// list as an invalid name.
type markerFix struct{ *s3mem.Backend }

func (b markerFix) ListBucket(name string, prefix *gofakes3.Prefix, page gofakes3.ListBucketPage) (*gofakes3.ObjectList, error) {
	l, err := b.Backend.ListBucket(name, prefix, page)
	if err != nil || prefix == nil || !prefix.HasDelimiter || prefix.Delimiter == "" {
		return l, err
	}
	seen := map[string]bool{}
	for _, p := range l.CommonPrefixes {
		seen[p.Prefix] = true
	}
	kept := l.Contents[:0]
	for _, c := range l.Contents {
		rest, ok := strings.CutPrefix(c.Key, prefix.Prefix)
		i := strings.Index(rest, prefix.Delimiter)
		if !ok || i < 0 {
			kept = append(kept, c)
			continue
		}
		if p := prefix.Prefix + rest[:i+len(prefix.Delimiter)]; !seen[p] {
			seen[p] = true
			l.CommonPrefixes = append(l.CommonPrefixes, gofakes3.CommonPrefix{Prefix: p})
		}
	}
	l.Contents = kept
	sort.Slice(l.CommonPrefixes, func(i, j int) bool { return l.CommonPrefixes[i].Prefix < l.CommonPrefixes[j].Prefix })
	return l, nil
}

// GetDirect reads an object through the fake's backend; ok is false if it
// does not exist.
func (f *Fake) GetDirect(t testing.TB, bucket, key string) (data []byte, ok bool) {
	t.Helper()
	obj, err := f.Backend.GetObject(bucket, key, nil)
	if gofakes3.HasErrorCode(err, gofakes3.ErrNoSuchKey) {
		return nil, false
	}
	if err != nil {
		t.Fatalf("harness: fake get %s/%s: %v", bucket, key, err)
	}
	defer obj.Contents.Close()
	data, err = io.ReadAll(obj.Contents)
	if err != nil {
		t.Fatalf("harness: fake get %s/%s: %v", bucket, key, err)
	}
	return data, true
}
