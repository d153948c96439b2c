package posix

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
)

// TestNames: what names a directory entry may have, and how they map to
// S3 keys.
func TestNames(t *testing.T) {
	f := newFixture(t)

	// POSIX: a name of NAME_MAX (255) bytes works for every call that
	// makes or uses a name, and the key in S3 carries it whole.
	t.Run("NameMax", func(t *testing.T) {
		d := f.dir(t)
		long := strings.Repeat("n", 255)
		multi := strings.Repeat("日", 85) // 255 bytes of UTF-8
		p := filepath.Join(d, long)
		writeFile(t, p, []byte("long name"))
		wantContent(t, p, []byte("long name"))
		must(t, os.Mkdir(filepath.Join(d, multi), 0o755), "mkdir 255 bytes")
		writeFile(t, filepath.Join(d, multi, "in"), []byte("x"))
		link := strings.Repeat("l", 255)
		must(t, os.Symlink(long, filepath.Join(d, link)), "symlink 255 bytes")
		ren := strings.Repeat("r", 255)
		writeFile(t, filepath.Join(d, "short"), []byte("renamed"))
		must(t, os.Rename(filepath.Join(d, "short"), filepath.Join(d, ren)), "rename to 255 bytes")
		names := readNames(t, d)
		want := []string{long, multi, link, ren}
		sort.Strings(want)
		if strings.Join(names, "/") != strings.Join(want, "/") {
			t.Fatalf("readdir: %q", names)
		}
		f.wantKeys(t, d, link, long, ren, multi+"/", multi+"/in")
		if got, _ := f.object(t, p); string(got) != "long name" {
			t.Fatalf("object %q", got)
		}
	})

	// POSIX: a name longer than NAME_MAX fails with ENAMETOOLONG, for
	// making names and for looking them up. A name of 256 bytes that is
	// 86 characters of UTF-8 counts bytes, not characters.
	t.Run("NameTooLong", func(t *testing.T) {
		d := f.dir(t)
		writeFile(t, filepath.Join(d, "f"), nil)
		for _, name := range []string{strings.Repeat("n", 256), strings.Repeat("日", 86)} {
			p := filepath.Join(d, name)
			err := openErr(p, syscall.O_CREAT|syscall.O_WRONLY, 0o644)
			wantErrno(t, err, syscall.ENAMETOOLONG, "create")
			wantErrno(t, syscall.Mkdir(p, 0o755), syscall.ENAMETOOLONG, "mkdir")
			wantErrno(t, syscall.Symlink("f", p), syscall.ENAMETOOLONG, "symlink")
			wantErrno(t, syscall.Rename(filepath.Join(d, "f"), p), syscall.ENAMETOOLONG, "rename to")
			var st syscall.Stat_t
			wantErrno(t, syscall.Lstat(p, &st), syscall.ENAMETOOLONG, "lstat")
		}
		f.wantKeys(t, d, "f")
	})

	// keelfs contract: names map to keys byte for byte. Spaces, unicode
	// (both normalisation forms, as distinct names), and characters that
	// are special in URLs or shells round-trip through S3 unchanged, both
	// ways.
	t.Run("BytesRoundTrip", func(t *testing.T) {
		d := f.dir(t)
		names := []string{
			"with space", " leading", "trailing ", "two  spaces",
			"caf\u00e9",  // é, NFC
			"cafe\u0301", // é, NFD: a different name
			"日本語", "emoji 🚀", "Ωmega",
			"plus+sign", "percent%20", "q?uestion", "hash#", "amp&er=sand", "tilde~", "star*", "quote'\"",
			"back\\slash", "semi;colon", "colon:", "brace{}[]", "tab\there", "-dash", ".hidden", "..dots", "...",
		}
		for _, name := range names {
			writeFile(t, filepath.Join(d, name), []byte(name))
		}
		got := readNames(t, d)
		want := append([]string(nil), names...)
		sort.Strings(want)
		if strings.Join(got, "\x00") != strings.Join(want, "\x00") {
			t.Fatalf("readdir:\n%q\nwant\n%q", got, want)
		}
		if keys := f.keysUnder(t, d); strings.Join(keys, "\x00") != strings.Join(want, "\x00") {
			t.Fatalf("keys:\n%q\nwant\n%q", keys, want)
		}
		for _, name := range names {
			if body, _ := f.srv.Get(t, f.bucket, f.key(t, filepath.Join(d, name))); string(body) != name {
				t.Errorf("object %q holds %q", name, body)
			}
		}

		// The other way: objects another client wrote with such keys.
		ext := filepath.Join(d, "ext")
		must(t, os.Mkdir(ext, 0o755), "mkdir")
		f.m.Flush()
		for _, name := range names {
			f.srv.Put(t, f.bucket, f.key(t, ext)+"/"+name, []byte("ext "+name), nil)
		}
		waitFor(t, "the external objects to show", func() bool { return len(readNames(t, ext)) == len(names) })
		if got := readNames(t, ext); strings.Join(got, "\x00") != strings.Join(want, "\x00") {
			t.Fatalf("readdir of external objects:\n%q\nwant\n%q", got, want)
		}
		for _, name := range names {
			wantContent(t, filepath.Join(ext, name), []byte("ext "+name))
		}
	})

	// POSIX: a name is any bytes but "/" and NUL. S3 keys must be UTF-8,
	// so keelfs refuses a name that is not, with EINVAL, rather than
	// accept a file that would lose its name once uploaded (see
	// EXPECTED_FAILURES.md, "non-UTF-8 names").
	t.Run("NotUTF8", func(t *testing.T) {
		d := f.dir(t)
		p := filepath.Join(d, "latin1-\xe9")
		err := openErr(p, syscall.O_CREAT|syscall.O_WRONLY, 0o644)
		wantErrno(t, err, syscall.EINVAL, "create a non-UTF-8 name (EXPECTED_FAILURES.md: non-UTF-8 names)")
		wantErrno(t, syscall.Mkdir(p, 0o755), syscall.EINVAL, "mkdir a non-UTF-8 name")
		wantErrno(t, syscall.Symlink("x", p), syscall.EINVAL, "symlink a non-UTF-8 name")
		writeFile(t, filepath.Join(d, "ok"), nil)
		wantErrno(t, syscall.Rename(filepath.Join(d, "ok"), p), syscall.EINVAL, "rename to a non-UTF-8 name")
		f.wantKeys(t, d, "ok")
	})

	// POSIX allows paths up to PATH_MAX (4096) bytes; an S3 key is at
	// most 1024 bytes (see EXPECTED_FAILURES.md, "paths over 1024
	// bytes"). A name whose key would be longer fails with ENAMETOOLONG
	// when it is made, rather than being made locally and never uploaded
	// (AWS refuses it with KeyTooLongError; versitygw takes it).
	t.Run("KeyLength", func(t *testing.T) {
		f.m.AllowLog(`KeyTooLong`) // against AWS; versitygw takes long keys
		d := f.dir(t)
		p := d
		for i := 0; 1024-len(f.key(t, p))-1 > 255; i++ {
			p = filepath.Join(p, strings.Repeat(string(rune('a'+i)), 200))
			must(t, os.Mkdir(p, 0o755), "mkdir")
		}
		atLimit := filepath.Join(p, strings.Repeat("k", 1024-len(f.key(t, p))-1))
		writeFile(t, atLimit, []byte("at the limit"))
		if n := len(f.key(t, atLimit)); n != 1024 {
			t.Fatalf("key length %d, want 1024", n)
		}
		f.m.Flush()
		if body, ok := f.srv.Get(t, f.bucket, f.key(t, atLimit)); !ok || string(body) != "at the limit" {
			t.Fatalf("object at the limit: %q %v", body, ok)
		}
		// One byte more is a key S3 refuses: ENAMETOOLONG at once, rather
		// than an upload that can never succeed.
		over := atLimit + "x"
		wantErrno(t, os.WriteFile(over, nil, 0o644), syscall.ENAMETOOLONG, "create with a 1025-byte key")
		deep := filepath.Join(p, strings.Repeat("z", 250))
		wantErrno(t, os.Mkdir(deep, 0o755), syscall.ENAMETOOLONG, "mkdir with a 1025-byte marker key")
		wantErrno(t, os.Rename(atLimit, over), syscall.ENAMETOOLONG, "rename to a 1025-byte key")
		// A directory renamed to a longer name would push the file under
		// it past the limit.
		top := filepath.Join(d, strings.Repeat("a", 200))
		wantErrno(t, os.Rename(top, top+"x"), syscall.ENAMETOOLONG, "rename of a directory that makes a key under it too long")
		if body, err := os.ReadFile(atLimit); err != nil || string(body) != "at the limit" {
			t.Fatalf("the file at the limit after the refused renames: %q %v", body, err)
		}
	})
}

func readNames(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("readdir %s: %v", dir, err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	return names
}
