package cache

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	badger "github.com/dgraph-io/badger/v4"
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
		c.nsMu.Lock()
		err := c.fixSubtreePaths(ino)
		c.nsMu.Unlock()
		if err != nil && !errors.Is(err, ErrNotExist) {
			return fmt.Errorf("cache recovery: finish rename: %w", err)
		}
	}
	var inodes, tombs int
	c.scanJournal(func(n *Inode) {
		inodes++
		c.up.now(n.Ino)
	}, func(key string, _ tombstone) {
		tombs++
		c.up.notifyTomb(key)
	})
	if inodes+tombs > 0 {
		c.log.Info("resuming write-back left by the previous mount", "files", inodes, "deletes", tombs)
	}
	return nil
}

// scanJournal calls fn for every inode with pending work and tomb for
// every pending delete.
func (c *Cache) scanJournal(fn func(*Inode), tomb func(string, tombstone)) {
	var inos []uint64
	c.db.View(func(txn *badger.Txn) error {
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
			item.Value(func(v []byte) error {
				ts, err := unmarshalTomb(v)
				if err == nil {
					tomb(key, ts)
				}
				return nil
			})
		}
		return nil
	})
	for _, ino := range inos {
		if n, err := c.snapshot(ino); err == nil {
			fn(n)
		}
	}
}

// recoverBlocks classifies every indexed block as dirty (referenced by a
// dirty run), clean (referenced by a clean run) or garbage (deleted), and
// removes block files the index does not know.
func (c *Cache) recoverBlocks() error {
	known := make(map[blockID]bool)
	var garbage []blockID
	var cur *Inode
	var curIno uint64
	err := c.db.View(func(txn *badger.Txn) error {
		p := []byte{pBlock}
		it := txn.NewIterator(badger.IteratorOptions{Prefix: p, PrefetchValues: true})
		defer it.Close()
		for it.Seek(p); it.ValidForPrefix(p); it.Next() {
			item := it.Item()
			ino, gen, idx, ok := parseBlockKey(item.Key())
			if !ok {
				continue
			}
			id := blockID{ino, gen, idx}
			if ino != curIno || cur == nil {
				curIno = ino
				var err error
				cur, err = getInode(txn, ino)
				if err != nil && !errors.Is(err, ErrNotExist) {
					return err
				}
			}
			run, inMap := runAt(runsOrNil(cur), idx)
			if !inMap || run.Gen != gen {
				garbage = append(garbage, id)
				continue
			}
			var meta blockMeta
			if err := item.Value(func(v []byte) error {
				var err error
				meta, err = unmarshalBlockMeta(v)
				return err
			}); err != nil {
				garbage = append(garbage, id)
				continue
			}
			known[id] = true
			c.blocks.added(id, meta.Len, run.Dirty)
		}
		return nil
	})
	if err != nil {
		return err
	}
	c.deleteBlocks(garbage)
	return c.blocks.scanFiles(func(id blockID) bool { return known[id] })
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
		case <-c.closed:
			return
		case <-t.C:
			for c.db.RunValueLogGC(0.5) == nil {
			}
		}
	}
}
