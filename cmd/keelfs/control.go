package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/spf13/pflag"

	"github.com/keelfs/keelfs/cache"
	kfs "github.com/keelfs/keelfs/fs"
)

// The daemon answers `keelfs status/flush/unmount` on a unix socket whose
// path an ioctl on the mount's root returns (kfs.ControlIoctl).

type controlServer struct {
	path string
	srv  *http.Server
	ln   net.Listener
}

// status is what `keelfs status` shows.
type status struct {
	MountPoint     string `json:"mountpoint"`
	Source         string `json:"source"`
	PendingFiles   int    `json:"pending_files"`
	PendingDeletes int    `json:"pending_deletes"`
	DirtyBytes     int64  `json:"dirty_bytes"`
	CachedBytes    int64  `json:"cached_bytes"`
	CacheSize      int64  `json:"cache_size"`
	Uploads        int64  `json:"uploads"`
	UploadErrors   int64  `json:"upload_errors"`
	Deletes        int64  `json:"deletes"`
	Conflicts      int64  `json:"conflicts"`
	CacheHits      int64  `json:"cache_hits"`
	CacheMisses    int64  `json:"cache_misses"`
	BytesUploaded  int64  `json:"bytes_uploaded"`
	OldestPending  string `json:"oldest_pending"`
	S3Requests     int64  `json:"s3_requests"`
	S3Failures     int64  `json:"s3_failures"`
	S3Retries      int64  `json:"s3_retries"`
	S3BytesUp      int64  `json:"s3_bytes_up"`
	S3BytesDown    int64  `json:"s3_bytes_down"`
	// The write-back's jobs by state, the changes that cannot be uploaded
	// (stuck) or keep failing (retrying), with the reason, and the
	// conflict copies made lately.
	Jobs      map[string]int       `json:"jobs"`
	Stuck     []cache.PendingItem  `json:"stuck,omitempty"`
	Retrying  []cache.PendingItem  `json:"retrying,omitempty"`
	Recent    []cache.ConflictInfo `json:"recent_conflicts,omitempty"`
	Unrecover int64                `json:"unrecoverable"`
	// Multipart uploads left open in S3 (a conflict, a delete or a crash
	// cut them short) that are still to be aborted, or why they could not
	// be counted.
	ToAbort    int    `json:"multipart_uploads_to_abort"`
	ToAbortErr string `json:"multipart_uploads_to_abort_error,omitempty"`
	// Whether S3 answers, since when it does not, and its last answer.
	S3Reachable bool      `json:"s3_reachable"`
	S3DownSince time.Time `json:"s3_down_since,omitempty"`
	S3DownError string    `json:"s3_down_error,omitempty"`
	S3LastOK    time.Time `json:"s3_last_ok"`
}

func (m *mount) status() status {
	clean, dirty := m.cache.Usage()
	files, deletes := m.cache.PendingCount()
	st := m.cache.Stats()
	wb := m.cache.Status()
	rs := m.reach.State()
	downErr := ""
	if rs.Err != nil {
		downErr = rs.Err.Error()
	}
	abortErr := ""
	if wb.ToAbortErr != nil {
		abortErr = wb.ToAbortErr.Error()
	}
	return status{
		ToAbort: wb.ToAbort, ToAbortErr: abortErr,
		S3Reachable: rs.Reachable, S3DownSince: rs.DownSince, S3DownError: downErr, S3LastOK: rs.LastOK,
		Jobs: wb.Jobs, Stuck: wb.Stuck, Retrying: wb.Retrying, Recent: wb.Conflicts, Unrecover: st.Unrecoverable.Load(),
		MountPoint: m.cfg.MountPoint, Source: "s3://" + m.cfg.Bucket + "/" + m.cfg.Prefix,
		PendingFiles: files, PendingDeletes: deletes, DirtyBytes: dirty, CachedBytes: clean + dirty,
		CacheSize: int64(m.cfg.CacheSize), Uploads: st.UploadsDone.Load(), UploadErrors: st.UploadErrors.Load(),
		Deletes: st.DeletesDone.Load(), Conflicts: st.Conflicts.Load(), CacheHits: st.CacheHits.Load(),
		CacheMisses: st.CacheMisses.Load(), BytesUploaded: st.BytesUploaded.Load(),
		OldestPending: m.cache.OldestPending().Round(time.Second).String(),
		S3Requests:    m.metrics.requests.Load(), S3Failures: m.metrics.failures.Load(), S3Retries: m.metrics.retries.Load(),
		S3BytesUp: m.metrics.bytesUp.Load(), S3BytesDown: m.metrics.bytesDown.Load(),
	}
}

func startControl(m *mount, cacheDir string) (*controlServer, error) {
	path := filepath.Join(cacheDir, "control.sock")
	if len(path) > 100 { // sun_path is 108 bytes
		sum := sha256.Sum256([]byte(cacheDir))
		dir := "/run/keelfs"
		if os.Geteuid() != 0 {
			dir = filepath.Join(os.TempDir(), fmt.Sprintf("keelfs-%d", os.Geteuid()))
		}
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, err
		}
		path = filepath.Join(dir, hex.EncodeToString(sum[:8])+".sock")
	}
	os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	os.Chmod(path, 0o600)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(m.status())
	})
	mux.HandleFunc("POST /flush", func(w http.ResponseWriter, r *http.Request) {
		// Progress lines while the journal drains, then "done", or one
		// "left" line (JSON) per change not in S3 and "error".
		flusher, _ := w.(http.Flusher)
		ctx := r.Context()
		if v := r.URL.Query().Get("timeout"); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil {
				http.Error(w, "bad timeout: "+err.Error(), http.StatusBadRequest)
				return
			}
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, d)
			defer cancel()
		}
		done := make(chan error, 1)
		var left []cache.PendingItem
		go func() {
			var err error
			left, err = m.cache.Drain(ctx)
			done <- err
		}()
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case err := <-done:
				if err == nil && len(left) == 0 {
					fmt.Fprintln(w, "done")
					return
				}
				for _, it := range left {
					b, _ := json.Marshal(it) // plain strings and numbers: cannot fail
					fmt.Fprintf(w, "left %s\n", b)
				}
				why := "they cannot be uploaded now"
				if errors.Is(err, context.DeadlineExceeded) {
					why = "the timeout passed first"
				} else if err != nil {
					why = err.Error()
				}
				fmt.Fprintf(w, "error %d changes not in S3: %s\n", len(left), why)
				return
			case <-t.C:
				st := m.status()
				fmt.Fprintf(w, "pending %d %d %d\n", st.PendingFiles, st.PendingDeletes, st.DirtyBytes)
				if flusher != nil {
					flusher.Flush()
				}
			}
		}
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	return &controlServer{path: path, srv: srv, ln: ln}, nil
}

func (s *controlServer) close() {
	if s == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	s.srv.Shutdown(ctx)
	os.Remove(s.path)
}

// controlClient returns an HTTP client bound to the daemon serving mnt.
func controlClient(mnt string) (*http.Client, error) {
	path, err := controlPath(mnt)
	if err != nil {
		return nil, err
	}
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}, nil
}

// errNotKeelfs: the directory is not the root of a keelfs mount.
var errNotKeelfs = errors.New("not a keelfs mount")

// controlPath asks the mount at mnt for its control socket. The errno of a
// failed open or ioctl is kept for errors.Is (ENOTCONN: the daemon died).
func controlPath(mnt string) (string, error) {
	// The extended attribute first: it costs the daemon no S3 request.
	xbuf := make([]byte, 4096)
	if n, err := unix.Getxattr(mnt, kfs.ControlXattr, xbuf); err == nil && n > 0 {
		return string(xbuf[:n]), nil
	}
	fd, err := unix.Open(mnt, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", withCode(exitMountPoint, fmt.Errorf("%s: %w", mnt, err))
	}
	defer unix.Close(fd)
	buf := make([]byte, 4096)
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(kfs.ControlIoctl), uintptr(unsafe.Pointer(&buf[0])))
	switch errno {
	case 0:
	case unix.ENOTTY, unix.ENOTSUP, unix.EINVAL, unix.ENOSYS:
		return "", withCode(exitMountPoint, fmt.Errorf("%s is %w", mnt, errNotKeelfs))
	default:
		return "", withCode(exitMountPoint, fmt.Errorf("%s: %w", mnt, errno))
	}
	n := bytes.IndexByte(buf, 0)
	if n <= 0 {
		return "", withCode(exitMountPoint, fmt.Errorf("%s is %w (no control socket)", mnt, errNotKeelfs))
	}
	return string(buf[:n]), nil
}

// commandHelp is the --help text of the commands that take a mount point.
var commandHelp = map[string]string{
	"status": `Shows what the mount is doing: files and bytes not yet in S3, the age of
the oldest pending change, cache use and hit ratio, uploads, conflicts and
S3 traffic.

Example:
  keelfs status /var/www/uploads`,
	"flush": `Uploads everything pending now and waits until S3 has it all. Shows a
progress bar on a terminal and plain lines otherwise. Exits non-zero if
uploads keep failing.

Examples:
  keelfs flush /data
  keelfs flush /data && tar czf /backup/data.tgz /data`,
	"unmount": `Uploads everything pending, then unmounts. Use it instead of umount when
the daemon should leave nothing behind in the cache.

Example:
  keelfs unmount /data`,
}

func oneMountPoint(cmd string, args []string) (string, error) {
	for _, a := range args {
		if a == "-h" || a == "--help" {
			fmt.Fprintf(os.Stderr, "Usage: keelfs %s MOUNTPOINT\n\n%s\n", cmd, commandHelp[cmd])
			return "", errHelpShown
		}
	}
	if len(args) != 1 {
		return "", usageErr("usage: keelfs %s MOUNTPOINT", cmd)
	}
	return filepath.Abs(args[0])
}

func statusCmd(args []string) error {
	mnt, err := oneMountPoint("status", args)
	if err != nil {
		return err
	}
	cl, err := controlClient(mnt)
	if err != nil {
		return err
	}
	resp, err := cl.Get("http://keelfs/status")
	if err != nil {
		return fmt.Errorf("ask the daemon: %w", err)
	}
	defer resp.Body.Close()
	var st status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return err
	}
	fmt.Printf("mount point:      %s\n", st.MountPoint)
	fmt.Printf("source:           %s\n", st.Source)
	if st.S3Reachable {
		fmt.Printf("s3:               reachable (last answer %s ago)\n", time.Since(st.S3LastOK).Round(time.Second))
	} else {
		fmt.Printf("s3:               UNREACHABLE since %s (%s): cached data is served, writes wait in the cache\n",
			st.S3DownSince.Local().Format(time.DateTime), st.S3DownError)
	}
	fmt.Printf("pending uploads:  %d files, %s not yet in S3\n", st.PendingFiles, humanBytes(st.DirtyBytes))
	fmt.Printf("pending deletes:  %d\n", st.PendingDeletes)
	if st.PendingFiles+st.PendingDeletes > 0 {
		fmt.Printf("oldest pending:   %s\n", st.OldestPending)
	}
	fmt.Printf("cache:            %s of %s used\n", humanBytes(st.CachedBytes), humanBytes(st.CacheSize))
	ratio := "n/a"
	if st.CacheHits+st.CacheMisses > 0 {
		ratio = fmt.Sprintf("%.1f%%", 100*float64(st.CacheHits)/float64(st.CacheHits+st.CacheMisses))
	}
	fmt.Printf("cache hit ratio:  %s (%d hits, %d misses)\n", ratio, st.CacheHits, st.CacheMisses)
	fmt.Printf("uploads:          %d done (%s), %d failed attempts\n", st.Uploads, humanBytes(st.BytesUploaded), st.UploadErrors)
	fmt.Printf("deletes:          %d done\n", st.Deletes)
	fmt.Printf("conflicts:        %d\n", st.Conflicts)
	for _, ci := range st.Recent {
		fmt.Printf("  %s  %s saved as %s\n", ci.Time.UTC().Format(time.RFC3339), ci.Path, ci.Key)
	}
	if len(st.Jobs) > 0 {
		var parts []string
		for _, s := range []string{"pending", "uploading", "backing-off", "waiting-for-key", "conflicted", "failed"} {
			if n := st.Jobs[s]; n > 0 {
				parts = append(parts, fmt.Sprintf("%d %s", n, s))
			}
		}
		fmt.Printf("upload jobs:      %s\n", strings.Join(parts, ", "))
	}
	if len(st.Stuck) > 0 {
		fmt.Printf("not uploaded (not retried until the file changes, a flush or a remount):\n")
		for _, it := range st.Stuck {
			fmt.Printf("  %s\n", describePending(it))
		}
	}
	if len(st.Retrying) > 0 {
		fmt.Printf("retrying:\n")
		for _, it := range st.Retrying {
			fmt.Printf("  %s\n", describePending(it))
		}
	}
	switch {
	case st.ToAbortErr != "":
		fmt.Printf("to abort:         unknown (%s)\n", st.ToAbortErr)
	case st.ToAbort > 0:
		fmt.Printf("to abort:         %d multipart uploads left open in S3 (aborted in the background and at every start)\n", st.ToAbort)
	}
	fmt.Printf("s3 requests:      %d (%d without answer or 5xx, %d retried)\n", st.S3Requests, st.S3Failures, st.S3Retries)
	fmt.Printf("s3 traffic:       %s up, %s down\n", humanBytes(st.S3BytesUp), humanBytes(st.S3BytesDown))
	return nil
}

func flushCmd(args []string) error {
	fs := pflag.NewFlagSet("flush", pflag.ContinueOnError)
	timeout := fs.Duration("timeout", 10*time.Minute, "give up after this long, naming what is not in S3 yet (0: wait as long as it takes)")
	fs.Usage = func() {
		fmt.Fprintf(os.Stderr, "Usage: keelfs flush MOUNTPOINT [--timeout DURATION]\n\n%s\n\nFlags:\n", commandHelp["flush"])
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return errHelpShown
		}
		return usageErr("%v (see keelfs flush --help)", err)
	}
	if fs.NArg() != 1 {
		return usageErr("usage: keelfs flush MOUNTPOINT [--timeout DURATION]")
	}
	if *timeout < 0 {
		return usageErr("--timeout must not be negative")
	}
	mnt, err := filepath.Abs(fs.Arg(0))
	if err != nil {
		return usageErr("%v", err)
	}
	return flush(mnt, *timeout)
}

// flush asks the daemon to upload everything now and shows progress until
// the journal is empty, or until only changes that cannot be uploaded are
// left (or timeout passes): it then names each, with the reason, and
// fails with exit status 7.
func flush(mnt string, timeout time.Duration) error {
	cl, err := controlClient(mnt)
	if err != nil {
		return err
	}
	url := "http://keelfs/flush"
	if timeout > 0 {
		url += "?timeout=" + timeout.String()
	}
	resp, err := cl.Post(url, "text/plain", nil)
	if err != nil {
		return fmt.Errorf("ask the daemon: %w", err)
	}
	defer resp.Body.Close()
	p := newProgress("flush")
	var left []string
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) == 4 && f[0] == "pending":
			var files, deletes int
			var dirty int64
			fmt.Sscan(f[1], &files)
			fmt.Sscan(f[2], &deletes)
			fmt.Sscan(f[3], &dirty)
			p.pending(files, deletes, dirty)
		case len(f) > 0 && f[0] == "done":
			p.done("everything is in S3")
			return nil
		case len(f) > 0 && f[0] == "left":
			var it cache.PendingItem
			if err := json.Unmarshal([]byte(strings.TrimPrefix(sc.Text(), "left ")), &it); err != nil {
				return fmt.Errorf("flush: bad answer from the daemon: %v", err)
			}
			left = append(left, describePending(it))
		case len(f) > 0 && f[0] == "error":
			p.done("")
			msg := strings.TrimPrefix(sc.Text(), "error ")
			if len(left) > 0 {
				msg += ":\n  " + strings.Join(left, "\n  ")
			}
			return withCode(exitPending, errors.New("flush: "+msg))
		}
	}
	return fmt.Errorf("flush: the daemon went away: %v", sc.Err())
}

// describePending is one line about a change not in S3: its path, what
// its upload is doing, and why it is not done.
func describePending(it cache.PendingItem) string {
	s := it.Path
	if it.State != "" {
		s += " (" + it.State
		if it.Attempts > 0 {
			s += fmt.Sprintf(", %d attempts", it.Attempts)
		}
		s += ")"
	}
	if it.Reason != "" {
		s += ": " + it.Reason
	}
	return s
}

func unmountCmd(args []string) error {
	mnt, err := oneMountPoint("unmount", args)
	if err != nil {
		return err
	}
	if err := flush(mnt, 10*time.Minute); err != nil {
		return err
	}
	if err := syscall.Unmount(mnt, 0); err != nil {
		if errors.Is(err, syscall.EPERM) {
			if out, ferr := runCmd("fusermount3", "-u", mnt); ferr != nil {
				return fmt.Errorf("unmount %s: %v %s", mnt, ferr, out)
			}
			return nil
		}
		return fmt.Errorf("unmount %s: %w", mnt, err)
	}
	return nil
}

// warmCmd reads files into the cache.
func warmCmd(args []string) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprintln(os.Stderr, "Usage: keelfs warm PATH...\n\nReads every file under the paths, so that later reads come from the cache.\nShows a progress bar on a terminal and plain lines otherwise.\n\nExamples:\n  keelfs warm /data/models\n  keelfs warm /srv/site/static /srv/site/templates")
		if len(args) == 0 {
			return usageErr("warm needs at least one path")
		}
		return errHelpShown
	}
	var files []string
	var total int64
	for _, a := range args {
		err := filepath.Walk(a, func(p string, info os.FileInfo, err error) error {
			if err != nil {
				return err
			}
			if info.Mode().IsRegular() {
				files = append(files, p)
				total += info.Size()
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	p := newProgress("warm")
	p.start(total)
	buf := make([]byte, 1<<20)
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			return err
		}
		for {
			n, err := fh.Read(buf)
			p.add(int64(n))
			if err == io.EOF {
				break
			}
			if err != nil {
				fh.Close()
				return fmt.Errorf("%s: %w", f, err)
			}
		}
		fh.Close()
	}
	p.done(fmt.Sprintf("%d files, %s in the cache", len(files), humanBytes(total)))
	return nil
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
