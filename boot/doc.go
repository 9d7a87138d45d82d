// Package boot is the init of a converted image, the program that runs as
// a bootfs container's PID 1:
//
//   - Init checks /dev/fuse and the privilege to mount, reads the config,
//     mounts the image with boot/lazyfs, puts an overlay over it, binds
//     /proc, /dev, /sys and Docker's mounts into it (rootfs.go, volume.go),
//     makes it the root of the container's own mount namespace, so that
//     docker exec lands in it, starts the workload there (workload.go),
//     then forwards signals as a PID 1 would get them (signals.go), reaps
//     and returns the workload's exit status.
//     Started setuid root by docker run --user (see Caller), it becomes
//     root for its own work and runs the workload as that user.
//   - With the node agent's socket at /run/bootfs (agentmode.go), Init
//     asks the agent (boot/agent) to make the image this container's root
//     instead, and then execs the workload in its own place.
//   - RunWorkload is the workload process's side: the image's user and
//     groups (user.go), the working directory, exec.
//
// The lazy filesystem itself (`boot mount` too) is boot/lazyfs.
//
// boot ships inside every converted image as a small static binary. It
// depends on boot/lazyfs, boot/agent (for its client), casync, chunkstore
// and internal helpers only; it must never import desync, mkimage or the
// Docker client, and neither boot/lazyfs nor boot/agent imports it.
package boot
