#!/usr/bin/env bash
# Builds (or reuses) the root file system of a lab worker VM (kelsonctl lab boots workers as
# QEMU/TCG VMs: containerd cannot create containers inside nspawn on these hosts).
#
#   scripts/vm-image.sh DIR
#
# DIR/rootfs   the debootstrapped tree (bookworm + the cloud kernel, systemd, containerd, runc,
#              the CNI plugins, openssh-server, nftables, iproute2, python3 for Ansible), ready
#              for `mkfs.ext4 -d`
#              (`kelsonctl lab up` adds Kelson and the lab's ssh key to a copy of it and makes
#              the lab's ext4 image from that; each VM then boots a qcow2 overlay of it)
# DIR/vmlinuz, DIR/initrd.img   the kernel and initramfs from the tree's /boot, for
#              `qemu -kernel/-initrd` with `root=/dev/vda` (no boot loader in the image)
#
# Networking inside the VM: systemd-networkd with systemd-network-generator, so the lab gives
# each VM its address on the kernel command line (`ip=ADDR::GW:MASK:HOST:eth0:off`) and one
# image serves every worker. The host name comes from `systemd.hostname=`.
#
# Cache, lock and rebuild rules: scripts/lib/cache.sh (DIR is reused while its marker names the
# same package set; concurrent callers serialize on DIR.lock). Needs root,
# debootstrap and a Debian mirror (KELSON_DEBIAN_MIRROR, default http://deb.debian.org/debian).
set -euo pipefail
# shellcheck source=lib/cache.sh
. "$(dirname "$0")/lib/cache.sh"
if [ $# -ne 1 ]; then
  echo "usage: $0 DIR" >&2
  exit 2
fi
dir=$(realpath -m "$1")
mirror=${KELSON_DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=bookworm
# procps: /bin/kill for the units' ExecReload=; kmod: modprobe for overlay/br_netfilter;
# conntrack, iptables: what kubelet/proxy hosts usually carry (proxy itself uses nftables).
# python3, python3-apt: Ansible manages the workers (ansible/site.yml; its apt module needs
# python3-apt). librocksdb7.8: kelsonctl links it (roles/common runs `kelsonctl install` on the
# machine). Every package the play installs is here: there is no mirror in the lab.
include=linux-image-cloud-amd64,systemd,systemd-sysv,dbus,udev,kmod,iproute2,ca-certificates,procps,containerd,runc,containernetworking-plugins,openssh-server,nftables,iputils-ping,python3,python3-apt,librocksdb7.8
stamp="kelson-vm-rootfs v2 $suite $include"
marker=.kelson-vm-complete

if [ "$(id -u)" -ne 0 ]; then
  echo "vm-image: must run as root (debootstrap)" >&2
  exit 1
fi
command -v debootstrap >/dev/null || {
  echo "vm-image: debootstrap is missing: run scripts/setup.sh" >&2
  exit 1
}
cache_lock "$dir"
if cache_fresh "$dir" "$marker" "$stamp"; then
  echo "vm-image: reusing $dir"
  exit 0
fi
cache_start "$dir"
mkdir -p "$dir.tmp"
root=$dir.tmp/rootfs
echo "vm-image: debootstrap $suite into $root (several minutes)"
if ! debootstrap --variant=minbase --include="$include" "$suite" "$root" "$mirror" \
    >"$dir.debootstrap.log" 2>&1; then
  echo "vm-image: debootstrap failed; last lines of $dir.debootstrap.log:" >&2
  tail -n 30 "$dir.debootstrap.log" >&2
  [ -f "$root/debootstrap/debootstrap.log" ] && tail -n 30 "$root/debootstrap/debootstrap.log" >&2
  exit 1
fi
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
# The host name and the address come from the kernel command line (see above).
rm -f "$root/etc/hostname"
: >"$root/etc/machine-id"
# The root file system is mounted rw from the kernel command line (root=/dev/vda rw).
: >"$root/etc/fstab"
ln -sf /lib/systemd/system/systemd-networkd.service \
  "$root/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
mkdir -p "$root/etc/systemd/system/sysinit.target.wants"
ln -sf /lib/systemd/system/systemd-network-generator.service \
  "$root/etc/systemd/system/sysinit.target.wants/systemd-network-generator.service"
# Only the serial console is used (console=ttyS0); no login prompts on virtual terminals.
ln -sf /dev/null "$root/etc/systemd/system/getty@.service"
# Kubernetes workers: the overlay snapshotter, bridged pod traffic through nftables, forwarding.
printf 'overlay\nbr_netfilter\n' >"$root/etc/modules-load.d/kelson.conf"
printf 'net.ipv4.ip_forward = 1\nnet.bridge.bridge-nf-call-iptables = 1\n' \
  >"$root/etc/sysctl.d/90-kelson.conf"
# Root logs in with the lab's key only.
sed -i 's/^#\?PasswordAuthentication.*/PasswordAuthentication no/' "$root/etc/ssh/sshd_config"
# ssh must not wait for reverse DNS of the host (there is no resolver in the lab).
echo 'UseDNS no' >>"$root/etc/ssh/sshd_config"
: >"$root/etc/resolv.conf"
# Kernel and initramfs for -kernel/-initrd.
cp -L "$root/vmlinuz" "$dir.tmp/vmlinuz"
cp -L "$root/initrd.img" "$dir.tmp/initrd.img"
cache_finish "$dir" "$marker" "$stamp"
echo "vm-image: built $dir in $(cache_elapsed) s"
