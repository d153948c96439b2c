package e2e

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/keelfs/keelfs/test/harness"
)

// scrape returns the Prometheus text exposition at url as sample line ->
// value, e.g. `keelfs_s3_bytes_total{direction="up"}` -> 1234.
func scrape(t *testing.T, url string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("scrape %s: %s", url, resp.Status)
	}
	out := make(map[string]float64)
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("bad sample %q", line)
		}
		out[line[:i]] = v
	}
	return out
}

// sum adds every sample of a metric whose labels contain all of sel.
func metricSum(samples map[string]float64, name string, sel ...string) float64 {
	var total float64
next:
	for k, v := range samples {
		if k != name && !strings.HasPrefix(k, name+"{") {
			continue
		}
		for _, s := range sel {
			if !strings.Contains(k, s) {
				continue next
			}
		}
		total += v
	}
	return total
}

func healthz(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("healthz: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b))
}

// TestOpsMetricsDuringCopy: /metrics shows the counters move while a file
// is copied in (FUSE writes, dirty bytes, pending files) and once it is
// uploaded (S3 PUT requests, bytes up); /healthz is ok, and fails once S3
// stops answering.
func TestOpsMetricsDuringCopy(t *testing.T) {
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	proxy := srv.StartProxy(t)
	addr := fmt.Sprintf("127.0.0.1:%d", harness.FreePort(t))
	m := srv.Mount(t, b, harness.MountOptions{Endpoint: proxy.Endpoint,
		Args: []string{"--metrics-addr", addr, "--write-back-delay", "1h"}})
	m.AllowLog(`s3 request failed|retrying|upload failed|s3 is unreachable`)
	url := "http://" + addr

	before := scrape(t, url+"/metrics")
	if code, body := healthz(t, url+"/healthz"); code != 200 {
		t.Fatalf("healthz on a healthy mount: %d %s", code, body)
	}
	// Under one part (16 MiB): a bigger file may send parts while it is
	// written and count a second upload for its headers (stream.go).
	data := randBytes(15 << 20)
	if err := os.WriteFile(m.Path("copy.bin"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	during := scrape(t, url+"/metrics")
	if got := metricSum(during, "keelfs_fuse_ops_total", `op="write"`, `result="ok"`) - metricSum(before, "keelfs_fuse_ops_total", `op="write"`, `result="ok"`); got < 15 {
		t.Errorf("fuse write ops went up by %v during a 15 MiB copy, want at least 15", got)
	}
	if got := metricSum(during, "keelfs_dirty_bytes"); got < float64(len(data)) {
		t.Errorf("keelfs_dirty_bytes = %v before the upload, want >= %d", got, len(data))
	}
	if got := metricSum(during, "keelfs_pending_files"); got != 1 {
		t.Errorf("keelfs_pending_files = %v, want 1", got)
	}
	if got := metricSum(during, "keelfs_oldest_pending_seconds"); got <= 0 {
		t.Errorf("keelfs_oldest_pending_seconds = %v with a file pending", got)
	}
	m.Flush()
	after := scrape(t, url+"/metrics")
	// Since before the copy: parts may go up while the file is written.
	if got := metricSum(after, "keelfs_s3_bytes_total", `direction="up"`) - metricSum(before, "keelfs_s3_bytes_total", `direction="up"`); got < float64(len(data)) {
		t.Errorf("bytes up went up by %v, want >= %d", got, len(data))
	}
	puts := metricSum(after, "keelfs_s3_requests_total", `op="PutObject"`) + metricSum(after, "keelfs_s3_requests_total", `op="UploadPart"`)
	if puts < 1 {
		t.Errorf("no PutObject/UploadPart requests counted: %v", after)
	}
	if got := metricSum(after, "keelfs_uploads_total"); got != 1 {
		t.Errorf("keelfs_uploads_total = %v, want 1", got)
	}
	if got := metricSum(after, "keelfs_dirty_bytes") + metricSum(after, "keelfs_pending_files"); got != 0 {
		t.Errorf("dirty bytes + pending files = %v after flush", got)
	}
	if metricSum(after, "keelfs_s3_request_duration_seconds_count") == 0 {
		t.Errorf("latency histogram is empty")
	}
	// Reading it back after dropping the cache counts misses, then hits.
	got, err := os.ReadFile(m.Path("copy.bin"))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back: %v", err)
	}

	// S3 stops answering: health turns bad within a bounded time.
	proxy.SetFault(func(op string, r *http.Request) (int, string, bool) { return 0, "", true })
	deadline := time.Now().Add(40 * time.Second)
	for {
		code, body := healthz(t, url+"/healthz")
		if code == 503 && strings.Contains(body, "S3 unreachable") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("healthz still %d %q 40s after S3 went away", code, body)
		}
		// Traffic lets the mount notice sooner; an idle mount probes.
		os.ReadDir(m.Path())
		time.Sleep(time.Second)
	}
	proxy.SetFault(nil)
	deadline = time.Now().Add(30 * time.Second)
	for {
		code, body := healthz(t, url+"/healthz")
		if code == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("healthz still %d %q after S3 came back", code, body)
		}
		time.Sleep(time.Second)
	}
	if got := metricSum(scrape(t, url+"/metrics"), "keelfs_s3_requests_total", `status="0"`); got == 0 {
		t.Errorf("no failed requests counted while S3 was away")
	}
}

// TestOpsStatus: `keelfs status` tells a person what is pending, and that
// nothing is once the uploads are done.
func TestOpsStatus(t *testing.T) {
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	m := srv.Mount(t, b, harness.MountOptions{Args: []string{"--write-back-delay", "1h"}})
	os.WriteFile(m.Path("a.txt"), bytes.Repeat([]byte("x"), 3000), 0o644)
	os.WriteFile(m.Path("b.txt"), []byte("y"), 0o644)
	status := func() string {
		out, err := exec.Command(harness.Binary(t), "status", m.Dir).CombinedOutput()
		if err != nil {
			t.Fatalf("keelfs status: %v\n%s", err, out)
		}
		return string(out)
	}
	out := status()
	for _, want := range []string{"mount point:      " + m.Dir, "s3://" + b, "oldest pending:", "conflicts:        0"} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
	// Dirty bytes are counted in cache blocks, so only the order of
	// magnitude is certain.
	if !regexp.MustCompile(`pending uploads:  2 files, [0-9.]+ KiB not yet in S3`).MatchString(out) {
		t.Errorf("status does not show 2 pending files of some KiB:\n%s", out)
	}
	m.Flush()
	out = status()
	for _, want := range []string{"pending uploads:  0 files, 0 B not yet in S3", "uploads:          2 done"} {
		if !strings.Contains(out, want) {
			t.Errorf("status after flush lacks %q:\n%s", want, out)
		}
	}
	// Not a keelfs mount: a clear error and a non-zero exit.
	cmd := exec.Command(harness.Binary(t), "status", t.TempDir())
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "not a keelfs mount") {
		t.Errorf("status of a plain directory: %v %q", err, out)
	}
}

// TestOpsNoSecretsInLogs: with credentials in the environment, a debug
// run with S3 errors, retries and a FUSE debug trace writes neither the
// secret key nor a request signature to the log, and the command line
// (what `ps` shows) holds no secret either.
func TestOpsNoSecretsInLogs(t *testing.T) {
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	proxy := srv.StartProxy(t)
	m := srv.Mount(t, b, harness.MountOptions{Endpoint: proxy.Endpoint, Args: []string{"--debug", "--log-format", "json"}})
	m.AllowLog(`.`) // this test provokes errors on purpose; it checks secrets instead
	var n atomic.Int64
	// Only uploads are throttled: a HEAD whose retries of a 503 happened
	// to add up past --s3-timeout (5 s) made S3 count as unreachable, the
	// creates below failed with EIO, and nothing logged SlowDown (seen
	// once in make test).
	proxy.SetFault(func(op string, r *http.Request) (int, string, bool) {
		if op == "PutObject" && n.Add(1)%3 == 0 {
			return 503, "SlowDown", false
		}
		return 0, "", false
	})
	for i := 0; i < 10; i++ {
		os.WriteFile(m.Path(fmt.Sprintf("f%d", i)), randBytes(1000), 0o644)
	}
	m.Flush()
	proxy.SetFault(func(op string, r *http.Request) (int, string, bool) { return 403, "InvalidAccessKeyId", false })
	os.WriteFile(m.Path("denied"), []byte("x"), 0o644)
	f, _ := os.OpenFile(m.Path("denied"), os.O_WRONLY, 0)
	if f != nil {
		f.Sync()
		f.Close()
	}
	proxy.SetFault(nil)
	m.Flush()
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", m.Pid()))
	if err != nil {
		t.Fatal(err)
	}
	logText := m.Log()
	if !strings.Contains(logText, "SlowDown") {
		t.Fatalf("the run did not log the injected errors; the scan would prove nothing:\n%s", opsTail(logText, 3000))
	}
	secrets := []string{srv.SecretKey}
	for _, s := range secrets {
		if strings.Contains(logText, s) {
			t.Errorf("log contains secret %q", s)
		}
		if bytes.Contains(cmdline, []byte(s)) {
			t.Errorf("command line contains secret %q", s)
		}
	}
	for _, re := range []string{`Signature=[0-9a-f]{16}`, `X-Amz-Signature`, `(?i)authorization:`, `X-Amz-Security-Token`} {
		if loc := regexp.MustCompile(re).FindStringIndex(logText); loc != nil {
			t.Errorf("log matches %s: %q", re, logText[max(0, loc[0]-100):min(len(logText), loc[1]+100)])
		}
	}
}

func opsTail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// TestOpsFstab: a keelfs line in an fstab, mounted by mount(8) through the
// mount.keelfs helper, in the form a Mountpoint user already has with only
// the type changed. The mount backgrounds once live, honours uid= and
// allow-other, and umount(8) makes it upload and exit.
func TestOpsFstab(t *testing.T) {
	harness.RequireFUSE(t)
	if _, err := exec.LookPath("mount"); err != nil {
		t.Fatalf("mount(8) not found: %v", err)
	}
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	srv.Put(t, b, "app/existing.txt", []byte("from s3"), nil)
	installMountHelper(t)
	dir, cacheDir := t.TempDir(), t.TempDir()
	cleanupFstabMount(t, dir)
	fstab := filepath.Join(t.TempDir(), "fstab")
	line := fmt.Sprintf("s3://%s/app/ %s keelfs _netdev,nosuid,nodev,nofail,rw,allow-other,uid=7,endpoint-url=%s,force-path-style,cache=%s,metadata-ttl=1 0 0\n",
		b, dir, srv.Endpoint, cacheDir)
	os.WriteFile(fstab, []byte("# test fstab\n"+line), 0o644)
	cmd := exec.Command("mount", "-a", "-T", fstab)
	cmd.Env = append(os.Environ(), srv.Env()...)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("mount -a -T %s: %v\n%s", fstab, err, out)
	}
	t.Logf("mount -a took %v", time.Since(start))
	if !harness.IsMounted(dir) {
		t.Fatalf("mount(8) returned but %s is not mounted", dir)
	}
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	var opts string
	for _, l := range strings.Split(string(mounts), "\n") {
		if strings.Contains(l, " "+dir+" ") {
			opts = l
		}
	}
	for _, want := range []string{"nosuid", "nodev", "allow_other", "fuse.keelfs"} {
		if !strings.Contains(opts, want) {
			t.Errorf("mountinfo lacks %s: %s", want, opts)
		}
	}
	got, err := os.ReadFile(filepath.Join(dir, "existing.txt"))
	if err != nil || string(got) != "from s3" {
		t.Fatalf("read through the fstab mount: %q %v", got, err)
	}
	var st syscall.Stat_t
	syscall.Stat(filepath.Join(dir, "existing.txt"), &st)
	if st.Uid != 7 {
		t.Errorf("uid=7 not applied: file uid %d", st.Uid)
	}
	if err := os.WriteFile(filepath.Join(dir, "new.txt"), []byte("via fstab"), 0o644); err != nil {
		t.Fatal(err)
	}
	pid := daemonFor(dir)
	if pid == 0 {
		t.Fatal("no keelfs daemon found for the mount")
	}
	if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
		t.Fatalf("umount: %v %s", err, out)
	}
	// After umount the daemon finishes the uploads, then exits.
	deadline := time.Now().Add(30 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			t.Fatalf("daemon %d still running 30s after umount", pid)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got, _ := srv.Get(t, b, "app/new.txt"); string(got) != "via fstab" {
		t.Fatalf("app/new.txt after umount: %q", got)
	}
	// In the background the daemon logs into its per-bucket cache directory.
	logs, _ := filepath.Glob(filepath.Join(cacheDir, "*", "keelfs.log"))
	if len(logs) != 1 {
		t.Fatalf("background log: found %q under %s", logs, cacheDir)
	}
	logText, _ := os.ReadFile(logs[0])
	if !bytes.Contains(logText, []byte("everything is in S3")) {
		t.Errorf("background log does not end cleanly:\n%s", logText)
	}
	if bytes.Contains(logText, []byte("level=WARN")) || bytes.Contains(logText, []byte("level=ERROR")) {
		t.Errorf("background log has warnings:\n%s", logText)
	}

	// A failing fstab line: mount(8) exits non-zero with the reason.
	bad := filepath.Join(t.TempDir(), "fstab")
	os.WriteFile(bad, []byte(fmt.Sprintf("no-such-bucket-x /%s keelfs endpoint=%s,force_path_style,cache_dir=%s 0 0\n",
		strings.TrimPrefix(dir, "/"), srv.Endpoint, t.TempDir())), 0o644)
	cmd = exec.Command("mount", "-a", "-T", bad)
	cmd.Env = append(os.Environ(), srv.Env()...)
	out, err = cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "bucket does not exist") {
		t.Errorf("mount of a missing bucket: %v %q", err, out)
	}
	if harness.IsMounted(dir) {
		t.Errorf("a failed mount left %s mounted", dir)
	}
}

// installMountHelper makes /sbin/mount.keelfs the binary under test for
// the test's duration, as `make install` would.
func installMountHelper(t *testing.T) {
	t.Helper()
	helper := "/sbin/mount.keelfs"
	if cur, err := os.Readlink(helper); err == nil {
		t.Cleanup(func() { os.Remove(helper); os.Symlink(cur, helper) })
	} else if _, err := os.Lstat(helper); err == nil {
		t.Fatalf("%s exists and is not a symlink; not replacing it", helper)
	} else {
		t.Cleanup(func() { os.Remove(helper) })
	}
	os.Remove(helper)
	if err := os.Symlink(harness.Binary(t), helper); err != nil {
		t.Fatalf("install %s: %v", helper, err)
	}
}

// cleanupFstabMount stops the daemon that mount(8) started at dir and
// detaches the mount, whatever the test left.
func cleanupFstabMount(t *testing.T, dir string) {
	t.Cleanup(func() {
		if pid := daemonFor(dir); pid != 0 {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		if harness.IsMounted(dir) {
			syscall.Unmount(dir, syscall.MNT_DETACH)
		}
	})
}

// mountinfoOf returns the per-mount options and the superblock options of
// the mount at dir, from /proc/self/mountinfo.
func mountinfoOf(t *testing.T, dir string) (mountOpts, superOpts []string) {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 10 || f[4] != dir {
			continue
		}
		for i, x := range f {
			if x == "-" && i+3 < len(f) {
				return strings.Split(f[5], ","), strings.Split(f[i+3], ",")
			}
		}
	}
	t.Fatalf("%s is not in /proc/self/mountinfo", dir)
	return nil, nil
}

func hasOpt(opts []string, o string) bool {
	for _, x := range opts {
		if x == o {
			return true
		}
	}
	return false
}

// TestOpsFstabMountOptions: the standard options mount(8) passes from an
// fstab line reach the mount. noexec, suid and dev are the kernel's (FUSE
// mounts nosuid,nodev unless told otherwise); sync makes close wait for
// S3; dirsync shows in the mount table and makes namespace changes wait
// (Cache.SyncDir); noatime keeps reads from moving atime.
func TestOpsFstabMountOptions(t *testing.T) {
	harness.RequireFUSE(t)
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	installMountHelper(t)
	dir, cacheDir := t.TempDir(), t.TempDir()
	cleanupFstabMount(t, dir)
	fstab := filepath.Join(t.TempDir(), "fstab")
	// A write-back delay of an hour: only sync can bring a closed file to
	// S3 at once. mount(8) hands a helper no bare suid or dev (they are a
	// disk file system's defaults, so it drops them): in fstab they are
	// written suid=true and dev=true.
	line := fmt.Sprintf("%s:/opts %s keelfs noexec,suid=true,dev=true,sync,dirsync,noatime,write-back-delay=1h,endpoint=%s,force-path-style,cache-dir=%s 0 0\n",
		b, dir, srv.Endpoint, cacheDir)
	if err := os.WriteFile(fstab, []byte(line), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("mount", "-a", "-T", fstab)
	cmd.Env = append(os.Environ(), srv.Env()...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("mount -a -T %s: %v\n%s", fstab, err, out)
	}
	mopts, sopts := mountinfoOf(t, dir)
	if !hasOpt(mopts, "noexec") || hasOpt(mopts, "nosuid") || hasOpt(mopts, "nodev") {
		t.Errorf("mount options %v: want noexec, and neither nosuid nor nodev", mopts)
	}
	if !hasOpt(sopts, "dirsync") || hasOpt(sopts, "sync") {
		t.Errorf("superblock options %v: want dirsync (and not the kernel's sync, which would upload at every write)", sopts)
	}

	// noexec: the kernel refuses to run a program from the mount.
	script := filepath.Join(dir, "prog.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho ran\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(script).CombinedOutput(); !errors.Is(err, syscall.EACCES) {
		t.Errorf("exec on a noexec mount: %v %q, want EACCES", err, out)
	}
	// sync: close returned, so the file is in S3 (the write-back delay is
	// an hour).
	if got, ok := srv.Get(t, b, "opts/prog.sh"); !ok || !strings.Contains(string(got), "echo ran") {
		t.Errorf("after close on a sync mount, S3 has %q %v", got, ok)
	}
	// dev: a device node on the mount opens (/dev/null's numbers).
	null := filepath.Join(dir, "null")
	if err := syscall.Mknod(null, syscall.S_IFCHR|0o666, int(1<<8|3)); err != nil {
		t.Fatalf("mknod: %v", err)
	}
	if fd, err := syscall.Open(null, syscall.O_WRONLY|syscall.O_CLOEXEC, 0); err != nil {
		t.Errorf("open a device on a dev mount: %v", err)
	} else {
		if n, err := syscall.Write(fd, []byte("into the void")); err != nil || n != 13 {
			t.Errorf("write to the null device: %d %v", n, err)
		}
		syscall.Close(fd)
	}
	// dirsync: namespace changes return once made durable.
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Errorf("mkdir on a dirsync mount: %v", err)
	}
	if err := os.Rename(filepath.Join(dir, "sub"), filepath.Join(dir, "sub2")); err != nil {
		t.Errorf("rename on a dirsync mount: %v", err)
	}
	// noatime: a read leaves atime alone.
	data := filepath.Join(dir, "data")
	if err := os.WriteFile(data, []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	old := time.Unix(1_000_000_000, 0)
	if err := os.Chtimes(data, old, time.Now()); err != nil {
		t.Fatal(err)
	}
	fd, err := syscall.Open(data, syscall.O_RDONLY|syscall.O_DIRECT|syscall.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, rerr := syscall.Read(fd, make([]byte, 4096))
	syscall.Close(fd)
	if rerr != nil {
		t.Fatalf("read: %v", rerr)
	}
	time.Sleep(1100 * time.Millisecond) // the kernel's attribute cache, one metadata TTL
	var st syscall.Stat_t
	if err := syscall.Stat(data, &st); err != nil || st.Atim.Sec != old.Unix() {
		t.Errorf("atime after a read on a noatime mount: %d %v, want %d", st.Atim.Sec, err, old.Unix())
	}
	if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
		t.Fatalf("umount: %v %s", err, out)
	}
}

// daemonFor finds the keelfs process serving dir.
func daemonFor(dir string) int {
	for pid, args := range keelfsProcs() {
		if slices.Contains(args[1:], dir) {
			return pid
		}
	}
	return 0
}

// keelfsProcs returns the running keelfs processes' arguments by pid.
func keelfsProcs() map[int][]string {
	procs := map[int][]string{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmd, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(cmd), "\x00")
		if strings.Contains(filepath.Base(args[0]), "keelfs") && !strings.HasSuffix(args[0], ".test") {
			procs[pid] = args
		}
	}
	return procs
}

// TestOpsStaleMountCleanup: a mount left behind by a crashed daemon
// (ENOTCONN) is detected and replaced by the next mount on the same
// directory, which also finishes the crashed one's uploads.
func TestOpsStaleMountCleanup(t *testing.T) {
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	m := srv.Mount(t, b, harness.MountOptions{Args: []string{"--write-back-delay", "1h"}})
	os.WriteFile(m.Path("survivor"), []byte("kept"), 0o644)
	m.Crash()
	_, err := os.Stat(m.Path("survivor"))
	if !errors.Is(err, syscall.ENOTCONN) {
		t.Fatalf("after the crash the mount should be stale (ENOTCONN), got %v", err)
	}
	m.AllowLog(`stale mount|resuming`)
	m.Remount()
	if got, err := os.ReadFile(m.Path("survivor")); err != nil || string(got) != "kept" {
		t.Fatalf("after remount over the stale mount: %q %v", got, err)
	}
	m.Flush()
	if got, _ := srv.Get(t, b, "survivor"); string(got) != "kept" {
		t.Fatalf("survivor in S3: %q", got)
	}
	if !strings.Contains(m.Log(), "stale") {
		t.Errorf("the stale mount was not reported in the log")
	}
}

// TestOpsSecondSigterm: the first SIGTERM starts a drain; a second one
// while S3 hangs stops at once, exits 7 and leaves the data for the next
// mount.
func TestOpsSecondSigterm(t *testing.T) {
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	proxy := srv.StartProxy(t)
	m := srv.Mount(t, b, harness.MountOptions{Endpoint: proxy.Endpoint,
		Args: []string{"--write-back-delay", "1h", "--shutdown-timeout", "5m"}})
	m.AllowLog(`second signal|s3 request failed|retrying|upload failed|not yet in S3|resuming`)
	os.WriteFile(m.Path("late.txt"), []byte("second chance"), 0o644)
	proxy.SetFault(func(op string, r *http.Request) (int, string, bool) { return 503, "SlowDown", false })
	m.Signal(syscall.SIGTERM)
	if _, done := m.Wait(2 * time.Second); done {
		t.Fatal("exited on the first SIGTERM while uploads could not finish")
	}
	start := time.Now()
	m.Signal(syscall.SIGTERM)
	code, done := m.Wait(15 * time.Second)
	if !done {
		t.Fatal("second SIGTERM did not stop the daemon within 15s")
	}
	if code != 7 {
		t.Fatalf("exit %d after a second SIGTERM with data pending, want 7", code)
	}
	t.Logf("stopped %v after the second SIGTERM", time.Since(start))
	if harness.IsMounted(m.Dir) {
		t.Fatal("still mounted")
	}
	proxy.SetFault(nil)
	m.Remount()
	m.Flush()
	if got, _ := srv.Get(t, b, "late.txt"); string(got) != "second chance" {
		t.Fatalf("late.txt in S3: %q", got)
	}
}

// TestOpsCLI: version, help with examples everywhere, documented exit
// codes for usage errors.
func TestOpsCLI(t *testing.T) {
	bin := harness.Binary(t)
	run := func(args ...string) (int, string) {
		out, err := exec.Command(bin, args...).CombinedOutput()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode(), string(out)
		} else if err != nil {
			t.Fatal(err)
		}
		return 0, string(out)
	}
	if code, out := run("version"); code != 0 || !regexp.MustCompile(`^keelfs \S+`).MatchString(out) {
		t.Errorf("keelfs version: %d %q", code, out)
	}
	for _, cmd := range [][]string{{"--help"}, {"mount", "--help"}, {"status", "--help"}, {"flush", "--help"},
		{"unmount", "--help"}, {"warm", "--help"}, {"run", "--help"}, {"health", "--help"}} {
		code, out := run(cmd...)
		if code != 0 || !strings.Contains(out, "Usage:") || !strings.Contains(out, "Example") {
			t.Errorf("keelfs %s: exit %d, want 0 with usage and examples:\n%s", strings.Join(cmd, " "), code, out)
		}
	}
	if code, out := run("frobnicate"); code != 2 || !strings.Contains(out, "unknown command") {
		t.Errorf("unknown command: %d %q", code, out)
	}
	if code, out := run("flush"); code != 2 {
		t.Errorf("flush without a mount point: %d %q", code, out)
	}
}
