package mkimage

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
	"github.com/bootfs/bootfs/chunkstore/opener"
)

// inFlight counts the requests of one method that a handler serves at
// once, and keeps the peak.
type inFlight struct {
	mu        sync.Mutex
	now, peak map[string]int
}

func (f *inFlight) wrap(next http.Handler, delay time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.now[r.Method]++
		f.peak[r.Method] = max(f.peak[r.Method], f.now[r.Method])
		f.mu.Unlock()
		time.Sleep(delay) // a store a round trip away
		next.ServeHTTP(w, r)
		f.mu.Lock()
		f.now[r.Method]--
		f.mu.Unlock()
	})
}

// TestConvertToSlowHTTPStore checks that the has-checks and uploads to a
// remote store overlap instead of paying one round trip after another, and
// that every chunk arrives, with the token the server asks for.
func TestConvertToSlowHTTPStore(t *testing.T) {
	src := t.TempDir()
	writeTree(t, src)
	mem := chunkstore.NewMemory(chunkstore.MemoryOptions{})
	const token = "s3cret"
	h := chunkstore.NewHTTPHandler(mem, chunkstore.HandlerOptions{WriteToken: token})
	count := &inFlight{now: map[string]int{}, peak: map[string]int{}}
	srv := httptest.NewServer(count.wrap(h, 10*time.Millisecond))
	defer srv.Close()

	opts := Options{Jobs: 1}
	ctx := context.Background()
	if _, err := convertTo(ctx, Source{Kind: "dir", Path: src}, srv.URL, opts); err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("Convert without the token = %v, want a 401 error", err)
	}
	creds := opener.Credentials{TokenFile: filepath.Join(t.TempDir(), "token")}
	if err := os.WriteFile(creds.TokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	sum, err := convertWith(ctx, Source{Kind: "dir", Path: src}, srv.URL, creds, opts)
	if err != nil {
		t.Fatalf("Convert with the token = %v", err)
	}
	for _, c := range sum.Index.Chunks {
		if ok, err := mem.HasChunk(context.Background(), c.ID); !ok || err != nil {
			t.Fatalf("chunk %s of the index is not in the store (%v)", c.ID, err)
		}
	}
	// -j 1, yet the network waits overlap.
	if p := count.peak[http.MethodHead]; p < 8 {
		t.Errorf("at most %d HEAD requests were in flight, want at least 8", p)
	}
	if p := count.peak[http.MethodPut]; p < 4 {
		t.Errorf("at most %d PUT requests were in flight, want at least 4", p)
	}
	if sum.NewChunks != sum.UniqueChunks {
		t.Errorf("stored %d new chunks, want all %d distinct ones", sum.NewChunks, sum.UniqueChunks)
	}
	again, err := convertWith(ctx, Source{Kind: "dir", Path: src}, srv.URL, creds, opts)
	if err != nil {
		t.Fatal(err)
	}
	if again.NewChunks != 0 {
		t.Errorf("second conversion stored %d chunks, want 0", again.NewChunks)
	}
}

// batchStore is a store that answers has-checks in batches and counts
// the calls.
type batchStore struct {
	*chunkstore.Memory
	mu    sync.Mutex
	calls []int
}

func (b *batchStore) HasChunks(ctx context.Context, ids []casync.ChunkID) ([]bool, error) {
	b.mu.Lock()
	b.calls = append(b.calls, len(ids))
	b.mu.Unlock()
	has := make([]bool, len(ids))
	for i, id := range ids {
		has[i], _ = b.Memory.HasChunk(ctx, id)
	}
	return has, nil
}

func TestUploaderAsksInBatches(t *testing.T) {
	bs := &batchStore{Memory: chunkstore.NewMemory(chunkstore.MemoryOptions{})}
	up := newUploader(bs, nil, 2)
	var b []pendingChunk
	for i := range 100 {
		data := []byte(strings.Repeat("x", i+1))
		buf := getBuf()
		*buf = data
		b = append(b, pendingChunk{id: casync.SHA512_256.Sum(data), data: buf})
	}
	if err := bs.StoreChunk(context.Background(), b[0].id, *b[0].data); err != nil {
		t.Fatal(err)
	}
	if err := up.uploadBatch(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	if len(bs.calls) != 1 || bs.calls[0] != 100 {
		t.Errorf("HasChunks calls = %v, want one of 100", bs.calls)
	}
	if n := up.newChunks.Load(); n != 99 {
		t.Errorf("uploaded %d chunks, want the 99 the store lacked", n)
	}
}
