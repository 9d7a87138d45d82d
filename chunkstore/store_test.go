package chunkstore_test

import (
	"context"
	"net"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/bootfs/bootfs/chunkstore"
	"github.com/bootfs/bootfs/chunkstore/storetest"
)

func newLocal(t testing.TB) *chunkstore.Local {
	t.Helper()
	s, err := chunkstore.NewLocal(t.TempDir(), chunkstore.LocalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// serve starts an httptest server for store and returns a client of it.
func serve(t testing.TB, store chunkstore.Store, hopts chunkstore.HandlerOptions, copts chunkstore.HTTPOptions) (*chunkstore.HTTP, *httptest.Server) {
	t.Helper()
	srv := httptest.NewServer(chunkstore.NewHTTPHandler(store, hopts))
	t.Cleanup(srv.Close)
	c, err := chunkstore.NewHTTP(srv.URL, copts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, srv
}

// serveReal runs chunkstore.Serve, the server `chunkstore serve --http`
// runs, on a loopback port and returns its base URL.
func serveReal(t testing.TB, store chunkstore.Store, opts chunkstore.ServerOptions) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- chunkstore.Serve(ctx, ln, store, opts) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("server did not stop within 10 s")
		}
	})
	return "http://" + ln.Addr().String()
}

func TestConformance(t *testing.T) {
	t.Run("Memory", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T) chunkstore.WriteStore {
			return chunkstore.NewMemory(chunkstore.MemoryOptions{})
		})
	})
	t.Run("Local", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T) chunkstore.WriteStore { return newLocal(t) })
	})
	t.Run("HTTP", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T) chunkstore.WriteStore {
			c, _ := serve(t, newLocal(t), chunkstore.HandlerOptions{WriteToken: "secret"}, chunkstore.HTTPOptions{Token: "secret"})
			return c
		})
	})
	t.Run("HTTPOverMemory", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T) chunkstore.WriteStore {
			c, _ := serve(t, chunkstore.NewMemory(chunkstore.MemoryOptions{}), chunkstore.HandlerOptions{WriteToken: "secret"}, chunkstore.HTTPOptions{Token: "secret"})
			return c
		})
	})
	t.Run("Cache", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T) chunkstore.WriteStore {
			c, err := chunkstore.NewCache(newLocal(t), t.TempDir(), chunkstore.CacheOptions{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			return c
		})
	})
	t.Run("CacheOverHTTP", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T) chunkstore.WriteStore {
			h, _ := serve(t, newLocal(t), chunkstore.HandlerOptions{WriteToken: "secret"}, chunkstore.HTTPOptions{Token: "secret"})
			c, err := chunkstore.NewCache(h, t.TempDir(), chunkstore.CacheOptions{MaxBytes: 64 << 20})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			return c
		})
	})
	t.Run("Failover", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T) chunkstore.WriteStore {
			return chunkstore.NewFailover(chunkstore.NewMemory(chunkstore.MemoryOptions{}), newLocal(t))
		})
	})
	// The decorators the opener composes, each alone and over HTTP.
	t.Run("Counted", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T) chunkstore.WriteStore { return chunkstore.NewCounted(newLocal(t)) })
	})
	t.Run("Retry", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T) chunkstore.WriteStore {
			return chunkstore.NewRetry(chunkstore.NewMemory(chunkstore.MemoryOptions{}), chunkstore.RetryOptions{})
		})
	})
	t.Run("CountedRetryHTTP", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T) chunkstore.WriteStore {
			c, _ := serve(t, newLocal(t), chunkstore.HandlerOptions{WriteToken: "secret"}, chunkstore.HTTPOptions{Token: "secret"})
			return chunkstore.NewCounted(chunkstore.NewRetry(c, chunkstore.RetryOptions{}))
		})
	})
	t.Run("ReadOnly", func(t *testing.T) {
		seed := func(t *testing.T, ws chunkstore.WriteStore, chunks []storetest.Chunk) {
			for _, c := range chunks {
				if err := ws.StoreChunk(context.Background(), c.ID, c.Data); err != nil {
					t.Fatal(err)
				}
			}
		}
		t.Run("HTTP", func(t *testing.T) {
			storetest.RunReadOnly(t, func(t *testing.T, chunks []storetest.Chunk) chunkstore.Store {
				l := newLocal(t)
				seed(t, l, chunks)
				c, _ := serve(t, l, chunkstore.HandlerOptions{}, chunkstore.HTTPOptions{})
				return c
			})
		})
		t.Run("FailoverSecond", func(t *testing.T) {
			storetest.RunReadOnly(t, func(t *testing.T, chunks []storetest.Chunk) chunkstore.Store {
				l := newLocal(t)
				seed(t, l, chunks)
				return chunkstore.NewFailover(chunkstore.NewMemory(chunkstore.MemoryOptions{}), l)
			})
		})
	})
}
