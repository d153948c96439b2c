package main

import (
	"path/filepath"
	"strings"
)

// The columns of the table, in order: keelfs, its peers, the limits.
var allColumns = []string{"keelfs", "s3fs", "s3fs-cache", "rclone-full", "rclone-writes", "plain", "local", "tmpfs"}

var columnTitles = map[string]string{
	"keelfs":        "keelfs",
	"s3fs":          "s3fs",
	"s3fs-cache":    "s3fs+cache",
	"rclone-full":   "rclone full",
	"rclone-writes": "rclone writes",
	"plain":         "plain S3 client",
	"local":         "local file",
	"tmpfs":         "tmpfs",
}

// peers are the columns "best peer" is taken from.
var peers = []string{"s3fs", "s3fs-cache", "rclone-full", "rclone-writes"}

// fsSystem is a FUSE file system under test and how to mount it: always
// the whole bucket, in the foreground, with a fresh cache directory, and
// with each tool's defaults for everything not needed to reach the server.
type fsSystem struct {
	name    string
	program string // looked up in PATH unless absolute
	argv    func(b *bench, dir, cache string) []string
	env     func(b *bench) []string
	// termBySignal: stop it with SIGTERM (keelfs drains its uploads and
	// unmounts) rather than `fusermount3 -u`.
	termBySignal bool
}

var fsSystems = map[string]*fsSystem{
	"keelfs": {
		name: "keelfs",
		argv: func(b *bench, dir, cache string) []string {
			return []string{b.opt.keelfs, "mount", "s3://" + bucketName, dir, "-f", "--endpoint", b.srv.endpoint,
				"--force-path-style", "--cache-dir", cache, "--log-level", "warn"}
		},
		env:          func(b *bench) []string { return b.srv.env() },
		termBySignal: true,
	},
	"s3fs":          s3fs(false),
	"s3fs-cache":    s3fs(true),
	"rclone-full":   rclone("full"),
	"rclone-writes": rclone("writes"),
}

func s3fs(cache bool) *fsSystem {
	name := "s3fs"
	if cache {
		name = "s3fs-cache"
	}
	return &fsSystem{
		name:    name,
		program: "s3fs",
		argv: func(b *bench, dir, cacheDir string) []string {
			o := "url=" + b.srv.endpoint + ",use_path_request_style,passwd_file=" + b.s3fsPasswd
			if cache {
				o += ",use_cache=" + cacheDir
			}
			return []string{"s3fs", bucketName, dir, "-f", "-o", o}
		},
		env: func(b *bench) []string { return b.srv.env() },
	}
}

func rclone(mode string) *fsSystem {
	return &fsSystem{
		name:    "rclone-" + mode,
		program: "rclone",
		argv: func(b *bench, dir, cache string) []string {
			return []string{"rclone", "mount", "s3bench:" + bucketName, dir, "--config", b.rcloneConf,
				"--cache-dir", cache, "--vfs-cache-mode", mode}
		},
		env: func(b *bench) []string {
			// rclone 1.60's AWS SDK fails on AWS_CA_BUNDLE ("unsupported
			// transport") even for an http endpoint, so it is left out.
			var env []string
			for _, e := range b.srv.env() {
				if !strings.HasPrefix(e, "AWS_CA_BUNDLE=") {
					env = append(env, e)
				}
			}
			return append(env,
				"RCLONE_CONFIG_S3BENCH_TYPE=s3",
				"RCLONE_CONFIG_S3BENCH_PROVIDER=Other",
				"RCLONE_CONFIG_S3BENCH_ENV_AUTH=false",
				"RCLONE_CONFIG_S3BENCH_ACCESS_KEY_ID="+accessKey,
				"RCLONE_CONFIG_S3BENCH_SECRET_ACCESS_KEY="+secretKey,
				"RCLONE_CONFIG_S3BENCH_REGION="+region,
				"RCLONE_CONFIG_S3BENCH_ENDPOINT="+b.srv.endpoint,
			)
		},
	}
}

// mountCommand is how a system is mounted, for the report: the real
// command with the run's temporary paths and port made generic.
func (s *fsSystem) mountCommand(b *bench) string {
	argv := s.argv(b, "MNT", "CACHE")
	if s.name == "keelfs" {
		argv[0] = "keelfs"
	}
	cmd := strings.Join(argv, " ")
	cmd = strings.ReplaceAll(cmd, b.srv.endpoint, "http://127.0.0.1:PORT")
	cmd = strings.ReplaceAll(cmd, b.s3fsPasswd, "PASSWD_FILE")
	cmd = strings.ReplaceAll(cmd, b.rcloneConf, "EMPTY_FILE")
	var env []string
	if strings.HasPrefix(s.name, "rclone") {
		for _, e := range s.env(b) {
			if !strings.HasPrefix(e, "RCLONE_") {
				continue
			}
			e = strings.ReplaceAll(e, b.srv.endpoint, "http://127.0.0.1:PORT")
			e = strings.ReplaceAll(e, secretKey, "SECRET")
			e = strings.ReplaceAll(e, accessKey, "ACCESS")
			env = append(env, e)
		}
	}
	return strings.TrimSpace(strings.Join(env, " ") + " " + cmd)
}

// passwdLine is the s3fs credential file's content.
func passwdLine() string { return accessKey + ":" + secretKey + "\n" }

func (b *bench) cacheDir(name string) string { return filepath.Join(b.work, "cache", name) }
