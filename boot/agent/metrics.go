package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"syscall"
	"time"

	"github.com/bootfs/bootfs/chunkstore"
)

// cacheSize measures the node cache directory, at most once every
// cacheSizeEvery: the Cache keeps its size to itself.
type cacheSize struct {
	dir    string
	mu     sync.Mutex
	at     time.Time
	chunks int
	bytes  int64
}

const cacheSizeEvery = 10 * time.Second

func (c *cacheSize) get() (chunks int, bytes int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if time.Since(c.at) < cacheSizeEvery {
		return c.chunks, c.bytes
	}
	c.chunks, c.bytes = 0, 0
	if l, err := chunkstore.NewLocal(c.dir, chunkstore.LocalOptions{}); err == nil {
		_ = l.Walk(context.Background(), func(ci chunkstore.ChunkInfo) error {
			c.chunks++
			c.bytes += ci.Size
			return nil
		})
	}
	c.at = time.Now()
	return c.chunks, c.bytes
}

// WriteMetrics writes the agent's figures in Prometheus's text format.
func (a *Agent) WriteMetrics(w io.Writer) {
	var fetched, fetchedBytes, hits, retries, errs uint64
	a.mu.Lock()
	for _, s := range a.stores {
		// The counted remote's calls are the node cache's misses, the
		// chunks that crossed the network, as stored.
		rs := s.Remote.Stats()
		fetched += rs.Hits
		fetchedBytes += rs.WireBytes + rs.Bytes
		retries += rs.Retries
		errs += rs.Errors
		hits += s.Cache.Stats().Hits
	}
	mounts := len(a.mounts)
	a.mu.Unlock()
	chunks, bytes := a.cacheS.get()
	metric := func(name, typ, help string, v any) {
		fmt.Fprintf(w, "# HELP bootfs_agent_%s %s\n# TYPE bootfs_agent_%s %s\nbootfs_agent_%s %v\n", name, help, name, typ, name, v)
	}
	metric("mounts", "gauge", "Containers whose root filesystem the agent serves.", mounts)
	metric("requests_total", "counter", "Mount requests received.", a.requests.Load())
	metric("requests_refused_total", "counter", "Mount requests that failed or were refused.", a.refused.Load())
	metric("chunks_fetched_total", "counter", "Chunks fetched from the stores (node cache misses).", fetched)
	metric("bytes_fetched_total", "counter", "Bytes received from the stores, as stored (compressed).", fetchedBytes)
	metric("cache_hits_total", "counter", "Chunks read from the node cache.", hits)
	metric("store_retries_total", "counter", "Repeated store attempts after transient failures.", retries)
	metric("store_errors_total", "counter", "Store calls that failed.", errs)
	metric("cache_chunks", "gauge", "Chunks in the node cache directory.", chunks)
	metric("cache_bytes", "gauge", "Bytes of chunk files in the node cache directory.", bytes)
	metric("cache_max_bytes", "gauge", "The node cache's size cap (0: none).", a.opts.CacheMax)
	metric("memory_bytes", "gauge", "Bytes held by the shared in-memory chunk LRU.", a.lru.Bytes())
	images, imageBytes := a.images.stats()
	metric("images", "gauge", "Images served, each with one parsed index and TOC for all its containers.", images)
	metric("image_bytes", "gauge", "Bytes of memory the served images' indexes and TOCs hold.", imageBytes)
	metric("worker_restarts_total", "counter", "Workers the holder started after the first, each taking the running containers over.", a.opts.Restarts)
	metric("memory_limit_bytes", "gauge", "The Go runtime's soft memory limit the agent set (0: GOMEMLIMIT's).", a.MemoryLimit())
}

// ServeMetrics serves /metrics on addr, which must be a loopback address
// (the socket is the agent's only interface to the containers), until ctx
// ends.
func (a *Agent) ServeMetrics(ctx context.Context, addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("bootfs-agent: --metrics %q: %w (want HOST:PORT, such as 127.0.0.1:9100)", addr, err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("bootfs-agent: --metrics %q: not a loopback address; the agent serves metrics only on 127.0.0.1 or ::1", addr)
	}
	// An agent this one replaces (Options.Replace) lets go of the
	// address as it stops taking requests: give it a moment.
	var l net.Listener
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if l, err = net.Listen("tcp", addr); err == nil || !errors.Is(err, syscall.EADDRINUSE) || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("bootfs-agent: metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		a.WriteMetrics(w)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	a.log.Info("serving metrics", "addr", l.Addr().String())
	if err := srv.Serve(l); err != http.ErrServerClosed {
		return err
	}
	return nil
}
