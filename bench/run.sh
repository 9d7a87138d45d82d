#!/usr/bin/env bash
# bench/run.sh [BENCHRUN FLAGS...] runs the benchmark harness end to end:
# it builds the images (bench/rootfs.sh, cached), converts them, serves the
# stores on 127.0.0.1 behind a shaping proxy, runs every workload in every
# mode from a cold state, and writes bench/results/<date>.md with PNG
# charts (see bench/README.md). Needs root, Docker, /dev/fuse, casync,
# docker-registry and the binaries of `make build`.
#
# Options, as environment variables (or the flags of benchrun -h):
#   SAMPLES=N           runs of every image, network and mode (default 2)
#   CASYNC_SAMPLES=N    runs of the casync-mount mode, the slowest by far
#                       (default 1; 0 for SAMPLES)
#   IMAGES=a,b          debian-min, python, gcc, postgres, busybox
#                       (default: the four Debian images)
#   MODES=a,b           registry-pull, estargz, estargz-optimized,
#                       bootfs-cold, bootfs-prefetch,
#                       bootfs-warm, casync-mount, save-load
#                       (default: all but save-load)
#   NETWORKS=a,b        loopback, 2ms-1gbit, 20ms-100mbit, 100ms-100mbit
#                       (default: all but 2ms-1gbit)
#   EXTRAS=a,b|none     convert, dedup, chunkers, fuse, pgversion, node
#                       (default: all but chunkers)
#   BENCH_QUICK=1       busybox only, one sample, loopback and 20ms-100mbit,
#                       no Go conversion benchmark: CI's check that the
#                       harness works (under two minutes)
#   BENCH_OUT=DIR       where the report goes (default bench/results)
#   BENCH_WORK=DIR      scratch directory (default /var/tmp/bootfs-bench)
#   BENCH_KEEP=1        keep the scratch directory and the images
#   BENCH_SEED=N        the run order's seed
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "bench/run.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root: the harness mounts FUSE, drops the page cache and runs Docker"
for b in mkimage boot chunkstore; do
	[ -x "bin/$b" ] || die "bin/$b is missing: run make build first"
done

# A directory of this run's own, so that two runs never build over each
# other's runner.
rundir=$(mktemp -d "${TMPDIR:-/tmp}/bootfs-benchrun.XXXXXX")
trap 'rm -rf "$rundir"' EXIT
runner=$rundir/benchrun
CGO_ENABLED=0 go build -o "$runner" ./bench/cmd/benchrun

args=(-bin bin -module . -out "${BENCH_OUT:-bench/results}" -work "${BENCH_WORK:-/var/tmp/bootfs-bench}")
[ -n "${SAMPLES:-}" ] && args+=(-samples "$SAMPLES")
[ -n "${CASYNC_SAMPLES:-}" ] && args+=(-casync-samples "$CASYNC_SAMPLES")
[ -n "${IMAGES:-}" ] && args+=(-images "$IMAGES")
[ -n "${MODES:-}" ] && args+=(-modes "$MODES")
[ -n "${NETWORKS:-}" ] && args+=(-networks "$NETWORKS")
[ -n "${EXTRAS:-}" ] && args+=(-extras "$EXTRAS")
[ "${BENCH_QUICK:-}" = 1 ] && args+=(-quick)
[ "${BENCH_KEEP:-}" = 1 ] && args+=(-keep)
[ -n "${BENCH_SEED:-}" ] && args+=(-seed "$BENCH_SEED")
# One compound command, read whole before it runs: a script edited (or
# checked out anew) while the run goes is not read on from the middle.
{
	rc=0
	"$runner" "${args[@]}" "$@" || rc=$?
	exit "$rc"
}
