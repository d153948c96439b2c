// Package build tests the Makefile's release hygiene: the version stamped
// into the binary from git (and its fallbacks), and make install with
// PREFIX and DESTDIR.
package build
