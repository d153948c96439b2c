package container

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/keelfs/keelfs/test/harness"
)

// TestImage: the image that make image builds holds the static keelfs
// binary, the host's CA certificates and empty directories, and nothing
// else; its entry point and health check are keelfs; keelfs version in it
// says what git describe says.
func TestImage(t *testing.T) {
	rt := theRuntime(t)
	d, ok := rt.(*dockerRuntime)
	if !ok {
		t.Logf("NOT IN DOCKER: no image to look into; checking the static binary that make build made for it instead")
		staticBinary(t, filepath.Join(harness.RepoRoot(), "bin", "keelfs"))
		return
	}
	var cfg []struct {
		Size   int64
		Config struct {
			Entrypoint  []string
			Healthcheck struct{ Test []string }
			StopSignal  string
			Labels      map[string]string
		}
	}
	if err := json.Unmarshal([]byte(docker(t, "image", "inspect", d.image)), &cfg); err != nil || len(cfg) != 1 {
		t.Fatalf("docker image inspect: %v", err)
	}
	c := cfg[0].Config
	t.Logf("image %s: %.1f MiB", d.image, float64(cfg[0].Size)/(1<<20))
	if !slices.Equal(c.Entrypoint, []string{"/usr/local/bin/keelfs"}) {
		t.Errorf("entry point %q", c.Entrypoint)
	}
	if len(c.Healthcheck.Test) < 3 || c.Healthcheck.Test[0] != "CMD" || c.Healthcheck.Test[1] != "/usr/local/bin/keelfs" || c.Healthcheck.Test[2] != "health" {
		t.Errorf("health check %q: want CMD keelfs health", c.Healthcheck.Test)
	}
	if c.StopSignal != "SIGTERM" {
		t.Errorf("stop signal %q", c.StopSignal)
	}

	// What is in it: export a container made from it.
	id := docker(t, "create", d.image)
	t.Cleanup(func() { exec.Command("docker", "rm", "-f", id).Run() })
	out, err := exec.Command("docker", "export", id).Output()
	if err != nil {
		t.Fatalf("docker export: %v", err)
	}
	// Docker adds the files it mounts over at run time.
	allowed := map[string]bool{"usr/local/bin/keelfs": true, "etc/ssl/certs/ca-certificates.crt": true,
		".dockerenv": true, "etc/hostname": true, "etc/hosts": true, "etc/resolv.conf": true}
	tr := tar.NewReader(bytes.NewReader(out))
	var bin, certs []byte
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		name := strings.TrimPrefix(h.Name, "./")
		switch h.Typeflag {
		case tar.TypeDir:
			continue
		case tar.TypeSymlink:
			if name == "etc/mtab" { // docker's link to /proc/mounts
				continue
			}
		}
		if strings.HasPrefix(name, "dev/") || strings.HasPrefix(name, "proc/") || strings.HasPrefix(name, "sys/") {
			continue
		}
		if !allowed[name] {
			t.Errorf("the image holds %s: only keelfs and the CA certificates belong in it", name)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		switch name {
		case "usr/local/bin/keelfs":
			bin = data
		case "etc/ssl/certs/ca-certificates.crt":
			certs = data
		}
	}
	hostCerts, err := os.ReadFile("/etc/ssl/certs/ca-certificates.crt")
	if err != nil || !bytes.Equal(certs, hostCerts) {
		t.Errorf("the image's CA certificates (%d bytes) are not the host's (%d bytes, %v)", len(certs), len(hostCerts), err)
	}
	f := filepath.Join(t.TempDir(), "keelfs")
	if err := os.WriteFile(f, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	staticBinary(t, f)

	// The version is stamped from git.
	want, err := exec.Command("git", "-C", harness.RepoRoot(), "describe", "--tags", "--always", "--dirty").Output()
	if err != nil {
		t.Fatalf("git describe: %v", err)
	}
	if got := docker(t, "run", "--rm", "--network", "none", d.image, "version"); got != "keelfs "+strings.TrimSpace(string(want)) {
		t.Errorf("keelfs version in the image: %q, want keelfs %s", got, want)
	}
}

// staticBinary fails the test unless path is a static ELF executable: no
// interpreter, no shared libraries, so it runs in FROM scratch, Alpine or
// distroless.
func staticBinary(t *testing.T, path string) {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("%s asks for a dynamic loader: not static", path)
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("%s links %v: not static", path, libs)
	}
}
