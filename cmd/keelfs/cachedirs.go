package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// A cache directory belongs to one endpoint, bucket and prefix (see
// resolveCacheDir), and what a mount could not upload waits there for the
// next mount of the same three. A mount of the bucket through another
// spelling of its endpoint (localhost for 127.0.0.1, a new address of the
// same server, the default AWS endpoint named explicitly) gets a directory
// of its own and never uploads it. So each directory says what it is for
// (sourceFile) and whether its last mount stopped with everything in S3
// (settledFile), and a mount warns of the other directories of its bucket
// and prefix that are not settled.
const (
	sourceFile  = "source.json"
	settledFile = "settled"
)

// cacheSource is what sourceFile holds.
type cacheSource struct {
	Endpoint string `json:"endpoint"` // "" for the SDK's default (AWS)
	Bucket   string `json:"bucket"`
	Prefix   string `json:"prefix"`
}

// claimCacheDir notes that a mount of src now uses dir: it is no longer
// settled. The caller holds the cache (its lock), so no other mount
// writes these files meanwhile.
func claimCacheDir(dir string, src cacheSource) error {
	if err := os.Remove(filepath.Join(dir, settledFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	b, err := json.Marshal(src)
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(dir, sourceFile), append(b, '\n'))
}

// settleCacheDir notes that the mount using dir stopped with everything in
// S3.
func settleCacheDir(dir string) error {
	return writeFileAtomic(filepath.Join(dir, settledFile), nil)
}

// writeFileAtomic writes body to path through a temporary file renamed
// over it, so that a reader finds the old content or the new, never a part.
func writeFileAtomic(path string, body []byte) error {
	tmp := path + ".tmp"
	err := os.WriteFile(tmp, body, 0o600)
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		return errors.Join(err, removeIfPresent(tmp))
	}
	return nil
}

// unsettledDir is another cache directory of the same bucket and prefix
// whose last mount did not stop with everything in S3 (or still runs).
type unsettledDir struct {
	Dir      string
	Endpoint string // "" if unknown (a directory of an older keelfs) or the default
	Known    bool   // its sourceFile was read
}

var cacheDirSuffix = regexp.MustCompile(`^-[0-9a-f]{12}$`)

// unsettledSiblings lists the directories beside dir that belong to src's
// bucket and prefix through another endpoint and are not settled. A
// directory without sourceFile (made by an older keelfs, or by a mount
// that failed before it claimed it) whose name fits is listed too.
func unsettledSiblings(dir string, src cacheSource) ([]unsettledDir, error) {
	base, own := filepath.Split(filepath.Clean(dir))
	stem := strings.TrimSuffix(own, own[max(0, len(own)-13):])
	ents, err := os.ReadDir(base)
	if err != nil {
		return nil, err
	}
	var out []unsettledDir
	for _, e := range ents {
		name := e.Name()
		if !e.IsDir() || name == own || !strings.HasPrefix(name, stem) || !cacheDirSuffix.MatchString(name[len(stem):]) {
			continue
		}
		p := filepath.Join(base, name)
		if _, err := os.Stat(filepath.Join(p, "meta")); err != nil {
			continue // never held a cache
		}
		if _, err := os.Stat(filepath.Join(p, settledFile)); err == nil {
			continue
		}
		u := unsettledDir{Dir: p}
		b, err := os.ReadFile(filepath.Join(p, sourceFile))
		switch {
		case err == nil:
			var s cacheSource
			if err := json.Unmarshal(b, &s); err != nil {
				return nil, fmt.Errorf("%s: %v", filepath.Join(p, sourceFile), err)
			}
			if s.Bucket != src.Bucket || s.Prefix != src.Prefix {
				continue // another bucket or prefix whose name reads the same
			}
			u.Endpoint, u.Known = s.Endpoint, true
		case !errors.Is(err, fs.ErrNotExist):
			return nil, err
		}
		out = append(out, u)
	}
	return out, nil
}

// warnUnsettledSiblings logs one WARN for each directory unsettledSiblings
// finds, naming it and its endpoint. Failing to look is a WARN too: the
// mount goes on.
func warnUnsettledSiblings(log *slog.Logger, dir string, src cacheSource) {
	list, err := unsettledSiblings(dir, src)
	if err != nil {
		log.Warn("could not look for caches of this bucket through another endpoint", "err", err)
		return
	}
	for _, u := range list {
		endpoint := u.Endpoint
		switch {
		case !u.Known:
			endpoint = "unknown (a cache of an older keelfs)"
		case endpoint == "":
			endpoint = "the default AWS endpoint"
		}
		log.Warn("a cache of this bucket and prefix through another endpoint may hold changes not yet in S3 "+
			"(its last mount did not stop with everything uploaded, or still runs); only a mount through that endpoint "+
			"with the same --cache-dir uploads them", "cache", u.Dir, "endpoint", endpoint)
	}
}
