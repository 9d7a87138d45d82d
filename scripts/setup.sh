#!/usr/bin/env bash
# scripts/setup.sh makes this machine ready for `make demo`, `make test` and
# .ci/run, and says what it does:
#
#   1. installs the Debian packages bootfs needs that are missing
#      (one `apt-get update`, then `apt-get install -y` of only those);
#   2. loads the fuse module when /dev/fuse is missing;
#   3. starts dockerd when no Docker engine answers, with the flags a machine
#      without bridge networking needs, and waits until it answers.
#
# It is idempotent and quick when everything is there. Not root, or no
# apt-get: it names what is missing and the command that installs it, and
# stops with exit code 1. SETUP_QUIET=1 prints nothing when nothing is done.
set -euo pipefail

# What each package is for:
#   docker.io (with containerd)       the engine the end-to-end tests and the demo run
#   docker-registry                   a local registry (registry store, benchmark pulls)
#   stargz-snapshotter                the benchmark's eStargz peer: ctr-remote converts images
#   fuse3                             fusermount3 and the fuse tools
#   casync                            the interop oracle: real casync reads what we write
#   busybox-static                    the small test images
#   debootstrap                       the Debian test and demo images
#   openssh-client                    casync and desync reach SSH stores through ssh
#   docker-compose                    the compose example's test
#   gcc, libc6-dev                    go test -race needs cgo
#   ca-certificates git make iproute2 procps   the build and the benchmark harness
packages=(docker.io containerd docker-registry stargz-snapshotter fuse3 casync busybox-static debootstrap
	openssh-client docker-compose gcc libc6-dev ca-certificates git make iproute2 procps)

say() { [ "${SETUP_QUIET:-}" = 1 ] && [ "${1:-}" = "-q" ] && return 0; [ "${1:-}" = "-q" ] && shift; echo "setup: $*" >&2; }
die() { echo "setup: $*" >&2; exit 1; }

# One dpkg-query for every package: a package is missing unless dpkg
# says it is installed.
installed=" $({ dpkg-query -W -f='${db:Status-Status} ${Package}\n' "${packages[@]}" 2>/dev/null || true; } |
	awk '$1 == "installed" { printf "%s ", $2 }')"
missing=()
for p in "${packages[@]}"; do
	[[ $installed == *" $p "* ]] || missing+=("$p")
done

if ((${#missing[@]})); then
	if ! command -v apt-get >/dev/null; then
		die "missing Debian packages: ${missing[*]}; this machine has no apt-get: install them with its package manager, then run this again"
	fi
	if [ "$(id -u)" != 0 ]; then
		die "missing Debian packages: ${missing[*]}; install them as root: sudo apt-get update && sudo apt-get install -y ${missing[*]}"
	fi
	say "installing ${missing[*]} (apt-get update, then apt-get install -y)"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q >&2
	apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
	# Debian's docker-registry starts itself as a service on :5000 where
	# systemd runs; the tests start their own registries on free ports.
fi

command -v go >/dev/null || die "no Go toolchain on PATH: install Go 1.26 or later (this machine kind has it in /usr/local/go/bin: export PATH=/usr/local/go/bin:\$PATH)"

if [ ! -c /dev/fuse ]; then
	say "loading the fuse module (/dev/fuse is missing)"
	modprobe fuse 2>/dev/null || true
	[ -c /dev/fuse ] || die "/dev/fuse is missing and modprobe fuse did not make it: bootfs needs a kernel with FUSE"
fi

if ! docker info >/dev/null 2>&1; then
	[ "$(id -u)" = 0 ] || die "no Docker engine answers; start one as root: dockerd --bridge=none --iptables=false --ip-masq=false &"
	log=/var/log/bootfs-dockerd.log
	say "starting dockerd --bridge=none --iptables=false --ip-masq=false (log: $log)"
	mkdir -p "$(dirname "$log")"
	# setsid: the engine outlives the make target or shell that started it.
	setsid nohup dockerd --bridge=none --iptables=false --ip-masq=false >"$log" 2>&1 </dev/null &
	for _ in $(seq 120); do
		docker info >/dev/null 2>&1 && break
		sleep 0.5
	done
	docker info >/dev/null 2>&1 || { tail -20 "$log" >&2; die "dockerd did not answer within 60 s (its log: $log)"; }
	say "dockerd answers"
fi
say -q "ready: packages installed, /dev/fuse present, Docker answers"
