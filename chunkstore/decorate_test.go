package chunkstore_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
	"github.com/bootfs/bootfs/chunkstore/storetest"
)

// capableStore is a Memory store that is also a BatchHaser and a
// FrameWriteStore, and counts which of its methods were called.
type capableStore struct {
	*chunkstore.Memory
	batches, frames, chunks atomic.Int64
}

func (c *capableStore) HasChunks(ctx context.Context, ids []casync.ChunkID) ([]bool, error) {
	c.batches.Add(1)
	return chunkstore.HasEach(ctx, ids, 1, c.Memory.HasChunk)
}

func (c *capableStore) StoreFrame(ctx context.Context, id casync.ChunkID, frame []byte) error {
	c.frames.Add(1)
	data, err := casync.DecodeChunk(casync.SHA512_256, id, frame)
	if err != nil {
		return err
	}
	return c.Memory.StoreChunk(ctx, id, data)
}

func (c *capableStore) StoreChunk(ctx context.Context, id casync.ChunkID, data []byte) error {
	c.chunks.Add(1)
	return c.Memory.StoreChunk(ctx, id, data)
}

// TestDecoratorsPassOn: a batch has-check and a frame write through every
// decorator reach the backend as one HasChunks call and as StoreFrame,
// not as one HasChunk per chunk and a decompressed StoreChunk.
func TestDecoratorsPassOn(t *testing.T) {
	cs := storetest.Chunks(90, 6)
	ctx := context.Background()
	for _, tt := range []struct {
		name string
		wrap func(chunkstore.Store) chunkstore.WriteStore
	}{
		{"Counted", func(s chunkstore.Store) chunkstore.WriteStore { return chunkstore.NewCounted(s) }},
		{"Retry", func(s chunkstore.Store) chunkstore.WriteStore {
			return chunkstore.NewRetry(s, chunkstore.RetryOptions{})
		}},
		{"Failover", func(s chunkstore.Store) chunkstore.WriteStore { return chunkstore.NewFailover(s) }},
		{"Cache", func(s chunkstore.Store) chunkstore.WriteStore { return newCache(t, s, chunkstore.CacheOptions{}) }},
		{"all", func(s chunkstore.Store) chunkstore.WriteStore {
			return newCache(t, chunkstore.NewCounted(chunkstore.NewRetry(chunkstore.NewFailover(s), chunkstore.RetryOptions{})), chunkstore.CacheOptions{})
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			back := &capableStore{Memory: chunkstore.NewMemory(chunkstore.MemoryOptions{})}
			s := tt.wrap(back)
			for _, c := range cs[:3] {
				if err := chunkstore.WriteFrame(ctx, s, c.ID, casync.CompressChunk(nil, c.Data)); err != nil {
					t.Fatal(err)
				}
			}
			if n, m := back.frames.Load(), back.chunks.Load(); n != 3 || m != 0 {
				t.Errorf("3 frame writes reached the backend as %d StoreFrame and %d StoreChunk calls, want 3 and 0", n, m)
			}
			ids := make([]casync.ChunkID, len(cs))
			for i, c := range cs {
				ids[i] = c.ID
			}
			has, err := chunkstore.HasChunks(ctx, s, ids, 4)
			if err != nil {
				t.Fatal(err)
			}
			for i := range cs {
				if has[i] != (i < 3) {
					t.Errorf("HasChunks()[%d] = %v, want %v", i, has[i], i < 3)
				}
			}
			if n := back.batches.Load(); n != 1 {
				t.Errorf("HasChunks of %d chunks reached the backend as %d batch calls, want 1", len(ids), n)
			}
			if _, ok := s.(chunkstore.FrameWriteStore); !ok {
				t.Errorf("%T is not a FrameWriteStore", s)
			}
		})
	}
}

// flakyN fails the first n calls with err, then serves from the Memory
// store; it never heeds its context while hang is set.
type flakyN struct {
	*chunkstore.Memory
	n     atomic.Int64
	err   error
	calls atomic.Int64
	hang  chan struct{}
}

func (f *flakyN) GetChunk(ctx context.Context, id casync.ChunkID) ([]byte, error) {
	f.calls.Add(1)
	if f.hang != nil {
		<-f.hang
	}
	if f.n.Add(-1) >= 0 {
		return nil, f.err
	}
	return f.Memory.GetChunk(ctx, id)
}

func TestRetry(t *testing.T) {
	c := storetest.Chunks(91, 1)[0]
	errDown := errors.New("connection refused")
	for _, tt := range []struct {
		name      string
		fails     int64
		err       error
		retries   int
		wantCalls int64
		wantOK    bool
	}{
		{"transient then ok", 2, errDown, 3, 3, true},
		{"transient forever", 100, errDown, 3, 4, false},
		{"no retries", 1, errDown, -1, 1, false},
		{"missing is not retried", 100, chunkstore.ErrNotFound, 3, 1, false},
		{"corrupt is not retried", 100, &casync.ChecksumError{Want: c.ID}, 3, 1, false},
		{"permanent is not retried", 100, chunkstore.Permanent(errDown), 3, 1, false},
		{"read-only is not retried", 100, chunkstore.ErrReadOnly, 3, 1, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := &flakyN{Memory: memWith(t, []storetest.Chunk{c}), err: tt.err}
			f.n.Store(tt.fails)
			counted := chunkstore.NewCountedRetry(f, chunkstore.RetryOptions{Retries: tt.retries, Backoff: time.Millisecond})
			_, err := counted.GetChunk(context.Background(), c.ID)
			if (err == nil) != tt.wantOK || (err != nil && !errors.Is(err, tt.err)) {
				t.Fatalf("GetChunk = %v, want ok %v or %v", err, tt.wantOK, tt.err)
			}
			if n := f.calls.Load(); n != tt.wantCalls {
				t.Errorf("store called %d times, want %d", n, tt.wantCalls)
			}
			st := counted.Stats()
			if st.Retries != uint64(tt.wantCalls-1) || st.Requests != 1 {
				t.Errorf("Stats() = %+v, want %d retries of 1 request", st, tt.wantCalls-1)
			}
			if err != nil {
				if got := chunkstore.Attempts(err); got != int(tt.wantCalls) {
					t.Errorf("Attempts(%v) = %d, want %d", err, got, tt.wantCalls)
				}
				if n := strings.Count(err.Error(), "attempts"); n > 1 {
					t.Errorf("error %q names the attempts %d times", err, n)
				}
			}
		})
	}
}

// TestRetryTimeout: an attempt that does not heed its context still ends
// at the per-attempt timeout, and the caller's cancellation is not
// retried.
func TestRetryTimeout(t *testing.T) {
	c := storetest.Chunks(92, 1)[0]
	f := &flakyN{Memory: memWith(t, []storetest.Chunk{c}), hang: make(chan struct{})}
	defer close(f.hang)
	r := chunkstore.NewRetry(f, chunkstore.RetryOptions{Retries: 1, Backoff: time.Millisecond, Timeout: 50 * time.Millisecond})
	start := time.Now()
	_, err := r.GetChunk(context.Background(), c.ID)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "timed out after 50ms") || chunkstore.Attempts(err) != 2 {
		t.Errorf("GetChunk from a store that hangs = %v, want a timeout after 2 attempts", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("GetChunk took %v with 2 attempts of 50ms", took)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	calls := f.calls.Load()
	r = chunkstore.NewRetry(f, chunkstore.RetryOptions{Timeout: time.Minute})
	if _, err := r.GetChunk(ctx, c.ID); !errors.Is(err, context.DeadlineExceeded) || f.calls.Load()-calls != 1 {
		t.Errorf("GetChunk(ctx that ends) = %v after %d calls, want the ctx's error after 1", err, f.calls.Load()-calls)
	}
}

// TestCounted: what a Counted store counts of each outcome.
func TestCounted(t *testing.T) {
	cs := storetest.Chunks(93, 2)
	ctx := context.Background()
	mem := memWith(t, cs[:1])
	c := chunkstore.NewCounted(mem)
	c.GetChunk(ctx, cs[0].ID)
	c.GetChunk(ctx, cs[1].ID)
	frame, _ := c.GetFrame(ctx, cs[0].ID)
	c.HasChunk(ctx, cs[1].ID)
	c.HasChunks(ctx, []casync.ChunkID{cs[0].ID, cs[1].ID})
	c.StoreChunk(ctx, cs[1].ID, cs[0].Data) // wrong ID: corrupt
	c.StoreChunk(ctx, cs[1].ID, cs[1].Data)
	want := chunkstore.Stats{
		Requests: 8, Hits: 3, Misses: 3, Errors: 1, Corrupt: 1,
		Bytes: uint64(len(cs[0].Data) + len(cs[1].Data)), WireBytes: uint64(len(frame)),
	}
	if got := c.Stats(); got != want {
		t.Errorf("Stats() = %+v, want %+v", got, want)
	}
}

// committingStore is a Memory store that is a Committer, as a registry
// store is.
type committingStore struct {
	*chunkstore.Memory
	committed []casync.ChunkID
}

func (c *committingStore) Commit(_ context.Context, ids []casync.ChunkID) (string, error) {
	c.committed = ids
	return "oci://registry/repo@sha256:map", nil
}

// TestCommitPassesOn: mkimage commits through the store as the opener
// composes it (Counted(Retry(backend))), so the commit of a registry
// store must reach it and its URL come back; a store that is no
// Committer commits nothing and gives no URL.
func TestCommitPassesOn(t *testing.T) {
	ctx := context.Background()
	ids := []casync.ChunkID{storetest.Chunks(91, 1)[0].ID}
	inner := &committingStore{Memory: chunkstore.NewMemory(chunkstore.MemoryOptions{})}
	s := chunkstore.NewCountedRetry(inner, chunkstore.RetryOptions{})
	url, err := chunkstore.Commit(ctx, s, ids)
	if err != nil || url != "oci://registry/repo@sha256:map" || len(inner.committed) != 1 || inner.committed[0] != ids[0] {
		t.Errorf("Commit through Counted(Retry) = %q, %v; the backend got %v, want %v", url, err, inner.committed, ids)
	}
	plain := chunkstore.NewCountedRetry(chunkstore.NewMemory(chunkstore.MemoryOptions{}), chunkstore.RetryOptions{})
	if url, err := chunkstore.Commit(ctx, plain, ids); url != "" || err != nil {
		t.Errorf("Commit of a store that is no Committer = %q, %v, want \"\", nil", url, err)
	}
}
