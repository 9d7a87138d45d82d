package chunkstore_test

import (
	"bytes"
	"context"
	"errors"
	"sync/atomic"
	"testing"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
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
