package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

const healthUsage = `Usage: keelfs health [MOUNTPOINT...] [--timeout 5s]

Exits 0 when every keelfs mount point given (with none: every keelfs mount
in this mount namespace, and there must be one) is served by a live
daemon that answers within the timeout, 1 otherwise, with one line per
mount. It is the container health check: the image has no shell and no
mountpoint(1). It does not ask S3: an S3 outage is not an outage of the
mount (/healthz on --metrics-addr reports S3 and stuck uploads).

Examples:
  keelfs health /data
  HEALTHCHECK CMD ["keelfs", "health"]
`

func healthCmd(args []string) error {
	flags := pflag.NewFlagSet("health", pflag.ContinueOnError)
	timeout := flags.Duration("timeout", 5*time.Second, "how long each mount's daemon has to answer")
	flags.Usage = func() {
		fmt.Fprint(os.Stderr, healthUsage+"\nFlags:\n")
		flags.PrintDefaults()
	}
	if err := flags.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return errHelpShown
		}
		return usageErr("%v (see keelfs health --help)", err)
	}
	dirs := flags.Args()
	if len(dirs) == 0 {
		found, err := keelfsMounts()
		if err != nil {
			return err
		}
		if len(found) == 0 {
			return errors.New("unhealthy: no keelfs mount in this mount namespace")
		}
		dirs = found
	}
	bad := 0
	for _, d := range dirs {
		dir, err := filepath.Abs(d)
		if err == nil {
			err = checkHealth(dir, *timeout)
		}
		if err != nil {
			bad++
			fmt.Printf("unhealthy %s: %v\n", d, err)
		}
	}
	if bad > 0 {
		return withCode(exitError, errReported)
	}
	return nil
}

// keelfsMounts lists the mount points of keelfs mounts, top layers only.
func keelfsMounts() ([]string, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var dirs []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 || !strings.Contains(line, " - fuse.keelfs ") {
			continue
		}
		dir := unescapeMount(f[4])
		if !seen[dir] {
			seen[dir] = true
			dirs = append(dirs, dir)
		}
	}
	return dirs, nil
}

// checkHealth asks the daemon serving dir whether it answers (a statfs,
// which reaches the daemon every time and costs it no S3 request) and
// prints what it serves.
func checkHealth(dir string, timeout time.Duration) error {
	at, err := mountsAt(dir)
	if err != nil {
		return err
	}
	if len(at) == 0 || at[len(at)-1].fstype != "fuse.keelfs" {
		return fmt.Errorf("%s is %w", dir, errNotKeelfs)
	}
	state, err := probeDaemon(dir, timeout)
	switch state {
	case daemonLive:
	case daemonDead:
		return fmt.Errorf("the daemon is gone (%v)", err)
	case daemonSilent:
		return fmt.Errorf("the mount does not answer: %v", err)
	default:
		return err
	}
	fmt.Printf("ok %s: %s\n", dir, at[len(at)-1].source)
	return nil
}
