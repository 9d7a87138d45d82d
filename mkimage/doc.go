// Package mkimage converts a container root filesystem into bootfs form: a
// casync catar archive cut into content-defined chunks that go to a
// deduplicating chunk store, a caidx index of those chunks, and a TOC of
// the archive's metadata.
//
// The rootfs streams through the catar encoder, the chunker, the hashers
// and the store upload with bounded memory; it is never extracted to disk.
// mkimage depends on casync and chunkstore. It must never be imported by
// boot.
package mkimage
