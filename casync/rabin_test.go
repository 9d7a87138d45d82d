package casync

import (
	"bytes"
	"io"
	"testing"
)

func TestRabinPolynomial(t *testing.T) {
	if !RabinPolynomial.Irreducible() {
		t.Fatalf("RabinPolynomial %v is not irreducible", RabinPolynomial)
	}
	if d := RabinPolynomial.Deg(); d != 53 {
		t.Errorf("RabinPolynomial degree = %d, want 53", d)
	}
}

func TestRabinAverageBits(t *testing.T) {
	tests := []struct {
		avg  uint64
		want int
	}{{64 << 10, 16}, {1 << 20, 20}, {8 << 10, 13}, {90 << 10, 16}, {91 << 10, 17}, {1, 0}, {0, 0}}
	for _, tt := range tests {
		if got := RabinAverageBits(tt.avg); got != tt.want {
			t.Errorf("RabinAverageBits(%d) = %d, want %d", tt.avg, got, tt.want)
		}
	}
}

// TestRabinAverage checks that the average maps as documented: chunks of
// random data average about min + 2^bits.
func TestRabinAverage(t *testing.T) {
	data := randomBytes(9, 32<<20)
	s := ChunkSize{4 << 10, 16 << 10, 256 << 10}
	sizes := cutAll(t, bytes.NewReader(data), ChunkOptions{Chunker: Rabin, Size: s})
	avg := float64(len(data)) / float64(len(sizes))
	want := float64(s.Min + 1<<RabinAverageBits(s.Avg))
	if avg < 0.9*want || avg > 1.1*want {
		t.Errorf("average chunk size = %.0f over %d chunks, want about %.0f", avg, len(sizes), want)
	}
}

func BenchmarkRabin(b *testing.B) {
	data := randomBytes(1, 64<<20)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		ck, err := NewChunker(bytes.NewReader(data), ChunkOptions{Chunker: Rabin})
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
}
