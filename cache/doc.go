// Package cache is the local state of a keelfs mount and the write-back
// that brings S3 up to date with it. It knows nothing of FUSE (fs/ adapts
// it) nor of the AWS SDK (it talks to an s3backend.ObjectStore).
//
// # Records
//
// A badger store in the cache directory holds one record per inode (file,
// directory, symlink), the directory entries, the journal and the block
// index; see keys.go for the layout. Inode numbers are a hash of the path
// at first sight and then stay with the inode, in the store, across
// remounts. Names and attributes are trusted for the metadata TTL: a
// directory is filled from one ListObjectsV2 walk, the x-amz-meta-*
// headers of each object version are read by HEAD once (many at once) and
// kept with the record, so neither a second listing within the TTL nor a
// remount pays for them again.
//
// # Blocks
//
// File content is cut into blocks of BlockSize. A file's block map (Runs)
// says, for each block, which generation holds it: a generation is one
// version of content of one inode, either read from an object version
// (clean: the block may be evicted and fetched again from that exact
// version, If-Match its ETag) or written here (dirty: never evicted). A new
// ETag from another writer gives the file a new generation, so a block of
// the old object is never served as part of the new one. The bytes live in
// files under blocks/, indexed in badger: package blocks owns the layout,
// the index, integrity checks, eviction and the backing files of FUSE
// passthrough (see its doc for why blocks are not badger values). Clean blocks are evicted least recently used to
// keep the cache within CacheSize and the disk above MinFreeDisk; when
// dirty data alone fills it, writers wait for uploads and then get
// ErrNoSpace.
//
// # Journal
//
// An inode with work pending (content or attributes not in S3, a name that
// moved away from its object, an unlink) has a journal entry j/<ino>, set
// in the same transaction as every stored record that needs work. A
// deleted object waits as a tombstone t/<key>. An object key that an inode
// still needs after a rename or unlink is claimed (k/<key>) so that
// nothing else writes it first and listings do not show it twice. A
// listing that S3 answered before such a key's DELETE landed does not
// show it either (released.go). Open resumes what a previous process left, so a crash or kill -9 loses
// nothing that reached the cache.
//
// # Write-back
//
// Package writeback decides when uploads run: one job per inode or
// tombstone, in one explicit state (pending, uploading, backing-off,
// waiting-for-key, conflicted, failed), in a heap woken by one timer of
// an injected clock. Its Runner is the reconciler (reconcile.go): one
// attempt seals a snapshot under the locks, sends it without them
// (push.go) and applies the answer, and classify turns every error into
// a retry with backoff or a permanent failure, which keeps the data and
// is reported (Status, Drain, fsync) rather than retried. The conflict
// path (conflict.go) always ends. Changes an application makes tell the
// scheduler (transact with txChange); the cache's own bookkeeping does
// not, so a listing never makes an upload run again.
//
// # Durability
//
// Writes go to a one-block buffer per file and then to the block store.
// Flush (close) stores them in the block files and the journal, where a
// crash of the process cannot lose them; every CommitInterval the group
// commit fsyncs what the closes of the interval wrote (and badger's log),
// against a power cut. A power cut before then may keep a record without
// the bytes of its blocks: Close marks a clean shutdown, and without that
// mark the next Open checks every dirty block and makes the records agree
// with what reached the disk (recover.go): cut back to a durable prefix,
// dropped where they held nothing durable, or given back the block they
// replaced. Each upload syncs before it sends, and blocks an upload made
// clean stay cached until the next sync, so that a power cut that brings
// back the record from before an upload finds its blocks and knows the
// object in S3 as its own; an upload waits for that sync PushSyncWait at
// most, and not at all while a late one has not ended (diskwait.go), so
// that a hung cache disk does not keep the data from S3. Fsync waits until the upload that contains
// them has landed; SyncDir (fsync of a directory) until the namespace changes in
// the directory have. Uploads are conditional on the ETag the edit
// started from (If-Match) or on absence (If-None-Match); a 412 from
// another writer keeps both versions, the local one as
// NAME.conflict-HOST-TIME. The unchanged blocks of a partly edited file
// are fetched and kept while the edit is local, so that the local version
// can be completed even after another writer replaced the object.
//
// # Locking
//
// See Cache: namespace.mu before inodeState.mu before namespace.statesMu.
// No lock is held across an S3 request or while waiting for cache space.
// Every goroutine the cache starts goes through tasks, which Close waits
// for.
//
// # Errors
//
// Functions return the sentinel errors of errors.go, or errors wrapping
// s3backend's; fs/errno.go maps both to errnos.
package cache
