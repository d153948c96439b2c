package cache

import (
	"context"
	"sync"
)

// tasks starts every background goroutine of the cache (fetches ahead,
// parts sent while a file is written, upload attempts, block garbage
// collection, housekeeping) and lets Close wait for all of them: nothing
// the cache started outlives it, and nothing touches the store after it
// closed.
//
// Lock order: tasks.mu is a leaf.
type tasks struct {
	ctx    context.Context // ends when the cache closes
	cancel context.CancelFunc

	mu     sync.Mutex
	closed bool // guarded by mu
	wg     sync.WaitGroup
}

func newTasks() *tasks {
	t := &tasks{}
	t.ctx, t.cancel = context.WithCancel(context.Background())
	return t
}

// Go runs fn in a goroutine that close waits for. It returns false, and
// does not run fn, once the cache is closing.
func (t *tasks) Go(fn func()) bool {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return false
	}
	t.wg.Add(1)
	t.mu.Unlock()
	go func() {
		defer t.wg.Done()
		fn()
	}()
	return true
}

// close ends ctx, refuses new goroutines and waits for the running ones.
func (t *tasks) close() {
	t.mu.Lock()
	t.closed = true
	t.mu.Unlock()
	t.cancel()
	t.wg.Wait()
}
