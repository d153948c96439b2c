// Command keelfs mounts an S3 bucket or prefix as a POSIX directory.
//
// It is only the command line: flags, the mount helper mode, running in the
// background, signals and exit codes. The filesystem lives in fs/ and
// cache/.
package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
)

// Exit codes, documented in the README.
const (
	exitOK         = 0
	exitError      = 1 // anything not below
	exitUsage      = 2 // bad command line
	exitMountPoint = 3 // mount point missing, not a directory, or a live keelfs there
	exitAccess     = 4 // no credentials, credentials rejected, or access denied
	exitBucket     = 5 // bucket missing or endpoint unreachable
	exitCache      = 6 // cache directory unusable or in use by another mount
	exitPending    = 7 // stopped with uploads still pending
	exitFuse       = 8 // FUSE unavailable
)

// exitError carries an exit code with a message for the user.
type codeError struct {
	code int
	err  error
}

func (e *codeError) Error() string { return e.err.Error() }
func (e *codeError) Unwrap() error { return e.err }

func withCode(code int, err error) error {
	if err == nil {
		return nil
	}
	return &codeError{code, err}
}

func usageErr(format string, a ...any) error {
	return withCode(exitUsage, fmt.Errorf(format, a...))
}

const usage = `keelfs mounts an S3 bucket or prefix as a POSIX directory.

Usage:
  keelfs mount BUCKET[/PREFIX] MOUNTPOINT [flags]   mount (also s3://BUCKET/PREFIX, BUCKET:/PREFIX)
  keelfs run [flags] BUCKET[/PREFIX] MOUNTPOINT -- COMMAND [ARGS...]
                                                    mount, run the app, stop it, upload, unmount
  keelfs unmount MOUNTPOINT                         upload everything pending, then unmount
  keelfs flush MOUNTPOINT                           wait until every change is in S3
  keelfs status MOUNTPOINT                          show uploads pending, cache use, errors
  keelfs warm PATH...                               read files into the cache
  keelfs health [MOUNTPOINT...]                     exit 0 if the mounts' daemons answer (health checks)
  keelfs version                                    print the version

Run 'keelfs COMMAND --help' for the flags of a command.

Examples:
  keelfs mount s3://my-bucket/app-data /data
  keelfs mount my-bucket /data --endpoint http://127.0.0.1:9000 --force-path-style -f
  keelfs flush /data
`

func main() {
	os.Exit(run(os.Args))
}

func run(args []string) int {
	var err error
	if strings.HasPrefix(filepath.Base(args[0]), "mount.keelfs") || strings.HasPrefix(filepath.Base(args[0]), "mount.fuse.keelfs") {
		err = mountHelper(args[1:])
	} else if len(args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		return exitUsage
	} else {
		switch args[1] {
		case "mount":
			err = mountCmd(args[2:])
		case "run":
			err = runAppCmd(args[2:])
		case "unmount", "umount":
			err = unmountCmd(args[2:])
		case "flush":
			err = flushCmd(args[2:])
		case "status":
			err = statusCmd(args[2:])
		case "warm":
			err = warmCmd(args[2:])
		case "health":
			err = healthCmd(args[2:])
		case "version", "--version":
			fmt.Println("keelfs", version())
		case "help", "-h", "--help":
			fmt.Print(usage)
		default:
			fmt.Fprintf(os.Stderr, "keelfs: unknown command %q\n\n%s", args[1], usage)
			return exitUsage
		}
	}
	if err == nil {
		return exitOK
	}
	var ce *codeError
	code := exitError
	if errors.As(err, &ce) {
		code = ce.code
	}
	switch {
	case errors.Is(err, errHelpShown):
		code = exitOK
	case errors.Is(err, errReported):
	default:
		fmt.Fprintf(os.Stderr, "keelfs: %v\n", err)
	}
	return code
}

var errHelpShown = errors.New("help shown")

// buildVersion is stamped by the Makefile: go build -ldflags
// "-X main.buildVersion=$(git describe --tags --always --dirty)".
var buildVersion string

// version is the stamped version, else the module version that `go
// install ...@vX.Y.Z` records, else "(devel)".
func version() string {
	if buildVersion != "" {
		return buildVersion
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		v := bi.Main.Version
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				v += " " + s.Value[:12]
			}
		}
		if v != "" {
			return v
		}
	}
	return "(devel)"
}
