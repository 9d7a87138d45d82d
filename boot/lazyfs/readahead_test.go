package lazyfs

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
)

// batchStore is a store with a batch read, as our HTTP server's: every
// request (a GetChunk, or a GetChunks of many chunks) costs latency and
// is recorded. While fail is set, it fails every chunk of a request.
type batchStore struct {
	chunkstore.Store
	latency time.Duration
	fail    atomic.Bool

	mu       sync.Mutex
	requests [][]casync.ChunkID
}

var _ chunkstore.BatchGetter = (*batchStore)(nil)

func (s *batchStore) request(ctx context.Context, ids []casync.ChunkID) error {
	s.mu.Lock()
	s.requests = append(s.requests, slices.Clone(ids))
	s.mu.Unlock()
	select {
	case <-time.After(s.latency):
	case <-ctx.Done():
		return ctx.Err()
	}
	if s.fail.Load() {
		return errors.New("store down")
	}
	return nil
}

func (s *batchStore) GetChunk(ctx context.Context, id casync.ChunkID) ([]byte, error) {
	if err := s.request(ctx, []casync.ChunkID{id}); err != nil {
		return nil, err
	}
	return s.Store.GetChunk(ctx, id)
}

func (s *batchStore) GetChunks(ctx context.Context, ids []casync.ChunkID, fn func(chunkstore.Got)) {
	err := s.request(ctx, ids)
	for i, id := range ids {
		g := chunkstore.Got{Index: i, Err: err}
		if err == nil {
			g.Data, g.Err = s.Store.GetChunk(ctx, id)
		}
		fn(g)
	}
}

func (s *batchStore) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.requests)
}

// bigBlob is a 20 MB blob in casync's default chunk sizes.
func bigBlob(t testing.TB, seed uint64, data []byte) *blob {
	t.Helper()
	b := &blob{data: data, store: chunkstore.NewMemory(chunkstore.MemoryOptions{})}
	var err error
	b.idx, err = casync.BuildIndex(context.Background(), bytes.NewReader(b.data), casync.IndexBlobFlags, casync.ChunkOptions{Size: casync.DefaultChunkSize}, func(c casync.Chunk) error {
		return b.store.StoreChunk(context.Background(), c.ID, c.Data)
	})
	if err != nil {
		t.Fatalf("BuildIndex: %v", err)
	}
	return b
}

// readSequentially reads r from start to end in reads of step bytes, as
// the kernel sends a file's reads, and checks the bytes.
func readSequentially(t *testing.T, r *Reader, want []byte, step int) {
	t.Helper()
	p := make([]byte, step)
	for off := 0; off < len(want); off += step {
		n, err := r.ReadAt(p[:min(step, len(want)-off)], int64(off))
		if err != nil || !bytes.Equal(p[:n], want[off:off+n]) {
			t.Fatalf("ReadAt(%d) = %d, %v; want the blob's bytes", off, n, err)
		}
	}
}

// TestReaderSequentialBatches: a sequential read of a 20 MB file fetches
// its chunks in a few batch reads, mostly read ahead, and reads wait for
// the network a few times, not once per read; what read-ahead fetched is
// read.
func TestReaderSequentialBatches(t *testing.T) {
	b := bigBlob(t, 1, randBytes(1, 20<<20))
	store := &batchStore{Store: b.store, latency: 2 * time.Millisecond}
	r := NewReader(b.idx, store, ReaderOptions{})
	defer r.Close()
	const step = 128 << 10
	readSequentially(t, r, b.data, step)
	reads := len(b.data) / step
	s := r.Stats()
	t.Logf("%d chunks, %d reads: %+v, %d requests", len(b.idx.Chunks), reads, s, store.count())
	if n := store.count(); n > 40 {
		t.Errorf("%d requests for %d chunks, want at most 40 (batches)", n, len(b.idx.Chunks))
	}
	// Without read-ahead every read waits (TestReaderChainWithoutReadAhead).
	// With it, a read waits only when it catches up with read-ahead in
	// flight: how often depends on the machine's speed (30-45 of 160
	// under -race on 2 busy cores), the chain does not.
	if s.NetworkWaits > uint64(reads/3) || s.LongestChain > 40 {
		t.Errorf("%d network waits, longest chain %d, for %d reads; want at most a third of the reads and a chain of 40", s.NetworkWaits, s.LongestChain, reads)
	}
	if s.ReadAheadChunks < uint64(len(b.idx.Chunks))/2 {
		t.Errorf("read-ahead fetched %d of %d chunks, want most", s.ReadAheadChunks, len(b.idx.Chunks))
	}
	if s.ReadAheadWastedBytes != 0 {
		t.Errorf("read-ahead wasted %d bytes of a file read to its end, want 0", s.ReadAheadWastedBytes)
	}
	if s.ChunksFetched != uint64(len(b.idx.Chunks)) {
		t.Errorf("fetched %d chunks, want each of the %d once", s.ChunksFetched, len(b.idx.Chunks))
	}
}

// TestReaderChainWithoutReadAhead pins down the longest chain: without
// read-ahead, every read of a sequential scan waits for a fetch it started
// itself after the previous read ended, so the chain is as long as the
// reads that needed a fetch.
func TestReaderChainWithoutReadAhead(t *testing.T) {
	b := bigBlob(t, 2, randBytes(2, 4<<20))
	store := &batchStore{Store: b.store, latency: time.Millisecond}
	r := NewReader(b.idx, store, ReaderOptions{ReadAhead: -1})
	defer r.Close()
	// Reads of whole chunks, each one a fetch of its own.
	for i, c := range b.idx.Chunks {
		p := make([]byte, c.Size)
		if _, err := r.ReadAt(p, int64(c.Start)); err != nil || !bytes.Equal(p, b.data[c.Start:c.Start+c.Size]) {
			t.Fatalf("ReadAt(chunk %d) = %v; want its bytes", i, err)
		}
	}
	s := r.Stats()
	n := uint64(len(b.idx.Chunks))
	if s.NetworkWaits != n || s.LongestChain != n || s.ReadAheadChunks != 0 {
		t.Errorf("Stats() = %+v; want %d network waits, a chain of %d, no read-ahead", s, n, n)
	}
}

// TestReaderRandomReadsNoReadAhead: reads at random places far apart
// never start read-ahead, so they waste nothing.
func TestReaderRandomReadsNoReadAhead(t *testing.T) {
	b := bigBlob(t, 3, randBytes(3, 20<<20))
	store := &batchStore{Store: b.store}
	r := NewReader(b.idx, store, ReaderOptions{})
	defer r.Close()
	const spacing = 256 << 10
	offs := make([]int64, len(b.data)/spacing)
	for k := range offs {
		offs[k] = int64(k*spacing + k*97%spacing/2)
	}
	rand.New(rand.NewPCG(3, 3)).Shuffle(len(offs), func(i, j int) { offs[i], offs[j] = offs[j], offs[i] })
	p := make([]byte, 4096)
	for _, off := range offs {
		if n, err := r.ReadAt(p, off); err != nil || !bytes.Equal(p[:n], b.data[off:off+int64(n)]) {
			t.Fatalf("ReadAt(%d) = %v; want the blob's bytes", off, err)
		}
	}
	s := r.Stats()
	if s.ReadAheadChunks != 0 || s.ReadAheadWastedBytes != 0 {
		t.Errorf("random reads: %d chunks read ahead, %d bytes wasted; want none", s.ReadAheadChunks, s.ReadAheadWastedBytes)
	}
}

// TestReaderWasteCountsChunksOnce: read-ahead of data whose chunks repeat
// counts each distinct chunk once as wasted, and a read of it after all
// takes it off the count.
func TestReaderWasteCountsChunksOnce(t *testing.T) {
	half := randBytes(4, 3<<20)
	b := bigBlob(t, 4, append(slices.Clone(half), half...))
	r := NewReader(b.idx, &batchStore{Store: b.store}, ReaderOptions{CacheBytes: 64 << 20})
	defer r.Close()
	r.Prefetch(0, r.Size())
	r.wg.Wait()
	unique := uniqueIDs(b.idx)
	var uniqueBytes uint64
	seen := map[casync.ChunkID]bool{}
	for _, c := range b.idx.Chunks {
		if !seen[c.ID] {
			seen[c.ID] = true
			uniqueBytes += c.Size
		}
	}
	if len(unique) == len(b.idx.Chunks) {
		t.Fatalf("the blob's %d chunks do not repeat", len(unique))
	}
	s := r.Stats()
	if s.ReadAheadWastedChunks != uint64(len(unique)) || s.ReadAheadWastedBytes != uniqueBytes {
		t.Errorf("after read-ahead of all: %d chunks, %d bytes wasted; want %d, %d (each distinct chunk once)",
			s.ReadAheadWastedChunks, s.ReadAheadWastedBytes, len(unique), uniqueBytes)
	}
	// Read the first half: what is left wasted is the chunks only the
	// second half has.
	p := make([]byte, len(half))
	if _, err := r.ReadAt(p, 0); err != nil || !bytes.Equal(p, half) {
		t.Fatalf("ReadAt(first half) = %v", err)
	}
	read := coveringChunks(b.idx, 0, int64(len(half)))
	var left uint64
	for id := range unique {
		if !read[id] {
			left++
		}
	}
	if s := r.Stats(); s.ReadAheadWastedChunks != left {
		t.Errorf("after reading the first half: %d chunks wasted, want %d", s.ReadAheadWastedChunks, left)
	}
}

// TestReaderFailedReadAheadNeverFailsRead: a read that waits for a
// read-ahead fetch which fails gets the chunk fetched for it, and reads
// after a failed read-ahead fetch their chunks anew.
func TestReaderFailedReadAheadNeverFailsRead(t *testing.T) {
	b := bigBlob(t, 5, randBytes(5, 2<<20))
	store := &batchStore{Store: b.store, latency: 20 * time.Millisecond}
	store.fail.Store(true)
	r := NewReader(b.idx, store, ReaderOptions{})
	defer r.Close()
	r.Prefetch(0, r.Size())
	// A read that joins the failing read-ahead before it ends.
	id := b.idx.Chunks[0].ID
	waitFor(t, 5*time.Second, "the read-ahead to start", func() bool {
		r.loadsMu.Lock()
		defer r.loadsMu.Unlock()
		return r.loads[id] != nil
	})
	done := make(chan error, 1)
	p := make([]byte, 1000)
	go func() {
		_, err := r.ReadAt(p, 0)
		done <- err
	}()
	waitFor(t, 5*time.Second, "the read to wait for the read-ahead", func() bool {
		r.loadsMu.Lock()
		defer r.loadsMu.Unlock()
		l := r.loads[id]
		return l == nil || l.waiters > 0
	})
	store.fail.Store(false)
	if err := <-done; err != nil || !bytes.Equal(p, b.data[:1000]) {
		t.Fatalf("read that waited for a failed read-ahead = %v, want its bytes", err)
	}
	r.wg.Wait()
	readSequentially(t, r, b.data, 128<<10)
	if s := r.Stats(); s.Errors != 0 {
		t.Errorf("Stats().Errors = %d after a failed read-ahead, want 0", s.Errors)
	}
}

// TestPrefetchListOneSweep: the prefetch list, in whatever order, is
// fetched in archive order as a few large batch reads, each chunk once.
func TestPrefetchListOneSweep(t *testing.T) {
	b := bigBlob(t, 6, randBytes(6, 8<<20))
	store := &batchStore{Store: b.store}
	r := NewReader(b.idx, store, ReaderOptions{CacheBytes: 64 << 20})
	defer r.Close()
	var ids []string
	var bytes uint64
	for k := len(b.idx.Chunks) - 1; k >= 0; k -= 2 { // every other chunk, backwards, twice
		ids = append(ids, b.idx.Chunks[k].ID.String(), b.idx.Chunks[k].ID.String())
		bytes += b.idx.Chunks[k].Size
	}
	got := PrefetchList(context.Background(), r, ids, testLogger(t))
	if got != len(ids)/2 {
		t.Errorf("PrefetchList = %d, want %d", got, len(ids)/2)
	}
	pos := map[casync.ChunkID]int{}
	for i, c := range b.idx.Chunks {
		pos[c.ID] = i
	}
	fetched := 0
	for _, req := range store.requests {
		fetched += len(req)
		if !slices.IsSortedFunc(req, func(a, b casync.ChunkID) int { return pos[a] - pos[b] }) {
			t.Errorf("a batch of %d chunks is not in archive order", len(req))
		}
	}
	if want := int(bytes/prefetchBatch) + 2; len(store.requests) > want {
		t.Errorf("%d requests for %d bytes, want at most %d", len(store.requests), bytes, want)
	}
	if fetched != len(ids)/2 {
		t.Errorf("fetched %d chunks, want each of the %d once", fetched, len(ids)/2)
	}
	if s := r.Stats(); s.PrefetchBytes != bytes || s.PrefetchUnreadBytes != bytes {
		t.Errorf("Stats() = %+v, want %d bytes prefetched, all unread", s, bytes)
	}
}

// pageFaults reads a file of the archive, fileStart..fileEnd, as a
// program's page faults on a mapped file read it: a 4 KiB read at every
// 16 KiB (the smallest chunk) of the file, in a shuffled order, each
// checked against want.
func pageFaults(t *testing.T, r *Reader, want []byte, fileStart, fileEnd int64, seed uint64) {
	t.Helper()
	var offs []int64
	for off := fileStart; off < fileEnd; off += 16 << 10 {
		offs = append(offs, off)
	}
	rand.New(rand.NewPCG(seed, seed)).Shuffle(len(offs), func(i, j int) { offs[i], offs[j] = offs[j], offs[i] })
	offs = append([]int64{fileStart}, offs...) // the header first, as ld.so reads it
	p := make([]byte, 4096)
	for _, off := range offs {
		n := min(int64(len(p)), fileEnd-off)
		got, err := r.readAt(context.Background(), p[:n], off, fileStart, fileEnd)
		if err != nil || !bytes.Equal(p[:got], want[off:off+n]) {
			t.Fatalf("readAt(%d) = %d, %v; want the file's bytes", off, got, err)
		}
	}
}

// TestReaderSmallFileWhole: the page faults of a small file, scattered
// over it, wait for one round trip, not one each: the first read that
// fetches fetches the rest of the file too, and none of it is wasted.
func TestReaderSmallFileWhole(t *testing.T) {
	b := bigBlob(t, 5, randBytes(5, 8<<20))
	store := &batchStore{Store: b.store, latency: time.Millisecond}
	r := NewReader(b.idx, store, ReaderOptions{})
	defer r.Close()
	const fileStart, fileEnd = 2<<20 + 12345, 3<<20 + 600<<10 // 1.6 MB
	pageFaults(t, r, b.data, fileStart, fileEnd, 5)
	s := r.Stats()
	t.Logf("%+v, %d requests", s, store.count())
	if s.LongestChain > 2 || store.count() > 3 {
		t.Errorf("page faults of a 1.6 MB file: longest chain %d, %d requests; want at most 2 and 3", s.LongestChain, store.count())
	}
	if s.ReadAheadWastedBytes != 0 {
		t.Errorf("%d bytes of the file fetched ahead and not read; want none", s.ReadAheadWastedBytes)
	}
	if limit := uint64(fileEnd-fileStart) + 2*casync.DefaultChunkSize.Max; s.BytesFetched > limit {
		t.Errorf("fetched %d bytes for a file of %d; want at most its chunks (%d)", s.BytesFetched, fileEnd-fileStart, limit)
	}
}

// TestReaderSmallFileWholeAfterNeighbour: when a small file's first
// chunk is in memory already, read with the file before it, the first of
// its page faults that misses fetches the whole of the rest, before and
// after the fault, in one round trip.
func TestReaderSmallFileWholeAfterNeighbour(t *testing.T) {
	b := bigBlob(t, 7, randBytes(7, 8<<20))
	store := &batchStore{Store: b.store, latency: time.Millisecond}
	r := NewReader(b.idx, store, ReaderOptions{})
	defer r.Close()
	const fileStart, fileEnd = 5<<20 + 4321, 6<<20 + 500<<10 // 1.5 MB
	// The end of the (large) file before, and with it the first chunk.
	prev := make([]byte, 4096)
	if _, err := r.readAt(context.Background(), prev, fileStart-4096, fileStart-5<<20, fileStart); err != nil || !bytes.Equal(prev, b.data[fileStart-4096:fileStart]) {
		t.Fatalf("readAt(the file before) = %v; want its bytes", err)
	}
	pageFaults(t, r, b.data, fileStart, fileEnd, 7)
	s := r.Stats()
	t.Logf("%+v, %d requests", s, store.count())
	if s.LongestChain > 2 || store.count() > 5 {
		t.Errorf("page faults of a 1.5 MB file: longest chain %d, %d requests; want at most 2 and 5", s.LongestChain, store.count())
	}
	if s.ReadAheadWastedBytes != 0 {
		t.Errorf("%d bytes of the file fetched ahead and not read; want none", s.ReadAheadWastedBytes)
	}
}
