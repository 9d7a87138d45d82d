package casync

import (
	"bytes"
	"io"
	"testing"
)

// TestBuzhashCutAtMax checks cuts forced by max on data that never
// passes the hash test.
func TestBuzhashCutAtMax(t *testing.T) {
	// Zeros hash to one constant, so every chunk ends at max unless that
	// constant passes the test, in which case it ends at min.
	for _, s := range []ChunkSize{DefaultChunkSize, {1 << 10, 4 << 10, 16 << 10}, {64, 256, 1024}} {
		t.Run(s.String(), func(t *testing.T) {
			sizes := cutAll(t, bytes.NewReader(make([]byte, 1<<20)), ChunkOptions{Size: s})
			d := buzhashDiscriminator(s)
			want := int(s.Max)
			if buzhashSum(make([]byte, buzhashWindow))%d == d-1 {
				want = int(s.Min)
			}
			for i, n := range sizes[:len(sizes)-1] {
				if n != want {
					t.Fatalf("chunk %d of zeros has size %d, want %d", i, n, want)
				}
			}
		})
	}
}

func BenchmarkBuzhash(b *testing.B) {
	for _, kind := range []string{"random", "text"} {
		b.Run(kind, func(b *testing.B) {
			data := input(kind, 64<<20)
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			for b.Loop() {
				ck, err := NewChunker(bytes.NewReader(data), ChunkOptions{})
				if err != nil {
					b.Fatal(err)
				}
				for {
					if _, err := ck.Next(); err == io.EOF {
						break
					} else if err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}

func TestFastmod(t *testing.T) {
	hs := []uint32{0, 1, 2, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff}
	src := randomBytes(11, 4*10000)
	for i := 0; i+4 <= len(src); i += 4 {
		hs = append(hs, uint32(src[i])|uint32(src[i+1])<<8|uint32(src[i+2])<<16|uint32(src[i+3])<<24)
	}
	for _, d := range []uint32{1, 2, 3, 7, 48, 1000, 12318, 49535, 886711, 1 << 24, MaxChunkSize, ChunkSizeLimitMax, 0xfffffffb, 0xffffffff} {
		m := ^uint64(0)/uint64(d) + 1
		for _, h := range append(hs, d-1, d, d+1, 2*d-1) {
			if got, want := fastmod(h, m, uint64(d)), uint64(h%d); got != want {
				t.Fatalf("fastmod(%d, %d) = %d, want %d", h, d, got, want)
			}
		}
	}
}
