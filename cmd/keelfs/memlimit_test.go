package main

import (
	"os"
	"path/filepath"
	rtmetrics "runtime/metrics"
	"testing"
)

func TestMemoryLimitFollowsTheLiveHeap(t *testing.T) {
	for _, c := range []struct {
		live uint64
		want int64
	}{
		{0, defaultMemoryLimit},
		{20 << 20, defaultMemoryLimit},
		{defaultMemoryLimit - gcHeadroom, defaultMemoryLimit},
		{60 << 20, 60<<20 + gcHeadroom},
		{1 << 30, 1<<30 + gcHeadroom},
	} {
		if got := memoryLimitFor(c.live, 0); got != c.want {
			t.Errorf("memoryLimitFor(%d MiB) = %d MiB, want %d MiB", c.live>>20, got>>20, c.want>>20)
		}
	}
	// A cgroup ceiling caps the headroom, never the floor.
	for _, c := range []struct {
		live          uint64
		ceiling, want int64
	}{
		{60 << 20, 256 << 20, 60<<20 + gcHeadroom},
		{60 << 20, 90 << 20, 90 << 20},
		{60 << 20, 32 << 20, defaultMemoryLimit},
		{10 << 20, 32 << 20, defaultMemoryLimit},
	} {
		if got := memoryLimitFor(c.live, c.ceiling); got != c.want {
			t.Errorf("memoryLimitFor(%d MiB, ceiling %d MiB) = %d MiB, want %d MiB", c.live>>20, c.ceiling>>20, got>>20, c.want>>20)
		}
	}
	dir := t.TempDir()
	for _, c := range []struct {
		content string
		want    int64
		ok      bool
	}{
		{"max\n", 0, false},
		{"536870912\n", 512 << 20, true},
		{"9223372036854771712\n", 0, false}, // cgroup v1's "no limit"
		{"", 0, false},
	} {
		f := filepath.Join(dir, "limit")
		if err := os.WriteFile(f, []byte(c.content), 0o644); err != nil {
			t.Fatal(err)
		}
		if got, ok := readCgroupLimit(f); got != c.want || ok != c.ok {
			t.Errorf("readCgroupLimit(%q) = %d, %v, want %d, %v", c.content, got, ok, c.want, c.ok)
		}
	}
	// cgroup v2: the lowest limit on the way up from the process's own
	// cgroup (a systemd unit's MemoryMax=), whatever is above it.
	root := t.TempDir()
	limits := map[string]string{
		"system.slice/memory.max":                "max\n",
		"system.slice/keelfs.service/memory.max": "536870912\n",
		"tight/memory.max":                       "268435456\n",
		"tight/loose/memory.max":                 "1073741824\n",
		"memory.max":                             "2147483648\n", // a container's, at its namespace's root
	}
	for f, v := range limits {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(root, f)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, f), []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		self string
		want int64
	}{
		{"0::/system.slice/keelfs.service\n", 512 << 20},
		{"0::/tight/loose\n", 256 << 20},
		{"0::/\n", 2 << 30},
		{"0::/docker/abc\n", 2 << 30}, // not shown here: the nearest that is
		{"", 2 << 30},
	} {
		v2, _ := cgroupPaths(c.self)
		if got := lowestLimit(root, v2, "memory.max"); got != c.want {
			t.Errorf("lowestLimit for %q = %d MiB, want %d MiB", c.self, got>>20, c.want>>20)
		}
	}
	if err := os.Remove(filepath.Join(root, "memory.max")); err != nil {
		t.Fatal(err)
	}
	if got := lowestLimit(root, "/system.slice", "memory.max"); got != 0 {
		t.Errorf("no limit anywhere up the path: %d, want 0", got)
	}
	// A hybrid host (this test machine's kind): cgroup v1's memory
	// controller has its own path.
	self := "9:name=systemd:/\n4:memory:/process_api/b09\n1:cpu,cpuacct:/\n0::/\n"
	if v2, v1 := cgroupPaths(self); v2 != "/" || v1 != "/process_api/b09" {
		t.Errorf("cgroupPaths = %q, %q, want / and /process_api/b09", v2, v1)
	}
	// The runtime must offer the metric the limit follows, or the limit
	// silently stays at its floor.
	s := []rtmetrics.Sample{{Name: liveHeapMetric}}
	rtmetrics.Read(s)
	if s[0].Value.Kind() != rtmetrics.KindUint64 {
		t.Fatalf("runtime/metrics has no %s", liveHeapMetric)
	}
}
