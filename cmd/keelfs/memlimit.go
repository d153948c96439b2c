package main

import (
	"os"
	"path/filepath"
	"runtime/debug"
	rtmetrics "runtime/metrics"
	"slices"
	"strconv"
	"strings"
	"time"
)

// defaultMemoryLimit is the floor of the Go runtime's soft memory limit
// for the daemon unless GOMEMLIMIT sets one. Reads allocate a block buffer
// per MiB fetched; with the default GC pacing a cold 1 GiB read peaked at
// 140 MiB of RSS, with this limit at about 90 MiB and the same throughput.
const defaultMemoryLimit = 80 << 20

// gcHeadroom is what the limit keeps above the live heap. A limit barely
// above the live heap makes the GC run after every few MiB allocated: a
// directory of 100 000 entries the kernel keeps in its inode cache holds
// about 60 MiB live, and a cold `ls -l` of it under a fixed 80 MiB limit
// took 78-95 s and 88-107 s of CPU (by hand); with the limit 40 MiB above
// the live heap, 58-68 s and 61-69 s of CPU, for 20-40 MiB more peak RSS.
const gcHeadroom = 40 << 20

// memoryLimitFor is the soft limit for a live heap of live bytes. A
// ceiling above 0 caps what the headroom may raise it to (not the floor).
func memoryLimitFor(live uint64, ceiling int64) int64 {
	l := max(defaultMemoryLimit, int64(live)+gcHeadroom)
	if ceiling > 0 {
		l = min(l, max(defaultMemoryLimit, ceiling))
	}
	return l
}

// memoryCeiling is half the memory the process's cgroup may use, or 0 if
// there is no limit. In a container the headroom must not lift the GC's
// target toward the OOM killer, and under `keelfs run` the app shares that
// cgroup: past this the GC works harder instead.
func memoryCeiling() int64 {
	self, _ := os.ReadFile("/proc/self/cgroup")
	v2, v1 := cgroupPaths(string(self))
	if n := lowestLimit("/sys/fs/cgroup", v2, "memory.max"); n > 0 {
		return n / 2
	}
	if n := lowestLimit("/sys/fs/cgroup/memory", v1, "memory.limit_in_bytes"); n > 0 {
		return n / 2
	}
	return 0
}

// cgroupPaths reads /proc/self/cgroup: the process's cgroup v2 path (the
// "0::PATH" line) and its cgroup v1 memory controller's path.
func cgroupPaths(procSelfCgroup string) (v2, v1 string) {
	for _, line := range strings.Split(procSelfCgroup, "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 {
			continue
		}
		switch {
		case f[0] == "0" && f[1] == "":
			v2 = f[2]
		case slices.Contains(strings.Split(f[1], ","), "memory"):
			v1 = f[2]
		}
	}
	return v2, v1
}

// lowestLimit is the lowest limit in the file named file from the cgroup
// at path up to the hierarchy's root at root, or 0. A systemd unit's
// MemoryMax= is set on the unit's own cgroup, not on the root, and a
// container with a cgroup namespace sees its limit at the root; a path
// this mount does not show (no namespace) is walked up from as far as it
// exists.
func lowestLimit(root, path, file string) int64 {
	var lowest int64
	for dir := filepath.Join(root, path); strings.HasPrefix(dir, root); dir = filepath.Dir(dir) {
		if n, ok := readCgroupLimit(filepath.Join(dir, file)); ok && (lowest == 0 || n < lowest) {
			lowest = n
		}
		if dir == root {
			break
		}
	}
	return lowest
}

// readCgroupLimit reads a cgroup memory limit file; "max" or a value near
// 2^63 (cgroup v1's "none") is no limit.
func readCgroupLimit(path string) (int64, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil || n <= 0 || n >= 1<<62 {
		return 0, false
	}
	return n, true
}

const liveHeapMetric = "/gc/heap/live:bytes"

// setMemoryLimit sets the soft limit, unless GOMEMLIMIT does, and keeps it
// at memoryLimitFor the live heap that the last GC measured (under the
// cgroup's ceiling), looking once a second, for the life of the process.
func setMemoryLimit() {
	if os.Getenv("GOMEMLIMIT") != "" {
		return
	}
	debug.SetMemoryLimit(defaultMemoryLimit)
	ceiling := memoryCeiling()
	go func() {
		sample := []rtmetrics.Sample{{Name: liveHeapMetric}}
		limit := int64(defaultMemoryLimit)
		for range time.Tick(time.Second) {
			rtmetrics.Read(sample)
			if sample[0].Value.Kind() != rtmetrics.KindUint64 {
				return // not offered by this runtime: the floor stays
			}
			if l := memoryLimitFor(sample[0].Value.Uint64(), ceiling); l != limit {
				limit = l
				debug.SetMemoryLimit(limit)
			}
		}
	}()
}
