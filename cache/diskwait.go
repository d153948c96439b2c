package cache

import (
	"context"
	"sync"
)

// diskWait bounds how long uploads, and Drain, wait for a sync of the
// cache disk.
//
// Each upload syncs the cache before it sends (see commitBeforePush), so
// that after a power cut the next start knows the object as its own. A
// cache disk whose fsync hangs (not fails) must not keep every upload,
// and every fsync(2) and drain that waits for one, from S3, which is then
// the safer copy. So a caller waits PushSyncWait at most; past that the
// sync goes on in the background (a failure is kept for the next fsync,
// as the group commit's is) and the caller goes ahead. While that sync
// has not ended, later callers do not wait at all: a hung disk must not
// cost every upload PushSyncWait. Once it ends, waits are as before. A
// WARN says when uploads start to go ahead of the disk, an INFO when the
// disk answers again.
//
// Lock notes: mu is taken before tasks.mu (waitForDisk starts the
// watcher that clears late under it), and nothing else.
type diskWait struct {
	mu   sync.Mutex
	late <-chan struct{} // closed when the sync that was late ends, which clears it; nil: none is; guarded by mu
}

// commitBeforePush syncs the cache before an upload sends, as far as
// diskWait allows.
func (c *Cache) commitBeforePush(ctx context.Context) {
	c.waitForDisk(ctx, c.blocks.CommitAsync().Done())
}

// syncWithin syncs the cache as far as diskWait allows, and reports a
// failure of its disk: of this sync if it ended in time, or of an earlier
// one still kept for the next fsync (left there: an fsync(2) must get it
// too); ctx's error if ctx ended first; nil if the caller goes ahead of
// a sync that has not ended (its failure is then kept for the next
// fsync). It starts no run of its own: it shares the uploads'.
func (c *Cache) syncWithin(ctx context.Context) error {
	p := c.blocks.CommitAsync()
	if !c.waitForDisk(ctx, p.Done()) {
		return ctx.Err()
	}
	if err := p.Err(); err != nil {
		return err
	}
	return c.blocks.KeptErr()
}

// waitForDisk waits until ended is closed, for PushSyncWait at most and
// not at all while an earlier sync that was late has not ended, or until
// ctx ends; it reports whether ended was closed.
func (c *Cache) waitForDisk(ctx context.Context, ended <-chan struct{}) bool {
	select {
	case <-ended:
		return true
	default:
	}
	w := &c.rc.disk
	w.mu.Lock()
	late := w.late != nil
	w.mu.Unlock()
	if late {
		return false
	}
	t := c.opt.Clock.NewTimer(c.opt.PushSyncWait)
	defer t.Stop()
	select {
	case <-ended:
		return true
	case <-ctx.Done():
		return false
	case <-t.Chan():
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.late != nil {
		return false // another caller's wait ran out first
	}
	w.late = ended
	c.log.Warn("cache: a sync of the cache disk has not ended; uploading without waiting for it until it does", "waited", c.opt.PushSyncWait)
	if !c.tasks.Go(func() {
		<-ended
		w.mu.Lock()
		w.late = nil
		w.mu.Unlock()
		c.log.Info("cache: the cache disk answers again; uploads wait for its syncs")
	}) {
		w.late = nil // closing: nothing more waits
	}
	return false
}
