package build

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keelfs/keelfs/test/harness"
)

// makeIn runs make in dir with the repository's Makefile and returns its
// output; it fails the test if make fails.
func makeIn(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("make", append([]string{"-s", "-f", filepath.Join(harness.RepoRoot(), "Makefile")}, args...)...)
	cmd.Dir = dir
	// Not the jobserver of a make that runs this test.
	cmd.Env = append(os.Environ(), "MAKEFLAGS=", "MAKELEVEL=")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

func git(t *testing.T, dir string, args ...string) {
	t.Helper()
	cmd := exec.Command("git", append([]string{"-c", "user.name=t", "-c", "user.email=t@example.com"}, args...)...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// TestVersion: the version the Makefile stamps falls back sensibly: the
// tag when there is one (with the distance and commit after it), the
// commit when there are no tags, -dirty for uncommitted changes, and
// "devel" outside a git checkout.
func TestVersion(t *testing.T) {
	dir := t.TempDir()
	if got := makeIn(t, dir, "version"); got != "devel" {
		t.Errorf("outside git: %q, want devel", got)
	}
	git(t, dir, "init", "-q")
	if err := os.WriteFile(filepath.Join(dir, "f"), []byte("1"), 0o644); err != nil {
		t.Fatal(err)
	}
	git(t, dir, "add", "f")
	git(t, dir, "commit", "-q", "-m", "one")
	out, err := exec.Command("git", "-C", dir, "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		t.Fatal(err)
	}
	commit := strings.TrimSpace(string(out))
	if got := makeIn(t, dir, "version"); got != commit {
		t.Errorf("no tags: %q, want the commit %s", got, commit)
	}
	git(t, dir, "tag", "v1.2.3")
	if got := makeIn(t, dir, "version"); got != "v1.2.3" {
		t.Errorf("on a tag: %q, want v1.2.3", got)
	}
	if err := os.WriteFile(filepath.Join(dir, "f"), []byte("2"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := makeIn(t, dir, "version"); got != "v1.2.3-dirty" {
		t.Errorf("changed after the tag: %q, want v1.2.3-dirty", got)
	}
	if got := makeIn(t, dir, "version", "VERSION=v9.9.9"); got != "v9.9.9" {
		t.Errorf("VERSION= given: %q", got)
	}
}

// TestInstall: make install honours PREFIX and DESTDIR: the binary (with
// the version stamped in), the mount helper pointing at the installed
// binary's final path, and the systemd unit running it from there.
func TestInstall(t *testing.T) {
	root, bin := t.TempDir(), t.TempDir()
	makeIn(t, harness.RepoRoot(), "install", "DESTDIR="+root, "PREFIX=/usr", "BIN="+bin, "VERSION=v0.0.0-test")
	out, err := exec.Command(filepath.Join(root, "usr/bin/keelfs"), "version").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "keelfs v0.0.0-test" {
		t.Errorf("installed keelfs version: %q %v", out, err)
	}
	if target, err := os.Readlink(filepath.Join(root, "sbin/mount.keelfs")); err != nil || target != "/usr/bin/keelfs" {
		t.Errorf("mount helper -> %q (%v), want /usr/bin/keelfs", target, err)
	}
	unit, err := os.ReadFile(filepath.Join(root, "usr/lib/systemd/system/keelfs@.service"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(unit), "ExecStart=/usr/bin/keelfs mount ") || strings.Contains(string(unit), "/usr/local/") {
		t.Errorf("the installed unit does not run /usr/bin/keelfs:\n%s", unit)
	}
	var files []string
	filepath.Walk(root, func(p string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			files = append(files, strings.TrimPrefix(p, root))
		}
		return nil
	})
	if len(files) != 3 {
		t.Errorf("installed %v, want the binary, the helper and the unit", files)
	}
}
