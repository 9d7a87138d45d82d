package chunkstore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bootfs/bootfs/casync"
)

// CacheOptions configure a Cache. The zero value works.
type CacheOptions struct {
	// Digest is the hash that chunk IDs are checked against.
	Digest casync.Digest
	// MaxBytes caps the size of the chunk files in the cache directory,
	// across every process that shares it. A chunk that would take the
	// directory over the cap is written only after the least recently
	// used chunks are removed to make room (down to 10% under the cap);
	// past 95% of the cap they are removed in the background. Zero means
	// no cap.
	MaxBytes int64
	// LockWait bounds how long a fetch waits for another process that is
	// fetching the same chunk into this directory before fetching it too.
	// Zero means 30 seconds, boot's default fetch timeout.
	LockWait time.Duration
	// Logger receives warnings about corrupt or unwritable cache files;
	// nil discards them.
	Logger *slog.Logger
}

// touchAfter is how old a cached chunk's mtime must be before a read
// refreshes it. It keeps reads of hot chunks from writing metadata while
// keeping the LRU order good to a minute.
const touchAfter = time.Minute

// Cache is a read-through cache of a remote store in a local directory in
// casync's layout, meant to be shared by every process on a node.
//
//   - Every chunk read from the directory is verified. A corrupt one is
//     deleted and fetched again, never returned.
//   - Concurrent GetChunk calls for one chunk in this process share one
//     fetch. The fetch runs without the callers' cancellation (bounded by
//     the remote's own timeouts), so a caller that gives up does not
//     spoil it for the others; only that caller returns early.
//   - Concurrent fetches of one chunk by several processes sharing the
//     directory collapse into one too: the fetcher holds a lock file of
//     the chunk (see cache_node.go), and the others wait for its file, at
//     most LockWait.
//   - Chunks are written to a temporary file and renamed into place, so
//     other processes never see half a chunk, and two processes writing
//     the same chunk each rename a whole, identical file.
//   - With MaxBytes, the least recently used chunks (by mtime, which a read
//     refreshes) are evicted, and the cap holds across the processes: they
//     share the directory's size through a mapped file. A chunk being read
//     in this process is never evicted. Another process evicting a file
//     this one has open is harmless on Linux: the open file stays
//     readable until closed.
type Cache struct {
	remote Store
	dir    string
	opts   CacheOptions
	log    *slog.Logger
	stats  counters

	flightMu sync.Mutex
	flights  map[casync.ChunkID]*flight // fetches under way in this process

	node     *node // what the processes sharing dir share
	evicting atomic.Bool
	warned   atomic.Bool // of a chunk it could not save
	wg       sync.WaitGroup
	mu       sync.Mutex
	pins     map[casync.ChunkID]int
}

var (
	_ FrameWriteStore = (*Cache)(nil)
	_ BatchHaser      = (*Cache)(nil)
	_ BatchGetter     = (*Cache)(nil)
	_ StatsReporter   = (*Cache)(nil)
)

// NewCache returns a cache of remote in dir, creating dir if needed.
func NewCache(remote Store, dir string, opts CacheOptions) (*Cache, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create chunk cache: %w", err)
	}
	if opts.LockWait <= 0 {
		opts.LockWait = 30 * time.Second
	}
	c := &Cache{remote: remote, dir: dir, opts: opts, log: logger(opts.Logger), pins: make(map[casync.ChunkID]int), flights: make(map[casync.ChunkID]*flight)}
	n, err := openNode(dir, opts.MaxBytes > 0, c.log)
	if err != nil {
		return nil, fmt.Errorf("open chunk cache %s with a size cap: %w", dir, err)
	}
	c.node = n
	return c, nil
}

// Dir returns the cache directory.
func (c *Cache) Dir() string { return c.dir }

// GetChunk returns the chunk from the cache directory, or fetches it from
// the remote and caches it.
func (c *Cache) GetChunk(ctx context.Context, id casync.ChunkID) ([]byte, error) {
	if err := ctxErr(ctx, "get", id); err != nil {
		return nil, err
	}
	if data, ok := c.readCached(nil, id); ok {
		c.stats.hits.Add(1)
		return data, nil
	}
	ready := make(chan *flight, 1)
	if f, lead := c.join(id, ready); lead {
		go func() {
			data, err := c.fetch(context.WithoutCancel(ctx), id)
			c.land(f, data, err)
		}()
	}
	select {
	case <-ctx.Done():
		return nil, fmt.Errorf("get chunk %s: %w", id, ctx.Err())
	case f := <-ready:
		if f.err != nil {
			return nil, f.err
		}
		if f.shared {
			return slices.Clone(f.data), nil
		}
		return f.data, nil
	}
}

// flight is one fetch of a chunk from the remote, which every GetChunk and
// GetChunks call of this process that misses the chunk meanwhile waits
// for, instead of fetching it again.
type flight struct {
	id      casync.ChunkID
	data    []byte
	err     error
	shared  bool             // more than one waiter: each copies data
	waiters []chan<- *flight // each told once, with room to spare
}

// join adds ready to the waiters of the fetch of id, and starts that
// fetch's flight if there is none: then lead is true, and the caller must
// fetch the chunk and land the flight.
func (c *Cache) join(id casync.ChunkID, ready chan<- *flight) (f *flight, lead bool) {
	c.flightMu.Lock()
	defer c.flightMu.Unlock()
	if f := c.flights[id]; f != nil {
		f.waiters = append(f.waiters, ready)
		return f, false
	}
	f = &flight{id: id, waiters: []chan<- *flight{ready}}
	c.flights[id] = f
	return f, true
}

// land ends the flight f with its outcome and tells its waiters.
func (c *Cache) land(f *flight, data []byte, err error) {
	c.flightMu.Lock()
	defer c.flightMu.Unlock()
	delete(c.flights, f.id)
	f.data, f.err, f.shared = data, err, len(f.waiters) > 1
	for _, w := range f.waiters {
		w <- f
	}
}

// GetChunks gets the chunks that are cached from the cache directory and
// the others from the remote, in one GetChunks call for those no fetch of
// this process is already getting; a chunk another call is fetching is
// waited for instead. Each chunk fetched is written to the cache once,
// as the remote sent its frame. A repeated ID is fetched once and
// answered at each of its indexes. The fetch runs on without the
// caller's cancellation, as GetChunk's does.
func (c *Cache) GetChunks(ctx context.Context, ids []casync.ChunkID, fn func(Got)) {
	missed := make(map[casync.ChunkID][]int)
	var order []casync.ChunkID
	for i, id := range ids {
		if err := ctxErr(ctx, "get", id); err != nil {
			fn(Got{Index: i, Err: err})
			continue
		}
		if at, ok := missed[id]; ok {
			missed[id] = append(at, i)
			continue
		}
		if data, ok := c.readCached(nil, id); ok {
			c.stats.hits.Add(1)
			fn(Got{Index: i, Data: data})
			continue
		}
		missed[id] = []int{i}
		order = append(order, id)
	}
	if len(order) == 0 {
		return
	}
	ready := make(chan *flight, len(order))
	var lead []*flight
	for _, id := range order {
		if f, ok := c.join(id, ready); ok {
			lead = append(lead, f)
		}
	}
	if len(lead) > 0 {
		go c.fetchAll(context.WithoutCancel(ctx), lead)
	}
	for range order {
		select {
		case <-ctx.Done():
			for _, id := range order {
				for _, i := range missed[id] {
					fn(Got{Index: i, Err: fmt.Errorf("get chunk %s: %w", id, ctx.Err())})
				}
			}
			return
		case f := <-ready:
			for _, i := range missed[f.id] {
				// fn keeps neither, so the flight's data is lent, not copied.
				fn(Got{Index: i, Data: f.data, Err: f.err})
			}
			delete(missed, f.id)
		}
	}
}

// fetchAll fetches the chunks of the flights lead, which this process
// fetches nowhere else, and lands each flight: in one GetChunks call to
// the remote, except for those another process sharing the directory is
// fetching, which are waited for (see fetch).
func (c *Cache) fetchAll(ctx context.Context, lead []*flight) {
	var ask []*flight
	var release []func()
	var others sync.WaitGroup
	for _, f := range lead {
		// An earlier flight, or another process, may have cached it since.
		if data, ok := c.readCached(nil, f.id); ok {
			c.stats.hits.Add(1)
			c.land(f, data, nil)
			continue
		}
		rel, busy := c.node.tryLockFetch(f.id)
		if busy {
			others.Go(func() {
				data, err := c.fetch(ctx, f.id)
				c.land(f, data, err)
			})
			continue
		}
		if rel != nil {
			// The last holder may have cached it just before we locked.
			if data, ok := c.readCached(nil, f.id); ok {
				rel()
				c.stats.hits.Add(1)
				c.land(f, data, nil)
				continue
			}
		}
		ask = append(ask, f)
		release = append(release, rel)
	}
	defer others.Wait()
	if len(ask) == 0 {
		return
	}
	c.stats.misses.Add(uint64(len(ask)))
	ids := make([]casync.ChunkID, len(ask))
	for k, f := range ask {
		ids[k] = f.id
	}
	landed := make([]bool, len(ask))
	GetChunks(ctx, c.remote, ids, batchParallel, func(g Got) {
		if g.Index < 0 || g.Index >= len(ask) || landed[g.Index] {
			return
		}
		landed[g.Index] = true
		f := ask[g.Index]
		if g.Err == nil {
			frame := g.Frame
			if frame == nil {
				frame = casync.CompressChunk(nil, g.Data)
			}
			c.save(f.id, frame)
		}
		if rel := release[g.Index]; rel != nil {
			rel()
		}
		c.land(f, slices.Clone(g.Data), g.Err)
	})
	for k, ok := range landed {
		if !ok { // a remote that broke the contract
			if rel := release[k]; rel != nil {
				rel()
			}
			c.land(ask[k], nil, fmt.Errorf("get chunk %s from %s: the store gave no answer for it", ids[k], Name(c.remote)))
		}
	}
}

// AppendCached appends chunk id from the cache directory to dst and
// returns the extended slice, as append does. It never asks the remote
// store: the error wraps ErrNotFound if the chunk is not cached (or is
// corrupt, and so removed). Reading ahead from the cache costs no
// network, which makes it safe to do speculatively.
//
// A caller that reuses buffers with room for the chunk reads without
// allocating: at a gigabyte a second, allocating a fresh 64 KiB for
// every chunk costs a quarter of the throughput in GC work and cold
// memory. On error, dst's spare capacity may have been written.
func (c *Cache) AppendCached(ctx context.Context, dst []byte, id casync.ChunkID) ([]byte, error) {
	if err := ctxErr(ctx, "get cached", id); err != nil {
		return nil, err
	}
	data, ok := c.readCached(dst, id)
	if !ok {
		return nil, fmt.Errorf("chunk %s is not in the cache %s: %w", id, c.dir, ErrNotFound)
	}
	c.stats.hits.Add(1)
	return data, nil
}

// Cached reports whether id has a file in the cache directory, without
// reading it: a reader asks it to tell a chunk that is a file read away
// from one that costs a round trip. It counts nothing.
func (c *Cache) Cached(id casync.ChunkID) bool {
	ok, _ := statChunkFile(chunkFile(c.dir, id))
	return ok
}

// readCached reads id from the cache directory, verifies it and appends
// it to dst. A corrupt file is removed.
func (c *Cache) readCached(dst []byte, id casync.ChunkID) ([]byte, bool) {
	name := chunkFile(c.dir, id)
	c.pin(id)
	defer c.unpin(id)
	bp := scratch.Get().(*[]byte)
	defer scratch.Put(bp)
	frame, mtime, err := readFrameFileInto(name, *bp)
	if err == nil {
		*bp = frame[:0]
	}
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			c.log.Warn("cannot read cached chunk; fetching it again", "id", id, "err", err)
		}
		return nil, false
	}
	data, err := decodeFrame(dst, c.opts.Digest, id, frame)
	if err != nil {
		c.stats.corrupt.Add(1)
		c.log.Warn("removing corrupt cached chunk; fetching it again", "path", name, "err", err)
		if err := os.Remove(name); err == nil {
			c.node.removed(int64(len(frame)))
		}
		return nil, false
	}
	if now := time.Now(); now.Sub(mtime) > touchAfter {
		// Keep the LRU order; failing to is harmless.
		_ = os.Chtimes(name, now, now)
	}
	return data, true
}

// fetch is the shared download of one chunk.
func (c *Cache) fetch(ctx context.Context, id casync.ChunkID) ([]byte, error) {
	// An earlier flight, or another process, may have cached it since.
	if data, ok := c.readCached(nil, id); ok {
		c.stats.hits.Add(1)
		return data, nil
	}
	// Another process may be fetching it right now: wait for it.
	var cached []byte
	release, done := c.node.lockFetch(ctx, id, time.Now().Add(c.opts.LockWait), func() bool {
		var ok bool
		cached, ok = c.readCached(nil, id)
		return ok
	})
	if done {
		c.stats.hits.Add(1)
		return cached, nil
	}
	if release != nil {
		defer release()
		// The last holder may have cached it just before we locked.
		if data, ok := c.readCached(nil, id); ok {
			c.stats.hits.Add(1)
			return data, nil
		}
	}
	c.stats.misses.Add(1)
	// Every decorator is a FrameStore: a frame comes as stored, and
	// GetFrame verified it.
	frame, err := GetFrame(ctx, c.remote, id)
	if err != nil {
		return nil, err
	}
	data, err := casync.DecompressChunk(nil, frame)
	if err != nil {
		return nil, err
	}
	c.save(id, frame)
	return data, nil
}

// save writes a verified frame to the cache. A failure is logged and
// otherwise ignored: the chunk is still good, just not cached.
func (c *Cache) save(id casync.ChunkID, frame []byte) {
	size := int64(len(frame))
	if c.opts.MaxBytes > 0 && !c.makeRoom(size) {
		c.log.Debug("no room in the capped cache for the chunk; serving it uncached", "id", id, "max", c.opts.MaxBytes)
		return
	}
	err := writeFileAtomic(chunkFile(c.dir, id), frame, false)
	if c.opts.MaxBytes > 0 {
		c.node.settle(size, err == nil)
	}
	if err != nil {
		// A read-only or full cache fails for every chunk: say it once.
		if c.warned.CompareAndSwap(false, true) {
			c.log.Warn("cannot cache chunk; chunks are still served, and further failures are logged at debug level", "dir", c.dir, "id", id, "err", err)
		} else {
			c.log.Debug("cannot cache chunk", "id", id, "err", err)
		}
		return
	}
	if c.opts.MaxBytes > 0 && c.node.used() > c.opts.MaxBytes-c.opts.MaxBytes/20 && c.evicting.CompareAndSwap(false, true) {
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			defer c.evicting.Store(false)
			if _, _, err := c.node.evictTo(context.Background(), c.lowWater(), false, c.pinned, nil); err != nil {
				c.log.Warn("cannot evict cached chunks", "dir", c.dir, "err", err)
			}
		}()
	}
}

// lowWater is what an eviction brings the directory down to.
func (c *Cache) lowWater() int64 { return c.opts.MaxBytes - c.opts.MaxBytes/10 }

// makeRoom reserves size bytes under the cap, evicting first if they do
// not fit, and reports whether they do. A chunk larger than what eviction
// can free is not cached.
func (c *Cache) makeRoom(size int64) bool {
	if c.node.reserve(size, c.opts.MaxBytes) {
		return true
	}
	// Wait for the evict lock: another process evicting may make room
	// for this one too, and then this one need not walk the directory.
	reserved := false
	_, _, err := c.node.evictTo(context.Background(), c.lowWater(), true, c.pinned, func() bool {
		reserved = c.node.reserve(size, c.opts.MaxBytes)
		return !reserved
	})
	if err != nil {
		c.log.Warn("cannot evict cached chunks", "dir", c.dir, "err", err)
	}
	return reserved || c.node.reserve(size, c.opts.MaxBytes)
}

// pinned reports whether a read in this process holds id.
func (c *Cache) pinned(id casync.ChunkID) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pins[id] > 0
}

func (c *Cache) pin(id casync.ChunkID) {
	if c.opts.MaxBytes <= 0 {
		return
	}
	c.mu.Lock()
	c.pins[id]++
	c.mu.Unlock()
}

func (c *Cache) unpin(id casync.ChunkID) {
	if c.opts.MaxBytes <= 0 {
		return
	}
	c.mu.Lock()
	if c.pins[id]--; c.pins[id] <= 0 {
		delete(c.pins, id)
	}
	c.mu.Unlock()
}

// Evict removes the least recently used chunks until the cache is 10%
// under MaxBytes, and returns how many it removed. It does nothing without
// MaxBytes. The cache calls it on its own when needed; it waits for an
// eviction that another process sharing the directory is running.
func (c *Cache) Evict(ctx context.Context) (int, error) {
	if c.opts.MaxBytes <= 0 {
		return 0, nil
	}
	removed, bytes, err := c.node.evictTo(ctx, c.lowWater(), true, c.pinned, nil)
	if err != nil {
		return removed, err
	}
	c.log.Debug("evicted cached chunks", "removed", removed, "bytes", bytes)
	return removed, nil
}

// HasChunk reports whether the cache or else the remote has id.
func (c *Cache) HasChunk(ctx context.Context, id casync.ChunkID) (bool, error) {
	if err := ctxErr(ctx, "look up", id); err != nil {
		return false, err
	}
	if ok, _ := statChunkFile(chunkFile(c.dir, id)); ok {
		c.stats.hits.Add(1)
		return true, nil
	}
	return c.remote.HasChunk(ctx, id)
}

// HasChunks reports, for each of ids, whether the cache or else the
// remote has it, asking the remote about the ones not cached in one
// HasChunks call.
func (c *Cache) HasChunks(ctx context.Context, ids []casync.ChunkID) ([]bool, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("look up %d chunks: %w", len(ids), err)
	}
	out := make([]bool, len(ids))
	var ask []casync.ChunkID
	var pos []int
	for i, id := range ids {
		if ok, _ := statChunkFile(chunkFile(c.dir, id)); ok {
			out[i] = true
			continue
		}
		ask = append(ask, id)
		pos = append(pos, i)
	}
	if len(ask) == 0 {
		return out, nil
	}
	has, err := HasChunks(ctx, c.remote, ask, hasParallel)
	if err != nil {
		return nil, err
	}
	for k, i := range pos {
		out[i] = has[k]
	}
	return out, nil
}

// StoreChunk writes the chunk to the remote, which must be a WriteStore,
// and then to the cache.
func (c *Cache) StoreChunk(ctx context.Context, id casync.ChunkID, data []byte) error {
	if err := Write(ctx, c.remote, id, data); err != nil {
		return err
	}
	if ok, _ := statChunkFile(chunkFile(c.dir, id)); !ok {
		c.save(id, casync.CompressChunk(nil, data))
	}
	return nil
}

// StoreFrame writes the frame to the remote (see StoreFrame), which
// verifies it, and then to the cache.
func (c *Cache) StoreFrame(ctx context.Context, id casync.ChunkID, frame []byte) error {
	if err := WriteFrame(ctx, c.remote, id, frame); err != nil {
		return err
	}
	if ok, _ := statChunkFile(chunkFile(c.dir, id)); !ok {
		c.save(id, frame)
	}
	return nil
}

// String names the cache and its remote.
func (c *Cache) String() string { return Name(c.remote) }

// Stats returns the cache's counters of its directory: Hits are chunks
// read from it, Misses chunks fetched from the remote, Corrupt cached
// files that failed verification (and were removed). Count the remote's
// calls with a Counted.
func (c *Cache) Stats() Stats { return c.stats.snapshot() }

// Close waits for a background eviction and closes the remote.
func (c *Cache) Close() error {
	c.wg.Wait()
	err := c.remote.Close()
	if nerr := c.node.close(); err == nil {
		err = nerr
	}
	return err
}
