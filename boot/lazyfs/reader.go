package lazyfs

import (
	"context"
	"fmt"
	"io"
	"iter"
	"log/slog"
	"sync"
	"sync/atomic"

	"golang.org/x/sync/errgroup"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
)

// ReaderOptions configure a Reader. The zero value works.
type ReaderOptions struct {
	// Jobs bounds the chunk fetches in flight (default 8).
	Jobs int
	// CacheBytes bounds the in-memory LRU of recently used chunks, in
	// bytes of buffer capacity (default 8 MiB: the kernel's page cache
	// keeps what was read, so the LRU only has to bridge read-ahead and
	// chunks shared by neighbouring small files; a bigger one only
	// leaves the garbage collector less room under boot's memory limit).
	// It always holds at least one chunk.
	CacheBytes int64
	// LRU, if set, is an in-memory chunk cache shared with other Readers
	// (the node agent's, for every mount it serves); CacheBytes is then
	// its size. Chunks are content-addressed, so Readers of different
	// images share what they have in common.
	LRU *LRU
	// ReadAhead is the largest read-ahead window, in bytes, that a
	// sequential stream of reads grows to (default 4 MiB, at most
	// CacheBytes/2); it also bounds the read-ahead bytes in flight.
	// Negative disables read-ahead.
	ReadAhead int64
	// StoreName names the store in errors and log lines (default: the
	// store's String method, if it has one).
	StoreName string
	// Logger receives debug lines about read-ahead; nil discards them.
	Logger *slog.Logger
}

func (o ReaderOptions) withDefaults(store chunkstore.Store) ReaderOptions {
	if o.Jobs <= 0 {
		o.Jobs = 8
	}
	if o.LRU != nil {
		o.CacheBytes = o.LRU.l.max
	}
	if o.CacheBytes <= 0 {
		o.CacheBytes = 8 << 20
	}
	if o.ReadAhead == 0 {
		o.ReadAhead = 4 << 20
	}
	// Read-ahead that does not fit in the LRU is thrown away unread.
	o.ReadAhead = min(o.ReadAhead, o.CacheBytes/2)
	if o.StoreName == "" {
		o.StoreName = chunkstore.Name(store)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

// ReaderStats are the counters of a Reader. All fields only grow, except
// the wasted ones, which fall when a chunk fetched ahead is read after all.
type ReaderStats struct {
	// ChunksFetched and BytesFetched count the chunks, and their
	// uncompressed bytes, that the Reader got from its store.
	ChunksFetched uint64 `json:"chunks_fetched"`
	BytesFetched  uint64 `json:"bytes_fetched"`
	// MemoryHits counts chunks served from the in-memory LRU.
	MemoryHits uint64 `json:"memory_hits"`
	// Errors counts chunks that a read could not have (after the
	// store's retries); a failed read-ahead is not one.
	Errors uint64 `json:"errors"`
	// Batches counts the batch reads (chunkstore.GetChunks) the Reader
	// made of its store, for reads, read-ahead and the prefetch list: a
	// request each where the store has a batch read.
	Batches uint64 `json:"batches"`
	// ReadAheadChunks and ReadAheadBytes count the chunks, and their
	// bytes, that read-ahead got from the store's network part (not
	// from a local cache).
	ReadAheadChunks uint64 `json:"read_ahead_chunks"`
	ReadAheadBytes  uint64 `json:"read_ahead_bytes"`
	// ReadAheadWastedChunks and ReadAheadWastedBytes count the distinct
	// chunks of those, and their bytes, that no read has used yet: a
	// chunk whose ID the index repeats counts once, and one read after
	// all, from memory or from the local cache, no longer counts.
	ReadAheadWastedChunks uint64 `json:"read_ahead_wasted_chunks"`
	ReadAheadWastedBytes  uint64 `json:"read_ahead_wasted_bytes"`
	// PrefetchChunks and PrefetchBytes count what PrefetchList got from
	// the network; PrefetchUnreadBytes is the part of it no read used.
	PrefetchChunks      uint64 `json:"prefetch_chunks"`
	PrefetchBytes       uint64 `json:"prefetch_bytes"`
	PrefetchUnreadBytes uint64 `json:"prefetch_unread_bytes"`
	// NetworkWaits counts the reads that waited for at least one chunk
	// to come from the network.
	NetworkWaits uint64 `json:"network_waits"`
	// LongestChain is the longest chain of dependent fetches: the
	// number of network waits in a row, each of them for a fetch that
	// started only after the previous one's read had ended. A read that
	// waits for a fetch has chain c+1, where c is the longest chain of
	// the reads that had ended when that fetch started (0 if none had);
	// a read that waits for nothing from the network has none. So
	// read-ahead that starts a fetch before the read that needs it
	// keeps the chain short, and a workload whose every read waits for
	// a fetch it started itself has a chain as long as its reads.
	// Temporal order stands for dependence: two streams whose waits
	// interleave make one chain.
	LongestChain uint64 `json:"longest_chain"`
}

// Reader reads a catar archive (or any blob) described by an index from
// the chunks in a store. It is safe for concurrent use.
//
// Every fetch runs on the Reader's own context, not on the caller's: a
// download that several readers wait for is not spoiled when one of them
// gives up (go-fuse cancels a request's context on interrupts), only that
// caller returns early. Close cancels what is still running.
//
// The chunks a read needs, and those read-ahead and the prefetch list
// want, are fetched as batch reads (chunkstore.GetChunks): one request
// for a run of chunks where the store can. Each chunk still has one load
// (the loads map), which the reads, read-ahead and prefetch that want it
// share. A read never waits for a read-ahead or prefetch batch to start:
// those register their loads only as they start, so a read of a chunk
// they have not started yet fetches it itself.
//
// A chunk that cannot be had gives a *ChunkError, never wrong bytes: the
// store verifies every chunk against its ID (the chunkstore.Store
// contract), and the Reader checks its length against the index.
type Reader struct {
	idx    *casync.Index
	store  chunkstore.Store
	opts   ReaderOptions
	log    *slog.Logger
	size   int64
	ctx    context.Context
	cancel context.CancelFunc
	sem    chan struct{} // the reads' batches in flight
	lru    *chunkLRU

	loadsMu sync.Mutex // guards loads and the waiters of each; taken before the LRU's and unreadMu
	loads   map[casync.ChunkID]*load

	mu     sync.Mutex // guards closed and wg.Add
	closed bool
	wg     sync.WaitGroup // read-ahead and prefetch goroutines

	chunksFetched, bytesFetched, memoryHits, errors, batches atomic.Uint64
	aheadChunks, aheadBytes, prefetchChunks, prefetchBytes   atomic.Uint64
	networkWaits                                             atomic.Uint64
	// chainTop is the longest chain of the reads that have ended (see
	// ReaderStats.LongestChain).
	chainTop atomic.Int64

	// unread holds the chunks read-ahead or prefetch got from the
	// network that no read has used yet (unreadN of them).
	unreadMu sync.Mutex
	unread   map[casync.ChunkID]unreadChunk
	unreadN  atomic.Int64

	// Network read-ahead of sequential streams of reads (readAhead).
	streamsMu     sync.Mutex
	streams       [maxStreams]stream
	tick          int64
	aheadInFlight atomic.Int64

	// Read-ahead of the misses of large files (windowAhead); taken
	// before loadsMu.
	windows fileWindows

	// Read-ahead from the local cache, for sequential reads of the
	// archive: local is the store's network-free part, lastChunk the last
	// chunk a read touched, aheadTo the last chunk loaded (or tried) ahead.
	local        cachedGetter
	lastChunk    atomic.Int64
	aheadTo      atomic.Int64
	aheadRunning atomic.Bool
}

// unreadChunk is a chunk fetched ahead of the reads, not read yet.
type unreadChunk struct {
	size uint64
	kind fetchKind
}

// fetchKind says who started a load.
type fetchKind uint8

const (
	kindRead     fetchKind = iota // a read that needs the chunk
	kindAhead                     // read-ahead of a sequential stream
	kindPrefetch                  // the prefetch list
)

// cachedGetter is a store with a local part that is read without the
// network, into the caller's buffer, such as chunkstore.Cache.
type cachedGetter interface {
	AppendCached(ctx context.Context, dst []byte, id casync.ChunkID) ([]byte, error)
}

// localAhead is how many chunks past a sequential read are loaded from
// the local cache into memory before the read gets there, localAheadJobs
// of them at a time: a read that walks the archive (tar, cp -a, a scan of
// a package tree) then waits for no cache-file I/O, file after file.
const (
	localAhead     = 32
	localAheadJobs = 4
)

// NewReader returns a Reader of the archive that idx describes, made of
// chunks in store. The Reader does not own store: Close leaves it open.
func NewReader(idx *casync.Index, store chunkstore.Store, opts ReaderOptions) *Reader {
	opts = opts.withDefaults(store)
	lru := opts.LRU
	if lru == nil {
		lru = NewLRU(opts.CacheBytes)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &Reader{
		idx:    idx,
		store:  store,
		opts:   opts,
		log:    opts.Logger,
		size:   int64(idx.Length()),
		ctx:    ctx,
		cancel: cancel,
		sem:    make(chan struct{}, opts.Jobs),
		lru:    lru.l,
		loads:  make(map[casync.ChunkID]*load),
		unread: make(map[casync.ChunkID]unreadChunk),
	}
	if l, ok := store.(cachedGetter); ok && opts.ReadAhead > 0 {
		r.local = l
	}
	r.lastChunk.Store(-2)
	r.aheadTo.Store(-1)
	return r
}

// Size returns the length of the archive.
func (r *Reader) Size() int64 { return r.size }

// Index returns the index the Reader reads.
func (r *Reader) Index() *casync.Index { return r.idx }

// StoreName returns the name of the store in errors.
func (r *Reader) StoreName() string { return r.opts.StoreName }

// Stats returns the Reader's counters.
func (r *Reader) Stats() ReaderStats {
	s := ReaderStats{
		ChunksFetched:   r.chunksFetched.Load(),
		BytesFetched:    r.bytesFetched.Load(),
		MemoryHits:      r.memoryHits.Load(),
		Errors:          r.errors.Load(),
		Batches:         r.batches.Load(),
		ReadAheadChunks: r.aheadChunks.Load(),
		ReadAheadBytes:  r.aheadBytes.Load(),
		PrefetchChunks:  r.prefetchChunks.Load(),
		PrefetchBytes:   r.prefetchBytes.Load(),
		NetworkWaits:    r.networkWaits.Load(),
		LongestChain:    uint64(r.chainTop.Load()),
	}
	r.unreadMu.Lock()
	for _, u := range r.unread {
		if u.kind == kindAhead {
			s.ReadAheadWastedChunks++
			s.ReadAheadWastedBytes += u.size
		} else {
			s.PrefetchUnreadBytes += u.size
		}
	}
	r.unreadMu.Unlock()
	return s
}

// Close cancels the fetches still running and waits for read-ahead to
// stop. Reads after Close fail.
func (r *Reader) Close() error {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	r.cancel()
	r.wg.Wait()
	return nil
}

// ReadAt implements io.ReaderAt with no deadline of its own; every fetch
// is still bounded by the store's timeouts and retries.
func (r *Reader) ReadAt(p []byte, off int64) (int, error) {
	return r.ReadAtContext(context.Background(), p, off)
}

// ReadAtContext reads len(p) bytes at off, as io.ReaderAt does, fetching
// the chunks it needs as batch reads and reading ahead when it continues
// a sequential stream of reads. If ctx ends first, it returns ctx's
// error; the fetches go on for other readers.
func (r *Reader) ReadAtContext(ctx context.Context, p []byte, off int64) (int, error) {
	return r.readAt(ctx, p, off, 0, r.size)
}

// readAt is ReadAtContext of a read within a file whose bytes are the
// archive's fileStart..fileEnd: read-ahead goes past it only for a stream
// that has gone on from one file to the next before, fetches the rest
// of a small file (fileAhead), and a window around the misses of a large
// one (windowAhead).
func (r *Reader) readAt(ctx context.Context, p []byte, off, fileStart, fileEnd int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("boot: read archive at offset %d: negative offset", off)
	}
	if off >= r.size {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	want := len(p)
	var eof error
	if int64(want) > r.size-off {
		want = int(r.size - off)
		eof = io.EOF
	}
	if want == 0 {
		return 0, nil
	}
	first := r.idx.ChunkAt(uint64(off))
	last := r.idx.ChunkAt(uint64(off) + uint64(want) - 1)
	r.aheadFromCache(first, last)

	// Start the chunks in runs of up to 2*Jobs, each run one batch,
	// the next one when half of the last is copied: a large read is
	// pipelined but its memory stays bounded.
	window := 2 * r.opts.Jobs
	pending := make([]pendingChunk, 0, min(last-first+1, window+window/2))
	defer func() {
		for _, pc := range pending { // left by an error
			pc.release()
		}
	}()
	next := first
	n := 0
	var chain int64 // this read's chain of dependent fetches
	for i := first; i <= last; i++ {
		if next <= last && next-i <= window/2 {
			end := min(last, next+window-1)
			var missed bool
			pending, missed = r.startRun(pending, next, end)
			next = end + 1
			if i == first {
				// After the read's own fetches: read-ahead never
				// goes before what the read needs.
				seq := r.readAhead(off, int64(want), fileEnd)
				if missed {
					r.fileAhead(fileStart, fileEnd)
					if !seq {
						r.windowAhead(off, int64(want), fileStart, fileEnd)
					}
				}
			}
		}
		pc := pending[0]
		pending = pending[1:]
		data, err := pc.wait(ctx, &chain)
		if err != nil {
			pc.release()
			return n, err
		}
		c := &r.idx.Chunks[i]
		lo := uint64(off) + uint64(n) - c.Start
		n += copy(p[n:want], data[lo:])
		pc.release()
	}
	if chain > 0 {
		r.networkWaits.Add(1)
		for top := r.chainTop.Load(); chain > top && !r.chainTop.CompareAndSwap(top, chain); top = r.chainTop.Load() {
		}
	}
	return n, eof
}

// A load gets one chunk into memory, once: a read that needs a chunk
// being loaded waits for that load instead of reading the chunk again.
// Read-ahead from the cache loads only from the local cache (localOnly);
// the other loads ask the store too.
type load struct {
	done      chan struct{}
	localOnly bool
	kind      fetchKind
	// parent is the Reader's chainTop when the load started.
	parent int64
	// Under Reader.loadsMu: waiters counts the pending chunks that wait
	// for the load; when it finishes, each of them gets a reference on
	// buf. used says a read has waited for it. The other fields are set
	// before done is closed. net says the chunk came from the network.
	// next is the load that a failed local-only, read-ahead or prefetch
	// load started for its waiters, who then wait for it.
	waiters  int32
	used     bool
	finished bool
	net      bool
	buf      *chunkBuf
	err      error
	next     *load
}

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
// reads. It reports whether any of them was not in memory (being loaded,
// or started now). The caller must release what it appends.
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
		// A load adds to the LRU under loadsMu: look again under it.
		r.loadsMu.Lock()
		if b, ok := r.lru.acquire(id); ok {
			r.loadsMu.Unlock()
			r.memoryHits.Add(1)
			r.markRead(id)
			pending = append(pending, pendingChunk{r: r, i: i, buf: b})
			continue
		}
		missed = true
		l, running := r.loads[id]
		if !running {
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
	items := r.startLoads(kindAhead, func(yield func(int) bool) {
		for i := first; i <= last && yield(i); i++ {
		}
	})
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

// stream is a sequential stream of reads of the archive, which read-ahead
// follows: within a file, and on into the next files, which come next in
// the archive (a catar is in directory order).
type stream struct {
	next    int64 // where a sequential read would start
	aheadTo int64 // read-ahead has been started up to here
	depth   int64 // read-ahead kept in front of the reads; 0 until the stream is sequential
	tick    int64 // when it was last read, to replace the oldest
	fileEnd int64 // where the file of the last read ends
	crossed bool  // a read went on past the end of a file
}

const (
	// maxStreams is how many sequential streams read-ahead follows at
	// once: processes reading files side by side.
	maxStreams = 8
	// minAheadDepth is where a stream's read-ahead starts, and what a
	// wasteful one shrinks back to: two chunks of casync's average.
	minAheadDepth = 128 << 10
	// streamGap is how far past a stream's end a read may start and
	// still continue it: over the entry headers between files, and
	// files nobody reads, in archive order.
	streamGap = 64 << 10
)

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

// goBackground runs f in a goroutine that Close waits for, unless the
// Reader is closed; it reports whether it started f.
func (r *Reader) goBackground(f func()) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return false
	}
	r.wg.Go(f)
	return true
}

// ReadAhead returns the largest read-ahead window in bytes, 0 if
// read-ahead is off.
func (r *Reader) ReadAhead() int64 { return max(r.opts.ReadAhead, 0) }

// sequential is an io.Reader over a Reader, for streaming the whole
// archive (to build a TOC); the Reader reads ahead as it goes.
type sequential struct {
	ctx context.Context
	r   *Reader
	off int64
}

func (s *sequential) Read(p []byte) (int, error) {
	n, err := s.r.ReadAtContext(s.ctx, p, s.off)
	s.off += int64(n)
	if err == io.EOF && n > 0 {
		err = nil
	}
	return n, err
}
