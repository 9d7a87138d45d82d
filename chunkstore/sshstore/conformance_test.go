package sshstore

import (
	"context"
	"testing"

	"github.com/bootfs/bootfs/chunkstore"
	"github.com/bootfs/bootfs/chunkstore/storetest"
)

// TestConformance runs the chunkstore suite against our client reading
// from our server, over a Memory store (chunks compressed per request) and
// a Local one (stored frames passed through).
func TestConformance(t *testing.T) {
	backends := []struct {
		name string
		fill func(t *testing.T, chunks []storetest.Chunk) chunkstore.Store
	}{
		{"memory", func(t *testing.T, chunks []storetest.Chunk) chunkstore.Store {
			s := chunkstore.NewMemory(chunkstore.MemoryOptions{})
			fill(t, s, chunks)
			return s
		}},
		{"local", func(t *testing.T, chunks []storetest.Chunk) chunkstore.Store {
			s := localStore(t, nil)
			fill(t, s, chunks)
			return s
		}},
	}
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			storetest.RunReadOnly(t, func(t *testing.T, chunks []storetest.Chunk) chunkstore.Store {
				f := startServer(t, b.fill(t, chunks), ServerOptions{})
				opts := f.clientOptions()
				opts.Sessions = 2
				opts.InFlight = 4
				return f.newClient(t, opts)
			})
		})
	}
}

// TestConformanceWrite runs the whole suite, writes included, against our
// client writing to our server, over a Local store (frames stored as
// pushed) and a Memory one (frames decompressed and stored).
func TestConformanceWrite(t *testing.T) {
	backends := []struct {
		name  string
		store func(t *testing.T) chunkstore.WriteStore
	}{
		{"local", func(t *testing.T) chunkstore.WriteStore { return localStore(t, nil) }},
		{"memory", func(t *testing.T) chunkstore.WriteStore { return chunkstore.NewMemory(chunkstore.MemoryOptions{}) }},
	}
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			storetest.Run(t, func(t *testing.T) chunkstore.WriteStore {
				f := startWriteServer(t, b.store(t), ServerOptions{})
				opts := f.clientOptions()
				opts.Sessions = 2
				opts.InFlight = 4
				return f.newClient(t, opts)
			})
		})
	}
}

func fill(t *testing.T, s chunkstore.WriteStore, chunks []storetest.Chunk) {
	t.Helper()
	for _, c := range chunks {
		if err := s.StoreChunk(context.Background(), c.ID, c.Data); err != nil {
			t.Fatal(err)
		}
	}
}
