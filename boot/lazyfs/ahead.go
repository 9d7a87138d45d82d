package lazyfs

import (
	"context"
	"fmt"
	"iter"

	"golang.org/x/sync/errgroup"

	"github.com/bootfs/bootfs/chunkstore"
)

// Prefetch starts fetching, in the background, the chunks that cover n
// bytes at off and are not in memory or being loaded yet, as read-ahead
// batches. It never blocks; it does nothing while more than ReadAhead
// bytes of read-ahead are in flight.
func (r *Reader) Prefetch(off, n int64) {
	if off < 0 || n <= 0 || off >= r.size {
		return
	}
	end := min(off+n, r.size)
	if r.aheadInFlight.Load() >= max(r.opts.ReadAhead, 1) {
		return
	}
	r.fetchAhead(off, end)
}

// fetchAhead fetches the chunks of archive bytes from..to that are
// neither in memory nor being loaded, as read-ahead, in the background,
// and returns them.
func (r *Reader) fetchAhead(from, to int64) []batchItem {
	first := r.idx.ChunkAt(uint64(from))
	last := r.idx.ChunkAt(uint64(to - 1))
	return r.fetchAheadChunks(func(yield func(int) bool) {
		for i := first; i <= last && yield(i); i++ {
		}
	})
}

// fetchAheadChunks fetches the chunks of is that are neither in memory
// nor being loaded, as read-ahead, in the background, in as few batches
// as they fit, and returns them.
func (r *Reader) fetchAheadChunks(is iter.Seq[int]) []batchItem {
	items := r.startLoads(kindAhead, is)
	started := items
	for len(items) > 0 {
		var batch []batchItem
		batch, items = r.nextBatch(items, chunkstore.BatchBytes)
		size := r.batchBytes(batch)
		r.aheadInFlight.Add(size)
		if !r.goBackground(func() {
			defer r.aheadInFlight.Add(-size)
			r.runBatch(batch, kindAhead)
		}) {
			r.aheadInFlight.Add(-size)
			r.failBatch(batch, fmt.Errorf("reader closed: %w", context.Canceled))
		}
	}
	return started
}

// fileAhead is called by a read within a file whose bytes are the
// archive's fileStart..fileEnd that found a chunk of its own not in
// memory. When the file is at most fileAheadBytes, it fetches all of the
// file that is neither in memory nor on its way, now, as read-ahead,
// alongside the read's own fetch: a program reads most of a small file it
// opened (a library that ld.so maps, a module, a configuration file), and
// a mapped one in the order of its page faults, one round trip after the
// other, where one fetch of the whole would do. The first chunks of a
// small file are often in memory already (fetched with the end of the
// file before it), so it is the first read that misses, not the first
// read, that starts it. Reads of the archive as a whole (ReadAtContext)
// know no file, and random reads of a large file never start it.
func (r *Reader) fileAhead(fileStart, fileEnd int64) {
	size := fileEnd - fileStart
	if r.opts.ReadAhead <= 0 || fileEnd >= r.size || size <= 0 {
		return
	}
	if size > r.fileAheadBytes() || r.aheadInFlight.Load()+size > r.opts.ReadAhead {
		return
	}
	r.fetchAhead(fileStart, fileEnd)
}

// fileAheadBytes is the largest file whose rest fileAhead fetches: the
// read-ahead window (4 MiB), which is also what read-ahead may have in
// flight, and at most half the LRU, so the rest of the file stays in
// memory until it is read.
func (r *Reader) fileAheadBytes() int64 { return r.opts.ReadAhead }

// readAhead notes a read of n bytes at off, in a file that ends at
// fileEnd, and, when it continues a sequential stream, keeps up to the
// stream's depth of read-ahead in front of it: within the file, and past
// its end into the next files only once the stream has gone on from one
// file to the next (so the end of a large file read alone wastes none).
// The first read of a stream never reads ahead, nor does a read that ends
// before the stream's end, so random reads cost no read-ahead. A stream's depth starts at minAheadDepth and
// doubles, up to ReadAhead, with every read that uses the stream's
// read-ahead; a read that skips more than streamGap of it halves it (the
// skipped bytes were wasted). More read-ahead starts only when half the
// depth is used, so read-ahead does not race ahead of the reads, and never
// while ReadAhead bytes of read-ahead are in flight. It reports whether the
// read continues a stream that is sequential (one that read-ahead follows).
func (r *Reader) readAhead(off, n, fileEnd int64) bool {
	if r.opts.ReadAhead <= 0 {
		return false
	}
	end := off + n
	r.streamsMu.Lock()
	r.tick++
	var s *stream
	oldest := &r.streams[0]
	for k := range r.streams {
		c := &r.streams[k]
		if c.tick > 0 && off >= c.next-maxRead && off <= max(c.next+streamGap, c.aheadTo) {
			s = c
			break
		}
		if c.tick < oldest.tick {
			oldest = c
		}
	}
	if s == nil {
		*oldest = stream{next: end, aheadTo: end, tick: r.tick, fileEnd: fileEnd}
		r.streamsMu.Unlock()
		return false
	}
	s.tick = r.tick
	if end <= s.next {
		// Behind the stream's end: one of the kernel's concurrent
		// read-ahead requests, arriving late, or a read of what the
		// stream has read. Nothing new to read ahead.
		seq := s.depth > 0
		r.streamsMu.Unlock()
		return seq
	}
	switch {
	case off > s.next+streamGap:
		s.depth = max(s.depth/2, minAheadDepth)
	case s.depth == 0:
		s.depth = min(max(minAheadDepth, 2*n), r.opts.ReadAhead)
	case s.aheadTo > off:
		s.depth = min(2*s.depth, r.opts.ReadAhead)
	}
	if off >= s.fileEnd {
		s.crossed = true
	}
	s.fileEnd = fileEnd
	s.next = max(s.next, end)
	from := max(s.aheadTo, s.next)
	limit := r.size
	if !s.crossed {
		limit = min(limit, fileEnd)
	}
	to := min(s.next+s.depth, limit)
	if to <= from || (to-from < s.depth/2 && to < limit) {
		r.streamsMu.Unlock()
		return true
	}
	room := r.opts.ReadAhead - r.aheadInFlight.Load()
	if room <= 0 {
		r.streamsMu.Unlock()
		return true
	}
	to = min(to, from+room)
	s.aheadTo = to
	r.streamsMu.Unlock()
	r.fetchAhead(from, to)
	return true
}

// aheadFromCache notes a read of chunks first..last. When it continues
// the previous read, it loads the next localAhead chunks that the local
// cache holds into memory, in the background. It stops at the first chunk
// the cache lacks: that one, and what follows, are for reads to fetch,
// so this never costs network traffic.
func (r *Reader) aheadFromCache(first, last int) {
	if r.local == nil {
		return
	}
	prev := r.lastChunk.Swap(int64(last))
	if int64(first) != prev && int64(first) != prev+1 {
		// Not sequential: forget the window of the previous streak.
		r.aheadTo.Store(int64(last))
		return
	}
	end := min(last+localAhead, len(r.idx.Chunks)-1)
	from := max(int(r.aheadTo.Load())+1, last+1)
	if end-from < localAhead/2 || !r.aheadRunning.CompareAndSwap(false, true) {
		return
	}
	started := r.goBackground(func() {
		defer r.aheadRunning.Store(false)
		defer r.aheadTo.Store(int64(end))
		g, ctx := errgroup.WithContext(r.ctx)
		g.SetLimit(localAheadJobs)
		for i := from; i <= end && ctx.Err() == nil; i++ {
			if l := r.startLocal(i); l != nil {
				g.Go(func() error {
					r.runLoad(i, l)
					return l.err // not cached: stop here
				})
			}
		}
		g.Wait()
	})
	if !started {
		r.aheadRunning.Store(false)
	}
}

// ReadAhead returns the largest read-ahead window in bytes, 0 if
// read-ahead is off.
func (r *Reader) ReadAhead() int64 { return max(r.opts.ReadAhead, 0) }
