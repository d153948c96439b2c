package e2e

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keelfs/keelfs/test/harness"
)

// blackHole listens on a loopback port, accepts connections and never
// answers on them. It is closed at cleanup.
func blackHole(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return l.Addr().String()
}

// noCredentials is an environment in which the AWS credential chain finds
// nothing in the environment or in shared files; extra says what instance
// metadata does.
func noCredentials(t *testing.T, extra ...string) []string {
	none := filepath.Join(t.TempDir(), "none")
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
			"AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN",
			"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
			"AWS_EC2_METADATA_DISABLED", "AWS_EC2_METADATA_SERVICE_ENDPOINT":
			continue
		}
		env = append(env, kv)
	}
	return append(append(env, "AWS_CONFIG_FILE="+none, "AWS_SHARED_CREDENTIALS_FILE="+none), extra...)
}

// TestMountErrorsAtTheEdge: what a new user gets wrong first. An endpoint
// without a scheme is a usage error. An endpoint that refuses, never
// answers or does not resolve fails the mount within 5 s with one line
// that names it and the cause: no retry report from the SDK, no "https"
// for an http endpoint. No credentials at all is said as such, never as
// "credentials rejected".
func TestMountErrorsAtTheEdge(t *testing.T) {
	harness.RequireFUSE(t)
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	dir := t.TempDir()
	refused := fmt.Sprintf("127.0.0.1:%d", harness.FreePort(t))
	silent := blackHole(t)
	withCreds := append(os.Environ(), srv.Env()...)
	cases := []struct {
		name     string
		env      []string
		endpoint string
		code     int
		want     []string // all in the one line
	}{
		{"no scheme", withCreds, strings.TrimPrefix(srv.Endpoint, "http://"), 2,
			[]string{"--endpoint", "no scheme", srv.Endpoint}},
		{"no scheme, a name", withCreds, "localhost:9000", 2, []string{"no scheme", "http://localhost:9000"}},
		{"not http", withCreds, "ftp://" + refused, 2, []string{"http or https"}},
		{"refused", withCreds, "http://" + refused, 5, []string{"cannot reach http://" + refused, "connection refused"}},
		{"never answers", withCreds, "http://" + silent, 5, []string{"cannot reach http://" + silent, "no answer within"}},
		{"no such host", withCreds, "http://no-such-host.invalid:9000", 5, []string{"cannot reach http://no-such-host.invalid:9000", "no such host"}},
		{"https to an http server", withCreds, strings.Replace(srv.Endpoint, "http://", "https://", 1), 5,
			[]string{"cannot reach " + strings.Replace(srv.Endpoint, "http://", "https://", 1), "does not speak TLS"}},
		{"no credentials, metadata disabled", noCredentials(t, "AWS_EC2_METADATA_DISABLED=true"), srv.Endpoint, 4,
			[]string{"no AWS credentials found", "AWS_ACCESS_KEY_ID"}},
		{"no credentials, metadata refused", noCredentials(t, "AWS_EC2_METADATA_SERVICE_ENDPOINT=http://"+refused), srv.Endpoint, 4,
			[]string{"no AWS credentials found", "connection refused"}},
		{"no credentials, metadata silent", noCredentials(t, "AWS_EC2_METADATA_SERVICE_ENDPOINT=http://"+silent), srv.Endpoint, 4,
			[]string{"AWS credentials", "no answer within"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for _, fg := range []bool{false, true} {
				args := []string{"mount", b, dir, "--endpoint", c.endpoint, "--force-path-style", "--cache-dir", t.TempDir()}
				if fg {
					args = append(args, "-f")
				}
				start := time.Now()
				code, out := runKeelfsEnv(t, c.env, 30*time.Second, args...)
				d := time.Since(start)
				line := strings.TrimSpace(out)
				t.Logf("foreground %v: exit %d after %v: %s", fg, code, d.Round(time.Millisecond), line)
				if code != c.code {
					t.Errorf("foreground %v: exit %d, want %d", fg, code, c.code)
				}
				if d > 5*time.Second {
					t.Errorf("foreground %v: failed after %v, want within 5s", fg, d)
				}
				if strings.Contains(line, "\n") {
					t.Errorf("foreground %v: %d lines, want one", fg, strings.Count(line, "\n")+1)
				}
				for _, w := range c.want {
					if !strings.Contains(line, w) {
						t.Errorf("foreground %v: the message lacks %q", fg, w)
					}
				}
				for _, bad := range []string{"rejected", "operation error", "StatusCode", "RequestID", "exceeded maximum number of attempts", "SDK"} {
					if strings.Contains(line, bad) {
						t.Errorf("foreground %v: the message says %q", fg, bad)
					}
				}
				if strings.HasPrefix(c.endpoint, "http://") && strings.Contains(line, "https") {
					t.Errorf("foreground %v: the message says https for an http endpoint", fg)
				}
				if harness.IsMounted(dir) {
					t.Fatalf("a mount was left behind")
				}
			}
		})
	}
}
