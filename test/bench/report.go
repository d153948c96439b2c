package main

import (
	"debug/buildinfo"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
)

type rowID int

const (
	rowReadCold rowID = iota
	rowReadWarm
	rowLsCold
	rowLsWarm
	rowWriteClose
	rowWriteS3
	rowUntarEnd
	rowUntarS3
	rowAppendEnd
	rowAppendS3
	rowRandRead
	rowRSS
	numRows
)

// rowDef is a workload row and its target from issue 6.
type rowDef struct {
	label  string // {size}, {files}, {tree}, {appends}, {fio} are filled in
	unit   string
	higher bool // higher is better (throughput, IOPS); else lower (time, memory)
	target string
	// peerFactor: keelfs's ratio to the best peer (oriented so that > 1
	// means keelfs is better) must be at least this; 0 for no such target.
	peerFactor float64
	// limit is the column of the limit that applies to the row; keelfs
	// must reach limitFactor of it (at least that share of a throughput,
	// at most that multiple of a time).
	limit       string
	limitFactor float64
	absMax      float64 // keelfs's value must stay below this; 0 for none
}

var rows = [numRows]rowDef{
	rowReadCold: {label: "seq read {size}, cold", unit: "MiB/s", higher: true,
		target: "≥ 90% of plain GET and ≥ best peer", peerFactor: 1, limit: "plain", limitFactor: 0.9},
	rowReadWarm: {label: "seq re-read {size}, warm", unit: "MiB/s", higher: true,
		target: "≥ 70% of tmpfs and ≥ 3× best peer", peerFactor: 3, limit: "tmpfs", limitFactor: 0.7},
	rowLsCold:     {label: "ls -l of {files} files, cold", unit: "ms", target: "≥ 2× faster than best peer", peerFactor: 2},
	rowLsWarm:     {label: "ls -l of {files} files, warm", unit: "ms", target: "≥ 2× faster than best peer", peerFactor: 2},
	rowWriteClose: {label: "write {size}, until close", unit: "s", target: "—"},
	rowWriteS3: {label: "write {size}, until in S3", unit: "s",
		target: "≤ 1.5× plain multipart PUT and ≥ 1.5× faster than best peer", peerFactor: 1.5, limit: "plain", limitFactor: 1.5},
	rowUntarEnd:  {label: "tar x of {tree} files, until tar exits", unit: "s", target: "≥ 2× faster than best peer", peerFactor: 2},
	rowUntarS3:   {label: "tar x of {tree} files, until all in S3", unit: "s", target: "no later than best peer", peerFactor: 1},
	rowAppendEnd: {label: "{appends} × open-append-close, until done", unit: "s", target: "≥ 2× faster than best peer", peerFactor: 2},
	rowAppendS3:  {label: "{appends} × open-append-close, until in S3", unit: "s", target: "no later than best peer", peerFactor: 1},
	rowRandRead: {label: "4 KiB random reads, {fio}, cold (fio)", unit: "IOPS", higher: true,
		target: "≥ 2× best peer", peerFactor: 2},
	rowRSS: {label: "peak RSS of the daemon", unit: "MiB", target: "< 100 MiB", absMax: 100},
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

// bestPeer is the peer column with the best value in row.
func (b *bench) bestPeer(row rowID) (string, float64) {
	best, bestV := "", 0.0
	for _, p := range peers {
		c, ok := b.get(row, p)
		if !ok || !c.ok || c.v <= 0 {
			continue
		}
		if best == "" || rows[row].ratio(c.v, bestV) > 1 {
			best, bestV = p, c.v
		}
	}
	return best, bestV
}

// verdict is the ratio cell and MET/MISSED for a row.
func (b *bench) verdict(row rowID) (ratio, result string) {
	def := rows[row]
	k, ok := b.get(row, "keelfs")
	peer, peerV := b.bestPeer(row)
	ratio = "—"
	if ok && k.ok && peer != "" {
		ratio = fmt.Sprintf("%.2f× (%s)", def.ratio(k.v, peerV), columnTitles[peer])
	}
	if def.peerFactor == 0 && def.limit == "" && def.absMax == 0 {
		return ratio, "—"
	}
	if !ok {
		return ratio, "—"
	}
	if !k.ok {
		return ratio, "MISSED (" + k.status + ")"
	}
	met := true
	var unknown []string
	if def.peerFactor > 0 {
		if peer == "" {
			unknown = append(unknown, "peer")
		} else if def.ratio(k.v, peerV) < def.peerFactor {
			met = false
		}
	}
	if def.limit != "" {
		l, ok := b.get(row, def.limit)
		switch {
		case !ok || !l.ok:
			unknown = append(unknown, columnTitles[def.limit])
		case def.higher && k.v < def.limitFactor*l.v, !def.higher && k.v > def.limitFactor*l.v:
			met = false
		}
	}
	if def.absMax > 0 && k.v >= def.absMax {
		met = false
	}
	switch {
	case !met:
		return ratio, "MISSED"
	case len(unknown) > 0:
		return ratio, "not judged (no " + strings.Join(unknown, ", ") + " result)"
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
	head = append(head, "keelfs vs best peer (>1 = keelfs better)", "target (issue 6)", "result")
	sb.WriteString("| " + strings.Join(head, " | ") + " |\n")
	sb.WriteString("|" + strings.Repeat("---|", len(head)) + "\n")
	for row := rowID(0); row < numRows; row++ {
		def := rows[row]
		line := []string{fmt.Sprintf("%s (%s)", b.rowLabel(row), def.unit)}
		for _, col := range b.opt.systems {
			c, ok := b.get(row, col)
			switch {
			case !ok:
				line = append(line, "")
			case c.ok:
				line = append(line, def.format(c.v))
			default:
				line = append(line, c.status)
			}
		}
		ratio, result := b.verdict(row)
		if result == "MET" || result == "MISSED" {
			result = "**" + result + "**"
		}
		line = append(line, ratio, def.target, result)
		sb.WriteString("| " + strings.Join(line, " | ") + " |\n")
	}
	return sb.String()
}

// document is docs/benchmarks.md.
func (b *bench) document(table string) string {
	var sb strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&sb, format, args...) }
	w("# keelfs benchmarks\n\n")
	reduced := b.opt.size < 1<<30 || b.opt.quick || len(b.opt.systems) < len(allColumns)
	if reduced {
		w("> **Validation run, not the benchmark.** It was made with `%s` (big object %s)\n"+
			"> to check that every system and workload runs; the numbers are not representative.\n"+
			"> The benchmark is `make bench` (1 GiB, all systems) on a quiet machine.\n\n",
			strings.Join(append([]string{"go run ./test/bench"}, os.Args[1:]...), " "), sizeString(b.opt.size))
	}
	w("`make bench` (the program in `test/bench`) starts a private versitygw S3 server on a loopback\n" +
		"port, creates the data with a plain S3 client, then runs the same fixed workloads on keelfs, on\n" +
		"its peers s3fs and rclone mount (each in two cache modes), and on two limits: the plain parallel\n" +
		"S3 client (`test/s3cli`) and tmpfs. All mounts talk to the same server.\n\n")
	w("Run on %s. Reproduce with:\n\n```\nmake bench\n```\n\n", b.started.UTC().Format("2006-01-02 15:04 MST"))
	w("or `go run ./test/bench -h` for a shorter run (`-size 64MiB`, `-quick`, `-systems keelfs,s3fs`).\n\n")
	w("## Machine\n\n")
	w("- %s\n", machine())
	w("- load average when the run started: %s\n", b.loadavg)
	if load, err := strconv.ParseFloat(strings.Fields(b.loadavg + " 0")[0], 64); err == nil && load > float64(runtime.NumCPU())/2 {
		w("- **the machine was busy** (load %.1f on %d CPUs): rerun on a quiet machine before trusting the numbers\n", load, runtime.NumCPU())
	}
	w("- server: %s, posix backend on %s, on loopback\n", versitygwVersion(b.opt.versitygw), fsTypeOf(b.work))
	w("- keelfs %s, %s, %s, %s, %s\n\n", keelfsVersion(b.opt.keelfs), firstLine("s3fs", "--version"),
		firstLine("rclone", "version"), firstLine("fio", "--version"), runtime.Version())
	w("## Results\n\n%s\n", table)
	w("The ratio is keelfs/best peer for throughput and IOPS, and best peer/keelfs for times and memory, so\n" +
		"above 1 always means keelfs is better; the best peer is named. Peers are s3fs, s3fs+cache, rclone\n" +
		"full and rclone writes; the plain client and tmpfs are limits, not peers.\n\n")
	w("## How each system is mounted\n\n")
	for _, col := range b.opt.systems {
		if sys := fsSystems[col]; sys != nil {
			w("- %s: `%s`\n", columnTitles[col], sys.mountCommand(b))
		}
	}
	w("- plain S3 client: `s3cli bigget bench data/big` (ranged GETs of 8 MiB, 8 at a time) and\n" +
		"  `s3cli bigput bench KEY SIZE` (multipart upload, 16 MiB parts, 8 at a time)\n")
	w("- tmpfs: the same Go read loop on a file in /dev/shm, the best of three reads\n\n")
	w("Every mount is of the whole bucket, in the foreground, with each tool's defaults apart from what\n" +
		"is needed to reach the server. Each system writes below its own prefix `out-NAME/`.\n\n")
	w("## Method\n\n")
	w("- Each workload runs on a fresh mount with a fresh, empty cache directory. \"Cold\" steps come\n" +
		"  first on their mount, after `echo 3 > /proc/sys/vm/drop_caches` (which also empties the\n" +
		"  server's page cache); \"warm\" steps repeat the cold one at once on the same mount.\n")
	w("- Sequential reads: a Go loop of 1 MiB `read(2)`s of `data/big`, an object written by s3cli\n" +
		"  (multipart); every byte is counted.\n")
	w("- `ls -l` of `data/small`, %d objects of %d bytes written by s3cli fill; the listing must\n"+
		"  have every entry.\n", b.opt.smallFiles, b.opt.smallSize)
	w("- Write: like `dd bs=1M`, %s of random bytes in 1 MiB writes to a new file, timed to the end of\n"+
		"  `close(2)`, and to when HeadObject shows the whole object (polled every %v from the start).\n",
		sizeString(b.opt.size), pollEvery)
	w("- `tar -x --no-same-owner` of a generated tar of %d files of 1-40 KiB in nested directories\n"+
		"  (`tree/dNN/sN/`, the same bytes every run), timed to tar's exit, and to when ListObjectsV2\n"+
		"  shows every file with its size (polled every %v).\n", b.opt.treeFiles, 2*pollEvery)
	w("- Appends: %d cycles of open(O_APPEND), write one 64-byte line, close on one file, timed to\n"+
		"  the last close, and to when the object has all %d bytes.\n", b.opt.appends, b.opt.appends*64)
	w("- Random reads: `fio --rw=randread --bs=4k --ioengine=psync --direct=0 --runtime=%d\n"+
		"  --time_based` on `data/big` on a fresh mount after dropping the page cache; read IOPS.\n",
		int(b.opt.fioRuntime.Seconds()))
	w("- Peak RSS: the highest VmHWM of the daemon process over all of the system's mounts.\n")
	w("- Each step has a time limit of %v; a step that hits it is recorded as `timeout` (the\n"+
		"  mount is then aborted), one that fails as `error`, and the rest of that mount's steps as\n"+
		"  `skipped`.\n", b.opt.timeout)
	w("- Metadata caches keep their defaults: keelfs trusts names and attributes for `--metadata-ttl`\n" +
		"  (1 s); s3fs keeps attributes for `stat_cache_expire` (900 s) and lists again; rclone keeps\n" +
		"  listings for `--dir-cache-time` (5 min). A warm `ls -l` that starts more than 1 s after the\n" +
		"  cold one began therefore lists and checks S3 again on keelfs.\n")
	w("- rclone uploads a closed file after `--vfs-write-back` (default 5 s) and keelfs after\n" +
		"  `--write-back-delay` (default 1 s); s3fs uploads during `close(2)`. The \"until in S3\" rows\n" +
		"  include these delays: they are what a reader elsewhere sees.\n")
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
