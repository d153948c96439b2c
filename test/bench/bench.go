package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// bench is one run: the server, the data, the results so far.
type bench struct {
	opt *options
	cl  *cleaner
	// work holds everything on disk: the server's data, caches, mount
	// points, logs. It is removed at exit.
	work       string
	srv        *server
	s3         *s3.Client
	s3fsPasswd string
	rcloneConf string

	tarPath string
	tree    map[string]int64 // file in the tar -> size
	pattern []byte           // what the big write writes, cyclically

	res     map[rowID]map[string]cell
	peakRSS map[string]int64
	notes   []string
	dropErr error
	started time.Time
	loadavg string
}

// cell is one result: a number, or why there is none.
type cell struct {
	ok     bool
	v      float64
	status string // timeout, error, skipped, n/a
}

func newBench(opt *options, cl *cleaner) (*bench, error) {
	b := &bench{opt: opt, cl: cl, res: map[rowID]map[string]cell{}, peakRSS: map[string]int64{}, started: time.Now()}
	if la, err := os.ReadFile("/proc/loadavg"); err == nil {
		b.loadavg = strings.Join(strings.Fields(string(la))[:3], " ")
	}
	parent := opt.workDir
	if parent == "" {
		parent = os.TempDir()
		if isTmpfs(parent) {
			parent = "/var/tmp"
		}
	}
	if isTmpfs(parent) {
		return nil, fmt.Errorf("%s is tmpfs: the server's data must be on a real disk (use -workdir)", parent)
	}
	work, err := os.MkdirTemp(parent, "keelfs-bench-")
	if err != nil {
		return nil, err
	}
	b.work = work
	cl.add(func() {
		// Nothing may stay mounted below work, or RemoveAll would walk
		// into a mount.
		for _, m := range mountsUnder(work) {
			logf("detaching leftover mount %s", m)
			detach(m)
		}
		if left := mountsUnder(work); len(left) > 0 {
			logf("NOT removing %s: still mounted: %v", work, left)
			return
		}
		os.RemoveAll(work)
	})
	for _, d := range []string{"s3", "mnt", "cache", "logs"} {
		if err := os.MkdirAll(filepath.Join(work, d), 0o755); err != nil {
			return nil, err
		}
	}
	logf("work directory %s; starting versitygw", work)
	b.srv, err = startServer(opt.versitygw, filepath.Join(work, "s3"), filepath.Join(work, "logs", "versitygw.log"))
	if err != nil {
		return nil, err
	}
	cl.add(b.srv.stop)
	if b.s3, err = b.srv.client(context.Background()); err != nil {
		return nil, err
	}
	b.s3fsPasswd = filepath.Join(work, "s3fs.passwd")
	if err := os.WriteFile(b.s3fsPasswd, []byte(passwdLine()), 0o600); err != nil {
		return nil, err
	}
	b.rcloneConf = filepath.Join(work, "rclone.conf")
	if err := os.WriteFile(b.rcloneConf, nil, 0o600); err != nil {
		return nil, err
	}
	if err := dropCaches(); err != nil {
		b.dropErr = err
		b.note("could not drop the page cache (%v): the cold rows are not cold", err)
	}
	return b, nil
}

// setup creates the data the workloads read, from outside any mount.
func (b *bench) setup() error {
	ctx := context.Background()
	logf("server on %s; creating bucket %s", b.srv.endpoint, bucketName)
	if _, err := b.s3.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(bucketName)}); err != nil {
		return fmt.Errorf("create bucket: %w", err)
	}
	logf("uploading %s (%s) with s3cli bigput", bigObject, sizeString(b.opt.size))
	if _, err := b.s3cli(ctx, "bigput", bucketName, bigObject, strconv.FormatInt(b.opt.size, 10)); err != nil {
		return err
	}
	logf("creating data/small: %d objects of %d bytes with s3cli fill", b.opt.smallFiles, b.opt.smallSize)
	if _, err := b.s3cli(ctx, "fill", bucketName, "data/small", strconv.Itoa(b.opt.smallFiles), strconv.Itoa(b.opt.smallSize)); err != nil {
		return err
	}
	for _, name := range b.opt.systems {
		if fsSystems[name] != nil {
			if err := b.putDir(ctx, outPrefix(name)); err != nil {
				return fmt.Errorf("put %s: %w", outPrefix(name), err)
			}
		}
	}
	b.tarPath = filepath.Join(b.work, "tree.tar")
	var err error
	if b.tree, err = makeTree(b.tarPath, b.opt.treeFiles); err != nil {
		return fmt.Errorf("make tar: %w", err)
	}
	var total int64
	for _, n := range b.tree {
		total += n
	}
	logf("tar of %d files, %s, in %s", len(b.tree), sizeString(total), b.tarPath)
	b.pattern = make([]byte, 16<<20)
	rand.NewChaCha8([32]byte{'k', 'e', 'e', 'l'}).Read(b.pattern)
	return nil
}

// outPrefix is where a system writes, so systems never see each other's
// files.
func outPrefix(col string) string { return "out-" + col + "/" }

// s3cli runs the plain client and returns its standard output.
func (b *bench) s3cli(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, b.opt.s3cli, args...)
	cmd.Env = b.srv.env()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("s3cli %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}

func (b *bench) note(format string, args ...any) {
	b.notes = append(b.notes, fmt.Sprintf(format, args...))
}

func (b *bench) set(row rowID, col string, c cell) {
	if b.res[row] == nil {
		b.res[row] = map[string]cell{}
	}
	b.res[row][col] = c
}

func (b *bench) get(row rowID, col string) (cell, bool) {
	c, ok := b.res[row][col]
	return c, ok
}

// drop empties the page cache before a cold step.
func (b *bench) drop() {
	if b.dropErr == nil {
		if err := dropCaches(); err != nil {
			b.dropErr = err
			b.note("could not drop the page cache (%v): the cold rows are not cold", err)
		}
	}
}

// session is one mount of one system (or, for a limit, none), on which
// steps run in order. A step that fails skips the rest of its session.
type session struct {
	b     *bench
	col   string
	dir   string // mount point; "" for a limit
	cache string
	d     *daemon
	// failed says why the remaining steps do not run.
	failed string
	status string // what they are recorded as
}

func (b *bench) limitSession(col string) *session {
	return &session{b: b, col: col}
}

// mountSession mounts sys on a fresh mount point with a fresh cache.
func (b *bench) mountSession(sys *fsSystem, name string) *session {
	id := sys.name + "-" + name
	s := &session{b: b, col: sys.name, dir: filepath.Join(b.work, "mnt", id), cache: b.cacheDir(id)}
	os.MkdirAll(s.dir, 0o755)
	os.MkdirAll(s.cache, 0o700)
	logf("%-13s mount for %s", sys.name, name)
	d, err := startDaemon(sys.argv(b, s.dir, s.cache), sys.env(b), s.dir, filepath.Join(b.work, "logs", id+".log"), sys.termBySignal)
	if d != nil {
		s.d = d
		b.cl.add(d.stop)
	}
	if err != nil {
		s.failed, s.status = "mount failed", "error"
		b.note("%s: mount for %s failed: %v", sys.name, name, err)
		logf("%-13s mount failed: %v", sys.name, err)
	}
	return s
}

// path is p inside the mount.
func (s *session) path(p string) string { return filepath.Join(s.dir, p) }

// close records the daemon's peak RSS, then unmounts and stops it.
func (s *session) close() {
	if s.d == nil {
		return
	}
	if rss, err := s.d.peakRSS(); err == nil {
		s.b.peakRSS[s.col] = max(s.b.peakRSS[s.col], rss)
	}
	s.d.stop()
	os.RemoveAll(s.cache)
	os.Remove(s.dir)
}

type stepResult struct {
	v   float64
	err error
}

// step runs fn under the per-step time limit and records its value in row.
// A step stuck in a file system is cut loose by aborting the mount.
func (s *session) step(row rowID, fn func(ctx context.Context) (float64, error)) bool {
	b := s.b
	label := b.rowLabel(row)
	if s.failed != "" {
		b.set(row, s.col, cell{status: s.status})
		return false
	}
	logf("%-13s %s ...", s.col, label)
	ctx, cancel := context.WithTimeout(context.Background(), b.opt.timeout)
	defer cancel()
	ch := make(chan stepResult, 1)
	go func() {
		v, err := fn(ctx)
		ch <- stepResult{v, err}
	}()
	var r stepResult
	select {
	case r = <-ch:
	case <-ctx.Done():
		select {
		case r = <-ch:
		default:
			if s.d != nil {
				logf("%-13s %s: timed out after %v; aborting the mount", s.col, label, b.opt.timeout)
				s.d.kill()
			}
			select {
			case r = <-ch:
			case <-time.After(15 * time.Second):
			}
			r.err = context.DeadlineExceeded
		}
	}
	if r.err != nil {
		status := "error"
		if ctx.Err() != nil || errors.Is(r.err, context.DeadlineExceeded) {
			status = "timeout"
		}
		b.set(row, s.col, cell{status: status})
		b.note("%s: %s: %s: %v", s.col, label, status, r.err)
		logf("%-13s %s: %s: %v", s.col, label, status, r.err)
		if s.d != nil {
			logf("%-13s daemon log (tail):\n%s", s.col, s.d.logTail(3000))
		}
		s.failed, s.status = label, "skipped"
		return false
	}
	b.set(row, s.col, cell{ok: true, v: r.v})
	logf("%-13s %s: %s %s", s.col, label, rows[row].format(r.v), rows[row].unit)
	return true
}

// runColumn runs every workload that applies to one column.
func (b *bench) runColumn(col string) {
	switch col {
	case "plain":
		b.runPlain()
	case "tmpfs":
		b.runTmpfs()
	default:
		b.runFS(fsSystems[col])
	}
}

func (b *bench) runFS(sys *fsSystem) {
	col := sys.name
	if sys.program != "" {
		if _, err := exec.LookPath(sys.program); err != nil {
			b.note("%s: %s is not installed; its column is empty", col, sys.program)
			for r := rowID(0); r < numRows; r++ {
				b.set(r, col, cell{status: "n/a"})
			}
			return
		}
	}
	b.seqReads(sys)
	b.listing(sys)
	b.bigWrite(sys)
	b.untarTree(sys)
	b.appends(sys)
	b.randomReads(sys)
	if rss, ok := b.peakRSS[col]; ok {
		b.set(rowRSS, col, cell{ok: true, v: float64(rss) / (1 << 20)})
		logf("%-13s peak RSS: %.0f MiB", col, float64(rss)/(1<<20))
	} else {
		b.set(rowRSS, col, cell{status: "error"})
	}
	b.deletePrefix(context.Background(), outPrefix(col))
}

// bigObject is the object the read workloads read.
const bigObject = "data/big"

func (b *bench) seqReads(sys *fsSystem) {
	s := b.mountSession(sys, "reads")
	defer s.close()
	b.drop()
	read := func(ctx context.Context) (float64, error) {
		d, err := readFile(ctx, s.path(bigObject), b.opt.size)
		return mibPerSec(b.opt.size, d), err
	}
	s.step(rowReadCold, read)
	s.step(rowReadWarm, read)
}

func (b *bench) listing(sys *fsSystem) {
	s := b.mountSession(sys, "ls")
	defer s.close()
	b.drop()
	ls := func(ctx context.Context) (float64, error) {
		d, err := lsLong(ctx, s.path("data/small"), b.opt.smallFiles)
		return float64(d) / float64(time.Millisecond), err
	}
	s.step(rowLsCold, ls)
	s.step(rowLsWarm, ls)
}

// The write workloads are each timed to the end of the command, then on
// the same clock to when S3 has everything. A failed first step skips the
// second.

func (b *bench) bigWrite(sys *fsSystem) {
	s := b.mountSession(sys, "write")
	defer s.close()
	key := outPrefix(sys.name) + "big"
	var start time.Time
	s.step(rowWriteClose, func(ctx context.Context) (float64, error) {
		start = time.Now()
		err := writeFile(ctx, s.path(key), b.opt.size, b.pattern)
		return time.Since(start).Seconds(), err
	})
	s.step(rowWriteS3, func(ctx context.Context) (float64, error) {
		err := b.waitObject(ctx, key, b.opt.size)
		return time.Since(start).Seconds(), err
	})
}

func (b *bench) untarTree(sys *fsSystem) {
	s := b.mountSession(sys, "untar")
	defer s.close()
	out := outPrefix(sys.name)
	var start time.Time
	s.step(rowUntarEnd, func(ctx context.Context) (float64, error) {
		start = time.Now()
		err := untar(ctx, b.tarPath, s.path(out))
		return time.Since(start).Seconds(), err
	})
	s.step(rowUntarS3, func(ctx context.Context) (float64, error) {
		err := b.waitKeys(ctx, out, b.tree)
		return time.Since(start).Seconds(), err
	})
}

func (b *bench) appends(sys *fsSystem) {
	s := b.mountSession(sys, "appends")
	defer s.close()
	key := outPrefix(sys.name) + "app.log"
	var start time.Time
	s.step(rowAppendEnd, func(ctx context.Context) (float64, error) {
		start = time.Now()
		err := appendLines(ctx, s.path(key), b.opt.appends)
		return time.Since(start).Seconds(), err
	})
	s.step(rowAppendS3, func(ctx context.Context) (float64, error) {
		err := b.waitObject(ctx, key, int64(b.opt.appends*len(appendLine(0))))
		return time.Since(start).Seconds(), err
	})
}

func (b *bench) randomReads(sys *fsSystem) {
	s := b.mountSession(sys, "randread")
	defer s.close()
	b.drop()
	s.step(rowRandRead, func(ctx context.Context) (float64, error) {
		return fioRandRead(ctx, s.path(bigObject), b.opt.size, b.opt.fioRuntime)
	})
}

// runPlain measures the server through the plain parallel client:
// s3cli bigget (8 ranged GETs at a time) and bigput (8 parts at a time).
func (b *bench) runPlain() {
	s := b.limitSession("plain")
	b.drop()
	s.step(rowReadCold, func(ctx context.Context) (float64, error) {
		secs, err := b.s3cliSeconds(ctx, "bigget", bucketName, bigObject)
		return float64(b.opt.size) / (1 << 20) / secs, err
	})
	s = b.limitSession("plain")
	s.step(rowWriteS3, func(ctx context.Context) (float64, error) {
		return b.s3cliSeconds(ctx, "bigput", bucketName, outPrefix("plain")+"big", strconv.FormatInt(b.opt.size, 10))
	})
	b.deletePrefix(context.Background(), outPrefix("plain"))
}

func (b *bench) s3cliSeconds(ctx context.Context, args ...string) (float64, error) {
	out, err := b.s3cli(ctx, args...)
	if err != nil {
		return 0, err
	}
	secs, err := strconv.ParseFloat(strings.TrimSpace(out), 64)
	if err == nil && secs <= 0 {
		err = fmt.Errorf("s3cli printed %q", out)
	}
	return secs, err
}

// runTmpfs reads a file of the same size from /dev/shm; the best of three
// reads is the warm-read limit.
func (b *bench) runTmpfs() {
	s := b.limitSession("tmpfs")
	const dir = "/dev/shm"
	if !isTmpfs(dir) {
		b.note("tmpfs: %s is not tmpfs; its column is empty", dir)
		b.set(rowReadWarm, "tmpfs", cell{status: "n/a"})
		return
	}
	f, err := os.CreateTemp(dir, "keelfs-bench-")
	if err != nil {
		b.note("tmpfs: %v", err)
		b.set(rowReadWarm, "tmpfs", cell{status: "error"})
		return
	}
	path := f.Name()
	f.Close()
	b.cl.add(func() { os.Remove(path) })
	defer os.Remove(path)
	size := b.opt.size
	s.step(rowReadWarm, func(ctx context.Context) (float64, error) {
		if err := writeFile(ctx, path, size, b.pattern); err != nil {
			return 0, err
		}
		// The limit is the best of three reads.
		best := 0.0
		for range 3 {
			d, err := readFile(ctx, path, size)
			if err != nil {
				return 0, err
			}
			best = max(best, mibPerSec(size, d))
		}
		return best, nil
	})
}

func mibPerSec(size int64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(size) / (1 << 20) / d.Seconds()
}

func isTmpfs(dir string) bool {
	var st syscall.Statfs_t
	return syscall.Statfs(dir, &st) == nil && st.Type == 0x01021994 // TMPFS_MAGIC
}
