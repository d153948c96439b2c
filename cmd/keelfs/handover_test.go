package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keelfs/keelfs/cache"
)

// fakeOpens answers ErrCacheInUse busy times, then opens; it counts calls.
type fakeOpens struct{ busy, calls int }

func (f *fakeOpens) open() (*cache.Cache, error) {
	f.calls++
	if f.calls <= f.busy {
		return nil, fmt.Errorf("%w (dir)", cache.ErrCacheInUse)
	}
	return nil, nil
}

// fakeClock advances by what sleep asks for.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }
func (c *fakeClock) sleep(_ context.Context, d time.Duration) error {
	c.t = c.t.Add(d)
	return nil
}

func deadPID(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	return cmd.Process.Pid
}

func writeNote(t *testing.T, dir string, pid int, until time.Time, ns string) {
	t.Helper()
	body := fmt.Sprintf("%d %d %s\n", pid, until.UnixNano(), ns)
	if err := os.WriteFile(filepath.Join(dir, drainNoteName), []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestOpenCacheWaiting: a cache held by a stopping keelfs (a live process
// that its note names, before its deadline) is waited for; one held past
// that deadline is refused at once, and one held by anything else once
// noteWait has passed without a note.
func TestOpenCacheWaiting(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	start := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	other := os.Getppid()                 // a live process that is not us
	noNote := int(noteWait/drainPoll) + 1 // attempts while no note shows up
	ours := pidNamespace()
	cases := []struct {
		name      string
		pid       int // 0: no note; -1: a process that has exited
		ns        string
		until     time.Duration
		busy      int
		wantErr   string
		wantCalls int
		wantNote  bool // the user is told that the mount waits
	}{
		{name: "free", busy: 0, wantCalls: 1},
		{name: "live mount, no note", busy: 1000, wantErr: "in use", wantCalls: noNote},
		{name: "note written a moment after", busy: 5, wantCalls: 6},
		{name: "stopping mount", pid: other, ns: ours, until: 20 * time.Second, busy: 30, wantCalls: 31, wantNote: true},
		{name: "stopping mount past its deadline", pid: other, ns: ours, until: -drainGrace, busy: 5, wantErr: "still holds it", wantCalls: 1},
		{name: "stopping mount that overruns", pid: other, ns: ours, until: time.Second, busy: 1000, wantErr: "still holds it",
			wantCalls: int((time.Second+drainGrace)/drainPoll) + 1, wantNote: true},
		{name: "note of a dead process", pid: -1, ns: ours, until: time.Minute, busy: 1000, wantErr: "in use", wantCalls: noNote},
		{name: "note from another container", pid: 1, ns: "pid:[1]", until: time.Second, busy: 5, wantCalls: 6, wantNote: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			switch {
			case tc.pid == -1:
				writeNote(t, dir, deadPID(t), start.Add(tc.until), tc.ns)
			case tc.pid > 0:
				writeNote(t, dir, tc.pid, start.Add(tc.until), tc.ns)
			}
			clock := &fakeClock{t: start}
			f := &fakeOpens{busy: tc.busy}
			var notes []string
			notify := func(m string) { notes = append(notes, m) }
			_, err := openCacheWaiting(context.Background(), dir, log, f.open, notify, clock.now, clock.sleep)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("error %v, want none", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errors.Is(err, cache.ErrCacheInUse)):
				t.Fatalf("error %v, want one about %q that is ErrCacheInUse", err, tc.wantErr)
			}
			if f.calls != tc.wantCalls {
				t.Errorf("%d attempts to open, want %d", f.calls, tc.wantCalls)
			}
			if want := map[bool]int{true: 1}[tc.wantNote]; len(notes) != want {
				t.Errorf("told the user %q, want %d message", notes, want)
			}
			if err == nil {
				if _, statErr := os.Stat(filepath.Join(dir, drainNoteName)); !os.IsNotExist(statErr) {
					t.Errorf("the note of the earlier mount is still there once the cache is open: %v", statErr)
				}
			}
		})
	}
}

// TestOpenCacheWaitingStops: a stop signal (ctx) ends the wait at once.
func TestOpenCacheWaitingStops(t *testing.T) {
	dir := t.TempDir()
	writeNote(t, dir, os.Getppid(), time.Now().Add(time.Hour), pidNamespace())
	ctx, cancel := context.WithCancel(context.Background())
	f := &fakeOpens{busy: 1 << 30}
	go func() {
		time.Sleep(50 * time.Millisecond)
		cancel()
	}()
	start := time.Now()
	_, err := openCacheWaiting(ctx, dir, slog.New(slog.DiscardHandler), f.open, nil, time.Now, sleepCtx)
	if !errors.Is(err, context.Canceled) || !errors.Is(err, cache.ErrCacheInUse) {
		t.Fatalf("error %v, want the cache in use and the wait cancelled", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("the wait went on %v after the stop", d)
	}
}

// TestDrainNoteIsOurs: a stopping mount writes its note and removes it,
// but never removes a note another process has written since.
func TestDrainNoteIsOurs(t *testing.T) {
	dir := t.TempDir()
	until := time.Now().Add(time.Minute)
	body, err := writeDrainNote(dir, until)
	if err != nil {
		t.Fatal(err)
	}
	n, ok, err := readDrainNote(dir)
	if err != nil || !ok || n.pid != os.Getpid() || !n.until.Equal(time.Unix(0, until.UnixNano())) || n.pidNS != pidNamespace() {
		t.Fatalf("note %+v, %v, %v; want ours until %v", n, ok, err, until)
	}
	if err := removeDrainNote(dir, body); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := readDrainNote(dir); ok {
		t.Fatal("our note is still there after removeDrainNote")
	}
	// Another mount's note, even one with our pid (PID 1 in two
	// containers), is not ours to remove.
	writeNote(t, dir, os.Getpid(), until.Add(time.Second), pidNamespace())
	if err := removeDrainNote(dir, body); err != nil {
		t.Fatal(err)
	}
	if n, ok, _ := readDrainNote(dir); !ok || n.pid != os.Getpid() {
		t.Fatalf("removeDrainNote removed another process's note (left %+v, %v)", n, ok)
	}
}

// TestAwaitReady: the parent of a background mount shows the child's
// notes as they come and returns its final report.
func TestAwaitReady(t *testing.T) {
	for _, tc := range []struct{ in, want, shown string }{
		{in: "ok\n", want: "ok"},
		{in: "note waiting for process 7\nnote still waiting\nok\n", want: "ok",
			shown: "keelfs: waiting for process 7\nkeelfs: still waiting\n"},
		{in: "note waiting\n6 cache directory is in use\n", want: "6 cache directory is in use", shown: "keelfs: waiting\n"},
		{in: "note waiting\n", want: "", shown: "keelfs: waiting\n"}, // the child died
		{in: "", want: ""},
	} {
		var shown strings.Builder
		if got := awaitReady(strings.NewReader(tc.in), &shown); got != tc.want || shown.String() != tc.shown {
			t.Errorf("awaitReady(%q) = %q, showed %q; want %q, showing %q", tc.in, got, shown.String(), tc.want, tc.shown)
		}
	}
}
