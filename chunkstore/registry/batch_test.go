package registry_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
	"github.com/bootfs/bootfs/chunkstore/registry"
	"github.com/bootfs/bootfs/chunkstore/storetest"
	"github.com/bootfs/bootfs/internal/registrytest"
)

// got is what one fn call of GetChunks gave, with the data copied.
type got struct {
	data, frame []byte
	err         error
}

// getChunks runs s.GetChunks and checks the contract every caller relies
// on: fn is called exactly once for every index, never from two
// goroutines at once, and a Got without Err holds a frame that decodes
// to its data. It returns the calls by index.
func getChunks(t *testing.T, ctx context.Context, s chunkstore.BatchGetter, ids []casync.ChunkID) []got {
	t.Helper()
	out := make([]got, len(ids))
	calls := make([]int, len(ids))
	var inside atomic.Int32
	s.GetChunks(ctx, ids, func(g chunkstore.Got) {
		if inside.Add(1) != 1 {
			t.Error("GetChunks called fn concurrently")
		}
		defer inside.Add(-1)
		if g.Index < 0 || g.Index >= len(ids) {
			t.Errorf("GetChunks gave index %d of %d", g.Index, len(ids))
			return
		}
		calls[g.Index]++
		out[g.Index] = got{data: bytes.Clone(g.Data), frame: bytes.Clone(g.Frame), err: g.Err}
		if g.Err == nil {
			if data, err := casync.DecompressChunk(nil, g.Frame); err != nil || !bytes.Equal(data, g.Data) {
				t.Errorf("GetChunks index %d: the frame does not decode to the data (%v)", g.Index, err)
			}
		}
	})
	for i, n := range calls {
		if n != 1 {
			t.Errorf("GetChunks called fn %d times for index %d, want once", n, i)
		}
	}
	return out
}

// wantData checks that index i of gs is c's data.
func wantData(t *testing.T, gs []got, i int, c storetest.Chunk) {
	t.Helper()
	if gs[i].err != nil || !bytes.Equal(gs[i].data, c.Data) {
		t.Errorf("GetChunks index %d (%s) = %d bytes, %v; want its %d bytes", i, c.ID, len(gs[i].data), gs[i].err, len(c.Data))
	}
}

// wantNoWrongBytes checks that every index of gs is its chunk or an
// error.
func wantNoWrongBytes(t *testing.T, gs []got, cs []storetest.Chunk) {
	t.Helper()
	for i, g := range gs {
		if g.err == nil && !bytes.Equal(g.data, cs[i].Data) {
			t.Errorf("GetChunks index %d (%s) = %d wrong bytes and no error", i, cs[i].ID, len(g.data))
		}
	}
}

func idsOf(cs []storetest.Chunk) []casync.ChunkID {
	ids := make([]casync.ChunkID, len(cs))
	for i, c := range cs {
		ids[i] = c.ID
	}
	return ids
}

// placed is where a chunk's frame is in the registry's storage.
type placed struct {
	file      string
	off, size int64
}

// layout finds the frame of every chunk of cs, committed in this order
// to a repository of its own, in the pack files of r's storage.
func layout(t *testing.T, r *registrytest.Registry, cs []storetest.Chunk) map[casync.ChunkID]placed {
	t.Helper()
	packs := map[string][]byte{}
	for _, p := range registryBlobs(t, r) {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.HasPrefix(b, []byte{0x28, 0xb5, 0x2f, 0xfd}) {
			packs[p] = b
		}
	}
	out := map[casync.ChunkID]placed{}
	var cur string
	var pos int64
	for _, c := range cs {
		f := casync.CompressChunk(nil, c.Data)
		if cur == "" || !bytes.HasPrefix(packs[cur][pos:], f) {
			cur, pos = "", 0
			for p, b := range packs {
				if bytes.HasPrefix(b, f) {
					cur = p
				}
			}
			if cur == "" {
				t.Fatalf("chunk %s is at the start of no pack, nor next to the one before", c.ID)
			}
		}
		out[c.ID] = placed{file: cur, off: pos, size: int64(len(f))}
		pos += int64(len(f))
	}
	return out
}

// front starts a server that passes every request to r, after serve had
// its say: serve returns true when it answered the request itself. It
// returns the store URL u as seen through it.
func front(t testing.TB, r *registrytest.Registry, u string, serve func(w http.ResponseWriter, req *http.Request) bool) string {
	t.Helper()
	target, _ := url.Parse("http://" + r.Host)
	proxy := httputil.NewSingleHostReverseProxy(target)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if serve != nil && serve(w, req) {
			return
		}
		proxy.ServeHTTP(w, req)
	}))
	t.Cleanup(srv.Close)
	return strings.Replace(u, r.Host, strings.TrimPrefix(srv.URL, "http://"), 1)
}

// countPackGets is a front's serve that counts the ranged blob GETs.
func countPackGets(n *atomic.Int64) func(http.ResponseWriter, *http.Request) bool {
	return func(_ http.ResponseWriter, req *http.Request) bool {
		if isPackGet(req) {
			n.Add(1)
		}
		return false
	}
}

func isPackGet(req *http.Request) bool {
	return req.Method == http.MethodGet && strings.Contains(req.URL.Path, "/blobs/") && req.Header.Get("Range") != ""
}

// parseRange parses the "bytes=A-B" the store sends.
func parseRange(t *testing.T, v string) (start, end int64) {
	a, b, ok := strings.Cut(strings.TrimPrefix(v, "bytes="), "-")
	start, err1 := strconv.ParseInt(a, 10, 64)
	end, err2 := strconv.ParseInt(b, 10, 64)
	if !ok || err1 != nil || err2 != nil {
		t.Errorf("the store sent Range %q, want bytes=A-B", v)
	}
	return start, end
}

// TestGetChunks: a batch gets every chunk right, in one Range request per
// pack for a run of neighbours, answers repeats and missing chunks for
// their own index, and reads chunks still in the write spool.
func TestGetChunks(t *testing.T) {
	r := registrytest.Start(t, registrytest.Config{})
	cs := storetest.Chunks(40, 96)
	_, pinned := commit(t, r, registry.Options{TempDir: t.TempDir(), PackSize: 256 << 10}, cs)
	where := layout(t, r, cs)
	packs := map[string]bool{}
	for _, p := range where {
		packs[p.file] = true
	}
	if len(packs) < 3 {
		t.Fatalf("the chunks went into %d packs, want several", len(packs))
	}
	var gets atomic.Int64
	s := open(t, front(t, r, pinned, countPackGets(&gets)), registry.Options{})

	t.Run("run", func(t *testing.T) {
		gets.Store(0)
		gs := getChunks(t, context.Background(), s, idsOf(cs))
		for i, c := range cs {
			wantData(t, gs, i, c)
		}
		if n := gets.Load(); n != int64(len(packs)) {
			t.Errorf("GetChunks of %d neighbouring chunks in %d packs made %d blob GETs, want %d", len(cs), len(packs), n, len(packs))
		}
	})
	t.Run("shuffled with repeats and a missing chunk", func(t *testing.T) {
		order := rand.New(rand.NewPCG(1, 2)).Perm(len(cs))
		var ask []storetest.Chunk
		for _, k := range order[:40] {
			ask = append(ask, cs[k])
		}
		ask = append(ask, cs[order[0]], cs[order[5]], cs[order[5]])
		missing := storetest.Chunk{ID: casync.SHA512_256.Sum([]byte("not in the repository"))}
		ask = append(ask[:7], append([]storetest.Chunk{missing}, ask[7:]...)...)
		gs := getChunks(t, context.Background(), s, idsOf(ask))
		for i, c := range ask {
			if c.ID == missing.ID {
				if !errors.Is(gs[i].err, chunkstore.ErrNotFound) {
					t.Errorf("GetChunks index %d (missing) = %d bytes, %v; want ErrNotFound", i, len(gs[i].data), gs[i].err)
				}
				continue
			}
			wantData(t, gs, i, c)
		}
	})
	t.Run("spooled", func(t *testing.T) {
		w := open(t, newRepo(r), registry.Options{Write: true, TempDir: t.TempDir()})
		for _, c := range cs[:10] {
			if err := w.StoreChunk(context.Background(), c.ID, c.Data); err != nil {
				t.Fatal(err)
			}
		}
		gs := getChunks(t, context.Background(), w, idsOf(cs[:11]))
		for i, c := range cs[:10] {
			wantData(t, gs, i, c)
		}
		if !errors.Is(gs[10].err, chunkstore.ErrNotFound) {
			t.Errorf("GetChunks of a chunk never stored = %v, want ErrNotFound", gs[10].err)
		}
	})
	t.Run("empty", func(t *testing.T) {
		getChunks(t, context.Background(), s, nil)
	})
}

// TestGetChunksRangeIgnored: a registry that answers Range with the whole
// blob still gives every chunk right, with one warning.
func TestGetChunksRangeIgnored(t *testing.T) {
	r := registrytest.Start(t, registrytest.Config{})
	cs := storetest.Chunks(41, 48)
	_, pinned := commit(t, r, registry.Options{TempDir: t.TempDir(), PackSize: 512 << 10}, cs)
	var ranged atomic.Int64
	u := front(t, r, pinned, func(w http.ResponseWriter, req *http.Request) bool {
		if req.Header.Get("Range") != "" {
			ranged.Add(1)
			req.Header.Del("Range")
		}
		return false
	})
	var logs strings.Builder
	s := open(t, u, registry.Options{Logger: testLogger(&logs)})
	// Every other chunk: gaps, so that ranges do not all coalesce.
	var ask []storetest.Chunk
	for i := 0; i < len(cs); i += 2 {
		ask = append(ask, cs[i])
	}
	for range 2 {
		gs := getChunks(t, context.Background(), s, idsOf(ask))
		for i, c := range ask {
			wantData(t, gs, i, c)
		}
	}
	if ranged.Load() == 0 {
		t.Fatal("no Range request reached the proxy")
	}
	if n := strings.Count(logs.String(), "ignores Range"); n != 1 {
		t.Errorf("logged the ignored Range %d times, want once:\n%s", n, logs.String())
	}
}

// TestGetChunksShortReply: a reply that ends early, cleanly or with the
// connection cut, gives the chunks it holds in full and an error for the
// rest; never bytes of a chunk it cut.
func TestGetChunksShortReply(t *testing.T) {
	for _, cut := range []string{"clean end", "connection reset"} {
		t.Run(cut, func(t *testing.T) {
			r := registrytest.Start(t, registrytest.Config{})
			cs := storetest.Chunks(42, 40)
			_, pinned := commit(t, r, registry.Options{TempDir: t.TempDir()}, cs)
			where := layout(t, r, cs)
			var mu sync.Mutex
			var cuts []int64 // the pack offsets where replies ended
			u := front(t, r, pinned, func(w http.ResponseWriter, req *http.Request) bool {
				if !isPackGet(req) {
					return false
				}
				start, _ := parseRange(t, req.Header.Get("Range"))
				up, _ := http.NewRequest(http.MethodGet, "http://"+r.Host+req.URL.Path, nil)
				up.Header.Set("Range", req.Header.Get("Range"))
				resp, err := http.DefaultClient.Do(up)
				if err != nil {
					t.Error(err)
					return false
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				half := len(body) / 2
				mu.Lock()
				cuts = append(cuts, start+int64(half))
				mu.Unlock()
				w.Header().Set("Content-Range", resp.Header.Get("Content-Range"))
				if cut == "connection reset" {
					w.Header().Set("Content-Length", strconv.Itoa(len(body)))
				}
				w.WriteHeader(resp.StatusCode)
				w.Write(body[:half])
				if cut == "connection reset" {
					w.(http.Flusher).Flush()
					panic(http.ErrAbortHandler)
				}
				return true
			})
			s := open(t, u, registry.Options{})
			gs := getChunks(t, context.Background(), s, idsOf(cs))
			wantNoWrongBytes(t, gs, cs)
			mu.Lock()
			defer mu.Unlock()
			if len(cuts) != 1 {
				t.Fatalf("%d pack GETs for a run of chunks in one pack, want 1", len(cuts))
			}
			var delivered, failed int
			for i, c := range cs {
				p := where[c.ID]
				if p.off+p.size <= cuts[0] {
					delivered++
					wantData(t, gs, i, c)
				} else if gs[i].err == nil {
					t.Errorf("GetChunks index %d, bytes %d+%d of a reply cut at %d: no error", i, p.off, p.size, cuts[0])
				} else {
					failed++
				}
			}
			if delivered == 0 || failed == 0 {
				t.Errorf("%d chunks delivered, %d failed: want some of each", delivered, failed)
			}
		})
	}
}

// TestGetChunksContentRange: a 206 whose Content-Range is not what was
// asked for gives the chunks the reply holds and an error for the
// others; one whose header lies about its bytes gives checksum errors.
func TestGetChunksContentRange(t *testing.T) {
	r := registrytest.Start(t, registrytest.Config{})
	cs := storetest.Chunks(43, 40)
	_, pinned := commit(t, r, registry.Options{TempDir: t.TempDir()}, cs)
	where := layout(t, r, cs)
	ids := idsOf(cs)

	t.Run("a later range", func(t *testing.T) {
		var from atomic.Int64
		u := front(t, r, pinned, func(w http.ResponseWriter, req *http.Request) bool {
			if isPackGet(req) {
				start, end := parseRange(t, req.Header.Get("Range"))
				start += (end - start) / 2
				from.Store(start)
				req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", start, end))
			}
			return false
		})
		gs := getChunks(t, context.Background(), open(t, u, registry.Options{}), ids)
		wantNoWrongBytes(t, gs, cs)
		var delivered int
		for i, c := range cs {
			if where[c.ID].off >= from.Load() {
				delivered++
				wantData(t, gs, i, c)
			} else if gs[i].err == nil || !strings.Contains(gs[i].err.Error(), "not in the reply") {
				t.Errorf("GetChunks index %d, before the reply's range = %v, want an error saying it is not in the reply", i, gs[i].err)
			}
		}
		if delivered == 0 {
			t.Error("no chunk of the reply's range was delivered")
		}
	})
	t.Run("a header that lies", func(t *testing.T) {
		u := front(t, r, pinned, func(w http.ResponseWriter, req *http.Request) bool {
			if !isPackGet(req) {
				return false
			}
			start, end := parseRange(t, req.Header.Get("Range"))
			b, err := os.ReadFile(where[cs[0].ID].file)
			if err != nil {
				t.Error(err)
				return false
			}
			// The bytes asked for, 100 bytes on.
			w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, end, len(b)))
			w.WriteHeader(http.StatusPartialContent)
			w.Write(append(b[min(start+100, int64(len(b))):min(end+1, int64(len(b)))], make([]byte, 100)...))
			return true
		})
		gs := getChunks(t, context.Background(), open(t, u, registry.Options{}), ids)
		wantNoWrongBytes(t, gs, cs)
		var ce *casync.ChecksumError
		for i, g := range gs {
			if !errors.As(g.err, &ce) {
				t.Errorf("GetChunks index %d of shifted bytes = %v, want a ChecksumError", i, g.err)
			}
		}
	})
	t.Run("another blob's size", func(t *testing.T) {
		u := front(t, r, pinned, func(w http.ResponseWriter, req *http.Request) bool {
			if !isPackGet(req) {
				return false
			}
			start, end := parseRange(t, req.Header.Get("Range"))
			w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, end, 1<<30))
			w.WriteHeader(http.StatusPartialContent)
			w.Write(make([]byte, end-start+1))
			return true
		})
		gs := getChunks(t, context.Background(), open(t, u, registry.Options{}), ids)
		for i, g := range gs {
			if g.err == nil || !strings.Contains(g.err.Error(), "Content-Range") {
				t.Errorf("GetChunks index %d of a reply of another blob = %v, want an error naming the Content-Range", i, g.err)
			}
		}
	})
}

// TestGetChunksCorrupt: one chunk altered in the registry's storage, in
// the middle of a run that comes in one request, fails verification for
// its index alone.
func TestGetChunksCorrupt(t *testing.T) {
	r := registrytest.Start(t, registrytest.Config{})
	cs := storetest.Chunks(44, 32)
	_, pinned := commit(t, r, registry.Options{TempDir: t.TempDir()}, cs)
	where := layout(t, r, cs)
	bad := 13
	p := where[cs[bad].ID]
	b, err := os.ReadFile(p.file)
	if err != nil {
		t.Fatal(err)
	}
	b[p.off+p.size/2] ^= 0x55
	if err := os.WriteFile(p.file, b, 0o644); err != nil {
		t.Fatal(err)
	}
	var gets atomic.Int64
	s := open(t, front(t, r, pinned, countPackGets(&gets)), registry.Options{})
	ask := append(idsOf(cs), cs[bad].ID)
	gs := getChunks(t, context.Background(), s, ask)
	var ce *casync.ChecksumError
	for i, id := range ask {
		if id != cs[bad].ID {
			wantData(t, gs, i, cs[i])
		} else if !errors.As(gs[i].err, &ce) || ce.Want != id {
			t.Errorf("GetChunks index %d (altered) = %d bytes, %v; want a ChecksumError for %s", i, len(gs[i].data), gs[i].err, id)
		}
	}
	if n := gets.Load(); n != 1 {
		t.Errorf("GetChunks of a run in one pack made %d pack GETs, want 1", n)
	}
}

// TestGetChunksMissingPack: chunks of a pack the registry lost get
// ErrNotFound; those of the other packs still come.
func TestGetChunksMissingPack(t *testing.T) {
	r := registrytest.Start(t, registrytest.Config{})
	cs := storetest.Chunks(45, 64)
	_, pinned := commit(t, r, registry.Options{TempDir: t.TempDir(), PackSize: 512 << 10}, cs)
	where := layout(t, r, cs)
	lost := where[cs[len(cs)/2].ID].file
	if err := os.Remove(lost); err != nil {
		t.Fatal(err)
	}
	gs := getChunks(t, context.Background(), open(t, pinned, registry.Options{}), idsOf(cs))
	var lostN int
	for i, c := range cs {
		if where[c.ID].file != lost {
			wantData(t, gs, i, c)
			continue
		}
		lostN++
		if !errors.Is(gs[i].err, chunkstore.ErrNotFound) {
			t.Errorf("GetChunks index %d, in a lost pack = %v, want ErrNotFound", i, gs[i].err)
		}
	}
	if lostN == len(cs) {
		t.Fatal("every chunk was in the lost pack; want several packs")
	}
}

// TestGetChunksRedirect: a registry that redirects blob GETs to storage
// elsewhere gets the Range on the redirected request too, and a run of
// chunks still costs one request there.
func TestGetChunksRedirect(t *testing.T) {
	r := registrytest.Start(t, registrytest.Config{})
	cs := storetest.Chunks(46, 40)
	_, pinned := commit(t, r, registry.Options{TempDir: t.TempDir()}, cs)
	var ranged, plain atomic.Int64
	storage := front(t, r, "http://"+r.Host, func(w http.ResponseWriter, req *http.Request) bool {
		if req.Header.Get("Range") != "" {
			ranged.Add(1)
		} else {
			plain.Add(1)
		}
		return false
	})
	var redirected atomic.Int64
	u := front(t, r, pinned, func(w http.ResponseWriter, req *http.Request) bool {
		if req.Method == http.MethodGet && strings.Contains(req.URL.Path, "/blobs/") {
			redirected.Add(1)
			http.Redirect(w, req, storage+req.URL.Path, http.StatusTemporaryRedirect)
			return true
		}
		return false
	})
	s := open(t, u, registry.Options{})
	redirected.Store(0)
	plain.Store(0)
	gs := getChunks(t, context.Background(), s, idsOf(cs))
	for i, c := range cs {
		wantData(t, gs, i, c)
	}
	if redirected.Load() != 1 || ranged.Load() != 1 || plain.Load() != 0 {
		t.Errorf("%d redirects, %d ranged and %d plain GETs at the storage; want one of each but plain", redirected.Load(), ranged.Load(), plain.Load())
	}
}

// TestGetChunksCancel: a batch whose context is canceled while the
// registry holds its requests returns, and every index gets its call
// with the context's error; a batch canceled before it starts sends
// nothing.
func TestGetChunksCancel(t *testing.T) {
	r := registrytest.Start(t, registrytest.Config{})
	cs := storetest.Chunks(47, 64)
	_, pinned := commit(t, r, registry.Options{TempDir: t.TempDir(), PackSize: 256 << 10}, cs)
	var gets atomic.Int64
	arrived := make(chan struct{}, 64)
	u := front(t, r, pinned, func(w http.ResponseWriter, req *http.Request) bool {
		if !isPackGet(req) {
			return false
		}
		gets.Add(1)
		arrived <- struct{}{}
		<-req.Context().Done() // hold it until the client gives up
		return true
	})
	s := open(t, u, registry.Options{})

	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-arrived
		cancel()
	}()
	gs := getChunks(t, ctx, s, idsOf(cs))
	for i, g := range gs {
		if !errors.Is(g.err, context.Canceled) {
			t.Errorf("GetChunks index %d after cancel = %v, want context.Canceled", i, g.err)
		}
	}

	gets.Store(0)
	gs = getChunks(t, ctx, s, idsOf(cs))
	for i, g := range gs {
		if !errors.Is(g.err, context.Canceled) {
			t.Errorf("GetChunks(canceled ctx) index %d = %v, want context.Canceled", i, g.err)
		}
	}
	if n := gets.Load(); n != 0 {
		t.Errorf("GetChunks(canceled ctx) sent %d pack GETs, want none", n)
	}
}

// TestConnectionsReused: the store keeps as many idle connections to the
// registry as it has requests in flight, so that reads after the first
// burst reuse them. A new connection costs a round trip, and a fresh
// congestion window on top, on every request (Go's default keeps 2).
func TestConnectionsReused(t *testing.T) {
	r := registrytest.Start(t, registrytest.Config{})
	cs := storetest.Chunks(48, 96)
	_, pinned := commit(t, r, registry.Options{TempDir: t.TempDir(), PackSize: 256 << 10}, cs)
	target, _ := url.Parse("http://" + r.Host)
	srv := httptest.NewUnstartedServer(httputil.NewSingleHostReverseProxy(target))
	var conns atomic.Int64
	srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	s := open(t, strings.Replace(pinned, r.Host, strings.TrimPrefix(srv.URL, "http://"), 1), registry.Options{})

	const inFlight, rounds = 16, 6
	for round := range rounds {
		var g sync.WaitGroup
		for i := range inFlight {
			c := cs[(round*inFlight+i)%len(cs)]
			g.Go(func() {
				if data, err := s.GetChunk(context.Background(), c.ID); err != nil || !bytes.Equal(data, c.Data) {
					t.Errorf("GetChunk(%s) = %d bytes, %v; want its %d bytes", c.ID, len(data), err, len(c.Data))
				}
			})
		}
		g.Wait()
	}
	if n := conns.Load(); n > 2*inFlight {
		t.Errorf("%d rounds of %d reads at once opened %d connections, want at most %d (reused after the first round)", rounds, inFlight, n, 2*inFlight)
	}
	t.Logf("%d rounds of %d reads at once: %d connections", rounds, inFlight, conns.Load())
}
