package chunkstore_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
	"github.com/bootfs/bootfs/chunkstore/storetest"
)

// TestGetChunksFallback: a store with no batch read of its own still
// answers every index once, with its chunk or its own error, and never
// calls fn from two goroutines at once.
func TestGetChunksFallback(t *testing.T) {
	ctx := context.Background()
	mem := chunkstore.NewMemory(chunkstore.MemoryOptions{})
	var ids []casync.ChunkID
	var want [][]byte
	for i := range 300 {
		data := bytes.Repeat([]byte{byte(i), byte(i >> 8)}, 20000+i)
		id := casync.SHA512_256.Sum(data)
		if i%7 != 3 { // every seventh is missing
			if err := mem.StoreChunk(ctx, id, data); err != nil {
				t.Fatal(err)
			}
		} else {
			data = nil
		}
		ids = append(ids, id)
		want = append(want, data)
	}
	ids = append(ids, ids[0]) // a repeat gets its own call
	want = append(want, want[0])

	seen := make([]int, len(ids))
	var inside atomic.Int32
	chunkstore.GetChunks(ctx, mem, ids, 8, func(g chunkstore.Got) {
		if inside.Add(1) != 1 {
			t.Error("fn called concurrently")
		}
		defer inside.Add(-1)
		seen[g.Index]++
		switch {
		case want[g.Index] == nil:
			if !errors.Is(g.Err, chunkstore.ErrNotFound) {
				t.Errorf("chunk %d: err %v, want ErrNotFound", g.Index, g.Err)
			}
		case g.Err != nil:
			t.Errorf("chunk %d: %v", g.Index, g.Err)
		case !bytes.Equal(g.Data, want[g.Index]):
			t.Errorf("chunk %d: wrong bytes", g.Index)
		}
	})
	for i, n := range seen {
		if n != 1 {
			t.Errorf("index %d: fn called %d times, want 1", i, n)
		}
	}
}

// batchBackend is a BatchGetter over a Memory store that records each
// batch it is asked for. Its frames carry a zstd checksum, which
// casync.CompressChunk never writes, so a frame that reaches a cache
// recompressed is told from one written as sent. fails[id] is how many
// times a chunk fails with a transient error before it is served; a
// closed-over gate, if set, holds every GetChunk until it is closed.
type batchBackend struct {
	chunkstore.Store
	mem     *chunkstore.Memory
	mu      sync.Mutex
	batches [][]casync.ChunkID
	gets    []casync.ChunkID
	fails   map[casync.ChunkID]int
	gate    chan struct{}
	entered chan casync.ChunkID
}

var errFlaky = errors.New("connection reset by peer")

func newBatchBackend(t testing.TB, cs []storetest.Chunk) *batchBackend {
	mem := memWith(t, cs)
	return &batchBackend{Store: mem, mem: mem, fails: make(map[casync.ChunkID]int)}
}

// checkedFrame is data's frame with a zstd checksum.
func checkedFrame(data []byte) []byte {
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderCRC(true), zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithZeroFrames(true))
	if err != nil {
		panic(err)
	}
	return enc.EncodeAll(data, nil)
}

func (b *batchBackend) fail(id casync.ChunkID) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.fails[id] > 0 {
		b.fails[id]--
		return true
	}
	return false
}

func (b *batchBackend) GetChunk(ctx context.Context, id casync.ChunkID) ([]byte, error) {
	b.mu.Lock()
	b.gets = append(b.gets, id)
	b.mu.Unlock()
	if b.entered != nil {
		b.entered <- id
	}
	if b.gate != nil {
		<-b.gate
	}
	if b.fail(id) {
		return nil, errFlaky
	}
	return b.mem.GetChunk(ctx, id)
}

func (b *batchBackend) GetChunks(ctx context.Context, ids []casync.ChunkID, fn func(chunkstore.Got)) {
	b.mu.Lock()
	b.batches = append(b.batches, slices.Clone(ids))
	b.mu.Unlock()
	for i, id := range ids {
		g := chunkstore.Got{Index: i}
		switch {
		case b.fail(id):
			g.Err = errFlaky
		default:
			g.Data, g.Err = b.mem.GetChunk(ctx, id)
			if g.Err == nil {
				g.Frame = checkedFrame(g.Data)
			}
		}
		fn(g)
	}
}

func (b *batchBackend) asked() [][]casync.ChunkID {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.batches)
}

// collect runs a batch read of ids from s and returns each index's Got,
// with Data and Frame copied, failing the test if an index is answered
// twice or not at all.
func collect(t *testing.T, ctx context.Context, s chunkstore.Store, ids []casync.ChunkID) []chunkstore.Got {
	t.Helper()
	out := make([]chunkstore.Got, len(ids))
	seen := make([]bool, len(ids))
	chunkstore.GetChunks(ctx, s, ids, 4, func(g chunkstore.Got) {
		if seen[g.Index] {
			t.Errorf("index %d answered twice", g.Index)
		}
		seen[g.Index] = true
		g.Data, g.Frame = slices.Clone(g.Data), slices.Clone(g.Frame)
		out[g.Index] = g
	})
	for i, ok := range seen {
		if !ok {
			t.Errorf("index %d never answered", i)
		}
	}
	return out
}

func idsOf(cs []storetest.Chunk) []casync.ChunkID {
	ids := make([]casync.ChunkID, len(cs))
	for i, c := range cs {
		ids[i] = c.ID
	}
	return ids
}

// TestBatchThroughOpenerStack: a batch read through the stack the opener
// composes, Cache(Counted(Retry(Failover(backend)))), reaches the backend
// as one GetChunks call with only the chunks the cache lacks, each once;
// the cache keeps each frame as the backend sent it; a second read is
// served from the cache alone.
func TestBatchThroughOpenerStack(t *testing.T) {
	ctx := context.Background()
	cs := storetest.Chunks(120, 40)
	back := newBatchBackend(t, cs)
	counted := chunkstore.NewCountedRetry(chunkstore.NewFailover(back), chunkstore.RetryOptions{Backoff: time.Millisecond})
	cache := newCache(t, counted, chunkstore.CacheOptions{})
	for _, c := range cs[:5] { // already cached
		if _, err := cache.GetChunk(ctx, c.ID); err != nil {
			t.Fatal(err)
		}
	}
	missing := casync.SHA512_256.Sum([]byte("not in the store"))
	ids := append(idsOf(cs), cs[7].ID, missing, cs[2].ID)
	got := collect(t, ctx, cache, ids)
	for i, g := range got {
		switch {
		case ids[i] == missing:
			if !errors.Is(g.Err, chunkstore.ErrNotFound) {
				t.Errorf("missing chunk: %v, want ErrNotFound", g.Err)
			}
		case g.Err != nil:
			t.Errorf("chunk %d: %v", i, g.Err)
		case !bytes.Equal(g.Data, cs[slices.Index(idsOf(cs), ids[i])].Data):
			t.Errorf("chunk %d: wrong bytes", i)
		}
	}
	asked := back.asked()
	want := append(idsOf(cs[5:]), missing)
	if len(asked) != 1 || !slices.Equal(asked[0], want) {
		t.Fatalf("backend asked for %d batches (%v), want one of the %d uncached chunks", len(asked), lens(asked), len(want))
	}
	if st := counted.Stats(); st.Batches != 1 || st.Requests != uint64(5+len(want)) {
		t.Errorf("Counted stats %+v, want 1 batch and %d requests", st, 5+len(want))
	}
	for _, c := range cs[5:] {
		frame, err := os.ReadFile(filepath.Join(cache.Dir(), chunkstore.ChunkPath(c.ID)))
		if err != nil || !bytes.Equal(frame, checkedFrame(c.Data)) {
			t.Fatalf("cached %s: %d bytes, %v; want the frame the backend sent", c.ID, len(frame), err)
		}
	}
	again := collect(t, ctx, cache, idsOf(cs))
	for i, g := range again {
		if g.Err != nil || !bytes.Equal(g.Data, cs[i].Data) {
			t.Errorf("second read, chunk %d: %v", i, g.Err)
		}
	}
	if n := len(back.asked()); n != 1 {
		t.Errorf("a second read of cached chunks asked the backend %d more times", n-1)
	}
}

func lens(bs [][]casync.ChunkID) []int {
	var n []int
	for _, b := range bs {
		n = append(n, len(b))
	}
	return n
}

// TestRetryBatch: Retry asks again for only the chunks that failed for a
// transient reason, gives up per chunk after its retries, and never
// retries a missing chunk.
func TestRetryBatch(t *testing.T) {
	ctx := context.Background()
	cs := storetest.Chunks(121, 10)
	back := newBatchBackend(t, cs)
	back.fails[cs[1].ID] = 1   // mended by the first retry
	back.fails[cs[4].ID] = 2   // by the second
	back.fails[cs[6].ID] = 100 // never
	missing := casync.SHA512_256.Sum([]byte("missing"))
	var retries int
	r := chunkstore.NewRetry(back, chunkstore.RetryOptions{Retries: 3, Backoff: time.Millisecond, OnRetry: func() { retries++ }})
	got := collect(t, ctx, r, append(idsOf(cs), missing))
	for i, g := range got[:len(cs)] {
		if i == 6 {
			if !errors.Is(g.Err, errFlaky) || chunkstore.Attempts(g.Err) != 4 {
				t.Errorf("chunk that always fails: %v (attempts %d), want errFlaky after 4", g.Err, chunkstore.Attempts(g.Err))
			}
			continue
		}
		if g.Err != nil || !bytes.Equal(g.Data, cs[i].Data) {
			t.Errorf("chunk %d: %v", i, g.Err)
		}
	}
	if err := got[len(cs)].Err; !errors.Is(err, chunkstore.ErrNotFound) || chunkstore.Attempts(err) != 1 {
		t.Errorf("missing chunk: %v, want ErrNotFound after 1 attempt", err)
	}
	want := [][]casync.ChunkID{
		append(idsOf(cs), missing),
		{cs[1].ID, cs[4].ID, cs[6].ID},
		{cs[4].ID, cs[6].ID},
		{cs[6].ID},
	}
	if asked := back.asked(); !slices.EqualFunc(asked, want, slices.Equal) {
		t.Errorf("batches asked: %v chunks, want %v", lens(asked), lens(want))
	}
	if retries != 3 {
		t.Errorf("OnRetry called %d times, want 3", retries)
	}
}

// hangingBatch answers the first half of a batch and then never returns,
// heeding no context.
type hangingBatch struct {
	chunkstore.Store
	hang chan struct{}
}

func (h *hangingBatch) GetChunks(ctx context.Context, ids []casync.ChunkID, fn func(chunkstore.Got)) {
	for i, id := range ids[:len(ids)/2] {
		data, err := h.Store.GetChunk(ctx, id)
		fn(chunkstore.Got{Index: i, Data: data, Err: err})
	}
	<-h.hang
	// Answers after the attempt gave up must go nowhere.
	for i := len(ids) / 2; i < len(ids); i++ {
		fn(chunkstore.Got{Index: i, Err: errors.New("late")})
	}
}

// TestRetryBatchTimeout: a batch that stalls ends at the per-attempt
// timeout; the chunks it gave are kept, the others fail with the timeout,
// and nothing the stalled call says later reaches the caller.
func TestRetryBatchTimeout(t *testing.T) {
	cs := storetest.Chunks(122, 8)
	h := &hangingBatch{Store: memWith(t, cs), hang: make(chan struct{})}
	r := chunkstore.NewRetry(h, chunkstore.RetryOptions{Retries: -1, Timeout: 50 * time.Millisecond})
	got := collect(t, context.Background(), r, idsOf(cs))
	close(h.hang)
	for i, g := range got {
		if i < 4 {
			if g.Err != nil || !bytes.Equal(g.Data, cs[i].Data) {
				t.Errorf("chunk %d, answered before the stall: %v", i, g.Err)
			}
		} else if !errors.Is(g.Err, context.DeadlineExceeded) || !strings.Contains(g.Err.Error(), "timed out after 50ms") {
			t.Errorf("chunk %d, never answered: %v, want a timeout", i, g.Err)
		}
	}
	time.Sleep(10 * time.Millisecond) // let the late answers come, to be dropped
}

// TestFailoverBatch: the second store is asked only for what the first
// could not give, and a chunk neither has is ErrNotFound.
func TestFailoverBatch(t *testing.T) {
	ctx := context.Background()
	cs := storetest.Chunks(123, 12)
	first, second := newBatchBackend(t, cs[:6]), newBatchBackend(t, cs[4:])
	first.fails[cs[2].ID] = 1 // a transient failure: the second store has no copy either
	missing := casync.SHA512_256.Sum([]byte("missing"))
	got := collect(t, ctx, chunkstore.NewFailover(first, second), append(idsOf(cs), missing))
	for i, g := range got[:len(cs)] {
		if i == 2 {
			if g.Err == nil || !errors.Is(g.Err, errFlaky) {
				t.Errorf("chunk 2 (failed in the first, absent from the second): %v, want both errors", g.Err)
			}
			continue
		}
		if g.Err != nil || !bytes.Equal(g.Data, cs[i].Data) {
			t.Errorf("chunk %d: %v", i, g.Err)
		}
	}
	if err := got[len(cs)].Err; !errors.Is(err, chunkstore.ErrNotFound) {
		t.Errorf("missing chunk: %v, want ErrNotFound", err)
	}
	want := append(idsOf(cs[2:3]), append(idsOf(cs[6:]), missing)...)
	if asked := second.asked(); len(asked) != 1 || !slices.Equal(asked[0], want) {
		t.Errorf("second store asked %v chunks, want one batch of %d", lens(asked), len(want))
	}
}

// TestCacheBatchJoinsFlight: a batch read of a chunk that a GetChunk is
// fetching waits for that fetch instead of asking the remote again.
func TestCacheBatchJoinsFlight(t *testing.T) {
	ctx := context.Background()
	cs := storetest.Chunks(124, 3)
	back := newBatchBackend(t, cs)
	back.gate, back.entered = make(chan struct{}), make(chan casync.ChunkID, 1)
	cache := newCache(t, back, chunkstore.CacheOptions{})
	done := make(chan error, 1)
	go func() {
		data, err := cache.GetChunk(ctx, cs[0].ID)
		if err == nil && !bytes.Equal(data, cs[0].Data) {
			err = errors.New("wrong bytes")
		}
		done <- err
	}()
	<-back.entered // the GetChunk's fetch is in flight
	var got []chunkstore.Got
	batched := make(chan struct{})
	go func() {
		defer close(batched)
		got = collect(t, ctx, cache, idsOf(cs))
	}()
	// The batch asks for the two other chunks only, then waits.
	for len(back.asked()) == 0 {
		time.Sleep(time.Millisecond)
	}
	close(back.gate)
	<-batched
	if err := <-done; err != nil {
		t.Errorf("GetChunk: %v", err)
	}
	for i, g := range got {
		if g.Err != nil || !bytes.Equal(g.Data, cs[i].Data) {
			t.Errorf("batch chunk %d: %v", i, g.Err)
		}
	}
	if asked := back.asked(); len(asked) != 1 || !slices.Equal(asked[0], idsOf(cs[1:])) || len(back.gets) != 1 {
		t.Errorf("remote asked for batches of %v chunks and %d single chunks, want one batch of 2 and 1", lens(asked), len(back.gets))
	}
}
