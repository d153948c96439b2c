package main

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestUnsettledSiblings(t *testing.T) {
	base := t.TempDir()
	src := cacheSource{Endpoint: "http://127.0.0.1:9000", Bucket: "b", Prefix: "a/x"}
	dir := func(name string, s *cacheSource, settled bool) string {
		p := filepath.Join(base, name)
		if err := os.MkdirAll(filepath.Join(p, "meta"), 0o700); err != nil {
			t.Fatal(err)
		}
		if s != nil {
			if err := claimCacheDir(p, *s); err != nil {
				t.Fatal(err)
			}
		}
		if settled {
			if err := settleCacheDir(p); err != nil {
				t.Fatal(err)
			}
		}
		return p
	}
	own := dir("b-a_x-000000000000", &src, false)
	other := src
	other.Endpoint = "http://localhost:9000"
	crashed := dir("b-a_x-111111111111", &other, false)
	dir("b-a_x-222222222222", &other, true) // stopped with everything in S3
	legacy := dir("b-a_x-333333333333", nil, false)
	sameName := src
	sameName.Prefix = "a_x" // sanitised to the same name
	dir("b-a_x-444444444444", &sameName, false)
	dir("b-a_x-extra-555555555555", &other, false) // another prefix's name
	if err := os.MkdirAll(filepath.Join(base, "b-a_x-666666666666"), 0o700); err != nil {
		t.Fatal(err) // never held a cache
	}

	got, err := unsettledSiblings(own, src)
	if err != nil {
		t.Fatal(err)
	}
	want := []unsettledDir{{Dir: crashed, Endpoint: other.Endpoint, Known: true}, {Dir: legacy}}
	if !slices.Equal(got, want) {
		t.Fatalf("unsettled siblings %+v, want %+v", got, want)
	}

	// A mount that claims a settled directory unsettles it.
	if err := settleCacheDir(crashed); err != nil {
		t.Fatal(err)
	}
	if err := claimCacheDir(crashed, other); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(crashed, settledFile)); !os.IsNotExist(err) {
		t.Fatalf("claimed directory still settled: %v", err)
	}

	if err := os.WriteFile(filepath.Join(crashed, sourceFile), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := unsettledSiblings(own, src); err == nil {
		t.Fatal("a damaged source file was not reported")
	}
}
