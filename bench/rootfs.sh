#!/usr/bin/env bash
# rootfs.sh NAME [PACKAGE,...] makes (once) a Debian bookworm minbase root
# filesystem with the given extra packages under $BOOTFS_ROOTFS_CACHE
# (default /var/cache/bootfs) and prints its path. The benchmarks and the
# demo use it; later runs reuse the cached tree.
#
# Runs that ask for the same tree at once wait for each other (flock on
# rootfs-NAME.lock): the first debootstraps into rootfs-NAME.tmp and renames
# it into place when done, so no run ever sees or deletes a tree that
# another is still making, and a killed run leaves only a .tmp that the
# next one removes.
set -euo pipefail
name=${1:?usage: rootfs.sh NAME [PACKAGE,...]}
include=${2:-}
cache=${BOOTFS_ROOTFS_CACHE:-/var/cache/bootfs}
dir=$cache/rootfs-$name
mkdir -p "$cache"
exec 9>"$dir.lock"
flock 9
if [ ! -e "$dir/.bootfs-complete" ]; then
	command -v debootstrap >/dev/null || { echo "rootfs.sh: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }
	rm -rf "$dir" "$dir.tmp"
	echo "rootfs.sh: debootstrap bookworm into $dir${include:+ with $include}" >&2
	debootstrap --variant=minbase ${include:+--include="$include"} bookworm "$dir.tmp" http://deb.debian.org/debian >&2
	rm -rf "$dir.tmp"/var/cache/apt/archives/*.deb "$dir.tmp"/var/lib/apt/lists/*
	touch "$dir.tmp/.bootfs-complete"
	mv "$dir.tmp" "$dir"
fi
echo "$dir"
