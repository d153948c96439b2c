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
	pattern []byte           // what the big writes write, cyclically

	// res holds every run of every cell, in the order the rounds ran.
	res map[rowID]map[string][]sample
	// round is the repetition running, from 1.
	round int
	// roundRSS is the highest VmHWM of a column's daemons in this round.
	roundRSS map[string]int64
	notes    []string
	dropErr  error
	started  time.Time
	elapsed  time.Duration // of all rounds, setup included
	loadavg  string
}

// sample is one run of one cell: a number, or why there is none.
type sample struct {
	ok     bool
	v      float64
	status string // timeout, error, skipped, n/a
}

func newBench(opt *options, cl *cleaner) (*bench, error) {
	b := &bench{opt: opt, cl: cl, res: map[rowID]map[string][]sample{}, roundRSS: map[string]int64{}, started: time.Now()}
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
	logf("creating %s: %d objects of %d bytes with s3cli fill", smallDir, b.opt.smallFiles, b.opt.smallSize)
	if _, err := b.s3cli(ctx, "fill", bucketName, smallDir, strconv.Itoa(b.opt.smallFiles), strconv.Itoa(b.opt.smallSize)); err != nil {
		return err
	}
	start := time.Now()
	logf("creating %s: %d objects of %d bytes with s3cli fill", manyDir, b.opt.manyFiles, manySize)
	if _, err := b.s3cli(ctx, "fill", bucketName, manyDir, strconv.Itoa(b.opt.manyFiles), strconv.Itoa(manySize)); err != nil {
		return err
	}
	logf("%s created in %.1fs", manyDir, time.Since(start).Seconds())
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

// The data every system reads, written by s3cli before the first round.
const (
	bigObject = "data/big"   // sequential and random reads
	smallDir  = "data/small" // ls -l
	manyDir   = "data/many"  // ls -f and ls -l of a big directory
	manySize  = 1024         // bytes in each object of manyDir
)

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

// add records one run of a cell.
func (b *bench) add(row rowID, col string, s sample) {
	if b.res[row] == nil {
		b.res[row] = map[string][]sample{}
	}
	b.res[row][col] = append(b.res[row][col], s)
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

// mountSession mounts sys on a fresh mount point with a fresh cache; name
// (a word) tells the mount, its cache and its log from the others.
func (b *bench) mountSession(sys *fsSystem, name string) *session {
	id := fmt.Sprintf("%s-%s-%d", sys.name, name, b.round)
	s := &session{b: b, col: sys.name, dir: filepath.Join(b.work, "mnt", id), cache: b.cacheDir(id)}
	os.MkdirAll(s.dir, 0o755)
	os.MkdirAll(s.cache, 0o700)
	logf("%-13s %s mount for %s", sys.name, b.roundTag(), name)
	d, err := startDaemon(sys.argv(b, s.dir, s.cache), sys.env(b), s.dir, filepath.Join(b.work, "logs", id+".log"), sys.termBySignal)
	if d != nil {
		s.d = d
		b.cl.add(d.stop)
	}
	if err != nil {
		s.failed, s.status = "mount failed", "error"
		b.note("%s: round %d: mount for %s failed: %v", sys.name, b.round, name, err)
		logf("%-13s mount failed: %v", sys.name, err)
	}
	return s
}

func (b *bench) roundTag() string { return fmt.Sprintf("[%d/%d]", b.round, b.opt.runs) }

// path is p inside the mount.
func (s *session) path(p string) string { return filepath.Join(s.dir, p) }

// recordRSS counts the daemon's peak RSS so far in the round's.
func (s *session) recordRSS() {
	if rss, err := s.d.peakRSS(); err == nil {
		s.b.roundRSS[s.col] = max(s.b.roundRSS[s.col], rss)
		logf("%-13s peak RSS of this mount: %.1f MiB", s.col, float64(rss)/(1<<20))
	}
}

// close records the daemon's peak RSS, then unmounts and stops it.
func (s *session) close() {
	if s.d == nil {
		return
	}
	s.recordRSS()
	s.d.stop()
	os.RemoveAll(s.cache)
	os.Remove(s.dir)
}

type stepResult struct {
	v   float64
	err error
}

// step runs fn as one run of the cell (row, the session's column).
func (s *session) step(row rowID, fn func(ctx context.Context) (float64, error)) bool {
	v, st := s.run(s.b.rowLabel(row), fn)
	if st != "" {
		s.b.add(row, s.col, sample{status: st})
		return false
	}
	s.b.add(row, s.col, sample{ok: true, v: v})
	logf("%-13s %s %s: %s %s", s.col, s.b.roundTag(), s.b.rowLabel(row), rows[row].format(v), rows[row].unit)
	return true
}

// prepare runs fn as a step that is not measured: it brings the mount to
// the state the next steps need, and its failure skips them as a failed
// step does.
func (s *session) prepare(label string, fn func(ctx context.Context) error) bool {
	_, st := s.run(label, func(ctx context.Context) (float64, error) { return 0, fn(ctx) })
	if st == "" {
		logf("%-13s %s %s: done", s.col, s.b.roundTag(), label)
	}
	return st == ""
}

// run runs fn under the per-step time limit and returns its value, or the
// status it failed with. A step stuck in a file system is cut loose by
// aborting the mount.
func (s *session) run(label string, fn func(ctx context.Context) (float64, error)) (float64, string) {
	b := s.b
	if s.failed != "" {
		return 0, s.status
	}
	logf("%-13s %s %s ...", s.col, b.roundTag(), label)
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
				s.recordRSS() // the memory a stuck step took counts too
				s.d.kill()
			}
			select {
			case r = <-ch:
			case <-time.After(15 * time.Second):
			}
			r.err = context.DeadlineExceeded
		}
	}
	if r.err == nil {
		return r.v, ""
	}
	status := "error"
	if ctx.Err() != nil || errors.Is(r.err, context.DeadlineExceeded) {
		status = "timeout"
	}
	b.note("%s: round %d: %s: %s: %v", s.col, b.round, label, status, r.err)
	logf("%-13s %s: %s: %v", s.col, label, status, r.err)
	if s.d != nil {
		logf("%-13s daemon log (tail):\n%s", s.col, s.d.logTail(3000))
	}
	s.failed, s.status = label, "skipped"
	return 0, status
}

// runColumn runs one round of every workload that applies to one column.
func (b *bench) runColumn(col string) {
	switch col {
	case "plain":
		b.runPlain()
	case "local":
		b.runLocal()
	case "tmpfs":
		b.runTmpfs()
	default:
		b.runFS(fsSystems[col])
	}
}

// runFS runs one round of the workloads on sys, each group on a mount of
// its own, in a fixed order.
func (b *bench) runFS(sys *fsSystem) {
	col := sys.name
	if sys.program != "" {
		if _, err := exec.LookPath(sys.program); err != nil {
			if b.round == 1 {
				b.note("%s: %s is not installed; its column is empty", col, sys.program)
			}
			for r := rowID(0); r < numRows; r++ {
				b.add(r, col, sample{status: "n/a"})
			}
			return
		}
	}
	ctx := context.Background()
	if err := b.putDir(ctx, outPrefix(col)); err != nil {
		b.note("%s: round %d: put %s: %v", col, b.round, outPrefix(col), err)
	}
	delete(b.roundRSS, col)
	b.reads(sys)
	b.randomReads(sys)
	b.listing(sys)
	b.listMany(sys, rowLsfMany)
	b.listMany(sys, rowLslMany)
	b.bigWrite(sys)
	b.usedMount(sys)
	if rss, ok := b.roundRSS[col]; ok {
		b.add(rowRSS, col, sample{ok: true, v: float64(rss) / (1 << 20)})
		logf("%-13s %s peak RSS over the round: %.1f MiB", col, b.roundTag(), float64(rss)/(1<<20))
	} else {
		b.add(rowRSS, col, sample{status: "error"})
	}
	b.deletePrefix(ctx, outPrefix(col))
}

// reads: the cold sequential read, the warm re-read, then random reads of
// the file the two reads brought wholly into the system's cache.
func (b *bench) reads(sys *fsSystem) {
	s := b.mountSession(sys, "reads")
	defer s.close()
	b.drop()
	read := func(ctx context.Context) (float64, error) {
		d, err := readFile(ctx, s.path(bigObject), b.opt.size)
		return mibPerSec(b.opt.size, d), err
	}
	s.step(rowReadCold, read)
	s.step(rowReadWarm, read)
	s.step(rowRandCached, func(ctx context.Context) (float64, error) {
		return fioRandRead(ctx, s.path(bigObject), b.opt.size, b.opt.fioRuntime, true)
	})
}

func (b *bench) randomReads(sys *fsSystem) {
	s := b.mountSession(sys, "randread")
	defer s.close()
	b.drop()
	s.step(rowRandCold, func(ctx context.Context) (float64, error) {
		return fioRandRead(ctx, s.path(bigObject), b.opt.size, b.opt.fioRuntime, false)
	})
}

func (b *bench) listing(sys *fsSystem) {
	s := b.mountSession(sys, "ls")
	defer s.close()
	b.drop()
	ls := func(ctx context.Context) (float64, error) {
		d, err := lsLong(ctx, s.path(smallDir), b.opt.smallFiles)
		return ms(d), err
	}
	s.step(rowLsCold, ls)
	s.step(rowLsWarm, ls)
}

// listMany lists manyDir cold on a mount of its own: names only (ls -f)
// or long (ls -l).
func (b *bench) listMany(sys *fsSystem, row rowID) {
	name := "ls-f-many"
	if row == rowLslMany {
		name = "ls-l-many"
	}
	s := b.mountSession(sys, name)
	defer s.close()
	b.drop()
	s.step(row, func(ctx context.Context) (float64, error) {
		var d time.Duration
		var err error
		if row == rowLslMany {
			d, err = lsLong(ctx, s.path(manyDir), b.opt.manyFiles)
		} else {
			d, err = lsNames(ctx, s.path(manyDir), b.opt.manyFiles)
		}
		return ms(d), err
	})
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// The write workloads are each timed to the end of the command, then on
// the same clock to when S3 has everything. A failed first step skips the
// second.

// bigWrite is the big write on a fresh mount.
func (b *bench) bigWrite(sys *fsSystem) {
	s := b.mountSession(sys, "write")
	defer s.close()
	s.writeBig(outPrefix(sys.name)+"big-fresh", rowWriteClose, rowWriteS3)
}

// writeBig writes the big file at key and waits until S3 has it.
func (s *session) writeBig(key string, closeRow, s3Row rowID) {
	b := s.b
	var start time.Time
	s.step(closeRow, func(ctx context.Context) (float64, error) {
		start = time.Now()
		err := writeFile(ctx, s.path(key), b.opt.size, b.pattern)
		return time.Since(start).Seconds(), err
	})
	s.step(s3Row, func(ctx context.Context) (float64, error) {
		err := b.waitObject(ctx, key, b.opt.size)
		return time.Since(start).Seconds(), err
	})
}

// usedMount runs, on one mount, tar x, then the appends, then a whole read
// of the big object, then the big write again: the write's second
// position, on a mount that has uploaded and cached other files.
func (b *bench) usedMount(sys *fsSystem) {
	s := b.mountSession(sys, "used")
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
	key := out + "app.log"
	s.step(rowAppendEnd, func(ctx context.Context) (float64, error) {
		start = time.Now()
		err := appendLines(ctx, s.path(key), b.opt.appends)
		return time.Since(start).Seconds(), err
	})
	s.step(rowAppendS3, func(ctx context.Context) (float64, error) {
		err := b.waitObject(ctx, key, int64(b.opt.appends*len(appendLine(0))))
		return time.Since(start).Seconds(), err
	})
	s.prepare("read "+bigObject+" whole (not measured)", func(ctx context.Context) error {
		_, err := readFile(ctx, s.path(bigObject), b.opt.size)
		return err
	})
	s.writeBig(out+"big-used", rowWriteUsedClose, rowWriteUsedS3)
}

// runPlain measures the server through the plain client: s3cli bigget (8
// ranged GETs at a time), bigput (8 parts at a time), lsl (the listing and
// HEADs of ls -l, 32 HEADs at a time) and lsf (the listing alone). Each is
// a session of its own, so that one failure skips nothing else.
func (b *bench) runPlain() {
	b.drop()
	b.limitSession("plain").step(rowReadCold, func(ctx context.Context) (float64, error) {
		secs, err := b.s3cliSeconds(ctx, "bigget", bucketName, bigObject)
		return float64(b.opt.size) / (1 << 20) / secs, err
	})
	// One multipart PUT per round is the limit of both big-write rows.
	b.limitSession("plain").step(rowWriteS3, func(ctx context.Context) (float64, error) {
		return b.s3cliSeconds(ctx, "bigput", bucketName, outPrefix("plain")+"big", strconv.FormatInt(b.opt.size, 10))
	})
	runs := b.res[rowWriteS3]["plain"]
	b.add(rowWriteUsedS3, "plain", runs[len(runs)-1])
	b.deletePrefix(context.Background(), outPrefix("plain"))
	for _, l := range []struct {
		row  rowID
		cmd  string
		dir  string
		want int
	}{
		{rowLsCold, "lsl", smallDir, b.opt.smallFiles},
		{rowLsfMany, "lsf", manyDir, b.opt.manyFiles},
		{rowLslMany, "lsl", manyDir, b.opt.manyFiles},
	} {
		b.drop()
		b.limitSession("plain").step(l.row, func(ctx context.Context) (float64, error) {
			out, err := b.s3cli(ctx, l.cmd, bucketName, l.dir)
			if err != nil {
				return 0, err
			}
			var n int
			var secs float64
			if _, err := fmt.Sscanf(out, "%d %g", &n, &secs); err != nil || secs <= 0 {
				return 0, fmt.Errorf("s3cli %s printed %q", l.cmd, out)
			}
			if n != l.want {
				return 0, fmt.Errorf("s3cli %s %s listed %d names, want %d", l.cmd, l.dir, n, l.want)
			}
			return secs * 1000, nil
		})
	}
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

// runLocal is the limit of random reads of a cached file: the same fio on
// a file of the same size on the file system of the cache directories,
// read whole once first so that, like the mounts' cached file, it is in
// the page cache.
func (b *bench) runLocal() {
	path := filepath.Join(b.work, "cache", "local-file")
	defer os.Remove(path)
	size := b.opt.size
	b.limitSession("local").step(rowRandCached, func(ctx context.Context) (float64, error) {
		if err := writeFile(ctx, path, size, b.pattern); err != nil {
			return 0, err
		}
		if _, err := readFile(ctx, path, size); err != nil {
			return 0, err
		}
		return fioRandRead(ctx, path, size, b.opt.fioRuntime, true)
	})
}

// runTmpfs reads a file of the same size from /dev/shm; the best of three
// reads is the warm-read limit of the round.
func (b *bench) runTmpfs() {
	s := b.limitSession("tmpfs")
	const dir = "/dev/shm"
	if !isTmpfs(dir) {
		if b.round == 1 {
			b.note("tmpfs: %s is not tmpfs; its column is empty", dir)
		}
		b.add(rowReadWarm, "tmpfs", sample{status: "n/a"})
		return
	}
	f, err := os.CreateTemp(dir, "keelfs-bench-")
	if err != nil {
		b.note("tmpfs: %v", err)
		b.add(rowReadWarm, "tmpfs", sample{status: "error"})
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
