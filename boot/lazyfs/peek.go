package lazyfs

import (
	"errors"
	"fmt"
)

// Read-ahead's own reads of the archive: what ELF read-ahead parses.

// archiveSource is an elfSource of a file whose bytes are the archive's
// start..start+n, read with peekAt; head is its first bytes, once read.
type archiveSource struct {
	r        *Reader
	start, n int64
	head     []byte
}

func (s *archiveSource) size() int64 { return s.n }

func (s *archiveSource) readAt(p []byte, off int64) error {
	if off < 0 || off > s.n || int64(len(p)) > s.n-off {
		return fmt.Errorf("read %d bytes at offset %d of a %d-byte file: out of range", len(p), off, s.n)
	}
	if off+int64(len(p)) <= int64(len(s.head)) {
		copy(p, s.head[off:])
		return nil
	}
	return s.r.peekAt(p, s.start+off)
}

// errNotInMemory is peekAt's error for a chunk that was evicted before
// it could be copied.
var errNotInMemory = errors.New("chunk not in memory")

// peekAt copies the archive's bytes at off into p for read-ahead's own
// use: from memory, waiting for the loads that bring them, and fetching
// as read-ahead those neither in memory nor on their way. It is not a
// read: it counts as none, and leaves what it fetched unread.
func (r *Reader) peekAt(p []byte, off int64) error {
	if off < 0 || off > r.size || int64(len(p)) > r.size-off {
		return fmt.Errorf("boot: peek %d bytes at offset %d: out of range", len(p), off)
	}
	if len(p) == 0 {
		return nil
	}
	r.fetchAhead(off, off+int64(len(p)))
	first := r.idx.ChunkAt(uint64(off))
	last := r.idx.ChunkAt(uint64(off) + uint64(len(p)) - 1)
	n := 0
	for i := first; i <= last; i++ {
		c := &r.idx.Chunks[i]
		b, err := r.peekChunk(i)
		if err != nil {
			return err
		}
		lo := uint64(off) + uint64(n) - c.Start
		n += copy(p[n:], b.data[lo:])
		b.release()
	}
	return nil
}

// peekChunk returns chunk i, holding a reference, once it is in memory.
func (r *Reader) peekChunk(i int) (*chunkBuf, error) {
	id := r.idx.Chunks[i].ID
	for range 4 {
		if b, ok := r.lru.acquire(id); ok {
			return b, nil
		}
		r.loadsMu.Lock()
		l := r.loads[id]
		r.loadsMu.Unlock()
		if l == nil {
			// Evicted before its turn, or failed: once more.
			r.fetchAhead(int64(r.idx.Chunks[i].Start), int64(r.idx.Chunks[i].Start+1))
			continue
		}
		select {
		case <-l.done:
		case <-r.ctx.Done():
			return nil, r.ctx.Err()
		}
		if l.err != nil && l.next == nil {
			return nil, l.err
		}
	}
	return nil, errNotInMemory
}

// waitLoads waits for the loads of items to end; false if the Reader
// closed first.
func (r *Reader) waitLoads(items []batchItem) bool {
	for _, it := range items {
		select {
		case <-it.l.done:
		case <-r.ctx.Done():
			return false
		}
	}
	return true
}
