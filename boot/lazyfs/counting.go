package lazyfs

import (
	"context"
	"fmt"
	"sync/atomic"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
)

// counting wraps the remote store to count what crosses the network: the
// chunks received and their bytes as stored. Frames from a FrameStore
// (local, HTTP) are counted as they come and handed to a Cache without
// recompressing; for other stores the byte count is the store's own
// WireBytes if it reports one (ssh), else the chunks' uncompressed size.
type counting struct {
	chunkstore.Store
	chunks, bytes atomic.Uint64
}

var _ chunkstore.FrameStore = (*counting)(nil)

func (c *counting) GetFrame(ctx context.Context, id casync.ChunkID) ([]byte, error) {
	if fs, ok := c.Store.(chunkstore.FrameStore); ok {
		frame, err := fs.GetFrame(ctx, id)
		if err != nil {
			return nil, err
		}
		c.chunks.Add(1)
		c.bytes.Add(uint64(len(frame)))
		return frame, nil
	}
	data, err := c.GetChunk(ctx, id)
	if err != nil {
		return nil, err
	}
	return casync.CompressChunk(nil, data), nil
}

func (c *counting) GetChunk(ctx context.Context, id casync.ChunkID) ([]byte, error) {
	if _, ok := c.Store.(chunkstore.FrameStore); !ok {
		data, err := c.Store.GetChunk(ctx, id)
		if err == nil {
			c.chunks.Add(1)
			c.bytes.Add(uint64(len(data)))
		}
		return data, err
	}
	frame, err := c.GetFrame(ctx, id)
	if err != nil {
		return nil, err
	}
	data, err := casync.DecompressChunk(nil, frame)
	if err != nil {
		return nil, fmt.Errorf("decompress chunk %s from %s: %w", id, c, err)
	}
	return data, nil
}

// fetched returns the chunks and bytes received from the store.
func (c *counting) fetched() (chunks, bytes uint64) {
	chunks, bytes = c.chunks.Load(), c.bytes.Load()
	if _, ok := c.Store.(chunkstore.FrameStore); !ok {
		if sr, ok := c.Store.(chunkstore.StatsReporter); ok {
			bytes = sr.Stats().WireBytes
		}
	}
	return chunks, bytes
}

// String names the wrapped store.
func (c *counting) String() string {
	if s, ok := c.Store.(fmt.Stringer); ok {
		return s.String()
	}
	return fmt.Sprintf("%T", c.Store)
}
