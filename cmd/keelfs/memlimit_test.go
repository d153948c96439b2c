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
	// The runtime must offer the metric the limit follows, or the limit
	// silently stays at its floor.
	s := []rtmetrics.Sample{{Name: liveHeapMetric}}
	rtmetrics.Read(s)
	if s[0].Value.Kind() != rtmetrics.KindUint64 {
		t.Fatalf("runtime/metrics has no %s", liveHeapMetric)
	}
}
