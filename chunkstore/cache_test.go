package chunkstore_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
	"github.com/bootfs/bootfs/chunkstore/storetest"
)

// gatedStore counts GetChunk calls and holds each until gate is closed.
type gatedStore struct {
	chunkstore.Store
	gets atomic.Int64
	gate chan struct{}
}

func (g *gatedStore) GetChunk(ctx context.Context, id casync.ChunkID) ([]byte, error) {
	g.gets.Add(1)
	<-g.gate
	return g.Store.GetChunk(ctx, id)
}

func memWith(t testing.TB, cs []storetest.Chunk) *chunkstore.Memory {
	m := chunkstore.NewMemory(chunkstore.MemoryOptions{})
	for _, c := range cs {
		if err := m.StoreChunk(context.Background(), c.ID, c.Data); err != nil {
			t.Fatal(err)
		}
	}
	return m
}

func newCache(t testing.TB, remote chunkstore.Store, opts chunkstore.CacheOptions) *chunkstore.Cache {
	t.Helper()
	c, err := chunkstore.NewCache(remote, t.TempDir(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestCacheCorruptIsRefetched(t *testing.T) {
	cs := storetest.Chunks(50, 3)
	remote := chunkstore.NewCounted(memWith(t, cs))
	c := newCache(t, remote, chunkstore.CacheOptions{})
	ctx := context.Background()
	for _, ch := range cs {
		if _, err := c.GetChunk(ctx, ch.ID); err != nil {
			t.Fatal(err)
		}
	}
	name := filepath.Join(c.Dir(), chunkstore.ChunkPath(cs[0].ID))
	other, _ := os.ReadFile(filepath.Join(c.Dir(), chunkstore.ChunkPath(cs[1].ID)))
	for i, bad := range [][]byte{other, []byte("garbage"), nil} {
		if err := os.WriteFile(name, bad, 0o644); err != nil {
			t.Fatal(err)
		}
		before := remote.Stats().Hits
		got, err := c.GetChunk(ctx, cs[0].ID)
		if err != nil || !bytes.Equal(got, cs[0].Data) {
			t.Fatalf("GetChunk(corrupt cached chunk #%d) = %d bytes, %v; want the good chunk", i, len(got), err)
		}
		if n := remote.Stats().Hits - before; n != 1 {
			t.Errorf("remote fetches for the corrupt chunk = %d, want 1", n)
		}
		frame, _ := os.ReadFile(name)
		if _, err := casync.DecodeChunk(casync.SHA512_256, cs[0].ID, frame); err != nil {
			t.Errorf("cache file after refetch: %v", err)
		}
	}
	if st := c.Stats(); st.Corrupt != 3 || st.Misses != 6 || st.Hits != 0 {
		t.Errorf("Stats() = %+v, want 3 corrupt, 6 misses", st)
	}
	// Now served from the cache.
	if _, err := c.GetChunk(ctx, cs[0].ID); err != nil || c.Stats().Hits != 1 {
		t.Errorf("GetChunk(cached) = %v, hits %d; want a hit", err, c.Stats().Hits)
	}
}

// TestCacheAppendCached: AppendCached appends a verified chunk from the
// cache directory to the caller's buffer, in place when it has room, and
// never asks the remote: a chunk that is not cached, or is corrupt, is
// ErrNotFound (and the corrupt file is gone).
func TestCacheAppendCached(t *testing.T) {
	cs := storetest.Chunks(52, 3)
	remote := chunkstore.NewCounted(memWith(t, cs))
	c := newCache(t, remote, chunkstore.CacheOptions{})
	ctx := context.Background()
	if _, err := c.AppendCached(ctx, nil, cs[0].ID); !errors.Is(err, chunkstore.ErrNotFound) {
		t.Fatalf("AppendCached(not cached) = %v, want ErrNotFound", err)
	}
	for _, ch := range cs {
		if _, err := c.GetChunk(ctx, ch.ID); err != nil {
			t.Fatal(err)
		}
	}
	fetched := remote.Stats().Hits

	buf := make([]byte, 0, 1<<20) // every chunk of storetest.Chunks fits
	buf = append(buf, "prefix"...)
	got, err := c.AppendCached(ctx, buf, cs[1].ID)
	if err != nil || string(got[:6]) != "prefix" || !bytes.Equal(got[6:], cs[1].Data) {
		t.Fatalf("AppendCached = %d bytes, %v; want the prefix and then the chunk", len(got), err)
	}
	if &got[0] != &buf[0] {
		t.Error("AppendCached did not use the buffer's spare capacity")
	}
	allocs := testing.AllocsPerRun(20, func() {
		got, err = c.AppendCached(ctx, buf[:0], cs[2].ID)
	})
	if err != nil || !bytes.Equal(got, cs[2].Data) {
		t.Fatalf("AppendCached = %d bytes, %v; want the chunk", len(got), err)
	}
	// A few small allocations remain (the file name); a chunk-sized one
	// would show in bytes, which the benchmark reports.
	if allocs > 8 {
		t.Errorf("AppendCached made %.0f allocations per read", allocs)
	}

	name := filepath.Join(c.Dir(), chunkstore.ChunkPath(cs[0].ID))
	if err := os.WriteFile(name, []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := c.AppendCached(ctx, buf[:0], cs[0].ID); !errors.Is(err, chunkstore.ErrNotFound) {
		t.Errorf("AppendCached(corrupt) = %v, want ErrNotFound", err)
	}
	if _, err := os.Stat(name); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("corrupt cache file still there: %v", err)
	}
	if n := remote.Stats().Hits - fetched; n != 0 {
		t.Errorf("AppendCached asked the remote %d times", n)
	}
	if st := c.Stats(); st.Corrupt != 1 {
		t.Errorf("Stats().Corrupt = %d, want 1", st.Corrupt)
	}
}

// TestCacheOverHTTPCorruptRemote: a chunk that the remote serves corrupt
// is an error wrapping ChecksumError, and nothing is cached.
func TestCacheOverHTTPCorruptRemote(t *testing.T) {
	cs := storetest.Chunks(51, 2)
	srv, _ := faultServer(t, serveFrame(casync.CompressChunk(nil, cs[1].Data)))
	h, _ := chunkstore.NewHTTP(srv.URL, chunkstore.HTTPOptions{})
	c := newCache(t, h, chunkstore.CacheOptions{})
	_, err := c.GetChunk(context.Background(), cs[0].ID)
	var ce *casync.ChecksumError
	if !errors.As(err, &ce) {
		t.Fatalf("GetChunk(corrupt remote) = %v, want a ChecksumError", err)
	}
	if _, err := os.Stat(filepath.Join(c.Dir(), chunkstore.ChunkPath(cs[0].ID))); err == nil {
		t.Error("corrupt chunk was cached")
	}
}

func TestCacheCollapsesFetches(t *testing.T) {
	cs := storetest.Chunks(52, 1)
	remote := &gatedStore{Store: memWith(t, cs), gate: make(chan struct{})}
	c := newCache(t, remote, chunkstore.CacheOptions{})
	var wg sync.WaitGroup
	results := make(chan error, 16)
	for range 16 {
		wg.Go(func() {
			got, err := c.GetChunk(context.Background(), cs[0].ID)
			if err == nil && !bytes.Equal(got, cs[0].Data) {
				err = errors.New("wrong data")
			}
			if len(got) > 0 {
				got[0] ^= 1 // each caller owns its slice
			}
			results <- err
		})
	}
	// Let every goroutine reach the flight before the fetch completes.
	for remote.gets.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond)
	close(remote.gate)
	wg.Wait()
	close(results)
	for err := range results {
		if err != nil {
			t.Error(err)
		}
	}
	if n := remote.gets.Load(); n != 1 {
		t.Errorf("remote GetChunk calls = %d, want 1", n)
	}
}

// TestCacheWaiterCancel: a caller that gives up returns at once; the shared
// download goes on for the others and fills the cache.
func TestCacheWaiterCancel(t *testing.T) {
	cs := storetest.Chunks(53, 1)
	remote := &gatedStore{Store: memWith(t, cs), gate: make(chan struct{})}
	c := newCache(t, remote, chunkstore.CacheOptions{})
	ctx, cancel := context.WithCancel(context.Background())
	first := make(chan error, 1)
	go func() {
		_, err := c.GetChunk(ctx, cs[0].ID)
		first <- err
	}()
	for remote.gets.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	second := make(chan error, 1)
	go func() {
		got, err := c.GetChunk(context.Background(), cs[0].ID)
		if err == nil && !bytes.Equal(got, cs[0].Data) {
			err = errors.New("wrong data")
		}
		second <- err
	}()
	cancel()
	select {
	case err := <-first:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("GetChunk(canceled waiter) = %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("canceled waiter did not return")
	}
	close(remote.gate)
	if err := <-second; err != nil {
		t.Errorf("GetChunk(second waiter) = %v", err)
	}
	if n := remote.gets.Load(); n != 1 {
		t.Errorf("remote GetChunk calls = %d, want 1", n)
	}
	if _, err := os.Stat(filepath.Join(c.Dir(), chunkstore.ChunkPath(cs[0].ID))); err != nil {
		t.Errorf("chunk not cached after the shared download: %v", err)
	}
}

func TestCacheEviction(t *testing.T) {
	// Chunks of equal, incompressible size, so that the cap below decides
	// exactly which survive: the second half plus chunks 0 and 1 fit
	// under the eviction target (90% of the cap), the whole first half
	// does not.
	cs := make([]storetest.Chunk, 40)
	rng := mrand.New(mrand.NewPCG(54, 54))
	for i := range cs {
		data := make([]byte, 4096)
		for j := range data {
			data[j] = byte(rng.Uint32())
		}
		cs[i] = storetest.Chunk{ID: casync.SHA512_256.Sum(data), Data: data}
	}
	remote := memWith(t, cs)
	ctx := context.Background()
	// A cap that holds the first half of the chunks with room to spare,
	// but not all of them.
	half := len(cs) / 2
	var first, total int64
	for i, ch := range cs {
		n := int64(len(casync.CompressChunk(nil, ch.Data)))
		total += n
		if i < half {
			first += n
		}
	}
	limit := first + first/4
	if limit >= total {
		t.Fatalf("test chunks: first half %d bytes of %d, want a cap below the total", first, total)
	}
	c := newCache(t, remote, chunkstore.CacheOptions{MaxBytes: limit})
	old := time.Now().Add(-time.Hour)
	// Fill the first half and age it, oldest first.
	for i, ch := range cs[:half] {
		if _, err := c.GetChunk(ctx, ch.ID); err != nil {
			t.Fatal(err)
		}
		ts := old.Add(time.Duration(i) * time.Second)
		os.Chtimes(filepath.Join(c.Dir(), chunkstore.ChunkPath(ch.ID)), ts, ts)
	}
	// Read chunk 0 (refreshing it), and pin chunk 1 as if being read.
	if _, err := c.GetChunk(ctx, cs[0].ID); err != nil {
		t.Fatal(err)
	}
	c.Pin(cs[1].ID)
	for _, ch := range cs[half:] {
		if _, err := c.GetChunk(ctx, ch.ID); err != nil {
			t.Fatal(err)
		}
		c.Evict(ctx) // make the background eviction deterministic
	}
	c.Unpin(cs[1].ID)
	var size int64
	cached := map[casync.ChunkID]bool{}
	l, _ := chunkstore.NewLocal(c.Dir(), chunkstore.LocalOptions{})
	l.Walk(ctx, func(ci chunkstore.ChunkInfo) error {
		size += ci.Size
		cached[ci.ID] = true
		return nil
	})
	if size > limit {
		t.Errorf("cache holds %d bytes, want at most the cap %d", size, limit)
	}
	if st := c.Stats(); st.Misses != uint64(len(cs)) {
		t.Errorf("remote fetches = %d, want %d (an evicted chunk was read again)", st.Misses, len(cs))
	}
	if !cached[cs[0].ID] {
		t.Error("recently read chunk 0 was evicted")
	}
	if !cached[cs[1].ID] {
		t.Error("pinned chunk 1 was evicted")
	}
	if cached[cs[2].ID] {
		t.Error("least recently used chunk 2 was kept")
	}
	if !cached[cs[len(cs)-1].ID] {
		t.Error("newest chunk was evicted")
	}
}

const childEnv = "BOOTFS_CACHE_TEST_CHILD"

// countingServer serves store and counts GETs per chunk path.
func countingServer(t *testing.T, store chunkstore.Store) (*httptest.Server, *sync.Map) {
	var counts sync.Map
	h := chunkstore.NewHTTPHandler(store, chunkstore.HandlerOptions{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			n, _ := counts.LoadOrStore(r.URL.Path, new(atomic.Int64))
			n.(*atomic.Int64).Add(1)
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv, &counts
}

// readAllThroughCache reads every id with 8 goroutines through a cache of
// url in dir, each goroutine starting at a different place.
func readAllThroughCache(url, dir string, ids []casync.ChunkID) error {
	return readThroughCappedCache(url, dir, 0, ids)
}

// TestCacheMultiProcess: two processes (this test binary, re-executed) of
// 8 goroutines each read the same 2,000 chunks through one cache
// directory. Each process fetches each chunk from the remote at most once
// and every chunk read verifies.
func TestCacheMultiProcess(t *testing.T) {
	if os.Getenv(childEnv) == "1" {
		ids, err := readIDs(os.Getenv("BOOTFS_CACHE_TEST_IDS"))
		if err == nil {
			err = readAllThroughCache(os.Getenv("BOOTFS_CACHE_TEST_URL"), os.Getenv("BOOTFS_CACHE_TEST_DIR"), ids)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			os.Exit(1)
		}
		return
	}
	if testing.Short() {
		t.Skip("slow")
	}
	store := newLocal(t)
	store2, _ := chunkstore.NewLocal(store.Dir(), chunkstore.LocalOptions{NoSync: true})
	ids := make([]casync.ChunkID, 2000)
	var sb strings.Builder
	for i := range ids {
		data := bytes.Repeat([]byte(fmt.Sprintf("chunk %d\n", i)), 1+i%700)
		ids[i] = casync.SHA512_256.Sum(data)
		if err := store2.StoreChunk(context.Background(), ids[i], data); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintln(&sb, ids[i])
	}
	idFile := filepath.Join(t.TempDir(), "ids")
	os.WriteFile(idFile, []byte(sb.String()), 0o644)
	srvA, countsA := countingServer(t, store)
	srvB, countsB := countingServer(t, store)
	cacheDir := t.TempDir()

	cmd := exec.Command(os.Args[0], "-test.run=^TestCacheMultiProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), childEnv+"=1", "BOOTFS_CACHE_TEST_IDS="+idFile,
		"BOOTFS_CACHE_TEST_URL="+srvB.URL, "BOOTFS_CACHE_TEST_DIR="+cacheDir)
	var childOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &childOut, &childOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	errA := readAllThroughCache(srvA.URL, cacheDir, ids)
	errB := cmd.Wait()
	if errA != nil {
		t.Errorf("this process: %v", errA)
	}
	if errB != nil {
		t.Errorf("child process: %v\n%s", errB, childOut.String())
	}
	fetched := map[string]bool{}
	for name, counts := range map[string]*sync.Map{"this process": countsA, "child": countsB} {
		counts.Range(func(k, v any) bool {
			fetched[k.(string)] = true
			if n := v.(*atomic.Int64).Load(); n > 1 {
				t.Errorf("%s fetched %s %d times, want at most once", name, k, n)
			}
			return true
		})
	}
	if len(fetched) != len(ids) {
		t.Errorf("remote fetches cover %d chunks, want all %d", len(fetched), len(ids))
	}
	sum, err := chunkstore.Verify(context.Background(), cacheDir, false, chunkstore.MaintenanceOptions{})
	if err != nil || sum.Chunks != int64(len(ids)) || sum.Bad != 0 {
		t.Errorf("Verify(cache dir) = %+v, %v; want %d good chunks", sum, err, len(ids))
	}
	filepath.WalkDir(cacheDir, func(p string, d os.DirEntry, err error) error {
		if err == nil && strings.Contains(d.Name(), ".tmp-") {
			t.Errorf("temporary file left: %s", p)
		}
		return nil
	})
	t.Logf("remote fetches: %d by this process, %d by the child", syncMapLen(countsA), syncMapLen(countsB))
}

func syncMapLen(m *sync.Map) int {
	n := 0
	m.Range(func(any, any) bool { n++; return true })
	return n
}

func readIDs(name string) ([]casync.ChunkID, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var ids []casync.ChunkID
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		id, err := casync.ParseChunkID(sc.Text())
		if err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	return ids, sc.Err()
}

// TestCacheSaveFailsWarnsOnce: a cache it cannot write to (read-only or
// full) still serves every chunk, and says so in one warning, not one
// per chunk.
func TestCacheSaveFailsWarnsOnce(t *testing.T) {
	cs := storetest.Chunks(64, 5)
	dir := t.TempDir()
	var log bytes.Buffer
	c, err := chunkstore.NewCache(memWith(t, cs), dir, chunkstore.CacheOptions{
		Logger: slog.New(slog.NewTextHandler(&log, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// A file where each chunk's prefix directory would go: no chunk can
	// be saved, even by root, whom permissions do not stop.
	for _, ch := range cs {
		prefix := filepath.Join(dir, chunkstore.ChunkPath(ch.ID)[:4])
		if err := os.WriteFile(prefix, nil, 0o644); err != nil && !errors.Is(err, os.ErrExist) {
			t.Fatal(err)
		}
	}
	for _, ch := range cs {
		data, err := c.GetChunk(context.Background(), ch.ID)
		if err != nil || !bytes.Equal(data, ch.Data) {
			t.Fatalf("GetChunk(%s) = %v, wrong bytes or error, from a cache that cannot save", ch.ID, err)
		}
	}
	if n := strings.Count(log.String(), "cannot cache chunk"); n != 1 {
		t.Errorf("%d warnings for %d chunks that could not be cached, want 1:\n%s", n, len(cs), log.String())
	}
}
