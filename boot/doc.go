// Package boot is the run-time side of bootfs: it serves a catar archive,
// described by a caidx index and a TOC, as a read-only FUSE filesystem whose
// file contents are fetched lazily, chunk by chunk, from a chunk store.
//
//   - Reader is an io.ReaderAt over the archive made from the index and a
//     chunkstore.Store: parallel, bounded fetches, a small in-memory LRU of
//     chunks, read-ahead, retries with backoff and per-fetch timeouts.
//   - FS is the FUSE tree. Metadata (lookup, getattr, readdir, readlink,
//     xattrs) is answered from the TOC in memory, never from the network;
//     file reads go through a Reader.
//   - RunMount is `boot mount`: open the index, store and TOC, mount, serve
//     until the context ends, unmount.
//   - Init is the init of a converted image: FUSE, overlay, binds, the
//     workload in its own mount and PID namespaces, signals, reaping.
//     Started setuid root by docker run --user (see Caller), it becomes
//     root for its own work and runs the workload as that user.
//   - Exec is `boot exec`: a command in a running workload's namespaces.
//   - Recorder lists the files a workload read, for mkimage --prefetch.
//
// boot ships inside every converted image as a small static binary. It
// depends on casync and chunkstore only; it must never import desync,
// mkimage or the Docker client.
package boot
