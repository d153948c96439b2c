package main

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// mountHelper is mount(8)'s interface: mount.keelfs SOURCE DIR [-o opts]
// [-f] [-n] [-s] [-v]. SOURCE is BUCKET, BUCKET:/PREFIX, BUCKET/PREFIX or
// s3://BUCKET/PREFIX. It backgrounds once the mount is live, like mount(8)
// expects, unless -o foreground is given.
func mountHelper(args []string) error {
	var pos, opts []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "-o" && i+1 < len(args):
			opts = append(opts, args[i+1])
			i++
		case strings.HasPrefix(a, "-o") && len(a) > 2:
			opts = append(opts, a[2:])
		case a == "-n" || a == "-s" || a == "-v" || a == "-f":
			// no mtab, sloppy, verbose, fake: nothing to do for a FUSE mount
			if a == "-f" {
				return nil
			}
		case a == "-h" || a == "--help":
			fmt.Fprintln(os.Stderr, "Usage: mount.keelfs BUCKET[:/PREFIX] DIR [-o option,...]\n\nCalled by mount(8) for fstab lines of type keelfs, e.g.\n  mybucket:/prefix /data keelfs _netdev,allow_other,cache_dir=/var/cache/keelfs 0 0\nEvery keelfs mount flag is an option (cache_dir or cache-dir).")
			return errHelpShown
		case strings.HasPrefix(a, "-"):
			return usageErr("mount.keelfs: unknown argument %q", a)
		default:
			pos = append(pos, a)
		}
	}
	if len(pos) != 2 {
		return usageErr("usage: mount.keelfs BUCKET[:/PREFIX] DIR [-o options]")
	}
	margs := []string{pos[0], pos[1]}
	for _, o := range opts {
		margs = append(margs, "-o", o)
	}
	return mountCmd(margs)
}

func runCmd(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}
