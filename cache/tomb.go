package cache

import (
	"context"
	"errors"
	"fmt"
	"strings"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/keelfs/keelfs/cache/writeback"
	"github.com/keelfs/keelfs/s3backend"
)

// processTomb deletes an object whose inode is gone. A directory key waits
// until nothing under it is claimed or waiting to be deleted. A file key
// that a file now named so will overwrite (absorb) waits for that upload.
//
// The decision to delete is made under namespace.mu and marked
// (reconciler.deleting): an upload that seals meanwhile for that key
// waits for the DELETE instead of racing it with a conditional PUT.
func (c *Cache) processTomb(ctx context.Context, key string) writeback.Result {
	c.ns.mu.Lock()
	ts, found, blocker, holder, err := c.tombStateLocked(key)
	var absorber uint64
	absorbed := false
	if err == nil && found && blocker == "" && !ts.Dir {
		absorber, absorbed = c.willAbsorb(key)
	}
	deleting := err == nil && found && blocker == "" && !absorbed
	if deleting {
		c.rc.deleting[key] = true
	}
	c.ns.mu.Unlock()
	switch {
	case err != nil:
		return retry(fmt.Errorf("read the journal: %w", err))
	case !found:
		c.wb.Release(key)
		return done
	case blocker != "":
		return writeback.Result{Outcome: writeback.WaitKey, Key: blocker, Holder: holder}
	case absorbed:
		// A file now has this name and will replace the object with one
		// conditional write: no delete needed.
		return writeback.Result{Outcome: writeback.WaitKey, Key: key, Holder: writeback.Inode(absorber)}
	}
	var cond s3backend.Condition
	if ts.ETag != "" && c.opt.ConditionalWrites {
		cond.IfMatch = ts.ETag
	}
	err = c.store.Delete(ctx, key, cond)
	if errors.Is(err, s3backend.ErrNotImplemented) && cond.IfMatch != "" {
		err = c.store.Delete(ctx, key, s3backend.Condition{})
	}
	switch {
	case errors.Is(err, s3backend.ErrPrecondition):
		c.log.Info("not deleting object: another writer replaced it", "key", key)
	case err != nil:
		c.ns.mu.Lock()
		delete(c.rc.deleting, key)
		c.ns.mu.Unlock()
		c.wb.Release(key)
		return classify(err)
	default:
		c.stats.DeletesDone.Add(1)
	}
	c.ns.mu.Lock()
	c.ns.released.note(key, ts.ETag)
	err = update(c.db, func(txn *badger.Txn) error { return txn.Delete(tombKey(key)) })
	delete(c.rc.deleting, key)
	c.ns.mu.Unlock()
	c.wb.Release(key)
	if err != nil {
		return retry(fmt.Errorf("cache commit: %w", err))
	}
	return done
}

// willAbsorb reports whether the inode now named key has an upload coming
// that will take over the tombstone, and which inode that is.
func (c *Cache) willAbsorb(key string) (uint64, bool) {
	ino := RootIno
	for _, name := range strings.Split(key, "/") {
		d, ok, err := c.peekDentry(ino, name)
		if err != nil || !ok {
			return 0, false
		}
		ino = d.Ino
	}
	n, err := c.snapshot(ino)
	return ino, err == nil && n.Kind != KindDir && n.needsWork() && !n.Unlinked
}

// tombStateLocked reads a tombstone and, for a directory, the first key under it
// that is still claimed or waiting to be deleted (blocker), and the job
// that holds it.
// namespace.mu is held.
func (c *Cache) tombStateLocked(key string) (ts tombstone, found bool, blocker string, holder writeback.ID, err error) {
	err = c.db.View(func(txn *badger.Txn) error {
		it, err := txn.Get(tombKey(key))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		found = true
		if err := it.Value(func(v []byte) error {
			var err error
			ts, err = unmarshalTomb(v)
			return err
		}); err != nil {
			return err
		}
		if !ts.Dir {
			return nil
		}
		for _, p := range [][]byte{claimKey(key), tombKey(key)} {
			iter := txn.NewIterator(badger.IteratorOptions{Prefix: p, PrefetchValues: false})
			for iter.Seek(p); iter.ValidForPrefix(p) && blocker == ""; iter.Next() {
				k := iter.Item().Key()
				if string(k) == string(tombKey(key)) {
					continue
				}
				blocker = string(k[1:])
				if k[0] == pTomb {
					holder = writeback.Tomb(blocker)
				} else if v, err := iter.Item().ValueCopy(nil); err == nil {
					holder = writeback.Inode(inoFromBytes(v))
				}
			}
			iter.Close()
			if blocker != "" {
				break
			}
		}
		return nil
	})
	return
}
