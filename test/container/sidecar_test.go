package container

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keelfs/keelfs/test/appdata"
	"github.com/keelfs/keelfs/test/harness"
)

// TestSidecarECS runs deploy/ecs/sidecar-task-definition.json as the ECS
// agent would: the privileged keelfs container mounts onto the volume's
// own mount point (containerPath ":rshared"), and once its health check
// passes, the app container (as www-data, uid 33) writes through the same
// volume (":rslave"). The host sees the mount too, and writes and reads
// through it. Then the task stops in ECS's order, the app first (it
// writes one more file while it stops), then keelfs within its
// stopTimeout: every byte is in S3, nothing was uploaded before the stop
// (all of it was pending), and the mount is gone from the host.
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
	status := openDir(t, "keelfs-status-", 0o777)
	app := harness.TestApp(t)

	var keelfsDef, appDef ecsContainer
	for _, c := range task.ContainerDefinitions {
		if len(c.Command) > 0 && c.Command[0] == "mount" {
			keelfsDef = c
		} else {
			appDef = c
		}
	}
	sidecar := rt.Start(t, ecsSpec(t, keelfsDef, volumes, b, serverEnv(srv)))
	sidecar.Healthy(t, 60*time.Second)
	if !harness.IsMounted(shared) {
		t.Fatalf("the sidecar is healthy but its mount did not propagate to the host's %s", shared)
	}

	// The app: the definition's mounts, the test app in place of the
	// image's program, running as www-data.
	appSpec := ecsSpec(t, appDef, volumes, b, nil)
	if len(appSpec.Binds) != 1 {
		t.Fatalf("app binds %v", appSpec.Binds)
	}
	appDir := appSpec.Binds[0].Container
	appSpec.Entrypoint = "/testapp"
	appSpec.User = "33:33"
	appSpec.Binds = append(appSpec.Binds, bind{Host: app, Container: "/testapp", ReadOnly: true}, bind{Host: status, Container: "/status"})
	const files, size = 10, 150 << 10
	appSpec.Args = []string{"-dir", appDir, "-status", "/status", "-files", strconv.Itoa(files), "-size", strconv.Itoa(size), "-on-term", "goodbye"}
	appC := rt.Start(t, appSpec)
	waitFile(t, appC, status, "written", 60*time.Second)

	// The host sees the mount through the shared volume, both ways.
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

	// ECS's order: the app (it depends on keelfs), then keelfs.
	start := time.Now()
	if code := appC.Stop(t); code != 0 {
		t.Errorf("the app exited %d", code)
	}
	if code := sidecar.Stop(t); code != 0 {
		t.Errorf("the keelfs sidecar exited %d, want 0 (everything uploaded)", code)
	}
	t.Logf("%s: the task stopped in %v", rt.Name(), time.Since(start).Round(time.Millisecond))
	wantInS3(t, srv, b, "uploads/", append(appFiles(files), "goodbye", "from-host"), size)
	if harness.IsMounted(shared) {
		t.Errorf("the keelfs mount is still on the host after the sidecar stopped")
	}
	if !strings.Contains(sidecar.Logs(), "stopped; everything is in S3") {
		t.Errorf("the sidecar's log does not end with everything in S3:\n%s", tailStr(sidecar.Logs(), 3000))
	}
}
