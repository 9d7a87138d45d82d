// Package casync reads and writes casync's formats: catar archives, caidx and
// caibx indexes, chunk frames, and the bootfs TOC, a compact metadata index of
// a catar. It also cuts byte streams into content-defined chunks with
// casync's buzhash or restic's Rabin chunker.
//
// The package is pure format code. It reads from io.Reader and io.ReaderAt
// and writes to io.Writer; it does no network I/O and depends on no other
// bootfs package. Its output is kept byte-exact with the real casync binary
// by tests that use casync as the oracle.
package casync
