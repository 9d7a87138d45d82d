package casync

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"testing"
	"testing/iotest"
	"time"
)

// sequentialTable chunks data and hashes each chunk in turn, with no
// pipeline: the reference Split must reproduce.
func sequentialTable(t testing.TB, data []byte, opts ChunkOptions) []IndexChunk {
	t.Helper()
	ck, err := NewChunker(bytes.NewReader(data), opts)
	if err != nil {
		t.Fatal(err)
	}
	var out []IndexChunk
	var off uint64
	for {
		b, err := ck.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, IndexChunk{Start: off, Size: uint64(len(b)), ID: opts.Digest.Sum(b)})
		off += uint64(len(b))
	}
}

// TestSplitReproducible checks that Split's output, including the data
// handed to emit, is the same for any Jobs and GOMAXPROCS, as estargz's
// TestBuildParallelismReproducible does for its blobs.
func TestSplitReproducible(t *testing.T) {
	data := input("text", 3<<20)
	for _, base := range []ChunkOptions{
		{Size: ChunkSize{1 << 10, 4 << 10, 16 << 10}},
		{Chunker: Rabin, Size: ChunkSize{1 << 10, 4 << 10, 16 << 10}, Digest: SHA256},
	} {
		want := sequentialTable(t, data, base)
		for _, procs := range []int{1, 2, 4} {
			for _, jobs := range []int{0, 1, 2, 3, 8} {
				opts := base
				opts.Jobs = jobs
				t.Run(fmt.Sprintf("%s/%s/procs=%d/jobs=%d", opts.Chunker, opts.Digest, procs, jobs), func(t *testing.T) {
					defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(procs))
					var got []IndexChunk
					err := Split(context.Background(), iotest.HalfReader(bytes.NewReader(data)), opts, func(c Chunk) error {
						if !bytes.Equal(c.Data, data[c.Start:c.Start+c.Size]) {
							return fmt.Errorf("chunk %d: Data is not the input at %d..%d", len(got), c.Start, c.Start+c.Size)
						}
						got = append(got, IndexChunk{Start: c.Start, Size: c.Size, ID: c.ID})
						return nil
					})
					if err != nil {
						t.Fatalf("Split = %v", err)
					}
					if !bytes.Equal(formatTable(got), formatTable(want)) {
						t.Fatalf("Split gave %d chunks, different from the %d of sequential chunking", len(got), len(want))
					}
				})
			}
		}
	}
}

// TestSplitBuffers checks that Split keeps at most 2*Jobs+2 chunk buffers,
// however long the stream.
func TestSplitBuffers(t *testing.T) {
	for _, jobs := range []int{1, 3} {
		t.Run(fmt.Sprint("jobs=", jobs), func(t *testing.T) {
			seen := map[*byte]bool{}
			n := 0
			opts := ChunkOptions{Jobs: jobs, Size: ChunkSize{256, 1024, 4096}}
			err := Split(context.Background(), bytes.NewReader(randomBytes(5, 4<<20)), opts, func(c Chunk) error {
				seen[&c.Data[:1][0]] = true
				n++
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if n < 1000 || len(seen) > 2*jobs+2 {
				t.Errorf("%d chunks used %d buffers, want at most %d", n, len(seen), 2*jobs+2)
			}
		})
	}
}

// endless is a reader that never ends.
type endless struct{ b []byte }

func (r endless) Read(p []byte) (int, error) { return copy(p, r.b), nil }

func TestSplitStops(t *testing.T) {
	boom := errors.New("boom")
	base := runtime.NumGoroutine()
	tests := []struct {
		name string
		run  func() error
		want error
	}{
		{name: "emit error", want: boom, run: func() error {
			n := 0
			return Split(context.Background(), endless{randomBytes(6, 1<<20)}, ChunkOptions{Jobs: 2}, func(Chunk) error {
				if n++; n == 3 {
					return boom
				}
				if n > 3 {
					return errors.New("emit called after it failed")
				}
				return nil
			})
		}},
		{name: "cancel", want: context.Canceled, run: func() error {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			n := 0
			return Split(ctx, endless{randomBytes(7, 1<<20)}, ChunkOptions{Jobs: 2}, func(Chunk) error {
				if n++; n == 5 {
					cancel()
				}
				return nil
			})
		}},
		{name: "cancelled before", want: context.Canceled, run: func() error {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			return Split(ctx, endless{randomBytes(7, 1<<20)}, ChunkOptions{}, func(Chunk) error { return nil })
		}},
		{name: "read error", want: boom, run: func() error {
			r := io.MultiReader(bytes.NewReader(randomBytes(8, 1<<20)), iotest.ErrReader(boom))
			return Split(context.Background(), r, ChunkOptions{Jobs: 3}, func(Chunk) error { return nil })
		}},
		{name: "bad options", want: nil, run: func() error {
			err := Split(context.Background(), bytes.NewReader(nil), ChunkOptions{Chunker: "nope"}, func(Chunk) error { return nil })
			if err == nil {
				return errors.New("Split with a bad chunker succeeded")
			}
			return nil
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			done := make(chan error, 1)
			go func() { done <- tt.run() }()
			select {
			case err := <-done:
				if !errors.Is(err, tt.want) || (tt.want == nil && err != nil) {
					t.Fatalf("Split = %v, want %v", err, tt.want)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Split did not stop")
			}
		})
	}
	// Every goroutine Split started has ended.
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > base && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > base {
		t.Errorf("%d goroutines after Split returned, want %d", n, base)
	}
}

func TestBuildIndex(t *testing.T) {
	data := input("random", 1<<20)
	var emitted int
	x, err := BuildIndex(context.Background(), bytes.NewReader(data), IndexBlobFlags, ChunkOptions{Jobs: 2}, func(Chunk) error {
		emitted++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if x.Length() != uint64(len(data)) || emitted != len(x.Chunks) || x.Digest() != SHA512_256 {
		t.Fatalf("BuildIndex: length %d, %d chunks, %d emitted, digest %v; want %d bytes, all emitted, sha512-256",
			x.Length(), len(x.Chunks), emitted, x.Digest(), len(data))
	}
	boom := errors.New("boom")
	if _, err := BuildIndex(context.Background(), bytes.NewReader(data), 0, ChunkOptions{}, func(Chunk) error { return boom }); !errors.Is(err, boom) {
		t.Errorf("BuildIndex(failing emit) = %v, want %v", err, boom)
	}
}

func BenchmarkPipeline(b *testing.B) {
	data := input("random", 64<<20)
	for _, d := range []Digest{SHA512_256, SHA256} {
		for _, jobs := range []int{1, 2} {
			b.Run(fmt.Sprintf("%s/jobs=%d", d, jobs), func(b *testing.B) {
				opts := ChunkOptions{Jobs: jobs, Digest: d}
				b.SetBytes(int64(len(data)))
				b.ReportAllocs()
				for b.Loop() {
					if err := Split(context.Background(), bytes.NewReader(data), opts, func(Chunk) error { return nil }); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
