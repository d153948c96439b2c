package cache

import "sync"

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
// claim or tombstone is noted, before its commit, in the listings under
// way, and a listing adds no name whose key was released since it began.
// A later listing, which S3 answers after the DELETE, does not need it.
//
// Lock notes: mu is a leaf. noteReleased is called inside badger
// transactions, under namespace.mu or not.
type releases struct {
	mu       sync.Mutex
	listings map[uint64]map[string]bool // start -> keys released since; guarded by mu
}

// begin registers a listing that starts at start; the caller calls end
// when its last page is merged.
func (r *releases) begin(start uint64) (end func()) {
	r.mu.Lock()
	if r.listings == nil {
		r.listings = make(map[uint64]map[string]bool)
	}
	r.listings[start] = nil
	r.mu.Unlock()
	return func() {
		r.mu.Lock()
		delete(r.listings, start)
		r.mu.Unlock()
	}
}

// note records that key is no longer hidden by a claim or tombstone. It
// is called before the commit that removes the record, so that a merge
// that finds the record gone also finds the note.
func (r *releases) note(key string) {
	r.mu.Lock()
	for start, keys := range r.listings {
		if keys == nil {
			keys = make(map[string]bool)
			r.listings[start] = keys
		}
		keys[key] = true
	}
	r.mu.Unlock()
}

// since reports whether key was released after the listing that started
// at start began.
func (r *releases) since(start uint64, key string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.listings[start][key]
}
