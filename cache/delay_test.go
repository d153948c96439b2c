package cache

import (
	"bytes"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/keelfs/keelfs/cache/writeback"
)

// TestWriteBackDelayQuickForFileWrittenInOneGo: a file not uploaded
// within the last write-back delay is due a quarter of the delay after
// its last change; written again right after that upload, it is due the
// whole delay after.
func TestWriteBackDelayQuickForFileWrittenInOneGo(t *testing.T) {
	clock := clockwork.NewFakeClock()
	e := newEnv(t, func(o *Options) { o.Clock, o.WriteBackDelay, o.CommitInterval = clock, 4*time.Second, time.Hour })
	due := func(ino uint64) time.Duration {
		t.Helper()
		in, ok := e.c.wb.Job(writeback.Inode(ino))
		if !ok || in.State != writeback.Pending {
			t.Fatalf("job of the file: %+v, %v; want it pending", in, ok)
		}
		return in.Due.Sub(clock.Now())
	}
	a := randBytes(10 << 10)
	e.write("f", 0, a)
	ino := e.mustLookup("f").Ino
	if d := due(ino); d != time.Second {
		t.Fatalf("a new file is due %v after its close, want 1s (a quarter of the 4s delay)", d)
	}
	clock.Advance(time.Second)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		if _, busy := e.c.wb.Job(writeback.Inode(ino)); !busy {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the upload due had not ended 10 s later")
		}
	}
	if got, _, ok := e.store.Object("f"); !ok || !bytes.Equal(got, a) {
		t.Fatalf("after its upload, S3 holds %d bytes (%v), want the %d written", len(got), ok, len(a))
	}
	b := randBytes(12 << 10)
	e.write("f", 0, b)
	if d := due(ino); d != 4*time.Second {
		t.Fatalf("a file written again right after its upload is due %v after, want the whole delay (4s)", d)
	}
	e.wantUploaded("f", b)
}
