package lazyfs

import (
	"context"
	"fmt"
	"iter"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
)

// pendingChunk is a chunk that start began to get: in memory already and
// held, or being loaded.
type pendingChunk struct {
	r    *Reader
	i    int
	buf  *chunkBuf
	load *load
}

// wait returns the chunk's bytes, valid until release. If it waited for
// the network, it raises *chain to the fetch's chain.
func (pc *pendingChunk) wait(ctx context.Context, chain *int64) ([]byte, error) {
	for pc.buf == nil {
		l := pc.load
		blocked := false
		select {
		case <-l.done:
		default:
			blocked = true
			select {
			case <-l.done:
			case <-ctx.Done():
				return nil, fmt.Errorf("boot: waiting for chunk %s: %w", pc.r.idx.Chunks[pc.i].ID, ctx.Err())
			}
		}
		pc.load = l.next
		if blocked && l.net {
			*chain = max(*chain, l.parent+1)
		}
		switch {
		case l.err == nil:
			pc.buf = l.buf
			if l.localOnly { // read ahead: served from memory
				pc.r.memoryHits.Add(1)
			}
		case l.next != nil:
			// Read-ahead failed or found it not cached: wait for
			// the fetch it started instead.
		default:
			return nil, l.err
		}
	}
	return pc.buf.data, nil
}

// release lets go of the chunk, or of the load that was to bring it.
func (pc *pendingChunk) release() {
	switch {
	case pc.buf != nil:
		pc.buf.release()
	case pc.load != nil:
		pc.r.abandon(pc.load)
	}
	pc.buf, pc.load = nil, nil
}

// batchItem is one chunk of a batch: index i of the index, and its load.
type batchItem struct {
	i int
	l *load
}

// startRun appends to pending the chunks first..last that a read needs,
// starting those that are neither in memory nor being loaded as batch
// reads. It reports whether any of them costs the network: being fetched
// already, or neither in memory nor in the local cache. A chunk read
// from the local cache is not a miss that file-ahead and windows answer:
// it costs a file read, not a round trip, and their loads from the cache
// would only push chunks still in use out of the LRU (a warm start read
// each chunk of gcc's from the cache four times over). The caller must
// release what it appends.
func (r *Reader) startRun(pending []pendingChunk, first, last int) ([]pendingChunk, bool) {
	var items []batchItem
	missed := false
	for i := first; i <= last; i++ {
		id := r.idx.Chunks[i].ID
		// Most reads find the chunk in memory: they take only the
		// LRU's lock.
		if b, ok := r.lru.acquire(id); ok {
			r.memoryHits.Add(1)
			r.markRead(id)
			pending = append(pending, pendingChunk{r: r, i: i, buf: b})
			continue
		}
		// Not in memory: a file read away, or a round trip? Asked
		// before the lock, once a run has a miss no more.
		cached := !missed && r.local != nil && r.local.Cached(id)
		// A load adds to the LRU under loadsMu: look again under it.
		r.loadsMu.Lock()
		if b, ok := r.lru.acquire(id); ok {
			r.loadsMu.Unlock()
			r.memoryHits.Add(1)
			r.markRead(id)
			pending = append(pending, pendingChunk{r: r, i: i, buf: b})
			continue
		}
		l, running := r.loads[id]
		if running {
			missed = missed || !l.localOnly
		} else {
			missed = missed || !cached
			l = &load{done: make(chan struct{}), kind: kindRead, parent: r.chainTop.Load()}
			r.loads[id] = l
			items = append(items, batchItem{i, l})
		}
		l.waiters++
		l.used = true
		r.loadsMu.Unlock()
		if running {
			r.markRead(id) // a local-only load of a chunk fetched ahead
		}
		pending = append(pending, pendingChunk{r: r, i: i, load: l})
	}
	if len(items) > 0 {
		r.goBatches(items, kindRead)
	}
	return pending, missed
}

// markRead notes that a read used chunk id, which read-ahead or prefetch
// may have fetched for it.
func (r *Reader) markRead(id casync.ChunkID) {
	if r.unreadN.Load() == 0 {
		return
	}
	r.unreadMu.Lock()
	if _, ok := r.unread[id]; ok {
		delete(r.unread, id)
		r.unreadN.Add(-1)
	}
	r.unreadMu.Unlock()
}

// startLoads registers loads of kind for the chunks of is that are
// neither in memory nor being loaded, and returns them. The caller runs
// them (runBatch) right away: a registered load is one a read may wait
// for.
func (r *Reader) startLoads(kind fetchKind, is iter.Seq[int]) []batchItem {
	var items []batchItem
	r.loadsMu.Lock()
	defer r.loadsMu.Unlock()
	parent := r.chainTop.Load()
	for i := range is {
		id := r.idx.Chunks[i].ID
		if _, ok := r.loads[id]; ok || r.lru.contains(id) {
			continue
		}
		l := &load{done: make(chan struct{}), kind: kind, parent: parent}
		r.loads[id] = l
		items = append(items, batchItem{i, l})
	}
	return items
}

// goBatches runs items as batch reads of kind, each in a goroutine of
// its own.
func (r *Reader) goBatches(items []batchItem, kind fetchKind) {
	for len(items) > 0 {
		var batch []batchItem
		batch, items = r.nextBatch(items, chunkstore.BatchBytes)
		go r.runBatch(batch, kind)
	}
}

// nextBatch splits off the first batch of items: at most
// chunkstore.BatchChunks chunks and maxBytes bytes, but at least one.
func (r *Reader) nextBatch(items []batchItem, maxBytes uint64) (batch, rest []batchItem) {
	n, bytes := 0, uint64(0)
	for n < len(items) && n < chunkstore.BatchChunks {
		size := r.idx.Chunks[items[n].i].Size
		if n > 0 && bytes+size > maxBytes {
			break
		}
		bytes += size
		n++
	}
	return items[:n:n], items[n:]
}

// batchBytes returns the bytes of items' chunks.
func (r *Reader) batchBytes(items []batchItem) int64 {
	var n int64
	for _, it := range items {
		n += int64(r.idx.Chunks[it.i].Size)
	}
	return n
}

// failBatch ends every load of items with err.
func (r *Reader) failBatch(items []batchItem, err error) {
	for _, it := range items {
		r.finish(it.i, it.l, nil, r.chunkError(it, 0, err), false)
	}
}

// chunkError is the error of item it, and counts it if a read wanted it.
func (r *Reader) chunkError(it batchItem, attempts int, err error) error {
	c := &r.idx.Chunks[it.i]
	if it.l.kind == kindRead {
		r.errors.Add(1)
	}
	return &ChunkError{Index: it.i, Offset: c.Start, ID: c.ID, Store: r.opts.StoreName, Attempts: attempts, Err: err}
}

// runBatch loads items: from the local cache where it holds them, the
// others from the store in one batch read (chunkstore.GetChunks).
func (r *Reader) runBatch(items []batchItem, kind fetchKind) {
	if r.local != nil {
		rest := items[:0:0]
		for _, it := range items {
			c := &r.idx.Chunks[it.i]
			b, err := r.loadLocal(c)
			if err != nil {
				// Not cached, or unreadable: the store has it,
				// and caches it.
				rest = append(rest, it)
				continue
			}
			if kind == kindRead {
				// As the cache's own read-ahead, read-ahead
				// from the cache does not count as fetched.
				r.chunksFetched.Add(1)
				r.bytesFetched.Add(c.Size)
				r.markRead(c.ID) // fetched ahead, then evicted from memory
			}
			r.finish(it.i, it.l, b, nil, false)
		}
		items = rest
	}
	if len(items) == 0 {
		return
	}
	if kind == kindRead {
		select {
		case r.sem <- struct{}{}:
		case <-r.ctx.Done():
			r.failBatch(items, fmt.Errorf("reader closed: %w", r.ctx.Err()))
			return
		}
		defer func() { <-r.sem }()
	}
	ids := make([]casync.ChunkID, len(items))
	for k, it := range items {
		ids[k] = r.idx.Chunks[it.i].ID
	}
	got := make([]bool, len(items))
	r.batches.Add(1)
	chunkstore.GetChunks(r.ctx, r.store, ids, r.opts.Jobs, func(g chunkstore.Got) {
		if g.Index < 0 || g.Index >= len(items) || got[g.Index] {
			return // not the store's contract; the loop below ends the rest
		}
		got[g.Index] = true
		it := items[g.Index]
		c := &r.idx.Chunks[it.i]
		if g.Err != nil {
			r.finish(it.i, it.l, nil, r.chunkError(it, chunkstore.Attempts(g.Err), g.Err), false)
			return
		}
		if uint64(len(g.Data)) != c.Size {
			// The store verified the content against the ID, so
			// the index is what is wrong.
			err := fmt.Errorf("%w: chunk has %d bytes, the index says %d", ErrMismatch, len(g.Data), c.Size)
			r.finish(it.i, it.l, nil, r.chunkError(it, 1, err), false)
			return
		}
		// Data is the store's only until fn returns: copy it into a
		// pooled buffer, which goes back to the pool when the LRU
		// and the reads are done with it.
		b := bufPool.get(len(g.Data))
		b.data = append(b.data, g.Data...)
		r.chunksFetched.Add(1)
		r.bytesFetched.Add(c.Size)
		switch kind {
		case kindAhead:
			r.aheadChunks.Add(1)
			r.aheadBytes.Add(c.Size)
		case kindPrefetch:
			r.prefetchChunks.Add(1)
			r.prefetchBytes.Add(c.Size)
		}
		r.finish(it.i, it.l, b, nil, true)
	})
	for k, it := range items {
		if !got[k] {
			r.finish(it.i, it.l, nil, r.chunkError(it, 1, fmt.Errorf("the store's batch read did not return it")), false)
		}
	}
}

// runLoad loads chunk i for l alone.
func (r *Reader) runLoad(i int, l *load) {
	if !l.localOnly {
		r.runBatch([]batchItem{{i, l}}, l.kind)
		return
	}
	b, err := r.loadLocal(&r.idx.Chunks[i])
	r.finish(i, l, b, err, false)
}

// finish ends load l of chunk i with b or err: it keeps b in the LRU and
// hands it to l's waiters. When a local-only, read-ahead or prefetch load
// fails and reads wait for it, it starts a read's fetch for them, now,
// rather than one after the other as each one's turn comes; a failed
// read-ahead never fails a read.
func (r *Reader) finish(i int, l *load, b *chunkBuf, err error, net bool) {
	c := &r.idx.Chunks[i]
	r.loadsMu.Lock()
	if r.loads[c.ID] == l {
		delete(r.loads, c.ID)
	}
	l.finished, l.buf, l.err, l.net = true, b, err, net
	switch {
	case err == nil:
		b.refs.Add(l.waiters)
		r.lru.add(c.ID, b) // takes the load's own reference
		if net && l.kind != kindRead && !l.used {
			r.unreadMu.Lock()
			if _, ok := r.unread[c.ID]; !ok {
				r.unreadN.Add(1)
			}
			r.unread[c.ID] = unreadChunk{size: c.Size, kind: l.kind}
			r.unreadMu.Unlock()
		}
	case (l.localOnly || l.kind != kindRead) && l.waiters > 0:
		if !l.localOnly && r.ctx.Err() == nil {
			r.log.Debug("read-ahead failed; the reads that wait for the chunk fetch it", "store", r.opts.StoreName, "err", err)
		}
		l.next = &load{done: make(chan struct{}), kind: kindRead, waiters: l.waiters, used: true, parent: l.parent}
		r.loads[c.ID] = l.next
	}
	close(l.done)
	r.loadsMu.Unlock()
	if l.next != nil {
		go r.runLoad(i, l.next)
	}
}

// abandon gives up a pending chunk's wait for l.
func (r *Reader) abandon(l *load) {
	r.loadsMu.Lock()
	for l.finished && l.next != nil {
		l = l.next
	}
	finished := l.finished
	if !finished {
		l.waiters--
	}
	r.loadsMu.Unlock()
	if finished && l.err == nil {
		l.buf.release()
	}
}

// loadLocal reads chunk c from the local cache into a pooled buffer,
// holding one reference. It never uses the network.
func (r *Reader) loadLocal(c *casync.IndexChunk) (*chunkBuf, error) {
	b := bufPool.get(int(c.Size))
	data, err := r.local.AppendCached(r.ctx, b.data, c.ID)
	if err == nil && uint64(len(data)) != c.Size {
		err = fmt.Errorf("%w: chunk %s has %d bytes, the index says %d", ErrMismatch, c.ID, len(data), c.Size)
	}
	if err != nil {
		b.release()
		return nil, err
	}
	if cap(data) == cap(b.data) {
		b.data = data
	} else { // grown: not the pool's
		b.release()
		b = sharedBuf(data)
	}
	return b, nil
}

// startLocal registers a load of chunk i from the local cache, for
// read-ahead, unless the chunk is in memory or being loaded already. The
// caller runs it (runLoad).
func (r *Reader) startLocal(i int) *load {
	id := r.idx.Chunks[i].ID
	r.loadsMu.Lock()
	defer r.loadsMu.Unlock()
	if _, ok := r.loads[id]; ok || r.lru.contains(id) {
		return nil
	}
	l := &load{done: make(chan struct{}), localOnly: true, kind: kindAhead}
	r.loads[id] = l
	return l
}
