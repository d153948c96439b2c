package cache

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/keelfs/keelfs/cache/blocks"
	"github.com/keelfs/keelfs/cache/writeback"
)

// recover runs at Open: it rebuilds the block accounting, removes blocks
// nothing refers to, finishes directory renames a crash interrupted, and
// hands the journal to the uploader. Everything a previous run left in the
// journal is due at once.
func (c *Cache) recover(ctx context.Context) error {
	if err := c.recoverBlocks(); err != nil {
		return fmt.Errorf("cache recovery: %w", err)
	}
	var renames []uint64
	err := c.db.View(func(txn *badger.Txn) error {
		p := []byte{pRename}
		it := txn.NewIterator(badger.IteratorOptions{Prefix: p})
		defer it.Close()
		for it.Seek(p); it.ValidForPrefix(p); it.Next() {
			if k := it.Item().Key(); len(k) == 9 {
				renames = append(renames, binary.BigEndian.Uint64(k[1:]))
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("cache recovery: %w", err)
	}
	for _, ino := range renames {
		c.ns.mu.Lock()
		err := c.fixSubtreePaths(ino)
		c.ns.mu.Unlock()
		if err != nil && !errors.Is(err, ErrNotExist) {
			return fmt.Errorf("cache recovery: finish rename: %w", err)
		}
	}
	if err := c.repairJournal(); err != nil {
		return fmt.Errorf("cache recovery: %w", err)
	}
	var inodes, tombs int
	var edited []uint64
	err = c.scanJournal(func(n *Inode) {
		inodes++
		c.wb.AddNow(writeback.Inode(n.Ino))
		if n.Kind == KindFile && n.hasDirtyRuns() && n.ETag != "" {
			edited = append(edited, n.Ino)
		}
	}, func(key string, _ tombstone) {
		tombs++
		c.wb.AddNow(writeback.Tomb(key))
	})
	if err != nil {
		return fmt.Errorf("cache recovery: %w", err)
	}
	// Partly edited files keep the unchanged blocks of the version they
	// came from, as they did before the restart.
	for _, ino := range edited {
		c.startFetchAhead(ino)
	}
	if inodes+tombs > 0 {
		c.log.Info("resuming write-back left by the previous mount", "files", inodes, "deletes", tombs)
	}
	return nil
}

// scanJournal calls fn for every inode with pending work and tomb for
// every pending delete.
func (c *Cache) scanJournal(fn func(*Inode), tomb func(string, tombstone)) error {
	var inos []uint64
	err := c.db.View(func(txn *badger.Txn) error {
		p := []byte{pJournal}
		it := txn.NewIterator(badger.IteratorOptions{Prefix: p})
		defer it.Close()
		for it.Seek(p); it.ValidForPrefix(p); it.Next() {
			if k := it.Item().Key(); len(k) == 9 {
				inos = append(inos, binary.BigEndian.Uint64(k[1:]))
			}
		}
		p = []byte{pTomb}
		it2 := txn.NewIterator(badger.IteratorOptions{Prefix: p})
		defer it2.Close()
		for it2.Seek(p); it2.ValidForPrefix(p); it2.Next() {
			item := it2.Item()
			key := string(item.Key()[1:])
			err := item.Value(func(v []byte) error {
				ts, err := unmarshalTomb(v)
				if err != nil {
					return fmt.Errorf("tombstone %q: %w", key, err)
				}
				tomb(key, ts)
				return nil
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, ino := range inos {
		n, err := c.snapshot(ino)
		if errors.Is(err, ErrNotExist) {
			continue // finished meanwhile
		}
		if err != nil {
			return err
		}
		fn(n)
	}
	return nil
}

// journalRepaired marks a cache whose journal entries were checked
// against its records (see repairJournal).
var journalRepaired = []byte{pSuper, 'j'}

// repairJournal gives every stored record that needs work its journal
// entry, once per cache. Releases before the write-back rebuild set the
// entry of an open file only at close, fsync or truncate, so a crash
// while a file was written left records that showed new data and were
// never uploaded.
func (c *Cache) repairJournal() error {
	done := false
	err := c.db.View(func(txn *badger.Txn) error {
		_, err := txn.Get(journalRepaired)
		if err == nil {
			done = true
			return nil
		}
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}
		return err
	})
	if err != nil || done {
		return err
	}
	var missing []uint64
	err = c.db.View(func(txn *badger.Txn) error {
		p := []byte{pInode}
		it := txn.NewIterator(badger.IteratorOptions{Prefix: p, PrefetchValues: true})
		defer it.Close()
		for it.Seek(p); it.ValidForPrefix(p); it.Next() {
			var n *Inode
			if err := it.Item().Value(func(v []byte) error {
				var err error
				n, err = unmarshalInode(v)
				return err
			}); err != nil {
				return err
			}
			if !n.needsWork() {
				continue
			}
			if _, err := txn.Get(journalKey(n.Ino)); errors.Is(err, badger.ErrKeyNotFound) {
				missing = append(missing, n.Ino)
			} else if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("repair journal: %w", err)
	}
	if len(missing) > 0 {
		c.log.Info("cache: files written before a crash were not in the journal; they will be uploaded", "files", len(missing))
	}
	return update(c.db, func(txn *badger.Txn) error {
		for _, ino := range missing {
			if err := txn.Set(journalKey(ino), nil); err != nil {
				return err
			}
		}
		return txn.Set(journalRepaired, nil)
	})
}

// recoverBlocks classifies every indexed block as dirty (referenced by a
// dirty run), clean (referenced by a clean run) or garbage (deleted), and
// removes block files the index does not know.
func (c *Cache) recoverBlocks() error {
	var cur *Inode
	var curIno uint64
	cuts, err := c.blocks.Recover(func(txn *badger.Txn, id blocks.ID) (keep, dirty bool, err error) {
		if id.Ino != curIno || cur == nil {
			curIno = id.Ino
			cur, err = getInode(txn, id.Ino)
			if err != nil && !errors.Is(err, ErrNotExist) {
				return false, false, err
			}
		}
		run, inMap := runAt(runsOrNil(cur), id.Idx)
		if !inMap || run.Gen != id.Gen {
			return false, false, nil
		}
		return true, run.Dirty, nil
	})
	if err != nil {
		return err
	}
	for _, cut := range cuts {
		if err := c.cutBack(cut); err != nil {
			return err
		}
	}
	return nil
}

// cutBack makes a file's record agree with a block that a power cut left
// shorter than its index said (blocks.Cut): bytes appended within the
// last commit interval did not reach the disk, and the block was cut
// back to what a sync had made durable. The file ends there if the block
// was its last; a block inside the file reads zeros past its new end.
func (c *Cache) cutBack(cut blocks.Cut) error {
	bs := c.opt.BlockSize
	var path string
	var from, to int64
	var ends bool
	err := update(c.db, func(txn *badger.Txn) error {
		rec, err := getInode(txn, cut.ID.Ino)
		if err != nil {
			return err
		}
		path = rec.Path
		start := cut.ID.Idx * bs
		from, to = start+int64(cut.Len), min(rec.Size, start+int64(cut.Was))
		if ends = rec.Size > from && rec.Size <= start+bs; !ends {
			return nil
		}
		old := rec.clone()
		rec.Size = from
		return putInode(txn, old, rec)
	})
	if err != nil {
		return fmt.Errorf("cut %q back to what was durable: %w", path, err)
	}
	switch {
	case ends:
		c.log.Warn("cache: bytes appended just before a power cut did not reach the disk; the file now ends where what was durable ends",
			"path", path, "size", from, "lost_bytes", to-from)
	case to > from:
		c.log.Warn("cache: bytes appended just before a power cut did not reach the disk; they read as zeros",
			"path", path, "from", from, "to", to)
	}
	return nil
}

func runsOrNil(n *Inode) []Run {
	if n == nil {
		return nil
	}
	return n.Runs
}

// maintain runs housekeeping until Close.
func (c *Cache) maintain() {
	t := time.NewTicker(5 * time.Minute)
	defer t.Stop()
	for {
		select {
		case <-c.tasks.ctx.Done():
			return
		case <-t.C:
			for c.db.RunValueLogGC(0.5) == nil {
			}
		}
	}
}
