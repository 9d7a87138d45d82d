package lazyfs

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
	"github.com/bootfs/bootfs/chunkstore/opener"
)

// blob is a random blob chunked into a memory store.
type blob struct {
	data  []byte
	idx   *casync.Index
	store *chunkstore.Memory
}

func newBlob(t testing.TB, seed uint64, n int) *blob {
	t.Helper()
	b := &blob{data: randBytes(seed, n), store: chunkstore.NewMemory(chunkstore.MemoryOptions{})}
	var err error
	b.idx, err = casync.BuildIndex(context.Background(), bytes.NewReader(b.data), casync.IndexBlobFlags, casync.ChunkOptions{Size: smallChunks}, func(c casync.Chunk) error {
		return b.store.StoreChunk(context.Background(), c.ID, c.Data)
	})
	if err != nil {
		t.Fatalf("BuildIndex: %v", err)
	}
	if len(b.idx.Chunks) < 10 {
		t.Fatalf("blob has %d chunks, want at least 10", len(b.idx.Chunks))
	}
	return b
}

func TestReaderReadAt(t *testing.T) {
	b := newBlob(t, 7, 1<<20+333)
	r := NewReader(b.idx, b.store, ReaderOptions{Jobs: 3, CacheBytes: 100 << 10})
	defer r.Close()
	size := int64(len(b.data))
	if r.Size() != size {
		t.Fatalf("Size() = %d, want %d", r.Size(), size)
	}
	for _, tc := range []struct {
		name    string
		off     int64
		n       int
		wantN   int
		wantErr error
	}{
		{name: "start", off: 0, n: 100, wantN: 100},
		{name: "one byte", off: 12345, n: 1, wantN: 1},
		{name: "across many chunks", off: 1000, n: 700 << 10, wantN: 700 << 10},
		{name: "whole", off: 0, n: int(size), wantN: int(size)},
		{name: "chunk boundary", off: int64(b.idx.Chunks[3].Start), n: int(b.idx.Chunks[3].Size), wantN: int(b.idx.Chunks[3].Size)},
		{name: "last byte", off: size - 1, n: 1, wantN: 1},
		{name: "past end", off: size - 10, n: 100, wantN: 10, wantErr: io.EOF},
		{name: "at end", off: size, n: 10, wantN: 0, wantErr: io.EOF},
		{name: "beyond end", off: size + 5000, n: 10, wantN: 0, wantErr: io.EOF},
		{name: "empty", off: 10, n: 0, wantN: 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := make([]byte, tc.n)
			n, err := r.ReadAt(p, tc.off)
			if n != tc.wantN || !errors.Is(err, tc.wantErr) || (tc.wantErr == nil && err != nil) {
				t.Fatalf("ReadAt(%d bytes, %d) = %d, %v, want %d, %v", tc.n, tc.off, n, err, tc.wantN, tc.wantErr)
			}
			if n > 0 && !bytes.Equal(p[:n], b.data[tc.off:tc.off+int64(n)]) {
				t.Errorf("ReadAt(%d bytes, %d) returned wrong bytes", tc.n, tc.off)
			}
		})
	}
	if _, err := r.ReadAt(make([]byte, 1), -1); err == nil {
		t.Errorf("ReadAt(-1) = nil error, want one")
	}
	if got := r.lru.bytes(); got > 100<<10+int64(smallChunks.Max) {
		t.Errorf("LRU holds %d bytes, want at most %d", got, 100<<10+smallChunks.Max)
	}
}

func TestReaderRandomReads(t *testing.T) {
	b := newBlob(t, 8, 2<<20)
	for _, tc := range []struct {
		name string
		opts ReaderOptions
	}{
		{name: "defaults"},
		{name: "one job tiny cache", opts: ReaderOptions{Jobs: 1, CacheBytes: 1}},
		{name: "no read-ahead", opts: ReaderOptions{ReadAhead: -1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := NewReader(b.idx, b.store, tc.opts)
			defer r.Close()
			rng := rand.New(rand.NewPCG(1, 2))
			for range 300 {
				off := rng.Int64N(int64(len(b.data)))
				n := rng.IntN(200 << 10)
				p := make([]byte, n)
				got, err := r.ReadAt(p, off)
				want := min(n, len(b.data)-int(off))
				if got != want || (err != nil && err != io.EOF) {
					t.Fatalf("ReadAt(%d bytes, %d) = %d, %v, want %d", n, off, got, err, want)
				}
				if !bytes.Equal(p[:got], b.data[off:off+int64(got)]) {
					t.Fatalf("ReadAt(%d bytes, %d) returned wrong bytes", n, off)
				}
			}
		})
	}
}

// Concurrent readers of overlapping ranges get the right bytes, and every
// chunk is fetched once while it stays in memory.
func TestReaderConcurrent(t *testing.T) {
	b := newBlob(t, 9, 1<<20)
	rec := newRecordingStore(b.store)
	r := NewReader(b.idx, rec, ReaderOptions{Jobs: 4, ReadAhead: -1})
	defer r.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for g := range 16 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 3))
			for range 100 {
				off := rng.Int64N(int64(len(b.data)))
				p := make([]byte, rng.IntN(100<<10)+1)
				n, err := r.ReadAt(p, off)
				if err != nil && err != io.EOF {
					errs <- err
					return
				}
				if !bytes.Equal(p[:n], b.data[off:off+int64(n)]) {
					errs <- errors.New("wrong bytes")
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("concurrent ReadAt: %v", err)
	}
	for id, n := range rec.fetched() {
		if n != 1 {
			t.Errorf("chunk %s fetched %d times, want 1 (the LRU holds the whole blob)", id, n)
		}
	}
	if s := r.Stats(); s.ChunksFetched != uint64(len(b.idx.Chunks)) || s.Errors != 0 {
		t.Errorf("Stats() = %+v, want %d chunks fetched and no errors", s, len(b.idx.Chunks))
	}
}

func TestReaderErrors(t *testing.T) {
	b := newBlob(t, 10, 512<<10)
	mid := b.idx.Chunks[5]
	// The store retries, as the opener composes it.
	fast := chunkstore.RetryOptions{Timeout: 100 * time.Millisecond, Retries: 2, Backoff: time.Millisecond}
	retried := func(s chunkstore.Store) *chunkstore.Counted { return chunkstore.NewCountedRetry(s, fast) }

	t.Run("missing chunk is not retried", func(t *testing.T) {
		mem := chunkstore.NewMemory(chunkstore.MemoryOptions{})
		for _, c := range b.idx.Chunks {
			if c.ID != mid.ID {
				data, _ := b.store.GetChunk(context.Background(), c.ID)
				mem.StoreChunk(context.Background(), c.ID, data)
			}
		}
		rec := newRecordingStore(mem)
		r := NewReader(b.idx, retried(rec), ReaderOptions{})
		defer r.Close()
		_, err := r.ReadAt(make([]byte, 10), int64(mid.Start))
		var ce *ChunkError
		if !errors.As(err, &ce) || ce.ID != mid.ID || !errors.Is(err, ErrUnavailable) || !errors.Is(err, chunkstore.ErrNotFound) {
			t.Fatalf("ReadAt(missing chunk) = %v, want a *ChunkError for %s wrapping ErrUnavailable and ErrNotFound", err, mid.ID)
		}
		if n := rec.fetched()[mid.ID]; n != 1 {
			t.Errorf("missing chunk fetched %d times, want 1", n)
		}
		// Other chunks still read.
		p := make([]byte, 100)
		if _, err := r.ReadAt(p, 0); err != nil || !bytes.Equal(p, b.data[:100]) {
			t.Errorf("ReadAt(0) after a failure = %v, want the right bytes", err)
		}
	})

	t.Run("flaky store is retried", func(t *testing.T) {
		store := retried(&flakyStore{Store: b.store, n: 2})
		r := NewReader(b.idx, store, ReaderOptions{})
		defer r.Close()
		p := make([]byte, 50<<10)
		if _, err := r.ReadAt(p, int64(mid.Start)); err != nil || !bytes.Equal(p, b.data[mid.Start:mid.Start+50<<10]) {
			t.Fatalf("ReadAt(flaky) = %v, want the right bytes after retries", err)
		}
		if s := r.Stats(); store.Stats().Retries < 2 || s.Errors != 0 {
			t.Errorf("Stats() = %+v, store %+v, want at least 2 retries and no errors", s, store.Stats())
		}
	})

	t.Run("too flaky store fails", func(t *testing.T) {
		r := NewReader(b.idx, retried(&flakyStore{Store: b.store, n: 3}), ReaderOptions{})
		defer r.Close()
		_, err := r.ReadAt(make([]byte, 10), int64(mid.Start))
		var ce *ChunkError
		if !errors.As(err, &ce) || ce.Attempts != 3 {
			t.Fatalf("ReadAt(too flaky) = %v, want a *ChunkError after 3 attempts", err)
		}
	})

	t.Run("corrupt chunk", func(t *testing.T) {
		local, err := chunkstore.NewLocal(t.TempDir(), chunkstore.LocalOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range b.idx.Chunks {
			data, _ := b.store.GetChunk(context.Background(), c.ID)
			if c.ID == mid.ID {
				// The frame of other bytes under mid's name.
				name := filepath.Join(local.Dir(), chunkstore.ChunkPath(c.ID))
				if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(name, casync.CompressChunk(nil, data[1:]), 0o644); err != nil {
					t.Fatal(err)
				}
				continue
			}
			local.StoreChunk(context.Background(), c.ID, data)
		}
		r := NewReader(b.idx, retried(local), ReaderOptions{})
		defer r.Close()
		p := make([]byte, 10)
		_, err = r.ReadAt(p, int64(mid.Start)+5)
		var cs *casync.ChecksumError
		if !errors.Is(err, ErrUnavailable) || !errors.As(err, &cs) {
			t.Fatalf("ReadAt(corrupt chunk) = %v, want ErrUnavailable wrapping a *casync.ChecksumError", err)
		}
		if !bytes.Equal(p, make([]byte, 10)) {
			t.Errorf("ReadAt(corrupt chunk) wrote %x into the buffer, want nothing", p)
		}
	})

	t.Run("size mismatch", func(t *testing.T) {
		bad := *b.idx
		bad.Chunks = append([]casync.IndexChunk(nil), b.idx.Chunks...)
		bad.Chunks[0].Size++ // and the rest shift: the index is lying
		for i := 1; i < len(bad.Chunks); i++ {
			bad.Chunks[i].Start++
		}
		r := NewReader(&bad, retried(b.store), ReaderOptions{})
		defer r.Close()
		if _, err := r.ReadAt(make([]byte, 10), 0); !errors.Is(err, ErrMismatch) {
			t.Fatalf("ReadAt(wrong chunk size) = %v, want ErrMismatch", err)
		}
	})
}

// A store that never answers gives an error within the timeouts, whether
// or not it heeds its context.
func TestReaderHangingStore(t *testing.T) {
	b := newBlob(t, 11, 256<<10)
	for _, tc := range []struct {
		name      string
		ignoreCtx bool
	}{
		{name: "heeds context"},
		{name: "ignores context", ignoreCtx: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hs := &hangingStore{Store: b.store, ignoreCtx: tc.ignoreCtx, release: make(chan struct{})}
			defer close(hs.release)
			store := chunkstore.NewCountedRetry(hs, chunkstore.RetryOptions{Timeout: 100 * time.Millisecond, Retries: 1, Backoff: 10 * time.Millisecond})
			r := NewReader(b.idx, store, ReaderOptions{})
			defer r.Close()
			start := time.Now()
			_, err := r.ReadAt(make([]byte, 10), 0)
			took := time.Since(start)
			if !errors.Is(err, ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("ReadAt(hanging store) = %v, want ErrUnavailable wrapping DeadlineExceeded", err)
			}
			if took > 2*time.Second {
				t.Errorf("ReadAt(hanging store) took %v, want about 210ms", took)
			}
			if n := hs.calls.Load(); n != 2 {
				t.Errorf("store called %d times, want 2 (one retry)", n)
			}
		})
	}
}

// A waiter that gives up returns at once; the fetch goes on and serves
// the next reader.
func TestReaderWaiterCancel(t *testing.T) {
	b := newBlob(t, 12, 256<<10)
	gate := make(chan struct{})
	slow := &gatedStore{Store: b.store, gate: gate}
	r := NewReader(b.idx, slow, ReaderOptions{ReadAhead: -1})
	defer r.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := r.ReadAtContext(ctx, make([]byte, 10), 0)
		done <- err
	}()
	waitFor(t, 5*time.Second, "the fetch to start", func() bool { return slow.calls.Load() == 1 })
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("ReadAtContext(cancelled) = %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ReadAtContext did not return after its context was cancelled")
	}
	close(gate)
	p := make([]byte, 10)
	if _, err := r.ReadAt(p, 0); err != nil || !bytes.Equal(p, b.data[:10]) {
		t.Fatalf("ReadAt after a cancelled waiter = %v, want the right bytes", err)
	}
	if n := slow.calls.Load(); n != 1 {
		t.Errorf("store called %d times, want 1 (the first fetch is shared)", n)
	}
}

type gatedStore struct {
	chunkstore.Store
	gate  chan struct{}
	calls atomic.Int64
}

func (s *gatedStore) GetChunk(ctx context.Context, id casync.ChunkID) ([]byte, error) {
	s.calls.Add(1)
	select {
	case <-s.gate:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return s.Store.GetChunk(ctx, id)
}

func TestReaderPrefetch(t *testing.T) {
	b := newBlob(t, 13, 1<<20)
	rec := newRecordingStore(b.store)
	r := NewReader(b.idx, rec, ReaderOptions{Jobs: 2})
	defer r.Close()
	r.Prefetch(100<<10, 300<<10)
	want := coveringChunks(b.idx, 100<<10, 300<<10)
	waitFor(t, 5*time.Second, "prefetch", func() bool {
		n := 0
		for id := range want {
			if r.lru.contains(id) {
				n++
			}
		}
		return n == len(want)
	})
	r.wg.Wait()
	if got := rec.gets.Load(); got != int64(len(want)) {
		t.Errorf("Prefetch fetched %d chunks, want %d", got, len(want))
	}
	before := rec.gets.Load()
	p := make([]byte, 300<<10)
	if _, err := r.ReadAt(p, 100<<10); err != nil || !bytes.Equal(p, b.data[100<<10:400<<10]) {
		t.Fatalf("ReadAt after Prefetch = %v, want the right bytes", err)
	}
	if got := rec.gets.Load(); got != before {
		t.Errorf("ReadAt of prefetched range fetched %d chunks, want 0", got-before)
	}
	r.Close()
	r.Prefetch(0, 1<<20) // after Close: no goroutines, no panic
	if got := rec.gets.Load(); got != before {
		t.Errorf("Prefetch after Close fetched %d chunks, want 0", got-before)
	}
}

// FuzzReaderReadAt checks that any read returns the blob's bytes.
func FuzzReaderReadAt(f *testing.F) {
	b := newBlob(f, 14, 300<<10)
	r := NewReader(b.idx, b.store, ReaderOptions{CacheBytes: 64 << 10})
	f.Cleanup(func() { r.Close() })
	f.Add(int64(0), 10)
	f.Add(int64(len(b.data)-1), 2)
	f.Add(int64(b.idx.Chunks[2].Start)-1, 2)
	f.Add(int64(-5), 3)
	f.Add(int64(1)<<62, 3)
	f.Fuzz(func(t *testing.T, off int64, n int) {
		if n < 0 || n > 1<<20 {
			return
		}
		p := make([]byte, n)
		got, err := r.ReadAt(p, off)
		switch {
		case off < 0:
			if err == nil {
				t.Fatalf("ReadAt(%d, %d) = nil error, want one", n, off)
			}
			return
		case off >= int64(len(b.data)):
			if got != 0 || (n > 0 && err != io.EOF) {
				t.Fatalf("ReadAt(%d, %d) = %d, %v, want 0, EOF", n, off, got, err)
			}
			return
		}
		want := min(int64(n), int64(len(b.data))-off)
		if int64(got) != want || (err != nil && err != io.EOF) || (int64(n) > want && err != io.EOF) {
			t.Fatalf("ReadAt(%d, %d) = %d, %v, want %d", n, off, got, err, want)
		}
		if !bytes.Equal(p[:got], b.data[off:off+int64(got)]) {
			t.Fatalf("ReadAt(%d, %d) returned wrong bytes", n, off)
		}
	})
}

// TestReaderAheadFromCache: sequential reads load the chunks after them
// from the local cache into memory, but never ask the remote store for a
// chunk no read needs.
func TestReaderAheadFromCache(t *testing.T) {
	b := newBlob(t, 11, 3<<20)
	step := int(b.idx.Chunks[0].Size) / 2 // reads smaller than a chunk, as of small files

	readAll := func(r *Reader) {
		t.Helper()
		p := make([]byte, step)
		for off := int64(0); off < r.Size(); off += int64(step) {
			n, err := r.ReadAt(p, off)
			if err != nil && err != io.EOF {
				t.Fatalf("ReadAt(%d): %v", off, err)
			}
			if !bytes.Equal(p[:n], b.data[off:off+int64(n)]) {
				t.Fatalf("ReadAt(%d) returned wrong bytes", off)
			}
			// A workload does something between reads; this one lets a
			// read-ahead it started finish, so the count below does not
			// depend on which goroutine wins.
			for r.aheadRunning.Load() {
				time.Sleep(50 * time.Microsecond)
			}
		}
	}

	// Cold: the cache is empty, so nothing is read ahead from it and the
	// remote serves exactly the chunks the reads cover, once each.
	remote := newRecordingStore(b.store)
	cache, err := chunkstore.NewCache(remote, t.TempDir(), chunkstore.CacheOptions{})
	if err != nil {
		t.Fatal(err)
	}
	r := NewReader(b.idx, cache, ReaderOptions{ReadAhead: -1})
	readAll(r)
	r.Close()
	for id, n := range remote.fetched() {
		if n != 1 {
			t.Errorf("chunk %s fetched %d times from the remote, want once", id, n)
		}
	}
	if got, want := len(remote.fetched()), len(uniqueIDs(b.idx)); got != want {
		t.Errorf("remote served %d chunks, want the %d the reads cover", got, want)
	}

	// Warm: with read-ahead on, most chunks are already in memory when the
	// read gets there, loaded from the cache, so few loads are the read
	// path's own; the remote is not asked at all.
	counted := &countingCache{Cache: cache}
	r = NewReader(b.idx, counted, ReaderOptions{})
	defer r.Close()
	before := len(remote.fetched())
	readAll(r)
	if n := r.Stats().ChunksFetched; n > uint64(len(b.idx.Chunks))/2 {
		t.Errorf("warm sequential read loaded %d of %d chunks itself, want most read ahead", n, len(b.idx.Chunks))
	}
	if after := len(remote.fetched()); after != before {
		t.Errorf("warm read fetched %d chunks from the remote", after-before)
	}
	counted.check(t, b.idx)

	// Readers racing the read-ahead, as the kernel's concurrent requests
	// do, wait for a chunk being loaded instead of reading it again: with
	// an LRU that holds the whole blob, every chunk is read from the cache
	// once.
	counted = &countingCache{Cache: cache}
	r2 := NewReader(b.idx, counted, ReaderOptions{CacheBytes: 64 << 20})
	defer r2.Close()
	var wg sync.WaitGroup
	for g := range 3 {
		wg.Go(func() {
			p := make([]byte, step+g*999)
			for off := int64(0); off < r2.Size(); off += int64(len(p)) {
				n, err := r2.ReadAt(p, off)
				if (err != nil && err != io.EOF) || !bytes.Equal(p[:n], b.data[off:off+int64(n)]) {
					t.Errorf("ReadAt(%d) = %d, %v: wrong bytes", off, n, err)
					return
				}
			}
		})
	}
	wg.Wait()
	counted.check(t, b.idx)
}

// TestReaderAheadMissFetchesTogether: reads waiting for chunks that the
// read-ahead tried to load from the cache, and did not find there, get
// them fetched from the store at once, not one after the other.
func TestReaderAheadMissFetchesTogether(t *testing.T) {
	b := newBlob(t, 23, 1<<20)
	const n = 4
	remote := &barrierStore{Store: b.store, n: n, all: make(chan struct{})}
	cache, err := chunkstore.NewCache(remote, t.TempDir(), chunkstore.CacheOptions{})
	if err != nil {
		t.Fatal(err)
	}
	r := NewReader(b.idx, cache, ReaderOptions{Jobs: 8})
	defer r.Close()

	// Read-ahead registers its loads of the first n chunks; a read of
	// them joins those loads before they run.
	loads := make([]*load, n)
	for i := range loads {
		if loads[i] = r.startLocal(i); loads[i] == nil {
			t.Fatalf("startLocal(%d) = nil, want a new load", i)
		}
	}
	end := b.idx.Chunks[n-1].Start + b.idx.Chunks[n-1].Size
	done := make(chan error, 1)
	go func() {
		p := make([]byte, end)
		_, err := r.ReadAt(p, 0)
		if err == nil && !bytes.Equal(p, b.data[:end]) {
			err = errors.New("wrong bytes")
		}
		done <- err
	}()
	waitFor(t, 5*time.Second, "the read to join the read-ahead's loads", func() bool {
		r.loadsMu.Lock()
		defer r.loadsMu.Unlock()
		for _, l := range loads {
			if l.waiters == 0 {
				return false
			}
		}
		return true
	})
	for i, l := range loads {
		go r.runLoad(i, l) // none is cached: each fails, and hands over
	}
	if err := <-done; err != nil {
		t.Fatalf("ReadAt: %v", err)
	}
	if s := r.Stats(); s.ChunksFetched != n || s.MemoryHits != 0 {
		t.Errorf("Stats() = %+v, want %d chunks fetched and no memory hits", s, n)
	}
}

// barrierStore holds every GetChunk until n of them are under way at
// once, and fails them if that does not happen within 2 seconds.
type barrierStore struct {
	chunkstore.Store
	n       int32
	arrived atomic.Int32
	all     chan struct{}
}

func (s *barrierStore) GetChunk(ctx context.Context, id casync.ChunkID) ([]byte, error) {
	if s.arrived.Add(1) == s.n {
		close(s.all)
	}
	select {
	case <-s.all:
		return s.Store.GetChunk(ctx, id)
	case <-time.After(2 * time.Second):
		return nil, errors.New("fetched one after the other, not at once")
	}
}

// countingCache counts the reads of each chunk from the cache, by the read
// path and by read-ahead alike.
type countingCache struct {
	*chunkstore.Cache
	mu    sync.Mutex
	reads map[casync.ChunkID]int
}

func (c *countingCache) count(id casync.ChunkID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.reads == nil {
		c.reads = map[casync.ChunkID]int{}
	}
	c.reads[id]++
}

func (c *countingCache) GetChunk(ctx context.Context, id casync.ChunkID) ([]byte, error) {
	c.count(id)
	return c.Cache.GetChunk(ctx, id)
}

func (c *countingCache) GetChunks(ctx context.Context, ids []casync.ChunkID, fn func(chunkstore.Got)) {
	for _, id := range ids {
		if c.Cached(id) {
			c.count(id)
		}
	}
	c.Cache.GetChunks(ctx, ids, fn)
}

func (c *countingCache) AppendCached(ctx context.Context, dst []byte, id casync.ChunkID) ([]byte, error) {
	c.count(id)
	return c.Cache.AppendCached(ctx, dst, id)
}

// check fails t unless every chunk of idx was read exactly once.
func (c *countingCache) check(t *testing.T, idx *casync.Index) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	for id := range uniqueIDs(idx) {
		if n := c.reads[id]; n != 1 {
			t.Errorf("chunk %s read from the cache %d times, want once", id, n)
		}
	}
}

func uniqueIDs(idx *casync.Index) map[casync.ChunkID]bool {
	m := map[casync.ChunkID]bool{}
	for _, c := range idx.Chunks {
		m[c.ID] = true
	}
	return m
}

// TestReaderRecycledBuffers reads a warm cache through a Reader whose LRU
// holds only a few chunks, so buffers read ahead from the cache are
// evicted and recycled while other reads copy out of them: sequential
// readers, which drive the read-ahead, and random ones, at once. Every
// read must return the right bytes. A buffer recycled while a read still
// copies from it shows up as another chunk's bytes.
func TestReaderRecycledBuffers(t *testing.T) {
	b := newBlob(t, 17, 4<<20)
	cache, err := chunkstore.NewCache(b.store, t.TempDir(), chunkstore.CacheOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	for _, c := range b.idx.Chunks {
		if _, err := cache.GetChunk(context.Background(), c.ID); err != nil {
			t.Fatal(err)
		}
	}
	r := NewReader(b.idx, cache, ReaderOptions{CacheBytes: 4 * int64(smallChunks.Max), Jobs: 4})
	defer r.Close()

	var wg sync.WaitGroup
	var bad atomic.Int64
	check := func(p []byte, off int64) {
		n, err := r.ReadAt(p, off)
		if (err != nil && err != io.EOF) || !bytes.Equal(p[:n], b.data[off:off+int64(n)]) {
			if bad.Add(1) == 1 {
				t.Errorf("ReadAt(%d bytes at %d) = %d, %v: wrong bytes", len(p), off, n, err)
			}
		}
	}
	for g := range 4 {
		wg.Go(func() { // sequential, in steps that straddle chunks
			p := make([]byte, 3000+g*1777)
			for pass := 0; pass < 2; pass++ {
				for off := int64(g) * 12345; off < r.Size(); off += int64(len(p)) {
					check(p, off)
				}
			}
		})
		wg.Go(func() { // random
			rng := rand.New(rand.NewPCG(uint64(g), 7))
			for range 600 {
				p := make([]byte, 1+rng.IntN(200<<10))
				check(p, rng.Int64N(r.Size()))
			}
		})
	}
	wg.Wait()
	if got, max := r.lru.bytes(), 4*int64(smallChunks.Max)+2*int64(smallChunks.Max); got > max {
		t.Errorf("LRU holds %d bytes of buffers, want at most %d", got, max)
	}
}

// TestReaderErrorSaysOnce: the error of a read whose chunk the store
// failed to give on every attempt names the chunk, the store and the
// attempt count once each.
func TestReaderErrorSaysOnce(t *testing.T) {
	b := newBlob(t, 12, 256<<10)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "overloaded", http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	o, err := opener.Open(context.Background(), srv.URL, opener.Options{Digest: b.idx.Digest(), Retry: chunkstore.RetryOptions{Retries: 2, Backoff: time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	r := NewReader(b.idx, o.Store, ReaderOptions{})
	defer r.Close()
	_, err = r.ReadAt(make([]byte, 10), 0)
	var ce *ChunkError
	if !errors.As(err, &ce) || ce.Attempts != 3 {
		t.Fatalf("ReadAt(store that fails) = %v, want a *ChunkError after 3 attempts", err)
	}
	msg := err.Error()
	id := b.idx.Chunks[0].ID.String()
	if strings.Count(msg, id) != 1 || strings.Count(msg, srv.URL) != 1 || strings.Count(msg, "attempt") != 1 || !strings.Contains(msg, "3 attempts") {
		t.Errorf("error %q: want the chunk %s, the store %s and the 3 attempts once each", msg, id, srv.URL)
	}
}
