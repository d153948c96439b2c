package cache

import "sort"

// Runs are kept sorted, non-overlapping, contiguous from block 0 and merged:
// no two neighbours have the same Gen and Dirty. The last run ends at the
// file's block count.

// runAt returns the run covering block idx, or false past the last block.
func runAt(runs []Run, idx int64) (Run, bool) {
	i := sort.Search(len(runs), func(i int) bool { return runs[i].End > idx })
	if i == len(runs) || runs[i].Start > idx {
		return Run{}, false
	}
	return runs[i], true
}

// runsEnd is the number of blocks the runs cover.
func runsEnd(runs []Run) int64 {
	if len(runs) == 0 {
		return 0
	}
	return runs[len(runs)-1].End
}

// setBlock maps block idx to gen, growing the map with holes if idx lies
// past its end.
func setBlock(runs []Run, idx int64, gen uint64, dirty bool) []Run {
	return setRange(runs, idx, idx+1, gen, dirty)
}

// setRange maps blocks [start, end) to gen.
func setRange(runs []Run, start, end int64, gen uint64, dirty bool) []Run {
	if start >= end {
		return runs
	}
	runs = extendRuns(runs, end)
	out := make([]Run, 0, len(runs)+2)
	inserted := false
	for _, r := range runs {
		if r.End <= start || r.Start >= end {
			out = append(out, r)
			continue
		}
		if r.Start < start {
			out = append(out, Run{Start: r.Start, End: start, Gen: r.Gen, Dirty: r.Dirty})
		}
		if !inserted {
			out = append(out, Run{Start: start, End: end, Gen: gen, Dirty: dirty})
			inserted = true
		}
		if r.End > end {
			out = append(out, Run{Start: end, End: r.End, Gen: r.Gen, Dirty: r.Dirty})
		}
	}
	return mergeRuns(out)
}

// extendRuns grows the map to n blocks with holes.
func extendRuns(runs []Run, n int64) []Run {
	end := runsEnd(runs)
	if n <= end {
		return runs
	}
	return mergeRuns(append(runs, Run{Start: end, End: n}))
}

// truncateRuns shrinks the map to n blocks.
func truncateRuns(runs []Run, n int64) []Run {
	out := runs[:0:0]
	for _, r := range runs {
		if r.Start >= n {
			break
		}
		if r.End > n {
			r.End = n
		}
		out = append(out, r)
	}
	return out
}

// cleanRuns marks every dirty run whose generation is below gen as clean:
// an upload that sealed those generations has landed.
func cleanRuns(runs []Run, below uint64) []Run {
	out := append([]Run(nil), runs...)
	for i := range out {
		if out[i].Dirty && out[i].Gen < below {
			out[i].Dirty = false
		}
	}
	return mergeRuns(out)
}

func mergeRuns(runs []Run) []Run {
	out := runs[:0]
	for _, r := range runs {
		if r.Start >= r.End {
			continue
		}
		if n := len(out); n > 0 && out[n-1].Gen == r.Gen && out[n-1].Dirty == r.Dirty && out[n-1].End == r.Start {
			out[n-1].End = r.End
			continue
		}
		out = append(out, r)
	}
	return out
}

// gensOf returns the distinct generations the runs reference (holes
// excluded).
func gensOf(runs []Run) map[uint64]bool {
	m := make(map[uint64]bool)
	for _, r := range runs {
		if r.Gen != 0 {
			m[r.Gen] = true
		}
	}
	return m
}
