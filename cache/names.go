package cache

import (
	"strings"
	"unicode/utf8"
)

// MaxNameLen is the longest name a directory entry may have (NAME_MAX).
const MaxNameLen = 255

// checkName validates a name that an application asks to create. S3 keys
// are UTF-8: a name that is not could not be stored under its own bytes
// (servers reject it or mangle it, and nameFromListing leaves it out), so
// it is refused here rather than lost after the upload.
func checkName(name string) error {
	if len(name) > MaxNameLen {
		return ErrNameTooLong
	}
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") || !utf8.ValidString(name) {
		return ErrInvalid
	}
	return nil
}

// nameFromListing turns a listed key (object or common prefix) under the
// directory prefix dirKey into an entry name. ok is false for keys that
// cannot be a file name: an empty segment (a//b), ".", "..", a name longer
// than NAME_MAX, or bytes that are not UTF-8 (S3 keys must be UTF-8, but
// some servers let other bytes through).
func nameFromListing(dirKey, key string, isPrefix bool) (name string, ok bool) {
	if !strings.HasPrefix(key, dirKey) {
		return "", false
	}
	name = key[len(dirKey):]
	if isPrefix {
		if !strings.HasSuffix(name, "/") {
			return "", false
		}
		name = name[:len(name)-1]
	}
	if name == "" || name == "." || name == ".." || len(name) > MaxNameLen ||
		strings.ContainsAny(name, "/\x00") || !utf8.ValidString(name) {
		return "", false
	}
	return name, true
}

// childPath joins a directory path and a name into a key path.
func childPath(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

// dirPrefix is the listing prefix of a directory path.
func dirPrefix(path string) string {
	if path == "" {
		return ""
	}
	return path + "/"
}
