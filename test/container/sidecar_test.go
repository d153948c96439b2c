package container

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/keelfs/keelfs/test/appdata"
	"github.com/keelfs/keelfs/test/harness"
)

// The sidecar tests run each deploy file that pairs a keelfs container
// with an app (ECS, compose, Kubernetes) as its orchestrator would, in
// docker. In each, keelfs mounts onto the shared volume's own mount point
// (rshared); once its health check passes, the app (as www-data, uid 33)
// writes through the same volume (rslave); the host sees the mount too,
// and reads and writes through it. Then the app is stopped first (it
// writes one more file while it stops), and keelfs after it, within its
// stop timeout: every byte is in S3, nothing was uploaded before the stop
// (all of it was pending), and the mount is gone from the host.

// sidecarPair is what a deploy file says, in container specs. The app's
// spec has the definition's volumes; runSidecar puts the test app in it.
type sidecarPair struct {
	keelfs, app spec
	appDir      string // the shared volume in the app
	prefix      string // of keelfs's source, with a trailing /
}

func runSidecar(t *testing.T, rt runtime, srv *harness.Server, b string, p sidecarPair, shared string) {
	t.Helper()
	status := openDir(t, "keelfs-status-", 0o777)
	sidecar := rt.Start(t, p.keelfs)
	sidecar.Healthy(t, 60*time.Second)
	if !harness.IsMounted(shared) {
		t.Fatalf("the sidecar is healthy but its mount did not propagate to the host's %s", shared)
	}
	const files, size = 10, 150 << 10
	a := p.app
	a.Entrypoint = "/testapp"
	a.User = "33:33"
	a.Binds = append(a.Binds, bind{Host: harness.TestApp(t), Container: "/testapp", ReadOnly: true}, bind{Host: status, Container: "/status"})
	a.Args = []string{"-dir", p.appDir, "-status", "/status", "-files", strconv.Itoa(files), "-size", strconv.Itoa(size), "-on-term", "goodbye"}
	appC := rt.Start(t, a)
	waitFile(t, appC, status, "written", 60*time.Second)

	for _, n := range appFiles(files) {
		got, err := os.ReadFile(filepath.Join(shared, n))
		if err != nil || !bytes.Equal(got, appdata.Content(n, size)) {
			t.Errorf("the host reads %s through the volume: %d bytes, %v", n, len(got), err)
		}
	}
	if err := os.WriteFile(filepath.Join(shared, "from-host"), appdata.Content("from-host", size), 0o644); err != nil {
		t.Errorf("the host writes through the volume: %v", err)
	}
	if keys := srv.Keys(t, b, ""); len(keys) != 0 {
		t.Errorf("S3 has %v before the stop: the writes were meant to be pending", keys)
	}

	start := time.Now()
	if code := appC.Stop(t); code != 0 {
		t.Errorf("the app exited %d", code)
	}
	if code := sidecar.Stop(t); code != 0 {
		t.Errorf("the keelfs sidecar exited %d, want 0 (everything uploaded)", code)
	}
	t.Logf("%s: app and sidecar stopped in %v", rt.Name(), time.Since(start).Round(time.Millisecond))
	wantInS3(t, srv, b, p.prefix, append(appFiles(files), "goodbye", "from-host"), size)
	if harness.IsMounted(shared) {
		t.Errorf("the keelfs mount is still on the host after the sidecar stopped")
	}
	if !strings.Contains(sidecar.Logs(), "stopped; everything is in S3") {
		t.Errorf("the sidecar's log does not end with everything in S3:\n%s", tailStr(sidecar.Logs(), 3000))
	}
}

// TestSidecarECS runs deploy/ecs/sidecar-task-definition.json as the ECS
// agent would: Binds from containerPath (":rshared", ":rslave"), the
// exec-form health check, the app started once keelfs is HEALTHY and
// stopped first, each within its stopTimeout.
func TestSidecarECS(t *testing.T) {
	rt := theRuntime(t)
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	task := readECS(t, "sidecar-task-definition.json")
	shared := sharedDir(t)
	volumes := map[string]string{}
	for _, v := range task.Volumes {
		if strings.Contains(v.Name, "shared") {
			volumes[v.Name] = shared
		} else {
			volumes[v.Name] = openDir(t, "keelfs-"+v.Name+"-", 0o700)
		}
	}
	var p sidecarPair
	for _, c := range task.ContainerDefinitions {
		if len(c.Command) > 0 && c.Command[0] == "mount" {
			p.keelfs = ecsSpec(t, c, volumes, b, serverEnv(srv))
			p.prefix = prefixOf(p.keelfs.Args[1])
		} else {
			p.app = ecsSpec(t, c, volumes, b, nil)
		}
	}
	if len(p.app.Binds) != 1 {
		t.Fatalf("app binds %v, want the shared volume", p.app.Binds)
	}
	p.appDir = p.app.Binds[0].Container
	runSidecar(t, rt, srv, b, p, shared)
}

// TestSidecarCompose runs deploy/compose/docker-compose.yml as docker
// compose would: its binds with their propagation, devices, capabilities,
// health check and stop_grace_period, the app started once keelfs is
// service_healthy and stopped first.
func TestSidecarCompose(t *testing.T) {
	rt := theRuntime(t)
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	raw, err := os.ReadFile(filepath.Join(harness.RepoRoot(), "deploy", "compose", "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Services map[string]struct {
			Command     []string          `yaml:"command"`
			Environment map[string]string `yaml:"environment"`
			Devices     []string          `yaml:"devices"`
			CapAdd      []string          `yaml:"cap_add"`
			Privileged  bool              `yaml:"privileged"`
			Volumes     []struct {
				Type, Source, Target string
				Bind                 struct{ Propagation string }
			} `yaml:"volumes"`
			Healthcheck struct {
				Test []string `yaml:"test"`
			} `yaml:"healthcheck"`
			StopGracePeriod string `yaml:"stop_grace_period"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(raw, &f); err != nil {
		t.Fatal(err)
	}
	shared := sharedDir(t)
	hostDirs := map[string]string{}
	var p sidecarPair
	for name, svc := range f.Services {
		s := spec{Name: name, Args: replaceBucket(svc.Command, b), Env: map[string]string{}, Privileged: svc.Privileged,
			HealthInterval: time.Second}
		for _, d := range svc.Devices {
			s.FUSE = s.FUSE || strings.HasPrefix(d, "/dev/fuse")
		}
		if s.FUSE && !strings.Contains(strings.Join(svc.CapAdd, ","), "SYS_ADMIN") {
			t.Fatalf("%s has /dev/fuse without SYS_ADMIN", name)
		}
		for k, v := range svc.Environment {
			s.Env[k] = v
		}
		if svc.StopGracePeriod != "" {
			if s.StopTimeout, err = time.ParseDuration(svc.StopGracePeriod); err != nil {
				t.Fatal(err)
			}
		}
		for _, v := range svc.Volumes {
			if v.Type != "bind" {
				t.Fatalf("%s: volume type %q", name, v.Type)
			}
			if hostDirs[v.Source] == "" {
				if v.Bind.Propagation != "" {
					hostDirs[v.Source] = shared
				} else {
					hostDirs[v.Source] = openDir(t, "keelfs-volume-", 0o700)
				}
			}
			s.Binds = append(s.Binds, bind{Host: hostDirs[v.Source], Container: v.Target, Propagation: v.Bind.Propagation})
		}
		if len(svc.Command) > 0 && svc.Command[0] == "mount" {
			if svc.Healthcheck.Test[0] != "CMD" {
				t.Fatalf("health check %q: the image has no shell", svc.Healthcheck.Test)
			}
			s.Health = svc.Healthcheck.Test[1:]
			for k, v := range serverEnv(srv) {
				s.Env[k] = v
			}
			p.keelfs, p.prefix = s, prefixOf(s.Args[1])
		} else {
			p.app, p.appDir = s, s.Binds[0].Container
		}
	}
	runSidecar(t, rt, srv, b, p, shared)
}

// TestSidecarKubernetes runs deploy/kubernetes/pod-sidecar.yaml as the
// kubelet would, in docker: the emptyDir is a host directory, Bidirectional
// propagation is rshared and HostToContainer rslave, the native sidecar
// starts first and the app once its startup probe passes, and the app is
// stopped before the sidecar, each within terminationGracePeriodSeconds.
func TestSidecarKubernetes(t *testing.T) {
	rt := theRuntime(t)
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	raw, err := os.ReadFile(filepath.Join(harness.RepoRoot(), "deploy", "kubernetes", "pod-sidecar.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	type container struct {
		Name            string
		Args            []string
		Env             []struct{ Name, Value string }
		SecurityContext struct {
			Privileged bool `yaml:"privileged"`
			RunAsUser  *int `yaml:"runAsUser"`
		} `yaml:"securityContext"`
		VolumeMounts []struct {
			Name             string
			MountPath        string `yaml:"mountPath"`
			MountPropagation string `yaml:"mountPropagation"`
		} `yaml:"volumeMounts"`
		StartupProbe struct {
			Exec struct{ Command []string }
		} `yaml:"startupProbe"`
	}
	var pod struct {
		Spec struct {
			TerminationGracePeriodSeconds int         `yaml:"terminationGracePeriodSeconds"`
			InitContainers                []container `yaml:"initContainers"`
			Containers                    []container `yaml:"containers"`
			Volumes                       []struct{ Name string }
		}
	}
	if err := yaml.Unmarshal(raw, &pod); err != nil {
		t.Fatal(err)
	}
	shared := sharedDir(t)
	volumes := map[string]string{}
	propagation := map[string]string{"Bidirectional": "rshared", "HostToContainer": "rslave", "": "", "None": ""}
	toSpec := func(c container) spec {
		s := spec{Name: c.Name, Args: replaceBucket(c.Args, b), Env: map[string]string{}, Privileged: c.SecurityContext.Privileged,
			StopTimeout: time.Duration(pod.Spec.TerminationGracePeriodSeconds) * time.Second, HealthInterval: time.Second}
		for _, e := range c.Env {
			s.Env[e.Name] = e.Value
		}
		for _, vm := range c.VolumeMounts {
			if volumes[vm.Name] == "" {
				if vm.MountPropagation == "Bidirectional" {
					volumes[vm.Name] = shared
				} else {
					volumes[vm.Name] = openDir(t, "keelfs-volume-", 0o700)
				}
			}
			s.Binds = append(s.Binds, bind{Host: volumes[vm.Name], Container: vm.MountPath, Propagation: propagation[vm.MountPropagation]})
		}
		return s
	}
	if len(pod.Spec.InitContainers) != 1 || len(pod.Spec.Containers) != 1 {
		t.Fatalf("want one sidecar and one app")
	}
	p := sidecarPair{keelfs: toSpec(pod.Spec.InitContainers[0])}
	p.keelfs.Health = pod.Spec.InitContainers[0].StartupProbe.Exec.Command
	for k, v := range serverEnv(srv) {
		p.keelfs.Env[k] = v
	}
	p.prefix = prefixOf(p.keelfs.Args[1])
	p.app = toSpec(pod.Spec.Containers[0])
	p.appDir = p.app.Binds[0].Container
	runSidecar(t, rt, srv, b, p, shared)
}
