// Package posix is keelfs's POSIX conformance suite, organised by system
// call in the spirit of pjdfstest: one file per family (open, create,
// read/write, truncate, mkdir/rmdir, unlink, rename, symlink, link, chmod,
// chown, utimensat, access checks, names, xattrs, locks). Each top-level
// test mounts the built binary once on the real versitygw server; its
// subtests, each in a directory of its own, assert on what a user sees:
// the errno, the bytes, the attributes, and the objects that land in the
// bucket.
//
// Each case says in a comment what POSIX (or Linux) requires. Where keelfs
// knowingly differs, the case asserts today's behaviour and points to
// EXPECTED_FAILURES.md, so that any change of behaviour fails the suite and
// the list is kept true.
//
// Permission checks are the kernel's (keelfs mounts with
// default_permissions). The test binary runs as root, which bypasses them,
// so the unprivileged half of those cases runs in a child process (a copy
// of this test binary) as uid and gid 65534 on a mount made with
// --allow-other.
package posix
