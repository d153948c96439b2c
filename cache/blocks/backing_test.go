package blocks

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"testing"
)

const testBlock = 64 << 10

// putFile stores n blocks of generation 1 of ino and returns the content.
func putFile(t *testing.T, s *Store, ino uint64, size int) []byte {
	t.Helper()
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(i*7 + int(ino))
	}
	for idx := 0; idx*testBlock < size; idx++ {
		end := min(size, (idx+1)*testBlock)
		put(t, s, ID{ino, 1, int64(idx)}, data[idx*testBlock:end], false)
	}
	return data
}

func blockAt(ino uint64) func(int64) (ID, bool) {
	return func(idx int64) (ID, bool) { return ID{ino, 1, idx}, false }
}

func contentOf(t *testing.T, b *Backing) []byte {
	t.Helper()
	st, err := b.File().Stat()
	if err != nil {
		t.Fatal(err)
	}
	out := make([]byte, st.Size())
	if _, err := b.File().ReadAt(out, 0); err != nil && err != io.EOF {
		t.Fatal(err)
	}
	return out
}

// Blocks that were never verified are checked as they are copied: a
// corrupt one gets no backing file rather than a backing file that the
// kernel would serve without any check.
func TestAssembleChecksBlocks(t *testing.T) {
	for _, verified := range []bool{false, true} {
		s := newTestStore(t, 64<<20, nil)
		data := putFile(t, s, 5, 3*testBlock)
		if !verified {
			s.mu.Lock()
			clear(s.verified) // as after a restart
			s.mu.Unlock()
		}
		b, err := s.Assemble(5, 1, int64(len(data)), testBlock, blockAt(5))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(contentOf(t, b), data) {
			t.Fatalf("verified=%v: the backing file holds other bytes", verified)
		}
		b.Release()

		// Corrupt block 1 on disk, behind the store's back.
		if err := os.WriteFile(s.path(ID{5, 1, 1}), bytes.Repeat([]byte{0xee}, testBlock), 0o600); err != nil {
			t.Fatal(err)
		}
		s.mu.Lock()
		clear(s.verified)
		s.mu.Unlock()
		s.Stale(5)
		b, err = s.Assemble(5, 1, int64(len(data)), testBlock, blockAt(5))
		if !errors.Is(err, ErrNoBacking) || b != nil {
			t.Fatalf("assemble over a corrupt block: %v, %v; want ErrNoBacking", b, err)
		}
	}
}

// Backing files count in the limit; unused ones are evicted first, and
// one in use is never evicted.
func TestBackingEviction(t *testing.T) {
	s := newTestStore(t, 40*testBlock, nil)
	a := putFile(t, s, 1, 8*testBlock)
	putFile(t, s, 2, 8*testBlock)
	ba, err := s.Assemble(1, 1, int64(len(a)), testBlock, blockAt(1))
	if err != nil {
		t.Fatal(err)
	}
	bb, err := s.Assemble(2, 1, 8*testBlock, testBlock, blockAt(2))
	if err != nil {
		t.Fatal(err)
	}
	bb.Release() // unused now
	if clean, _ := s.Usage(); clean != 32*testBlock {
		t.Fatalf("usage %d, want the blocks and both backing files (%d)", clean, 32*testBlock)
	}
	// Room for 16 more blocks: the unused backing file goes first.
	ok, err := s.Reserve(t.Context(), 16*testBlock, false, 0)
	if err != nil || !ok {
		t.Fatalf("reserve: %v %v", ok, err)
	}
	if s.BackingFor(2, 1) != nil {
		t.Fatal("the unused backing file was kept while room was needed")
	}
	if s.Stats().Evictions != 0 {
		t.Fatalf("%d blocks evicted while an unused backing file could go", s.Stats().Evictions)
	}
	// More: blocks go, the backing file in use stays and keeps its bytes.
	if _, err := s.Reserve(t.Context(), 30*testBlock, false, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(contentOf(t, ba), a) || !ba.Current() {
		t.Fatal("the backing file in use was evicted")
	}
	ba.Release()
}

// A file larger than a quarter of the cache gets no backing file.
func TestNoBackingForAHugeFile(t *testing.T) {
	s := newTestStore(t, 16*testBlock, nil)
	putFile(t, s, 3, 5*testBlock)
	if b, err := s.Assemble(3, 1, 5*testBlock, testBlock, blockAt(3)); !errors.Is(err, ErrNoBacking) || b != nil {
		t.Fatalf("assemble of a file over a quarter of the cache: %v, %v", b, err)
	}
}

// MappedElsewhere may be asked of one backing file from two places at
// once (the group commit's look at a lingering one, the end of a later
// epoch using the same file). The kernel's lease is per file: two probes
// interleaved both get it, and the second release fails with EAGAIN,
// which read as leases being unavailable (a false WARN or ERROR). The
// probes are serialised.
func TestMappedElsewhereConcurrently(t *testing.T) {
	s := newTestStore(t, 64<<20, nil)
	data := putFile(t, s, 5, 2*testBlock)
	b, err := s.Assemble(5, 1, int64(len(data)), testBlock, blockAt(5))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Release()
	errs := make(chan error, 4)
	for g := 0; g < 4; g++ {
		go func() {
			for i := 0; i < 2000; i++ {
				mapped, err := b.MappedElsewhere()
				if err != nil || mapped {
					errs <- fmt.Errorf("probe %d: mapped %v, %v", i, mapped, err)
					return
				}
			}
			errs <- nil
		}()
	}
	for g := 0; g < 4; g++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}
