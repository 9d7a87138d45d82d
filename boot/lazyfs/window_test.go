package lazyfs

import (
	"bytes"
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
)

// readFile reads n bytes at each of offs of the file fileStart..fileEnd
// of r's archive, in that order, as the kernel sends a mapped file's page
// faults, and checks them against want.
func readFile(t *testing.T, r *Reader, want []byte, fileStart, fileEnd int64, offs []int64, n int64) {
	t.Helper()
	p := make([]byte, n)
	for _, off := range offs {
		m := min(n, fileEnd-off)
		got, err := r.readAt(context.Background(), p[:m], off, fileStart, fileEnd)
		if err != nil || !bytes.Equal(p[:got], want[off:off+m]) {
			t.Fatalf("readAt(%d) = %d, %v; want the file's bytes", off, got, err)
		}
	}
}

// clusteredFaults returns the offsets of the page faults of a program
// running from a large mapped file, such as its binary: the file's
// header, then clusters of the file (the code and data of what runs
// next), each faulted in by reads of the kernel's 128 KiB read-around in
// a shuffled order, and with a fault elsewhere in the file now and then.
func clusteredFaults(fileStart, fileEnd int64, seed uint64) []int64 {
	rng := rand.New(rand.NewPCG(seed, seed))
	const step = 128 << 10
	offs := []int64{fileStart}
	for c := fileStart; c+2<<20 <= fileEnd; c += 3 << 20 { // 2 MiB of every 3
		var cluster []int64
		for off := c; off < c+2<<20; off += step {
			cluster = append(cluster, off)
		}
		rng.Shuffle(len(cluster), func(i, j int) { cluster[i], cluster[j] = cluster[j], cluster[i] })
		offs = append(offs, cluster...)
		offs = append(offs, fileStart+rng.Int64N(fileEnd-fileStart-step)) // a stray fault
	}
	return offs
}

// TestReaderLargeFileWindows: the page faults of a 16 MB mapped file,
// clustered as a program's are, wait for the network a few times, not
// once per fault: each miss fetches a window around it that grows while
// its bytes are read, and little of what the windows fetch goes unread.
func TestReaderLargeFileWindows(t *testing.T) {
	b := bigBlob(t, 8, randBytes(8, 20<<20))
	store := &batchStore{Store: b.store, latency: time.Millisecond}
	r := NewReader(b.idx, store, ReaderOptions{})
	defer r.Close()
	const fileStart, fileEnd = 1<<20 + 4321, 17<<20 + 999
	offs := clusteredFaults(fileStart, fileEnd, 8)
	readFile(t, r, b.data, fileStart, fileEnd, offs, 128<<10)
	s := r.Stats()
	t.Logf("%d faults: %+v, %d requests", len(offs), s, store.count())
	// Without windows, three faults in four are a request and a wait of
	// their own, in one chain (64 and 71 requests here); with them,
	// about one in three.
	if limit := uint64(len(offs) / 2); s.LongestChain > limit || s.NetworkWaits > limit {
		t.Errorf("%d faults: longest chain %d, %d network waits; want at most %d each", len(offs), s.LongestChain, s.NetworkWaits, limit)
	}
	if n := store.count(); n > 2*len(offs)/3 {
		t.Errorf("%d faults made %d requests, want at most %d", len(offs), n, 2*len(offs)/3)
	}
	if s.ReadAheadBytes == 0 || 5*s.ReadAheadWastedBytes > s.BytesFetched {
		t.Errorf("read ahead %d bytes, %d of them unread, of %d fetched; want some, and under 20%% of the fetched unread",
			s.ReadAheadBytes, s.ReadAheadWastedBytes, s.BytesFetched)
	}
}

// TestReaderLargeFileRandomFaults: page faults at random places of a
// file larger than fileAheadBytes, far apart, cost at most the first two
// windows of read-ahead that goes unread (and a window's worth on its
// way when they are judged), not a window per fault.
func TestReaderLargeFileRandomFaults(t *testing.T) {
	b := bigBlob(t, 6, randBytes(6, 20<<20))
	const fileStart, fileEnd = 1<<20 + 777, 17 << 20
	backwards := []int64{}
	for off := int64(fileEnd - 1); off > fileStart; off -= 256 << 10 { // every read a new stream
		backwards = append(backwards, off)
	}
	rng := rand.New(rand.NewPCG(6, 6))
	random := make([]int64, 60)
	for k := range random {
		random[k] = fileStart + rng.Int64N(fileEnd-fileStart)&^4095
	}
	for _, tc := range []struct {
		name string
		offs []int64
		n    int64
	}{
		{"backwards", backwards, 1},
		{"random", random, 4096},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store := &batchStore{Store: b.store}
			r := NewReader(b.idx, store, ReaderOptions{})
			defer r.Close()
			readFile(t, r, b.data, fileStart, fileEnd, tc.offs, tc.n)
			r.wg.Wait()
			s := r.Stats()
			t.Logf("%d reads: %+v, %d requests", len(tc.offs), s, store.count())
			if limit := uint64(3*minFileWindow + 2*casync.DefaultChunkSize.Max); s.ReadAheadWastedBytes > limit {
				t.Errorf("%d reads of a %d-byte file: %d bytes read ahead and not read; want at most %d",
					len(tc.offs), fileEnd-fileStart, s.ReadAheadWastedBytes, limit)
			}
		})
	}
}

// TestReaderWarmFaultsReadEachChunkOnce: on a warm node (every chunk in
// the local cache, none in memory) the page faults of a large mapped
// file and the first reads of small files cost a cache-file read each,
// not a round trip: they start no windows and no file-ahead, whose loads
// from the cache pushed chunks still in use out of the LRU (a warm gcc
// start read 3,800 chunks from the cache for the 1,000 it needs, and took
// 0.97 s against 0.57 s before windows).
func TestReaderWarmFaultsReadEachChunkOnce(t *testing.T) {
	b := bigBlob(t, 9, randBytes(9, 32<<20))
	cache, err := chunkstore.NewCache(b.store, t.TempDir(), chunkstore.CacheOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for id := range uniqueIDs(b.idx) {
		if _, err := cache.GetChunk(context.Background(), id); err != nil {
			t.Fatal(err)
		}
	}

	counted := &countingCache{Cache: cache}
	r := NewReader(b.idx, counted, ReaderOptions{})
	defer r.Close()
	// A 16 MB binary's faults, then the heads of 40 small files of
	// 300 KB each, as a loader reads them.
	const fileStart, fileEnd = 1<<20 + 4321, 17<<20 + 999
	touched := map[casync.ChunkID]bool{}
	touch := func(off, n int64) {
		for i := b.idx.ChunkAt(uint64(off)); i <= b.idx.ChunkAt(uint64(off+n-1)); i++ {
			touched[b.idx.Chunks[i].ID] = true
		}
	}
	faults := clusteredFaults(fileStart, fileEnd, 9)
	readFile(t, r, b.data, fileStart, fileEnd, faults, 128<<10)
	for _, off := range faults {
		touch(off, min(128<<10, fileEnd-off))
	}
	for k := range int64(40) {
		start := 18<<20 + k*300<<10
		readFile(t, r, b.data, start, start+300<<10, []int64{start}, 4096)
		touch(start, 4096)
	}
	s := r.Stats()
	t.Logf("warm: %+v", s)
	if s.ReadAheadBytes != 0 || s.NetworkWaits != 0 {
		t.Errorf("warm faults read ahead %d bytes and waited for the network %d times, want neither", s.ReadAheadBytes, s.NetworkWaits)
	}
	counted.mu.Lock()
	defer counted.mu.Unlock()
	reads := 0
	for _, n := range counted.reads {
		reads += n
	}
	t.Logf("%d cache reads of %d chunks; the reads touch %d", reads, len(counted.reads), len(touched))
	// The local read-ahead of a sequential streak loads a few more
	// (faults next to each other); windows loaded about twice as many.
	if limit := len(touched) * 13 / 10; len(counted.reads) > limit {
		t.Errorf("%d chunks read from the cache for reads that touch %d, want at most %d", len(counted.reads), len(touched), limit)
	}
	// A stray fault may find its chunks pushed out of the LRU since (a
	// few of them), no more.
	if extra := reads - len(counted.reads); extra > len(faults)/6 {
		t.Errorf("%d chunks read from the cache again, want at most %d", extra, len(faults)/6)
	}
}
