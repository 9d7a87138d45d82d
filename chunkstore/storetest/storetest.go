// Package storetest is the conformance suite that every chunkstore.Store
// must pass: run it from the store's tests with Run, or RunReadOnly for a
// store that cannot be written through its own API.
//
// It depends only on chunkstore and casync, and uses SHA-512/256 IDs.
package storetest

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
)

// Chunk is one test chunk.
type Chunk struct {
	ID   casync.ChunkID
	Data []byte
}

// Chunks returns n deterministic chunks of varied sizes and
// compressibility, including an empty one, from seed.
func Chunks(seed uint64, n int) []Chunk {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	src := rand.NewChaCha8(key)
	r := rand.New(src)
	out := make([]Chunk, n)
	for i := range out {
		var data []byte
		switch i % 4 {
		case 0:
			data = make([]byte, r.IntN(64<<10))
			src.Read(data)
		case 1:
			data = bytes.Repeat([]byte(fmt.Sprintf("chunk %d of seed %d. ", i, seed)), 1+r.IntN(4096))
		case 2:
			data = make([]byte, 1+r.IntN(1024))
			src.Read(data)
		case 3:
			if i == 3 {
				data = []byte{} // the empty chunk
			} else {
				data = make([]byte, 16<<10+r.IntN(256<<10))
				for j := 0; j < len(data); j += 1 + r.IntN(64) {
					data[j] = byte(r.Uint32())
				}
			}
		}
		out[i] = Chunk{ID: casync.SHA512_256.Sum(data), Data: data}
	}
	return out
}

// missingID returns an ID that no test chunk has.
func missingID(t *testing.T) casync.ChunkID {
	return casync.SHA512_256.Sum([]byte("storetest: a chunk nobody stored, " + t.Name()))
}

// Run runs the suite against fresh stores made by newStore. newStore must
// return an empty store and arrange its cleanup with t.Cleanup.
func Run(t *testing.T, newStore func(t *testing.T) chunkstore.WriteStore) {
	t.Run("StoreGetHas", func(t *testing.T) {
		s := newStore(t)
		ctx := context.Background()
		for _, c := range Chunks(1, 12) {
			if err := s.StoreChunk(ctx, c.ID, c.Data); err != nil {
				t.Fatalf("StoreChunk(%s) = %v, want nil", c.ID, err)
			}
		}
		for _, c := range Chunks(1, 12) {
			checkGet(t, s, c)
			checkHas(t, s, c.ID, true)
		}
	})
	t.Run("Missing", func(t *testing.T) {
		s := newStore(t)
		checkMissing(t, s, missingID(t))
	})
	t.Run("StoreTwice", func(t *testing.T) {
		s := newStore(t)
		ctx := context.Background()
		c := Chunks(2, 1)[0]
		for i := range 2 {
			if err := s.StoreChunk(ctx, c.ID, c.Data); err != nil {
				t.Fatalf("StoreChunk #%d = %v, want nil", i+1, err)
			}
		}
		checkGet(t, s, c)
	})
	t.Run("WrongID", func(t *testing.T) {
		s := newStore(t)
		cs := Chunks(3, 2)
		err := s.StoreChunk(context.Background(), cs[0].ID, cs[1].Data)
		var ce *casync.ChecksumError
		if !errors.As(err, &ce) {
			t.Fatalf("StoreChunk(wrong id) = %v, want a *casync.ChecksumError", err)
		}
		if ce.Want != cs[0].ID {
			t.Errorf("ChecksumError.Want = %s, want %s", ce.Want, cs[0].ID)
		}
		checkMissing(t, s, cs[0].ID)
		checkMissing(t, s, cs[1].ID)
	})
	t.Run("Concurrent", func(t *testing.T) {
		s := newStore(t)
		cs := Chunks(4, 32)
		ctx := context.Background()
		var wg sync.WaitGroup
		errs := make(chan error, 8*len(cs))
		for g := range 8 {
			wg.Go(func() {
				// Every goroutine stores every chunk, in a different
				// order, and reads back what it stored.
				for k := range cs {
					c := cs[(k+g*7)%len(cs)]
					if err := s.StoreChunk(ctx, c.ID, c.Data); err != nil {
						errs <- fmt.Errorf("StoreChunk(%s) = %v", c.ID, err)
						return
					}
					got, err := s.GetChunk(ctx, c.ID)
					if err != nil || !bytes.Equal(got, c.Data) {
						errs <- fmt.Errorf("GetChunk(%s) = %d bytes, %v; want %d bytes", c.ID, len(got), err, len(c.Data))
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})
	t.Run("GetChunks", func(t *testing.T) {
		s := newStore(t)
		cs := Chunks(7, 24)
		for _, c := range cs {
			if err := s.StoreChunk(context.Background(), c.ID, c.Data); err != nil {
				t.Fatalf("StoreChunk(%s) = %v", c.ID, err)
			}
		}
		checkGetChunks(t, s, cs)
	})
	t.Run("GetChunksCanceled", func(t *testing.T) {
		s := newStore(t)
		cs := Chunks(8, 4)
		for _, c := range cs {
			if err := s.StoreChunk(context.Background(), c.ID, c.Data); err != nil {
				t.Fatalf("StoreChunk(%s) = %v", c.ID, err)
			}
		}
		checkGetChunksCanceled(t, s, cs)
	})
	t.Run("Canceled", func(t *testing.T) {
		s := newStore(t)
		c := Chunks(5, 1)[0]
		if err := s.StoreChunk(context.Background(), c.ID, c.Data); err != nil {
			t.Fatalf("StoreChunk = %v", err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		checkCanceled(t, s, ctx, c.ID)
		c2 := Chunks(5, 2)[1]
		if err := s.StoreChunk(ctx, c2.ID, c2.Data); !errors.Is(err, context.Canceled) {
			t.Errorf("StoreChunk(canceled ctx) = %v, want context.Canceled", err)
		}
	})
}

// RunReadOnly runs the reading half of the suite. newStore must return a
// store that holds exactly the given chunks.
func RunReadOnly(t *testing.T, newStore func(t *testing.T, chunks []Chunk) chunkstore.Store) {
	cs := Chunks(6, 24)
	t.Run("GetHas", func(t *testing.T) {
		s := newStore(t, cs)
		for _, c := range cs {
			checkGet(t, s, c)
			checkHas(t, s, c.ID, true)
		}
	})
	t.Run("Missing", func(t *testing.T) {
		s := newStore(t, cs)
		checkMissing(t, s, missingID(t))
	})
	t.Run("Concurrent", func(t *testing.T) {
		s := newStore(t, cs)
		var wg sync.WaitGroup
		errs := make(chan error, 8*len(cs))
		for g := range 8 {
			wg.Go(func() {
				for k := range cs {
					c := cs[(k+g*5)%len(cs)]
					got, err := s.GetChunk(context.Background(), c.ID)
					if err != nil || !bytes.Equal(got, c.Data) {
						errs <- fmt.Errorf("GetChunk(%s) = %d bytes, %v; want %d bytes", c.ID, len(got), err, len(c.Data))
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})
	t.Run("GetChunks", func(t *testing.T) {
		checkGetChunks(t, newStore(t, cs), cs)
	})
	t.Run("GetChunksCanceled", func(t *testing.T) {
		checkGetChunksCanceled(t, newStore(t, cs), cs)
	})
	t.Run("Canceled", func(t *testing.T) {
		s := newStore(t, cs)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		checkCanceled(t, s, ctx, cs[0].ID)
	})
}

func checkGet(t *testing.T, s chunkstore.Store, c Chunk) {
	t.Helper()
	got, err := s.GetChunk(context.Background(), c.ID)
	if err != nil {
		t.Fatalf("GetChunk(%s) = %v, want %d bytes", c.ID, err, len(c.Data))
	}
	if !bytes.Equal(got, c.Data) {
		t.Fatalf("GetChunk(%s) = %d bytes that differ from the %d stored", c.ID, len(got), len(c.Data))
	}
	// The caller owns the returned slice.
	if len(got) > 0 {
		got[0] ^= 0xff
		again, err := s.GetChunk(context.Background(), c.ID)
		if err != nil || !bytes.Equal(again, c.Data) {
			t.Fatalf("GetChunk(%s) after changing the returned slice = %v, want the stored data", c.ID, err)
		}
	}
}

// checkGetChunks asks s for cs in a shuffled order, with a missing chunk
// and repeated IDs among them, in one batch read (chunkstore.GetChunks),
// twice (a cache answers the second from its directory): every index gets
// exactly one call, never two at once, with its chunk or ErrNotFound.
func checkGetChunks(t *testing.T, s chunkstore.Store, cs []Chunk) {
	t.Helper()
	missing := missingID(t)
	var ids []casync.ChunkID
	var want [][]byte // nil: missing
	for _, k := range rand.New(rand.NewPCG(1, 2)).Perm(len(cs)) {
		ids = append(ids, cs[k].ID)
		want = append(want, cs[k].Data)
	}
	ids = append(ids, missing, cs[0].ID, cs[0].ID)
	want = append(want, nil, cs[0].Data, cs[0].Data)
	for round := range 2 {
		calls := make([]int, len(ids))
		var inside sync.Mutex
		chunkstore.GetChunks(context.Background(), s, ids, 4, func(g chunkstore.Got) {
			if !inside.TryLock() {
				t.Errorf("round %d: GetChunks called fn concurrently", round)
				return
			}
			defer inside.Unlock()
			if g.Index < 0 || g.Index >= len(ids) {
				t.Errorf("round %d: GetChunks gave index %d of %d", round, g.Index, len(ids))
				return
			}
			calls[g.Index]++
			switch w := want[g.Index]; {
			case w == nil:
				if !errors.Is(g.Err, chunkstore.ErrNotFound) || g.Data != nil {
					t.Errorf("round %d: GetChunks: missing chunk %d = %d bytes, %v; want ErrNotFound", round, g.Index, len(g.Data), g.Err)
				}
			case g.Err != nil:
				t.Errorf("round %d: GetChunks: chunk %d (%s) = %v, want %d bytes", round, g.Index, ids[g.Index], g.Err, len(w))
			case !bytes.Equal(g.Data, w):
				t.Errorf("round %d: GetChunks: chunk %d = %d bytes that differ from the %d stored", round, g.Index, len(g.Data), len(w))
			case g.Frame != nil:
				if data, err := casync.DecodeChunk(casync.SHA512_256, ids[g.Index], g.Frame); err != nil || !bytes.Equal(data, w) {
					t.Errorf("round %d: GetChunks: chunk %d's frame decodes to %d bytes, %v; want the chunk", round, g.Index, len(data), err)
				}
			}
		})
		for i, n := range calls {
			if n != 1 {
				t.Errorf("round %d: GetChunks called fn %d times for index %d, want 1", round, n, i)
			}
		}
	}
}

// checkGetChunksCanceled: a batch read with a cancelled context answers
// every index with the context's error.
func checkGetChunksCanceled(t *testing.T, s chunkstore.Store, cs []Chunk) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	ids := make([]casync.ChunkID, len(cs))
	for i, c := range cs {
		ids[i] = c.ID
	}
	calls := make([]int, len(ids))
	chunkstore.GetChunks(ctx, s, ids, 4, func(g chunkstore.Got) {
		calls[g.Index]++
		if !errors.Is(g.Err, context.Canceled) {
			t.Errorf("GetChunks(canceled ctx): chunk %d = %d bytes, %v; want context.Canceled", g.Index, len(g.Data), g.Err)
		}
	})
	for i, n := range calls {
		if n != 1 {
			t.Errorf("GetChunks(canceled ctx) called fn %d times for index %d, want 1", n, i)
		}
	}
}

func checkHas(t *testing.T, s chunkstore.Store, id casync.ChunkID, want bool) {
	t.Helper()
	got, err := s.HasChunk(context.Background(), id)
	if err != nil || got != want {
		t.Fatalf("HasChunk(%s) = %v, %v; want %v, nil", id, got, err, want)
	}
}

func checkMissing(t *testing.T, s chunkstore.Store, id casync.ChunkID) {
	t.Helper()
	if data, err := s.GetChunk(context.Background(), id); !errors.Is(err, chunkstore.ErrNotFound) {
		t.Errorf("GetChunk(missing %s) = %d bytes, %v; want ErrNotFound", id, len(data), err)
	}
	checkHas(t, s, id, false)
}

func checkCanceled(t *testing.T, s chunkstore.Store, ctx context.Context, id casync.ChunkID) {
	t.Helper()
	if data, err := s.GetChunk(ctx, id); !errors.Is(err, context.Canceled) {
		t.Errorf("GetChunk(canceled ctx) = %d bytes, %v; want context.Canceled", len(data), err)
	}
	if _, err := s.HasChunk(ctx, id); !errors.Is(err, context.Canceled) {
		t.Errorf("HasChunk(canceled ctx) = %v, want context.Canceled", err)
	}
}
