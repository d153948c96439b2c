package cache

import (
	"math/rand"
	"testing"
)

// TestRunsModel checks the run map against a plain slice of per-block
// generations, over random operations.
func TestRunsModel(t *testing.T) {
	type blk struct {
		gen   uint64
		dirty bool
	}
	rng := rand.New(rand.NewSource(1))
	for iter := 0; iter < 200; iter++ {
		var runs []Run
		var model []blk
		for op := 0; op < 60; op++ {
			switch rng.Intn(4) {
			case 0, 1:
				s := int64(rng.Intn(40))
				e := s + 1 + int64(rng.Intn(5))
				g := uint64(rng.Intn(4))
				d := rng.Intn(2) == 0
				runs = setRange(runs, s, e, g, d)
				for int64(len(model)) < e {
					model = append(model, blk{})
				}
				for i := s; i < e; i++ {
					model[i] = blk{g, d}
				}
			case 2:
				n := int64(rng.Intn(45))
				runs = truncateRuns(runs, n)
				if int64(len(model)) > n {
					model = model[:n]
				}
			case 3:
				n := int64(rng.Intn(45))
				runs = extendRuns(runs, n)
				for int64(len(model)) < n {
					model = append(model, blk{})
				}
			}
			if runsEnd(runs) != int64(len(model)) {
				t.Fatalf("iter %d op %d: end %d, model %d: %v", iter, op, runsEnd(runs), len(model), runs)
			}
			for i, b := range model {
				r, ok := runAt(runs, int64(i))
				if !ok || r.Gen != b.gen || r.Dirty != b.dirty {
					t.Fatalf("iter %d op %d: block %d = %+v %v, want %+v; runs %v", iter, op, i, r, ok, b, runs)
				}
			}
			if _, ok := runAt(runs, int64(len(model))); ok {
				t.Fatalf("block past the end found")
			}
			for i := 1; i < len(runs); i++ {
				a, b := runs[i-1], runs[i]
				if a.End != b.Start || (a.Gen == b.Gen && a.Dirty == b.Dirty) {
					t.Fatalf("runs not contiguous and merged: %v", runs)
				}
			}
			if len(runs) > 0 && runs[0].Start != 0 {
				t.Fatalf("runs do not start at 0: %v", runs)
			}
		}
	}
}

func TestCleanRuns(t *testing.T) {
	runs := []Run{{0, 2, 1, false}, {2, 3, 2, true}, {3, 5, 3, true}}
	got := cleanRuns(runs, 3)
	want := []Run{{0, 2, 1, false}, {2, 3, 2, false}, {3, 5, 3, true}}
	if len(got) != len(want) {
		t.Fatalf("got %v want %v", got, want)
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("got %v want %v", got, want)
		}
	}
	if !runs[1].Dirty {
		t.Fatalf("cleanRuns changed its input")
	}
}

func TestInodeRoundTrip(t *testing.T) {
	n := &Inode{Ino: 77, Gen: 3, Parent: 1, Name: "a b", Path: "x/a b", Kind: KindFile, Perm: 0o640,
		UID: 1000, GID: 1000, Mtime: 1700000000123456789, Ctime: -5, Size: 1 << 40, RemoteKey: "x/a b",
		ETag: `"abc"`, RemoteSize: 12, AttrsKnown: true, ValidUntil: 99, SyncedSeq: 7, Target: "t",
		Runs: []Run{{0, 3, 1, false}, {3, 4, 0, false}, {4, 9, 1 << 40, true}}, OpenGen: 1 << 40,
		Pending: pendData | pendMeta, MetaVer: 9, UploadKey: "u", UploadTokens: "tok", UploadID: "id", ConflictKey: "c", ConflictETag: "e",
		ListedUntil: 5, FillEpoch: 6, Entries: 7, Unlinked: true}
	got, err := unmarshalInode(n.marshal())
	if err != nil {
		t.Fatal(err)
	}
	if got.Path != n.Path || got.Size != n.Size || len(got.Runs) != 3 || got.Runs[2] != n.Runs[2] ||
		got.Mtime != n.Mtime || got.Ctime != n.Ctime || got.UploadID != "id" || got.ConflictKey != "c" || got.UploadTokens != "tok" || got.Entries != 7 || !got.Unlinked ||
		got.Pending != n.Pending || got.Target != "t" || got.ETag != n.ETag {
		t.Fatalf("round trip: got %+v", got)
	}
	for _, bad := range [][]byte{nil, {9}, n.marshal()[:20]} {
		if _, err := unmarshalInode(bad); err == nil {
			t.Fatalf("corrupt record %v accepted", bad)
		}
	}
}
