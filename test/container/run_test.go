package container

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keelfs/keelfs/test/harness"
)

// readmeDockerRun returns the README's docker run line for keelfs run,
// split into words.
func readmeDockerRun(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(harness.RepoRoot(), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)```sh\n(docker run [^`]*?keelfs run[^`]*?)```").FindSubmatch(b)
	if m == nil {
		t.Fatalf("README.md has no ```sh block with docker run ... keelfs run")
	}
	return strings.Fields(strings.ReplaceAll(string(m[1]), "\\\n", " "))
}

// TestRunReadmeDockerRun runs the README's docker run line, with the test
// image standing for the app's image (which has keelfs in it) and the
// test app for the app. It is stopped with docker stop while all its
// writes are pending: the exit status is the app's, and every byte the
// app wrote, also while it stopped, is in S3.
func TestRunReadmeDockerRun(t *testing.T) {
	rt := theRuntime(t)
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	words := readmeDockerRun(t)
	s := spec{Name: "readme", Env: serverEnv(srv)}
	status := openDir(t, "keelfs-status-", 0o777)
	hostDirs := map[string]string{}
	i := 2 // after "docker run"
	for ; i < len(words) && strings.HasPrefix(words[i], "-"); i++ {
		flag, val, hasVal := strings.Cut(words[i], "=")
		if !hasVal && i+1 < len(words) && !slices.Contains([]string{"-d", "--detach", "--rm", "-it", "-i", "-t"}, flag) {
			i++
			val = words[i]
		}
		switch flag {
		case "-d", "--detach", "--rm", "--name", "--security-opt":
		case "--device":
			s.FUSE = s.FUSE || val == "/dev/fuse"
		case "--cap-add":
			if val != "SYS_ADMIN" {
				t.Fatalf("the test maps only SYS_ADMIN, not %s", val)
			}
		case "--stop-timeout":
			secs, err := strconv.Atoi(val)
			if err != nil {
				t.Fatalf("--stop-timeout %q", val)
			}
			s.StopTimeout = time.Duration(secs) * time.Second
		case "-e", "--env":
			k, v, _ := strings.Cut(val, "=")
			if _, set := s.Env[k]; !set {
				s.Env[k] = v
			}
		case "-v", "--volume":
			host, ctr, _ := strings.Cut(val, ":")
			if hostDirs[host] == "" {
				hostDirs[host] = openDir(t, "keelfs-volume-", 0o700)
			}
			s.Binds = append(s.Binds, bind{Host: hostDirs[host], Container: ctr})
		default:
			t.Fatalf("README's docker run has %s, which this test does not map", flag)
		}
	}
	if i+2 >= len(words) || words[i+1] != "keelfs" || words[i+2] != "run" {
		t.Fatalf("README's docker run: want IMAGE keelfs run ..., got %q", words[i:])
	}
	cmd := replaceBucket(words[i+3:], b)
	dash := slices.Index(cmd, "--")
	if dash < 2 {
		t.Fatalf("README's keelfs run has no -- APP: %q", cmd)
	}
	mnt := cmd[1]
	const files, size = 20, 200 << 10
	app := harness.TestApp(t)
	s.Entrypoint = "/usr/local/bin/keelfs"
	s.Args = append(append([]string{"run"}, cmd[:dash+1]...), "/testapp", "-dir", mnt, "-status", "/status",
		"-files", strconv.Itoa(files), "-size", strconv.Itoa(size), "-on-term", "goodbye", "-exit", "42")
	s.Binds = append(s.Binds, bind{Host: app, Container: "/testapp", ReadOnly: true}, bind{Host: status, Container: "/status"})
	s.Scratch = []string{mnt}
	c := rt.Start(t, s)
	waitFile(t, c, status, "written", 60*time.Second)
	if keys := srv.Keys(t, b, ""); len(keys) != 0 {
		t.Errorf("S3 has %v before the stop: the writes were meant to be pending", keys)
	}
	start := time.Now()
	code := c.Stop(t)
	t.Logf("%s: stopped in %v, exit %d", rt.Name(), time.Since(start).Round(time.Millisecond), code)
	if code != 42 {
		t.Errorf("exit status %d, want the app's 42", code)
	}
	wantInS3(t, srv, b, prefixOf(cmd[0]), append(appFiles(files), "goodbye"), size)
}

// prefixOf is the key prefix of s3://BUCKET/PREFIX, with a trailing /.
func prefixOf(source string) string {
	_, p, _ := strings.Cut(strings.TrimPrefix(source, "s3://"), "/")
	if p = strings.Trim(p, "/"); p != "" {
		p += "/"
	}
	return p
}

// TestRunECS runs deploy/ecs/run-task-definition.json: keelfs run is the
// container's PID 1 (its entryPoint), with /dev/fuse and SYS_ADMIN, and
// runs the app (the test app standing at the definition's /app/worker) as
// uid 1000. Once the definition's health check passes, the container is
// stopped as ECS stops it (SIGTERM, stopTimeout): the status is the app's,
// and every byte is in S3.
func TestRunECS(t *testing.T) {
	rt := theRuntime(t)
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	task := readECS(t, "run-task-definition.json")
	volumes := map[string]string{}
	for _, v := range task.Volumes {
		volumes[v.Name] = openDir(t, "keelfs-"+v.Name+"-", 0o700)
	}
	s := ecsSpec(t, task.ContainerDefinitions[0], volumes, b, serverEnv(srv))
	dash := slices.Index(s.Args, "--")
	if dash < 0 || dash+1 >= len(s.Args) {
		t.Fatalf("the definition's keelfs run has no -- APP: %q", s.Args)
	}
	appPath, mnt := s.Args[dash+1], s.Args[2]
	status := openDir(t, "keelfs-status-", 0o777)
	const files, size = 8, 64 << 10
	s.Args = append(s.Args[:dash+2], "-dir", mnt, "-status", "/status", "-files", strconv.Itoa(files), "-size", strconv.Itoa(size),
		"-on-term", "goodbye", "-exit", "5")
	s.Binds = append(s.Binds, bind{Host: harness.TestApp(t), Container: appPath, ReadOnly: true}, bind{Host: status, Container: "/status"})
	s.Scratch = []string{mnt}
	c := rt.Start(t, s)
	c.Healthy(t, 60*time.Second)
	waitFile(t, c, status, "written", 60*time.Second)
	started, err := os.ReadFile(filepath.Join(status, "started"))
	if err != nil || !strings.Contains(string(started), "uid 1000 gid 1000") {
		t.Errorf("the app ran as %q (%v), want uid 1000 gid 1000 (--app-user)", started, err)
	}
	if code := c.Stop(t); code != 5 {
		t.Errorf("exit status %d, want the app's 5", code)
	}
	wantInS3(t, srv, b, prefixOf(s.Args[1]), append(appFiles(files), "goodbye"), size)
}
