package main

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

// mountConfig is everything `keelfs mount` takes. Every field is a flag,
// an -o option (with _ or -) and a KEELFS_<NAME> environment variable.
type mountConfig struct {
	Bucket, Prefix string
	MountPoint     string

	Endpoint       string
	Region         string
	ForcePathStyle bool
	Profile        string
	NoSignRequest  bool
	RequesterPays  bool
	CABundle       string
	SSE            string
	SSEKMSKeyID    string
	StorageClass   string

	CacheDir        string
	CacheSize       sizeValue
	BlockSize       sizeValue
	PartSize        sizeValue
	MetadataTTL     ttlValue
	WriteBackDelay  time.Duration
	ShutdownTimeout time.Duration
	S3Timeout       time.Duration
	CommitInterval  time.Duration
	SyncOnClose     bool
	DirSync         bool
	NoAtime         bool
	Passthrough     bool
	MaxUploads      int
	SkipHeaders     bool
	Conflict        string
	EncryptionKey   string

	UID, GID          uint32
	FileMode, DirMode modeValue
	ReadOnly          bool
	AllowOther        bool
	AllowRoot         bool
	Suid, Dev, Exec   bool
	Foreground        bool

	LogFormat   string
	LogLevel    string
	LogFile     string
	Debug       bool
	MetricsAddr string
	PprofAddr   string
}

// flagAliases maps the names other tools use (Mountpoint for S3, s3fs) to
// keelfs's.
var flagAliases = map[string]string{
	"endpoint-url": "endpoint",
	"cache":        "cache-dir",
	"max-threads":  "max-uploads",
	"url":          "endpoint",
	"use-cache":    "cache-dir",
	"ro":           "read-only",
	"umask":        "",
}

func newMountFlags(cfg *mountConfig) *pflag.FlagSet {
	fs := pflag.NewFlagSet("mount", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.StringVar(&cfg.Endpoint, "endpoint", "", "S3 endpoint URL (default: AWS for the region)")
	fs.StringVar(&cfg.Region, "region", "", "AWS region (default: from the environment or profile, else us-east-1)")
	fs.BoolVar(&cfg.ForcePathStyle, "force-path-style", false, "address the bucket as https://endpoint/bucket (needed by most non-AWS servers)")
	fs.StringVar(&cfg.Profile, "profile", "", "shared config profile for credentials")
	fs.BoolVar(&cfg.NoSignRequest, "no-sign-request", false, "send unsigned requests (public buckets)")
	fs.BoolVar(&cfg.RequesterPays, "requester-pays", false, "set the requester-pays header")
	fs.StringVar(&cfg.CABundle, "ca-bundle", "", "extra PEM CA bundle for the endpoint (AWS_CA_BUNDLE is honoured too)")
	fs.StringVar(&cfg.Prefix, "prefix", "", "mount only this prefix of the bucket")
	fs.StringVar(&cfg.SSE, "sse", "", "server-side encryption for uploads: AES256 or aws:kms")
	fs.StringVar(&cfg.SSEKMSKeyID, "sse-kms-key-id", "", "KMS key for --sse aws:kms")
	fs.StringVar(&cfg.StorageClass, "storage-class", "", "storage class for uploads")

	fs.StringVar(&cfg.CacheDir, "cache-dir", "", "cache directory (default $XDG_CACHE_HOME/keelfs or /var/cache/keelfs, a subdirectory per endpoint, bucket and prefix)")
	cfg.CacheSize = sizeValue(10 << 30)
	fs.Var(&cfg.CacheSize, "cache-size", "largest size of cached data on disk (e.g. 10G, 512M)")
	fs.Var(mibValue{&cfg.CacheSize}, "max-cache-size", "mount-s3's spelling of --cache-size: a plain number is MiB")
	cfg.BlockSize = sizeValue(1 << 20)
	fs.Var(&cfg.BlockSize, "block-size", "size of cached blocks")
	cfg.PartSize = sizeValue(16 << 20)
	fs.Var(&cfg.PartSize, "part-size", "multipart upload part size (grown as needed for huge files)")
	cfg.MetadataTTL = ttlValue(time.Second)
	fs.Var(&cfg.MetadataTTL, "metadata-ttl", "how long names and attributes are trusted before S3 is asked again: a duration (1s, 5m), seconds (as mount-s3), minimal (1s) or indefinite")
	fs.DurationVar(&cfg.WriteBackDelay, "write-back-delay", time.Second, "how long after close (or after writes stop) the upload starts (a file not uploaded within the last delay goes once nothing has changed for a quarter of it)")
	fs.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", 25*time.Second, "on SIGTERM, how long to wait for pending uploads before exiting")
	fs.DurationVar(&cfg.CommitInterval, "commit-interval", 5*time.Second, "how often what close(2) wrote is made durable on the cache's disk, for all closes at once (a crash of the process loses nothing that close acknowledged; a power cut at most this much)")
	fs.DurationVar(&cfg.S3Timeout, "s3-timeout", 5*time.Second, "the longest an operation that needs S3 waits for an answer before it fails with EIO and S3 counts as unreachable (cached data is served meanwhile)")
	fs.BoolVar(&cfg.SyncOnClose, "sync-on-close", false, "make close(2) wait until the file is in S3 (the sync mount option)")
	fs.BoolVar(&cfg.DirSync, "dirsync", false, "make creates, deletes and renames wait until the change is durable (the dirsync mount option)")
	fs.BoolVar(&cfg.NoAtime, "noatime", false, "reads never move the access time (default: as relatime)")
	fs.BoolVar(&cfg.Passthrough, "passthrough", true, "let the kernel read files wholly in the cache from their backing file, without keelfs (FUSE passthrough: Linux 6.9+, root, no cache encryption)")
	fs.IntVar(&cfg.MaxUploads, "max-uploads", 4, "files uploaded at once")
	fs.BoolVar(&cfg.SkipHeaders, "skip-headers", false, "never read x-amz-meta-* attributes (no HEAD per object); every object gets the defaults")
	fs.StringVar(&cfg.Conflict, "conflict", "copy", "when another writer changed a file first: copy (keep both) or overwrite (last writer wins)")
	fs.StringVar(&cfg.EncryptionKey, "cache-encryption-key-file", "", "encrypt the cache at rest (metadata and data blocks) with the 16, 24 or 32 byte key in this file")

	fs.Uint32Var(&cfg.UID, "uid", uint32(os.Getuid()), "owner of objects without attribute headers")
	fs.Uint32Var(&cfg.GID, "gid", uint32(os.Getgid()), "group of objects without attribute headers")
	cfg.FileMode = 0o644
	fs.Var(&cfg.FileMode, "file-mode", "permissions of files without attribute headers (octal)")
	cfg.DirMode = 0o755
	fs.Var(&cfg.DirMode, "dir-mode", "permissions of directories without attribute headers (octal)")
	fs.BoolVar(&cfg.ReadOnly, "read-only", false, "mount read-only")
	fs.BoolVar(&cfg.AllowOther, "allow-other", false, "let other users access the mount (needs user_allow_other for non-root)")
	fs.BoolVar(&cfg.AllowRoot, "allow-root", false, "let root access the mount")
	fs.BoolVar(&cfg.Suid, "suid", false, "honour set-user-ID and set-group-ID bits on exec (root only; the nosuid option turns it off)")
	fs.BoolVar(&cfg.Dev, "dev", false, "let device nodes on the mount be opened (root only; the nodev option turns it off)")
	fs.BoolVar(&cfg.Exec, "exec", true, "let programs on the mount be executed (the noexec option turns it off)")
	fs.BoolVarP(&cfg.Foreground, "foreground", "f", false, "stay in the foreground (containers, systemd)")

	fs.StringVar(&cfg.LogFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&cfg.LogLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.StringVar(&cfg.LogFile, "log-file", "", "write logs to this file (default: stderr with -f, else keelfs.log in the cache directory)")
	fs.BoolVar(&cfg.Debug, "debug", false, "log every FUSE request (very verbose)")
	fs.StringVar(&cfg.MetricsAddr, "metrics-addr", "", "serve Prometheus metrics and /healthz on this address (e.g. 127.0.0.1:9100)")
	fs.StringVar(&cfg.PprofAddr, "pprof-addr", "", "serve Go profiling (net/http/pprof) on this address")

	// Accepted for Mountpoint compatibility; keelfs always allows both.
	fs.Bool("allow-delete", true, "accepted for mount-s3 compatibility (always on)")
	fs.Bool("allow-overwrite", true, "accepted for mount-s3 compatibility (always on)")
	fs.Lookup("allow-delete").NoOptDefVal = "true"
	fs.Lookup("allow-overwrite").NoOptDefVal = "true"
	fs.SetNormalizeFunc(func(f *pflag.FlagSet, name string) pflag.NormalizedName {
		name = strings.ReplaceAll(name, "_", "-")
		if a, ok := flagAliases[name]; ok && a != "" {
			name = a
		}
		return pflag.NormalizedName(name)
	})
	return fs
}

// applyEnv sets every flag not given on the command line from
// KEELFS_<FLAG_NAME>, for container definitions.
func applyEnv(fs *pflag.FlagSet) error {
	var err error
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Changed || err != nil {
			return
		}
		env := "KEELFS_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(env); ok {
			if serr := fs.Set(f.Name, v); serr != nil {
				err = fmt.Errorf("%s: %w", env, serr)
			}
		}
	})
	return err
}

// sizeValue is a byte count with an optional K, M, G or T suffix (powers
// of 1024).
type sizeValue int64

func (s *sizeValue) String() string { return formatSize(int64(*s)) }
func (s *sizeValue) Type() string   { return "size" }
func (s *sizeValue) Set(v string) error {
	n, err := parseSize(v)
	if err != nil {
		return err
	}
	*s = sizeValue(n)
	return nil
}

// mibValue sets a sizeValue where a plain number means MiB, as mount-s3's
// --max-cache-size does.
type mibValue struct{ s *sizeValue }

func (m mibValue) String() string {
	if m.s == nil {
		return ""
	}
	return m.s.String()
}
func (m mibValue) Type() string { return "MiB" }
func (m mibValue) Set(v string) error {
	if n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 40); err == nil {
		*m.s = sizeValue(n << 20)
		return nil
	}
	return m.s.Set(v)
}

func parseSize(v string) (int64, error) {
	t := strings.TrimSpace(strings.ToUpper(v))
	t = strings.TrimSuffix(strings.TrimSuffix(t, "B"), "I")
	mult := int64(1)
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'K':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		case 'G':
			mult = 1 << 30
		case 'T':
			mult = 1 << 40
		}
		if mult > 1 {
			t = t[:n-1]
		}
	}
	f, err := strconv.ParseFloat(t, 64)
	if err != nil || f < 0 {
		return 0, fmt.Errorf("invalid size %q (use e.g. 512M, 10G)", v)
	}
	return int64(f * float64(mult)), nil
}

func formatSize(n int64) string {
	switch {
	case n >= 1<<40 && n%(1<<40) == 0:
		return fmt.Sprintf("%dT", n>>40)
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%dG", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%dM", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%dK", n>>10)
	}
	return strconv.FormatInt(n, 10)
}

// modeValue is a permission mode in octal.
type modeValue uint32

func (m *modeValue) String() string { return fmt.Sprintf("%04o", uint32(*m)) }
func (m *modeValue) Type() string   { return "octal" }
func (m *modeValue) Set(v string) error {
	n, err := strconv.ParseUint(strings.TrimPrefix(v, "0o"), 8, 32)
	if err != nil || n > 0o7777 {
		return fmt.Errorf("invalid mode %q (use octal, e.g. 0644)", v)
	}
	*m = modeValue(n)
	return nil
}

// parseBucket splits the source forms users write: BUCKET, BUCKET/PREFIX,
// s3://BUCKET/PREFIX and BUCKET:/PREFIX (s3fs style).
func parseBucket(s string) (bucket, prefix string, err error) {
	s = strings.TrimPrefix(s, "s3://")
	if b, p, ok := strings.Cut(s, ":"); ok {
		s = b + "/" + strings.TrimPrefix(p, "/")
	}
	bucket, prefix, _ = strings.Cut(s, "/")
	prefix = strings.Trim(prefix, "/")
	if bucket == "" {
		return "", "", errors.New("no bucket name given")
	}
	if len(bucket) < 3 || len(bucket) > 255 || strings.ContainsAny(bucket, " \\") {
		return "", "", fmt.Errorf("%q is not a valid bucket name", bucket)
	}
	if strings.Contains(prefix, "//") {
		return "", "", fmt.Errorf("prefix %q has an empty path segment", prefix)
	}
	return bucket, prefix, nil
}

// splitOptions parses a mount(8) style option string "a,b=c".
func splitOptions(s string) [][2]string {
	var out [][2]string
	for _, o := range strings.Split(s, ",") {
		o = strings.TrimSpace(o)
		if o == "" {
			continue
		}
		k, v, _ := strings.Cut(o, "=")
		out = append(out, [2]string{k, v})
	}
	return out
}

// ttlValue is --metadata-ttl. It takes Go durations and also Mountpoint's
// spellings (plain seconds, "minimal", "indefinite"), so that mount-s3
// command lines and fstab entries work unchanged.
type ttlValue time.Duration

// indefiniteTTL stands for "never revalidate": ten years.
const indefiniteTTL = 10 * 365 * 24 * time.Hour

func (v *ttlValue) String() string { return time.Duration(*v).String() }
func (v *ttlValue) Type() string   { return "duration" }

func (v *ttlValue) Set(s string) error {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "minimal":
		*v = ttlValue(time.Second)
		return nil
	case "indefinite":
		*v = ttlValue(indefiniteTTL)
		return nil
	}
	if n, err := strconv.ParseFloat(s, 64); err == nil {
		if n < 0 || n > indefiniteTTL.Seconds() {
			return fmt.Errorf("out of range")
		}
		*v = ttlValue(time.Duration(n * float64(time.Second)))
		return nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("must be a duration like 30s or 5m, a number of seconds, minimal or indefinite")
	}
	if d < 0 {
		return fmt.Errorf("must not be negative")
	}
	*v = ttlValue(d)
	return nil
}

// duration is the TTL to hand to the cache and FUSE, where 0 means "use
// the default": a TTL of 0 (always ask S3) becomes the smallest one.
func (v ttlValue) duration() time.Duration {
	if v == 0 {
		return time.Nanosecond
	}
	return time.Duration(v)
}
