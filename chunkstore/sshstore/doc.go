// Package sshstore is the SSH chunk store: a client and a server that speak
// casync's remote protocol (HELLO, REQUEST, CHUNK, MISSING, GOODBYE, ABORT;
// see casync's src/caprotocol.h) over an SSH exec of
// `casync pull - - - STORE`, the command casync and desync run for
// "host:/path" and "ssh://host/path" stores.
//
// The Server (golang.org/x/crypto/ssh) answers that command for one
// chunkstore.Store, so stock casync and desync can read from it. It logs in
// with public keys from an authorized_keys file only, never a password, and
// it verifies every chunk before sending it: a corrupt chunk is answered
// MISSING and logged, never sent.
//
// The Store is a chunkstore.Store client for any server that runs the
// command, ours or a host with casync installed. It checks the host key
// against a known_hosts file, pipelines requests over one or more
// sessions, verifies every chunk against its ID and reconnects once when a
// session breaks.
//
// The package depends on casync and chunkstore. Like chunkstore, it must
// not import desync, mkimage or the Docker client: boot links it.
package sshstore
