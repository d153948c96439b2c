package cache

import (
	"sync"

	badger "github.com/dgraph-io/badger/v4"
)

// A directory's link count is 2 plus its subdirectories (each one's ".."
// links back to it), as on a local file system. keelfs keeps no count: it
// counts the subdirectory entries the cache holds when asked, and keeps
// the answer until a namespace transaction adds or removes a subdirectory
// entry of that directory (nsTx.subdirs). Files coming and going leave it
// alone: the kernel asks for a directory's attributes after every create
// in it, and a recount each time made 8 000 creates in one directory take
// twice as long. A directory with more entries than nlinkCountLimit
// reports 1, the Linux convention for "not counted" that find(1) and
// fts(3) understand, so that a stat never costs a walk of a huge
// directory.

const nlinkCountLimit = 10000

// nlinkCache remembers counted link counts by directory.
type nlinkCache struct {
	mu     sync.Mutex
	m      map[uint64]nlinkEntry // guarded by mu
	seq    uint64                // guarded by mu
	ver    map[uint64]uint64     // directory -> seq of its last subdirectory change; guarded by mu
	counts int                   // walks made, for tests; guarded by mu
}

type nlinkEntry struct {
	gen   uint64 // Inode.Gen: inode numbers are reused
	ver   uint64 // the directory's subdirectory version the count was made at
	nlink uint32
}

// subdirsChanged records that subdirectory entries of dirs were added or
// removed, and forgets the inodes that are gone (called once a namespace
// transaction committed).
func (c *Cache) subdirsChanged(dirs, gone map[uint64]bool) {
	if len(dirs) == 0 && len(gone) == 0 {
		return
	}
	c.ns.nlinks.mu.Lock()
	defer c.ns.nlinks.mu.Unlock()
	if c.ns.nlinks.ver == nil {
		c.ns.nlinks.ver = make(map[uint64]uint64)
	}
	for ino := range dirs {
		c.ns.nlinks.seq++
		c.ns.nlinks.ver[ino] = c.ns.nlinks.seq
	}
	for ino := range gone {
		delete(c.ns.nlinks.ver, ino)
		delete(c.ns.nlinks.m, ino)
	}
}

// dirNlink returns the link count of directory n.
func (c *Cache) dirNlink(n *Inode) uint32 {
	if n.Entries > nlinkCountLimit {
		return 1
	}
	c.ns.nlinks.mu.Lock()
	ver := c.ns.nlinks.ver[n.Ino] // before counting: a change meanwhile makes the count stale
	e, ok := c.ns.nlinks.m[n.Ino]
	c.ns.nlinks.mu.Unlock()
	if ok && e.gen == n.Gen && e.ver == ver {
		return e.nlink
	}
	nlink, err := c.countNlink(n.Ino)
	if err != nil {
		c.log.Warn("cache: count subdirectories", "path", n.Path, "err", err)
		return 1
	}
	c.ns.nlinks.mu.Lock()
	c.ns.nlinks.counts++
	if c.ns.nlinks.m == nil || len(c.ns.nlinks.m) > 100000 {
		c.ns.nlinks.m = make(map[uint64]nlinkEntry)
	}
	c.ns.nlinks.m[n.Ino] = nlinkEntry{gen: n.Gen, ver: ver, nlink: nlink}
	c.ns.nlinks.mu.Unlock()
	return nlink
}

// countNlink counts the subdirectory entries of ino: 2 plus their number,
// or 1 past nlinkCountLimit entries.
func (c *Cache) countNlink(ino uint64) (uint32, error) {
	nlink := uint32(2)
	err := c.db.View(func(txn *badger.Txn) error {
		prefix := dentryPrefix(ino)
		it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: true, PrefetchSize: 256, Prefix: prefix})
		defer it.Close()
		seen := 0
		for it.Seek(prefix); it.ValidForPrefix(prefix); it.Next() {
			if seen++; seen > nlinkCountLimit {
				nlink = 1
				return nil
			}
			if err := it.Item().Value(func(v []byte) error {
				d, err := unmarshalDentry(v)
				if err == nil && d.Kind == KindDir {
					nlink++
				}
				return err
			}); err != nil {
				return err
			}
		}
		return nil
	})
	return nlink, err
}
