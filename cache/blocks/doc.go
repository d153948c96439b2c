// Package blocks is the cache's block store: where the bytes of cached
// and written file content live on the local disk, how they are checked,
// and which of them go when the cache is full.
//
// # Layout
//
// A file's content is cut into blocks of the cache's block size. Block
// (ino, gen, idx) is the idx-th block of generation gen of inode ino; a
// generation is one object version, or one run of local writes (the cache
// package decides which generation a file's block map points at). Each
// block is one file, blocks/xx/<ino>-<gen>-<idx>, written under a
// temporary name and renamed into place, so a crash leaves the old or the
// new content, never a torn block. Why files and not badger values: see
// store.go.
//
// The index of blocks lives in badger, under the key prefix KeyPrefix:
// one key per block, whose value (Meta) holds its length and CRC-32C. The
// cache writes an index entry in the same transaction as the inode record
// that refers to the block (Index), so the record never points at a block
// the index does not know.
//
// # Integrity
//
// A block is checked against its CRC (or, with a cache key, its AEAD tag)
// when it is read whole. A block read whole once since the store opened,
// or written by this process, is "verified": later small reads take just
// the bytes they need (ReadRange), without checking the whole block again.
//
// # Backing files
//
// FUSE passthrough hands the kernel one file for a whole open file: see
// backing.go for the assembled backing files and their rules.
//
// # Eviction
//
// The store accounts for every block's size on disk. Clean blocks (a
// copy of what is in S3) are evicted least recently used when room is
// needed for a new one (Reserve); dirty blocks (not yet uploaded) never
// are: a writer waits for uploads to make room, and then gets ErrNoSpace.
// Pinned blocks (Pin) are kept like dirty ones, and so are blocks made
// clean (MarkClean) since the last sync: until a sync makes the commit
// that called them clean durable, a power cut brings back the record for
// which they are dirty. Unused backing files go before blocks.
//
// # Durability
//
// Written blocks reach the disk when Sync runs (an fsync of the cache's
// files, shared by concurrent callers), when Commit runs (the group commit
// the cache runs every few seconds), or in the background once 64 MiB of
// them wait. A failure of a background sync is reported by the next Sync.
// An append in place (Append) writes after the committed bytes of a block
// file, so the disk may keep its new index entry without the appended
// bytes after a power cut; the entry also names the prefix a sync had made
// durable (Meta.Durable), and Recover cuts the block back to it. A block
// written whole over one that held durable content names that one
// (Meta.Prev), whose file stays until a sync, and the number of the sync
// that will make it durable (Meta.Epoch; each sync records its number in
// the log it makes durable). If a power cut loses the new block's bytes
// before that sync, Recover puts the old ones back in its place; after
// it, a mismatch is damage, reported and never rolled back.
//
// Blocks made clean by an upload, or held (Hold, HoldInode: the clean
// blocks of a file whose upload lands, or one a new block names), stay
// out of eviction until a sync that began after that: until then, a power
// cut brings back a record that reads them from a version S3 may no
// longer have.
//
// # Locks
//
// Store.mu guards the accounting (backing files' included), the verified
// set and the descriptor cache. It is a leaf: nothing else is locked, and
// no file is written or synced, while it is held. Backing.mu orders the
// changes made to one backing file; Store.mu may be taken under it.
package blocks
