package container

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keelfs/keelfs/test/appdata"
	"github.com/keelfs/keelfs/test/harness"
)

// serverEnv is what a keelfs container needs to reach the test server,
// given on top of a definition's environment: credentials, the endpoint
// (KEELFS_ENDPOINT, so that the definition's command is used as written)
// and a write-back delay that keeps every write pending until the stop.
func serverEnv(srv *harness.Server) map[string]string {
	env := map[string]string{
		"KEELFS_ENDPOINT":           srv.Endpoint,
		"KEELFS_FORCE_PATH_STYLE":   "true",
		"KEELFS_WRITE_BACK_DELAY":   "1h",
		"KEELFS_LOG_LEVEL":          "debug",
		"AWS_EC2_METADATA_DISABLED": "true",
	}
	for _, kv := range srv.Env() {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	return env
}

// sharedDir makes a host directory that is its own shared mount, as
// docker requires of the source of an rshared bind (this host's / is
// private). It is unmounted at cleanup, after the containers (registered
// later) are gone, and any keelfs mount left on it is detached first.
func sharedDir(t *testing.T) string {
	t.Helper()
	dir := openDir(t, "keelfs-shared-", 0o755)
	for _, args := range [][]string{{"--bind", dir, dir}, {"--make-rshared", dir}} {
		if out, err := exec.Command("mount", args...).CombinedOutput(); err != nil {
			t.Fatalf("mount %s: %v %s", strings.Join(args, " "), err, out)
		}
	}
	t.Cleanup(func() {
		for i := 0; i < 4 && harness.IsMounted(dir); i++ {
			t.Errorf("a keelfs mount was left on %s", dir)
			harness.AbortFUSE(dir)
			syscall.Unmount(dir, syscall.MNT_DETACH)
		}
		if err := syscall.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
			syscall.Unmount(dir, syscall.MNT_DETACH)
		}
	})
	return dir
}

// openDir makes a directory under os.TempDir that any user may reach
// (t.TempDir's parent is private to root), removed at cleanup.
func openDir(t *testing.T, pattern string, mode os.FileMode) string {
	t.Helper()
	dir, err := os.MkdirTemp("", pattern)
	if err == nil {
		err = os.Chmod(dir, mode)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("remove %s: %v", dir, err)
		}
	})
	return dir
}

// waitFile waits until dir holds name, or c exits.
func waitFile(t *testing.T, c container, dir, name string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
			return
		}
		if !c.Running(t) {
			t.Fatalf("the container exited before %s appeared in %s:\n%s", name, dir, tailStr(c.Logs(), 6000))
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not appear in %s within %v:\n%s", name, dir, timeout, tailStr(c.Logs(), 6000))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// appFiles names the files the test app writes with -files n.
func appFiles(n int) []string {
	var names []string
	for i := 0; i < n; i++ {
		names = append(names, fmt.Sprintf("f-%03d", i))
	}
	return names
}

// wantInS3 checks that every named file is in the bucket under prefix,
// with the test app's bytes.
func wantInS3(t *testing.T, srv *harness.Server, b, prefix string, names []string, size int) {
	t.Helper()
	for _, n := range names {
		got, ok := srv.Get(t, b, prefix+n)
		if !ok || !bytes.Equal(got, appdata.Content(n, size)) {
			t.Errorf("LOST: %s%s in S3: %d bytes (exists %v), want %d", prefix, n, len(got), ok, size)
		}
	}
}

// replaceBucket points a definition's s3://my-bucket at the test bucket.
func replaceBucket(args []string, bucket string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = strings.Replace(a, "s3://my-bucket", "s3://"+bucket, 1)
	}
	return out
}

// ecsTask is the part of an ECS task definition the ECS agent turns into
// docker containers here.
type ecsTask struct {
	Volumes []struct {
		Name string `json:"name"`
		Host struct {
			SourcePath string `json:"sourcePath"`
		} `json:"host"`
	} `json:"volumes"`
	ContainerDefinitions []ecsContainer `json:"containerDefinitions"`
}

type ecsContainer struct {
	Name            string   `json:"name"`
	Privileged      bool     `json:"privileged"`
	EntryPoint      []string `json:"entryPoint"`
	Command         []string `json:"command"`
	User            string   `json:"user"`
	LinuxParameters *struct {
		Capabilities struct {
			Add []string `json:"add"`
		} `json:"capabilities"`
		Devices []struct {
			HostPath string `json:"hostPath"`
		} `json:"devices"`
	} `json:"linuxParameters"`
	Environment []struct {
		Name  string `json:"name"`
		Value string `json:"value"`
	} `json:"environment"`
	MountPoints []struct {
		SourceVolume  string `json:"sourceVolume"`
		ContainerPath string `json:"containerPath"`
		ReadOnly      bool   `json:"readOnly"`
	} `json:"mountPoints"`
	HealthCheck *struct {
		Command []string `json:"command"`
	} `json:"healthCheck"`
	DependsOn []struct {
		ContainerName string `json:"containerName"`
		Condition     string `json:"condition"`
	} `json:"dependsOn"`
	StopTimeout int `json:"stopTimeout"`
}

func readECS(t *testing.T, name string) ecsTask {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(harness.RepoRoot(), "deploy", "ecs", name))
	if err != nil {
		t.Fatal(err)
	}
	var task ecsTask
	if err := json.Unmarshal(b, &task); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return task
}

// ecsSpec turns a container definition into a container spec as the ECS
// agent does (Binds are "sourcePath:containerPath", so a containerPath of
// "/srv:rshared" gives a propagation), with volumes mapped to host
// directories. The health check runs every second here rather than at
// the definition's interval, to keep the test short.
func ecsSpec(t *testing.T, c ecsContainer, volumes map[string]string, bucket string, env map[string]string) spec {
	t.Helper()
	s := spec{Name: c.Name, Args: replaceBucket(c.Command, bucket), Env: map[string]string{}, Privileged: c.Privileged,
		User: c.User, StopTimeout: time.Duration(c.StopTimeout) * time.Second, HealthInterval: time.Second}
	if len(c.EntryPoint) > 0 {
		s.Entrypoint = c.EntryPoint[0]
		if len(c.EntryPoint) > 1 {
			s.Args = append(c.EntryPoint[1:], s.Args...)
		}
	}
	if lp := c.LinuxParameters; lp != nil {
		for _, d := range lp.Devices {
			s.FUSE = s.FUSE || d.HostPath == "/dev/fuse"
		}
		for _, c := range lp.Capabilities.Add {
			if c != "SYS_ADMIN" {
				t.Fatalf("the test maps only SYS_ADMIN, not %s", c)
			}
		}
	}
	for _, e := range c.Environment {
		s.Env[e.Name] = e.Value
	}
	for k, v := range env {
		s.Env[k] = v
	}
	for _, mp := range c.MountPoints {
		host, ok := volumes[mp.SourceVolume]
		if !ok {
			t.Fatalf("container %s mounts volume %q that the task does not define", c.Name, mp.SourceVolume)
		}
		path, prop, _ := strings.Cut(mp.ContainerPath, ":")
		s.Binds = append(s.Binds, bind{Host: host, Container: path, Propagation: prop, ReadOnly: mp.ReadOnly})
	}
	if c.HealthCheck != nil {
		if c.HealthCheck.Command[0] != "CMD" {
			t.Fatalf("health check %q: the image has no shell", c.HealthCheck.Command)
		}
		s.Health = c.HealthCheck.Command[1:]
	}
	return s
}
