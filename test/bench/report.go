package main

import (
	"debug/buildinfo"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

type rowID int

const (
	rowReadCold rowID = iota
	rowReadWarm
	rowRandCold
	rowRandCached
	rowLsCold
	rowLsWarm
	rowLsfMany
	rowLslMany
	rowWriteClose
	rowWriteS3
	rowUntarEnd
	rowUntarS3
	rowAppendEnd
	rowAppendS3
	rowWriteUsedClose
	rowWriteUsedS3
	rowRSS
	numRows
)

// rowDef is a workload row and its target from issue 17.
type rowDef struct {
	label  string // {size}, {files}, {many}, {tree}, {appends}, {fio} are filled in
	unit   string
	higher bool // higher is better (throughput, IOPS); else lower (time, memory)
	// worst: the row reports and judges the worst run, not the best (peak
	// memory must stay under its bound in every run).
	worst  bool
	target string // "" for a row without a target
	// peerFactor: keelfs's ratio to the best peer (oriented so that > 1
	// means keelfs is better) must be at least this; 0 for no such target.
	peerFactor float64
	// limit is the column of the limit that applies to the row; keelfs
	// must reach limitFactor of it (at least that share of a throughput,
	// at most that multiple of a time).
	limit       string
	limitFactor float64
	maxSpread   float64 // keelfs's spread must stay below this; 0 for none
	absMax      float64 // keelfs's value must stay below this; 0 for none
}

var rows = [numRows]rowDef{
	rowReadCold: {label: "seq read {size}, cold", unit: "MiB/s", higher: true,
		target: "≥ 90% of plain GET, spread < 15%", limit: "plain", limitFactor: 0.9, maxSpread: 0.15},
	rowReadWarm: {label: "seq re-read {size}, warm", unit: "MiB/s", higher: true},
	rowRandCold: {label: "4 KiB random reads {fio}, cold", unit: "IOPS", higher: true},
	rowRandCached: {label: "4 KiB random reads {fio}, file already cached", unit: "IOPS", higher: true,
		target: "≥ 5× best peer, ≥ 1/1.5 of local file", peerFactor: 5, limit: "local", limitFactor: 1 / 1.5},
	rowLsCold: {label: "ls -l of {files} files, cold", unit: "ms",
		target: "≥ best peer, ≤ 1.3× plain LIST + HEADs", peerFactor: 1, limit: "plain", limitFactor: 1.3},
	rowLsWarm: {label: "ls -l of {files} files, warm", unit: "ms", target: "≥ 3× faster than best peer", peerFactor: 3},
	rowLsfMany: {label: "ls -f of {many} files, cold", unit: "ms",
		target: "≤ 1.5× plain paginated LIST", limit: "plain", limitFactor: 1.5},
	rowLslMany:    {label: "ls -l of {many} files, cold", unit: "ms", target: "≥ best peer", peerFactor: 1},
	rowWriteClose: {label: "write {size} on a fresh mount, until close", unit: "s"},
	rowWriteS3: {label: "write {size} on a fresh mount, until in S3", unit: "s",
		target: "≤ 1.5× plain multipart PUT", limit: "plain", limitFactor: 1.5},
	rowUntarEnd:       {label: "tar x of {tree} files, until tar exits", unit: "s", target: "≥ 2× faster than best peer", peerFactor: 2},
	rowUntarS3:        {label: "tar x of {tree} files, until all in S3", unit: "s", target: "no later than best peer", peerFactor: 1},
	rowAppendEnd:      {label: "{appends} × open-append-close, until done", unit: "s", target: "≥ 2× faster than best peer", peerFactor: 2},
	rowAppendS3:       {label: "{appends} × open-append-close, until in S3", unit: "s", target: "no later than best peer", peerFactor: 1},
	rowWriteUsedClose: {label: "write {size} after tar, appends and a read, until close", unit: "s"},
	rowWriteUsedS3: {label: "write {size} after tar, appends and a read, until in S3", unit: "s",
		target: "≤ 1.5× plain multipart PUT", limit: "plain", limitFactor: 1.5},
	rowRSS: {label: "peak RSS of the daemon, any workload (ls -l of {many} included)", unit: "MiB", worst: true,
		target: "< 100 MiB in every run", absMax: 100},
}

func (r rowDef) format(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.2f", v)
}

func (b *bench) rowLabel(row rowID) string {
	return strings.NewReplacer(
		"{size}", sizeString(b.opt.size),
		"{files}", fmt.Sprint(b.opt.smallFiles),
		"{many}", fmt.Sprint(b.opt.manyFiles),
		"{tree}", fmt.Sprint(b.opt.treeFiles),
		"{appends}", fmt.Sprint(b.opt.appends),
		"{fio}", fmt.Sprintf("%v", b.opt.fioRuntime),
	).Replace(rows[row].label)
}

// ratio is keelfs's value against another, oriented so that > 1 means
// keelfs is better.
func (r rowDef) ratio(keelfs, other float64) float64 {
	if keelfs <= 0 || other <= 0 {
		return 0
	}
	if r.higher {
		return keelfs / other
	}
	return other / keelfs
}

// summary is what the runs of one cell come to.
type summary struct {
	runs, ok int
	// v is the value shown and judged: the best run, or the worst for a
	// row that judges the worst.
	v      float64
	lo, hi float64  // lowest and highest run
	failed []string // status of each run without a number
}

// spread is how far apart the runs are: (highest − lowest) / the value
// shown.
func (s summary) spread() float64 {
	if s.ok < 2 || s.v <= 0 {
		return 0
	}
	return (s.hi - s.lo) / s.v
}

func (b *bench) summary(row rowID, col string) (summary, bool) {
	runs, ok := b.res[row][col]
	if !ok || len(runs) == 0 {
		return summary{}, false
	}
	def := rows[row]
	s := summary{runs: len(runs)}
	for _, r := range runs {
		if !r.ok {
			s.failed = append(s.failed, r.status)
			continue
		}
		if s.ok == 0 {
			s.lo, s.hi = r.v, r.v
		}
		s.ok++
		s.lo, s.hi = min(s.lo, r.v), max(s.hi, r.v)
	}
	if s.ok > 0 {
		if def.higher != def.worst {
			s.v = s.hi
		} else {
			s.v = s.lo
		}
	}
	return s, true
}

// cell is how a summary reads in the table: the value and, in brackets,
// the spread and the runs that failed.
func (b *bench) cell(row rowID, col string) string {
	s, ok := b.summary(row, col)
	if !ok {
		return ""
	}
	if s.ok == 0 {
		return s.failed[0]
	}
	var extra []string
	if s.ok >= 2 {
		extra = append(extra, fmt.Sprintf("%.0f%%", 100*s.spread()))
	}
	count := map[string]int{}
	var order []string
	for _, f := range s.failed {
		if count[f] == 0 {
			order = append(order, f)
		}
		count[f]++
	}
	for _, f := range order {
		extra = append(extra, fmt.Sprintf("%d× %s", count[f], f))
	}
	out := rows[row].format(s.v)
	if len(extra) > 0 {
		out += " (" + strings.Join(extra, ", ") + ")"
	}
	return out
}

// peersTimedOut reports whether some peer ran out of the step's time in
// row (and none gave a value: the caller asks when there is no best peer).
func (b *bench) peersTimedOut(row rowID) bool {
	for _, p := range peers {
		if s, ok := b.summary(row, p); ok && s.ok == 0 && slices.Contains(s.failed, "timeout") {
			return true
		}
	}
	return false
}

// bestPeer is the peer column with the best value in row.
func (b *bench) bestPeer(row rowID) (string, float64) {
	best, bestV := "", 0.0
	for _, p := range peers {
		s, ok := b.summary(row, p)
		if !ok || s.ok == 0 || s.v <= 0 {
			continue
		}
		if best == "" || rows[row].ratio(s.v, bestV) > 1 {
			best, bestV = p, s.v
		}
	}
	return best, bestV
}

// verdict is the ratio cell and MET/MISSED for a row. A row is met only
// when every run of keelfs gave a number and every part of its target
// holds on the values shown.
func (b *bench) verdict(row rowID) (ratio, result string) {
	def := rows[row]
	k, ok := b.summary(row, "keelfs")
	peer, peerV := b.bestPeer(row)
	ratio = "—"
	if ok && k.ok > 0 && peer != "" {
		ratio = fmt.Sprintf("%.2f× (%s)", def.ratio(k.v, peerV), columnTitles[peer])
	}
	if def.target == "" || !ok {
		return ratio, "—"
	}
	if k.ok == 0 {
		return ratio, "MISSED (" + k.failed[0] + ")"
	}
	if len(k.failed) > 0 {
		return ratio, fmt.Sprintf("MISSED (%d of %d runs %s)", len(k.failed), k.runs, k.failed[0])
	}
	var missed, unknown []string
	if def.peerFactor > 0 {
		if peer == "" {
			// keelfs finished within the step's time limit; a peer that
			// ran out of it did worse, whatever the factor.
			if !b.peersTimedOut(row) {
				unknown = append(unknown, "no peer result")
			}
		} else if def.ratio(k.v, peerV) < def.peerFactor {
			missed = append(missed, "peer")
		}
	}
	if def.limit != "" {
		l, ok := b.summary(row, def.limit)
		switch {
		case !ok || l.ok == 0:
			unknown = append(unknown, "no "+columnTitles[def.limit]+" result")
		case def.higher && k.v < def.limitFactor*l.v, !def.higher && k.v > def.limitFactor*l.v:
			missed = append(missed, fmt.Sprintf("%.2f× %s", k.v/l.v, columnTitles[def.limit]))
		}
	}
	if def.maxSpread > 0 {
		if k.ok < 2 {
			unknown = append(unknown, "one run, no spread")
		} else if k.spread() >= def.maxSpread {
			missed = append(missed, fmt.Sprintf("spread %.0f%%", 100*k.spread()))
		}
	}
	if def.absMax > 0 && k.v >= def.absMax {
		missed = append(missed, "bound")
	}
	switch {
	case len(missed) > 0:
		return ratio, "MISSED (" + strings.Join(missed, ", ") + ")"
	case len(unknown) > 0:
		return ratio, "not judged (" + strings.Join(unknown, ", ") + ")"
	}
	return ratio, "MET"
}

// table is the markdown results table.
func (b *bench) table() string {
	var sb strings.Builder
	head := []string{"workload"}
	for _, c := range b.opt.systems {
		head = append(head, columnTitles[c])
	}
	head = append(head, "keelfs vs best peer (>1 = keelfs better)", "target (issue 17)", "result")
	sb.WriteString("| " + strings.Join(head, " | ") + " |\n")
	sb.WriteString("|" + strings.Repeat("---|", len(head)) + "\n")
	for row := rowID(0); row < numRows; row++ {
		def := rows[row]
		line := []string{fmt.Sprintf("%s (%s)", b.rowLabel(row), def.unit)}
		for _, col := range b.opt.systems {
			line = append(line, b.cell(row, col))
		}
		ratio, result := b.verdict(row)
		if verdict, rest, _ := strings.Cut(result, " "); verdict == "MET" || verdict == "MISSED" {
			result = strings.TrimSpace("**" + verdict + "** " + rest)
		}
		target := def.target
		if target == "" {
			target = "—"
		}
		line = append(line, ratio, target, result)
		sb.WriteString("| " + strings.Join(line, " | ") + " |\n")
	}
	return sb.String()
}

// runsTable lists every run's value of every cell, in the order of the
// rounds.
func (b *bench) runsTable() string {
	var sb strings.Builder
	head := []string{"workload"}
	for _, c := range b.opt.systems {
		head = append(head, columnTitles[c])
	}
	sb.WriteString("| " + strings.Join(head, " | ") + " |\n")
	sb.WriteString("|" + strings.Repeat("---|", len(head)) + "\n")
	for row := rowID(0); row < numRows; row++ {
		line := []string{fmt.Sprintf("%s (%s)", b.rowLabel(row), rows[row].unit)}
		for _, col := range b.opt.systems {
			var vals []string
			for _, r := range b.res[row][col] {
				if r.ok {
					vals = append(vals, rows[row].format(r.v))
				} else {
					vals = append(vals, r.status)
				}
			}
			line = append(line, strings.Join(vals, ", "))
		}
		sb.WriteString("| " + strings.Join(line, " | ") + " |\n")
	}
	return sb.String()
}

// document is docs/benchmarks.md.
func (b *bench) document(table string) string {
	var sb strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&sb, format, args...) }
	o := b.opt
	w("# keelfs benchmarks\n\n")
	reduced := o.size < 1<<30 || o.quick || o.runs < 2 || o.manyFiles < 100000 || len(o.systems) < len(allColumns)
	if reduced {
		w("> **Validation run, not the benchmark.** It was made with `%s` (big object %s)\n"+
			"> to check that every system and workload runs; the numbers are not representative.\n"+
			"> The benchmark is `make bench` (1 GiB, all systems, two rounds) on a quiet machine.\n\n",
			strings.Join(append([]string{"go run ./test/bench"}, os.Args[1:]...), " "), sizeString(o.size))
	}
	w("`make bench` (the program in `test/bench`) starts a private versitygw S3 server on a loopback\n" +
		"port, creates the data with a plain S3 client, then runs the same fixed workloads on keelfs, on\n" +
		"its peers s3fs and rclone mount (each in two cache modes), and on three limits: the plain S3\n" +
		"client (`test/s3cli`), a local file on the file system of the cache directories, and tmpfs.\n" +
		"All mounts talk to the same server.\n\n")
	w("Run on %s; it took %v. Reproduce with:\n\n```\nmake bench\n```\n\n",
		b.started.UTC().Format("2006-01-02 15:04 MST"), b.elapsed.Round(time.Minute))
	w("or `go run ./test/bench -h` for a shorter run (`-quick`, `-size 64MiB`, `-systems keelfs,s3fs`).\n\n")
	w("## Machine\n\n")
	w("- %s\n", machine())
	w("- load average when the run started: %s\n", b.loadavg)
	if load, err := strconv.ParseFloat(strings.Fields(b.loadavg + " 0")[0], 64); err == nil && load > float64(runtime.NumCPU())/2 {
		w("- **the machine was busy** (load %.1f on %d CPUs): rerun on a quiet machine before trusting the numbers\n", load, runtime.NumCPU())
	}
	w("- server: %s, posix backend on %s, on loopback\n", versitygwVersion(o.versitygw), fsTypeOf(b.work))
	w("- keelfs %s, %s, %s, %s, %s\n\n", keelfsVersion(o.keelfs), firstLine("s3fs", "--version"),
		firstLine("rclone", "version"), firstLine("fio", "--version"), runtime.Version())
	w("## Results\n\n")
	w("Every column ran %d times. Each cell is the best of its runs (the highest throughput, the\n"+
		"shortest time; for peak RSS the highest, as the bound holds only if every run keeps it) and, in\n"+
		"brackets, the spread of the runs: (highest − lowest) / the value shown. A run that failed is\n"+
		"counted in the brackets (`1× timeout`) and the cell shows the best of the others. Every\n"+
		"run's value is in [Every run](#every-run).\n\n", o.runs)
	w("%s\n", table)
	w("The ratio is keelfs/best peer for throughput and IOPS, and best peer/keelfs for times and memory, so\n" +
		"above 1 always means keelfs is better; the best peer is named. Peers are s3fs, s3fs+cache, rclone\n" +
		"full and rclone writes; the plain client, the local file and tmpfs are limits, not peers. Ratios\n" +
		"and targets use the values shown (the best runs); the spread target uses the spread. A target is\n" +
		"MET only if every run of keelfs gave a number; a MISSED says which part failed (`peer`, the\n" +
		"ratio to a limit, the spread, the bound).\n\n")
	w("## How each system is mounted\n\n")
	for _, col := range o.systems {
		if sys := fsSystems[col]; sys != nil {
			w("- %s: `%s`\n", columnTitles[col], sys.mountCommand(b))
		}
	}
	w("- plain S3 client (`test/s3cli`), one process per measurement, timed inside it from its first\n" +
		"  request to its last answer:\n" +
		"  - cold sequential read: `s3cli bigget bench data/big`, a HEAD, then ranged GETs of 8 MiB,\n" +
		"    8 at a time, bytes discarded;\n" +
		"  - big write: `s3cli bigput bench KEY SIZE`, a multipart upload of 16 MiB parts, 8 at a\n" +
		"    time, until CompleteMultipartUpload returns. It runs once per round and is the limit of\n" +
		"    both write rows;\n" +
		"  - cold `ls -l`: `s3cli lsl bench DIR`, the listing a directory read needs (ListObjectsV2\n" +
		"    with delimiter `/`, every page) plus a HEAD of every object, 32 in flight (keelfs's\n" +
		"    default number of HEADs while it fills a directory), started as each page arrives: what\n" +
		"    keelfs must ask S3 to show the owner, mode and mtime kept in `x-amz-meta-*`. The limit of\n" +
		"    the cold `ls -l` of the small directory; of the big one it is shown for reference only;\n" +
		"  - cold `ls -f`: `s3cli lsf bench DIR`, the same paginated listing alone.\n")
	w("- local file: the limit of random reads of a cached file. A file of the same size is written on\n"+
		"  the file system that holds the cache directories (%s here), read whole once so it is in\n"+
		"  the page cache, then the same fio job (`--invalidate=0`) runs on it.\n", fsTypeOf(b.work))
	w("- tmpfs: the same Go read loop on a file in /dev/shm, the best of three reads per round\n\n")
	w("Every mount is of the whole bucket, in the foreground, with each tool's defaults apart from what\n" +
		"is needed to reach the server. Each system writes below its own prefix `out-NAME/`, which is\n" +
		"emptied at the end of each of its rounds.\n\n")
	w("## Method\n\n")
	var order []string
	for _, c := range o.systems {
		order = append(order, columnTitles[c])
	}
	w("- **Rounds.** The run is %d rounds. Each round runs every column once, in the order of the\n"+
		"  table (%s), and the next round starts again with the first. A slow minute of the machine\n"+
		"  therefore hits one run of a system, not its whole column, and every system equally often;\n"+
		"  the spread shows how much the runs moved.\n", o.runs, strings.Join(order, ", "))
	w("- **Mounts.** Within a round each system gets, in this order, a fresh mount with a fresh, empty\n" +
		"  cache directory for: (1) the sequential reads and the cached random reads; (2) the cold\n" +
		"  random reads; (3) `ls -l` of the small directory, cold then warm; (4) `ls -f` of the big\n" +
		"  directory; (5) `ls -l` of the big directory; (6) the big write; (7) tar x, then the appends,\n" +
		"  then a whole read of `data/big` (not measured), then the big write again. The big write is\n" +
		"  thus measured both on a fresh mount and on a mount that has already written, uploaded and\n" +
		"  cached other files. On (7), tar x and the appends are each followed until their files are\n" +
		"  wholly in S3 before the next step starts.\n")
	w("- **Cold** steps run after `echo 3 > /proc/sys/vm/drop_caches` (which also empties the\n" +
		"  server's page cache), on a mount that has not read that data or listed that directory;\n" +
		"  \"warm\" steps repeat the cold one at once on the same mount. The plain client's cold\n" +
		"  steps drop the page cache too.\n")
	w("- Sequential reads: a Go loop of 1 MiB `read(2)`s of `data/big` (%s), an object written by\n"+
		"  s3cli (multipart); every byte is counted.\n", sizeString(o.size))
	w("- Random reads: `fio --rw=randread --bs=4k --ioengine=psync --direct=0 --runtime=%d\n"+
		"  --time_based` on `data/big`, one thread; read IOPS. Cold: on a fresh mount after dropping\n"+
		"  the page cache. Already cached: on mount (1) right after the two sequential reads, so the\n"+
		"  file has been read whole twice and is in whatever cache the system keeps (for s3fs without\n"+
		"  `use_cache` that is none: its reads go to S3 again), and with `--invalidate=0`, so fio does\n"+
		"  not drop the file's page cache first; the local file limit runs the same job.\n",
		int(o.fioRuntime.Seconds()))
	w("- `ls -l` of `data/small`, %d objects of %d bytes, and `ls -f` (names only, no sort, no stat)\n"+
		"  and `ls -l` of `data/many`, %d objects of %d bytes, all written by `s3cli fill` from outside\n"+
		"  any mount; each listing must show every entry.\n", o.smallFiles, o.smallSize, o.manyFiles, manySize)
	w("- Big write: like `dd bs=1M`, %s of random bytes in 1 MiB writes to a new file, timed to the\n"+
		"  end of `close(2)`, and to when HeadObject shows the whole object (polled every %v from the\n"+
		"  start).\n", sizeString(o.size), pollEvery)
	w("- `tar -x --no-same-owner` of a generated tar of %d files of 1-40 KiB in nested directories\n"+
		"  (`tree/dNN/sN/`, the same bytes every run), timed to tar's exit, and to when ListObjectsV2\n"+
		"  shows every file with its size (polled every %v).\n", o.treeFiles, 2*pollEvery)
	w("- Appends: %d cycles of open(O_APPEND), write one 64-byte line, close on one file, timed to\n"+
		"  the last close, and to when the object has all %d bytes.\n", o.appends, o.appends*64)
	w("- Peak RSS: per round, the highest VmHWM of the daemon over all of the system's mounts in that\n" +
		"  round (read just before each unmount), so it covers `ls -l` of the big directory; the\n" +
		"  cell shows the highest round.\n")
	w("- Each step has a time limit of %v; a step that hits it is recorded as `timeout` (the\n"+
		"  mount is then aborted), one that fails as `error`, and the rest of that mount's steps as\n"+
		"  `skipped`. The next round tries again on new mounts.\n", o.timeout)
	w("- Metadata caches keep their defaults: keelfs trusts names and attributes for `--metadata-ttl`\n" +
		"  (1 s); s3fs keeps attributes for `stat_cache_expire` (900 s) and lists again; rclone keeps\n" +
		"  listings for `--dir-cache-time` (5 min). A warm `ls -l` that starts more than 1 s after the\n" +
		"  cold one began therefore lists and checks S3 again on keelfs.\n")
	w("- rclone uploads a closed file after `--vfs-write-back` (default 5 s) and keelfs after\n" +
		"  `--write-back-delay` (default 1 s), or once nothing on the mount has changed for a quarter\n" +
		"  of it for a file not uploaded lately; s3fs uploads during `close(2)`. The \"until in S3\"\n" +
		"  rows include these delays: they are what a reader elsewhere sees.\n")
	w("\n## Every run\n\nThe value of each run, in the order of the rounds.\n\n%s", b.runsTable())
	if len(b.notes) > 0 {
		w("\n## Problems in this run\n\n")
		for _, n := range b.notes {
			w("- %s\n", strings.ReplaceAll(n, "\n", " "))
		}
	}
	return sb.String()
}

func sizeString(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

func machine() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	mem := "?"
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "MemTotal:" {
				var kb int64
				fmt.Sscan(f[1], &kb)
				mem = fmt.Sprintf("%.1f GiB", float64(kb)/(1<<20))
			}
		}
	}
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return fmt.Sprintf("%d CPUs (%s), %s of memory, Linux %s", runtime.NumCPU(), model, mem, strings.TrimSpace(string(kernel)))
}

// fsTypeOf is the file system type of the mount that holds dir.
func fsTypeOf(dir string) string {
	best, typ := "", "?"
	for _, m := range mountFields() {
		if (dir == m[0] || strings.HasPrefix(dir, strings.TrimSuffix(m[0], "/")+"/")) && len(m[0]) >= len(best) {
			best, typ = m[0], m[1]
		}
	}
	return typ
}

func firstLine(name string, args ...string) string {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil && len(out) == 0 {
		return name + " (version unknown)"
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	for _, f := range strings.Fields(line) {
		// s3fs says "Amazon Simple Storage Service File System V1.90 (...)".
		if len(f) > 1 && f[0] == 'V' && f[1] >= '0' && f[1] <= '9' {
			line = name + " " + f
		}
	}
	if !strings.Contains(strings.ToLower(line), name) {
		line = name + " " + line
	}
	return line
}

func versitygwVersion(bin string) string {
	if bi, err := buildinfo.ReadFile(bin); err == nil && bi.Main.Version != "" {
		return "versitygw " + bi.Main.Version
	}
	return "versitygw (version unknown)"
}

// keelfsVersion is the commit of the checkout, and whether it had
// uncommitted changes (read without taking git's index lock, as others may
// be working in the same checkout).
func keelfsVersion(bin string) string {
	v := "(commit unknown)"
	if out, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output(); err == nil {
		v = "commit " + strings.TrimSpace(string(out))
	}
	dirty := false
	if bi, err := buildinfo.ReadFile(bin); err == nil {
		for _, s := range bi.Settings {
			dirty = dirty || s.Key == "vcs.modified" && s.Value == "true"
		}
	}
	if out, err := exec.Command("git", "--no-optional-locks", "status", "--porcelain", "--untracked-files=no").Output(); err == nil {
		dirty = dirty || len(strings.TrimSpace(string(out))) > 0
	}
	if dirty {
		v += " with uncommitted changes"
	}
	return v
}
