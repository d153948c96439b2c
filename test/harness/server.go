// Package harness starts the real parts the end-to-end tests need: an
// S3-compatible server (versitygw, pinned in the Makefile) on a free loopback
// port, and keelfs mounts of the built binary. Everything it starts is
// stopped by t.Cleanup, also when the test fails.
//
// A test that needs a part that is missing fails with a message naming it;
// it never skips.
package harness

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// Credentials of the local test server. They are test-only values.
const (
	AccessKey = "keelfs-test-access"
	SecretKey = "keelfs-test-secret-0123456789"
	Region    = "us-east-1"
)

// Server is an S3 endpoint for one test: a private versitygw, or the
// endpoint named by KEELFS_TEST_ENDPOINT (with credentials from the standard
// AWS environment variables).
type Server struct {
	Endpoint  string // http://127.0.0.1:PORT
	AccessKey string
	SecretKey string
	Region    string
	Dir       string // versitygw's posix root; "" for an external endpoint

	cmd  *exec.Cmd
	done chan struct{}
	logf string
	args []string // extra versitygw options, before the backend (see StartServerIAM)
}

// RepoRoot is the top of the keelfs checkout, found from this source file.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// VersitygwPath finds the pinned versitygw: $KEELFS_VERSITYGW, else
// .tools/bin/versitygw in the checkout (where `make tools` installs it).
func VersitygwPath() (string, error) {
	if p := os.Getenv("KEELFS_VERSITYGW"); p != "" {
		return p, nil
	}
	p := filepath.Join(RepoRoot(), ".tools", "bin", "versitygw")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("versitygw not found at %s: run `make tools` (or `make test`, which installs it) or set KEELFS_VERSITYGW", p)
	}
	return p, nil
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("harness: no free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// StartServer starts a private versitygw for the test, or returns the
// external endpoint from KEELFS_TEST_ENDPOINT. It is stopped at cleanup.
func StartServer(t testing.TB) *Server {
	t.Helper()
	if ep := os.Getenv("KEELFS_TEST_ENDPOINT"); ep != "" {
		s := &Server{Endpoint: ep, AccessKey: os.Getenv("AWS_ACCESS_KEY_ID"),
			SecretKey: os.Getenv("AWS_SECRET_ACCESS_KEY"), Region: os.Getenv("AWS_REGION")}
		if s.Region == "" {
			s.Region = Region
		}
		return s
	}
	return startPrivate(t)
}

// startPrivate starts versitygw with extra options on a free loopback
// port, and stops it at cleanup, showing its log if the test failed.
func startPrivate(t testing.TB, args ...string) *Server {
	t.Helper()
	bin, err := VersitygwPath()
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	s := &Server{AccessKey: AccessKey, SecretKey: SecretKey, Region: Region, Dir: t.TempDir(), args: args}
	s.logf = filepath.Join(t.TempDir(), "versitygw.log")
	if err := s.start(bin, 0); err != nil {
		t.Fatalf("harness: %v", err)
	}
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			if b, err := os.ReadFile(s.logf); err == nil && len(b) > 0 {
				t.Logf("versitygw log:\n%s", tail(b, 4000))
			}
		}
	})
	return s
}

func (s *Server) start(bin string, port int) error {
	if port == 0 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		port = l.Addr().(*net.TCPAddr).Port
		l.Close()
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	logf, err := os.OpenFile(s.logf, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	args := append([]string{"--port", addr, "--keep-alive", "--quiet"}, s.args...)
	cmd := exec.Command(bin, append(args, "posix", s.Dir)...)
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY="+s.AccessKey, "ROOT_SECRET_KEY="+s.SecretKey)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start versitygw: %w", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(done) }()
	s.cmd, s.done = cmd, done
	s.Endpoint = "http://" + addr
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-done:
			b, _ := os.ReadFile(s.logf)
			return fmt.Errorf("versitygw exited at start-up: %s", tail(b, 2000))
		default:
		}
		if resp, err := http.Get(s.Endpoint + "/"); err == nil {
			resp.Body.Close()
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.Stop()
	return fmt.Errorf("versitygw did not answer on %s within 20s", addr)
}

// Stop kills the server and waits for it. Safe to call twice.
func (s *Server) Stop() {
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(5 * time.Second):
		s.cmd.Process.Kill()
		<-s.done
	}
	s.cmd = nil
}

// Restart stops the server and starts it again on the same port and data,
// as an S3 outage that ends.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	if s.Dir == "" {
		t.Fatalf("harness: cannot restart an external endpoint")
	}
	port := strings.TrimPrefix(s.Endpoint, "http://127.0.0.1:")
	s.Stop()
	bin, err := VersitygwPath()
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	var p int
	fmt.Sscan(port, &p)
	if err := s.start(bin, p); err != nil {
		t.Fatalf("harness: restart: %v", err)
	}
}

// Env returns the environment a keelfs process needs to reach the server.
func (s *Server) Env() []string {
	return []string{
		"AWS_ACCESS_KEY_ID=" + s.AccessKey,
		"AWS_SECRET_ACCESS_KEY=" + s.SecretKey,
		"AWS_REGION=" + s.Region,
		"AWS_EC2_METADATA_DISABLED=true",
	}
}

// Client returns a plain SDK client for the server, for changing the bucket
// behind a mount's back and checking what landed in it.
func (s *Server) Client(t testing.TB) *s3.Client {
	t.Helper()
	cfg, err := config.LoadDefaultConfig(context.Background(), config.WithRegion(s.Region),
		config.WithCredentialsProvider(credentials.NewStaticCredentialsProvider(s.AccessKey, s.SecretKey, "")))
	if err != nil {
		t.Fatalf("harness: aws config: %v", err)
	}
	return s3.NewFromConfig(cfg, func(o *s3.Options) {
		o.BaseEndpoint = aws.String(s.Endpoint)
		o.UsePathStyle = true
	})
}

// NewBucket creates a bucket with a unique name and returns the name.
func (s *Server) NewBucket(t testing.TB) string {
	t.Helper()
	var b [6]byte
	rand.Read(b[:])
	name := "keelfs-test-" + hex.EncodeToString(b[:])
	if _, err := s.Client(t).CreateBucket(context.Background(), &s3.CreateBucketInput{Bucket: aws.String(name)}); err != nil {
		t.Fatalf("harness: create bucket %s: %v", name, err)
	}
	return name
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
