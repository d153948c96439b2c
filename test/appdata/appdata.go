// Package appdata makes the file contents that the test app writes and
// the tests expect: deterministic, different for every name, so that a
// file cut short, mixed up or left stale does not compare equal.
package appdata

import "crypto/sha256"

// Content returns size bytes for the file name.
func Content(name string, size int) []byte {
	out := make([]byte, 0, size+sha256.Size)
	sum := sha256.Sum256([]byte(name))
	for len(out) < size {
		out = append(out, sum[:]...)
		sum = sha256.Sum256(sum[:])
	}
	return out[:size]
}
