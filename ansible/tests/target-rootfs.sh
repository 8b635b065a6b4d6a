#!/usr/bin/env bash
# Builds (or reuses) the root file system of the throwaway machine the Ansible test provisions
# over ssh: the systemd test machine's cached Debian bookworm tree (scripts/nspawn-rootfs.sh)
# plus what Ansible needs on a managed host and what an operator's bare-metal machine has:
# python3 (+ python3-apt for the apt module), openssh-server (ssh.service inside the machine),
# netcat-openbsd (the test's ssh ProxyCommand reaches the machine's sshd on its loopback
# through `nsenter -n -m nc`, so no address is added to the host's network), and the packages
# the play installs on a control-plane machine (nftables, etcd-client): the machine has no
# network during the test, so the play's apt tasks must find them installed.
#
#   ansible/tests/target-rootfs.sh BASE DIR
#
# BASE is scripts/nspawn-rootfs.sh's tree (built first if needed); DIR is the cache
# (scripts/lib/cache.sh: reused while its marker names the same base and package set; an
# interrupted build is removed and redone; concurrent callers serialize on DIR.lock). It is
# also the rootfs of `kelsonctl lab`'s control-plane machines, which ansible/site.yml
# provisions over ssh. Needs root and a Debian mirror
# (KELSON_DEBIAN_MIRROR) the first time.
set -euo pipefail
# shellcheck source=../../scripts/lib/cache.sh
. "$(dirname "$0")/../../scripts/lib/cache.sh"

if [ $# -ne 2 ]; then
  echo "usage: $0 BASE DIR" >&2
  exit 2
fi
base=$1
dir=$2
here=$(cd "$(dirname "$0")" && pwd)
packages="python3 python3-apt openssh-server netcat-openbsd etcd-client nftables"
marker=.kelson-ansible-target-complete

if [ "$(id -u)" -ne 0 ]; then
  echo "target-rootfs: must run as root (chroot, apt-get)" >&2
  exit 1
fi
bash "$here/../../scripts/nspawn-rootfs.sh" "$base"
stamp="kelson-ansible-target v3 [$(cat "$base/.kelson-rootfs-complete")] $packages"

cache_lock "$dir"
if cache_fresh "$dir" "$marker" "$stamp"; then
  echo "target-rootfs: reusing $dir"
  exit 0
fi
cache_start "$dir"
cp -a --reflink=auto "$base" "$dir.tmp"
rm -f "$dir.tmp/.kelson-rootfs-complete"
cp /etc/resolv.conf "$dir.tmp/etc/resolv.conf"
# No service may start inside the chroot (openssh-server's postinst would try).
printf '#!/bin/sh\nexit 101\n' >"$dir.tmp/usr/sbin/policy-rc.d"
chmod 0755 "$dir.tmp/usr/sbin/policy-rc.d"
if [ -n "${KELSON_DEBIAN_MIRROR:-}" ]; then
  echo "deb $KELSON_DEBIAN_MIRROR bookworm main" >"$dir.tmp/etc/apt/sources.list"
fi
log="$dir.apt.log"
if ! { chroot "$dir.tmp" apt-get update -q &&
       DEBIAN_FRONTEND=noninteractive chroot "$dir.tmp" apt-get install -y -q --no-install-recommends $packages; } \
     >"$log" 2>&1; then
  echo "target-rootfs: apt-get in the chroot failed; last lines of $log:" >&2
  tail -n 30 "$log" >&2
  exit 1
fi
rm -f "$dir.tmp/usr/sbin/policy-rc.d"
rm -rf "$dir.tmp"/var/cache/apt/archives/*.deb
# The host keys the package generated are shared by every copy: acceptable for a throwaway
# test machine reached through a ProxyCommand (the test pins them per copy anyway).
cache_finish "$dir" "$marker" "$stamp"
echo "target-rootfs: built $dir in $(cache_elapsed) s"
