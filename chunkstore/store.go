package chunkstore

import (
	"context"
	"errors"
	"io"

	"golang.org/x/sync/errgroup"

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

// BatchHaser is a Store that can answer HasChunk for many chunks at once
// more cheaply than one call per chunk.
type BatchHaser interface {
	// HasChunks reports, for each of ids, whether the store holds it.
	HasChunks(ctx context.Context, ids []casync.ChunkID) ([]bool, error)
}

// HasChunks reports, for each of ids, whether s holds it: in one call if
// s is a BatchHaser, else with up to parallel HasChunk calls at once, so
// that a remote store's round trips overlap instead of adding up. The
// first error stops the rest and is returned.
func HasChunks(ctx context.Context, s Store, ids []casync.ChunkID, parallel int) ([]bool, error) {
	if b, ok := s.(BatchHaser); ok {
		return b.HasChunks(ctx, ids)
	}
	return HasEach(ctx, ids, parallel, s.HasChunk)
}

// HasEach reports, for each of ids, what has says of it, with up to
// parallel calls of has at once. The first error stops the rest and is
// returned, with no answers.
func HasEach(ctx context.Context, ids []casync.ChunkID, parallel int, has func(context.Context, casync.ChunkID) (bool, error)) ([]bool, error) {
	out := make([]bool, len(ids))
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(max(parallel, 1))
	for i, id := range ids {
		g.Go(func() error {
			ok, err := has(ctx, id)
			out[i] = ok
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return out, nil
}
