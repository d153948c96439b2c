package harness

import (
	"errors"
	"os"
	"syscall"
	"time"
)

// Pid is the daemon's process id, or 0 when it is not running.
func (m *Mount) Pid() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd == nil || m.cmd.Process == nil || !m.runningLocked() {
		return 0
	}
	return m.cmd.Process.Pid
}

func (m *Mount) runningLocked() bool {
	if m.done == nil {
		return false
	}
	select {
	case <-m.done:
		return false
	default:
		return true
	}
}

// Signal sends sig to the daemon without waiting.
func (m *Mount) Signal(sig syscall.Signal) {
	m.t.Helper()
	if pid := m.Pid(); pid != 0 {
		if p, err := os.FindProcess(pid); err == nil {
			p.Signal(sig)
		}
	}
}

// Wait waits up to timeout for the daemon to exit and returns its exit
// code, or -1 with ok=false if it is still running.
func (m *Mount) Wait(timeout time.Duration) (code int, ok bool) {
	m.mu.Lock()
	done := m.done
	m.mu.Unlock()
	if done == nil {
		return -1, false
	}
	select {
	case <-done:
	case <-time.After(timeout):
		return -1, false
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.exitErr == nil {
		return 0, true
	}
	if ee := (interface{ ExitCode() int })(nil); errors.As(m.exitErr, &ee) {
		return ee.ExitCode(), true
	}
	return -1, true
}

// Crash kills the daemon with SIGKILL and leaves its mount behind, stale
// (ENOTCONN), as a crashed process does. Cleanup still detaches it.
func (m *Mount) Crash() {
	m.t.Helper()
	m.Signal(syscall.SIGKILL)
	if _, ok := m.Wait(10 * time.Second); !ok {
		m.t.Fatalf("harness: keelfs survived SIGKILL")
	}
}
