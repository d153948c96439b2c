package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
)

// Credentials of the private server; bench-only values.
const (
	accessKey  = "keelfs-bench-access"
	secretKey  = "keelfs-bench-secret-0123456789"
	region     = "us-east-1"
	bucketName = "bench"
)

// server is a private versitygw with the posix backend. It is a trimmed
// copy of test/harness's, which needs a testing.TB.
type server struct {
	endpoint string
	dir      string
	logPath  string
	cmd      *exec.Cmd
	done     chan struct{}
}

func startServer(bin, dataDir, logPath string) (*server, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := l.Addr().String()
	l.Close()
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "--port", addr, "--keep-alive", "--quiet", "posix", dataDir)
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY="+accessKey, "ROOT_SECRET_KEY="+secretKey)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start versitygw: %w", err)
	}
	s := &server{endpoint: "http://" + addr, dir: dataDir, logPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() { cmd.Wait(); logFile.Close(); close(s.done) }()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-s.done:
			b, _ := os.ReadFile(logPath)
			return nil, fmt.Errorf("versitygw exited at start-up: %s", tail(string(b), 2000))
		default:
		}
		if resp, err := http.Get(s.endpoint + "/"); err == nil {
			resp.Body.Close()
			return s, nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.stop()
	return nil, fmt.Errorf("versitygw did not answer on %s within 20s", addr)
}

// stop terminates the server and waits for it. Safe to call twice.
func (s *server) stop() {
	if s == nil || s.cmd == nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(5 * time.Second):
		s.cmd.Process.Kill()
		<-s.done
	}
}

// env is what a client process needs to reach the server.
func (s *server) env() []string {
	return append(os.Environ(),
		"AWS_ACCESS_KEY_ID="+accessKey,
		"AWS_SECRET_ACCESS_KEY="+secretKey,
		"AWS_REGION="+region,
		"AWS_EC2_METADATA_DISABLED=true",
		"S3CLI_ENDPOINT="+s.endpoint,
	)
}

func (s *server) client(ctx context.Context) (*s3.Client, error) {
	cfg, err := config.LoadDefaultConfig(ctx, config.WithRegion(region),
		config.WithCredentialsProvider(credentials.NewStaticCredentialsProvider(accessKey, secretKey, "")))
	if err != nil {
		return nil, err
	}
	return s3.NewFromConfig(cfg, func(o *s3.Options) {
		o.BaseEndpoint = aws.String(s.endpoint)
		o.UsePathStyle = true
		o.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
		o.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
	}), nil
}

// pollEvery is how often the "in S3" checks ask the server; it bounds
// their resolution.
const pollEvery = 50 * time.Millisecond

// waitObject returns once key exists with size bytes.
func (b *bench) waitObject(ctx context.Context, key string, size int64) error {
	for {
		out, err := b.s3.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(bucketName), Key: aws.String(key)})
		if err == nil && aws.ToInt64(out.ContentLength) == size {
			return nil
		}
		if err != nil && !isNotFound(err) && ctx.Err() == nil {
			return fmt.Errorf("head %s: %w", key, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(pollEvery):
		}
	}
}

// waitKeys returns once every key of want exists under prefix with its
// size. Other keys (directory markers) are ignored.
func (b *bench) waitKeys(ctx context.Context, prefix string, want map[string]int64) error {
	for {
		found := 0
		p := s3.NewListObjectsV2Paginator(b.s3, &s3.ListObjectsV2Input{Bucket: aws.String(bucketName), Prefix: aws.String(prefix)})
		for p.HasMorePages() {
			page, err := p.NextPage(ctx)
			if err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				return fmt.Errorf("list %s: %w", prefix, err)
			}
			for _, o := range page.Contents {
				if size, ok := want[strings.TrimPrefix(aws.ToString(o.Key), prefix)]; ok && size == aws.ToInt64(o.Size) {
					found++
				}
			}
		}
		if found == len(want) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * pollEvery):
		}
	}
}

// deletePrefix removes every object under prefix (best effort: it only
// frees the server's disk between systems).
func (b *bench) deletePrefix(ctx context.Context, prefix string) {
	p := s3.NewListObjectsV2Paginator(b.s3, &s3.ListObjectsV2Input{Bucket: aws.String(bucketName), Prefix: aws.String(prefix)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return
		}
		for _, o := range page.Contents {
			b.s3.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(bucketName), Key: o.Key})
		}
	}
}

// putDir writes a directory marker with the attribute headers keelfs and
// s3fs share, so every system sees the same owner and mode.
func (b *bench) putDir(ctx context.Context, key string) error {
	_, err := b.s3.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(bucketName), Key: aws.String(key),
		Body: strings.NewReader(""), ContentLength: aws.Int64(0), Metadata: map[string]string{
			"mode": fmt.Sprint(syscall.S_IFDIR | 0o755), "uid": "0", "gid": "0",
			"mtime": fmt.Sprint(time.Now().Unix()),
		}})
	return err
}

func isNotFound(err error) bool {
	var nf *types.NotFound
	var nk *types.NoSuchKey
	return errors.As(err, &nf) || errors.As(err, &nk) || strings.Contains(err.Error(), "StatusCode: 404")
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}
