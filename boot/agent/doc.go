// Package agent is bootfs's node agent (bootfs-agent): one process per
// node that serves the lazy root filesystem of every converted container,
// so the containers need no privilege, no /dev/fuse and no seccomp or
// AppArmor exception.
//
// boot, as a container's PID 1, connects to the agent's Unix socket
// (SOCK_SEQPACKET, one JSON message each way: Request, Reply; MountRoot
// is the client). The agent
//
//   - identifies the caller by the socket's peer pidfd (SO_PEERPIDFD), so
//     no PID can be reused in between, and acts only for it: root in its
//     container, in a mount namespace of its own;
//   - reads the image's config, index and TOC through the caller's root,
//     every path resolved inside it (openat2 RESOLVE_IN_ROOT, no magic
//     links, regular files only, size limits), and checks the index and
//     TOC against the config's digests;
//   - reads chunks only from its own stores (Options.Open), never
//     from the store an image's config names, through one node cache and
//     one in-memory LRU shared by every mount;
//   - makes the FUSE mount (fsopen, fsmount: detached, never in the
//     agent's mount table), the overlay over it (layers given by fd) and
//     serves FUSE on its /dev/fuse fd (lazyfs.FS.NewFDServer);
//   - enters the caller's mount namespace on a thread of its own, attaches
//     the overlay, clones the caller's /proc, /dev, /sys and Docker's
//     mounts into it, and pivot_roots that namespace: boot then execs the
//     workload, which becomes PID 1 as in a plain container;
//   - drops a mount when its FUSE connection ends, which the kernel does
//     when the container's namespace goes; if the caller has exited and the
//     namespace lingers, it aborts the connection.
//
// The agent runs as a holder (RunHolder), which owns the socket and every
// mount's /dev/fuse fd, and a worker (Agent with Options.Holder), which
// serves them and is restarted under running containers: see holder.go.
//
// agent depends on boot/lazyfs, casync, chunkstore and internal helpers;
// it must never import boot (the container's init, which imports it for
// the client), mkimage, desync or the Docker client.
package agent
