package registry_test

import (
	"context"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
	"github.com/bootfs/bootfs/chunkstore/registry"
	"github.com/bootfs/bootfs/chunkstore/storetest"
	"github.com/bootfs/bootfs/internal/registrytest"
)

// BenchmarkLayout measures the two layouts of chunks in a registry: packs
// of 8 MiB (what the store does) and one blob per chunk (PackSize 1), by
// pushing 400 chunks into a fresh repository and reading them all back,
// against a real docker-registry on loopback. It reports the requests
// each costs; on a real network each is a round trip.
func BenchmarkLayout(b *testing.B) {
	r := registrytest.Start(b, registrytest.Config{})
	cs := storetest.Chunks(30, 400)
	ids := make([]casync.ChunkID, len(cs))
	var size int64
	for i, c := range cs {
		ids[i] = c.ID
		size += int64(len(c.Data))
	}
	for _, l := range []struct {
		name string
		pack int
	}{{"packs", 8 << 20}, {"blob-per-chunk", 1}} {
		b.Run("push/"+l.name, func(b *testing.B) {
			b.SetBytes(size)
			var reqs int
			for b.Loop() {
				w, err := registry.New(context.Background(), newRepo(r), registry.Options{Write: true, PackSize: l.pack, TempDir: b.TempDir(), Jobs: 8})
				if err != nil {
					b.Fatal(err)
				}
				for _, c := range cs {
					if err := w.StoreChunk(context.Background(), c.ID, c.Data); err != nil {
						b.Fatal(err)
					}
				}
				r.ResetLog()
				if _, err := w.Commit(context.Background(), ids); err != nil {
					b.Fatal(err)
				}
				reqs += requests(r.Log())
				w.Close()
			}
			b.ReportMetric(float64(reqs)/float64(b.N), "requests/op")
		})
		b.Run("read/"+l.name, func(b *testing.B) {
			w, err := registry.New(context.Background(), newRepo(r), registry.Options{Write: true, PackSize: l.pack, TempDir: b.TempDir(), Jobs: 8})
			if err != nil {
				b.Fatal(err)
			}
			for _, c := range cs {
				w.StoreChunk(context.Background(), c.ID, c.Data)
			}
			pinned, err := w.Commit(context.Background(), ids)
			if err != nil {
				b.Fatal(err)
			}
			w.Close()
			b.SetBytes(size)
			var reqs int
			for b.Loop() {
				r.ResetLog()
				s, err := registry.New(context.Background(), pinned, registry.Options{})
				if err != nil {
					b.Fatal(err)
				}
				for _, id := range ids {
					if _, err := s.GetChunk(context.Background(), id); err != nil {
						b.Fatal(err)
					}
				}
				s.Close()
				reqs += requests(r.Log())
			}
			b.ReportMetric(float64(reqs)/float64(b.N), "requests/op")
		})
	}
}

func requests(log string) int {
	n := 0
	for _, m := range []string{`"GET /v2/`, `"HEAD /v2/`, `"PUT /v2/`, `"PATCH /v2/`, `"POST /v2/`} {
		n += strings.Count(log, m)
	}
	return n
}

// BenchmarkGetChunks reads a run of 64 neighbouring chunks of one pack
// through a real docker-registry behind a front that delays every pack
// request by 3 ms, as a round trip to a registry would: one GetChunk per
// chunk, 8 at once (chunkstore.GetEach, what a reader does with a store
// that has no batch read), against one GetChunks. It reports the pack
// requests each costs.
func BenchmarkGetChunks(b *testing.B) {
	const delay = 3 * time.Millisecond
	r := registrytest.Start(b, registrytest.Config{})
	cs := storetest.Chunks(50, 64)
	ids := make([]casync.ChunkID, len(cs))
	var size int64
	for i, c := range cs {
		ids[i] = c.ID
		size += int64(len(c.Data))
	}
	w, err := registry.New(context.Background(), newRepo(r), registry.Options{Write: true, TempDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range cs {
		if err := w.StoreChunk(context.Background(), c.ID, c.Data); err != nil {
			b.Fatal(err)
		}
	}
	pinned, err := w.Commit(context.Background(), ids)
	if err != nil {
		b.Fatal(err)
	}
	w.Close()
	var gets atomic.Int64
	u := front(b, r, pinned, func(_ http.ResponseWriter, req *http.Request) bool {
		if isPackGet(req) {
			gets.Add(1)
			time.Sleep(delay)
		}
		return false
	})
	s, err := registry.New(context.Background(), u, registry.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	for _, m := range []struct {
		name string
		get  func(fn func(chunkstore.Got))
	}{
		{"GetChunk-x8", func(fn func(chunkstore.Got)) { chunkstore.GetEach(context.Background(), s, ids, 8, fn) }},
		{"GetChunks", func(fn func(chunkstore.Got)) { s.GetChunks(context.Background(), ids, fn) }},
	} {
		b.Run(m.name, func(b *testing.B) {
			b.SetBytes(size)
			b.ReportAllocs()
			gets.Store(0)
			for b.Loop() {
				m.get(func(g chunkstore.Got) {
					if g.Err != nil {
						b.Fatal(g.Err)
					}
				})
			}
			b.ReportMetric(float64(gets.Load())/float64(b.N), "requests/op")
		})
	}
}
