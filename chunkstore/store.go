package chunkstore

import (
	"context"
	"errors"
	"io"

	"github.com/bootfs/bootfs/casync"
)

// ErrNotFound is wrapped by errors for chunks a store does not have.
var ErrNotFound = errors.New("chunkstore: chunk not found")

// Store is a content-addressed chunk store. Implementations are safe for
// concurrent use.
type Store interface {
	// GetChunk returns the verified, uncompressed chunk, or an error
	// wrapping ErrNotFound if the store does not have it. A chunk whose
	// content does not match id gives an error wrapping
	// *casync.ChecksumError, never the bad bytes.
	GetChunk(ctx context.Context, id casync.ChunkID) ([]byte, error)
	// HasChunk reports whether the store holds id.
	HasChunk(ctx context.Context, id casync.ChunkID) (bool, error)
	io.Closer
}

// WriteStore is a Store that can also store chunks.
type WriteStore interface {
	Store
	// StoreChunk stores the uncompressed chunk data under id. It verifies
	// data against id first. Storing a chunk the store already has is not
	// an error. The chunk becomes visible to readers whole or not at all.
	StoreChunk(ctx context.Context, id casync.ChunkID, data []byte) error
}
