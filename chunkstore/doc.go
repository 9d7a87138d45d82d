// Package chunkstore holds content-addressed chunk stores in casync's layout
// (<store>/<first 4 hex>/<64 hex id>.cacnk, each file a zstd frame) behind
// one small interface. Backends (a local directory, an HTTP remote, and
// the SSH client in sshstore) make one attempt per call; decorators do the
// rest, each in its own file: Retry (backoff and a per-attempt timeout),
// Counted (the one place that counts), Failover over several stores, and
// the node-shared Cache. Every decorator passes the optional interfaces on
// (frames, batch has-checks, Sync). The opener subpackage composes them
// from a store URL list; the package also has the HTTP and SSH servers
// that serve a local store.
//
// It depends on casync for chunk IDs and frames. It must not import desync,
// mkimage or the Docker client: boot links it.
package chunkstore
