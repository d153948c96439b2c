package cache

import (
	"errors"
	"time"

	badger "github.com/dgraph-io/badger/v4"
)

// Access times. An atime set explicitly (utimensat, touch -a) is an
// attribute change like any other: kept, and written to x-amz-meta-atime
// by write-back. Reads move it the way Linux's default relatime does:
// only when it is not newer than the mtime or ctime, or is a day old, so
// that a file read over and over moves it at most once a day. Such a move
// costs no S3 request: it is recorded in the cache only, and reaches S3
// with the next upload of the file's content or attributes, if there is
// one. The kernel never updates atime on a FUSE mount itself, and reads it
// serves from its page cache do not reach keelfs, so atime moves on the
// reads that come to the daemon: the first after an open that dropped the
// page cache, or after a change.

// relatimeAge is how old an atime may grow before a read moves it anyway.
const relatimeAge = 24 * time.Hour

// relatimeDue reports whether a read at now moves n's atime.
func relatimeDue(n *Inode, now int64) bool {
	return n.Atime <= n.Mtime || n.Atime <= n.Ctime || now-n.Atime >= int64(relatimeAge)
}

// noteRead moves the atime of a file that was read, if relatime says so.
// A failure to record it is logged, not returned: the read itself worked.
func (c *Cache) noteRead(st *inodeState) {
	if c.opt.ReadOnly || c.opt.NoAtime {
		return
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	rec := st.rec
	if rec == nil || rec.Unlinked {
		return
	}
	now := c.now()
	if !relatimeDue(rec, now) {
		return
	}
	prev := rec.Atime
	rec.Atime = now
	// The stored record gets the new atime and nothing else: the one in
	// memory may hold changes (a write's block map) that are stored when
	// the write is. Waiting for those would lose the atime when the state
	// is let go before they are stored. Only the atime changes, so the
	// record is its own "before" for the journal and claim indexes; it is
	// neither a change to upload nor one fsync must wait for, so the
	// scheduler is not told.
	err := update(c.db, func(txn *badger.Txn) error {
		stored, err := getInode(txn, rec.Ino)
		if errors.Is(err, ErrNotExist) {
			return nil // not stored yet: it will be, with rec.Atime
		}
		if err != nil {
			return err
		}
		stored.Atime = now
		return c.putInode(txn, stored, stored)
	})
	if err != nil {
		rec.Atime = prev
		c.log.Warn("cache: record access time", "path", rec.Path, "err", err)
	}
}
