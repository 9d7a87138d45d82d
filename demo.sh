#!/usr/bin/env bash
# make demo: the whole bootfs path on one machine, end to end.
#
#  1. builds the binaries (make build did),
#  2. makes a local Debian image with python3 (debootstrap, cached), or
#     uses $DEMO_IMAGE,
#  3. converts it with mkimage into a chunk store and a boot image,
#  4. serves the store with chunkstore serve on 127.0.0.1,
#  5. runs the boot image twice with a shared cache volume and shows, for
#     each run, the time to first output and what was fetched.
set -euo pipefail
cd "$(dirname "$0")"

die() { echo "demo: $*" >&2; exit 1; }
docker info >/dev/null 2>&1 || die "no Docker engine answers (start one: dockerd --bridge=none --iptables=false --ip-masq=false &)"
[ -c /dev/fuse ] || die "/dev/fuse is missing (modprobe fuse; apt-get install fuse3)"
[ "$(id -u)" = 0 ] || die "run as root: the demo starts containers that mount FUSE"

work=${DEMO_DIR:-/tmp/bootfs-demo}
port=${DEMO_PORT:-18080}
mkdir -p "$work/stats"
store=$work/store

image=${DEMO_IMAGE:-}
cmd=(python3 -c 'import json, sqlite3; print("hello from python", json.dumps({"sqlite": sqlite3.sqlite_version}))')
if [ -z "$image" ]; then
	image=bootfs-demo/python:latest
	if ! docker image inspect "$image" >/dev/null 2>&1; then
		root=$(bench/rootfs.sh python python3)
		echo "demo: importing $root as $image"
		tar --numeric-owner -C "$root" -c . | docker import -c 'CMD ["python3"]' - "$image" >/dev/null
	fi
else
	cmd=()
fi
target=${image%%:*}:bootfs

echo "== convert $image"
bin/mkimage --store "$store" --runtime-store "http://127.0.0.1:$port" "$image" "$target"

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }
echo "== serve $store on 127.0.0.1:$port"
# Another server on the port would answer in the store's place, with
# none of its chunks.
listening && die "something already listens on 127.0.0.1:$port; stop it or set DEMO_PORT to a free port"
bin/chunkstore serve --dir "$store" --http "127.0.0.1:$port" --log-level warn &
server=$!
trap 'kill $server 2>/dev/null; docker volume rm -f bootfs-demo-cache >/dev/null 2>&1 || true' EXIT
for _ in $(seq 50); do listening && break; kill -0 "$server" 2>/dev/null || break; sleep 0.1; done
kill -0 "$server" 2>/dev/null || die "chunkstore serve exited (its error is above)"
listening || die "chunkstore serve does not answer on 127.0.0.1:$port after 5 s"

# The flags a boot image needs. --privileged is the simple form; where the
# engine cannot grant every capability, SYS_ADMIN with seccomp and
# AppArmor unconfined does the same for FUSE and overlayfs.
flags=(--privileged --device /dev/fuse)
if ! docker run --rm --pull never --network none "${flags[@]}" --entrypoint /.bootfs/boot "$target" help >/dev/null 2>&1; then
	flags=(--cap-add SYS_ADMIN --device /dev/fuse --security-opt seccomp=unconfined --security-opt apparmor=unconfined)
fi

docker volume rm -f bootfs-demo-cache >/dev/null 2>&1 || true
docker volume create bootfs-demo-cache >/dev/null
size=$(docker image inspect -f '{{.Size}}' "$image")
shopt -s lastpipe # the loop below sets first in this shell
for run in 1 2; do
	rm -f "$work/stats/run.json"
	start=$(date +%s%N)
	first=""
	if ! docker run --rm --pull never --network host "${flags[@]}" \
		-v bootfs-demo-cache:/.bootfs/cache -v "$work/stats:/stats" -e BOOTFS_STATS=/stats/run.json \
		"$target" "${cmd[@]}" 2>&1 |
		while IFS= read -r line; do
			[ -z "$first" ] && first=$(( ($(date +%s%N) - start) / 1000000 ))
			echo "   | $line"
		done; then
		die "run $run of $target failed (its output is above)"
	fi
	fetched=$(sed -n 's/.*"bytes_fetched": *\([0-9]*\).*/\1/p' "$work/stats/run.json")
	chunks=$(sed -n 's/.*"chunks_fetched": *\([0-9]*\).*/\1/p' "$work/stats/run.json")
	hits=$(sed -n 's/.*"cache_hits": *\([0-9]*\).*/\1/p' "$work/stats/run.json")
	printf 'run %d: first output after %s ms; fetched %s chunks, %s bytes (%s%% of the %s-byte image); %s cache hits\n' \
		"$run" "${first:-?}" "${chunks:-?}" "${fetched:-?}" \
		"$(awk -v f="${fetched:-0}" -v s="$size" 'BEGIN { printf "%.1f", 100*f/s }')" "$size" "${hits:-?}"
done
