package cache

import "context"

// SyncDir makes the namespace changes under directory dirIno durable
// before it returns: what fsync of a directory and the dirsync mount
// option wait for.
//
// For now it makes the cache's own files durable, which namespace changes
// (journaled in badger as they happen) already are; waiting until S3 has
// them is the write-back core's to provide and replaces this body.
func (c *Cache) SyncDir(ctx context.Context, dirIno uint64) error {
	return c.blocks.sync()
}
