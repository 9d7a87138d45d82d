package chunkstore_test

import (
	"bytes"
	"context"
	"fmt"
	mrand "math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
)

// The tests of this file run several processes over one cache directory,
// as the containers of a node do: the test binary re-executes itself with
// nodeChildEnv naming what the child does.
const nodeChildEnv = "BOOTFS_NODE_TEST_CHILD"

func init() {
	switch os.Getenv(nodeChildEnv) {
	case "":
		return
	case "read":
		// Read every chunk of the id file through a cache of the URL in
		// the directory, capped at the given size (0: no cap), with 8
		// goroutines that each read them all, from different places; with
		// a cap, each reads an eighth of them.
		ids, err := readIDs(os.Getenv("BOOTFS_NODE_TEST_IDS"))
		if err == nil {
			max, _ := strconv.ParseInt(os.Getenv("BOOTFS_NODE_TEST_MAX"), 10, 64)
			err = readThroughCappedCache(os.Getenv("BOOTFS_NODE_TEST_URL"), os.Getenv("BOOTFS_NODE_TEST_DIR"), max, ids)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
}

func readThroughCappedCache(url, dir string, max int64, ids []casync.ChunkID) error {
	h, err := chunkstore.NewHTTP(url, chunkstore.HTTPOptions{})
	if err != nil {
		return err
	}
	c, err := chunkstore.NewCache(h, dir, chunkstore.CacheOptions{MaxBytes: max})
	if err != nil {
		return err
	}
	defer c.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Go(func() {
			for k := range ids {
				id := ids[(k+g*len(ids)/8)%len(ids)]
				if max > 0 {
					if k%8 != g {
						continue
					}
					id = ids[k]
				}
				data, err := c.GetChunk(context.Background(), id)
				if err == nil && casync.SHA512_256.Sum(data) != id {
					err = fmt.Errorf("chunk %s: wrong data", id)
				}
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// storeRandomChunks stores n chunks of random data (so frames are as large as
// chunks) of 16 to 64 KiB in store, and writes their IDs to a file.
func storeRandomChunks(t *testing.T, store *chunkstore.Local, seed uint64, n int) (ids []casync.ChunkID, idFile string, maxFrame int) {
	t.Helper()
	rng := mrand.New(mrand.NewPCG(seed, 1))
	var sb strings.Builder
	for range n {
		data := make([]byte, 16<<10+rng.IntN(48<<10))
		for i := range data {
			data[i] = byte(rng.Uint32())
		}
		id := casync.SHA512_256.Sum(data)
		if err := store.StoreChunk(context.Background(), id, data); err != nil {
			t.Fatal(err)
		}
		maxFrame = max(maxFrame, len(casync.CompressChunk(nil, data)))
		ids = append(ids, id)
		fmt.Fprintln(&sb, id)
	}
	idFile = filepath.Join(t.TempDir(), "ids")
	if err := os.WriteFile(idFile, []byte(sb.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return ids, idFile, maxFrame
}

// slowCountingServer serves store, counting GETs, each delayed by delay as
// a store a round trip away would be.
func slowCountingServer(t *testing.T, store chunkstore.Store, delay time.Duration) (*httptest.Server, *atomic.Int64) {
	var gets atomic.Int64
	h := chunkstore.NewHTTPHandler(store, chunkstore.HandlerOptions{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			gets.Add(1)
			time.Sleep(delay)
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv, &gets
}

func startReader(t *testing.T, url, dir, idFile string, max int64) (*exec.Cmd, *bytes.Buffer) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), nodeChildEnv+"=read", "BOOTFS_NODE_TEST_IDS="+idFile,
		"BOOTFS_NODE_TEST_URL="+url, "BOOTFS_NODE_TEST_DIR="+dir, "BOOTFS_NODE_TEST_MAX="+strconv.FormatInt(max, 10))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd, &out
}

// TestCacheFetchesOnceAcrossProcesses: 8 processes started at once, as 8
// cold containers of one image on a node, read the same 400 chunks
// through one cache directory from a store 3 ms away. Together they fetch
// each chunk from the store once (the goal is within 1.02× of what one
// process fetches), and every read verifies.
func TestCacheFetchesOnceAcrossProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("slow")
	}
	store := newLocal(t)
	ids, idFile, _ := storeRandomChunks(t, store, 7, 400)
	srv, gets := slowCountingServer(t, store, 3*time.Millisecond)
	dir := t.TempDir()
	var cmds []*exec.Cmd
	var outs []*bytes.Buffer
	for range 8 {
		cmd, out := startReader(t, srv.URL, dir, idFile, 0)
		cmds, outs = append(cmds, cmd), append(outs, out)
	}
	for i, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Errorf("reader %d: %v\n%s", i, err, outs[i])
		}
	}
	got, limit := gets.Load(), int64(len(ids))*102/100
	t.Logf("8 processes fetched %d chunks from the store for %d distinct chunks", got, len(ids))
	if got > limit {
		t.Errorf("8 processes fetched %d chunks from the store, want at most %d (1.02 × the %d distinct chunks)", got, limit, len(ids))
	}
	sum, err := chunkstore.Verify(context.Background(), dir, false, chunkstore.MaintenanceOptions{})
	if err != nil || sum.Chunks != int64(len(ids)) || sum.Bad != 0 {
		t.Errorf("Verify(cache) = %+v, %v; want %d good chunks", sum, err, len(ids))
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".bootfs-node", "fetch", "*")); len(left) > 0 {
		t.Errorf("fetch locks left behind: %v", left)
	}
}

// dirBytes is the size of every regular file under the prefix directories
// of a store, temporary files included: what the cache takes on disk.
func dirBytes(dir string) int64 {
	var n int64
	tops, _ := os.ReadDir(dir)
	for _, top := range tops {
		if len(top.Name()) != 4 || !top.IsDir() {
			continue
		}
		ents, _ := os.ReadDir(filepath.Join(dir, top.Name()))
		for _, e := range ents {
			if fi, err := e.Info(); err == nil && fi.Mode().IsRegular() {
				n += fi.Size()
			}
		}
	}
	return n
}

// TestCacheCapAcrossProcesses: 4 processes read 4 different images (200
// chunks each, 32 MB in all) through one cache directory capped at 2 MiB,
// as 4 containers sharing a capped cache volume do. The directory never
// holds more than the cap plus one chunk per process, and every read is
// correct.
func TestCacheCapAcrossProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("slow")
	}
	store := newLocal(t)
	srv, _ := slowCountingServer(t, store, 0)
	dir := t.TempDir()
	const limit = 2 << 20
	var maxFrame int
	var files []string
	for i := range 4 {
		_, f, m := storeRandomChunks(t, store, uint64(100+i), 200)
		files, maxFrame = append(files, f), max(maxFrame, m)
	}
	var peak atomic.Int64
	stop := make(chan struct{})
	var watch sync.WaitGroup
	watch.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			if n := dirBytes(dir); n > peak.Load() {
				peak.Store(n)
			}
			time.Sleep(time.Millisecond)
		}
	})
	var cmds []*exec.Cmd
	var outs []*bytes.Buffer
	for _, f := range files {
		cmd, out := startReader(t, srv.URL, dir, f, limit)
		cmds, outs = append(cmds, cmd), append(outs, out)
	}
	for i, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Errorf("reader %d: %v\n%s", i, err, outs[i])
		}
	}
	close(stop)
	watch.Wait()
	bound := int64(limit + 4*maxFrame)
	t.Logf("peak %d bytes in the cache directory, cap %d, bound %d; %d at the end", peak.Load(), limit, bound, dirBytes(dir))
	if p := peak.Load(); p > bound {
		t.Errorf("the cache directory held %d bytes, want at most the cap %d plus one chunk per process (%d)", p, limit, bound)
	}
	if n := dirBytes(dir); n > limit {
		t.Errorf("the cache directory holds %d bytes at the end, want at most the cap %d", n, limit)
	}
	if n := dirBytes(dir); n < limit/2 {
		t.Errorf("the cache directory holds %d bytes at the end, want it used (more than half the cap %d)", n, limit)
	}
}

// TestCacheFetchLockHolderGone: a process that holds a chunk's fetch lock
// and hangs delays another process's fetch of that chunk by at most
// LockWait; one that is killed delays it no further.
func TestCacheFetchLockHolderGone(t *testing.T) {
	flock, err := exec.LookPath("flock")
	if err != nil {
		t.Skip("no flock(1): ", err)
	}
	store := newLocal(t)
	ids, _, _ := storeRandomChunks(t, store, 9, 2)
	srv, gets := slowCountingServer(t, store, 0)
	dir := t.TempDir()
	hold := func(id casync.ChunkID) *exec.Cmd {
		lock := filepath.Join(dir, ".bootfs-node", "fetch", id.String())
		if err := os.MkdirAll(filepath.Dir(lock), 0o755); err != nil {
			t.Fatal(err)
		}
		// -o: the lock is flock's own, not sleep's, so killing flock
		// frees it.
		cmd := exec.Command(flock, "-o", lock, "sleep", "60")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		// Wait until it holds the lock: then a try of our own fails.
		for range 500 {
			if exec.Command(flock, "-n", lock, "true").Run() != nil {
				return cmd
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Fatal("flock(1) did not take the lock")
		return nil
	}
	h, err := chunkstore.NewHTTP(srv.URL, chunkstore.HTTPOptions{})
	if err != nil {
		t.Fatal(err)
	}

	t.Run("hung", func(t *testing.T) {
		hold(ids[0])
		c, err := chunkstore.NewCache(h, dir, chunkstore.CacheOptions{LockWait: 300 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		data, err := c.GetChunk(context.Background(), ids[0])
		waited := time.Since(start)
		if err != nil || casync.SHA512_256.Sum(data) != ids[0] {
			t.Fatalf("GetChunk with the lock held elsewhere = %v, want the chunk", err)
		}
		if waited < 300*time.Millisecond {
			t.Errorf("GetChunk returned after %v, before LockWait (300ms): it did not wait for the holder", waited)
		}
		if gets.Load() != 1 {
			t.Errorf("store GETs = %d, want 1", gets.Load())
		}
	})

	t.Run("killed", func(t *testing.T) {
		holder := hold(ids[1])
		c, err := chunkstore.NewCache(h, dir, chunkstore.CacheOptions{LockWait: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		time.AfterFunc(200*time.Millisecond, func() { holder.Process.Kill() })
		done := make(chan error, 1)
		go func() {
			data, err := c.GetChunk(context.Background(), ids[1])
			if err == nil && casync.SHA512_256.Sum(data) != ids[1] {
				err = fmt.Errorf("wrong data")
			}
			done <- err
		}()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("GetChunk after the holder was killed: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("GetChunk still waits 30 s after the lock's holder was killed (LockWait is a minute)")
		}
	})
}

// TestGC: chunkstore gc brings a cache down to the size asked, least
// recently used first, lists without removing in a dry run, and keeps the
// size a capped cache shares true.
func TestGC(t *testing.T) {
	store := newLocal(t)
	ids, _, _ := storeRandomChunks(t, store, 11, 40)
	srv, _ := slowCountingServer(t, store, 0)
	h, err := chunkstore.NewHTTP(srv.URL, chunkstore.HTTPOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	fill, err := chunkstore.NewCache(h, dir, chunkstore.CacheOptions{})
	if err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Hour)
	for i, id := range ids {
		if _, err := fill.GetChunk(context.Background(), id); err != nil {
			t.Fatal(err)
		}
		ts := old.Add(time.Duration(i) * time.Second)
		os.Chtimes(filepath.Join(dir, chunkstore.ChunkPath(id)), ts, ts)
	}
	fill.Close()
	total := dirBytes(dir)
	target := total / 2
	// A cache capped a little above what the directory holds shares its
	// size with gc.
	c, err := chunkstore.NewCache(h, dir, chunkstore.CacheOptions{MaxBytes: total + total/10})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	sum, err := chunkstore.GC(context.Background(), dir, target, true, chunkstore.MaintenanceOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if dirBytes(dir) != total || sum.Evicted == 0 || sum.Chunks != int64(len(ids)) || sum.Bytes != total {
		t.Fatalf("dry run: %+v, directory %d bytes; want nothing removed from %d chunks, %d bytes, and some listed", sum, dirBytes(dir), len(ids), total)
	}
	var removed []casync.ChunkID
	sum2, err := chunkstore.GC(context.Background(), dir, target, false, chunkstore.MaintenanceOptions{
		Report: func(ci chunkstore.ChunkInfo, _ error, ok bool) { removed = append(removed, ci.ID) },
	})
	if err != nil {
		t.Fatal(err)
	}
	if sum2.Evicted != sum.Evicted || sum2.EvictedBytes != sum.EvictedBytes {
		t.Errorf("gc removed %+v, the dry run said %+v", sum2, sum)
	}
	if n := dirBytes(dir); n > target {
		t.Errorf("after gc the cache holds %d bytes, want at most %d", n, target)
	}
	for i, id := range removed {
		if id != ids[i] {
			t.Fatalf("gc removed %s as number %d, want the least recently used %s", id, i, ids[i])
		}
	}
	// The capped cache's count follows gc: reading every chunk again
	// fits under its cap with nothing evicted. Had gc left the count as
	// it was, the cache would think itself over the cap and evict.
	for _, id := range ids {
		if _, err := c.GetChunk(context.Background(), id); err != nil {
			t.Fatal(err)
		}
	}
	if n := dirBytes(dir); n != total {
		t.Errorf("after reading every chunk again the cache holds %d bytes, want all %d (the cache's count missed gc's removals)", n, total)
	}
	if _, err := chunkstore.GC(context.Background(), filepath.Join(dir, "missing"), 1, true, chunkstore.MaintenanceOptions{}); err == nil {
		t.Error("gc of a missing directory succeeded, want an error")
	}
}
