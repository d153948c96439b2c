package posix

import (
	"path/filepath"
	"syscall"
	"testing"
)

// TestLink: link(2).
func TestLink(t *testing.T) {
	f := newFixture(t)

	// POSIX: link gives a file a second name, raising st_nlink. An S3
	// object cannot have two names, so keelfs fails with a clear EPERM
	// (POSIX: "the file system does not support links") and changes
	// nothing (see EXPECTED_FAILURES.md, "hard links").
	t.Run("HardLinkRefused", func(t *testing.T) {
		d := f.dir(t)
		p := filepath.Join(d, "f")
		writeFile(t, p, []byte("one name only"))
		err := syscall.Link(p, filepath.Join(d, "second"))
		wantErrno(t, err, syscall.EPERM, "link (EXPECTED_FAILURES.md: hard links)")
		if exists(filepath.Join(d, "second")) {
			t.Fatal("a failed link left a name")
		}
		if st := lstat(t, p); st.Nlink != 1 {
			t.Fatalf("nlink %d, want 1", st.Nlink)
		}
		wantContent(t, p, []byte("one name only"))
		f.wantKeys(t, d, "f")
	})

	// POSIX: the usual errors come before the file system is asked:
	// ENOENT for a missing source, EEXIST for an existing target, EPERM
	// for a directory source (Linux).
	t.Run("Errors", func(t *testing.T) {
		d := f.dir(t)
		p := filepath.Join(d, "f")
		writeFile(t, p, nil)
		writeFile(t, filepath.Join(d, "g"), nil)
		wantErrno(t, syscall.Link(filepath.Join(d, "nothing"), filepath.Join(d, "x")), syscall.ENOENT, "link missing")
		wantErrno(t, syscall.Link(p, filepath.Join(d, "g")), syscall.EEXIST, "link onto an existing name")
		wantErrno(t, syscall.Link(d, filepath.Join(d, "dirlink")), syscall.EPERM, "link a directory")
	})
}
