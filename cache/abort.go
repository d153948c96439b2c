package cache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/keelfs/keelfs/s3backend"
)

// Multipart uploads to abort. An inode's record holds the multipart upload
// of its upload in flight (Inode.UploadID) until S3 completed or aborted
// it. A record that lets go of one otherwise (a conflict, the file
// deleted, an attempt that starts over) leaves an abort record in its
// place, a<key>\0<upload id>, in the same badger transaction (storeInode,
// deleteInode), so that no path can lose it. A multipart copy (a rename
// of an object over 5 GiB) that failed and could not abort its upload, or
// was cut short by a stop, leaves one too (keepUploadLeft). The aborter
// aborts them in the background, soon after they are written and at
// every start, and drops each once S3 aborted it or no longer knows it:
// no file's upload waits for an abort. A refusal for good (access denied, not implemented,
// a request it calls malformed) is logged once, naming the upload, and
// the record dropped: a lifecycle rule removes such uploads. Other
// failures are retried, backing off, abortTries times in a row at most;
// what is left then waits for the next record written or the next start.
// Close does not wait for an abort under way: it cuts it short, and the
// record stays.

// abortTries bounds the sweeps in a row that abort nothing.
const abortTries = 10

// aborter runs one sweep of the abort records at a time.
//
// Lock order: aborter.mu is a leaf.
type aborter struct {
	wake chan struct{} // ends the wait of a sweep that backs off

	mu      sync.Mutex
	running bool      // a sweep runs; guarded by mu
	again   bool      // records were written since it read them; guarded by mu
	retryAt time.Time // when the sweep that backs off tries again; zero if none; guarded by mu
}

func abortKey(key, id string) []byte {
	k := append([]byte{pAbort}, key...)
	k = append(k, 0)
	return append(k, id...)
}

// lostUpload reports whether storing rec (nil: deleting the record) in
// place of old lets go of a multipart upload that S3 did not end (ended
// false): it must then get an abort record.
func lostUpload(old, rec *Inode, ended bool) bool {
	return old != nil && old.UploadID != "" && !ended && (rec == nil || rec.UploadID != old.UploadID)
}

// keepUpload writes the abort record of the multipart upload old holds if
// rec (nil: deleted) lets go of it (see lostUpload).
func keepUpload(txn *badger.Txn, old, rec *Inode, ended bool) error {
	if !lostUpload(old, rec, ended) {
		return nil
	}
	return txn.Set(abortKey(old.UploadKey, old.UploadID), nil)
}

// abortRefused reports whether S3 refuses an abort for good: asked again,
// it would answer the same. A 403 for a clock too far from S3's is no
// such refusal: it ends once the clock is set.
func abortRefused(err error) bool {
	var e *s3backend.Error
	if errors.As(err, &e) && e.Code == "RequestTimeTooSkewed" {
		return false
	}
	return errors.Is(err, s3backend.ErrAccessDenied) || errors.Is(err, s3backend.ErrNotImplemented) ||
		errors.Is(err, s3backend.ErrInvalidRequest)
}

// sweepAborts starts a sweep of the abort records in the background, or
// makes the one running read them again.
func (c *Cache) sweepAborts() {
	a := &c.aborts
	a.mu.Lock()
	if a.running {
		a.again = true
		a.mu.Unlock()
		select {
		case a.wake <- struct{}{}:
		default:
		}
		return
	}
	a.running = true
	a.mu.Unlock()
	if !c.tasks.Go(c.abortRecorded) {
		a.mu.Lock()
		a.running = false // closing: the next start sweeps them
		a.mu.Unlock()
	}
}

// abortRecorded aborts the multipart uploads recorded to abort, until
// none is left, abortTries sweeps in a row have aborted nothing, or the
// cache closes.
func (c *Cache) abortRecorded() {
	a := &c.aborts
	ctx := c.tasks.ctx
	failed := 0
	for {
		left, progress, err := c.abortEach(ctx)
		if err != nil && ctx.Err() == nil {
			c.log.Warn("cache: multipart uploads to abort; the next start retries", "err", err)
		}
		if progress {
			failed = 0
		} else if left {
			failed++
		}
		a.mu.Lock()
		if a.again && err == nil && ctx.Err() == nil {
			a.again, failed = false, 0
			a.mu.Unlock()
			select {
			case <-a.wake: // sent for this round
			default:
			}
			continue
		}
		if !left || failed >= abortTries || err != nil || ctx.Err() != nil {
			if left && failed >= abortTries {
				c.log.Info("cache: multipart uploads not aborted yet; retried once another is recorded, or at the next start", "tries", failed)
			}
			a.running, a.again = false, false
			a.mu.Unlock()
			return
		}
		wait := c.abortBackoff(failed)
		after := c.opt.Clock.After(wait)
		a.retryAt = c.opt.Clock.Now().Add(wait)
		a.mu.Unlock()
		select {
		case <-ctx.Done():
		case <-a.wake:
		case <-after:
		}
		a.mu.Lock()
		a.retryAt = time.Time{}
		a.mu.Unlock()
	}
}

// abortBackoff is the wait after the n-th sweep in a row that aborted
// nothing: from MinBackoff, doubling, up to MaxBackoff.
func (c *Cache) abortBackoff(n int) time.Duration {
	d := c.opt.MinBackoff
	for i := 1; i < n && d < c.opt.MaxBackoff; i++ {
		d *= 2
	}
	return min(d, c.opt.MaxBackoff)
}

// abortEach tries once to abort every recorded upload. left says whether
// records remain that a later try may abort; progress, whether this one
// dropped any.
func (c *Cache) abortEach(ctx context.Context) (left, progress bool, err error) {
	type upload struct{ k, key, id string }
	var list []upload
	err = c.db.View(func(txn *badger.Txn) error {
		pre := []byte{pAbort}
		it := txn.NewIterator(badger.IteratorOptions{Prefix: pre})
		defer it.Close()
		for it.Seek(pre); it.ValidForPrefix(pre); it.Next() {
			k := it.Item().KeyCopy(nil)
			i := bytes.LastIndexByte(k, 0)
			if i < 1 {
				continue
			}
			list = append(list, upload{k: string(k), key: string(k[1:i]), id: string(k[i+1:])})
		}
		return nil
	})
	if err != nil {
		return false, false, err
	}
	for _, u := range list {
		if ctx.Err() != nil {
			return true, progress, nil
		}
		actx, cancel := context.WithTimeout(ctx, 30*time.Second)
		aerr := c.store.AbortMultipart(actx, u.key, u.id)
		cancel()
		switch {
		case aerr == nil, errors.Is(aerr, s3backend.ErrNotFound):
		case ctx.Err() != nil:
			return true, progress, nil
		case abortRefused(aerr):
			c.log.Warn("cache: S3 refuses to abort a multipart upload; it stays in the bucket until a lifecycle rule (AbortIncompleteMultipartUpload) removes it",
				"key", u.key, "upload_id", u.id, "err", aerr)
		default:
			c.log.Debug("cache: multipart upload not aborted; will retry", "key", u.key, "upload_id", u.id, "err", aerr)
			left = true
			continue
		}
		if err := update(c.db, func(txn *badger.Txn) error { return txn.Delete([]byte(u.k)) }); err != nil {
			return true, progress, err
		}
		progress = true
	}
	return left, progress, nil
}

// uploadsToAbort counts the abort records: multipart uploads left open in
// S3 that no sweep has aborted yet.
func (c *Cache) uploadsToAbort() (int, error) {
	n, err := countPrefix(c.db, pAbort)
	if err != nil {
		return 0, fmt.Errorf("count the multipart uploads to abort: %w", err)
	}
	return n, nil
}

// keepUploadLeft records the multipart upload that a failed request left
// open (err names it, as s3backend.UploadLeft: a multipart copy cut short
// or whose abort failed) to abort in the background. It returns err, with
// the failure to record joined to it.
func (c *Cache) keepUploadLeft(err error) error {
	var left *s3backend.UploadLeft
	if !errors.As(err, &left) {
		return err
	}
	if rerr := update(c.db, func(txn *badger.Txn) error { return txn.Set(abortKey(left.Key, left.UploadID), nil) }); rerr != nil {
		return errors.Join(err, fmt.Errorf("record the multipart upload %s to abort: %w", left.UploadID, rerr))
	}
	c.sweepAborts()
	return err
}
