package cache

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/keelfs/keelfs/s3backend"
)

// TestEncryptedCacheAtRest: with a key, neither block files nor the
// metadata store hold the plaintext; the data reads back after a reopen;
// a block file tampered with or swapped is an error, never wrong bytes;
// the wrong key cannot open the cache.
func TestEncryptedCacheAtRest(t *testing.T) {
	key := bytes.Repeat([]byte{7}, 32)
	e := newEnv(t, func(o *Options) { o.EncryptionKey = key; o.WriteBackDelay = time.Hour })
	// Keep the blocks dirty: a clean block that fails its check is
	// dropped and fetched again, and the read below would succeed.
	e.store.SetHook(func(op, key string) error {
		if op == "Put" {
			return &s3backend.Error{Op: op, Key: key, Status: 503, Kind: s3backend.ErrUnavailable, Cause: errors.New("down")}
		}
		return nil
	})
	e.logs.allow("upload failed")
	marker := []byte("PLAINTEXT-MARKER-")
	data := bytes.Repeat(marker, 20000) // several blocks
	e.write("secret-name-xyz.txt", 0, data)
	e.reopen()
	if got := e.read("secret-name-xyz.txt"); !bytes.Equal(got, data) {
		t.Fatal("encrypted cache read back wrong bytes")
	}
	var blocks []string
	filepath.WalkDir(e.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, _ := os.ReadFile(p)
		if bytes.Contains(b, marker) {
			t.Errorf("%s holds the plaintext", p)
		}
		if bytes.Contains(b, []byte("secret-name-xyz")) {
			t.Errorf("%s holds the file name in clear", p)
		}
		if filepath.Base(filepath.Dir(filepath.Dir(p))) == "blocks" && filepath.Base(filepath.Dir(p)) != "tmp" {
			blocks = append(blocks, p)
		}
		return nil
	})
	if len(blocks) < 2 {
		t.Fatalf("expected several block files, found %d", len(blocks))
	}
	// Swap two block files: each must fail to decrypt under the other's
	// name rather than return the other block's bytes.
	a, _ := os.ReadFile(blocks[0])
	b, _ := os.ReadFile(blocks[1])
	os.WriteFile(blocks[0], b, 0o600)
	os.WriteFile(blocks[1], a, 0o600)
	e.logs.allow("corrupt")
	e.logs.allow("checksum")
	e.logs.allow("decrypt")
	h := e.openW("secret-name-xyz.txt")
	buf := make([]byte, len(data))
	_, err := h.Read(ctx, buf, 0)
	e.close(h)
	if err == nil {
		t.Fatal("read of swapped encrypted blocks succeeded")
	}
	e.c.Close()
	e.c = nil
	e.logs.allow("Encryption key mismatch")
	e.opt.EncryptionKey = bytes.Repeat([]byte{8}, 32)
	if c, err := Open(ctx, e.opt); err == nil {
		c.Close()
		t.Fatal("opened an encrypted cache with the wrong key")
	}
}
