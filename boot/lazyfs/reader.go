package lazyfs

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"

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

// cachedGetter is a store with a local part that is read without the
// network, into the caller's buffer, such as chunkstore.Cache.
type cachedGetter interface {
	AppendCached(ctx context.Context, dst []byte, id casync.ChunkID) ([]byte, error)
	Cached(id casync.ChunkID) bool
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
