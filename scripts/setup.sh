#!/usr/bin/env bash
# Installs the Debian 12 packages Kelson's build and tests need. Idempotent; run as root.
#   build:  protobuf-compiler (raft, tonic-build), libclang-dev (bindgen for librocksdb-sys),
#           librocksdb-dev (we link RocksDB 7.8.3 from Debian instead of building it: ~10 min saved)
#   tests:  etcd-server + etcd-client (compatibility oracle and benchmark peer), dbus (private bus),
#           python3 (linearizability checker input) + python3-kubernetes (API compatibility judge),
#           systemd (systemd-analyze for the unit tests), and the node runtime;
#           debootstrap + systemd-container (the systemd test machine: scripts/nspawn-rootfs.sh);
#           ansible-core + ansible-lint (ansible/ and tests/tests/ansible.rs).
#           nix-bin (nix-instantiate: tests/tests/nix_eval.rs parses and evaluates nix/).
#           qemu-utils, openssh-client, e2fsprogs: the lab's worker VMs (QEMU itself is fetched
#           unpacked by scripts/qemu-fetch.sh, see docs/lab.md).
set -euo pipefail
pkgs=(protobuf-compiler libprotobuf-dev libclang-dev clang librocksdb-dev pkg-config
      etcd-server etcd-client dbus
      containerd runc containernetworking-plugins nftables busybox-static iproute2
      systemd python3
      debootstrap systemd-container
      nix-bin
      qemu-utils openssh-client e2fsprogs)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# The official Python client judges API compatibility; any installed copy (pip or Debian's) will do.
python3 -c 'import kubernetes' 2>/dev/null || missing+=(python3-kubernetes)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
  # Debian starts etcd as a service on install; Kelson's tests start their own, and
  # `kelsonctl up` wants port 2379. Stop only that service, never other etcd processes.
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now etcd >/dev/null 2>&1 || true
  elif [ -x /etc/init.d/etcd ]; then
    $SUDO /etc/init.d/etcd stop >/dev/null 2>&1 || true
  fi
else
  echo "setup: all packages present"
fi
