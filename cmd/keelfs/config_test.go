package main

import (
	"strings"
	"testing"
	"time"
)

// parse runs the mount flag parser the way mountCmd does.
func parse(t *testing.T, args ...string) (*mountConfig, error) {
	t.Helper()
	cfg := &mountConfig{}
	flags := newMountFlags(cfg)
	var opts []string
	flags.StringSliceVarP(&opts, "options", "o", nil, "")
	if err := flags.Parse(args); err != nil {
		return nil, err
	}
	for _, o := range opts {
		if err := applyOption(flags, o); err != nil {
			return nil, err
		}
	}
	return cfg, nil
}

func TestMountpointFlags(t *testing.T) {
	cases := []struct {
		args  []string
		check func(*mountConfig) bool
	}{
		{[]string{"--metadata-ttl", "60"}, func(c *mountConfig) bool { return time.Duration(c.MetadataTTL) == time.Minute }},
		{[]string{"--metadata-ttl", "1.5"}, func(c *mountConfig) bool { return time.Duration(c.MetadataTTL) == 1500*time.Millisecond }},
		{[]string{"--metadata-ttl", "minimal"}, func(c *mountConfig) bool { return time.Duration(c.MetadataTTL) == time.Second }},
		{[]string{"--metadata-ttl", "indefinite"}, func(c *mountConfig) bool { return time.Duration(c.MetadataTTL) == indefiniteTTL }},
		{[]string{"--metadata-ttl", "5m"}, func(c *mountConfig) bool { return time.Duration(c.MetadataTTL) == 5*time.Minute }},
		{[]string{"--metadata-ttl", "0"}, func(c *mountConfig) bool { return c.MetadataTTL.duration() == time.Nanosecond }},
		{[]string{"--max-cache-size", "512"}, func(c *mountConfig) bool { return c.CacheSize == 512<<20 }},
		{[]string{"--max-cache-size", "2G"}, func(c *mountConfig) bool { return c.CacheSize == 2<<30 }},
		{[]string{"--cache-size", "512"}, func(c *mountConfig) bool { return c.CacheSize == 512 }},
		{[]string{"--cache", "/x"}, func(c *mountConfig) bool { return c.CacheDir == "/x" }},
		{[]string{"--endpoint-url", "http://h:1"}, func(c *mountConfig) bool { return c.Endpoint == "http://h:1" }},
		{[]string{"--max-threads", "9"}, func(c *mountConfig) bool { return c.MaxUploads == 9 }},
		{[]string{"--allow-delete", "--allow-overwrite", "--debug"}, func(c *mountConfig) bool { return c.Debug }},
		{[]string{"-o", "_netdev,nosuid,nodev,nofail,rw,allow-other,uid=7,metadata-ttl=1,max-cache-size=64"}, func(c *mountConfig) bool {
			return c.AllowOther && c.UID == 7 && time.Duration(c.MetadataTTL) == time.Second && c.CacheSize == 64<<20 && !c.ReadOnly
		}},
		{[]string{"-o", "ro,cache_dir=/c,endpoint=http://e"}, func(c *mountConfig) bool { return c.ReadOnly && c.CacheDir == "/c" && c.Endpoint == "http://e" }},
		// The standard options mount(8) passes: none was dropped.
		{[]string{}, func(c *mountConfig) bool {
			return !c.Suid && !c.Dev && c.Exec && !c.SyncOnClose && !c.DirSync && !c.NoAtime
		}},
		{[]string{"-o", "suid,dev,exec,sync,dirsync,noatime"}, func(c *mountConfig) bool {
			return c.Suid && c.Dev && c.Exec && c.SyncOnClose && c.DirSync && c.NoAtime
		}},
		{[]string{"-o", "suid,dev,nosuid,nodev,noexec,noatime,atime,async,relatime"}, func(c *mountConfig) bool {
			return !c.Suid && !c.Dev && !c.Exec && !c.SyncOnClose && !c.NoAtime
		}},
		{[]string{"--dirsync", "--suid", "--dev", "--exec=false"}, func(c *mountConfig) bool { return c.DirSync && c.Suid && c.Dev && !c.Exec }},
	}
	for _, c := range cases {
		cfg, err := parse(t, c.args...)
		if err != nil {
			t.Errorf("%q: %v", c.args, err)
			continue
		}
		if !c.check(cfg) {
			t.Errorf("%q: parsed to %+v", c.args, cfg)
		}
	}
	for _, bad := range [][]string{{"--metadata-ttl", "-1"}, {"--metadata-ttl", "soon"}, {"--max-cache-size", "lots"}, {"-o", "nosuchoption=1"}, {"-o", "uid"}} {
		if _, err := parse(t, bad...); err == nil {
			t.Errorf("%q: accepted", bad)
		}
	}
}

func TestParseBucket(t *testing.T) {
	for in, want := range map[string]string{
		"bkt":            "bkt|",
		"bkt/p/q":        "bkt|p/q",
		"s3://bkt/p/":    "bkt|p",
		"bkt:/p":         "bkt|p",
		"s3://my-bucket": "my-bucket|",
	} {
		b, p, err := parseBucket(in)
		if err != nil || b+"|"+p != want {
			t.Errorf("parseBucket(%q) = %q %q %v, want %s", in, b, p, err, want)
		}
	}
	for _, in := range []string{"", "x", "s3://", "a b"} {
		if _, _, err := parseBucket(in); err == nil || !strings.Contains(err.Error(), "bucket") {
			t.Errorf("parseBucket(%q) accepted or unclear: %v", in, err)
		}
	}
}
