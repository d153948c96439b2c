package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"sync"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
)

// Put writes an object directly in the bucket, behind any mount's back.
func (s *Server) Put(t testing.TB, bucket, key string, data []byte, meta map[string]string) string {
	t.Helper()
	out, err := s.Client(t).PutObject(context.Background(), &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String(key),
		Body: bytes.NewReader(data), Metadata: meta})
	if err != nil {
		t.Fatalf("put %s/%s: %v", bucket, key, err)
	}
	return aws.ToString(out.ETag)
}

// Get reads an object directly from the bucket; ok is false if it does not
// exist.
func (s *Server) Get(t testing.TB, bucket, key string) (data []byte, ok bool) {
	t.Helper()
	out, err := s.Client(t).GetObject(context.Background(), &s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)})
	var nk *types.NoSuchKey
	if errors.As(err, &nk) {
		return nil, false
	}
	if err != nil {
		t.Fatalf("get %s/%s: %v", bucket, key, err)
	}
	defer out.Body.Close()
	data, err = io.ReadAll(out.Body)
	if err != nil {
		t.Fatalf("get %s/%s: %v", bucket, key, err)
	}
	return data, true
}

// Head returns an object's user metadata.
func (s *Server) Head(t testing.TB, bucket, key string) map[string]string {
	t.Helper()
	out, err := s.Client(t).HeadObject(context.Background(), &s3.HeadObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)})
	if err != nil {
		t.Fatalf("head %s/%s: %v", bucket, key, err)
	}
	return out.Metadata
}

// Delete removes an object directly.
func (s *Server) Delete(t testing.TB, bucket, key string) {
	t.Helper()
	if _, err := s.Client(t).DeleteObject(context.Background(), &s3.DeleteObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)}); err != nil {
		t.Fatalf("delete %s/%s: %v", bucket, key, err)
	}
}

// Keys lists every key under prefix, sorted.
func (s *Server) Keys(t testing.TB, bucket, prefix string) []string {
	t.Helper()
	var keys []string
	p := s3.NewListObjectsV2Paginator(s.Client(t), &s3.ListObjectsV2Input{Bucket: aws.String(bucket), Prefix: aws.String(prefix)})
	for p.HasMorePages() {
		page, err := p.NextPage(context.Background())
		if err != nil {
			t.Fatalf("list %s/%s: %v", bucket, prefix, err)
		}
		for _, o := range page.Contents {
			keys = append(keys, aws.ToString(o.Key))
		}
	}
	sort.Strings(keys)
	return keys
}

// S3CLI runs the test/s3cli client against the server (building it once)
// and returns its output; it fails the test if the command fails.
func (s *Server) S3CLI(t testing.TB, args ...string) string {
	t.Helper()
	s3cliOnce.Do(func() {
		dir, err := os.MkdirTemp("", "keelfs-s3cli-")
		if err != nil {
			s3cliErr = err
			return
		}
		s3cliPath = filepath.Join(dir, "s3cli")
		cmd := exec.Command("go", "build", "-o", s3cliPath, "./test/s3cli")
		cmd.Dir = RepoRoot()
		if out, err := cmd.CombinedOutput(); err != nil {
			s3cliErr = fmt.Errorf("%v\n%s", err, out)
		}
	})
	if s3cliErr != nil {
		t.Fatalf("harness: build s3cli: %v", s3cliErr)
	}
	cmd := exec.Command(s3cliPath, args...)
	cmd.Env = append(append(os.Environ(), s.Env()...), "S3CLI_ENDPOINT="+s.Endpoint)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("s3cli %v: %v\n%s", args, err, out)
	}
	return string(out)
}

var (
	s3cliOnce sync.Once
	s3cliPath string
	s3cliErr  error
)
