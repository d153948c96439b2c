// Package deploy holds the files that run keelfs where apps run: the
// image (Dockerfile, Dockerfile.source), a docker compose file, ECS task
// definitions (a privileged sidecar, and keelfs run in the app's own
// container), a Kubernetes pod with a keelfs sidecar, and a systemd
// template unit.
//
// It has no code. Its tests parse every file and check the fields that
// make it work: FUSE access (privileged, or /dev/fuse and SYS_ADMIN), mount
// propagation between the keelfs container and the app, --allow-other, a
// stop timeout longer than keelfs's drain, a health check that needs
// nothing but keelfs. The container tests (test/container) run the ECS
// definitions in docker as the ECS agent would.
package deploy
