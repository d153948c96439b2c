package main

import (
	"context"
	"encoding/json"
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

// checkHealth asks the daemon serving dir, through the mount (the FUSE
// side) and then its control socket, and prints what it serves.
func checkHealth(dir string, timeout time.Duration) error {
	state, _, err := probeDaemon(dir, timeout)
	switch state {
	case daemonLive:
	case daemonDead:
		return fmt.Errorf("the daemon is gone (%v)", err)
	case daemonSilent:
		return fmt.Errorf("the mount does not answer: %v", err)
	default:
		return err
	}
	cl, err := controlClient(dir)
	if err != nil {
		return err
	}
	cl.Timeout = timeout
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	req, err := newGet(ctx, "http://keelfs/status")
	if err != nil {
		return err
	}
	resp, err := cl.Do(req)
	if err != nil {
		return fmt.Errorf("the daemon's control socket does not answer: %v", err)
	}
	defer resp.Body.Close()
	var st status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return fmt.Errorf("the daemon's status: %v", err)
	}
	fmt.Printf("ok %s: %s, %d files and %d deletes waiting for S3\n", dir, st.Source, st.PendingFiles, st.PendingDeletes)
	return nil
}
