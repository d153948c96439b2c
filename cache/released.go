package cache

import (
	"strings"
	"sync"
)

// releases tells a listing which keys this mount stopped hiding while S3
// answered it.
//
// A key this mount deleted, or moved away from, is hidden from listings
// by its tombstone or claim until the DELETE lands; then the record goes.
// A listing page S3 answered before the DELETE but merged after it would
// find neither the name (unlinked or renamed) nor the record, and bring
// the object back as one of S3's: a name the unlink said was gone, whose
// read fails once the GET finds nothing. So each listing registers its
// start (a nextSeq, unique) before its first request, every release of a
// claim or tombstone is noted, with the version it hid, before its
// commit, in the listings under way, and a listing adds no object of that
// key and version that was released since it began. Another version (a
// file another client wrote there meanwhile) shows as usual. A later
// listing, which S3 answers after the DELETE, does not need the note.
//
// Lock notes: mu is a leaf. note is called inside badger transactions,
// under namespace.mu or not.
type releases struct {
	mu sync.Mutex
	// start -> the listing under way; guarded by mu.
	listings map[uint64]*listing
}

// listing is what one listing under way needs noted.
type listing struct {
	prefix string              // keys it may merge all start with it
	keys   map[string][]string // key -> ETags of the versions released since ("": any version, when the record did not say which)
}

// begin registers a listing that starts at start and merges only keys
// under prefix; the caller calls end when its last page is merged.
func (r *releases) begin(start uint64, prefix string) (end func()) {
	r.mu.Lock()
	if r.listings == nil {
		r.listings = make(map[uint64]*listing)
	}
	r.listings[start] = &listing{prefix: prefix}
	r.mu.Unlock()
	return func() {
		r.mu.Lock()
		delete(r.listings, start)
		r.mu.Unlock()
	}
}

// note records that the version etag of key ("": whichever) is no
// longer hidden by a claim or tombstone. It is called before the commit
// that removes the record, so that a merge that finds the record gone
// also finds the note.
func (r *releases) note(key, etag string) {
	r.mu.Lock()
	for _, l := range r.listings {
		if !strings.HasPrefix(key, l.prefix) {
			continue
		}
		if l.keys == nil {
			l.keys = make(map[string][]string)
		}
		l.keys[key] = append(l.keys[key], etag)
	}
	r.mu.Unlock()
}

// since reports whether the version etag of key was released after the
// listing that started at start began. A directory's prefix has no
// version: any release of its key counts.
func (r *releases) since(start uint64, key, etag string, prefix bool) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	l := r.listings[start]
	if l == nil {
		return false
	}
	for _, v := range l.keys[key] {
		if prefix || v == "" || v == etag {
			return true
		}
	}
	return false
}
