package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"
)

const runUsage = `Usage: keelfs run [mount flags] BUCKET[/PREFIX] MOUNTPOINT -- COMMAND [ARGS...]

The one-container way: keelfs mounts, waits until the mount answers, then
runs COMMAND (the app) as its child and supervises it as a container's
PID 1 must. Signals are passed on to the app and orphaned processes are
reaped. On SIGTERM or SIGINT the app is stopped first (the signal, then
SIGKILL after --app-stop-timeout), then every pending upload is finished
within --shutdown-timeout and the mount is removed. The exit status is
the app's (128+N when signal N ended it), or 7 if uploads were left in the
cache. If the mount fails, COMMAND never starts; if the mount goes away
while the app runs, the app is stopped. A missing MOUNTPOINT is created.

Whatever stops the container must give it more than --app-stop-timeout
plus --shutdown-timeout (35s by default): docker stop -t 45, ECS
stopTimeout, Kubernetes terminationGracePeriodSeconds.

Examples:
  keelfs run s3://my-bucket/uploads /var/www/uploads --app-user www-data -- php-fpm -F
  docker run --device /dev/fuse --cap-add SYS_ADMIN --stop-timeout 45 my-image \
    keelfs run s3://my-bucket/data /data -- /app/server

Flags:
`

// forwardedSignals are passed on to the app. SIGTERM and SIGINT also stop
// it. SIGURG is the Go runtime's own and SIGCHLD is for reaping.
var forwardedSignals = []os.Signal{syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT,
	syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGWINCH}

// appOptions are the flags of `keelfs run` beyond the mount's.
type appOptions struct {
	stopTimeout time.Duration
	user        string
	cred        *syscall.Credential
}

func runAppCmd(args []string) error {
	split := -1
	for i, a := range args {
		if a == "--" {
			split = i
			break
		}
	}
	var o appOptions
	extra := func(f *pflag.FlagSet) {
		f.DurationVar(&o.stopTimeout, "app-stop-timeout", 10*time.Second, "on SIGTERM, how long the app has to exit before it gets SIGKILL")
		f.StringVar(&o.user, "app-user", "", "run the app as this user: NAME, UID, NAME:GROUP or UID:GID (implies --allow-other)")
	}
	if split < 0 {
		for _, a := range args {
			if a == "-h" || a == "--help" {
				_, err := parseMountArgs("run", args, runUsage, extra)
				return err
			}
		}
		return usageErr("run needs the app after --: keelfs run [flags] BUCKET[/PREFIX] MOUNTPOINT -- COMMAND [ARGS...]")
	}
	cfg, err := parseMountArgs("run", args[:split], runUsage, extra)
	if err != nil {
		return err
	}
	command := args[split+1:]
	if len(command) == 0 {
		return usageErr("run needs the app after --: keelfs run [flags] BUCKET[/PREFIX] MOUNTPOINT -- COMMAND [ARGS...]")
	}
	if o.stopTimeout < 0 {
		return usageErr("--app-stop-timeout must not be negative")
	}
	if o.cred, err = lookupCredential(o.user); err != nil {
		return usageErr("--app-user: %v", err)
	}
	if o.cred != nil {
		// Without allow_other nobody but the mounting user may enter the
		// mount: the app would get EACCES on every file.
		cfg.AllowOther = true
	}
	cfg.Foreground = true
	return supervise(cfg, command, o)
}

// lookupCredential resolves --app-user. Names are looked up in
// /etc/passwd and /etc/group (the pure-Go lookup: the binary is static).
func lookupCredential(spec string) (*syscall.Credential, error) {
	if spec == "" {
		return nil, nil
	}
	name, group, hasGroup := strings.Cut(spec, ":")
	var uid, gid uint64
	var err error
	if uid, err = strconv.ParseUint(name, 10, 32); err != nil {
		u, lerr := user.Lookup(name)
		if lerr != nil {
			return nil, fmt.Errorf("no user %q (give a numeric UID:GID where there is no /etc/passwd)", name)
		}
		uid, _ = strconv.ParseUint(u.Uid, 10, 32)
		gid, _ = strconv.ParseUint(u.Gid, 10, 32)
	} else if u, lerr := user.LookupId(name); lerr == nil {
		gid, _ = strconv.ParseUint(u.Gid, 10, 32)
	} else {
		gid = uid
	}
	if hasGroup {
		if gid, err = strconv.ParseUint(group, 10, 32); err != nil {
			g, lerr := user.LookupGroup(group)
			if lerr != nil {
				return nil, fmt.Errorf("no group %q", group)
			}
			gid, _ = strconv.ParseUint(g.Gid, 10, 32)
		}
	}
	// No supplementary groups: root's must not pass to the app.
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}, nil
}

// supervise mounts, runs the app until it exits or a signal stops it, and
// then drains and unmounts through the same finish as `keelfs mount`.
func supervise(cfg *mountConfig, command []string, o appOptions) error {
	setMemoryLimit()
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, forwardedSignals...)
	// Reaping starts before the app does, so that its exit is not missed.
	chld := make(chan os.Signal, 1)
	signal.Notify(chld, syscall.SIGCHLD)
	defer signal.Stop(chld)
	pid1 := os.Getpid() == 1
	if !pid1 {
		// The app's orphans come to us, as they would to PID 1, so that
		// they are reaped and stopped with it rather than left writing.
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			return fmt.Errorf("become a subreaper: %w", err)
		}
	}
	log, err := newLogger(cfg)
	if err != nil {
		return withCode(exitUsage, err)
	}
	slog.SetDefault(log)
	// The mount point is the app's directory in its own container, which
	// need not exist in the image: make it, as docker -v does.
	if _, err := os.Stat(cfg.MountPoint); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(cfg.MountPoint, 0o755); err != nil {
			return withCode(exitMountPoint, fmt.Errorf("create mount point: %w", err))
		}
		log.Info("created the mount point", "mountpoint", cfg.MountPoint)
	}
	m, err := startMount(cfg, log, nil)
	if err != nil {
		return err
	}
	s := &supervisor{m: m, log: log, cfg: cfg, opts: o, sigs: sigs, chld: chld, pid1: pid1}
	return s.run(command)
}

// supervisor runs one app on a live mount. It lives on one goroutine: the
// signal channels serialise everything it reacts to.
type supervisor struct {
	m    *mount
	log  *slog.Logger
	cfg  *mountConfig
	opts appOptions
	sigs chan os.Signal // forwardedSignals
	chld chan os.Signal // SIGCHLD
	pid1 bool

	app       *exec.Cmd
	appStatus syscall.WaitStatus
	appDone   bool
}

func (s *supervisor) run(command []string) error {
	// A stop that came while the mount started means: do not start.
	select {
	case sig := <-s.sigs:
		if sig == syscall.SIGTERM || sig == syscall.SIGINT {
			s.log.Info("stopped before the app started", "signal", sig.String())
			if err := s.finish(true, false); err != nil {
				return err
			}
			return withCode(128+int(sig.(syscall.Signal)), errReported)
		}
	default:
	}
	if state, err := probeDaemon(s.cfg.MountPoint, 10*time.Second); state != daemonLive {
		s.log.Error("the new mount does not answer; not starting the app", "err", err)
		if ferr := s.finish(true, false); ferr != nil {
			return ferr
		}
		return fmt.Errorf("the mount at %s does not answer: %v", s.cfg.MountPoint, err)
	}
	notifySystemd(s.log, daemon.SdNotifyReady+"\nSTATUS=serving "+s.cfg.MountPoint+" to "+filepath.Base(command[0]))

	// Pdeathsig is tied to the thread that forks: this goroutine keeps its
	// thread until the process ends, so the app dies with keelfs (a crash
	// must not leave it writing into a dead mount).
	runtime.LockOSThread()
	s.app = exec.Command(command[0], command[1:]...)
	s.app.Stdin, s.app.Stdout, s.app.Stderr = os.Stdin, os.Stdout, os.Stderr
	s.app.Env = withoutEnv(os.Environ(), "NOTIFY_SOCKET")
	s.app.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Credential: s.opts.cred}
	if err := s.app.Start(); err != nil {
		code := exitError
		switch {
		case errors.Is(err, exec.ErrNotFound), errors.Is(err, os.ErrNotExist):
			code = 127
		case errors.Is(err, os.ErrPermission), errors.Is(err, syscall.ENOEXEC):
			code = 126
		}
		s.log.Error("cannot start the app", "command", command[0], "err", err)
		if ferr := s.finish(true, false); ferr != nil {
			return ferr
		}
		return withCode(code, fmt.Errorf("cannot start %s: %v", command[0], err))
	}
	s.log.Info("app started", "command", strings.Join(command, " "), "pid", s.app.Process.Pid)

	mountGone := make(chan struct{})
	go func() {
		s.m.fsys.Wait()
		close(mountGone)
	}()
	var (
		stopSig   os.Signal // the signal that stopped us, if one did
		stopping  bool      // the app has been asked to stop
		killAfter <-chan time.Time
		lost      bool // the mount went away under the app
	)
	stop := func(sig syscall.Signal) {
		if !stopping {
			stopping = true
			killAfter = time.After(s.opts.stopTimeout)
		}
		s.signalApp(sig)
	}
	safety := time.NewTicker(time.Second) // in case a SIGCHLD was merged away
	defer safety.Stop()
	for !s.appDone {
		select {
		case sig := <-s.sigs:
			if (sig == syscall.SIGTERM || sig == syscall.SIGINT) && stopSig == nil {
				stopSig = sig
				s.log.Info("stopping the app first, then uploading everything pending and unmounting", "signal", sig.String(),
					"app_stop_timeout", s.opts.stopTimeout.String(), "shutdown_timeout", s.cfg.ShutdownTimeout.String())
				notifySystemd(s.log, daemon.SdNotifyStopping+"\nSTATUS=stopping the app")
				stop(sig.(syscall.Signal))
				continue
			}
			s.signalApp(sig.(syscall.Signal))
		case <-s.chld:
			s.reap()
		case <-safety.C:
			s.reap()
		case <-mountGone:
			mountGone = nil
			lost = true
			s.log.Error("the mount went away while the app ran; stopping the app", "mountpoint", s.cfg.MountPoint)
			stop(syscall.SIGTERM)
		case <-killAfter:
			killAfter = nil
			s.log.Warn("the app did not exit within --app-stop-timeout; killing it", "timeout", s.opts.stopTimeout.String())
			s.signalApp(syscall.SIGKILL)
		}
	}
	code := exitStatus(s.appStatus)
	s.log.Info("app exited", "status", code)
	s.stopLeftovers()
	if lost {
		s.detachDead()
	}
	if err := s.finish(!lost, stopSig != nil); err != nil {
		return err
	}
	if lost {
		return fmt.Errorf("the mount at %s went away while the app ran; the app was stopped (its status: %d)", s.cfg.MountPoint, code)
	}
	if code != 0 {
		return withCode(code, errReported)
	}
	return nil
}

// finish hands over to the mount's finish. Stop signals now go to the
// drain: a new channel is registered before the old one stops, so that no
// SIGTERM falls through to the default action and kills the process.
func (s *supervisor) finish(unmount, signalled bool) error {
	stops := make(chan os.Signal, 2)
	signal.Notify(stops, syscall.SIGTERM, syscall.SIGINT)
	signal.Stop(s.sigs)
	return s.m.finish(stops, unmount, signalled)
}

func (s *supervisor) signalApp(sig syscall.Signal) {
	if s.appDone {
		return
	}
	if err := syscall.Kill(s.app.Process.Pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		s.log.Warn("could not signal the app", "signal", sig.String(), "err", err)
	}
}

// reap collects every child that has exited: the app, and the orphans the
// kernel hands to PID 1 or to a subreaper.
func (s *supervisor) reap() {
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil || pid <= 0 {
			return
		}
		if s.app != nil && pid == s.app.Process.Pid {
			s.appStatus, s.appDone = ws, true
			// The status is ours; let the os.Process go without a Wait.
			if rerr := s.app.Process.Release(); rerr != nil {
				s.log.Debug("release app process", "err", rerr)
			}
		} else {
			s.log.Debug("reaped an orphan", "pid", pid, "status", exitStatus(ws))
		}
	}
}

// stopLeftovers stops what the app left running (a daemonised helper, a
// worker whose parent died) before the drain, so that nothing writes into
// the mount while it is being emptied: SIGTERM, then SIGKILL after the
// app's stop timeout.
func (s *supervisor) stopLeftovers() {
	left := s.leftovers()
	if left == 0 {
		return
	}
	s.log.Info("stopping processes the app left running", "count", left)
	s.killLeftovers(syscall.SIGTERM)
	deadline := time.Now().Add(s.opts.stopTimeout)
	for s.leftovers() > 0 {
		if time.Now().After(deadline) {
			s.log.Warn("processes the app left did not exit within --app-stop-timeout; killing them", "count", s.leftovers())
			s.killLeftovers(syscall.SIGKILL)
			deadline = time.Now().Add(5 * time.Second)
			for s.leftovers() > 0 && time.Now().Before(deadline) {
				s.waitChild(100 * time.Millisecond)
			}
			return
		}
		s.waitChild(100 * time.Millisecond)
	}
}

func (s *supervisor) waitChild(d time.Duration) {
	select {
	case <-s.chld:
	case <-time.After(d):
	}
	s.reap()
}

// leftovers counts the processes other than keelfs that remain: every
// other process in the PID namespace for PID 1, else our descendants.
func (s *supervisor) leftovers() int {
	s.reap()
	if s.pid1 {
		if syscall.Kill(-1, 0) == nil {
			return 1 // at least one; kill(-1) cannot count them
		}
		return 0
	}
	return len(descendants(os.Getpid()))
}

func (s *supervisor) killLeftovers(sig syscall.Signal) {
	if s.pid1 {
		// kill(-1) from PID 1 reaches every process in the namespace
		// except itself.
		if err := syscall.Kill(-1, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
			s.log.Warn("could not signal leftover processes", "err", err)
		}
		return
	}
	for _, pid := range descendants(os.Getpid()) {
		if err := syscall.Kill(pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
			s.log.Warn("could not signal a leftover process", "pid", pid, "err", err)
		}
	}
}

// detachDead removes a mount whose FUSE connection died under the app
// (aborted, or the server loop ended), so that the mount point is not left
// answering ENOTCONN. A mount someone already unmounted is gone already.
func (s *supervisor) detachDead() {
	at, err := mountsAt(s.cfg.MountPoint)
	if err != nil || len(at) == 0 || at[len(at)-1].fstype != "fuse.keelfs" {
		return
	}
	if state, _ := probeDaemon(s.cfg.MountPoint, 2*time.Second); state == daemonDead {
		if err := syscall.Unmount(s.cfg.MountPoint, syscall.MNT_DETACH); err != nil {
			s.log.Warn("could not detach the dead mount", "mountpoint", s.cfg.MountPoint, "err", err)
		}
	}
}

// descendants lists the processes below pid, from /proc. It returns none
// when /proc belongs to another PID namespace (its self is not us): the
// numbers there would name other processes.
func descendants(pid int) []int {
	if self, err := os.Readlink("/proc/self"); err != nil || self != strconv.Itoa(os.Getpid()) {
		return nil
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	children := map[int][]int{}
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces and parentheses.
		i := strings.LastIndexByte(string(b), ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 2 {
			continue
		}
		ppid, err := strconv.Atoi(f[1])
		if err != nil {
			continue
		}
		children[ppid] = append(children[ppid], p)
	}
	var out []int
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range children[p] {
			out = append(out, c)
			queue = append(queue, c)
		}
	}
	return out
}

// exitStatus is the shell's view of a wait status: the exit code, or 128+N
// for a process ended by signal N.
func exitStatus(ws syscall.WaitStatus) int {
	switch {
	case ws.Exited():
		return ws.ExitStatus()
	case ws.Signaled():
		return 128 + int(ws.Signal())
	}
	return exitError
}

func withoutEnv(env []string, name string) []string {
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, name+"=") {
			out = append(out, kv)
		}
	}
	return out
}
