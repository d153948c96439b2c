package cache

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
)

type logger = *slog.Logger

// ErrCacheInUse: another keelfs process holds the cache directory.
var ErrCacheInUse = errors.New("cache directory is in use by another keelfs mount")

// openDB opens the metadata store. Badger here holds small values only
// (records, entries, the journal, the block index), so it is tuned as a
// cache: small memtables, no compression, no block cache unless the store
// is encrypted, and no fsync per write: durability points (close, fsync)
// call Sync explicitly.
func openDB(dir string, encryptionKey []byte, log logger) (*badger.DB, error) {
	opt := badger.DefaultOptions(dir).
		WithLogger(badgerLogger{log}).
		WithSyncWrites(false).
		WithValueThreshold(1 << 20). // keep everything in the LSM tree
		WithMemTableSize(8 << 20).
		WithNumMemtables(2).
		WithNumLevelZeroTables(2).
		WithNumLevelZeroTablesStall(8).
		WithBaseTableSize(2 << 20).
		WithValueLogFileSize(16 << 20).
		WithNumCompactors(2).
		WithCompression(options.None).
		WithBlockCacheSize(0).
		WithIndexCacheSize(0).
		WithMetricsEnabled(false).
		WithDetectConflicts(true)
	if len(encryptionKey) > 0 {
		opt = opt.WithEncryptionKey(encryptionKey).WithBlockCacheSize(8 << 20).WithIndexCacheSize(4 << 20)
	}
	db, err := badger.Open(opt)
	if err != nil {
		if strings.Contains(err.Error(), "Cannot acquire directory lock") {
			return nil, fmt.Errorf("%w (%s)", ErrCacheInUse, dir)
		}
		return nil, fmt.Errorf("open cache %s: %w", dir, err)
	}
	return db, nil
}

// update runs fn in a read-write transaction, retrying when badger reports
// a conflict with a concurrent transaction. fn must be safe to run again.
func update(db *badger.DB, fn func(*badger.Txn) error) error {
	for attempt := 0; ; attempt++ {
		err := db.Update(fn)
		if errors.Is(err, badger.ErrConflict) && attempt < 100 {
			continue
		}
		return err
	}
}

// badgerLogger sends badger's messages to slog: its INFO chatter at debug
// level, its warnings and errors as such.
type badgerLogger struct{ l *slog.Logger }

func (b badgerLogger) Errorf(f string, a ...any) {
	b.l.Error("badger: " + strings.TrimSpace(fmt.Sprintf(f, a...)))
}
func (b badgerLogger) Warningf(f string, a ...any) {
	b.l.Warn("badger: " + strings.TrimSpace(fmt.Sprintf(f, a...)))
}
func (b badgerLogger) Infof(f string, a ...any) {
	b.l.Debug("badger: " + strings.TrimSpace(fmt.Sprintf(f, a...)))
}

// Debugf drops badger's per-write tracing, which would drown every other
// debug line.
func (b badgerLogger) Debugf(string, ...any) {}

// countPrefix counts the keys that start with the byte prefix.
func countPrefix(db *badger.DB, prefix byte) (int, error) {
	n := 0
	err := db.View(func(txn *badger.Txn) error {
		pre := []byte{prefix}
		it := txn.NewIterator(badger.IteratorOptions{Prefix: pre})
		defer it.Close()
		for it.Seek(pre); it.ValidForPrefix(pre); it.Next() {
			n++
		}
		return nil
	})
	return n, err
}
