package casync

import (
	"context"
	"fmt"
	"io"

	"golang.org/x/sync/errgroup"
)

// Chunk is one chunk of a stream, as Split emits it.
type Chunk struct {
	// Start is the chunk's offset in the stream, Size its length.
	Start, Size uint64
	// ID is the digest of Data.
	ID ChunkID
	// Data is the chunk's content. It is valid only during the call to
	// emit: Split reuses the buffer afterwards. Copy it to keep it.
	Data []byte
}

// Split cuts r into chunks with opts.Chunker, hashes them with opts.Digest
// on opts.Jobs goroutines, and calls emit for each chunk, one call at a
// time, strictly in stream order. The chunks and their order never depend
// on Jobs or GOMAXPROCS.
//
// At most 2*Jobs+2 chunks are in memory at once, in buffers that Split
// reuses, so memory stays bounded whatever the length of r.
//
// Split stops at the first error: from r, from emit (returned as is), or
// the cancellation of ctx. It returns only when all its goroutines have
// ended. A Read of r that blocks is not interrupted; Split returns once
// it comes back.
func Split(ctx context.Context, r io.Reader, opts ChunkOptions, emit func(Chunk) error) error {
	ck, err := NewChunker(r, opts)
	if err != nil {
		return err
	}
	jobs := opts.jobs()
	size := opts.Size.withDefaults()
	inFlight := 2 * jobs

	// A job is a reusable slot that carries one chunk from the chunker,
	// through a hashing worker, to emit. All slots are made up front; a
	// slot is back in free once emit has returned for its chunk.
	type job struct {
		c    Chunk
		done chan struct{} // receives once c.ID is set
	}
	free := make(chan *job, inFlight+2)
	for range cap(free) {
		free <- &job{done: make(chan struct{}, 1)}
	}
	work := make(chan *job, inFlight)
	order := make(chan *job, inFlight)

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		defer close(work)
		defer close(order)
		var off uint64
		for {
			if err := ctx.Err(); err != nil {
				return err
			}
			data, err := ck.Next()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return fmt.Errorf("chunking: reading at offset %d: %w", off, err)
			}
			var j *job
			select {
			case j = <-free:
			case <-ctx.Done():
				return ctx.Err()
			}
			if cap(j.c.Data) < int(size.Max) {
				j.c.Data = make([]byte, 0, size.Max)
			}
			j.c = Chunk{Start: off, Size: uint64(len(data)), Data: append(j.c.Data[:0], data...)}
			off += j.c.Size
			// order has room for every job that work has, so this
			// send blocks no longer than the next one would.
			select {
			case order <- j:
			case <-ctx.Done():
				return ctx.Err()
			}
			select {
			case work <- j:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	})
	for range jobs {
		g.Go(func() error {
			for j := range work {
				if ctx.Err() == nil { // else nobody waits for the ID
					j.c.ID = opts.Digest.Sum(j.c.Data)
				}
				j.done <- struct{}{}
			}
			return nil
		})
	}
	g.Go(func() error {
		for j := range order {
			select {
			case <-j.done:
			case <-ctx.Done():
				return ctx.Err()
			}
			if err := emit(j.c); err != nil {
				return err
			}
			free <- j
		}
		return nil
	})
	return g.Wait()
}

// BuildIndex splits r as Split does and returns the index of its chunks,
// with flags as NewIndex takes them. emit, if not nil, also sees every
// chunk, for example to store it.
func BuildIndex(ctx context.Context, r io.Reader, flags uint64, opts ChunkOptions, emit func(Chunk) error) (*Index, error) {
	x := NewIndex(flags, opts)
	err := Split(ctx, r, opts, func(c Chunk) error {
		if err := x.Add(c); err != nil {
			return err
		}
		if emit != nil {
			return emit(c)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return x, nil
}
