package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	_ "net/http/pprof"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/spf13/pflag"

	"github.com/keelfs/keelfs/cache"
	kfs "github.com/keelfs/keelfs/fs"
	"github.com/keelfs/keelfs/s3backend"
)

const mountUsage = `Usage: keelfs mount BUCKET[/PREFIX] MOUNTPOINT [flags]

BUCKET may also be written s3://BUCKET/PREFIX or BUCKET:/PREFIX. Credentials
come from the standard AWS chain (environment, profile, web identity, ECS task
role, instance metadata), never from the command line. Every flag can also be
given as an -o option (cache_dir=/x or cache-dir=/x) or as an environment
variable KEELFS_<FLAG> (KEELFS_CACHE_DIR=/x).

Examples:
  keelfs mount s3://my-bucket/uploads /var/www/uploads
  keelfs mount my-bucket /data -f --endpoint http://127.0.0.1:9000 --force-path-style
  keelfs mount my-bucket/logs /logs --sync-on-close --metrics-addr 127.0.0.1:9100

Flags:
`

func mountCmd(args []string) error {
	cfg, err := parseMountArgs("mount", args, mountUsage, nil)
	if err != nil {
		return err
	}
	if !cfg.Foreground && os.Getenv("KEELFS_READY_FD") == "" {
		return daemonize(args)
	}
	return serve(cfg)
}

// parseMountArgs parses the flags, -o options, KEELFS_* variables and the
// two positional arguments (source and mount point) that `keelfs mount`
// and `keelfs run` share. extra adds a command's own flags.
func parseMountArgs(cmd string, args []string, usage string, extra func(*pflag.FlagSet)) (*mountConfig, error) {
	cfg := &mountConfig{}
	flags := newMountFlags(cfg)
	var opts []string
	flags.StringSliceVarP(&opts, "options", "o", nil, "mount options, as in fstab: opt,opt=value")
	if extra != nil {
		extra(flags)
	}
	flags.Usage = func() {
		fmt.Fprint(os.Stderr, usage)
		flags.PrintDefaults()
	}
	if err := flags.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil, errHelpShown
		}
		return nil, usageErr("%v (see keelfs %s --help)", err, cmd)
	}
	for _, o := range opts {
		if err := applyOption(flags, o); err != nil {
			return nil, usageErr("%v", err)
		}
	}
	if err := applyEnv(flags); err != nil {
		return nil, usageErr("%v", err)
	}
	pos := flags.Args()
	if len(pos) != 2 {
		return nil, usageErr("%s needs BUCKET[/PREFIX] and MOUNTPOINT (see keelfs %s --help)", cmd, cmd)
	}
	bucket, prefix, err := parseBucket(pos[0])
	if err != nil {
		return nil, usageErr("%v", err)
	}
	if cfg.Prefix != "" {
		prefix = strings.Trim(strings.Trim(prefix, "/")+"/"+strings.Trim(cfg.Prefix, "/"), "/")
	}
	cfg.Bucket, cfg.Prefix = bucket, prefix
	if cfg.MountPoint, err = filepath.Abs(pos[1]); err != nil {
		return nil, usageErr("%v", err)
	}
	if err := validate(cfg); err != nil {
		return nil, usageErr("%v", err)
	}
	return cfg, nil
}

// ignoredOptions are mount(8) options that mean nothing to keelfs or
// that mount(8) handles itself.
var ignoredOptions = regexp.MustCompile(`^(defaults|_netdev|auto|noauto|nofail|user|users|nouser|owner|group|rw|relatime|norelatime|strictatime|diratime|nodiratime|lazytime|async|remount|bind|comment=.*|x-.*|fsname=.*|subtype=.*|default_permissions|allow-delete|allow_delete|allow-overwrite|allow_overwrite)$`)

// optionFlags are the standard mount options that set a keelfs flag:
// sync is --sync-on-close (the kernel's own sync would turn every write
// into an fsync, that is an upload), the no- forms turn a flag off.
var optionFlags = map[string][2]string{
	"sync":    {"sync-on-close", "true"},
	"nosuid":  {"suid", "false"},
	"nodev":   {"dev", "false"},
	"noexec":  {"exec", "false"},
	"atime":   {"noatime", "false"},
	"noatime": {"noatime", "true"},
}

// applyOption sets one -o option: a keelfs flag (with _ or -), or a
// standard mount option.
func applyOption(flags *pflag.FlagSet, opts string) error {
	for _, kv := range splitOptions(opts) {
		k, v := kv[0], kv[1]
		full := k
		if v != "" {
			full += "=" + v
		}
		switch {
		case ignoredOptions.MatchString(full) || ignoredOptions.MatchString(k):
			continue
		case v == "" && optionFlags[k] != [2]string{}:
			k, v = optionFlags[k][0], optionFlags[k][1]
		case k == "ro":
			k, v = "read-only", "true"
		case k == "foreground":
			k, v = "foreground", "true"
		}
		f := flags.Lookup(k)
		if f == nil {
			return fmt.Errorf("unknown mount option %q", k)
		}
		if v == "" {
			if f.NoOptDefVal == "" {
				return fmt.Errorf("mount option %q needs a value", k)
			}
			v = f.NoOptDefVal
		}
		if err := flags.Set(k, v); err != nil {
			return fmt.Errorf("mount option %s: %v", k, err)
		}
	}
	return nil
}

func validate(cfg *mountConfig) error {
	switch cfg.Conflict {
	case "copy", "overwrite":
	default:
		return fmt.Errorf("--conflict must be copy or overwrite, not %q", cfg.Conflict)
	}
	switch cfg.LogFormat {
	case "text", "json":
	default:
		return fmt.Errorf("--log-format must be text or json, not %q", cfg.LogFormat)
	}
	if _, err := parseLevel(cfg.LogLevel); err != nil {
		return err
	}
	if cfg.BlockSize < 64<<10 || cfg.BlockSize > 64<<20 || cfg.BlockSize&(cfg.BlockSize-1) != 0 {
		return fmt.Errorf("--block-size must be a power of two between 64K and 64M")
	}
	if cfg.PartSize < s3backend.MinPartSize || cfg.PartSize > s3backend.MaxPartSize {
		return fmt.Errorf("--part-size must be between 5M and 5G")
	}
	if cfg.CacheSize < 8*cfg.BlockSize {
		return fmt.Errorf("--cache-size must be at least 8 blocks (%s)", formatSize(int64(8*cfg.BlockSize)))
	}
	if cfg.MaxUploads < 1 || cfg.MaxUploads > 256 {
		return fmt.Errorf("--max-uploads must be between 1 and 256")
	}
	if cfg.WriteBackDelay < 0 || cfg.ShutdownTimeout < 0 {
		return fmt.Errorf("durations must not be negative")
	}
	if cfg.S3Timeout <= 0 || cfg.CommitInterval <= 0 {
		return fmt.Errorf("--s3-timeout and --commit-interval must be positive")
	}
	if err := s3backend.CheckEndpoint(cfg.Endpoint); err != nil {
		return fmt.Errorf("--%v", err)
	}
	switch cfg.SSE {
	case "", "AES256", "aws:kms", "aws:kms:dsse":
	default:
		return fmt.Errorf("--sse must be AES256 or aws:kms, not %q", cfg.SSE)
	}
	return nil
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("--log-level must be debug, info, warn or error, not %q", s)
	}
	return l, nil
}

func newLogger(cfg *mountConfig) (*slog.Logger, error) {
	level, _ := parseLevel(cfg.LogLevel)
	if cfg.Debug {
		level = slog.LevelDebug
	}
	var w io.Writer = os.Stderr
	if cfg.LogFile != "" {
		f, err := os.OpenFile(cfg.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return nil, fmt.Errorf("log file: %v", err)
		}
		w = f
	}
	o := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, o)), nil
	}
	return slog.New(slog.NewTextHandler(w, o)), nil
}

// daemonize runs the mount in a child process and returns once the mount
// is live, or with the child's error. The child reports through a pipe
// (fd 3, KEELFS_READY_FD).
func daemonize(args []string) error {
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.Command(self, append([]string{"mount"}, args...)...)
	cmd.Env = append(os.Environ(), "KEELFS_READY_FD=3")
	cmd.ExtraFiles = []*os.File{w}
	// The child reports start-up through the pipe and logs to a file; it
	// must not hold our stdout or stderr, or a caller that captures them
	// would wait for the daemon to exit.
	cmd.Stdin, cmd.Stdout, cmd.Stderr = nil, nil, nil
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		w.Close()
		return fmt.Errorf("start mount process: %w", err)
	}
	w.Close()
	line := awaitReady(r, os.Stderr)
	r.Close()
	if line == "ok" {
		cmd.Process.Release()
		return nil
	}
	if code, msg, ok := strings.Cut(line, " "); ok {
		if n, err := strconv.Atoi(code); err == nil {
			cmd.Wait()
			return withCode(n, errors.New(msg))
		}
	}
	err = cmd.Wait()
	return withCode(exitError, fmt.Errorf("mount process exited before the mount was ready: %v", err))
}

// awaitReady reads the child's report from the ready pipe: "ok", or "CODE
// message", or nothing if the child died. Lines "note MESSAGE" before it
// are shown on stderr as they come, and reading goes on.
func awaitReady(r io.Reader, stderr io.Writer) string {
	br := bufio.NewReader(r)
	for {
		line, err := br.ReadString('\n')
		msg, isNote := strings.CutPrefix(line, "note ")
		if !isNote || err != nil {
			return strings.TrimSpace(line)
		}
		fmt.Fprintln(stderr, "keelfs: "+strings.TrimSpace(msg))
	}
}

// readyPipe reports the outcome of start-up to a waiting parent.
type readyPipe struct{ f *os.File }

func openReady() *readyPipe {
	fd, err := strconv.Atoi(os.Getenv("KEELFS_READY_FD"))
	if err != nil {
		return nil
	}
	os.Unsetenv("KEELFS_READY_FD")
	return &readyPipe{os.NewFile(uintptr(fd), "ready")}
}

func (p *readyPipe) ok() {
	if p == nil {
		return
	}
	fmt.Fprintln(p.f, "ok")
	p.f.Close()
	// The parent has exited: stop writing logs to its terminal only if it
	// is gone; stderr stays as inherited (journal, container log).
}

// note shows msg to the waiting parent, which goes on waiting.
func (p *readyPipe) note(msg string) {
	if p == nil {
		return
	}
	// A parent that is gone cannot be told; the log has it.
	fmt.Fprintf(p.f, "note %s\n", strings.ReplaceAll(msg, "\n", " "))
}

func (p *readyPipe) fail(err error) error {
	if p == nil {
		return err
	}
	code := exitError
	var ce *codeError
	if errors.As(err, &ce) {
		code = ce.code
	}
	fmt.Fprintf(p.f, "%d %s\n", code, strings.ReplaceAll(err.Error(), "\n", " "))
	p.f.Close()
	return withCode(code, errReported)
}

var errReported = errors.New("reported to the parent")

// serve mounts and runs until unmounted or stopped by a signal.
func serve(cfg *mountConfig) error {
	setMemoryLimit()
	// From here on SIGTERM starts a drain instead of killing the process:
	// one that arrives while the mount starts is handled once it is up.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	ready := openReady()
	if ready != nil && cfg.LogFile == "" {
		// In the background nobody reads our stderr (and holding the
		// caller's pipe open would hang it): log to the cache directory.
		if dir, err := resolveCacheDir(cfg); err == nil {
			cfg.LogFile = filepath.Join(dir, "keelfs.log")
		}
	}
	log, err := newLogger(cfg)
	if err != nil {
		return ready.fail(withCode(exitUsage, err))
	}
	slog.SetDefault(log)
	m, err := startMount(cfg, log, ready.note)
	if err != nil {
		return ready.fail(err)
	}
	ready.ok()
	notifySystemd(log, daemon.SdNotifyReady+"\nSTATUS=serving "+cfg.MountPoint)
	return m.run(sigs)
}

// notifySystemd tells systemd (Type=notify units) about the daemon's state.
// Without NOTIFY_SOCKET it does nothing.
func notifySystemd(log *slog.Logger, state string) {
	if _, err := daemon.SdNotify(false, state); err != nil {
		log.Warn("could not notify systemd", "state", state, "err", err)
	}
}

type mount struct {
	cfg     *mountConfig
	log     *slog.Logger
	reach   *s3backend.Reach // whether S3 answers; the cache's store
	cache   *cache.Cache
	fsys    *kfs.FS
	control *controlServer
	metrics *metrics
	// metricsLn is the --metrics-addr listener; closed at exit.
	metricsLn net.Listener
	// cacheDir holds the cache, and the note that says this process is
	// stopping (see handover.go).
	cacheDir string
}

// startMount checks, opens the cache and mounts. notify, if not nil,
// shows the user a message while start-up waits (a background mount's
// caller, which does not see the log).
func startMount(cfg *mountConfig, log *slog.Logger, notify func(string)) (*mount, error) {
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return nil, withCode(exitFuse, fmt.Errorf("FUSE is not available (/dev/fuse: %v); install fuse3, or run the container with --device /dev/fuse --cap-add SYS_ADMIN", err))
	}
	if err := checkMountPoint(cfg.MountPoint, log); err != nil {
		return nil, err
	}
	ctx := context.Background()
	met := newMetrics()
	scfg := storeConfig(cfg, log)
	scfg.Observer = met
	// A refused connection makes S3 unreachable at once (see reach below).
	var reachNow atomic.Pointer[s3backend.Reach]
	scfg.DialFailed = func(err error) {
		if r := reachNow.Load(); r != nil {
			r.DialFailed(err)
		}
	}
	store, err := s3backend.New(ctx, scfg)
	if err != nil {
		return nil, withCode(exitAccess, fmt.Errorf("s3 client: %w", err))
	}
	where := fmt.Sprintf("s3://%s/%s", cfg.Bucket, cfg.Prefix)
	if cfg.Endpoint != "" {
		where += " at " + cfg.Endpoint
	}
	// The access check runs on a store that does not log its retries: its
	// outcome is the one line the user needs. It tries twice, and so does
	// the instance metadata client of its credential chain (which takes
	// the store's retry settings): on a host where instance metadata
	// never answers, the chain then ends in about 2.5 s with "no
	// credentials", within accessCheckTimeout, rather than being cut off
	// by it with no reason to give.
	qcfg := storeConfig(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	qcfg.MaxAttempts, qcfg.MaxBackoff = 2, 500*time.Millisecond
	quiet, err := s3backend.New(ctx, qcfg)
	if err != nil {
		return nil, withCode(exitAccess, fmt.Errorf("s3 client: %w", err))
	}
	cctx, cancel := context.WithTimeout(ctx, accessCheckTimeout)
	err = quiet.CheckAccess(cctx)
	cancel()
	if err != nil {
		return nil, accessError(cfg, err)
	}
	conditional := false
	if !cfg.ReadOnly {
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		conditional, err = store.ProbeConditionalWrites(pctx)
		cancel()
		switch {
		case err != nil:
			log.Warn("could not test the endpoint for conditional writes; uploads are last-writer-wins", "err", err)
		case !conditional:
			log.Warn("the endpoint does not enforce conditional writes (If-Match/If-None-Match); uploads are last-writer-wins and concurrent edits from other mounts can overwrite each other")
		}
	}
	cacheDir, err := resolveCacheDir(cfg)
	if err != nil {
		return nil, withCode(exitCache, err)
	}
	var key []byte
	if cfg.EncryptionKey != "" {
		if key, err = readKeyFile(cfg.EncryptionKey); err != nil {
			return nil, withCode(exitUsage, err)
		}
	}
	// The cache talks to S3 through reach: while S3 does not answer, it
	// fails requests at once, and its first answer again restarts the
	// uploads that back off.
	var kick atomic.Pointer[cache.Cache] // set once the cache is open
	reach := s3backend.NewReach(store, s3backend.ReachOptions{Wait: cfg.S3Timeout, Logger: log,
		OnChange: func(up bool) {
			if c := kick.Load(); up && c != nil {
				c.Kick()
			}
		}})
	reachNow.Store(reach)
	fsys := kfs.New(kfs.Options{
		FsName: "keelfs:" + strings.TrimSuffix(cfg.Bucket+"/"+cfg.Prefix, "/"), ReadOnly: cfg.ReadOnly,
		AllowOther: cfg.AllowOther, AllowRoot: cfg.AllowRoot, TTL: cfg.MetadataTTL.duration(), Debug: cfg.Debug, Logger: log,
		Suid: cfg.Suid, Dev: cfg.Dev, NoExec: !cfg.Exec, DirSync: cfg.DirSync,
		Passthrough: cfg.Passthrough, Ops: met.fuseOp,
	})
	conflict := cache.ConflictCopy
	if cfg.Conflict == "overwrite" {
		conflict = cache.ConflictOverwrite
	}
	// A stop signal ends a wait for the cache; the signal also reaches the
	// caller's handler, which then stops.
	wctx, stopWait := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	c, err := openCacheWaiting(wctx, cacheDir, log, func() (*cache.Cache, error) {
		return cache.Open(ctx, cache.Options{
			Dir: cacheDir, Store: reach, ReadOnly: cfg.ReadOnly, BlockSize: int64(cfg.BlockSize),
			CacheSize: int64(cfg.CacheSize), MetadataTTL: cfg.MetadataTTL.duration(), WriteBackDelay: cfg.WriteBackDelay,
			SyncOnClose: cfg.SyncOnClose, NoAtime: cfg.NoAtime, PartSize: int64(cfg.PartSize), MaxUploads: cfg.MaxUploads,
			SkipHeaders: cfg.SkipHeaders, Conflict: conflict, ConditionalWrites: conditional,
			UID: cfg.UID, GID: cfg.GID, FileMode: uint32(cfg.FileMode), DirMode: uint32(cfg.DirMode),
			MaxKeyLen: maxKeyLen(cfg.Prefix), CommitInterval: cfg.CommitInterval,
			EncryptionKey: key, Logger: log, Invalidate: fsys.Invalidate, InvalidateEntry: fsys.InvalidateEntry,
		})
	}, notify, time.Now, sleepCtx)
	stopWait()
	if err != nil {
		reach.Close()
		return nil, withCode(exitCache, err)
	}
	kick.Store(c)
	src := cacheSource{Endpoint: cfg.Endpoint, Bucket: cfg.Bucket, Prefix: cfg.Prefix}
	if err := claimCacheDir(cacheDir, src); err != nil {
		// Only a mount of this bucket through another endpoint reads it.
		log.Warn("could not note what this cache directory is for", "err", err)
	}
	warnUnsettledSiblings(log, cacheDir, src)
	m := &mount{cfg: cfg, log: log, reach: reach, cache: c, fsys: fsys, metrics: met, cacheDir: cacheDir}
	met.watchCache(c, int64(cfg.CacheSize))
	met.watchReach(reach)
	if cfg.MetricsAddr != "" {
		h := &health{c: c, reach: reach, stuckAfter: 2*time.Minute + cfg.WriteBackDelay}
		if m.metricsLn, err = serveMetrics(cfg.MetricsAddr, met, h, log); err != nil {
			c.Close()
			return nil, withCode(exitUsage, err)
		}
	}
	m.control, err = startControl(m, cacheDir)
	if err != nil {
		c.Close()
		return nil, withCode(exitCache, err)
	}
	fsys.SetControlPath(m.control.path)
	fsys.Bind(c)
	if err := fsys.Mount(cfg.MountPoint); err != nil {
		m.control.close()
		c.Close()
		return nil, withCode(exitFuse, err)
	}
	if cfg.PprofAddr != "" {
		go func() {
			if err := http.ListenAndServe(cfg.PprofAddr, nil); err != nil {
				log.Error("pprof server", "err", err)
			}
		}()
	}
	log.Info("mounted", "source", where, "mountpoint", cfg.MountPoint, "cache", cacheDir)
	return m, nil
}

// maxKeyLen is the longest key relative to the prefix that S3 takes: its
// limit of 1024 bytes less "PREFIX/".
func maxKeyLen(prefix string) int {
	if prefix = strings.Trim(prefix, "/"); prefix != "" {
		return 1024 - len(prefix) - 1
	}
	return 1024
}

func storeConfig(cfg *mountConfig, log *slog.Logger) s3backend.Config {
	return s3backend.Config{
		Bucket: cfg.Bucket, Prefix: cfg.Prefix, Endpoint: cfg.Endpoint, Region: cfg.Region,
		ForcePathStyle: cfg.ForcePathStyle, Profile: cfg.Profile, NoSignRequest: cfg.NoSignRequest,
		RequesterPays: cfg.RequesterPays, CABundle: cfg.CABundle, SSE: cfg.SSE, SSEKMSKeyID: cfg.SSEKMSKeyID,
		StorageClass: cfg.StorageClass, UnsignedPayload: true, Logger: log,
	}
}

// accessCheckTimeout bounds the access check of a mount: connecting,
// finding credentials and one listing.
const accessCheckTimeout = 3500 * time.Millisecond

// accessError turns a failed access check into one clear line and an exit
// code: what is wrong, with which bucket or endpoint, and the cause in a
// few words, never the SDK's retry report.
func accessError(cfg *mountConfig, err error) error {
	where := fmt.Sprintf("s3://%s/%s", cfg.Bucket, cfg.Prefix)
	endpoint := cfg.Endpoint
	if endpoint == "" {
		if endpoint = s3backend.RequestHost(err); endpoint == "" {
			endpoint = "S3"
		}
	}
	switch {
	case errors.Is(err, s3backend.ErrNoCredentials):
		return withCode(exitAccess, fmt.Errorf("no AWS credentials found for %s: none in the environment or the shared files, no role from web identity, ECS or instance metadata (%s); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or AWS_PROFILE, give the instance, task or pod a role, or use --no-sign-request for a public bucket",
			where, credentialsCause(err)))
	case errors.Is(err, s3backend.ErrInvalidCredentials) && isChainError(err):
		return withCode(exitAccess, fmt.Errorf("could not get AWS credentials for %s from the credential chain (profile, web identity, ECS task role, instance metadata): %s", where, credentialsCause(err)))
	case errors.Is(err, s3backend.ErrInvalidCredentials):
		return withCode(exitAccess, fmt.Errorf("credentials rejected by %s for %s: %v", endpoint, where, err))
	case errors.Is(err, s3backend.ErrNoSuchBucket):
		return withCode(exitBucket, fmt.Errorf("bucket does not exist: %s at %s", where, endpoint))
	case errors.Is(err, s3backend.ErrAccessDenied):
		return withCode(exitAccess, fmt.Errorf("access denied to %s by %s: %v", where, endpoint, err))
	}
	var se *s3backend.Error
	if errors.As(err, &se) && se.Status != 0 {
		// An answer, but not one a mount can use (a 5xx, a redirect).
		return withCode(exitBucket, fmt.Errorf("cannot use %s at %s: %v", where, endpoint, err))
	}
	reason := s3backend.NetworkReason(err)
	switch {
	case reason == "no answer in time":
		reason = fmt.Sprintf("no answer within %v", accessCheckTimeout)
	case reason == "":
		reason = err.Error()
	}
	return withCode(exitBucket, fmt.Errorf("cannot reach %s (for %s): %s", endpoint, where, reason))
}

// isChainError reports whether err came from the credential chain (a
// profile's role that could not be assumed, an unreadable web identity
// token) rather than from S3.
func isChainError(err error) bool {
	var se *s3backend.Error
	return errors.As(err, &se) && se.Status == 0 && se.Code == ""
}

// credentialsCause is the innermost message of a credential chain error:
// "request to EC2 IMDS failed", not the chain's retelling of it.
func credentialsCause(err error) string {
	if r := s3backend.NetworkReason(err); r != "" {
		if r == "no answer in time" {
			return fmt.Sprintf("no answer within %v", accessCheckTimeout)
		}
		return r
	}
	var se *s3backend.Error
	if errors.As(err, &se) && se.Cause != nil {
		err = se.Cause
	}
	for {
		next := errors.Unwrap(err)
		if next == nil {
			return err.Error()
		}
		err = next
	}
}

// resolveCacheDir returns the cache directory of this endpoint, bucket and prefix:
// a subdirectory, mode 0700, of --cache-dir or the default base.
func resolveCacheDir(cfg *mountConfig) (string, error) {
	base := cfg.CacheDir
	if base == "" {
		switch {
		case os.Getenv("XDG_CACHE_HOME") != "":
			base = filepath.Join(os.Getenv("XDG_CACHE_HOME"), "keelfs")
		case os.Geteuid() == 0:
			base = "/var/cache/keelfs"
		default:
			home, err := os.UserHomeDir()
			if err != nil {
				return "", fmt.Errorf("no cache directory: set --cache-dir")
			}
			base = filepath.Join(home, ".cache", "keelfs")
		}
	}
	sum := sha256.Sum256([]byte(cfg.Endpoint + "\x00" + cfg.Bucket + "\x00" + cfg.Prefix))
	name := regexp.MustCompile(`[^A-Za-z0-9._-]+`).ReplaceAllString(strings.Trim(cfg.Bucket+"-"+cfg.Prefix, "-"), "_")
	if len(name) > 64 {
		name = name[:64]
	}
	dir := filepath.Join(base, name+"-"+hex.EncodeToString(sum[:6]))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("cache directory %s: %v", dir, err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return "", fmt.Errorf("cache directory %s: %v", dir, err)
	}
	return dir, nil
}

func readKeyFile(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("cache encryption key: %v", err)
	}
	key := []byte(strings.TrimSpace(string(b)))
	if dec, err := hex.DecodeString(string(key)); err == nil {
		key = dec
	}
	switch len(key) {
	case 16, 24, 32:
		return key, nil
	}
	return nil, fmt.Errorf("cache encryption key in %s must be 16, 24 or 32 bytes (raw or hex), not %d", path, len(key))
}

// run serves until the filesystem is unmounted or a signal stops it.
func (m *mount) run(sigs chan os.Signal) error {
	done := make(chan struct{})
	go func() {
		m.fsys.Wait()
		close(done)
	}()
	select {
	case <-done:
		m.log.Info("unmounted; finishing pending uploads")
		return m.finish(sigs, false, false)
	case sig := <-sigs:
		m.log.Info("stopping: uploading everything pending, then unmounting", "signal", sig.String(),
			"timeout", m.cfg.ShutdownTimeout.String())
		return m.finish(sigs, true, true)
	}
}

// finish drains the journal within the shutdown timeout, unmounts and
// closes the cache. Whatever is still pending stays in the cache for the
// next mount, and the exit status says so. A signal cuts the drain short
// if a signal started it (signalled); otherwise (an unmount, an app that
// exited) the first signal is what a stop would do anyway, so only the
// second one cuts it: systemd's SIGTERM after an umount must not.
func (m *mount) finish(sigs <-chan os.Signal, unmount, signalled bool) error {
	notifySystemd(m.log, daemon.SdNotifyStopping+"\nSTATUS=uploading what is pending, then unmounting")
	ctx, cancel := context.WithTimeout(context.Background(), m.cfg.ShutdownTimeout)
	defer cancel()
	deadline, _ := ctx.Deadline()
	note, err := writeDrainNote(m.cacheDir, deadline)
	if err != nil {
		// Only a new mount of this cache needs it: it would then report
		// the cache in use instead of waiting for us.
		m.log.Warn("could not note that this mount is stopping", "err", err)
	}
	go func() {
		for {
			select {
			case sig := <-sigs:
				if !signalled {
					signalled = true
					m.log.Info("already stopping: uploading everything pending; a second signal stops now", "signal", sig.String())
					continue
				}
				m.log.Warn("second signal: stopping now", "signal", sig.String())
				cancel()
				return
			case <-ctx.Done():
				return
			}
		}
	}()
	left, derr := m.cache.Drain(ctx)
	if derr != nil && !errors.Is(derr, context.DeadlineExceeded) && !errors.Is(derr, context.Canceled) {
		m.log.Error("draining the cache failed", "err", derr)
	} else {
		derr = nil
	}
	if unmount {
		if err := m.fsys.Unmount(); err != nil {
			m.log.Warn("unmount busy; detaching the mount", "err", err)
			syscall.Unmount(m.cfg.MountPoint, syscall.MNT_DETACH)
		}
	}
	m.control.close()
	if m.metricsLn != nil {
		m.metricsLn.Close()
	}
	// Settled before the cache's lock is let go: the next mount of this
	// directory unsettles it as soon as it holds the lock.
	settled := len(left) == 0 && derr == nil
	if settled {
		if err := settleCacheDir(m.cacheDir); err != nil {
			m.log.Warn("could not note that everything of this cache is in S3", "err", err)
			settled = false
		}
	}
	if err := m.cache.Close(); err != nil {
		m.log.Error("closing cache", "err", err)
		if settled {
			if err := os.Remove(filepath.Join(m.cacheDir, settledFile)); err != nil {
				m.log.Warn("could not take back the note that everything of this cache is in S3", "err", err)
			}
		}
	}
	if err := removeDrainNote(m.cacheDir, note); err != nil {
		m.log.Warn("could not remove the note that this mount is stopping", "err", err)
	}
	m.reach.Close()
	if len(left) > 0 || derr != nil {
		show := make([]string, 0, min(len(left), 20)+1)
		for _, it := range left[:min(len(left), 20)] {
			show = append(show, describePending(it))
		}
		if len(left) > 20 {
			show = append(show, fmt.Sprintf("... and %d more", len(left)-20))
		}
		if derr != nil {
			show = append(show, "(the cache could not be made durable: "+derr.Error()+")")
		}
		err := fmt.Errorf("stopped with %d changes not yet in S3; they are safe in the cache and the next mount with the same --cache-dir uploads them:\n  %s",
			len(left), strings.Join(show, "\n  "))
		// In the background the log is what is read.
		m.log.Error("stopped with changes not yet in S3", "pending", len(left), "files", strings.Join(show, "; "))
		return withCode(exitPending, err)
	}
	m.log.Info("stopped; everything is in S3")
	return nil
}
