package harness

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
)

// CacheDrops returns how many times the host dropped its caches (echo N
// > /proc/sys/vm/drop_caches) since boot, from /proc/vmstat. A test that
// counts on the kernel keeping what it cached (a directory's listing, a
// file's pages) reads it before and after: a drop in between is a cause
// outside keelfs. Both kinds count: echo 1 empties the page cache, and
// echo 2 evicts unused dentries and inodes, and with a directory's inode
// goes the listing the kernel kept in it (seen on this machine: the
// warm ls -l of TestListingCost read the directory again after an echo 2
// that drop_pagecache did not show). It fails the test if the kernel
// does not say.
func CacheDrops(t testing.TB) uint64 {
	t.Helper()
	b, err := os.ReadFile("/proc/vmstat")
	if err != nil {
		t.Fatalf("read the kernel's cache counters: %v", err)
	}
	n, err := cacheDrops(string(b))
	if err != nil {
		t.Fatalf("/proc/vmstat: %v", err)
	}
	return n
}

// cacheDrops sums /proc/vmstat's drop_pagecache and drop_slab.
func cacheDrops(vmstat string) (uint64, error) {
	var sum uint64
	seen := map[string]bool{}
	for _, line := range strings.Split(vmstat, "\n") {
		name, v, ok := strings.Cut(line, " ")
		if !ok || (name != "drop_pagecache" && name != "drop_slab") {
			continue
		}
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%q: %v", line, err)
		}
		sum += n
		seen[name] = true
	}
	if !seen["drop_pagecache"] || !seen["drop_slab"] {
		return 0, fmt.Errorf("no drop_pagecache or drop_slab counter")
	}
	return sum, nil
}
