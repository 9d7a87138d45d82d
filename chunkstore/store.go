package chunkstore

import (
	"context"
	"errors"
	"fmt"
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

// hasParallel is how many HasChunk calls a decorator has in flight for a
// HasChunks call to a store that is not a BatchHaser.
const hasParallel = 16

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

// Syncer is a store that may write to this machine's file system, and can
// make what it wrote durable at once, so that a writer can skip an fsync
// per chunk (LocalOptions.NoSync) and sync once at the end. Decorators
// pass it on: Local reports whether the store behind them writes
// locally.
type Syncer interface {
	// Local reports whether chunks stored go to this machine's file
	// system, so that storing them costs CPU and disk rather than
	// network round trips.
	Local() bool
	// Sync makes every chunk stored so far durable; it does nothing if
	// the store is not Local.
	Sync(ctx context.Context) error
}

// IsLocal reports whether s stores chunks in this machine's file system.
func IsLocal(s Store) bool {
	sy, ok := s.(Syncer)
	return ok && sy.Local()
}

// Sync makes the chunks written to s durable if s is a Syncer, and does
// nothing otherwise.
func Sync(ctx context.Context, s Store) error {
	if sy, ok := s.(Syncer); ok {
		return sy.Sync(ctx)
	}
	return nil
}

// Committer is a store that publishes the chunks written to it only when
// told which chunks an image needs, in the index's order: a registry
// repository (chunkstore/registry), which packs them and writes their
// chunk map. Commit returns the store URL that a reader of that image
// should open (the repository with its map pinned). Decorators pass it
// on; a failover list cannot, so a Committer is written alone.
type Committer interface {
	Commit(ctx context.Context, ids []casync.ChunkID) (string, error)
}

// Commit commits ids to s if s is a Committer and returns the URL it
// gives; for any other store, whose chunks are readable as soon as they
// are stored, it does nothing and returns "".
func Commit(ctx context.Context, s Store, ids []casync.ChunkID) (string, error) {
	if c, ok := s.(Committer); ok {
		return c.Commit(ctx, ids)
	}
	return "", nil
}

// GetFrame returns the chunk frame of id from s: as stored if s is a
// FrameStore, else compressed here from GetChunk.
func GetFrame(ctx context.Context, s Store, id casync.ChunkID) ([]byte, error) {
	if fs, ok := s.(FrameStore); ok {
		return fs.GetFrame(ctx, id)
	}
	data, err := s.GetChunk(ctx, id)
	if err != nil {
		return nil, err
	}
	return casync.CompressChunk(nil, data), nil
}

// storeChunk stores data in s, which must be a WriteStore.
func Write(ctx context.Context, s Store, id casync.ChunkID, data []byte) error {
	ws, ok := s.(WriteStore)
	if !ok {
		return fmt.Errorf("store chunk %s in %s: %w", id, Name(s), ErrReadOnly)
	}
	return ws.StoreChunk(ctx, id, data)
}

// storeFrame stores frame in s as StoreFrame does, for a decorator that
// does not know the digest: a frame that does not decompress gives a
// *casync.ChecksumError without Got.
func WriteFrame(ctx context.Context, s Store, id casync.ChunkID, frame []byte) error {
	if fws, ok := s.(FrameWriteStore); ok {
		return fws.StoreFrame(ctx, id, frame)
	}
	if _, ok := s.(WriteStore); !ok {
		return Write(ctx, s, id, nil)
	}
	data, err := casync.DecompressChunk(nil, frame)
	if err != nil {
		return fmt.Errorf("%w (%w)", &casync.ChecksumError{Want: id}, err)
	}
	return Write(ctx, s, id, data)
}

// Name returns what s calls itself in messages: its String method, or its
// type.
func Name(s Store) string {
	if st, ok := s.(fmt.Stringer); ok {
		return st.String()
	}
	return fmt.Sprintf("%T", s)
}

// forward is the part of every decorator that passes the optional
// interfaces on to the store it wraps.
type forward struct{ s Store }

// String names the wrapped store.
func (f forward) String() string { return Name(f.s) }

// Local reports whether the wrapped store is local.
func (f forward) Local() bool { return IsLocal(f.s) }

// Sync syncs the wrapped store if it is a Syncer.
func (f forward) Sync(ctx context.Context) error { return Sync(ctx, f.s) }

// Commit commits ids to the wrapped store if it is a Committer.
func (f forward) Commit(ctx context.Context, ids []casync.ChunkID) (string, error) {
	return Commit(ctx, f.s, ids)
}

// Close closes the wrapped store.
func (f forward) Close() error { return f.s.Close() }

func isNotFound(err error) bool { return errors.Is(err, ErrNotFound) }
