package deploy

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// defaultShutdownTimeout and defaultAppStopTimeout are keelfs's defaults
// for --shutdown-timeout and --app-stop-timeout.
const (
	defaultShutdownTimeout = 25 * time.Second
	defaultAppStopTimeout  = 10 * time.Second
)

func dir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(file)
}

func read(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir(), name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// keelfsArgs is a keelfs command line from a definition: the subcommand
// ("mount" or "run"), then BUCKET and MOUNTPOINT, then flags; for run,
// "--" and the app.
type keelfsArgs []string

// flag returns the value of --name (--name V or --name=V).
func (a keelfsArgs) flag(name string) (string, bool) {
	for i, x := range a {
		if x == "--" {
			break
		}
		if x == "--"+name && i+1 < len(a) {
			return a[i+1], true
		}
		if v, ok := strings.CutPrefix(x, "--"+name+"="); ok {
			return v, true
		}
	}
	return "", false
}

func (a keelfsArgs) has(name string) bool {
	for _, x := range a {
		if x == "--" {
			break
		}
		if x == "--"+name || x == "--"+name+"=true" {
			return true
		}
	}
	return false
}

func (a keelfsArgs) duration(t *testing.T, name string, def time.Duration) time.Duration {
	t.Helper()
	v, ok := a.flag(name)
	if !ok {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		t.Fatalf("--%s %q: %v", name, v, err)
	}
	return d
}

// check verifies what every keelfs command line in a definition needs and
// returns its mount point.
func (a keelfsArgs) check(t *testing.T, sub string) string {
	t.Helper()
	if len(a) < 3 || a[0] != sub {
		t.Fatalf("keelfs command %q: want %s BUCKET MOUNTPOINT first", a, sub)
	}
	if !strings.HasPrefix(a[1], "s3://") || !strings.HasPrefix(a[2], "/") {
		t.Errorf("keelfs command %q: want s3://BUCKET/PREFIX and an absolute mount point", a)
	}
	if sub == "mount" && !a.has("foreground") && !slices.Contains(a, "-f") {
		t.Errorf("keelfs mount in a container must stay in the foreground (--foreground): %q", a)
	}
	if !a.has("allow-other") {
		t.Errorf("no --allow-other: an app that is not root (www-data) gets EACCES on the mount: %q", a)
	}
	if _, ok := a.flag("cache-dir"); !ok {
		t.Errorf("no --cache-dir: the cache should be a volume that outlives the container: %q", a)
	}
	if sub == "run" && !slices.Contains(a, "--") {
		t.Errorf("keelfs run without -- COMMAND: %q", a)
	}
	return a[2]
}

// stopNeeds is how long keelfs needs to stop cleanly: the app's stop
// (keelfs run) and the drain.
func (a keelfsArgs) stopNeeds(t *testing.T) time.Duration {
	d := a.duration(t, "shutdown-timeout", defaultShutdownTimeout)
	if a[0] == "run" {
		d += a.duration(t, "app-stop-timeout", defaultAppStopTimeout)
	}
	return d
}

// healthCheck checks a health check command: keelfs health on the mount
// point, nothing the FROM scratch image lacks (a shell, mountpoint).
func healthCheck(t *testing.T, cmd []string, mountPoint string) {
	t.Helper()
	joined := strings.Join(cmd, " ")
	if !strings.Contains(joined, "keelfs health") || slices.Contains(cmd, "CMD-SHELL") || strings.Contains(joined, "mountpoint") {
		t.Errorf("health check %q: want [CMD] keelfs health (the image has no shell and no mountpoint)", cmd)
	}
	if mountPoint != "" && !slices.Contains(cmd, mountPoint) {
		t.Errorf("health check %q does not check the mount point %s", cmd, mountPoint)
	}
}

type ecsTask struct {
	Volumes []struct {
		Name string `json:"name"`
		Host *struct {
			SourcePath string `json:"sourcePath"`
		} `json:"host"`
	} `json:"volumes"`
	ContainerDefinitions []ecsContainer `json:"containerDefinitions"`
}

type ecsContainer struct {
	Name            string   `json:"name"`
	Image           string   `json:"image"`
	Essential       bool     `json:"essential"`
	Privileged      bool     `json:"privileged"`
	EntryPoint      []string `json:"entryPoint"`
	Command         []string `json:"command"`
	LinuxParameters *struct {
		Capabilities struct {
			Add []string `json:"add"`
		} `json:"capabilities"`
		Devices []struct {
			HostPath      string `json:"hostPath"`
			ContainerPath string `json:"containerPath"`
		} `json:"devices"`
	} `json:"linuxParameters"`
	MountPoints []struct {
		SourceVolume  string `json:"sourceVolume"`
		ContainerPath string `json:"containerPath"`
	} `json:"mountPoints"`
	HealthCheck *struct {
		Command     []string `json:"command"`
		Interval    int      `json:"interval"`
		Timeout     int      `json:"timeout"`
		Retries     int      `json:"retries"`
		StartPeriod int      `json:"startPeriod"`
	} `json:"healthCheck"`
	DependsOn []struct {
		ContainerName string `json:"containerName"`
		Condition     string `json:"condition"`
	} `json:"dependsOn"`
	StopTimeout int `json:"stopTimeout"`
}

// fuseAccess reports whether the container may mount FUSE.
func (c ecsContainer) fuseAccess() bool {
	if c.Privileged {
		return true
	}
	lp := c.LinuxParameters
	if lp == nil || !slices.Contains(lp.Capabilities.Add, "SYS_ADMIN") {
		return false
	}
	for _, d := range lp.Devices {
		if d.HostPath == "/dev/fuse" {
			return true
		}
	}
	return false
}

func readECS(t *testing.T, name string) ecsTask {
	t.Helper()
	var task ecsTask
	if err := json.Unmarshal(read(t, name), &task); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return task
}

// ecsHealth checks an ECS health check's numbers against ECS's limits.
func ecsHealth(t *testing.T, c ecsContainer, mountPoint string) {
	t.Helper()
	h := c.HealthCheck
	if h == nil {
		t.Fatalf("container %s has no healthCheck: dependsOn HEALTHY would never be met", c.Name)
	}
	if h.Command[0] != "CMD" {
		t.Errorf("healthCheck %q: want CMD (the image has no shell)", h.Command)
	}
	healthCheck(t, h.Command[1:], mountPoint)
	if h.Interval < 5 || h.Interval > 300 || h.Timeout < 2 || h.Timeout > 60 || h.Retries < 1 || h.Retries > 10 || h.StartPeriod > 300 {
		t.Errorf("healthCheck numbers out of ECS's ranges: %+v", *h)
	}
	if keelfsTimeout, ok := keelfsArgs(h.Command[1:]).flag("timeout"); ok {
		if d, err := time.ParseDuration(keelfsTimeout); err != nil || d >= time.Duration(h.Timeout)*time.Second {
			t.Errorf("keelfs health --timeout %s must be below the check's timeout %ds", keelfsTimeout, h.Timeout)
		}
	}
}

// TestECSSidecar: the sidecar task definition. keelfs may mount FUSE,
// mounts onto a host volume whose containerPath carries :rshared (the ECS
// agent passes it on to Docker; aws/amazon-ecs-agent#761), the app sees
// the same volume with :rslave, waits for keelfs to be HEALTHY (so ECS
// stops it first), and keelfs's stopTimeout is above its drain.
func TestECSSidecar(t *testing.T) {
	task := readECS(t, "ecs/sidecar-task-definition.json")
	hostVolumes := map[string]bool{}
	for _, v := range task.Volumes {
		hostVolumes[v.Name] = v.Host != nil && v.Host.SourcePath != ""
	}
	var sidecar, app *ecsContainer
	for i, c := range task.ContainerDefinitions {
		if len(c.Command) > 0 && c.Command[0] == "mount" {
			sidecar = &task.ContainerDefinitions[i]
		} else {
			app = &task.ContainerDefinitions[i]
		}
	}
	if sidecar == nil || app == nil {
		t.Fatalf("want a keelfs container (command mount ...) and an app container")
	}
	mnt := keelfsArgs(sidecar.Command).check(t, "mount")
	if !sidecar.fuseAccess() || !sidecar.Privileged {
		t.Errorf("the sidecar is not privileged")
	}
	if !sidecar.Essential {
		t.Errorf("the sidecar is not essential: the app would go on without its mount")
	}
	if !strings.Contains(sidecar.Image, "keelfs") {
		t.Errorf("sidecar image %q", sidecar.Image)
	}
	shared := ""
	for _, mp := range sidecar.MountPoints {
		if mp.ContainerPath == mnt+":rshared" {
			shared = mp.SourceVolume
		}
	}
	if shared == "" || !hostVolumes[shared] {
		t.Fatalf("the sidecar's mount point %s is not a host volume mounted with containerPath %q", mnt, mnt+":rshared")
	}
	ecsHealth(t, *sidecar, mnt)
	if need := keelfsArgs(sidecar.Command).stopNeeds(t); time.Duration(sidecar.StopTimeout)*time.Second <= need {
		t.Errorf("sidecar stopTimeout %ds is not above the drain (%v)", sidecar.StopTimeout, need)
	}
	if sidecar.StopTimeout > 120 {
		t.Errorf("stopTimeout %d is above ECS's limit of 120", sidecar.StopTimeout)
	}
	healthy := false
	for _, d := range app.DependsOn {
		healthy = healthy || d.ContainerName == sidecar.Name && d.Condition == "HEALTHY"
	}
	if !healthy {
		t.Errorf("the app does not depend on %s being HEALTHY: it could start before the mount, and ECS would not stop it first", sidecar.Name)
	}
	slave := false
	for _, mp := range app.MountPoints {
		slave = slave || mp.SourceVolume == shared && strings.HasSuffix(mp.ContainerPath, ":rslave")
	}
	if !slave {
		t.Errorf("the app does not mount volume %s with :rslave: it would not see the FUSE mount", shared)
	}
}

// TestECSRun: the task definition with keelfs run in the app's container.
func TestECSRun(t *testing.T) {
	task := readECS(t, "ecs/run-task-definition.json")
	if len(task.ContainerDefinitions) != 1 {
		t.Fatalf("want one container, got %d", len(task.ContainerDefinitions))
	}
	c := task.ContainerDefinitions[0]
	args := keelfsArgs(c.Command)
	mnt := args.check(t, "run")
	if !c.fuseAccess() {
		t.Errorf("the container may not mount FUSE: want privileged, or /dev/fuse and SYS_ADMIN")
	}
	if len(c.EntryPoint) != 1 || !strings.HasSuffix(c.EntryPoint[0], "/keelfs") {
		t.Errorf("entryPoint %q: keelfs run must be PID 1", c.EntryPoint)
	}
	ecsHealth(t, c, mnt)
	if need := args.stopNeeds(t); time.Duration(c.StopTimeout)*time.Second <= need {
		t.Errorf("stopTimeout %ds is not above the app's stop plus the drain (%v)", c.StopTimeout, need)
	}
	if c.StopTimeout > 120 {
		t.Errorf("stopTimeout %d is above ECS's limit of 120", c.StopTimeout)
	}
}

type composeFile struct {
	Services map[string]composeService `yaml:"services"`
}

type composeService struct {
	Image       string   `yaml:"image"`
	Command     []string `yaml:"command"`
	Privileged  bool     `yaml:"privileged"`
	Devices     []string `yaml:"devices"`
	CapAdd      []string `yaml:"cap_add"`
	SecurityOpt []string `yaml:"security_opt"`
	Volumes     []struct {
		Type   string `yaml:"type"`
		Source string `yaml:"source"`
		Target string `yaml:"target"`
		Bind   struct {
			Propagation string `yaml:"propagation"`
		} `yaml:"bind"`
	} `yaml:"volumes"`
	Healthcheck *struct {
		Test []string `yaml:"test"`
	} `yaml:"healthcheck"`
	DependsOn map[string]struct {
		Condition string `yaml:"condition"`
	} `yaml:"depends_on"`
	StopGracePeriod string `yaml:"stop_grace_period"`
}

// TestCompose: the docker compose file, with the same checks as the ECS
// sidecar, in compose's terms.
func TestCompose(t *testing.T) {
	var f composeFile
	if err := yaml.Unmarshal(read(t, "compose/docker-compose.yml"), &f); err != nil {
		t.Fatal(err)
	}
	var sidecarName string
	for name, s := range f.Services {
		if len(s.Command) > 0 && s.Command[0] == "mount" {
			sidecarName = name
		}
	}
	if sidecarName == "" || len(f.Services) < 2 {
		t.Fatalf("want a keelfs service (command mount ...) and an app")
	}
	s := f.Services[sidecarName]
	args := keelfsArgs(s.Command)
	mnt := args.check(t, "mount")
	fuse := s.Privileged || slices.Contains(s.CapAdd, "SYS_ADMIN") && slices.ContainsFunc(s.Devices, func(d string) bool { return strings.HasPrefix(d, "/dev/fuse") })
	if !fuse {
		t.Errorf("the keelfs service may not mount FUSE: want privileged, or /dev/fuse and SYS_ADMIN")
	}
	if !s.Privileged && !slices.Contains(s.SecurityOpt, "apparmor:unconfined") {
		t.Errorf("no apparmor:unconfined: Docker's default AppArmor profile forbids mount (Ubuntu hosts)")
	}
	source := ""
	for _, v := range s.Volumes {
		if v.Type == "bind" && v.Target == mnt && v.Bind.Propagation == "rshared" {
			source = v.Source
		}
	}
	if source == "" {
		t.Fatalf("the mount point %s is not a bind mount with propagation rshared", mnt)
	}
	if s.Healthcheck == nil || s.Healthcheck.Test[0] != "CMD" {
		t.Fatalf("the keelfs service has no [CMD ...] healthcheck")
	}
	healthCheck(t, s.Healthcheck.Test[1:], mnt)
	grace, err := time.ParseDuration(s.StopGracePeriod)
	if err != nil || grace <= args.stopNeeds(t) {
		t.Errorf("stop_grace_period %q is not above the drain (%v); compose's default is 10s", s.StopGracePeriod, args.stopNeeds(t))
	}
	for name, app := range f.Services {
		if name == sidecarName {
			continue
		}
		if app.DependsOn[sidecarName].Condition != "service_healthy" {
			t.Errorf("%s does not depend on %s being healthy: it could start before the mount, and would not be stopped first", name, sidecarName)
		}
		slave := false
		for _, v := range app.Volumes {
			slave = slave || v.Type == "bind" && v.Source == source && v.Bind.Propagation == "rslave"
		}
		if !slave {
			t.Errorf("%s does not bind %s with propagation rslave: it would not see the mount", name, source)
		}
	}
}

type k8sPod struct {
	Kind string `yaml:"kind"`
	Spec struct {
		TerminationGracePeriodSeconds int            `yaml:"terminationGracePeriodSeconds"`
		InitContainers                []k8sContainer `yaml:"initContainers"`
		Containers                    []k8sContainer `yaml:"containers"`
		Volumes                       []struct {
			Name     string    `yaml:"name"`
			EmptyDir *struct{} `yaml:"emptyDir"`
		} `yaml:"volumes"`
	} `yaml:"spec"`
}

type k8sContainer struct {
	Name            string   `yaml:"name"`
	Image           string   `yaml:"image"`
	RestartPolicy   string   `yaml:"restartPolicy"`
	Command         []string `yaml:"command"`
	Args            []string `yaml:"args"`
	SecurityContext struct {
		Privileged bool `yaml:"privileged"`
	} `yaml:"securityContext"`
	VolumeMounts []struct {
		Name             string `yaml:"name"`
		MountPath        string `yaml:"mountPath"`
		MountPropagation string `yaml:"mountPropagation"`
	} `yaml:"volumeMounts"`
	StartupProbe  *k8sProbe `yaml:"startupProbe"`
	LivenessProbe *k8sProbe `yaml:"livenessProbe"`
}

type k8sProbe struct {
	Exec struct {
		Command []string `yaml:"command"`
	} `yaml:"exec"`
	TimeoutSeconds int `yaml:"timeoutSeconds"`
}

// TestKubernetesSidecar: the pod. keelfs is a native sidecar (an init
// container with restartPolicy Always: started before the app, which
// waits for its startup probe, and stopped after it), privileged (needed
// for Bidirectional propagation), mounting onto an emptyDir with
// Bidirectional propagation that the app mounts with HostToContainer; the
// pod's grace period covers the drain.
func TestKubernetesSidecar(t *testing.T) {
	var pod k8sPod
	if err := yaml.Unmarshal(read(t, "kubernetes/pod-sidecar.yaml"), &pod); err != nil {
		t.Fatal(err)
	}
	if pod.Kind != "Pod" {
		t.Fatalf("kind %q", pod.Kind)
	}
	var sidecar *k8sContainer
	for i, c := range pod.Spec.InitContainers {
		if len(c.Args) > 0 && c.Args[0] == "mount" {
			sidecar = &pod.Spec.InitContainers[i]
		}
	}
	if sidecar == nil {
		t.Fatalf("no keelfs init container (args mount ...)")
	}
	if sidecar.RestartPolicy != "Always" {
		t.Errorf("the keelfs init container is not a native sidecar (restartPolicy: Always): the app would wait for it to exit")
	}
	args := keelfsArgs(sidecar.Args)
	mnt := args.check(t, "mount")
	if !sidecar.SecurityContext.Privileged {
		t.Errorf("the sidecar is not privileged: Bidirectional propagation and FUSE need it")
	}
	emptyDirs := map[string]bool{}
	for _, v := range pod.Spec.Volumes {
		emptyDirs[v.Name] = v.EmptyDir != nil
	}
	shared := ""
	for _, vm := range sidecar.VolumeMounts {
		if vm.MountPath == mnt && vm.MountPropagation == "Bidirectional" {
			shared = vm.Name
		}
	}
	if shared == "" || !emptyDirs[shared] {
		t.Fatalf("the mount point %s is not an emptyDir mounted with mountPropagation: Bidirectional", mnt)
	}
	if sidecar.StartupProbe == nil {
		t.Fatalf("no startup probe: the app would start before the mount")
	}
	healthCheck(t, sidecar.StartupProbe.Exec.Command, mnt)
	if sidecar.LivenessProbe != nil {
		healthCheck(t, sidecar.LivenessProbe.Exec.Command, mnt)
	}
	if len(pod.Spec.Containers) == 0 {
		t.Fatalf("no app container")
	}
	for _, c := range pod.Spec.Containers {
		ok := false
		for _, vm := range c.VolumeMounts {
			ok = ok || vm.Name == shared && vm.MountPropagation == "HostToContainer"
		}
		if !ok {
			t.Errorf("container %s does not mount %s with mountPropagation: HostToContainer: it would not see the mount", c.Name, shared)
		}
	}
	if need := args.stopNeeds(t) + defaultAppStopTimeout; time.Duration(pod.Spec.TerminationGracePeriodSeconds)*time.Second <= need {
		t.Errorf("terminationGracePeriodSeconds %d does not cover the app's stop and the drain (%v)", pod.Spec.TerminationGracePeriodSeconds, need)
	}
}

// unit parses a systemd unit file into section.key -> values.
func unit(t *testing.T, name string) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	section := ""
	for _, line := range strings.Split(string(read(t, name)), "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "["):
			section = strings.Trim(line, "[]")
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				t.Fatalf("%s: bad line %q", name, line)
			}
			out[section+"."+k] = append(out[section+"."+k], v)
		}
	}
	return out
}

// TestSystemdUnit: the template unit reports readiness (Type=notify, with
// keelfs in the foreground), takes the mount point from the instance
// (%f) and the source from its environment file, has no ExecStop that
// would unmount before the drain, and gives the drain its time.
func TestSystemdUnit(t *testing.T) {
	u := unit(t, "systemd/keelfs@.service")
	one := func(key string) string {
		t.Helper()
		if len(u[key]) != 1 {
			t.Fatalf("%s: %q, want one value", key, u[key])
		}
		return u[key][0]
	}
	if one("Service.Type") != "notify" {
		t.Errorf("Type=%s, want notify: units ordered after the mount must find it live", one("Service.Type"))
	}
	exec := strings.Fields(one("Service.ExecStart"))
	if !strings.HasSuffix(exec[0], "/keelfs") || exec[1] != "mount" || exec[2] != "${KEELFS_SOURCE}" || exec[3] != "%f" {
		t.Errorf("ExecStart %q: want keelfs mount ${KEELFS_SOURCE} %%f", exec)
	}
	if !slices.Contains(exec, "--foreground") && !slices.Contains(exec, "-f") {
		t.Errorf("ExecStart without --foreground: the notifying process would not be the main one")
	}
	if !strings.Contains(one("Service.EnvironmentFile"), "%i") {
		t.Errorf("EnvironmentFile does not depend on the instance")
	}
	for _, stop := range u["Service.ExecStop"] {
		if regexp.MustCompile(`umount|unmount|fusermount`).MatchString(stop) {
			t.Errorf("ExecStop=%s unmounts before keelfs drains", stop)
		}
	}
	stop, err := time.ParseDuration(one("Service.TimeoutStopSec") + "s")
	if err != nil {
		t.Fatal(err)
	}
	if stop <= defaultShutdownTimeout {
		t.Errorf("TimeoutStopSec=%v is not above the drain (%v)", stop, defaultShutdownTimeout)
	}
	if !slices.Contains(u["Unit.After"], "network-online.target") {
		t.Errorf("not After=network-online.target")
	}
	// The example environment file sets what ExecStart needs.
	env := string(read(t, "systemd/keelfs.env.example"))
	if !regexp.MustCompile(`(?m)^KEELFS_SOURCE=s3://`).MatchString(env) {
		t.Errorf("keelfs.env.example does not set KEELFS_SOURCE")
	}
	if m := regexp.MustCompile(`(?m)^KEELFS_SHUTDOWN_TIMEOUT=(\S+)`).FindStringSubmatch(env); m != nil {
		if d, err := time.ParseDuration(m[1]); err != nil || d >= stop {
			t.Errorf("keelfs.env.example's shutdown timeout %s is not below TimeoutStopSec", m[1])
		}
	}
}

// dockerfile returns the instructions of a Dockerfile's last stage, with
// continuation lines joined.
func dockerfile(t *testing.T, name string) []string {
	t.Helper()
	var out []string
	cur := ""
	for _, line := range strings.Split(string(read(t, name)), "\n") {
		trimmed := strings.TrimSpace(line)
		if cur == "" && (trimmed == "" || strings.HasPrefix(trimmed, "#")) {
			continue
		}
		if strings.HasSuffix(trimmed, "\\") {
			cur += strings.TrimSuffix(trimmed, "\\") + " "
			continue
		}
		cur += trimmed
		if strings.HasPrefix(strings.ToUpper(cur), "FROM ") {
			out = nil // a new stage
		}
		out = append(out, strings.Join(strings.Fields(cur), " "))
		cur = ""
	}
	return out
}

// TestDockerfiles: the image is FROM scratch with nothing run in it; its
// health check and entry point are keelfs; the multi-stage variant's
// final stage is the same image.
func TestDockerfiles(t *testing.T) {
	img := dockerfile(t, "Dockerfile")
	if img[0] != "FROM scratch" {
		t.Errorf("the image starts %q, want FROM scratch", img[0])
	}
	want := map[string]bool{"HEALTHCHECK": false, "ENTRYPOINT": false, "STOPSIGNAL": false}
	for _, ins := range img {
		word := strings.Fields(ins)[0]
		switch word {
		case "RUN":
			t.Errorf("%q in a FROM scratch image: there is nothing to run it with", ins)
		case "HEALTHCHECK":
			want[word] = true
			i := strings.Index(ins, "CMD ")
			var cmd []string
			if i < 0 || json.Unmarshal([]byte(ins[i+4:]), &cmd) != nil {
				t.Fatalf("%q: want HEALTHCHECK ... CMD [\"...\"]", ins)
			}
			healthCheck(t, cmd, "")
			m := regexp.MustCompile(`--timeout=(\S+)`).FindStringSubmatch(ins)
			if m == nil {
				t.Fatalf("%q: no --timeout", ins)
			}
			outer, _ := time.ParseDuration(m[1])
			inner, ok := keelfsArgs(cmd).flag("timeout")
			if d, err := time.ParseDuration(inner); !ok || err != nil || d >= outer {
				t.Errorf("keelfs health --timeout %q must be below the HEALTHCHECK's %v", inner, outer)
			}
		case "ENTRYPOINT":
			want[word] = ins == `ENTRYPOINT ["/usr/local/bin/keelfs"]`
		case "STOPSIGNAL":
			want[word] = ins == "STOPSIGNAL SIGTERM"
		}
	}
	for k, ok := range want {
		if !ok {
			t.Errorf("the image's %s is missing or wrong", k)
		}
	}
	src := dockerfile(t, "Dockerfile.source")
	if len(src) != len(img) {
		t.Fatalf("Dockerfile.source's final stage has %d instructions, Dockerfile %d", len(src), len(img))
	}
	for i := range img {
		a, b := img[i], src[i]
		if strings.HasPrefix(a, "COPY ") {
			a, b = "COPY", strings.Fields(b)[0] // the source differs: the staged context or the build stage
		}
		if a != b {
			t.Errorf("instruction %d differs: Dockerfile %q, Dockerfile.source %q", i, a, b)
		}
	}
}

// TestReadmeDockerRun: the README's docker run line uses keelfs run with
// what FUSE needs and a stop timeout above the app's stop and the drain.
func TestReadmeDockerRun(t *testing.T) {
	readme := string(read(t, "../README.md"))
	block := regexp.MustCompile("(?s)```sh\n(docker run [^`]*?keelfs run[^`]*?)```").FindStringSubmatch(readme)
	if block == nil {
		t.Fatalf("README.md has no ```sh block with docker run ... keelfs run")
	}
	line := strings.Join(strings.Fields(strings.ReplaceAll(block[1], "\\\n", " ")), " ")
	for _, want := range []string{"--device /dev/fuse", "--cap-add SYS_ADMIN", "keelfs run s3://"} {
		if !strings.Contains(line, want) {
			t.Errorf("README's docker run lacks %q: %s", want, line)
		}
	}
	m := regexp.MustCompile(`--stop-timeout[ =](\d+)`).FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("README's docker run has no --stop-timeout (docker's default, 10s, cuts the drain short): %s", line)
	}
	secs, _ := strconv.Atoi(m[1])
	_, after, _ := strings.Cut(line, "keelfs run ")
	args := keelfsArgs(append([]string{"run"}, strings.Fields(after)...))
	if need := args.stopNeeds(t); time.Duration(secs)*time.Second <= need {
		t.Errorf("README's --stop-timeout %d is not above the app's stop and the drain (%v)", secs, need)
	}
}
