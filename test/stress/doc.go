// Package stress kills the keelfs daemon with SIGKILL, again and again,
// under a mixed load through a real mount against versitygw, remounts on
// the same cache directory each time, and checks rule 5 of DESIGN.md:
// every byte whose close or fsync returned 0 is in S3 at the end; what a
// remount shows of files nobody touches again is what S3 ends up
// holding; and after `keelfs flush` the mount shows exactly what S3
// holds.
//
// `make test` runs a short form (a few cycles); KEELFS_STRESS=1 (`make
// stress`) runs many more.
package stress
