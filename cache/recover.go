package cache

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
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
	clean, err := c.closedCleanly()
	if err != nil {
		return err
	}
	// Generations must stay unique and growing across restarts (newGen):
	// the wall clock they start from may have gone back since the last
	// run (an NTP step, a restored VM, a cache disk moved to another
	// host, a restart within the same tick of a coarse clock), and a
	// generation handed out twice makes a new block take an old one's
	// name.
	var maxGen uint64
	cuts, err := c.blocks.Recover(func(txn *badger.Txn, id blocks.ID) (keep, dirty bool, err error) {
		maxGen = max(maxGen, id.Gen)
		if id.Ino != curIno || cur == nil {
			curIno = id.Ino
			cur, err = getInode(txn, id.Ino)
			if err != nil && !errors.Is(err, ErrNotExist) {
				return false, false, err
			}
			if cur != nil {
				maxGen = max(maxGen, cur.OpenGen)
			}
		}
		run, inMap := runAt(runsOrNil(cur), id.Idx)
		if !inMap || run.Gen != id.Gen {
			return false, false, nil
		}
		return true, run.Dirty, nil
	}, !clean)
	if err != nil {
		return err
	}
	c.raiseSeq(maxGen) // a cache from before the sequence mark
	return c.applyCuts(cuts)
}

// cleanClose marks a cache that its last run closed cleanly: everything
// synced, nothing to check at the next start (see blocks.Store.Recover).
var cleanClose = []byte{pSuper, 'c'}

// closedCleanly reports whether the last run closed cleanly, and removes
// the mark (Recover makes that durable before the cache writes anything).
func (c *Cache) closedCleanly() (bool, error) {
	clean := false
	err := update(c.db, func(txn *badger.Txn) error {
		_, err := txn.Get(cleanClose)
		switch {
		case errors.Is(err, badger.ErrKeyNotFound):
			return nil
		case err != nil:
			return err
		}
		clean = true
		return txn.Delete(cleanClose)
	})
	return clean, err
}

// markClosedCleanly runs at Close, after the last sync succeeded.
func (c *Cache) markClosedCleanly() error {
	if err := update(c.db, func(txn *badger.Txn) error { return txn.Set(cleanClose, nil) }); err != nil {
		return err
	}
	return c.db.Sync()
}

// applyCuts makes files' records agree with blocks that a power cut left
// without bytes written within the last commit interval (blocks.Cut),
// each file in one transaction with the blocks' new index entries. A
// block cut back to its durable prefix ends the file there if it was the
// last one, and reads zeros past its new end if not; a lost block (one
// that filled a hole or grew the file) goes, and its place is a hole
// again or the file ends before it; a block rewritten whole over one
// whose file is still there holds that one's bytes again (Cut.Restored),
// up to where the file now ends. Each is logged. A damaged block (what
// was in its place before may have been durable) changes nothing: the
// file is named at ERROR, reads of the block fail and its upload fails
// for good, so nothing replaces good data in S3.
func (c *Cache) applyCuts(cuts []blocks.Cut) error {
	byIno := make(map[uint64][]blocks.Cut)
	for _, cut := range cuts {
		byIno[cut.ID.Ino] = append(byIno[cut.ID.Ino], cut)
	}
	bs := c.opt.BlockSize
	for ino, cs := range byIno {
		// From the end: a lost last block makes the one before it last.
		sort.Slice(cs, func(i, j int) bool { return cs[i].ID.Idx > cs[j].ID.Idx })
		var path string
		var before, after int64
		var zeroed [][2]int64
		var damaged, restored []int64
		if testHookApplyCuts != nil {
			if err := testHookApplyCuts(); err != nil {
				return err
			}
		}
		err := update(c.db, func(txn *badger.Txn) error {
			rec, err := getInode(txn, ino)
			if err != nil {
				return err
			}
			old := rec.clone()
			path, before, zeroed, damaged, restored = rec.Path, rec.Size, nil, nil, nil
			for _, cut := range cs {
				if err := c.blocks.IndexCut(txn, cut); err != nil {
					return err
				}
				start := cut.ID.Idx * bs
				keep := start + int64(cut.Len)
				last := rec.Size > start && rec.Size <= start+bs
				if cut.Restored {
					restored = append(restored, start)
				}
				switch {
				case cut.Damaged:
					damaged = append(damaged, start)
				case last:
					rec.Size = min(rec.Size, keep)
					rec.Runs = truncateRuns(rec.Runs, (rec.Size+bs-1)/bs)
				case rec.Size > start && cut.Lost:
					rec.Runs = setBlock(rec.Runs, cut.ID.Idx, 0, false) // a hole
					zeroed = append(zeroed, [2]int64{start, start + bs})
				case rec.Size > keep:
					zeroed = append(zeroed, [2]int64{keep, min(rec.Size, start+int64(cut.Was))})
				}
			}
			after = rec.Size
			return c.putInode(txn, old, rec)
		})
		if err != nil {
			return fmt.Errorf("cache recovery: make file %d agree with what was durable: %w", ino, err)
		}
		if after < before {
			c.log.Warn("cache: data written just before a power cut did not reach the disk; the file now ends where what was durable ends",
				"path", path, "size", after, "lost_bytes", before-after)
		}
		for _, z := range zeroed {
			c.log.Warn("cache: data written just before a power cut did not reach the disk; those bytes read as zeros",
				"path", path, "from", z[0], "to", z[1])
		}
		for _, off := range restored {
			c.log.Warn("cache: a block rewritten just before a power cut did not reach the disk; it holds what it held before the rewrite",
				"path", path, "block_offset", off)
		}
		for _, off := range damaged {
			c.log.Error("cache: a block of a file not yet uploaded is damaged on the cache disk (a power cut, or the disk); the file stays in the cache, not uploaded, and reads of that block fail",
				"path", path, "block_offset", off)
		}
	}
	return nil
}

// testHookApplyCuts, if set, runs before each file's cuts are recorded;
// an error stands for a crash there.
var testHookApplyCuts func() error

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
