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

func writeNote(t *testing.T, dir string, pid int, until time.Time) {
	t.Helper()
	body := fmt.Sprintf("%d %d\n", pid, until.UnixNano())
	if err := os.WriteFile(filepath.Join(dir, drainNoteName), []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestOpenCacheWaiting: a cache held by a stopping keelfs (a live process
// that its note names, before its deadline) is waited for; one held by
// anything else, or past the deadline, is refused at once.
func TestOpenCacheWaiting(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	start := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	other := os.Getppid() // a live process that is not us
	cases := []struct {
		name      string
		pid       int // 0: no note
		until     time.Duration
		busy      int
		wantErr   string
		wantCalls int
	}{
		{name: "free", busy: 0, wantCalls: 1},
		{name: "live mount, no note", busy: 5, wantErr: "in use", wantCalls: 1},
		{name: "stopping mount", pid: other, until: 20 * time.Second, busy: 30, wantCalls: 31},
		{name: "stopping mount past its deadline", pid: other, until: -drainGrace, busy: 5, wantErr: "still holds it", wantCalls: 1},
		{name: "stopping mount that overruns", pid: other, until: time.Second, busy: 1000, wantErr: "still holds it",
			wantCalls: int((time.Second+drainGrace)/drainPoll) + 1},
		{name: "note of a dead process", pid: -1, until: time.Minute, busy: 5, wantErr: "in use", wantCalls: 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			switch {
			case tc.pid == -1:
				writeNote(t, dir, deadPID(t), start.Add(tc.until))
			case tc.pid > 0:
				writeNote(t, dir, tc.pid, start.Add(tc.until))
			}
			clock := &fakeClock{t: start}
			f := &fakeOpens{busy: tc.busy}
			_, err := openCacheWaiting(context.Background(), dir, log, f.open, clock.now, clock.sleep)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("error %v, want none", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errors.Is(err, cache.ErrCacheInUse)):
				t.Fatalf("error %v, want one about %q that is ErrCacheInUse", err, tc.wantErr)
			}
			if f.calls != tc.wantCalls {
				t.Errorf("%d attempts to open, want %d", f.calls, tc.wantCalls)
			}
			if err == nil {
				if _, statErr := os.Stat(filepath.Join(dir, drainNoteName)); !os.IsNotExist(statErr) {
					t.Errorf("the note of the earlier mount is still there once the cache is open: %v", statErr)
				}
			}
		})
	}
}

// TestDrainNoteIsOurs: a stopping mount writes its note and removes it,
// but never removes a note another process has written since.
func TestDrainNoteIsOurs(t *testing.T) {
	dir := t.TempDir()
	until := time.Now().Add(time.Minute)
	if err := writeDrainNote(dir, until); err != nil {
		t.Fatal(err)
	}
	n, ok, err := readDrainNote(dir)
	if err != nil || !ok || n.pid != os.Getpid() || !n.until.Equal(time.Unix(0, until.UnixNano())) {
		t.Fatalf("note %+v, %v, %v; want ours until %v", n, ok, err, until)
	}
	if err := removeDrainNote(dir); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := readDrainNote(dir); ok {
		t.Fatal("our note is still there after removeDrainNote")
	}
	writeNote(t, dir, os.Getppid(), until)
	if err := removeDrainNote(dir); err != nil {
		t.Fatal(err)
	}
	if n, ok, _ := readDrainNote(dir); !ok || n.pid != os.Getppid() {
		t.Fatalf("removeDrainNote removed another process's note (left %+v, %v)", n, ok)
	}
}
