#!/usr/bin/env bash
# Builds (or reuses) a minimal Debian bookworm root file system for the systemd test machine
# (tests/tests/systemd_machine.rs boots a copy of it with systemd-nspawn, systemd as PID 1).
#
#   scripts/nspawn-rootfs.sh DIR
#
# Cache (scripts/lib/cache.sh): DIR is reused while its marker names the same package set;
# anything else is built again, so CI pays for debootstrap (a few minutes) once per run.
# Concurrent callers (tests run in parallel) serialize on DIR.lock.
#
# Needs root, debootstrap and network access to a Debian mirror (KELSON_DEBIAN_MIRROR,
# default http://deb.debian.org/debian). Packages: scripts/setup.sh installs debootstrap and
# systemd-container.
set -euo pipefail
# shellcheck source=lib/cache.sh
. "$(dirname "$0")/lib/cache.sh"

if [ $# -ne 1 ]; then
  echo "usage: $0 DIR" >&2
  exit 2
fi
dir=$1
mirror=${KELSON_DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=bookworm
# librocksdb7.8: kelson-kv (and kelsonctl, for offline restore) link Debian's RocksDB;
# procps: /bin/kill, which the units' ExecReload= runs (minbase leaves it out).
include=systemd,systemd-sysv,dbus,iproute2,ca-certificates,librocksdb7.8,procps
# Bump when the tree's content changes, so stale caches are rebuilt.
stamp="kelson-nspawn-rootfs v3 $suite $include"
marker=.kelson-rootfs-complete

if [ "$(id -u)" -ne 0 ]; then
  echo "nspawn-rootfs: must run as root (debootstrap)" >&2
  exit 1
fi
command -v debootstrap >/dev/null || {
  echo "nspawn-rootfs: debootstrap is missing: run scripts/setup.sh" >&2
  exit 1
}

cache_lock "$dir"
if cache_fresh "$dir" "$marker" "$stamp"; then
  echo "nspawn-rootfs: reusing $dir"
  exit 0
fi
cache_start "$dir"
echo "nspawn-rootfs: debootstrap $suite into $dir (a few minutes)"
if ! debootstrap --variant=minbase --include="$include" "$suite" "$dir.tmp" "$mirror" \
    >"$dir.debootstrap.log" 2>&1; then
  echo "nspawn-rootfs: debootstrap failed; last lines of $dir.debootstrap.log:" >&2
  tail -n 30 "$dir.debootstrap.log" >&2
  # debootstrap keeps its own log inside the target.
  [ -f "$dir.tmp/debootstrap/debootstrap.log" ] && tail -n 30 "$dir.tmp/debootstrap/debootstrap.log" >&2
  exit 1
fi

# A machine, not an installer image: drop the package caches and set what a first boot asks.
rm -rf "$dir.tmp"/var/cache/apt/archives/*.deb "$dir.tmp"/var/lib/apt/lists/*
echo kelson-machine >"$dir.tmp/etc/hostname"
# An empty machine-id makes systemd generate one per boot (each test copy is its own machine).
: >"$dir.tmp/etc/machine-id"
# Nothing in the test machine needs a login prompt on the container console.
ln -sf /dev/null "$dir.tmp/etc/systemd/system/console-getty.service"
ln -sf /dev/null "$dir.tmp/etc/systemd/system/getty@.service"

cache_finish "$dir" "$marker" "$stamp"
echo "nspawn-rootfs: built $dir in $(cache_elapsed) s"
