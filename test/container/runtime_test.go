package container

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/keelfs/keelfs/test/harness"
)

// bind is a host directory or file seen in a container.
type bind struct {
	Host, Container string
	Propagation     string // "", "rshared", "rslave"
	ReadOnly        bool
}

// spec is one container to start. Entrypoint "" means the image's
// (keelfs).
type spec struct {
	Name       string
	Entrypoint string
	Args       []string
	Env        map[string]string
	Binds      []bind
	// Scratch are directories of the container's own filesystem that the
	// test uses (a mount point that is no volume). Docker has them; the
	// unshare stand-in makes them temporary directories.
	Scratch     []string
	Privileged  bool
	FUSE        bool   // --device /dev/fuse --cap-add SYS_ADMIN
	User        string // UID:GID
	StopTimeout time.Duration
	// Health is the container's health check command, with its interval;
	// nil for none (and then the image's).
	Health         []string
	HealthInterval time.Duration
}

// container is a started container.
type container interface {
	// Healthy waits until the health check passes.
	Healthy(t *testing.T, timeout time.Duration)
	// Stop sends SIGTERM and waits up to the stop timeout (then SIGKILL),
	// as docker stop and the ECS agent do, and returns the exit status.
	Stop(t *testing.T) int
	// Wait waits for the container to exit by itself.
	Wait(t *testing.T, timeout time.Duration) int
	Running(t *testing.T) bool
	Logs() string
}

// runtime starts containers from the keelfs image.
type runtime interface {
	Name() string
	Start(t *testing.T, s spec) container
}

var (
	rtOnce sync.Once
	rt     runtime
	rtErr  error
	// images built by this test process, removed by TestMain.
	builtImage string
)

// theRuntime returns docker when it works here, else the unshare stand-in.
// The image is built once per test process, with `make image`.
func theRuntime(t *testing.T) runtime {
	t.Helper()
	harness.RequireFUSE(t)
	rtOnce.Do(func() {
		out, err := exec.Command("docker", "info", "--format", "{{.ServerVersion}}").CombinedOutput()
		if os.Getenv("KEELFS_CONTAINERS") == "unshare" { // to try the stand-in where docker works
			out, err = []byte("KEELFS_CONTAINERS=unshare"), errors.New("not asked for")
		}
		if err != nil {
			rt = &unshareRuntime{}
			rtErr = fmt.Errorf("docker does not work here (%v: %s)", err, bytes.TrimSpace(out))
			return
		}
		var b [4]byte
		rand.Read(b[:])
		image := "keelfs:test-" + hex.EncodeToString(b[:])
		start := time.Now()
		cmd := exec.Command("make", "image", "IMAGE="+image)
		cmd.Dir = harness.RepoRoot()
		// Not the jobserver of a make that runs this test.
		cmd.Env = withoutVars(os.Environ(), "MAKEFLAGS", "MFLAGS", "MAKELEVEL")
		if out, err := cmd.CombinedOutput(); err != nil {
			rtErr = fmt.Errorf("make image: %v\n%s", err, out)
			rt = nil
			return
		}
		builtImage = image
		rt = &dockerRuntime{image: image}
		fmt.Printf("container tests: docker %s, image %s built with make image in %v\n", bytes.TrimSpace(out), image, time.Since(start).Round(time.Second))
	})
	if rt == nil {
		t.Fatalf("%v", rtErr)
	}
	if rtErr != nil {
		t.Logf("NOT IN DOCKER: %v; this test runs its containers in fresh mount and PID namespaces made with unshare instead", rtErr)
	}
	return rt
}

func withoutVars(env []string, names ...string) []string {
	var out []string
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		keep := true
		for _, n := range names {
			keep = keep && k != n
		}
		if keep {
			out = append(out, kv)
		}
	}
	return out
}

func TestMain(m *testing.M) {
	code := harness.Main(m)
	if builtImage != "" {
		if out, err := exec.Command("docker", "rmi", "-f", builtImage).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "remove image %s: %v %s\n", builtImage, err, out)
		}
	}
	os.Exit(code)
}

// docker runs a docker command and returns its output; it fails the test
// on error.
func docker(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "docker", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

type dockerRuntime struct{ image string }

func (d *dockerRuntime) Name() string { return "docker" }

// Start creates the container through the Docker Engine API, as the ECS
// agent does: the docker CLI cannot set an exec-form health check, and
// the image has no shell for the CLI's CMD-SHELL form.
func (d *dockerRuntime) Start(t *testing.T, s spec) container {
	t.Helper()
	var b [4]byte
	rand.Read(b[:])
	name := "keelfs-test-" + s.Name + "-" + hex.EncodeToString(b[:])
	type device struct{ PathOnHost, PathInContainer, CgroupPermissions string }
	type healthcheck struct {
		Test                           []string
		Interval, Timeout, StartPeriod int64
		Retries                        int
	}
	type hostConfig struct {
		Binds       []string
		NetworkMode string
		Privileged  bool
		CapAdd      []string
		Devices     []device
		SecurityOpt []string
	}
	cfg := struct {
		Image       string
		Entrypoint  []string `json:",omitempty"`
		Cmd         []string
		Env         []string
		User        string       `json:",omitempty"`
		Healthcheck *healthcheck `json:",omitempty"`
		StopTimeout *int         `json:",omitempty"`
		HostConfig  hostConfig
	}{Image: d.image, Cmd: s.Args, User: s.User, HostConfig: hostConfig{NetworkMode: "host", Privileged: s.Privileged}}
	if s.Entrypoint != "" {
		cfg.Entrypoint = []string{s.Entrypoint}
	}
	for _, k := range sortedKeys(s.Env) {
		cfg.Env = append(cfg.Env, k+"="+s.Env[k])
	}
	if s.FUSE {
		cfg.HostConfig.CapAdd = []string{"SYS_ADMIN"}
		cfg.HostConfig.Devices = []device{{"/dev/fuse", "/dev/fuse", "rwm"}}
	}
	if missing := missingCaps(t); s.Privileged && len(missing) > 0 {
		// runc gives a privileged container every capability and fails
		// ("unable to apply caps") where the host's bounding set lacks
		// one. What keelfs needs of privileged is FUSE and mounts; give it
		// everything the host has instead.
		t.Logf("this host's capability bounding set lacks %v, which docker --privileged asks for: the privileged container gets every capability the host has, /dev/fuse, and no seccomp or AppArmor profile instead", missing)
		cfg.HostConfig.Privileged = false
		cfg.HostConfig.CapAdd = hostCaps(t)
		cfg.HostConfig.Devices = []device{{"/dev/fuse", "/dev/fuse", "rwm"}}
		cfg.HostConfig.SecurityOpt = []string{"seccomp=unconfined", "apparmor=unconfined"}
	}
	if s.StopTimeout > 0 {
		secs := int(s.StopTimeout.Seconds())
		cfg.StopTimeout = &secs
	}
	if s.Health != nil {
		cfg.Healthcheck = &healthcheck{Test: append([]string{"CMD"}, s.Health...), Interval: int64(s.HealthInterval),
			Timeout: int64(10 * time.Second), Retries: 3}
	}
	for _, bd := range s.Binds {
		v := bd.Host + ":" + bd.Container
		var opts []string
		if bd.ReadOnly {
			opts = append(opts, "ro")
		}
		if bd.Propagation != "" {
			opts = append(opts, bd.Propagation)
		}
		if len(opts) > 0 {
			v += ":" + strings.Join(opts, ",")
		}
		cfg.HostConfig.Binds = append(cfg.HostConfig.Binds, v)
	}
	c := &dockerContainer{name: name, t: t}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("docker logs %s:\n%s", name, tailStr(c.Logs(), 8000))
		}
		if out, err := exec.Command("docker", "rm", "-f", name).CombinedOutput(); err != nil && !strings.Contains(string(out), "No such container") {
			t.Errorf("docker rm -f %s: %v %s", name, err, out)
		}
	})
	body, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	engine(t, "POST", "/containers/create?name="+name, body, http.StatusCreated)
	engine(t, "POST", "/containers/"+name+"/start", nil, http.StatusNoContent)
	return c
}

// capNames are the Linux capabilities by number (linux/capability.h), up
// to AUDIT_READ: docker 20.10 (Debian 12) refuses the later ones by name.
var capNames = []string{"CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
	"SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER",
	"SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
	"SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP",
	"MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ"}

// boundingSet reads this process's capability bounding set.
func boundingSet(t *testing.T) uint64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapBnd:"); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no CapBnd in /proc/self/status")
	return 0
}

// missingCaps lists the capabilities the host's bounding set lacks.
func missingCaps(t *testing.T) []string {
	set := boundingSet(t)
	var out []string
	for i, n := range capNames {
		if set&(1<<i) == 0 {
			out = append(out, n)
		}
	}
	return out
}

func hostCaps(t *testing.T) []string {
	set := boundingSet(t)
	var out []string
	for i, n := range capNames {
		if set&(1<<i) != 0 {
			out = append(out, n)
		}
	}
	return out
}

// engine sends one request to the Docker Engine API on its unix socket.
func engine(t *testing.T, method, path string, body []byte, want int) []byte {
	t.Helper()
	cl := &http.Client{Timeout: time.Minute, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", "/var/run/docker.sock")
		},
	}}
	req, err := http.NewRequest(method, "http://docker/v1.41"+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := cl.Do(req)
	if err != nil {
		t.Fatalf("docker engine %s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != want {
		t.Fatalf("docker engine %s %s: %s: %s", method, path, resp.Status, out)
	}
	return out
}

type dockerContainer struct {
	name string
	t    *testing.T
}

func (c *dockerContainer) Healthy(t *testing.T, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		st := docker(t, "inspect", "-f", "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}", c.name)
		if strings.HasSuffix(st, " healthy") {
			return
		}
		if !strings.HasPrefix(st, "running") {
			t.Fatalf("container %s is %s:\n%s", c.name, st, tailStr(c.Logs(), 4000))
		}
		if time.Now().After(deadline) {
			t.Fatalf("container %s not healthy after %v (%s); health log: %s", c.name, timeout, st,
				docker(t, "inspect", "-f", "{{json .State.Health}}", c.name))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (c *dockerContainer) Stop(t *testing.T) int {
	t.Helper()
	// docker stop without -t uses the container's --stop-timeout, as the
	// ECS agent uses stopTimeout.
	docker(t, "stop", c.name)
	return c.exitCode(t)
}

func (c *dockerContainer) Wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "docker", "wait", c.name).CombinedOutput(); err != nil {
		t.Fatalf("docker wait %s: %v %s\n%s", c.name, err, out, tailStr(c.Logs(), 4000))
	}
	return c.exitCode(t)
}

func (c *dockerContainer) Running(t *testing.T) bool {
	return docker(t, "inspect", "-f", "{{.State.Running}}", c.name) == "true"
}

func (c *dockerContainer) exitCode(t *testing.T) int {
	t.Helper()
	n, err := strconv.Atoi(docker(t, "inspect", "-f", "{{.State.ExitCode}}", c.name))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func (c *dockerContainer) Logs() string {
	out, _ := exec.Command("docker", "logs", c.name).CombinedOutput()
	return string(out)
}

// unshareRuntime stands in for docker where docker cannot start: each
// "container" is a process tree in fresh mount and PID namespaces, its
// binds replaced by the host paths themselves (container paths in the
// arguments and environment are rewritten), its scratch directories by
// temporary ones, the image's keelfs by the binary under test.
type unshareRuntime struct{}

func (u *unshareRuntime) Name() string { return "unshare" }

func (u *unshareRuntime) Start(t *testing.T, s spec) container {
	t.Helper()
	binds := append([]bind(nil), s.Binds...)
	for _, d := range s.Scratch {
		binds = append(binds, bind{Host: openDir(t, "keelfs-scratch-", 0o755), Container: d})
	}
	sort.Slice(binds, func(i, j int) bool { return len(binds[i].Container) > len(binds[j].Container) })
	rewrite := func(v string) string {
		for _, bd := range binds {
			if v == bd.Container || strings.HasPrefix(v, bd.Container+"/") {
				return bd.Host + strings.TrimPrefix(v, bd.Container)
			}
			if k, rest, ok := strings.Cut(v, "="); ok && (rest == bd.Container || strings.HasPrefix(rest, bd.Container+"/")) {
				return k + "=" + bd.Host + strings.TrimPrefix(rest, bd.Container)
			}
		}
		return v
	}
	entry := s.Entrypoint
	if entry == "" || entry == "/usr/local/bin/keelfs" {
		entry = harness.Binary(t)
	}
	args := []string{"--mount", "--propagation", "unchanged", "--pid", "--fork", "--mount-proc", "--kill-child", "--"}
	if s.User != "" {
		uid, gid, _ := strings.Cut(s.User, ":")
		args = append(args, "setpriv", "--reuid="+uid, "--regid="+gid, "--clear-groups", "--")
	}
	args = append(args, rewrite(entry))
	for _, a := range s.Args {
		args = append(args, rewrite(a))
	}
	logPath := filepath.Join(t.TempDir(), s.Name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("unshare", args...)
	cmd.Env = os.Environ()
	for _, k := range sortedKeys(s.Env) {
		cmd.Env = append(cmd.Env, k+"="+rewrite(s.Env[k]))
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("unshare: %v", err)
	}
	c := &unshareContainer{cmd: cmd, log: logPath, done: make(chan struct{}), stop: s.StopTimeout}
	for _, a := range s.Health {
		c.health = append(c.health, rewrite(a))
	}
	if len(c.health) > 0 && c.health[0] == "/usr/local/bin/keelfs" {
		c.health[0] = harness.Binary(t)
	}
	for _, a := range s.Args {
		if strings.HasPrefix(a, "/") && rewrite(a) == a {
			if _, err := os.Stat(a); err != nil {
				t.Fatalf("the unshare stand-in would use the host's %s: declare it a bind or scratch directory", a)
			}
		}
	}
	go func() {
		c.err = cmd.Wait()
		logf.Close()
		close(c.done)
	}()
	t.Cleanup(func() {
		select {
		case <-c.done:
		default:
			cmd.Process.Kill()
			<-c.done
		}
		if t.Failed() {
			t.Logf("%s log:\n%s", s.Name, tailStr(c.Logs(), 8000))
		}
	})
	return c
}

type unshareContainer struct {
	cmd    *exec.Cmd
	log    string
	done   chan struct{}
	err    error
	stop   time.Duration
	health []string
}

func (c *unshareContainer) Healthy(t *testing.T, timeout time.Duration) {
	t.Helper()
	if len(c.health) == 0 {
		t.Fatalf("no health check to wait for")
	}
	deadline := time.Now().Add(timeout)
	for {
		// In the container's namespaces, as docker runs a check: its
		// /proc is of its own PID namespace.
		args := append([]string{"--target", strconv.Itoa(c.pid1()), "--mount", "--pid", "--"}, c.health...)
		if c.pid1() != 0 && exec.Command("nsenter", args...).Run() == nil {
			return
		}
		select {
		case <-c.done:
			t.Fatalf("exited before it was healthy (%v):\n%s", c.err, tailStr(c.Logs(), 4000))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("not healthy after %v", timeout)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// pid1 is the host pid of the namespace's PID 1.
func (c *unshareContainer) pid1() int {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", c.cmd.Process.Pid, c.cmd.Process.Pid))
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	pid, _ := strconv.Atoi(f[0])
	return pid
}

func (c *unshareContainer) Stop(t *testing.T) int {
	t.Helper()
	if pid := c.pid1(); pid != 0 {
		syscall.Kill(pid, syscall.SIGTERM)
	}
	timeout := c.stop
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	select {
	case <-c.done:
	case <-time.After(timeout):
		c.cmd.Process.Kill()
		<-c.done
	}
	return c.code()
}

func (c *unshareContainer) Wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-c.done:
	case <-time.After(timeout):
		t.Fatalf("still running after %v", timeout)
	}
	return c.code()
}

func (c *unshareContainer) Running(t *testing.T) bool {
	select {
	case <-c.done:
		return false
	default:
		return true
	}
}

func (c *unshareContainer) code() int {
	var ee *exec.ExitError
	if errors.As(c.err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return ee.ExitCode()
	}
	if c.err != nil {
		return -1
	}
	return 0
}

func (c *unshareContainer) Logs() string {
	b, _ := os.ReadFile(c.log)
	return string(b)
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func tailStr(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}
