// Package container tests keelfs in real containers: the image that `make
// image` builds, the ECS sidecar definition run as the ECS agent would run
// it, and keelfs run as a container's PID 1 stopped with `docker stop`
// while writes are pending (the README's docker run line, and the ECS
// definition for it).
//
// The tests use docker: `make test` installs docker.io and starts dockerd
// when needed, and the image is built once per test run. Where docker
// cannot start, the same tests run their "containers" in fresh mount and
// PID namespaces made with unshare, and say so in their output
// (KEELFS_CONTAINERS=unshare picks them where docker works, to try them).
// Container traffic uses the host network, where the test S3 server
// listens on loopback.
package container
