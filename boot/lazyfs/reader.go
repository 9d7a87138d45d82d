package lazyfs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

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
	// ReadAhead is the largest read-ahead window, in bytes, that
	// sequential reads of a file grow to (default 4 MiB, at most
	// CacheBytes/2). Negative disables read-ahead.
	ReadAhead int64
	// Timeout bounds each attempt to fetch a chunk from the store
	// (default 30s). Reads of the local cache directory are not bounded:
	// a read waiting for one still returns when its context ends.
	Timeout time.Duration
	// Retries is how many times a failed fetch is tried again (default
	// 3; negative for none). A chunk the store does not have is not
	// retried.
	Retries int
	// Backoff is the wait before the first retry (default 100ms); it
	// doubles, with jitter, for each further one.
	Backoff time.Duration
	// StoreName names the store in errors and log lines (default: the
	// store's String method, if it has one).
	StoreName string
	// Logger receives debug lines about retries; nil discards them.
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
	if o.Timeout <= 0 {
		o.Timeout = 30 * time.Second
	}
	if o.Retries == 0 {
		o.Retries = 3
	}
	if o.Retries < 0 {
		o.Retries = 0
	}
	if o.Backoff <= 0 {
		o.Backoff = 100 * time.Millisecond
	}
	if o.StoreName == "" {
		if s, ok := store.(fmt.Stringer); ok {
			o.StoreName = s.String()
		} else {
			o.StoreName = fmt.Sprintf("%T", store)
		}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

// ReaderStats are the counters of a Reader. All fields only grow.
type ReaderStats struct {
	// ChunksFetched and BytesFetched count the chunks, and their
	// uncompressed bytes, that the Reader got from its store.
	ChunksFetched uint64 `json:"chunks_fetched"`
	BytesFetched  uint64 `json:"bytes_fetched"`
	// MemoryHits counts chunks served from the in-memory LRU.
	MemoryHits uint64 `json:"memory_hits"`
	// Retries counts repeated fetch attempts.
	Retries uint64 `json:"retries"`
	// Errors counts chunks that could not be had (after every retry).
	Errors uint64 `json:"errors"`
}

// Reader reads a catar archive (or any blob) described by an index from
// the chunks in a store. It is safe for concurrent use.
//
// Every fetch runs on the Reader's own context, not on the caller's: a
// download that several readers wait for is not spoiled when one of them
// gives up (go-fuse cancels a request's context on interrupts), only that
// caller returns early. Close cancels what is still running.
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
	sem    chan struct{}
	lru    *chunkLRU

	loadsMu sync.Mutex // guards loads and the waiters of each; taken before the LRU's
	loads   map[casync.ChunkID]*load

	mu          sync.Mutex // guards closed and wg.Add
	closed      bool
	wg          sync.WaitGroup // read-ahead goroutines
	prefetching atomic.Int64

	chunksFetched, bytesFetched, memoryHits, retries, errors atomic.Uint64

	// Read-ahead from the local cache, for sequential reads of the
	// archive: local is the store's network-free part, lastChunk the last
	// chunk a read touched, aheadTo the last chunk loaded (or tried) ahead.
	local        cachedGetter
	lastChunk    atomic.Int64
	aheadTo      atomic.Int64
	aheadRunning atomic.Bool
}

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
	return ReaderStats{
		ChunksFetched: r.chunksFetched.Load(),
		BytesFetched:  r.bytesFetched.Load(),
		MemoryHits:    r.memoryHits.Load(),
		Retries:       r.retries.Load(),
		Errors:        r.errors.Load(),
	}
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
// is still bounded by the Reader's timeouts and retries.
func (r *Reader) ReadAt(p []byte, off int64) (int, error) {
	return r.ReadAtContext(context.Background(), p, off)
}

// ReadAtContext reads len(p) bytes at off, as io.ReaderAt does, fetching
// the chunks it needs in parallel. If ctx ends first, it returns ctx's
// error; the fetches go on for other readers.
func (r *Reader) ReadAtContext(ctx context.Context, p []byte, off int64) (int, error) {
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

	// Keep up to 2*Jobs chunk fetches started ahead of the one being
	// copied, so a large read is pipelined but its memory stays bounded.
	window := 2 * r.opts.Jobs
	pending := make([]pendingChunk, 0, min(last-first+1, window))
	defer func() {
		for _, pc := range pending { // left by an error
			pc.release()
		}
	}()
	next := first
	n := 0
	for i := first; i <= last; i++ {
		for next <= last && next-i < window {
			pending = append(pending, r.start(next))
			next++
		}
		pc := pending[0]
		pending = pending[1:]
		data, err := pc.wait(ctx)
		if err != nil {
			pc.release()
			return n, err
		}
		c := &r.idx.Chunks[i]
		lo := uint64(off) + uint64(n) - c.Start
		n += copy(p[n:want], data[lo:])
		pc.release()
	}
	return n, eof
}

// A load gets one chunk into memory, once: a read that needs a chunk
// being loaded waits for that load instead of reading the chunk again.
// Read-ahead loads only from the local cache (localOnly); a read's load
// asks the store too.
type load struct {
	done      chan struct{}
	localOnly bool
	// Under Reader.loadsMu: waiters counts the pending chunks that wait
	// for the load; when it finishes, each of them gets a reference on
	// buf. The other fields are set before done is closed. next is the
	// fetch that a local-only load which failed started for its waiters,
	// who then wait for it.
	waiters  int32
	finished bool
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

// wait returns the chunk's bytes, valid until release.
func (pc *pendingChunk) wait(ctx context.Context) ([]byte, error) {
	for pc.buf == nil {
		l := pc.load
		select {
		case <-l.done:
		case <-ctx.Done():
			return nil, fmt.Errorf("boot: waiting for chunk %s: %w", pc.r.idx.Chunks[pc.i].ID, ctx.Err())
		}
		pc.load = l.next
		switch {
		case l.err == nil:
			pc.buf = l.buf
			if l.localOnly { // read ahead: served from memory
				pc.r.memoryHits.Add(1)
			}
		case l.next != nil:
			// Read-ahead found it not cached: wait for the fetch.
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

// start begins getting chunk i. The caller must release the result.
func (r *Reader) start(i int) pendingChunk {
	id := r.idx.Chunks[i].ID
	// Most reads find the chunk in memory: they take only the LRU's lock.
	b, ok := r.lru.acquire(id)
	if !ok {
		// A load adds to the LRU under loadsMu: look again under it.
		r.loadsMu.Lock()
		if b, ok = r.lru.acquire(id); ok {
			r.loadsMu.Unlock()
		}
	}
	if ok {
		r.memoryHits.Add(1)
		return pendingChunk{r: r, i: i, buf: b}
	}
	l, running := r.loads[id]
	if !running {
		l = &load{done: make(chan struct{})}
		r.loads[id] = l
	}
	l.waiters++
	r.loadsMu.Unlock()
	if !running {
		go r.runLoad(i, l)
	}
	return pendingChunk{r: r, i: i, load: l}
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
	l := &load{done: make(chan struct{}), localOnly: true}
	r.loads[id] = l
	return l
}

// runLoad loads chunk i for l, keeps it in the LRU and hands it to l's
// waiters.
func (r *Reader) runLoad(i int, l *load) {
	c := &r.idx.Chunks[i]
	var b *chunkBuf
	var err error
	if l.localOnly {
		b, err = r.loadLocal(c)
	} else {
		b, err = r.fetch(i)
	}
	r.loadsMu.Lock()
	delete(r.loads, c.ID)
	l.finished, l.buf, l.err = true, b, err
	switch {
	case err == nil:
		b.refs.Add(l.waiters)
		r.lru.add(c.ID, b) // takes the load's own reference
	case l.localOnly && l.waiters > 0:
		// Not cached after all, and reads wait for it: fetch it for
		// them, now, rather than one after the other as each one's
		// turn comes.
		l.next = &load{done: make(chan struct{}), waiters: l.waiters}
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
// bytes at off and are not in memory yet, up to Jobs at a time. It never
// blocks; it does nothing while Jobs prefetches are running already.
func (r *Reader) Prefetch(off, n int64) {
	if off < 0 || n <= 0 || off >= r.size {
		return
	}
	end := min(off+n, r.size)
	first := r.idx.ChunkAt(uint64(off))
	last := r.idx.ChunkAt(uint64(end - 1))
	for first <= last && r.lru.contains(r.idx.Chunks[first].ID) {
		first++
	}
	if first > last || r.prefetching.Load() >= int64(r.opts.Jobs) {
		return
	}
	r.prefetching.Add(1)
	started := r.goBackground(func() {
		defer r.prefetching.Add(-1)
		var pending []pendingChunk
		wait := func() bool {
			pc := pending[0]
			pending = pending[1:]
			_, err := pc.wait(r.ctx)
			pc.release()
			if err != nil && r.ctx.Err() == nil {
				r.log.Debug("read-ahead failed", "store", r.opts.StoreName, "err", err)
			}
			return err == nil
		}
		ok := true
		for i := first; ok && i <= last; i++ {
			if r.lru.contains(r.idx.Chunks[i].ID) {
				continue
			}
			if len(pending) == r.opts.Jobs {
				if ok = wait(); !ok {
					break
				}
			}
			pending = append(pending, r.start(i))
		}
		for ok && len(pending) > 0 {
			ok = wait()
		}
		for _, pc := range pending { // left by an error
			pc.release()
		}
	})
	if !started {
		r.prefetching.Add(-1)
	}
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

// fetch gets chunk i, from the local cache if it has it, else from the
// store with retries. It returns the chunk with one reference. It runs on
// the Reader's context, once per chunk at a time (runLoad).
func (r *Reader) fetch(i int) (*chunkBuf, error) {
	c := &r.idx.Chunks[i]
	if r.local != nil {
		b, err := r.loadLocal(c)
		if err == nil {
			r.chunksFetched.Add(1)
			r.bytesFetched.Add(c.Size)
			return b, nil
		}
		// Not cached, or unreadable: the store has it, and caches it.
	}
	fail := func(attempts int, err error) error {
		r.errors.Add(1)
		return &ChunkError{Index: i, Offset: c.Start, ID: c.ID, Store: r.opts.StoreName, Attempts: attempts, Err: err}
	}
	select {
	case r.sem <- struct{}{}:
	case <-r.ctx.Done():
		return nil, fail(0, fmt.Errorf("reader closed: %w", r.ctx.Err()))
	}
	defer func() { <-r.sem }()

	delay := r.opts.Backoff
	for attempt := 1; ; attempt++ {
		data, err := r.get(c.ID)
		if err == nil && uint64(len(data)) != c.Size {
			// The store verified the content against the ID, so the
			// index is what is wrong; retrying will not help.
			return nil, fail(attempt, fmt.Errorf("%w: chunk has %d bytes, the index says %d", ErrMismatch, len(data), c.Size))
		}
		if err == nil {
			r.chunksFetched.Add(1)
			r.bytesFetched.Add(uint64(len(data)))
			return sharedBuf(data), nil
		}
		// A missing chunk will not appear, a corrupt one will not mend,
		// and a store that retried itself has waited long enough.
		var ce *casync.ChecksumError
		if attempt > r.opts.Retries || errors.Is(err, chunkstore.ErrNotFound) || errors.Is(err, chunkstore.ErrGaveUp) ||
			errors.As(err, &ce) || r.ctx.Err() != nil {
			return nil, fail(attempt, err)
		}
		r.retries.Add(1)
		wait := delay/2 + rand.N(delay/2+1)
		r.log.Debug("retrying chunk fetch", "chunk", c.ID.String(), "store", r.opts.StoreName, "attempt", attempt, "wait", wait, "err", err)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-r.ctx.Done():
			t.Stop()
			return nil, fail(attempt, err)
		}
		delay *= 2
	}
}

// get makes one attempt at fetching id, bounded by the timeout even if
// the store does not heed its context.
func (r *Reader) get(id casync.ChunkID) ([]byte, error) {
	ctx, cancel := context.WithTimeout(r.ctx, r.opts.Timeout)
	defer cancel()
	type result struct {
		data []byte
		err  error
	}
	done := make(chan result, 1)
	go func() {
		data, err := r.store.GetChunk(ctx, id)
		done <- result{data, err}
	}()
	select {
	case res := <-done:
		if res.err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return nil, fmt.Errorf("timed out after %v: %w", r.opts.Timeout, res.err)
		}
		return res.data, res.err
	case <-ctx.Done():
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return nil, fmt.Errorf("timed out after %v: %w", r.opts.Timeout, ctx.Err())
		}
		return nil, ctx.Err()
	}
}

// sequential is an io.Reader over a Reader that reads ahead as it goes,
// for streaming the whole archive (to build a TOC).
type sequential struct {
	ctx context.Context
	r   *Reader
	off int64
}

func (s *sequential) Read(p []byte) (int, error) {
	if ra := s.r.ReadAhead(); ra > 0 {
		s.r.Prefetch(s.off+int64(len(p)), ra)
	}
	n, err := s.r.ReadAtContext(s.ctx, p, s.off)
	s.off += int64(n)
	if err == io.EOF && n > 0 {
		err = nil
	}
	return n, err
}
