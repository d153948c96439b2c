package blocks

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"slices"

	badger "github.com/dgraph-io/badger/v4"
)

// KeyPrefix is the first byte of the block index's keys in the cache's
// badger store: KeyPrefix <ino> <gen> <idx>, big-endian, so that the
// blocks of one inode, and of one generation, sort together.
const KeyPrefix = 'b'

func inoPrefix(ino uint64) []byte {
	k := make([]byte, 9, 25)
	k[0] = KeyPrefix
	binary.BigEndian.PutUint64(k[1:], ino)
	return k
}

func key(id ID) []byte {
	k := binary.BigEndian.AppendUint64(inoPrefix(id.Ino), id.Gen)
	return binary.BigEndian.AppendUint64(k, uint64(id.Idx))
}

// parseKey splits a block index key.
func parseKey(k []byte) (ID, bool) {
	if len(k) != 1+8+8+8 || k[0] != KeyPrefix {
		return ID{}, false
	}
	return ID{binary.BigEndian.Uint64(k[1:]), binary.BigEndian.Uint64(k[9:]), int64(binary.BigEndian.Uint64(k[17:]))}, true
}

// Lookup returns block id's index entry; found is false when the block is
// not in the store.
func (s *Store) Lookup(id ID) (m Meta, found bool, err error) {
	err = s.db.View(func(txn *badger.Txn) error {
		it, err := txn.Get(key(id))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		found = true
		return it.Value(func(v []byte) error {
			m, err = unmarshalMeta(v)
			return err
		})
	})
	return m, found, err
}

// Index records block id in the caller's transaction, which also stores
// the record that refers to it.
func (s *Store) Index(txn *badger.Txn, id ID, m Meta) error {
	return txn.Set(key(id), m.marshal())
}

// Unindex deletes block id's index entry in the caller's transaction, the
// one that also stores the record no longer referring to it. Once that
// transaction has committed, the caller calls Replaced; if it fails,
// nothing changed.
func (s *Store) Unindex(txn *badger.Txn, id ID) error {
	return txn.Delete(key(id))
}

// Replaced forgets a block that Unindex took out of a committed
// transaction. Its file stays until the next sync has made that
// transaction durable (see retired): the cache does not sync at commit,
// and a power cut before then leaves the record that refers to it. A
// file that cannot be removed is logged; the next start-up deletes it, as
// it deletes every file the index does not know.
func (s *Store) Replaced(id ID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.retireLocked(id)
}

// testHookCleanReserved runs in StoreClean after Reserve, before the
// block's store (tests).
var testHookCleanReserved func()

// StoreClean caches a block fetched from S3, if there is room. A failure
// is logged: the block is simply not cached.
func (s *Store) StoreClean(id ID, data []byte) {
	need := s.diskSize(uint32(len(data)))
	ok, err := s.reserveBytes(context.Background(), need, false, 0, true)
	if testHookCleanReserved != nil {
		testHookCleanReserved()
	}
	if err != nil || !ok {
		return
	}
	meta, err := s.Write(id, data)
	if err != nil {
		s.unreserve(need)
		s.log.Warn("cache: store block", "err", err)
		return
	}
	err = s.db.Update(func(txn *badger.Txn) error { return s.Index(txn, id, meta) })
	if err != nil {
		s.removeFile(id)
		s.unreserve(need)
		s.log.Warn("cache: index block", "err", err)
		return
	}
	s.mu.Lock()
	s.reserved -= need // in the same hold as the block's own count
	s.addedLocked(id, meta.Len, false, false)
	s.spaceFreed.Broadcast() // a writer held up by the room may evict the block now
	s.mu.Unlock()
	s.Trust(id, meta)
}

// unreserve gives back room that reserveBytes held for a block that was
// not stored, and wakes writers waiting for room.
func (s *Store) unreserve(need int64) {
	s.mu.Lock()
	s.reserved -= need
	s.spaceFreed.Broadcast()
	s.mu.Unlock()
}

// Delete removes blocks: their index entries, then their files. If the
// index cannot be changed, nothing is removed.
func (s *Store) Delete(ids []ID) error {
	if len(ids) == 0 {
		return nil
	}
	if err := s.deleteIndex(ids); err != nil {
		return fmt.Errorf("cache: delete blocks: %w", err)
	}
	for _, id := range ids {
		s.removeFile(id)
		s.removed(id)
	}
	return nil
}

func (s *Store) deleteIndex(ids []ID) error {
	wb := s.db.NewWriteBatch()
	defer wb.Cancel()
	for _, id := range ids {
		if err := wb.Delete(key(id)); err != nil {
			return err
		}
	}
	return wb.Flush()
}

// DropInode deletes the blocks of ino whose generation is at most upTo
// and not in keep (all of them when keep is nil). It finds them in the
// accounting, not in the index: every indexed block is accounted for
// (Added follows the index commit at once, Recover accounts for what an
// earlier run left); one whose commit is still under way is newer than
// upTo, or is found by the next DropInode, or by Recover.
//
// The caller drops blocks that a committed record no longer refers to,
// but the cache does not sync at commit: a power cut before the next sync
// brings back the record that does. Clean blocks go at once (a read
// fetches them again); the files of dirty and pinned ones, which S3 does
// not have, are retired like replaced blocks, and go after that sync.
func (s *Store) DropInode(ino uint64, keep map[uint64]bool, upTo uint64) error {
	var ids []ID
	s.mu.Lock()
	refs := s.inoBlocks[ino]
	for i := len(refs) - 1; i >= 0; i-- {
		if r := refs[i]; r.gen <= upTo && !keep[r.gen] {
			ids = append(ids, ID{Ino: ino, Gen: r.gen, Idx: r.idx})
		}
	}
	s.mu.Unlock()
	if len(ids) == 0 {
		return nil
	}
	if err := s.deleteIndex(ids); err != nil {
		return fmt.Errorf("cache: delete blocks: %w", err)
	}
	for _, id := range ids {
		s.mu.Lock()
		_, known := s.size[id]
		_, clean := s.lruIndex[id]
		if known && !clean {
			s.retireLocked(id)
			s.mu.Unlock()
			continue
		}
		s.mu.Unlock()
		s.removeFile(id)
		s.removed(id)
	}
	return nil
}

// Cut is a dirty block whose file a power cut left without bytes its
// index entry counts (the entry reached the disk, the bytes did not),
// found by Recover. Its file is cut back to its durable prefix (see
// Append) already; the caller records the cut, with the file's record,
// in one transaction (IndexCut), and Recover finds it again until then.
type Cut struct {
	ID  ID
	Len uint32 // its length now
	Was uint32 // the length its index entry gave
	// Lost: nothing of it was durable, and its place held nothing durable
	// before (Meta.Fresh): it goes, and the place is a hole again.
	Lost bool
	// Restored: it replaced a block whose file still held what it had
	// (Meta.Prev), and those bytes (up to Was) are in its place now.
	Restored bool
	from     ID     // the block Restored took the bytes from
	fromLen  uint32 // its length
	// Damaged: it is not what its entry says, and what was there before
	// may have been durable: nothing is cut. Reads of it fail, and its
	// upload fails for good, so that nothing replaces good data in S3.
	Damaged bool
	meta    Meta // its entry after the cut
}

// IndexCut records cut c (from Recover) in the caller's transaction,
// which also stores the record that now agrees with it.
func (s *Store) IndexCut(txn *badger.Txn, c Cut) error {
	switch {
	case c.Damaged:
		return nil
	case c.Lost:
		return txn.Delete(key(c.ID))
	}
	return txn.Set(key(c.ID), c.meta.marshal())
}

// Recover rebuilds the accounting from the index when the cache opens.
// classify says, for each indexed block, whether the inode's block map
// still refers to it (keep) and whether it is dirty; it runs inside the
// index's read transaction, which it may use. Blocks nothing refers to,
// and block files the index does not know, are deleted; backing files
// from an earlier run are all deleted.
//
// With check (the last run did not close cleanly: a crash, or a power
// cut), every dirty block's file is checked against its entry; the
// caller gets those that do not match (Cut), and must record them. One
// that holds its durable prefix is cut back to it; one that holds nothing
// durable in a place that held nothing durable is lost; any other is
// damaged. A file that cannot be read for another reason (EIO) is left
// for reads to report. Without check, the last run closed cleanly and
// every block is durable.
func (s *Store) Recover(classify func(txn *badger.Txn, id ID) (keep, dirty bool, err error), check bool) ([]Cut, error) {
	// After a kill -9 the state read here may be in the page cache only:
	// make it durable before deleting what it no longer refers to, so that
	// a power cut after cannot bring back a record without its blocks.
	if err := s.db.Sync(); err != nil {
		return nil, fmt.Errorf("sync the index before recovery: %w", err)
	}
	known := make(map[ID]bool)
	var garbage []ID
	var cuts []Cut
	err := s.db.View(func(txn *badger.Txn) error {
		p := []byte{KeyPrefix}
		it := txn.NewIterator(badger.IteratorOptions{Prefix: p, PrefetchValues: true})
		defer it.Close()
		for it.Seek(p); it.ValidForPrefix(p); it.Next() {
			item := it.Item()
			id, ok := parseKey(item.Key())
			if !ok {
				continue
			}
			keep, dirty, err := classify(txn, id)
			if err != nil {
				return err
			}
			if !keep {
				garbage = append(garbage, id)
				continue
			}
			var meta Meta
			if err := item.Value(func(v []byte) error {
				var err error
				meta, err = unmarshalMeta(v)
				return err
			}); err != nil {
				garbage = append(garbage, id)
				continue
			}
			n := meta.Len
			if dirty && check {
				if c, ok := s.checkDirty(id, meta); !ok {
					cuts = append(cuts, c)
					if c.Lost {
						continue // its file goes with the unknown ones
					}
					n = c.Len
				}
			}
			known[id] = true
			s.added(id, n, dirty, !check)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	var sources []Cut
	var unindex []ID
	for _, c := range cuts {
		if c.Restored && !known[c.from] {
			// The block a restore took its bytes from stays until the
			// cut is recorded and synced: a crash before then finds the
			// old entry again, and restores again from it. It leaves
			// the index now if it is still there (a clean block nothing
			// refers to), and its file after that sync. (A block a
			// record still refers to is kept as such.)
			known[c.from] = true
			if i := slices.Index(garbage, c.from); i >= 0 {
				garbage = slices.Delete(garbage, i, i+1)
				unindex = append(unindex, c.from)
			}
			sources = append(sources, c)
		}
		if c.Lost || c.Damaged || c.Restored || c.Len == c.Was {
			continue
		}
		if err := os.Truncate(s.path(c.ID), int64(c.Len)); err != nil {
			return nil, fmt.Errorf("cut block %v back to what was durable: %w", c.ID, err)
		}
	}
	if check {
		// What was checked is what the next power cut must find: make it
		// durable now, so that nothing carries a Fresh mark or an old
		// durable prefix into blocks written over it in this run.
		if err := s.syncer.do(func() error { return s.syncEpoch(false) }); err != nil {
			return nil, fmt.Errorf("sync the checked blocks: %w", err)
		}
	}
	if err := s.Delete(garbage); err != nil {
		return nil, err
	}
	if err := s.deleteIndex(unindex); err != nil {
		return nil, err
	}
	if err := s.scanFiles(func(id ID) bool { return known[id] }); err != nil {
		return nil, err
	}
	s.mu.Lock()
	for _, c := range sources {
		s.retired[c.from] = s.diskSize(c.fromLen)
		s.retiredBytes += s.retired[c.from]
	}
	s.mu.Unlock()
	return cuts, nil
}

// checkDirty checks block id's file against meta after an unclean
// shutdown; ok is true when it matches, or cannot be read for a reason
// other than being missing. Otherwise c says what is left (see Cut).
func (s *Store) checkDirty(id ID, meta Meta) (c Cut, ok bool) {
	c = Cut{ID: id, Len: meta.Len, Was: meta.Len, meta: meta}
	b, err := os.ReadFile(s.path(id))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		b = nil
	case err != nil:
		s.log.Warn("cache: check block after an unclean shutdown", "block", id.String(), "err", err)
		return c, true
	}
	if s.aead != nil {
		ns := s.aead.NonceSize()
		if end := int(meta.Len) + s.overhead; len(b) >= end {
			if _, err := s.aead.Open(nil, b[:ns], b[ns:end], id.additionalData()); err == nil {
				return c, true
			}
		}
	} else if len(b) >= int(meta.Len) && crc32.Checksum(b[:meta.Len], crcTable) == meta.CRC {
		return c, true
	}
	switch {
	case meta.Durable && s.aead == nil && len(b) >= int(meta.DurableLen) &&
		crc32.Checksum(b[:meta.DurableLen], crcTable) == meta.DurableCRC:
		c.Len, c.meta = meta.DurableLen, Meta{Len: meta.DurableLen, CRC: meta.DurableCRC}
	case meta.Prev && meta.Epoch > s.durableEpoch:
		// No sync that covers this block began to make itself durable
		// (Meta.Epoch): its bytes may never have reached the disk, and
		// what it replaced is what was durable in its place. (Once one
		// has, a mismatch is the disk's damage, reported below, never
		// rolled back.)
		if m, ok := s.restorePrev(id, meta); ok {
			c.Len, c.meta, c.Restored, c.from, c.fromLen = m.Len, m, true, meta.prevID(id), meta.PrevLen
		} else {
			c.Damaged = true
		}
	case meta.Fresh:
		c.Len, c.Lost = 0, true
	default:
		c.Damaged = true
	}
	return c, false
}

// restorePrev puts the bytes of the block that block id replaced (see
// Meta.Prev) in its place, if that block's file still holds them, up to
// id's own length (the file may have been cut since). It returns id's
// entry for those bytes.
func (s *Store) restorePrev(id ID, meta Meta) (Meta, bool) {
	prev := meta.prevID(id)
	buf := make([]byte, meta.PrevLen)
	if err := s.Read(prev, Meta{Len: meta.PrevLen, CRC: meta.PrevCRC}, buf); err != nil {
		s.log.Warn("cache: the block a lost block replaced is not on the cache disk either",
			"block", id.String(), "replaced", prev.String(), "err", err)
		return Meta{}, false
	}
	m, err := s.writeOnce(id, buf[:min(meta.PrevLen, meta.Len)])
	if err != nil {
		s.log.Warn("cache: put back the block a lost block replaced", "block", id.String(), "err", err)
		return Meta{}, false
	}
	return m, true
}
