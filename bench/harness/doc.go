// Package harness measures bootfs side by side with what a user would run
// instead: a docker pull from a registry on 127.0.0.1 (Debian's
// docker-registry), `casync mount` of the same tree with a chroot, and
// bootfs cold, warm and with a prefetch list. It builds the images (bench/rootfs.sh and docker import),
// converts them, serves the stores on 127.0.0.1 behind shaping proxies
// (package shaper) that share one link per network condition, runs every workload from a
// cold state in a shuffled order, and writes a Markdown report and PNG
// charts. It also measures conversion throughput, store size and dedup,
// buzhash against Rabin, and FUSE metadata and read throughput.
//
// The harness drives the built binaries (mkimage, boot, chunkstore), the
// real casync and the Docker CLI; it is benchmark tooling and nothing that
// boot or mkimage links may import it. Run it with bench/run.sh.
package harness
