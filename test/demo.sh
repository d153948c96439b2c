#!/usr/bin/env bash
# make demo: start a local S3 server, mount a bucket with keelfs, and show a
# file going both ways: written in the bucket, read through the mount;
# written through the mount, read from the bucket.
set -euo pipefail
: "${KEELFS:?} ${S3CLI:?} ${VERSITYGW:?}"
work=$(mktemp -d /tmp/keelfs-demo.XXXXXX)
# A free loopback port, with nothing beyond bash (no python or curl on a
# minimal Debian).
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
port=$((20000 + RANDOM % 30000)); while port_in_use "$port"; do port=$((20000 + RANDOM % 30000)); done
export AWS_ACCESS_KEY_ID=demo-access AWS_SECRET_ACCESS_KEY=demo-secret-key AWS_REGION=us-east-1
export S3CLI_ENDPOINT=http://127.0.0.1:$port AWS_EC2_METADATA_DISABLED=true
mkdir -p "$work/s3" "$work/mnt"
cleanup() {
  mountpoint -q "$work/mnt" && { umount "$work/mnt" 2>/dev/null || fusermount3 -u -z "$work/mnt"; }
  [ -n "${gw:-}" ] && kill "$gw" 2>/dev/null && wait "$gw" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "start versitygw on 127.0.0.1:$port"
ROOT_ACCESS_KEY=$AWS_ACCESS_KEY_ID ROOT_SECRET_KEY=$AWS_SECRET_ACCESS_KEY \
  "$VERSITYGW" --port "127.0.0.1:$port" --keep-alive --quiet posix "$work/s3" >"$work/gw.log" 2>&1 &
gw=$!
for _ in $(seq 100); do port_in_use "$port" && break; sleep 0.1; done
"$S3CLI" mb demo
echo "hello from the bucket" | "$S3CLI" put demo app/greeting.txt -
echo '$ s3cli ls demo'; "$S3CLI" ls demo

step "keelfs mount s3://demo/app $work/mnt"
"$KEELFS" mount s3://demo/app "$work/mnt" --endpoint "$S3CLI_ENDPOINT" --force-path-style \
  --cache-dir "$work/cache" --log-level warn
echo "\$ ls -l mnt"; ls -l "$work/mnt"
echo "\$ cat mnt/greeting.txt"; cat "$work/mnt/greeting.txt"

step "write through the mount, then read the object from the bucket"
mkdir "$work/mnt/uploads"
echo "written through keelfs at $(date -u +%FT%TZ)" > "$work/mnt/uploads/note.txt"
echo "\$ keelfs flush mnt"; "$KEELFS" flush "$work/mnt"
echo '$ s3cli ls demo'; "$S3CLI" ls demo
echo '$ s3cli get demo app/uploads/note.txt'; "$S3CLI" get demo app/uploads/note.txt

step "unmount"
"$KEELFS" unmount "$work/mnt"
echo "demo done: the round trip worked"
