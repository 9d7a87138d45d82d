// Package chunkstore holds content-addressed chunk stores in casync's layout
// (<store>/<first 4 hex>/<64 hex id>.cacnk, each file a zstd frame) behind
// one small interface: a local directory, an HTTP or SSH remote, the
// node-shared cache, and failover over several of them. It also has the
// HTTP and SSH servers that serve a local store.
//
// It depends on casync for chunk IDs and frames. It must not import desync,
// mkimage or the Docker client: boot links it.
package chunkstore
