// Command testapp is the app the container tests run under `keelfs run`
// and beside the keelfs sidecar. It writes files whose contents the tests
// know (package appdata), records what happens to it in a status directory
// outside the mount, and can misbehave on purpose: ignore SIGTERM, orphan
// children for PID 1 to reap, leave a process running after it exits.
//
// It is built static (CGO_ENABLED=0) so that it runs in a FROM scratch
// image too.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/keelfs/keelfs/test/appdata"
)

func main() {
	var (
		mode       = flag.String("mode", "app", "app, or the internal orphan-parent, sleeper")
		dir        = flag.String("dir", "", "where to write the files (the mount)")
		status     = flag.String("status", "", "where to record what happens (outside the mount)")
		files      = flag.Int("files", 0, "files to write")
		size       = flag.Int("size", 100<<10, "bytes per file")
		prefix     = flag.String("prefix", "f", "file name prefix")
		then       = flag.String("then", "wait", "after writing: wait (for SIGTERM) or exit")
		exitCode   = flag.Int("exit", 0, "exit status when done")
		onTerm     = flag.String("on-term", "", "on SIGTERM, write this file into -dir before exiting")
		ignoreTerm = flag.Bool("ignore-term", false, "ignore SIGTERM (record it, go on waiting)")
		orphans    = flag.Int("orphans", 0, "children to orphan, each exiting 300ms later")
		linger     = flag.Bool("linger", false, "leave a process running that outlives the app")
		sleep      = flag.Duration("sleep", 300*time.Millisecond, "how long an orphan lives")
	)
	flag.Parse()
	mark := func(name, text string) {
		if *status == "" {
			return
		}
		if err := os.WriteFile(filepath.Join(*status, name), []byte(text), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "testapp:", err)
			os.Exit(99)
		}
	}
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "testapp:", err)
		mark("failed", err.Error())
		os.Exit(98)
	}
	switch *mode {
	case "orphan-parent":
		// Start a child and exit at once: the child is orphaned.
		cmd := exec.Command(os.Args[0], "-mode", "sleeper", "-sleep", sleep.String(), "-status", *status)
		if err := cmd.Start(); err != nil {
			fail(err)
		}
		// Wait until the child handles SIGTERM, so that a test that
		// stops it sees it stopped, not dead before it could say so.
		ready := filepath.Join(*status, fmt.Sprintf("sleeper-%d-ready", cmd.Process.Pid))
		for start := time.Now(); ; time.Sleep(5 * time.Millisecond) {
			if _, err := os.Stat(ready); err == nil {
				break
			}
			if time.Since(start) > 10*time.Second {
				fail(fmt.Errorf("the orphan did not start within 10s"))
			}
		}
		mark(fmt.Sprintf("orphan-%d", cmd.Process.Pid), "started")
		os.Exit(0)
	case "sleeper":
		sigs := make(chan os.Signal, 1)
		signal.Notify(sigs, syscall.SIGTERM)
		mark(fmt.Sprintf("sleeper-%d-ready", os.Getpid()), "")
		select {
		case <-time.After(*sleep):
		case <-sigs:
			mark(fmt.Sprintf("sleeper-%d-term", os.Getpid()), "SIGTERM")
		}
		os.Exit(0)
	}

	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGUSR1, syscall.SIGUSR2)
	mark("started", fmt.Sprintf("pid %d uid %d gid %d", os.Getpid(), os.Getuid(), os.Getgid()))
	for i := 0; i < *files; i++ {
		name := fmt.Sprintf("%s-%03d", *prefix, i)
		if err := os.WriteFile(filepath.Join(*dir, name), appdata.Content(name, *size), 0o644); err != nil {
			fail(err)
		}
	}
	for i := 0; i < *orphans; i++ {
		if err := exec.Command(os.Args[0], "-mode", "orphan-parent", "-sleep", sleep.String(), "-status", *status).Run(); err != nil {
			fail(err)
		}
	}
	if *linger {
		if err := exec.Command(os.Args[0], "-mode", "orphan-parent", "-sleep", "1h", "-status", *status).Run(); err != nil {
			fail(err)
		}
	}
	mark("written", fmt.Sprint(*files))
	if *then == "exit" {
		os.Exit(*exitCode)
	}
	for sig := range sigs {
		name := strings.ReplaceAll(sig.String(), " ", "-")
		mark("signal-"+name, "")
		if sig != syscall.SIGTERM && sig != syscall.SIGINT || *ignoreTerm {
			continue
		}
		if *onTerm != "" {
			// The mount is still live while the app stops.
			if err := os.WriteFile(filepath.Join(*dir, *onTerm), appdata.Content(*onTerm, *size), 0o644); err != nil {
				fail(err)
			}
		}
		mark("stopped", "")
		os.Exit(*exitCode)
	}
}
