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

	"golang.org/x/sync/singleflight"

	"github.com/bootfs/bootfs/casync"
)

// CacheOptions configure a Cache. The zero value works.
type CacheOptions struct {
	// Digest is the hash that chunk IDs are checked against.
	Digest casync.Digest
	// MaxBytes caps the size of the chunk files in the cache directory.
	// When a fetch takes the cache over it, the least recently used
	// chunks are removed until it is 10% under. Zero means no cap.
	MaxBytes int64
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
//   - Chunks are written to a temporary file and renamed into place, so
//     other processes never see half a chunk, and two processes writing
//     the same chunk each rename a whole, identical file.
//   - With MaxBytes, the least recently used chunks (by mtime, which a read
//     refreshes) are evicted. A chunk being read in this process is never
//     evicted. Another process evicting a file this one has open is
//     harmless on Linux: the open file stays readable until closed.
type Cache struct {
	remote Store
	dir    string
	opts   CacheOptions
	log    *slog.Logger
	flight singleflight.Group
	stats  counters

	size     atomic.Int64 // bytes of chunk files, as far as this process knows
	evicting atomic.Bool
	warned   atomic.Bool // of a chunk it could not save
	wg       sync.WaitGroup
	mu       sync.Mutex
	pins     map[casync.ChunkID]int
}

var (
	_ FrameWriteStore = (*Cache)(nil)
	_ BatchHaser      = (*Cache)(nil)
	_ StatsReporter   = (*Cache)(nil)
)

// NewCache returns a cache of remote in dir, creating dir if needed.
func NewCache(remote Store, dir string, opts CacheOptions) (*Cache, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create chunk cache: %w", err)
	}
	c := &Cache{remote: remote, dir: dir, opts: opts, log: logger(opts.Logger), pins: make(map[casync.ChunkID]int)}
	if opts.MaxBytes > 0 {
		var total int64
		err := walkStore(context.Background(), dir, func(ci ChunkInfo) error {
			total += ci.Size
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("open chunk cache: %w", err)
		}
		c.size.Store(total)
	}
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
	ch := c.flight.DoChan(string(id[:]), func() (any, error) {
		return c.fetch(context.WithoutCancel(ctx), id)
	})
	select {
	case <-ctx.Done():
		return nil, fmt.Errorf("get chunk %s: %w", id, ctx.Err())
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		data := r.Val.([]byte)
		if r.Shared {
			data = slices.Clone(data)
		}
		return data, nil
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
			c.size.Add(-int64(len(frame)))
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
	if err := writeFileAtomic(chunkFile(c.dir, id), frame, false); err != nil {
		// A read-only or full cache fails for every chunk: say it once.
		if c.warned.CompareAndSwap(false, true) {
			c.log.Warn("cannot cache chunk; chunks are still served, and further failures are logged at debug level", "dir", c.dir, "id", id, "err", err)
		} else {
			c.log.Debug("cannot cache chunk", "id", id, "err", err)
		}
		return
	}
	if c.opts.MaxBytes > 0 && c.size.Add(int64(len(frame))) > c.opts.MaxBytes && c.evicting.CompareAndSwap(false, true) {
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			defer c.evicting.Store(false)
			if _, err := c.Evict(context.Background()); err != nil {
				c.log.Warn("cannot evict cached chunks", "err", err)
			}
		}()
	}
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
// MaxBytes. GetChunk calls it in the background when needed.
func (c *Cache) Evict(ctx context.Context) (int, error) {
	if c.opts.MaxBytes <= 0 {
		return 0, nil
	}
	var all []ChunkInfo
	var total int64
	err := walkStore(ctx, c.dir, func(ci ChunkInfo) error {
		all = append(all, ci)
		total += ci.Size
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("evict cached chunks: %w", err)
	}
	c.size.Store(total)
	target := c.opts.MaxBytes - c.opts.MaxBytes/10
	if total <= c.opts.MaxBytes {
		return 0, nil
	}
	slices.SortFunc(all, func(a, b ChunkInfo) int { return a.ModTime.Compare(b.ModTime) })
	removed := 0
	for _, ci := range all {
		if total <= target {
			break
		}
		// Holding mu keeps a reader from pinning the chunk between the
		// check and the removal.
		c.mu.Lock()
		pinned := c.pins[ci.ID] > 0
		if !pinned {
			err = os.Remove(ci.Path)
		}
		c.mu.Unlock()
		if pinned {
			continue
		}
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return removed, fmt.Errorf("evict cached chunk: %w", err)
		}
		total -= ci.Size
		c.size.Add(-ci.Size)
		removed++
	}
	c.log.Debug("evicted cached chunks", "removed", removed, "bytes", total)
	return removed, nil
}

// HasChunk reports whether the cache or else the remote has id.
func (c *Cache) HasChunk(ctx context.Context, id casync.ChunkID) (bool, error) {
	if err := ctxErr(ctx, "look up", id); err != nil {
		return false, err
	}
	if _, err := os.Stat(chunkFile(c.dir, id)); err == nil {
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
		if _, err := os.Stat(chunkFile(c.dir, id)); err == nil {
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
	if _, err := os.Stat(chunkFile(c.dir, id)); err != nil {
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
	if _, err := os.Stat(chunkFile(c.dir, id)); err != nil {
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
	return c.remote.Close()
}
