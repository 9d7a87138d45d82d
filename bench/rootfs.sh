#!/usr/bin/env bash
# rootfs.sh NAME [PACKAGE,...] makes (once) a Debian bookworm minbase root
# filesystem with the given extra packages under $BOOTFS_ROOTFS_CACHE
# (default /var/cache/bootfs) and prints its path. The benchmarks and the
# demo use it; later runs reuse the cached tree.
set -euo pipefail
name=${1:?usage: rootfs.sh NAME [PACKAGE,...]}
include=${2:-}
cache=${BOOTFS_ROOTFS_CACHE:-/var/cache/bootfs}
dir=$cache/rootfs-$name
if [ ! -e "$dir/.bootfs-complete" ]; then
	command -v debootstrap >/dev/null || { echo "rootfs.sh: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }
	rm -rf "$dir"
	mkdir -p "$cache"
	echo "rootfs.sh: debootstrap bookworm into $dir${include:+ with $include}" >&2
	debootstrap --variant=minbase ${include:+--include="$include"} bookworm "$dir" http://deb.debian.org/debian >&2
	rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
	touch "$dir/.bootfs-complete"
fi
echo "$dir"
