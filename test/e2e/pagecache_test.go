package e2e

import (
	"bytes"
	"fmt"
	"os"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/keelfs/keelfs/test/harness"
)

// mapShared maps the first n bytes of f read-only and shared, failing the
// test if it cannot; unmap undoes it.
func mapShared(t *testing.T, f *os.File, n int) (mapped []byte, unmap func()) {
	t.Helper()
	mapped, err := unix.Mmap(int(f.Fd()), 0, n, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatalf("mmap: %v", err)
	}
	return mapped, func() {
		if err := unix.Munmap(mapped); err != nil {
			t.Error(err)
		}
	}
}

// residentPages maps the first n bytes of the file at path without
// touching them and says how many of its pages the kernel's page cache
// holds (mincore reports the cache of a file mapping, faulted in or not).
func residentPages(t *testing.T, path string, n int) int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	mapped, unmap := mapShared(t, f, n)
	defer unmap()
	vec := make([]byte, (n+os.Getpagesize()-1)/os.Getpagesize())
	if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&mapped[0])), uintptr(n), uintptr(unsafe.Pointer(&vec[0]))); errno != 0 {
		t.Fatalf("mincore: %v", errno)
	}
	in := 0
	for _, v := range vec {
		in += int(v & 1)
	}
	return in
}

// TestWriteOnlyOpenBypassesPageCache (issue 17): the writes of a
// write-only open of a new file go around the kernel's page cache, which
// nobody would read them from: a big write then allocates no page for
// them (each new page costs a fault on a machine that returns unused
// memory to its host). Passthrough is off, so the check's own open reads
// through the page cache and keeps whatever it holds.
func TestWriteOnlyOpenBypassesPageCache(t *testing.T) {
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	m := srv.Mount(t, b, harness.MountOptions{Args: []string{"--passthrough=false"}})
	const size = 8 << 20
	data := randBytes(size)
	if err := os.WriteFile(m.Path("w"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	if in := residentPages(t, m.Path("w"), size); in != 0 {
		t.Errorf("the page cache holds %d pages of a file written by a write-only open, want 0", in)
	}
	// The same bytes written by a read-write open stay in the page cache
	// (its reads and mappings use it): the check can see pages.
	f, err := os.OpenFile(m.Path("rw"), os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if in := residentPages(t, m.Path("rw"), size); in == 0 {
		t.Errorf("the page cache holds no page of a file written by a read-write open: the check cannot see pages")
	}
	got, err := os.ReadFile(m.Path("w"))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back: %d bytes, %v", len(got), err)
	}
	m.Flush()
	if got, _ := srv.Get(t, b, "w"); !bytes.Equal(got, data) {
		t.Errorf("S3 holds %d bytes, want the %d written", len(got), len(data))
	}
}

// TestMappingSeesWriteOnlyWriter: a process that mapped a file and closed
// it goes on reading the kernel's pages (the mapping keeps the open, so
// the writer below writes through the page cache). A later write-only
// open must not leave them stale. Passthrough is off: with it on, the
// mapping is of the backing file, which no write reaches once the last
// open of the file has closed (a known gap, the same for every writer).
func TestMappingSeesWriteOnlyWriter(t *testing.T) {
	srv := harness.StartServer(t)
	b := srv.NewBucket(t)
	m := srv.Mount(t, b, harness.MountOptions{Args: []string{"--passthrough=false"}})
	name := m.Path("f")
	if err := os.WriteFile(name, bytes.Repeat([]byte("a"), 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	mapped, unmap := mapShared(t, f, 1<<20)
	defer unmap()
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if mapped[4096] != 'a' {
		t.Fatalf("mapping reads %q, want 'a'", mapped[4096])
	}
	w, err := os.OpenFile(name, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.WriteAt([]byte("bbbb"), 4096); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if got := string(mapped[4096:4100]); got != "bbbb" {
		t.Errorf("a mapping kept after close reads %q after a write-only open wrote bbbb", got)
	}
}

// TestReaderSeesDirectWriter: a reader, and its shared mapping, opened
// while a write-only open writes around the page cache, read through the
// page cache; what they cached is dropped where a later direct write
// covers it (the kernel does that from FUSE 7.40 on, which keelfs
// requires before it writes around the page cache), so they see every
// write.
func TestReaderSeesDirectWriter(t *testing.T) {
	srv := harness.StartServer(t)
	for _, on := range []bool{false, true} {
		t.Run(fmt.Sprintf("passthrough=%v", on), func(t *testing.T) {
			b := srv.NewBucket(t)
			m := srv.Mount(t, b, harness.MountOptions{Args: []string{fmt.Sprintf("--passthrough=%v", on)}})
			name := m.Path("f")
			if err := os.WriteFile(name, bytes.Repeat([]byte("a"), 1<<20), 0o644); err != nil {
				t.Fatal(err)
			}
			w, err := os.OpenFile(name, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close()
			r, err := os.Open(name)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			mapped, unmap := mapShared(t, r, 1<<20)
			defer unmap()
			buf := make([]byte, 4)
			for i, want := range []string{"bbbb", "cccc"} {
				off := int64(12288)
				// Read (and map) the page first, so that the kernel
				// holds it when the write comes.
				if _, err := r.ReadAt(buf, off); err != nil {
					t.Fatal(err)
				}
				_ = mapped[off]
				if _, err := w.WriteAt([]byte(want), off); err != nil {
					t.Fatal(err)
				}
				if _, err := r.ReadAt(buf, off); err != nil || string(buf) != want {
					t.Errorf("write %d: the reader reads %q, %v; want %s", i, buf, err, want)
				}
				if got := string(mapped[off : off+4]); got != want {
					t.Errorf("write %d: the reader's mapping reads %q; want %s", i, got, want)
				}
			}
		})
	}
}

// TestSharedMapWhileWriteOnlyOpen: a write-only open that writes around
// the page cache leaves the other opens of the file able to map it shared
// (a log kept open by `>>` and read by a program that maps it), while it
// is open and right after it closed (the kernel sends its RELEASE
// asynchronously). FUSE refuses a shared mapping of a direct open.
func TestSharedMapWhileWriteOnlyOpen(t *testing.T) {
	srv := harness.StartServer(t)
	for _, on := range []bool{false, true} {
		t.Run(fmt.Sprintf("passthrough=%v", on), func(t *testing.T) {
			b := srv.NewBucket(t)
			m := srv.Mount(t, b, harness.MountOptions{Args: []string{fmt.Sprintf("--passthrough=%v", on)}})
			w, err := os.OpenFile(m.Path("log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close()
			if _, err := w.Write(make([]byte, 1<<16)); err != nil {
				t.Fatal(err)
			}
			for _, fl := range []int{os.O_RDONLY, os.O_RDWR} {
				r, err := os.OpenFile(m.Path("log"), fl, 0)
				if err != nil {
					t.Fatal(err)
				}
				prot := unix.PROT_READ
				if fl == os.O_RDWR {
					prot |= unix.PROT_WRITE
				}
				mapped, err := unix.Mmap(int(r.Fd()), 0, 1<<16, prot, unix.MAP_SHARED)
				if err != nil {
					t.Errorf("open flags %#x: mmap(MAP_SHARED) while a write-only open is open: %v", fl, err)
				} else if err := unix.Munmap(mapped); err != nil {
					t.Error(err)
				}
				if err := r.Close(); err != nil {
					t.Error(err)
				}
			}
			fails := 0
			const n = 200
			for i := 0; i < n; i++ {
				p := m.Path(fmt.Sprintf("f%d", i))
				if err := os.WriteFile(p, make([]byte, 8192), 0o644); err != nil {
					t.Fatal(err)
				}
				r, err := os.Open(p)
				if err != nil {
					t.Fatal(err)
				}
				mapped, err := unix.Mmap(int(r.Fd()), 0, 8192, unix.PROT_READ, unix.MAP_SHARED)
				if err != nil {
					if fails++; fails == 1 {
						t.Logf("first failure, at file %d: %v", i, err)
					}
				} else if err := unix.Munmap(mapped); err != nil {
					t.Error(err)
				}
				if err := r.Close(); err != nil {
					t.Error(err)
				}
			}
			if fails > 0 {
				t.Errorf("%d of %d mmap(MAP_SHARED) right after a write-only open closed failed", fails, n)
			}
		})
	}
}
