package main

import (
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
		if got := memoryLimitFor(c.live); got != c.want {
			t.Errorf("memoryLimitFor(%d MiB) = %d MiB, want %d MiB", c.live>>20, got>>20, c.want>>20)
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
