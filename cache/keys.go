package cache

import (
	"encoding/binary"

	"github.com/keelfs/keelfs/cache/blocks"
)

// Badger key layout. One byte of prefix, then big-endian numbers so that
// keys of one inode or directory sort together.
//
//	i <ino>                  inode record (Inode.marshal)
//	d <parent> <name>        directory entry -> dentry
//	j <ino>                  journal: the inode has pending work
//	k <key>                  claim: an object key owned by an inode whose
//	                         name no longer matches it (moved, unlinked but
//	                         open, or an upload in flight) -> ino
//	t <key>                  tombstone: the object must be deleted -> ETag
//	b <ino> <gen> <idx>      block index -> blocks.Meta (the bytes are a file)
//	r <ino>                  a directory rename whose subtree paths are
//	                         being rewritten (redone after a crash)
//	s                        superblock (format and settings)
//	u <ino> <upload id>      a multipart upload of a file still being
//	                         written -> object key (aborted after a crash)
//	a <key> 0 <upload id>    a multipart upload nothing holds any more
//	                         (an inode let go of it, or a failed copy
//	                         left it), to abort (see abort.go)
const (
	pInode   = 'i'
	pDentry  = 'd'
	pJournal = 'j'
	pClaim   = 'k'
	pTomb    = 't'
	pBlock   = blocks.KeyPrefix // the block index, see package blocks
	pSuper   = 's'
	pRename  = 'r'
	pStream  = 'u'
	pAbort   = 'a'
)

func inoKey(p byte, ino uint64) []byte {
	k := make([]byte, 9)
	k[0] = p
	binary.BigEndian.PutUint64(k[1:], ino)
	return k
}

func inodeKey(ino uint64) []byte   { return inoKey(pInode, ino) }
func journalKey(ino uint64) []byte { return inoKey(pJournal, ino) }
func renameKey(ino uint64) []byte  { return inoKey(pRename, ino) }

func dentryPrefix(parent uint64) []byte { return inoKey(pDentry, parent) }

func dentryKey(parent uint64, name string) []byte {
	return append(dentryPrefix(parent), name...)
}

func claimKey(key string) []byte { return append([]byte{pClaim}, key...) }
func tombKey(key string) []byte  { return append([]byte{pTomb}, key...) }

// dentry is the value of a directory entry.
type dentry struct {
	Ino   uint64
	Epoch uint64 // FillEpoch of the parent's listing that last saw it; 0 if local
	Kind  Kind
}

func (d dentry) marshal() []byte {
	b := make([]byte, 0, 20)
	b = binary.AppendUvarint(b, d.Ino)
	b = binary.AppendUvarint(b, d.Epoch)
	return append(b, byte(d.Kind))
}

func unmarshalDentry(b []byte) (dentry, error) {
	dec := decoder{b: b}
	d := dentry{Ino: dec.u(), Epoch: dec.u()}
	if dec.err != nil || len(dec.b) != 1 {
		return d, errCorruptRecord
	}
	d.Kind = Kind(dec.b[0])
	return d, nil
}
