package harness

import "testing"

// TestCacheDropsCountsBothKinds: an echo 2 > drop_caches (dentries and
// inodes) loses a directory's cached listing as surely as an echo 1, so
// it must count as a drop.
func TestCacheDropsCountsBothKinds(t *testing.T) {
	before, err := cacheDrops("nr_free_pages 100\ndrop_pagecache 36\ndrop_slab 37\npgsteal_file 0\n")
	if err != nil {
		t.Fatal(err)
	}
	after, err := cacheDrops("nr_free_pages 100\ndrop_pagecache 36\ndrop_slab 38\npgsteal_file 0\n")
	if err != nil {
		t.Fatal(err)
	}
	if after <= before {
		t.Fatalf("an echo 2 left the count at %d (was %d)", after, before)
	}
	if _, err := cacheDrops("nr_free_pages 100\ndrop_pagecache 36\n"); err == nil {
		t.Fatal("a vmstat without drop_slab gave a count")
	}
	if _, err := cacheDrops("drop_pagecache x\ndrop_slab 1\n"); err == nil {
		t.Fatal("a counter that is not a number gave a count")
	}
}
