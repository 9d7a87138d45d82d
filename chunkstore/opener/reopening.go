package opener

import (
	"context"
	"sync"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
)

// reopening is a member of a store list that could not be opened: every
// call tries to open it again, until that works. It passes on what the
// store it opens can do (frames, batch reads and has-checks) through the
// chunkstore helpers.
type reopening struct {
	loc chunkstore.Location
	b   *backends
	mu  sync.Mutex
	s   chunkstore.Store
}

var (
	_ chunkstore.FrameWriteStore = (*reopening)(nil)
	_ chunkstore.FrameStore      = (*reopening)(nil)
	_ chunkstore.BatchHaser      = (*reopening)(nil)
	_ chunkstore.BatchGetter     = (*reopening)(nil)
	_ chunkstore.Syncer          = (*reopening)(nil)
)

func (r *reopening) store(ctx context.Context) (chunkstore.Store, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.s != nil {
		return r.s, nil
	}
	s, err := r.b.open(ctx, r.loc)
	if err != nil {
		return nil, err
	}
	r.s = s
	return s, nil
}

// with runs f on the store, opening it first if need be.
func with[T any](r *reopening, ctx context.Context, f func(chunkstore.Store) (T, error)) (T, error) {
	s, err := r.store(ctx)
	if err != nil {
		var zero T
		return zero, err
	}
	return f(s)
}

func (r *reopening) GetChunk(ctx context.Context, id casync.ChunkID) ([]byte, error) {
	return with(r, ctx, func(s chunkstore.Store) ([]byte, error) { return s.GetChunk(ctx, id) })
}

func (r *reopening) GetFrame(ctx context.Context, id casync.ChunkID) ([]byte, error) {
	return with(r, ctx, func(s chunkstore.Store) ([]byte, error) { return chunkstore.GetFrame(ctx, s, id) })
}

func (r *reopening) HasChunk(ctx context.Context, id casync.ChunkID) (bool, error) {
	return with(r, ctx, func(s chunkstore.Store) (bool, error) { return s.HasChunk(ctx, id) })
}

func (r *reopening) HasChunks(ctx context.Context, ids []casync.ChunkID) ([]bool, error) {
	return with(r, ctx, func(s chunkstore.Store) ([]bool, error) { return chunkstore.HasChunks(ctx, s, ids, 16) })
}

func (r *reopening) GetChunks(ctx context.Context, ids []casync.ChunkID, fn func(chunkstore.Got)) {
	s, err := r.store(ctx)
	if err != nil {
		for i := range ids {
			fn(chunkstore.Got{Index: i, Err: err})
		}
		return
	}
	chunkstore.GetChunks(ctx, s, ids, 16, fn)
}

func (r *reopening) StoreChunk(ctx context.Context, id casync.ChunkID, data []byte) error {
	_, err := with(r, ctx, func(s chunkstore.Store) (struct{}, error) {
		return struct{}{}, chunkstore.Write(ctx, s, id, data)
	})
	return err
}

func (r *reopening) StoreFrame(ctx context.Context, id casync.ChunkID, frame []byte) error {
	_, err := with(r, ctx, func(s chunkstore.Store) (struct{}, error) {
		return struct{}{}, chunkstore.WriteFrame(ctx, s, id, frame)
	})
	return err
}

func (r *reopening) Sync(ctx context.Context) error {
	r.mu.Lock()
	s := r.s
	r.mu.Unlock()
	if s == nil {
		return nil // never opened: nothing written
	}
	return chunkstore.Sync(ctx, s)
}

// Local reports whether the store, once open, is local; a member that
// could not be opened yet is a remote one (only ssh stores open eagerly).
func (r *reopening) Local() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.s != nil && chunkstore.IsLocal(r.s)
}

func (r *reopening) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.s != nil {
		return r.s.Close()
	}
	return nil
}

func (r *reopening) String() string { return r.loc.String() }
