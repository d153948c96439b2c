// Command bench is `make bench`. It starts a private versitygw on a free
// loopback port, fills a bucket from outside any mount with the plain S3
// client (test/s3cli), then runs the same fixed workloads on keelfs, s3fs
// and rclone mount, and on three limits: the plain S3 client, a local file
// and tmpfs. Every column runs -runs times (default 2), in rounds: round 1
// runs every column once in order, then round 2 does the same, so that a
// change in the machine's load hits every system alike. It prints one
// markdown table with, in each cell, the best run and the spread of the
// runs, keelfs's ratio to the best peer, and the targets of issue 17; with
// -out it writes it into docs/benchmarks.md together with the method, the
// machine, the versions measured and every run's value.
//
// It is never a timed test: the numbers depend on the machine, so it runs
// only on demand, on a quiet machine, as root (it drops the page cache).
//
// # Cleanup
//
// Everything it starts is stopped at exit, also when a workload fails, on
// a panic and on Ctrl-C or SIGTERM: every mount is detached with
// `fusermount3 -u -z`, every daemon and the server are killed, and the
// temporary directory (server data, caches, mount points) is removed.
// Children run in their own process group, so Ctrl-C reaches only this
// program, which then stops them in order.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"time"
)

// options are the command-line flags.
type options struct {
	out        string
	size       int64
	systems    []string
	quick      bool
	timeout    time.Duration
	workDir    string
	runs       int           // rounds; every column runs once in each
	smallFiles int           // objects in the directory listed by ls -l
	smallSize  int           // bytes in each of them
	manyFiles  int           // objects of 1 KiB in the big directory
	treeFiles  int           // files in the tar
	appends    int           // open-append-close cycles
	fioRuntime time.Duration // random-read duration

	keelfs, s3cli, versitygw string // binaries
}

func main() {
	opt, err := parseFlags()
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	cl := &cleaner{}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		s := <-sigs
		logf("got %v: stopping everything", s)
		cl.run()
		os.Exit(130)
	}()
	code := run(opt, cl)
	cl.run()
	os.Exit(code)
}

func run(opt *options, cl *cleaner) (code int) {
	defer func() {
		if r := recover(); r != nil {
			fmt.Fprintf(os.Stderr, "bench: panic: %v\n%s", r, debug.Stack())
			code = 1
		}
	}()
	b, err := newBench(opt, cl)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	if err := b.setup(); err != nil {
		fmt.Fprintln(os.Stderr, "bench: setup:", err)
		return 1
	}
	for b.round = 1; b.round <= opt.runs; b.round++ {
		logf("round %d of %d: %s", b.round, opt.runs, strings.Join(opt.systems, ", "))
		for _, name := range opt.systems {
			b.runColumn(name)
		}
	}
	b.elapsed = time.Since(b.started)
	logf("all rounds done in %v", b.elapsed.Round(time.Second))
	table := b.table()
	fmt.Println(table)
	if opt.out != "" {
		if err := os.WriteFile(opt.out, []byte(b.document(table)), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			return 1
		}
		logf("wrote %s", opt.out)
	}
	return 0
}

func parseFlags() (*options, error) {
	opt := &options{}
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: go run ./test/bench [flags]\n\n"+
			"Needs root, FUSE, s3fs, rclone and fio; the binaries come from $KEELFS,\n"+
			"$S3CLI and $VERSITYGW (make bench sets them), else bin/ and .tools/bin/.\n\n")
		fs.PrintDefaults()
	}
	size := fs.String("size", "1GiB", "size of the big object (sequential and random reads, the big write)")
	systems := fs.String("systems", strings.Join(allColumns, ","), "comma list of columns to run")
	fs.StringVar(&opt.out, "out", "", "also write the report (method, machine, table, every run, problems) to this markdown file")
	fs.IntVar(&opt.runs, "runs", 2, "rounds: how many times each column runs, interleaved with the others")
	fs.IntVar(&opt.manyFiles, "many", 100000, "objects in the big directory listed by ls -f and ls -l")
	fs.BoolVar(&opt.quick, "quick", false, "a short run: 64MiB (unless -size is given), fewer files and appends,\n"+
		"5000 objects in the big directory (unless -many is given), 3 s of random reads")
	fs.DurationVar(&opt.timeout, "timeout", 5*time.Minute, "time limit of each step of a workload")
	fs.StringVar(&opt.workDir, "workdir", "", "parent of the temporary directory (default $TMPDIR, or /var/tmp when that is tmpfs)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if opt.quick && !set["size"] {
		*size = "64MiB"
	}
	if opt.quick && !set["many"] {
		opt.manyFiles = 5000
	}
	if opt.runs < 1 {
		return nil, fmt.Errorf("-runs %d: give at least 1 (2 or more to see the spread)", opt.runs)
	}
	if opt.manyFiles < 1 {
		return nil, fmt.Errorf("-many %d: give at least 1", opt.manyFiles)
	}
	n, err := parseSize(*size)
	if err != nil || n < 1<<20 {
		return nil, fmt.Errorf("-size %q: give at least 1MiB, e.g. 64MiB or 1GiB", *size)
	}
	opt.size = n
	opt.smallFiles, opt.smallSize, opt.treeFiles, opt.appends, opt.fioRuntime = 2000, 4096, 400, 500, 10*time.Second
	if opt.quick {
		opt.smallFiles, opt.treeFiles, opt.appends, opt.fioRuntime = 500, 100, 100, 3*time.Second
	}
	for _, s := range strings.Split(*systems, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if _, ok := columnTitles[s]; !ok {
			return nil, fmt.Errorf("-systems: unknown %q (known: %s)", s, strings.Join(allColumns, ","))
		}
		opt.systems = append(opt.systems, s)
	}
	if len(opt.systems) == 0 {
		return nil, fmt.Errorf("-systems: nothing to run")
	}
	opt.keelfs = binary("KEELFS", "bin/keelfs")
	opt.s3cli = binary("S3CLI", "bin/s3cli")
	opt.versitygw = binary("VERSITYGW", ".tools/bin/versitygw")
	for _, p := range []struct{ env, path string }{{"KEELFS", opt.keelfs}, {"S3CLI", opt.s3cli}, {"VERSITYGW", opt.versitygw}} {
		if _, err := os.Stat(p.path); err != nil {
			return nil, fmt.Errorf("%s: %v (run `make bench`, which builds and installs it, or set $%s)", p.path, err, p.env)
		}
	}
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("run as root: the cold runs drop the kernel page cache")
	}
	return opt, nil
}

// binary is $env made absolute, else the path in the checkout.
func binary(env, def string) string {
	p := os.Getenv(env)
	if p == "" {
		p = def
	}
	if abs, err := filepath.Abs(p); err == nil {
		return abs
	}
	return p
}

func parseSize(s string) (int64, error) {
	t := strings.ToUpper(strings.TrimSpace(s))
	t = strings.TrimSuffix(strings.TrimSuffix(t, "B"), "I")
	mult := int64(1)
	for suffix, m := range map[string]int64{"K": 1 << 10, "M": 1 << 20, "G": 1 << 30} {
		if strings.HasSuffix(t, suffix) {
			t, mult = strings.TrimSuffix(t, suffix), m
		}
	}
	var n int64
	if _, err := fmt.Sscanf(t, "%d", &n); err != nil || fmt.Sprint(n) != t {
		return 0, fmt.Errorf("invalid size %q", s)
	}
	return n * mult, nil
}

// cleaner runs, once and in reverse order, what stops the things this
// program started. Something registered after it ran is stopped at once,
// so a daemon started while Ctrl-C is handled does not outlive us.
type cleaner struct {
	mu   sync.Mutex
	fns  []func()
	done bool
}

func (c *cleaner) add(f func()) {
	c.mu.Lock()
	if c.done {
		c.mu.Unlock()
		f()
		return
	}
	c.fns = append(c.fns, f)
	c.mu.Unlock()
}

func (c *cleaner) run() {
	c.mu.Lock()
	fns := c.fns
	c.fns, c.done = nil, true
	c.mu.Unlock()
	for i := len(fns) - 1; i >= 0; i-- {
		fns[i]()
	}
}

var logMu sync.Mutex

// logf prints a progress line to stderr.
func logf(format string, args ...any) {
	logMu.Lock()
	defer logMu.Unlock()
	fmt.Fprintf(os.Stderr, "%s %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}
