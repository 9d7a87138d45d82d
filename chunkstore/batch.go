package chunkstore

import (
	"context"
	"sync"

	"golang.org/x/sync/errgroup"

	"github.com/bootfs/bootfs/casync"
)

// Got is one chunk of a batch read (GetChunks): the chunk at Index in the
// caller's list of IDs, or why it could not be had.
type Got struct {
	// Index is the chunk's position in the IDs the caller asked for.
	Index int
	// Data is the verified, uncompressed chunk; nil when Err is set.
	Data []byte
	// Frame is the chunk's frame (zstd, .cacnk) as the store sent it,
	// already checked to decompress to Data, or nil if the store had no
	// frame to give: a cache writes it as is instead of compressing Data
	// again.
	Frame []byte
	// Err is what went wrong for this chunk alone: it wraps ErrNotFound,
	// a *casync.ChecksumError, or the transport's or context's error, as
	// GetChunk's would.
	Err error
}

// BatchGetter is a Store that gets many chunks in fewer requests than one
// per chunk: a batch read from our HTTP server, requests pipelined over
// one SSH session, one HTTP Range request over chunks that lie next to
// each other in a registry pack. Decorators pass it on.
type BatchGetter interface {
	// GetChunks gets every chunk of ids and calls fn exactly once for
	// each index of ids, as its chunk arrives, in any order, before it
	// returns. The calls of fn never overlap. A chunk that cannot be had
	// gives a Got with Err, and the others still come: one missing or
	// corrupt chunk never fails the batch. fn must neither keep nor
	// change Data or Frame after it returns (they may be reused for the
	// next chunk); copy what you keep.
	//
	// ids may repeat an ID; every index still gets its call. Callers
	// bound a batch's size (BatchChunks, BatchBytes).
	GetChunks(ctx context.Context, ids []casync.ChunkID, fn func(Got))
}

// BatchChunks and BatchBytes bound one batch read: readers split longer
// runs, and servers refuse bigger batches.
const (
	BatchChunks = 256
	BatchBytes  = 16 << 20
)

// batchParallel is how many GetChunk calls a decorator has in flight for
// a GetChunks call to a store that is not a BatchGetter.
const batchParallel = 16

// GetChunks gets ids from s: in one call if s is a BatchGetter, else with
// up to parallel GetChunk calls at once. Either way fn is called once for
// every index of ids, never concurrently, as BatchGetter.GetChunks says.
func GetChunks(ctx context.Context, s Store, ids []casync.ChunkID, parallel int, fn func(Got)) {
	if b, ok := s.(BatchGetter); ok {
		b.GetChunks(ctx, ids, fn)
		return
	}
	GetEach(ctx, s, ids, parallel, fn)
}

// GetEach gets ids from s one chunk per call, up to parallel calls at
// once, calling fn as GetChunks does: it is the batch read of a store
// that has none of its own.
func GetEach(ctx context.Context, s Store, ids []casync.ChunkID, parallel int, fn func(Got)) {
	var mu sync.Mutex
	g := new(errgroup.Group)
	g.SetLimit(max(parallel, 1))
	for i, id := range ids {
		g.Go(func() error {
			got := Got{Index: i}
			got.Data, got.Err = s.GetChunk(ctx, id)
			mu.Lock()
			defer mu.Unlock()
			fn(got)
			return nil
		})
	}
	g.Wait()
}
