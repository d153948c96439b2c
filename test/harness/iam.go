package harness

import (
	"context"
	"os"
	"os/exec"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// StartServerIAM starts a private versitygw with its internal IAM service
// (--iam-dir), so that a test can add users besides root (CreateUser) and
// grant them access to a bucket with a policy (SetBucketPolicy). Root
// bypasses bucket policies; other users get only what a policy grants.
// There is no external-endpoint form: a test that needs this fails when
// KEELFS_TEST_ENDPOINT is set.
func StartServerIAM(t testing.TB) *Server {
	t.Helper()
	if os.Getenv("KEELFS_TEST_ENDPOINT") != "" {
		t.Fatalf("harness: this test creates users in a private versitygw; it cannot run against KEELFS_TEST_ENDPOINT")
	}
	return startPrivate(t, "--iam-dir", t.TempDir())
}

// CreateUser adds a user with the given keys and role ("user", "userplus"
// or "admin") through versitygw's admin API.
func (s *Server) CreateUser(t testing.TB, access, secret, role string) {
	t.Helper()
	bin, err := VersitygwPath()
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	cmd := exec.Command(bin, "admin", "--access", s.AccessKey, "--secret", s.SecretKey, "--endpoint-url", s.Endpoint,
		"create-user", "--access", access, "--secret", secret, "--role", role)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("harness: versitygw admin create-user %s: %v\n%s", access, err, out)
	}
}

// SetBucketPolicy sets a bucket policy (JSON) as root.
func (s *Server) SetBucketPolicy(t testing.TB, bucket, policy string) {
	t.Helper()
	if _, err := s.Client(t).PutBucketPolicy(context.Background(), &s3.PutBucketPolicyInput{
		Bucket: aws.String(bucket), Policy: aws.String(policy)}); err != nil {
		t.Fatalf("harness: put bucket policy on %s: %v", bucket, err)
	}
}
