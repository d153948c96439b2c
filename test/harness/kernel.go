package harness

import (
	"os"
	"strconv"
	"strings"
	"testing"
)

// PageCacheDrops returns how many times the host's page cache was
// dropped (echo N > /proc/sys/vm/drop_caches) since boot, from
// /proc/vmstat. A test that counts on the kernel keeping what it cached
// (a directory's listing, a file's pages) reads it before and after: a
// drop in between is a cause outside keelfs. It fails the test if the
// kernel does not say.
func PageCacheDrops(t testing.TB) uint64 {
	t.Helper()
	b, err := os.ReadFile("/proc/vmstat")
	if err != nil {
		t.Fatalf("read the kernel's page cache counters: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "drop_pagecache "); ok {
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				t.Fatalf("/proc/vmstat: %q: %v", line, err)
			}
			return n
		}
	}
	t.Fatal("/proc/vmstat has no drop_pagecache counter")
	return 0
}
