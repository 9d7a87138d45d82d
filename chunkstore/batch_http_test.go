package chunkstore_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/folbricht/desync"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
	"github.com/bootfs/bootfs/chunkstore/storetest"
)

// requestLog counts the requests a test server gets, by method.
type requestLog struct {
	mu      sync.Mutex
	methods map[string]int
	batches []int // chunks asked for in each POST /batch
}

func (l *requestLog) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		l.mu.Lock()
		if l.methods == nil {
			l.methods = make(map[string]int)
		}
		l.methods[r.Method]++
		if r.Method == http.MethodPost && r.ContentLength >= 0 {
			l.batches = append(l.batches, int(r.ContentLength/32))
		}
		l.mu.Unlock()
		h.ServeHTTP(w, r)
	})
}

func (l *requestLog) count(method string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.methods[method]
}

// serveLogged serves h over httptest and returns a client and the log.
func serveLogged(t *testing.T, h http.Handler) (*chunkstore.HTTP, *requestLog) {
	t.Helper()
	log := &requestLog{}
	srv := httptest.NewServer(log.wrap(h))
	t.Cleanup(srv.Close)
	c, err := chunkstore.NewHTTP(srv.URL, chunkstore.HTTPOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, log
}

// TestHTTPBatchFromOurServer: against our server, after its first reply,
// a run of chunks longer than one batch comes in POST /batch requests of
// at most BatchChunks, every chunk verified, a repeat and a missing chunk
// answered too, and no GET per chunk.
func TestHTTPBatchFromOurServer(t *testing.T) {
	ctx := context.Background()
	cs := storetest.Chunks(140, 300)
	local := newLocal(t)
	for _, c := range cs {
		if err := local.StoreChunk(ctx, c.ID, c.Data); err != nil {
			t.Fatal(err)
		}
	}
	client, log := serveLogged(t, chunkstore.NewHTTPHandler(local, chunkstore.HandlerOptions{}))
	missing := casync.SHA512_256.Sum([]byte("missing"))
	ids := append(idsOf(cs), missing, cs[9].ID)
	got := collect(t, ctx, client, ids)
	for i, g := range got {
		switch {
		case ids[i] == missing:
			if !errors.Is(g.Err, chunkstore.ErrNotFound) {
				t.Errorf("missing chunk: %v, want ErrNotFound", g.Err)
			}
		case g.Err != nil:
			t.Errorf("chunk %d: %v", i, g.Err)
		case !bytes.Equal(g.Data, cs[i%len(cs)].Data) && i < len(cs):
			t.Errorf("chunk %d: wrong bytes", i)
		}
	}
	if !bytes.Equal(got[len(ids)-1].Data, cs[9].Data) {
		t.Error("repeated chunk: wrong bytes")
	}
	// The first chunk is one GET (the client learns of batches from its
	// answer); the other 300 unique ones take two batches.
	if g, p := log.count(http.MethodGet), log.count(http.MethodPost); g != 1 || p != 2 {
		t.Errorf("%d GETs and %d POSTs, want 1 and 2", g, p)
	}
	for _, n := range log.batches {
		if n > chunkstore.BatchChunks {
			t.Errorf("a batch of %d chunks, more than %d", n, chunkstore.BatchChunks)
		}
	}
}

// TestHTTPBatchBytesBound: the server stops a reply after about
// BatchBytes and the client asks again for the rest.
func TestHTTPBatchBytesBound(t *testing.T) {
	ctx := context.Background()
	mem := chunkstore.NewMemory(chunkstore.MemoryOptions{})
	ids := randomChunks(t, mem, 80, 256<<10) // 20 MiB, incompressible
	client, log := serveLogged(t, chunkstore.NewHTTPHandler(mem, chunkstore.HandlerOptions{}))
	client.HasChunk(ctx, ids[0]) // learn
	for i, g := range collect(t, ctx, client, ids) {
		if g.Err != nil || casync.SHA512_256.Sum(g.Data) != ids[i] {
			t.Errorf("chunk %d: %v", i, g.Err)
		}
	}
	if p := log.count(http.MethodPost); p != 2 {
		t.Errorf("%d POSTs for 20 MiB of chunks, want 2", p)
	}
}

// TestHTTPBatchServerRefuses: what the server answers to batch requests
// that break its rules.
func TestHTTPBatchServerRefuses(t *testing.T) {
	srv := httptest.NewServer(chunkstore.NewHTTPHandler(chunkstore.NewMemory(chunkstore.MemoryOptions{}), chunkstore.HandlerOptions{}))
	defer srv.Close()
	for _, tt := range []struct {
		name   string
		method string
		body   []byte
		want   int
	}{
		{"too many", http.MethodPost, make([]byte, 32*(chunkstore.BatchChunks+1)), http.StatusRequestEntityTooLarge},
		{"not whole IDs", http.MethodPost, make([]byte, 33), http.StatusBadRequest},
		{"empty", http.MethodPost, nil, http.StatusBadRequest},
		{"GET", http.MethodGet, nil, http.StatusMethodNotAllowed},
	} {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest(tt.method, srv.URL+"/batch", bytes.NewReader(tt.body))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tt.want || resp.Header.Get(chunkstore.BatchHeader) != "batch" {
				t.Errorf("%s /batch = %d (header %q), want %d with the batch header", tt.method, resp.StatusCode, resp.Header.Get(chunkstore.BatchHeader), tt.want)
			}
		})
	}
}

// TestHTTPBatchCorruptOnServer: a chunk corrupt in the server's store is
// a failed record, never its bytes; the others come.
func TestHTTPBatchCorruptOnServer(t *testing.T) {
	ctx := context.Background()
	cs := storetest.Chunks(141, 4)
	local := newLocal(t)
	for _, c := range cs {
		if err := local.StoreChunk(ctx, c.ID, c.Data); err != nil {
			t.Fatal(err)
		}
	}
	corruptFile(t, local, cs[1].ID, cs[2].ID)
	client, _ := serveLogged(t, chunkstore.NewHTTPHandler(local, chunkstore.HandlerOptions{}))
	client.HasChunk(ctx, cs[0].ID)
	for i, g := range collect(t, ctx, client, idsOf(cs)) {
		if i == 1 {
			if g.Err == nil || g.Data != nil || !strings.Contains(g.Err.Error(), "corrupt on the server") {
				t.Errorf("corrupt chunk: %d bytes, %v", len(g.Data), g.Err)
			}
		} else if g.Err != nil || !bytes.Equal(g.Data, cs[i].Data) {
			t.Errorf("chunk %d: %v", i, g.Err)
		}
	}
}

// hostileBatch is a server that advertises batch reads, answers GETs from
// mem, and answers POST /batch as reply says, given the IDs asked for.
func hostileBatch(mem *chunkstore.Memory, reply func(w http.ResponseWriter, ids []casync.ChunkID)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(chunkstore.BatchHeader, "batch")
		if r.Method == http.MethodPost {
			body, _ := io.ReadAll(r.Body)
			ids := make([]casync.ChunkID, len(body)/32)
			for i := range ids {
				copy(ids[i][:], body[32*i:])
			}
			reply(w, ids)
			return
		}
		id, err := chunkstore.ParseChunkPath(strings.TrimPrefix(r.URL.Path, "/"))
		if err != nil {
			http.Error(w, "bad path", http.StatusBadRequest)
			return
		}
		data, err := mem.GetChunk(r.Context(), id)
		if err != nil {
			http.Error(w, "not found", http.StatusNotFound)
			return
		}
		w.Write(casync.CompressChunk(nil, data))
	})
}

func record(id casync.ChunkID, status byte, payload []byte) []byte {
	b := append(id[:len(id):len(id)], status)
	b = binary.BigEndian.AppendUint32(b, uint32(len(payload)))
	return append(b, payload...)
}

// end returns the end record of a reply of n records.
func end(n int) []byte {
	return binary.BigEndian.AppendUint32(append(make([]byte, 32), 0xff), uint32(n))
}

// TestHTTPBatchHostileServer: whatever a server sends back for a batch,
// the client passes on only verified chunks, and every other chunk gets
// an error: retryable when the reply broke, a checksum error for a frame
// that is not its chunk's.
func TestHTTPBatchHostileServer(t *testing.T) {
	ctx := context.Background()
	cs := storetest.Chunks(142, 8)
	mem := memWith(t, cs)
	frame := func(c storetest.Chunk) []byte { return casync.CompressChunk(nil, c.Data) }
	for _, tt := range []struct {
		name  string
		reply func(w http.ResponseWriter, ids []casync.ChunkID)
		// good reports whether chunk k of the batch must arrive;
		// corrupt whether it must fail verification.
		good, corrupt func(k int) bool
	}{
		{
			name: "out of order",
			reply: func(w http.ResponseWriter, ids []casync.ChunkID) {
				for k := len(ids) - 1; k >= 0; k-- {
					c := cs[indexOf(cs, ids[k])]
					w.Write(record(c.ID, 0, frame(c)))
				}
				w.Write(end(len(ids)))
			},
			good: func(int) bool { return true },
		},
		{
			name: "corrupt frame",
			reply: func(w http.ResponseWriter, ids []casync.ChunkID) {
				for k, id := range ids {
					c := cs[indexOf(cs, id)]
					f := frame(c)
					if k == 2 {
						f = frame(cs[0]) // another chunk's frame
					}
					if k == 3 {
						f = []byte("not zstd at all")
					}
					w.Write(record(id, 0, f))
				}
				w.Write(end(len(ids)))
			},
			good:    func(k int) bool { return k != 2 && k != 3 },
			corrupt: func(k int) bool { return k == 2 || k == 3 },
		},
		{
			name: "cut off",
			reply: func(w http.ResponseWriter, ids []casync.ChunkID) {
				for _, id := range ids[:3] {
					w.Write(record(id, 0, frame(cs[indexOf(cs, id)])))
				}
				w.Write(record(ids[3], 0, frame(cs[indexOf(cs, ids[3])]))[:50])
			},
			good: func(k int) bool { return k < 3 },
		},
		{
			name: "answers nothing",
			reply: func(w http.ResponseWriter, ids []casync.ChunkID) {
				w.Write(end(0))
			},
			good: func(int) bool { return false },
		},
		{
			name: "a chunk not asked for",
			reply: func(w http.ResponseWriter, ids []casync.ChunkID) {
				w.Write(record(ids[0], 0, frame(cs[indexOf(cs, ids[0])])))
				w.Write(record(cs[0].ID, 0, frame(cs[0]))) // chunk 0 was not asked for in this batch
				w.Write(end(2))
			},
			good: func(k int) bool { return k == 0 },
		},
		{
			name: "twice",
			reply: func(w http.ResponseWriter, ids []casync.ChunkID) {
				w.Write(record(ids[0], 0, frame(cs[indexOf(cs, ids[0])])))
				w.Write(record(ids[0], 0, frame(cs[indexOf(cs, ids[0])])))
				w.Write(end(2))
			},
			good: func(k int) bool { return k == 0 },
		},
		{
			name: "a 500",
			reply: func(w http.ResponseWriter, ids []casync.ChunkID) {
				http.Error(w, "boom", http.StatusInternalServerError)
			},
			good: func(int) bool { return false },
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			client, _ := serveLogged(t, hostileBatch(mem, tt.reply))
			// The first chunk is a GET that teaches the client; the
			// other seven are the batch.
			got := collect(t, ctx, client, idsOf(cs))
			if got[0].Err != nil {
				t.Fatalf("chunk 0 (a GET): %v", got[0].Err)
			}
			for k, g := range got[1:] {
				i := k + 1
				switch {
				case tt.good(k):
					if g.Err != nil || !bytes.Equal(g.Data, cs[i].Data) {
						t.Errorf("chunk %d: %d bytes, %v; want the chunk", i, len(g.Data), g.Err)
					}
				case g.Data != nil || g.Frame != nil || g.Err == nil:
					t.Errorf("chunk %d: %d bytes, %v; want no bytes and an error", i, len(g.Data), g.Err)
				case tt.corrupt != nil && tt.corrupt(k):
					var ce *casync.ChecksumError
					if !errors.As(g.Err, &ce) || ce.Want != cs[i].ID {
						t.Errorf("chunk %d: %v, want a checksum error", i, g.Err)
					}
				default:
					// A broken reply is worth asking again for.
					if errors.Is(g.Err, chunkstore.ErrNotFound) || isPermanent(g.Err) {
						t.Errorf("chunk %d: %v, want a retryable error", i, g.Err)
					}
				}
			}
			// Under Retry, the chunks a broken reply did not give are
			// asked for again, and fail again: never with wrong bytes.
			r := chunkstore.NewRetry(client, chunkstore.RetryOptions{Retries: 1, Backoff: time.Millisecond})
			for k, g := range collect(t, ctx, r, idsOf(cs[1:])) {
				if g.Err == nil && !bytes.Equal(g.Data, cs[k+1].Data) {
					t.Errorf("retried chunk %d: wrong bytes", k+1)
				}
			}
		})
	}
}

// isPermanent reports whether Retry would not retry err, by asking a
// Retry of a store that fails with it.
func isPermanent(err error) bool {
	calls := 0
	s := &failing{err: err, calls: &calls}
	r := chunkstore.NewRetry(s, chunkstore.RetryOptions{Retries: 1, Backoff: time.Millisecond})
	r.GetChunk(context.Background(), casync.ChunkID{})
	return calls == 1
}

type failing struct {
	chunkstore.Store
	err   error
	calls *int
}

func (f *failing) GetChunk(context.Context, casync.ChunkID) ([]byte, error) {
	*f.calls++
	return nil, f.err
}

func indexOf(cs []storetest.Chunk, id casync.ChunkID) int {
	for i, c := range cs {
		if c.ID == id {
			return i
		}
	}
	panic("unknown chunk")
}

// TestHTTPBatchAgainstPlainServers: against desync's chunk server and a
// casync store served as plain files, which say nothing of batches, the
// client reads a run of chunks with one GET each and never POSTs.
func TestHTTPBatchAgainstPlainServers(t *testing.T) {
	_, store, _ := casyncStore(t)
	ids := storeIDs(t, store)
	ds, err := desync.NewLocalStore(store, desync.NewStoreOptionsWithDefaults())
	if err != nil {
		t.Fatal(err)
	}
	conv, _ := desync.NewStoreOptionsWithDefaults().StorageConverters()
	for _, tt := range []struct {
		name string
		h    http.Handler
	}{
		{"desync", desync.NewHTTPHandler(ds, false, false, conv, "")},
		{"files", http.FileServer(http.Dir(store))},
	} {
		t.Run(tt.name, func(t *testing.T) {
			client, log := serveLogged(t, tt.h)
			for i, g := range collect(t, context.Background(), client, ids) {
				if g.Err != nil || casync.SHA512_256.Sum(g.Data) != ids[i] {
					t.Errorf("chunk %d: %v", i, g.Err)
				}
			}
			if g, p := log.count(http.MethodGet), log.count(http.MethodPost); g != len(ids) || p != 0 {
				t.Errorf("%d GETs and %d POSTs for %d chunks, want %d and 0", g, p, len(ids), len(ids))
			}
		})
	}
}
