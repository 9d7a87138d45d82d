package chunkstore_test

import (
	"bytes"
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bootfs/bootfs/chunkstore"
	"github.com/bootfs/bootfs/chunkstore/storetest"
)

// countingListener counts the connections it accepts.
type countingListener struct {
	net.Listener
	n atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// TestH2CSharesOneConnection: once our plain-HTTP server's first reply
// says it speaks h2c, 32 GETs in flight at once share one new connection,
// and a batch read runs over it too.
func TestH2CSharesOneConnection(t *testing.T) {
	ctx := context.Background()
	cs := storetest.Chunks(150, 33)
	mem := memWith(t, cs)
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &countingListener{Listener: inner}
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- chunkstore.Serve(sctx, ln, mem, chunkstore.ServerOptions{}) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("server did not stop")
		}
	})
	client, err := chunkstore.NewHTTP("http://"+inner.Addr().String(), chunkstore.HTTPOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	if _, err := client.GetChunk(ctx, cs[32].ID); err != nil { // learns of h2c
		t.Fatal(err)
	}
	before := ln.n.Load()
	var wg sync.WaitGroup
	start := make(chan struct{})
	for _, c := range cs[:32] {
		wg.Go(func() {
			<-start
			data, err := client.GetChunk(ctx, c.ID)
			if err != nil || !bytes.Equal(data, c.Data) {
				t.Errorf("GetChunk(%s) = %d bytes, %v", c.ID, len(data), err)
			}
		})
	}
	close(start)
	wg.Wait()
	for i, g := range collect(t, ctx, client, idsOf(cs)) {
		if g.Err != nil || !bytes.Equal(g.Data, cs[i].Data) {
			t.Errorf("batch chunk %d: %v", i, g.Err)
		}
	}
	if n := ln.n.Load() - before; n != 1 {
		t.Errorf("32 concurrent GETs and a batch read took %d new connections, want 1", n)
	}
}
