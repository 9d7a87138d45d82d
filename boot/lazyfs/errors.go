package lazyfs

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/bootfs/bootfs/casync"
)

// ErrUnavailable is wrapped by errors for chunks that could not be had: a
// chunk the store does not have, one that failed verification, or a fetch
// that failed or timed out on every attempt.
var ErrUnavailable = errors.New("boot: chunk unavailable")

// ErrMismatch is wrapped by errors about an index, a TOC and an archive
// that do not belong together.
var ErrMismatch = errors.New("boot: index and TOC do not match")

// ChunkError is the error of a read that needed a chunk it could not get.
// It wraps ErrUnavailable and the store's error.
type ChunkError struct {
	// Index is the chunk's position in the index, Offset where it starts
	// in the archive.
	Index  int
	Offset uint64
	ID     casync.ChunkID
	// Store names the store it was fetched from.
	Store string
	// Attempts is how many fetches were tried.
	Attempts int
	Err      error
}

func (e *ChunkError) Error() string {
	hint := "is the store the one the index was made with, and reachable?"
	var cv *tls.CertificateVerificationError
	var ua x509.UnknownAuthorityError
	if errors.As(e.Err, &cv) || errors.As(e.Err, &ua) {
		hint = "the https store's certificate is not trusted: give its CA certificate with BOOTFS_CA_FILE, or boot mount --ca-file"
	}
	return fmt.Sprintf("chunk %s (#%d at archive offset %d) from %s, %d attempt(s): %v (%s)",
		e.ID, e.Index, e.Offset, e.Store, e.Attempts, e.Err, hint)
}

// Unwrap returns ErrUnavailable and the underlying error, so errors.Is
// finds either.
func (e *ChunkError) Unwrap() []error { return []error{ErrUnavailable, e.Err} }
