package main

import (
	"os"
	"runtime/debug"
	rtmetrics "runtime/metrics"
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

// memoryCeiling is half the memory the process's cgroup may use (cgroup v2
// memory.max, else v1 memory.limit_in_bytes), or 0 if there is no limit.
// In a container the headroom must not lift the GC's target toward the
// OOM killer, and under `keelfs run` the app shares that cgroup: past
// this the GC works harder instead.
func memoryCeiling() int64 {
	for _, f := range []string{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"} {
		if n, ok := readCgroupLimit(f); ok {
			return n / 2
		}
	}
	return 0
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
