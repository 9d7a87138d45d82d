package chunkstore

import (
	"context"

	"github.com/bootfs/bootfs/casync"
)

// Counted counts the calls to the store it wraps and what they moved, in
// Stats. It is the one place where store calls are counted: backends and
// the other decorators count nothing (a Cache counts only its directory's
// hits). The opener puts one around the retried remote, so that Requests
// are the calls made of it and Retries the attempts repeated under it.
type Counted struct {
	forward
	c counters
}

var (
	_ FrameWriteStore = (*Counted)(nil)
	_ FrameStore      = (*Counted)(nil)
	_ BatchHaser      = (*Counted)(nil)
	_ BatchGetter     = (*Counted)(nil)
	_ Syncer          = (*Counted)(nil)
	_ Committer       = (*Counted)(nil)
	_ StatsReporter   = (*Counted)(nil)
)

// NewCounted returns s with its calls counted.
func NewCounted(s Store) *Counted { return &Counted{forward: forward{s}} }

// Stats returns the counters.
func (c *Counted) Stats() Stats { return c.c.snapshot() }

// CountRetry counts one repeated attempt; it is Retry's OnRetry.
func (c *Counted) CountRetry() { c.c.retries.Add(1) }

// GetChunk gets the chunk from the wrapped store.
func (c *Counted) GetChunk(ctx context.Context, id casync.ChunkID) ([]byte, error) {
	c.c.requests.Add(1)
	data, err := c.s.GetChunk(ctx, id)
	c.c.done(true, err)
	c.c.bytes.Add(uint64(len(data)))
	return data, err
}

// GetFrame gets the chunk's frame from the wrapped store (see GetFrame).
func (c *Counted) GetFrame(ctx context.Context, id casync.ChunkID) ([]byte, error) {
	c.c.requests.Add(1)
	frame, err := GetFrame(ctx, c.s, id)
	c.c.done(true, err)
	c.c.wireBytes.Add(uint64(len(frame)))
	return frame, err
}

// GetChunks gets the chunks from the wrapped store, in one call if it is
// a BatchGetter: each chunk counts as a request, as a GetChunk would,
// and the call as one batch.
func (c *Counted) GetChunks(ctx context.Context, ids []casync.ChunkID, fn func(Got)) {
	c.c.batches.Add(1)
	c.c.requests.Add(uint64(len(ids)))
	GetChunks(ctx, c.s, ids, batchParallel, func(g Got) {
		c.c.done(true, g.Err)
		c.c.bytes.Add(uint64(len(g.Data)))
		c.c.wireBytes.Add(uint64(len(g.Frame)))
		fn(g)
	})
}

// HasChunk asks the wrapped store.
func (c *Counted) HasChunk(ctx context.Context, id casync.ChunkID) (bool, error) {
	c.c.requests.Add(1)
	ok, err := c.s.HasChunk(ctx, id)
	c.c.done(ok, err)
	return ok, err
}

// HasChunks asks the wrapped store about every id, in one call if it is a
// BatchHaser; each id counts as a request.
func (c *Counted) HasChunks(ctx context.Context, ids []casync.ChunkID) ([]bool, error) {
	c.c.requests.Add(uint64(len(ids)))
	has, err := HasChunks(ctx, c.s, ids, hasParallel)
	if err != nil {
		c.c.done(false, err)
		return nil, err
	}
	for _, ok := range has {
		c.c.done(ok, nil)
	}
	return has, nil
}

// StoreChunk stores the chunk in the wrapped store, which must be a
// WriteStore.
func (c *Counted) StoreChunk(ctx context.Context, id casync.ChunkID, data []byte) error {
	c.c.requests.Add(1)
	err := Write(ctx, c.s, id, data)
	if err != nil {
		c.c.done(false, err)
		return err
	}
	c.c.bytes.Add(uint64(len(data)))
	return nil
}

// StoreFrame stores the frame in the wrapped store (see StoreFrame).
func (c *Counted) StoreFrame(ctx context.Context, id casync.ChunkID, frame []byte) error {
	c.c.requests.Add(1)
	err := WriteFrame(ctx, c.s, id, frame)
	if err != nil {
		c.c.done(false, err)
		return err
	}
	c.c.wireBytes.Add(uint64(len(frame)))
	return nil
}
