// Package lazyfs is bootfs's lazy read-only filesystem: it serves a catar
// archive, described by a caidx index and a TOC, as a FUSE filesystem
// whose file contents are fetched chunk by chunk from a chunk store as
// they are read.
//
//   - Reader is an io.ReaderAt over the archive made from the index and a
//     chunkstore.Store: parallel, bounded fetches, a small in-memory LRU of
//     chunks, read-ahead. Retries, timeouts, counting and the cache are
//     the store's decorators (chunkstore/opener composes them); the
//     Reader makes one call per chunk it needs.
//   - FS is the FUSE tree, served over FUSE's raw protocol. Metadata
//     (lookup, getattr, readdir, readlink, xattrs) is answered from the TOC
//     in memory, never from the network; file reads go through a Reader.
//     A read of an ELF program's head starts the read-ahead of the
//     libraries ld.so will load next, found in the TOC (elfahead.go).
//   - Image (OpenImage) is an index opened with its TOC and Reader over
//     the store its Opener opens, with its Stats; PrefetchList and
//     Image.FillCache fetch ahead of the reads.
//   - Recorder lists the files a workload read and the 64 KiB blocks of
//     each it read, for mkimage --prefetch; ReadPathList and
//     PrefetchPaths read such a list and prefetch the chunks that hold it.
//   - RunMount is `boot mount`: open the image, mount, serve until the
//     context ends, unmount.
//
// One process may serve many mounts: the package keeps no state of its
// own outside the values it returns (the chunk buffer pool is shared and
// safe for that), so each Image, Reader and FS is independent.
//
// lazyfs ships inside every converted image, in boot. It depends on
// casync, chunkstore (with chunkstore/opener's Opened, the store it is
// handed), internal/atomicfile, internal/inputfile and
// internal/prefetchlist (the list's format) only; it never sees
// store URLs, credentials or the environment, and must never import
// boot (which imports it), mkimage, desync or the Docker client.
package lazyfs
