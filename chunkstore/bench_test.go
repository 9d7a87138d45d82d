package chunkstore_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http/httptest"
	"net/url"
	"sync/atomic"
	"testing"

	"github.com/folbricht/desync"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
)

// benchChunks fills a fresh local store with n chunks of size bytes, half
// of each random and half a repeated pattern, so frames are about 60% of
// the data, as for binaries.
func benchChunks(b *testing.B, n, size int) (*chunkstore.Local, []casync.ChunkID) {
	return benchChunksDigest(b, n, size, casync.SHA512_256)
}

// benchChunksDigest is benchChunks with chunk IDs of digest d.
func benchChunksDigest(b *testing.B, n, size int, d casync.Digest) (*chunkstore.Local, []casync.ChunkID) {
	b.Helper()
	l, err := chunkstore.NewLocal(b.TempDir(), chunkstore.LocalOptions{NoSync: true, Digest: d})
	if err != nil {
		b.Fatal(err)
	}
	r := rand.New(rand.NewPCG(1, 2))
	ids := make([]casync.ChunkID, n)
	for i := range ids {
		data := make([]byte, size)
		for j := range data[:size/2] {
			data[j] = byte(r.Uint32())
		}
		for j := size / 2; j < size; j++ {
			data[j] = byte(j % 251)
		}
		ids[i] = d.Sum(data)
		if err := l.StoreChunk(context.Background(), ids[i], data); err != nil {
			b.Fatal(err)
		}
	}
	return l, ids
}

func reportChunks(b *testing.B) {
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "chunks/s")
}

// BenchmarkHTTPGet64K fetches verified 64 KiB chunks in parallel over
// loopback: our server and client, then desync's chunk server and client
// over the same store directory.
func BenchmarkHTTPGet64K(b *testing.B) {
	const size = 64 << 10
	l, ids := benchChunks(b, 256, size)
	// The bare client, one request per call, and the same client as the
	// opener composes it: retried, with a timeout per attempt, counted.
	for _, tc := range []struct {
		name string
		wrap func(*chunkstore.HTTP) chunkstore.Store
	}{
		{"bootfs", func(h *chunkstore.HTTP) chunkstore.Store { return h }},
		{"bootfs-opened", func(h *chunkstore.HTTP) chunkstore.Store {
			return chunkstore.NewCountedRetry(h, chunkstore.RetryOptions{})
		}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			srv := httptest.NewServer(chunkstore.NewHTTPHandler(l, chunkstore.HandlerOptions{}))
			defer srv.Close()
			h, err := chunkstore.NewHTTP(srv.URL, chunkstore.HTTPOptions{})
			if err != nil {
				b.Fatal(err)
			}
			c := tc.wrap(h)
			defer c.Close()
			var next atomic.Uint64
			b.SetBytes(size)
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := c.GetChunk(context.Background(), ids[next.Add(1)%uint64(len(ids))]); err != nil {
						b.Error(err)
						return
					}
				}
			})
			reportChunks(b)
		})
	}
	b.Run("desync", func(b *testing.B) {
		opts := desync.NewStoreOptionsWithDefaults()
		opts.N = 32
		ds, err := desync.NewLocalStore(l.Dir(), opts)
		if err != nil {
			b.Fatal(err)
		}
		conv, _ := opts.StorageConverters()
		srv := httptest.NewServer(desync.NewHTTPHandler(ds, false, false, conv, ""))
		defer srv.Close()
		u, _ := url.Parse(srv.URL + "/")
		c, err := desync.NewRemoteHTTPStore(u, opts)
		if err != nil {
			b.Fatal(err)
		}
		var next atomic.Uint64
		b.SetBytes(size)
		b.ReportAllocs()
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				chunk, err := c.GetChunk(desync.ChunkID(ids[next.Add(1)%uint64(len(ids))]))
				if err == nil {
					_, err = chunk.Data()
				}
				if err != nil {
					b.Error(err)
					return
				}
			}
		})
		reportChunks(b)
	})
}

// BenchmarkCacheHit reads verified 64 KiB chunks that are all in the
// cache directory, in parallel, for each chunk ID digest: casync's default
// SHA-512/256, and SHA-256 (mkimage --digest sha256), which CPUs with SHA
// extensions hash about twice as fast. GetChunk returns a fresh slice per
// chunk; AppendCached reuses the caller's buffer, as boot's read-ahead
// does.
func BenchmarkCacheHit(b *testing.B) {
	for _, d := range []casync.Digest{casync.SHA512_256, casync.SHA256} {
		b.Run(d.String(), func(b *testing.B) {
			b.Run("GetChunk", func(b *testing.B) {
				benchCacheHit(b, d, false, func(c *chunkstore.Cache, id casync.ChunkID, _ []byte) ([]byte, error) {
					return c.GetChunk(context.Background(), id)
				})
			})
			b.Run("AppendCached", func(b *testing.B) {
				benchCacheHit(b, d, true, func(c *chunkstore.Cache, id casync.ChunkID, buf []byte) ([]byte, error) {
					return c.AppendCached(context.Background(), buf[:0], id)
				})
			})
		})
	}
}

// benchCacheHit reads with get, passing each goroutine's own buffer if
// reuse is set (and nil otherwise, so that GetChunk runs on the smallest
// heap, as it did before AppendCached existed).
func benchCacheHit(b *testing.B, d casync.Digest, reuse bool, get func(*chunkstore.Cache, casync.ChunkID, []byte) ([]byte, error)) {
	const size = 64 << 10
	remote, ids := benchChunksDigest(b, 512, size, d)
	c, err := chunkstore.NewCache(remote, b.TempDir(), chunkstore.CacheOptions{Digest: d})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	for _, id := range ids {
		if _, err := c.GetChunk(context.Background(), id); err != nil {
			b.Fatal(err)
		}
	}
	var next atomic.Uint64
	b.SetBytes(size)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		var buf []byte
		if reuse {
			buf = make([]byte, 0, casync.MaxChunkSize)
		}
		for pb.Next() {
			data, err := get(c, ids[next.Add(1)%uint64(len(ids))], buf)
			if err == nil && len(data) != size {
				err = fmt.Errorf("got %d bytes, want %d", len(data), size)
			}
			if err != nil {
				b.Error(err)
				return
			}
		}
	})
	reportChunks(b)
	if st := c.Stats(); st.Misses != uint64(len(ids)) {
		b.Errorf("cache misses = %d, want %d (only the warm-up)", st.Misses, len(ids))
	}
}
