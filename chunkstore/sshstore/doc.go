// Package sshstore is the SSH chunk store: a client and a server that speak
// casync's remote protocol (HELLO, INDEX, REQUEST, CHUNK, MISSING, GOODBYE,
// ABORT; see casync's src/caprotocol.h) over an SSH exec of
// `casync pull - - - STORE` or `casync push - - INDEX STORE`, the commands
// casync and desync run for "host:/path" and "ssh://host/path" stores.
//
// The Server (golang.org/x/crypto/ssh) answers those commands for one
// chunkstore.Store, so stock casync and desync can read from it and
// `casync make --store=HOST:STORE HOST:INDEX` can write to it. It logs in
// with public keys from authorized_keys files only, never a password: one
// file for keys that read, another for keys that may also write. It
// verifies every chunk before sending it (a corrupt chunk is answered
// MISSING and logged, never sent) and before storing it.
// It bounds what one client can hold: sessions per key, per connection
// and in all, connections per key, logins in progress per address and in
// all, and times for the login, the HELLO and an idle session, with
// keepalives that drop a vanished peer (see ServerOptions).
//
// The Store is a chunkstore.FrameWriteStore client. It reads from any
// server that runs `casync pull`, ours or a host with casync installed,
// and writes to ours. It checks the host key against a known_hosts file,
// pipelines requests over one or more sessions, verifies every chunk
// against its ID and reconnects once when a session breaks. A write
// returns once the server has confirmed that the chunk is stored.
//
// Store is also a chunkstore.BatchHaser. Our server answers which of a
// batch of chunks it has in a query session: a `casync push` that names
// no index and whose HELLO pushes an index but no chunks, something stock
// casync never sends. The server REQUESTs the chunks of that index it
// lacks, the client answers MISSING to each, the server says GOODBYE and
// stores nothing. So a has-check moves no chunk data and needs no right
// to write. Other servers are asked chunk by chunk, by pulling each.
//
// The package depends on casync and chunkstore. Like chunkstore, it must
// not import desync, mkimage or the Docker client: boot links it.
package sshstore
