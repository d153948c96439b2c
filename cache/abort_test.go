package cache

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/keelfs/keelfs/s3backend"
)

// abortGate is a store that fails AbortMultipart as told and notes the
// upload IDs it was asked to abort.
type abortGate struct {
	s3backend.ObjectStore

	mu        sync.Mutex
	failFirst int      // the next failFirst aborts fail as an unreachable S3 does
	fail      error    // then every abort fails with this, while set
	hang      bool     // then every abort waits for its context to end, while set
	asked     []string // upload IDs, in the order asked
}

func (g *abortGate) set(failFirst int, fail error) {
	g.mu.Lock()
	g.failFirst, g.fail, g.hang = failFirst, fail, false
	g.mu.Unlock()
}

func (g *abortGate) hangAll() {
	g.mu.Lock()
	g.failFirst, g.fail, g.hang = 0, nil, true
	g.mu.Unlock()
}

func (g *abortGate) AbortMultipart(ctx context.Context, key, uploadID string) error {
	g.mu.Lock()
	g.asked = append(g.asked, uploadID)
	err, hang := g.fail, g.hang
	if g.failFirst > 0 {
		g.failFirst--
		err = abortUnreachable(key)
	}
	g.mu.Unlock()
	if hang {
		<-ctx.Done()
		err = abortUnreachable(key)
	}
	if err != nil {
		return err
	}
	return g.ObjectStore.AbortMultipart(ctx, key, uploadID)
}

func (g *abortGate) askedFor() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]string(nil), g.asked...)
}

func abortUnreachable(key string) error {
	return &s3backend.Error{Op: "AbortMultipartUpload", Key: key, Kind: s3backend.ErrUnavailable, Cause: errors.New("connection refused")}
}

// gatedEnv is an env whose store's aborts go through the returned gate.
func gatedEnv(t *testing.T, mod func(*Options)) (*env, *abortGate) {
	g := &abortGate{}
	e := newEnv(t, func(o *Options) {
		g.ObjectStore = o.Store
		o.Store = g
		if mod != nil {
			mod(o)
		}
	})
	return e, g
}

// multipartLeftOpen creates name, a file of a part and a block of zeros
// (no writes: no early parts), and returns once its first upload failed
// with a part and its abort failed too, as when S3 goes away: the
// multipart upload stays open, its ID recorded. Aborts keep failing so
// until the test tells the gate otherwise; parts no longer fail.
func (e *env) multipartLeftOpen(g *abortGate, name string) {
	e.t.Helper()
	var partsToFail atomic.Int32
	partsToFail.Store(1)
	e.store.SetHook(func(op, key string) error {
		if op == "UploadPart" && partsToFail.Add(-1) >= 0 {
			return &s3backend.Error{Op: "UploadPart", Key: key, Kind: s3backend.ErrUnavailable, Cause: errors.New("connection refused")}
		}
		return nil
	})
	g.set(0, abortUnreachable(name))
	e.logs.allow("upload failed; will retry")
	h := e.openW(name)
	if err := e.c.Truncate(ctx, h.Ino(), e.opt.PartSize+e.opt.BlockSize); err != nil {
		e.t.Fatal(err)
	}
	e.close(h)
	for deadline := time.Now().Add(10 * time.Second); len(g.askedFor()) == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			e.t.Fatal("the upload did not fail")
		}
	}
}

// abortRecords counts the multipart uploads recorded to abort.
func (e *env) abortRecords() int {
	e.t.Helper()
	return e.countKeys(pAbort)
}

// streamRecords counts the early uploads recorded (pStream).
func (e *env) streamRecords() int {
	e.t.Helper()
	return e.countKeys(pStream)
}

// countKeys counts the badger keys of one prefix.
func (e *env) countKeys(prefix byte) int {
	e.t.Helper()
	n, err := countPrefix(e.c.db, prefix)
	if err != nil {
		e.t.Fatal(err)
	}
	return n
}

// conflictCopy returns the content of name's one conflict copy, leaving
// out those that hold other (the other writer's, at a name it took).
func (e *env) conflictCopy(name string, other []byte) []byte {
	e.t.Helper()
	var copies [][]byte
	for _, k := range e.keys() {
		if got := e.object(k); strings.HasPrefix(k, name+".conflict-testhost-") && !bytes.Equal(got, other) {
			copies = append(copies, got)
		}
	}
	if len(copies) != 1 {
		e.t.Fatalf("%d conflict copies of %s (keys %v), want 1", len(copies), name, e.keys())
	}
	return copies[0]
}

// A 412 at CompleteMultipartUpload (another writer got there first) whose
// abort then fails leaves the upload recorded to abort, also when the
// conflict copy's own name turns out taken the same way. Before, the
// conflict path cleared the upload's ID whatever the abort did: each
// such upload stayed in the bucket, unrecorded (found in review).
func TestConflictAtCompleteKeepsItsUploadToAbort(t *testing.T) {
	for _, tc := range []struct {
		name      string
		takenCopy bool // the conflict copy's name is taken as well
	}{{"412 on the name", false}, {"412 on the conflict name too", true}} {
		t.Run(tc.name, func(t *testing.T) {
			e, g := gatedEnv(t, nil)
			e.logs.allow("conflict")
			other := []byte("the other writer's version")
			var nameTaken, copyTaken atomic.Bool
			e.store.SetHook(func(op, key string) error {
				if op != "CompleteMultipart" {
					return nil
				}
				if key == "f" && !nameTaken.Swap(true) ||
					tc.takenCopy && strings.HasPrefix(key, "f.conflict-") && !copyTaken.Swap(true) {
					e.store.PutObject(key, other, nil)
				}
				return nil
			})
			fails := 1
			if tc.takenCopy {
				fails = 2
			}
			g.set(fails, nil)
			size := e.opt.PartSize + e.opt.BlockSize
			h := e.openW("f")
			if err := e.c.Truncate(ctx, h.Ino(), size); err != nil {
				t.Fatal(err)
			}
			e.close(h)
			e.drain()
			if got := e.object("f"); !bytes.Equal(got, other) {
				t.Fatal("the other writer's version is not under the name")
			}
			if got := e.conflictCopy("f", other); !bytes.Equal(got, make([]byte, size)) {
				t.Fatalf("the conflict copy holds %d bytes, want %d zeros", len(got), size)
			}
			e.waitNoUploads()
		})
	}
}

// An upload that meets its base gone (a 412 on UploadPartCopy: another
// writer replaced the object) and whose abort fails leaves the upload
// recorded to abort. Before, baseGone cleared its ID whatever the abort
// did (found in review).
func TestBaseGoneKeepsItsUploadToAbort(t *testing.T) {
	e, g := gatedEnv(t, nil)
	e.logs.allow("conflict")
	base := randBytes(int(e.opt.PartSize + e.opt.BlockSize))
	e.store.PutObject("f", base, nil)
	if !bytes.Equal(e.read("f"), base) { // every block in the cache
		t.Fatal("read back")
	}
	other := []byte("the other writer's version")
	var replaced atomic.Bool
	e.store.SetHook(func(op, key string) error {
		if op == "UploadPartCopy" && !replaced.Swap(true) {
			e.store.PutObject("f", other, nil)
		}
		return nil
	})
	g.set(1, nil)
	edit := []byte("EDITED")
	e.write("f", e.opt.PartSize+10, edit)
	e.drain()
	if !replaced.Load() {
		t.Fatal("no part was copied: the test did not test anything")
	}
	want := append([]byte(nil), base...)
	copy(want[e.opt.PartSize+10:], edit)
	if got := e.conflictCopy("f", other); !bytes.Equal(got, want) {
		t.Fatal("the conflict copy does not hold the local version")
	}
	e.waitNoUploads()
}

// A file deleted (unlinked, or renamed over) while the multipart upload
// of its failed upload is still recorded does not take the upload with
// it: it is aborted once S3 answers. Before, the inode's record went with
// the upload's ID in it, and the upload stayed in the bucket (found in
// review).
func TestDeletedFileKeepsItsUploadToAbort(t *testing.T) {
	for _, tc := range []struct {
		name   string
		delete func(e *env) error
	}{
		{"unlink", func(e *env) error { return e.c.Unlink(ctx, RootIno, "f") }},
		{"rename over", func(e *env) error {
			e.write("g", 0, []byte("g"))
			return e.c.Rename(ctx, RootIno, "g", RootIno, "f", 0)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, g := gatedEnv(t, nil)
			e.multipartLeftOpen(g, "f") // S3 is still away as it is deleted
			if err := tc.delete(e); err != nil {
				t.Fatal(err)
			}
			g.set(0, nil) // and back
			e.drain()
			e.waitNoUploads()
		})
	}
}

// S3 refusing for good to abort a multipart upload (a policy without
// s3:AbortMultipartUpload, a backend without the request) neither keeps
// the file from being uploaded nor is asked again: one WARN names the
// upload and the lifecycle rule that removes it. Before, every attempt
// asked to abort it first and retried when refused: the file was never
// uploaded (found in review).
func TestRefusedAbortDoesNotBlockTheUpload(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
	}{
		{"access denied", &s3backend.Error{Op: "AbortMultipartUpload", Key: "f", Status: 403, Code: "AccessDenied",
			Kind: s3backend.ErrAccessDenied, Cause: errors.New("injected")}},
		{"not implemented", &s3backend.Error{Op: "AbortMultipartUpload", Key: "f", Status: 501, Code: "NotImplemented",
			Kind: s3backend.ErrNotImplemented, Cause: errors.New("injected")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, g := gatedEnv(t, nil)
			e.logs.allow("AbortIncompleteMultipartUpload")
			e.multipartLeftOpen(g, "f")
			g.set(0, tc.err)
			dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			if left, err := e.c.Drain(dctx); err != nil || len(left) > 0 {
				t.Fatalf("drain with the abort refused: %v, left %v", err, left)
			}
			if got := e.object("f"); int64(len(got)) != e.opt.PartSize+e.opt.BlockSize {
				t.Fatalf("the object holds %d bytes", len(got))
			}
			refused := g.askedFor()[0]
			for deadline := time.Now().Add(10 * time.Second); e.logs.count("AbortIncompleteMultipartUpload") == 0; time.Sleep(time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatal("no warning about the upload S3 refuses to abort")
				}
			}
			if n := e.logs.count("AbortIncompleteMultipartUpload"); n != 1 {
				t.Fatalf("%d warnings about the refused abort, want 1", n)
			}
			if n := e.logs.count(refused); n != 1 {
				t.Fatalf("%d log lines name the upload S3 refused to abort (%s), want 1", n, refused)
			}
			if n := e.abortRecords(); n != 0 {
				t.Fatalf("%d uploads still recorded to abort after S3 refused for good", n)
			}
			if n := e.store.Uploads(); n != 1 {
				t.Fatalf("%d multipart uploads in the bucket, want the one S3 refused to abort", n)
			}
		})
	}
}

// abortRetryAt is when the sweep of the uploads to abort tries again
// (zero if it does not wait), and whether a sweep runs.
func (e *env) abortRetryAt() (at time.Time, running bool) {
	a := &e.c.aborts
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.retryAt, a.running
}

// waitUntil waits for cond, for 10 s at most: background work settling.
func (e *env) waitUntil(what string, cond func() bool) {
	e.t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			e.t.Fatalf("after 10 s: %s", what)
		}
	}
}

// An abort that keeps failing (S3 away) is retried with a backoff that
// doubles from --min-backoff up to the cap, and the retries end: the
// record is kept for the next start, which aborts it. A stop does not
// wait for an abort under way: the record stays, and the next start
// aborts it.
func TestAbortRetriesBackOffAndEnd(t *testing.T) {
	clock := clockwork.NewFakeClock()
	e, g := gatedEnv(t, func(o *Options) { o.Clock, o.CommitInterval = clock, time.Hour })
	e.multipartLeftOpen(g, "f") // S3 stays away
	if err := e.c.Unlink(ctx, RootIno, "f"); err != nil {
		t.Fatal(err)
	}
	want := e.opt.MinBackoff
	for i := 1; i < abortTries; i++ {
		var at time.Time
		e.waitUntil("the sweep does not back off", func() bool {
			at, _ = e.abortRetryAt()
			return !at.IsZero()
		})
		if d := at.Sub(clock.Now()); d != want {
			t.Fatalf("after %d failed tries the sweep waits %v, want %v", i, d, want)
		}
		n := len(g.askedFor())
		clock.Advance(want)
		e.waitUntil("the sweep did not try again after its backoff", func() bool { return len(g.askedFor()) > n })
		want = min(2*want, e.opt.MaxBackoff)
	}
	e.waitUntil("the sweep did not end", func() bool {
		at, running := e.abortRetryAt()
		return at.IsZero() && !running
	})
	if n := e.abortRecords(); n != 1 {
		t.Fatalf("%d uploads recorded to abort once the retries ended, want the one", n)
	}
	if st := e.c.Status(); st.ToAbort != 1 || st.ToAbortErr != nil {
		t.Fatalf("status counts %d uploads to abort (%v), want the one", st.ToAbort, st.ToAbortErr)
	}
	if n := e.store.Uploads(); n != 1 {
		t.Fatalf("%d multipart uploads in the bucket, want the one not aborted", n)
	}

	// The next start tries again; a stop cuts that short.
	g.hangAll()
	n := len(g.askedFor())
	e.reopen()
	e.waitUntil("the start did not abort the recorded upload", func() bool { return len(g.askedFor()) > n })
	e.closeWithin(10 * time.Second)
	g.set(0, nil)
	e.open()
	e.waitNoUploads()
	e.waitUntil("the record of the aborted upload stays", func() bool { return e.abortRecords() == 0 })
	if st := e.c.Status(); st.ToAbort != 0 || st.ToAbortErr != nil {
		t.Fatalf("status counts %d uploads to abort (%v) once all were aborted", st.ToAbort, st.ToAbortErr)
	}
}

// copyLeaves is a store whose first Copy fails as a multipart copy cut
// short does: it names the upload it left open (left), for the caller to
// abort.
type copyLeaves struct {
	s3backend.ObjectStore
	copies atomic.Int32
	left   string // the upload ID the first Copy reports
}

func (s *copyLeaves) Copy(ctx context.Context, in s3backend.CopyInput) (string, error) {
	if s.copies.Add(1) == 1 {
		id, err := s.ObjectStore.CreateMultipart(ctx, in.Dst, nil, "")
		if err != nil {
			return "", err
		}
		s.left = id
		return "", &s3backend.UploadLeft{Key: in.Dst, UploadID: id,
			Err: &s3backend.Error{Op: "UploadPartCopy", Key: in.Dst, Kind: s3backend.ErrUnavailable, Cause: errors.New("connection reset")}}
	}
	return s.ObjectStore.Copy(ctx, in)
}

// TestCopyLeftOpenIsAborted: the multipart upload that a failed copy (a
// rename of an object over 5 GiB) could not abort goes to the aborter.
func TestCopyLeftOpenIsAborted(t *testing.T) {
	var cl *copyLeaves
	e, g := gatedEnv(t, func(o *Options) {
		cl = &copyLeaves{ObjectStore: o.Store}
		o.Store = cl
	})
	e.write("f", 0, []byte("content"))
	e.drain()
	if err := e.c.Rename(ctx, RootIno, "f", RootIno, "g", 0); err != nil {
		t.Fatal(err)
	}
	e.logs.allow("upload failed; will retry")
	e.drain()
	if got := e.object("g"); string(got) != "content" {
		t.Fatalf("g after the rename: %q", got)
	}
	if cl.copies.Load() < 2 || cl.left == "" {
		t.Fatalf("%d copies, left %q: the first copy did not fail as planned", cl.copies.Load(), cl.left)
	}
	e.waitUntil("the upload the copy left is aborted", func() bool { return e.store.Uploads() == 0 && e.abortRecords() == 0 })
	if asked := g.askedFor(); !slices.Contains(asked, cl.left) {
		t.Fatalf("aborts asked for %v, not the upload the copy left (%s)", asked, cl.left)
	}
}

// TestStreamLeftByACrashRefusedOnce: an early upload a crash left, whose
// abort S3 refuses for good, is named once and then let go, as other
// uploads to abort are; before, every mount asked again and warned again.
func TestStreamLeftByACrashRefusedOnce(t *testing.T) {
	e, g := gatedEnv(t, func(o *Options) { o.WriteBackDelay = time.Hour })
	data := e.streamLeftByACrash("f")
	g.set(0, &s3backend.Error{Op: "AbortMultipartUpload", Key: "f", Status: 403, Code: "AccessDenied",
		Kind: s3backend.ErrAccessDenied, Cause: errors.New("injected")})
	e.logs.allow("AbortIncompleteMultipartUpload")
	for range 2 {
		e.open()
		e.drain()
		if got := e.object("f"); !bytes.Equal(got, data) {
			t.Fatal("content differs")
		}
		e.waitUntil("the refused abort is let go", func() bool { return e.abortRecords() == 0 && e.streamRecords() == 0 })
		e.c.Close()
	}
	if n := len(g.askedFor()); n != 1 {
		t.Fatalf("%d aborts asked of the early upload S3 refuses to abort, want 1", n)
	}
	if n := e.logs.count("level=WARN"); n != 1 {
		t.Fatalf("%d warnings, want the one naming the upload S3 refuses to abort", n)
	}
	e.open()
}

func TestAbortRefusedForGood(t *testing.T) {
	for _, tc := range []struct {
		err  error
		good bool
	}{
		{&s3backend.Error{Status: 403, Code: "AccessDenied", Kind: s3backend.ErrAccessDenied}, true},
		{&s3backend.Error{Status: 501, Code: "NotImplemented", Kind: s3backend.ErrNotImplemented}, true},
		{&s3backend.Error{Status: 403, Code: "RequestTimeTooSkewed", Kind: s3backend.ErrAccessDenied}, false}, // from review
		{&s3backend.Error{Status: 503, Code: "SlowDown", Kind: s3backend.ErrThrottled}, false},
		{abortUnreachable("k"), false},
	} {
		if got := abortRefused(tc.err); got != tc.good {
			t.Errorf("abortRefused(%v) = %v, want %v", tc.err, got, tc.good)
		}
	}
}
