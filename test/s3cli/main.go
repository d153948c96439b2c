// Command s3cli is the plain S3 client the demo, the tests and the
// benchmarks use to work on a bucket from outside a mount: create buckets,
// put, get, list, delete, and the parallel transfers that measure what the
// server delivers without a filesystem in between.
//
// Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY; the
// endpoint from S3CLI_ENDPOINT (path-style addressing).
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
)

const usage = `usage: s3cli COMMAND ARGS
  mb BUCKET                         create a bucket
  put BUCKET KEY FILE|-             upload a file (or stdin)
  get BUCKET KEY                    print an object
  head BUCKET KEY                   print size, ETag and user metadata
  ls BUCKET [PREFIX]                list keys recursively with sizes
  rm BUCKET KEY                     delete an object
  fill BUCKET PREFIX N SIZE         create N objects of SIZE bytes, in parallel
  bigput BUCKET KEY SIZE [PARALLEL] multipart-upload SIZE random bytes; prints seconds
  bigget BUCKET KEY [PARALLEL]      ranged-GET an object in parallel; prints seconds
  lsf BUCKET PREFIX                 list one directory level (ListObjectsV2 with delimiter /,
                                    every page); prints the count of names and seconds
  lsl BUCKET PREFIX [PARALLEL]      the same listing plus a HEAD of every object, PARALLEL
                                    (default 32) at a time while the pages arrive; prints
                                    the count of names and seconds`

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "s3cli:", err)
		os.Exit(1)
	}
}

func client(ctx context.Context) (*s3.Client, error) {
	region := os.Getenv("AWS_REGION")
	if region == "" {
		region = "us-east-1"
	}
	cfg, err := config.LoadDefaultConfig(ctx, config.WithRegion(region))
	if err != nil {
		return nil, err
	}
	ep := os.Getenv("S3CLI_ENDPOINT")
	return s3.NewFromConfig(cfg, func(o *s3.Options) {
		if ep != "" {
			o.BaseEndpoint = aws.String(ep)
			o.UsePathStyle = true
		}
		o.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
		o.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
	}), nil
}

func run(args []string) error {
	if len(args) < 2 {
		return errors.New(usage)
	}
	ctx := context.Background()
	c, err := client(ctx)
	if err != nil {
		return err
	}
	b := aws.String(args[1])
	switch args[0] {
	case "mb":
		_, err := c.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: b})
		return err
	case "put":
		if len(args) != 4 {
			return errors.New(usage)
		}
		var data []byte
		if args[3] == "-" {
			data, err = io.ReadAll(os.Stdin)
		} else {
			data, err = os.ReadFile(args[3])
		}
		if err != nil {
			return err
		}
		_, err = c.PutObject(ctx, &s3.PutObjectInput{Bucket: b, Key: aws.String(args[2]), Body: bytes.NewReader(data)})
		return err
	case "get":
		out, err := c.GetObject(ctx, &s3.GetObjectInput{Bucket: b, Key: aws.String(args[2])})
		if err != nil {
			return err
		}
		defer out.Body.Close()
		_, err = io.Copy(os.Stdout, out.Body)
		return err
	case "head":
		out, err := c.HeadObject(ctx, &s3.HeadObjectInput{Bucket: b, Key: aws.String(args[2])})
		if err != nil {
			return err
		}
		keys := make([]string, 0, len(out.Metadata))
		for k := range out.Metadata {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		fmt.Printf("size %d\netag %s\n", aws.ToInt64(out.ContentLength), aws.ToString(out.ETag))
		for _, k := range keys {
			fmt.Printf("x-amz-meta-%s: %s\n", k, out.Metadata[k])
		}
		return nil
	case "ls":
		prefix := ""
		if len(args) > 2 {
			prefix = args[2]
		}
		p := s3.NewListObjectsV2Paginator(c, &s3.ListObjectsV2Input{Bucket: b, Prefix: aws.String(prefix)})
		for p.HasMorePages() {
			page, err := p.NextPage(ctx)
			if err != nil {
				return err
			}
			for _, o := range page.Contents {
				fmt.Printf("%10d %s\n", aws.ToInt64(o.Size), aws.ToString(o.Key))
			}
		}
		return nil
	case "rm":
		_, err := c.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: b, Key: aws.String(args[2])})
		return err
	case "fill":
		if len(args) != 5 {
			return errors.New(usage)
		}
		n, _ := strconv.Atoi(args[3])
		size, _ := strconv.Atoi(args[4])
		return fill(ctx, c, args[1], args[2], n, size)
	case "bigput":
		if len(args) < 4 {
			return errors.New(usage)
		}
		size, _ := strconv.ParseInt(args[3], 10, 64)
		par := 8
		if len(args) > 4 {
			par, _ = strconv.Atoi(args[4])
		}
		d, err := bigPut(ctx, c, args[1], args[2], size, par)
		if err == nil {
			fmt.Printf("%.3f\n", d.Seconds())
		}
		return err
	case "bigget":
		par := 8
		if len(args) > 3 {
			par, _ = strconv.Atoi(args[3])
		}
		d, err := bigGet(ctx, c, args[1], args[2], par)
		if err == nil {
			fmt.Printf("%.3f\n", d.Seconds())
		}
		return err
	case "lsf", "lsl":
		if len(args) < 3 {
			return errors.New(usage)
		}
		par := 0
		if args[0] == "lsl" {
			par = headWorkers
			if len(args) > 3 {
				par, _ = strconv.Atoi(args[3])
			}
			if par < 1 {
				return errors.New(usage)
			}
		}
		n, d, err := listDir(ctx, c, args[1], args[2], par)
		if err == nil {
			fmt.Printf("%d %.3f\n", n, d.Seconds())
		}
		return err
	}
	return errors.New(usage)
}

func fill(ctx context.Context, c *s3.Client, bucket, prefix string, n, size int) error {
	data := make([]byte, size)
	rand.Read(data)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	sem := make(chan struct{}, 32)
	for i := 0; i < n; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer func() { <-sem; wg.Done() }()
			key := fmt.Sprintf("%s/file-%05d", strings.TrimSuffix(prefix, "/"), i)
			_, err := c.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String(key), Body: bytes.NewReader(data)})
			if err != nil {
				errs <- err
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	return <-errs
}

const partSize = 16 << 20

func bigPut(ctx context.Context, c *s3.Client, bucket, key string, size int64, par int) (time.Duration, error) {
	part := make([]byte, partSize)
	rand.Read(part)
	start := time.Now()
	mu, err := c.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: aws.String(bucket), Key: aws.String(key)})
	if err != nil {
		return 0, err
	}
	n := int((size + partSize - 1) / partSize)
	parts := make([]types.CompletedPart, n)
	var wg sync.WaitGroup
	var firstErr error
	var emu sync.Mutex
	sem := make(chan struct{}, par)
	for i := 0; i < n; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer func() { <-sem; wg.Done() }()
			l := min(int64(partSize), size-int64(i)*partSize)
			out, err := c.UploadPart(ctx, &s3.UploadPartInput{Bucket: aws.String(bucket), Key: aws.String(key),
				UploadId: mu.UploadId, PartNumber: aws.Int32(int32(i + 1)), Body: bytes.NewReader(part[:l]), ContentLength: aws.Int64(l)})
			emu.Lock()
			defer emu.Unlock()
			if err != nil {
				firstErr = err
				return
			}
			parts[i] = types.CompletedPart{ETag: out.ETag, PartNumber: aws.Int32(int32(i + 1))}
		}(i)
	}
	wg.Wait()
	if firstErr != nil {
		return 0, firstErr
	}
	_, err = c.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{Bucket: aws.String(bucket), Key: aws.String(key),
		UploadId: mu.UploadId, MultipartUpload: &types.CompletedMultipartUpload{Parts: parts}})
	return time.Since(start), err
}

func bigGet(ctx context.Context, c *s3.Client, bucket, key string, par int) (time.Duration, error) {
	start := time.Now()
	h, err := c.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)})
	if err != nil {
		return 0, err
	}
	size := aws.ToInt64(h.ContentLength)
	const chunk = 8 << 20
	n := int((size + chunk - 1) / chunk)
	var wg sync.WaitGroup
	var firstErr error
	var emu sync.Mutex
	sem := make(chan struct{}, par)
	for i := 0; i < n; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer func() { <-sem; wg.Done() }()
			off := int64(i) * chunk
			end := min(off+chunk, size) - 1
			out, err := c.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String(key),
				Range: aws.String(fmt.Sprintf("bytes=%d-%d", off, end))})
			if err == nil {
				_, err = io.Copy(io.Discard, out.Body)
				out.Body.Close()
			}
			if err != nil {
				emu.Lock()
				firstErr = err
				emu.Unlock()
			}
		}(i)
	}
	wg.Wait()
	return time.Since(start), firstErr
}

// headWorkers is how many HEADs lsl keeps in flight: keelfs's default
// for filling a directory (cache.Options.HeadWorkers).
const headWorkers = 32

// listDir lists one level below prefix as a directory listing does: every
// page of ListObjectsV2 with delimiter "/", counting objects and common
// prefixes. With heads > 0 it also HEADs every object, heads at a time,
// starting while later pages are still being listed, as `ls -l` needs
// each object's x-amz-meta-* headers. It returns the count of names.
func listDir(ctx context.Context, c *s3.Client, bucket, prefix string, heads int) (int, time.Duration, error) {
	if prefix != "" && !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	start := time.Now()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	keys := make(chan string, 1000)
	var wg sync.WaitGroup
	var emu sync.Mutex
	var firstErr error
	fail := func(err error) {
		emu.Lock()
		if firstErr == nil {
			firstErr = err
			cancel()
		}
		emu.Unlock()
	}
	for i := 0; i < heads; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range keys {
				if ctx.Err() != nil {
					continue // drain
				}
				if _, err := c.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(bucket), Key: aws.String(k)}); err != nil {
					fail(fmt.Errorf("head %s: %w", k, err))
				}
			}
		}()
	}
	n := 0
	p := s3.NewListObjectsV2Paginator(c, &s3.ListObjectsV2Input{Bucket: aws.String(bucket), Prefix: aws.String(prefix),
		Delimiter: aws.String("/")})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			fail(err)
			break
		}
		n += len(page.CommonPrefixes)
		for _, o := range page.Contents {
			if aws.ToString(o.Key) == prefix {
				continue // the directory's own marker is not a name in it
			}
			n++
			if heads > 0 {
				keys <- aws.ToString(o.Key)
			}
		}
	}
	close(keys)
	wg.Wait()
	return n, time.Since(start), firstErr
}
