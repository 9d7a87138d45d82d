package casync

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
	"testing/iotest"
)

// Test inputs are generated, not stored: the same generator and seed give
// the same bytes on every machine and Go version (ChaCha8 and PCG have
// fixed output streams). testdata/README-index.md records how each casync
// fixture was made from them.

// randomBytes returns n bytes of the ChaCha8 stream seeded with seed.
func randomBytes(seed byte, n int) []byte {
	var key [32]byte
	key[0] = seed
	b := make([]byte, n)
	rand.NewChaCha8(key).Read(b)
	return b
}

// textBytes returns n bytes of text-like data: lines of words drawn from a
// small vocabulary by a seeded PCG, repetitive the way logs and source are.
func textBytes(seed uint64, n int) []byte {
	words := strings.Fields(`the of and to in is that for it as with was on be by this
		are or from at which an but not have has had were all can will one their
		func return if else err nil package import type struct interface string int
		byte error context chunk index store archive casync bootfs image layer
		root file directory mount fuse read write open close seek offset size`)
	src := rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)
	var b bytes.Buffer
	b.Grow(n + 64)
	for b.Len() < n {
		x := src.Uint64()
		line := 3 + int(x%12)
		for i := 0; i < line; i++ {
			if i > 0 {
				b.WriteByte(' ')
			}
			b.WriteString(words[src.Uint64()%uint64(len(words))])
		}
		b.WriteByte('\n')
	}
	return b.Bytes()[:n]
}

// input returns a named test input: "random", "zeros" or "text".
func input(kind string, n int) []byte {
	switch kind {
	case "random":
		return randomBytes(1, n)
	case "zeros":
		return make([]byte, n)
	case "text":
		return textBytes(1, n)
	}
	panic("unknown input kind " + kind)
}

// cutAll chunks data with opts through r's read pattern and returns the
// chunk lengths.
func cutAll(t testing.TB, r io.Reader, opts ChunkOptions) []int {
	t.Helper()
	ck, err := NewChunker(r, opts)
	if err != nil {
		t.Fatalf("NewChunker(%+v) = %v", opts, err)
	}
	var sizes []int
	for {
		b, err := ck.Next()
		if err == io.EOF {
			return sizes
		}
		if err != nil {
			t.Fatalf("Next() after %d chunks = %v", len(sizes), err)
		}
		sizes = append(sizes, len(b))
	}
}

// refBuzhashCuts is casync's chunker written from its definition, one byte
// at a time and without a rolling hash: the slow reference the fast cutter
// is checked against.
func refBuzhashCuts(data []byte, s ChunkSize) []int {
	var sizes []int
	d := buzhashDiscriminator(s)
	fixed := s.Min == s.Avg && s.Avg == s.Max
	start := 0
	for i := range data {
		n := uint64(i + 1 - start)
		var cut bool
		switch {
		case fixed:
			cut = n == s.Avg
		case n < buzhashWindow:
			cut = false // casync tests nothing before the window is full
		case n >= s.Max:
			cut = true
		case n < s.Min:
			cut = false
		default:
			cut = buzhashSum(data[i+1-buzhashWindow:i+1])%d == d-1
		}
		if cut {
			sizes = append(sizes, int(n))
			start = i + 1
		}
	}
	if start < len(data) {
		sizes = append(sizes, len(data)-start)
	}
	return sizes
}

func TestParseChunkSize(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want ChunkSize
		err  string
	}{
		{name: "triplet k", in: "16k:64k:256k", want: ChunkSize{16 << 10, 64 << 10, 256 << 10}},
		{name: "triplet bytes", in: "1024:4096:16384", want: ChunkSize{1024, 4096, 16384}},
		{name: "upper case", in: "1K:1M:2M", want: ChunkSize{1 << 10, 1 << 20, 2 << 20}},
		{name: "fixed", in: "8k:8k:8k", want: ChunkSize{8 << 10, 8 << 10, 8 << 10}},
		{name: "average only", in: "64k", want: ChunkSize{16 << 10, 64 << 10, 256 << 10}},
		{name: "average only small", in: "2", want: ChunkSize{1, 2, 8}},
		{name: "average only capped", in: "64m", want: ChunkSize{16 << 20, 64 << 20, 128 << 20}},
		{name: "limit max", in: "1:1:128m", want: ChunkSize{1, 1, 128 << 20}},
		{name: "two values", in: "16k:64k", err: "want min:avg:max"},
		{name: "four values", in: "1:2:3:4", err: "want min:avg:max"},
		{name: "empty", in: "", err: "want a number"},
		{name: "empty part", in: "16k::256k", err: "want a number"},
		{name: "negative", in: "-1:2:3", err: "want a number"},
		{name: "plus sign", in: "+16k:64k:256k", err: "want a number"},
		{name: "bad suffix", in: "16x:64k:256k", err: "want a number"},
		{name: "fraction", in: "1.5k:64k:256k", err: "want a number"},
		{name: "min zero", in: "0:64k:256k", err: "min 0 is below 1"},
		{name: "min above avg", in: "128k:64k:256k", err: "larger than avg"},
		{name: "avg above max", in: "16k:512k:256k", err: "larger than max"},
		{name: "max too large", in: "16k:64k:129m", err: "above casync's limit"},
		{name: "average too large", in: "129m", err: "average must be within"},
		{name: "average zero", in: "0", err: "average must be within"},
		{name: "overflow", in: "99999999999999999999:1:1", err: "want a number"},
		{name: "overflow suffix", in: "17179869184g:1:1", err: "too large"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseChunkSize(tt.in)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("ParseChunkSize(%q) = %v, %v, want error containing %q", tt.in, got, err, tt.err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseChunkSize(%q) = %v, %v, want %v", tt.in, got, err, tt.want)
			}
			if back, err := ParseChunkSize(got.String()); err != nil || back != got {
				t.Errorf("ParseChunkSize(%q) = %v, %v, want %v", got.String(), back, err, got)
			}
		})
	}
}

func TestNewChunkerRejects(t *testing.T) {
	tests := []struct {
		name string
		opts ChunkOptions
		err  string
	}{
		{name: "buzhash max below window", opts: ChunkOptions{Size: ChunkSize{8, 16, 32}}, err: "max >= 48"},
		{name: "rabin min below window", opts: ChunkOptions{Chunker: Rabin, Size: ChunkSize{32, 4096, 8192}}, err: "min >= 64"},
		{name: "above frame limit", opts: ChunkOptions{Size: ChunkSize{1 << 20, 4 << 20, 32 << 20}}, err: "largest chunk frame"},
		{name: "unordered", opts: ChunkOptions{Size: ChunkSize{100, 50, 200}}, err: "larger than avg"},
		{name: "unknown chunker", opts: ChunkOptions{Chunker: "fastcdc"}, err: "unknown chunker"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewChunker(bytes.NewReader(nil), tt.opts)
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Fatalf("NewChunker(%+v) = %v, want error containing %q", tt.opts, err, tt.err)
			}
		})
	}
	// With only the average, min and max follow as in casync.
	x := NewIndex(0, ChunkOptions{Size: ChunkSize{Avg: 32 << 10}})
	if got := (ChunkSize{x.ChunkSizeMin, x.ChunkSizeAvg, x.ChunkSizeMax}); got != (ChunkSize{8 << 10, 32 << 10, 128 << 10}) {
		t.Errorf("NewIndex(avg 32k) sizes = %v, want 8192:32768:131072", got)
	}
	// Fixed-size buzhash chunks need no window.
	if _, err := NewChunker(bytes.NewReader(nil), ChunkOptions{Size: ChunkSize{16, 16, 16}}); err != nil {
		t.Errorf("NewChunker(fixed 16) = %v, want nil", err)
	}
}

func TestBuzhashDiscriminator(t *testing.T) {
	// casync's CA_CHUNKER_DISCRIMINATOR_FROM_AVG, evaluated in double
	// precision by Python's int(avg / (-1.42888852e-7*avg + 1.33237515)),
	// then clamped to min..max.
	tests := []struct {
		name string
		s    ChunkSize
		want uint32
	}{
		{name: "default", s: DefaultChunkSize, want: 49535},
		{name: "16k", s: ChunkSize{4 << 10, 16 << 10, 64 << 10}, want: 12318},
		{name: "1m", s: ChunkSize{256 << 10, 1 << 20, 4 << 20}, want: 886711},
		{name: "clamped to min", s: ChunkSize{1000, 1000, 4000}, want: 1000},
		{name: "fixed", s: ChunkSize{4096, 4096, 4096}, want: 4096},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := buzhashDiscriminator(tt.s); got != tt.want {
				t.Errorf("buzhashDiscriminator(%v) = %d, want %d", tt.s, got, tt.want)
			}
		})
	}
}

func TestBuzhashRolling(t *testing.T) {
	// Rolling the hash one byte must equal hashing the new window.
	data := randomBytes(7, 4096)
	h := buzhashSum(data[:buzhashWindow])
	for i := buzhashWindow; i < len(data); i++ {
		h = h<<1 | h>>31
		h ^= buzhashOut[data[i-buzhashWindow]] ^ buzhashTable[data[i]]
		if want := buzhashSum(data[i+1-buzhashWindow : i+1]); h != want {
			t.Fatalf("rolled hash at %d = %#x, want %#x", i, h, want)
		}
	}
}

// TestBuzhashMatchesReference compares the fast cutter with the byte-wise
// reference on inputs and sizes chosen to hit every branch: min below and
// above the window, fixed sizes, cuts at min and max, zeros.
func TestBuzhashMatchesReference(t *testing.T) {
	sizes := []ChunkSize{
		{64, 256, 1024},
		{16, 64, 256},
		{48, 48, 4096},
		{1, 100, 200},
		{200, 200, 200},
		{10, 10, 10},
		{1000, 1500, 2000},
		{2048, 8192, 32768},
	}
	for _, kind := range []string{"random", "zeros", "text"} {
		data := input(kind, 300_000)
		for _, s := range sizes {
			t.Run(kind+"/"+s.String(), func(t *testing.T) {
				want := refBuzhashCuts(data, s)
				got := cutAll(t, bytes.NewReader(data), ChunkOptions{Size: s})
				if !equalInts(got, want) {
					t.Fatalf("chunk sizes = %v, want %v", head(got), head(want))
				}
			})
		}
	}
}

// TestChunkerReadPatterns checks that how the stream arrives never moves a
// cut: whole, one byte at a time, in halves, with data and EOF together.
func TestChunkerReadPatterns(t *testing.T) {
	data := input("text", 200_000)
	patterns := []struct {
		name string
		r    func() io.Reader
	}{
		{"one byte", func() io.Reader { return iotest.OneByteReader(bytes.NewReader(data)) }},
		{"half", func() io.Reader { return iotest.HalfReader(bytes.NewReader(data)) }},
		{"data with eof", func() io.Reader { return iotest.DataErrReader(bytes.NewReader(data)) }},
		{"odd sizes", func() io.Reader { return &oddReader{data: data} }},
	}
	for _, kind := range []ChunkerKind{Buzhash, Rabin} {
		opts := ChunkOptions{Chunker: kind, Size: ChunkSize{1024, 4096, 16384}}
		want := cutAll(t, bytes.NewReader(data), opts)
		if len(want) < 10 {
			t.Fatalf("%s: only %d chunks; the test needs more", kind, len(want))
		}
		for _, p := range patterns {
			t.Run(string(kind)+"/"+p.name, func(t *testing.T) {
				if got := cutAll(t, p.r(), opts); !equalInts(got, want) {
					t.Errorf("chunk sizes = %v, want %v", head(got), head(want))
				}
			})
		}
	}
}

// oddReader returns reads of varying odd sizes, and sometimes nothing.
type oddReader struct {
	data []byte
	n    int
}

func (r *oddReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	r.n++
	k := min(len(p), len(r.data), []int{0, 1, 7, 4093, 65537, 3}[r.n%6])
	copy(p, r.data[:k])
	r.data = r.data[k:]
	return k, nil
}

func TestChunkerErrors(t *testing.T) {
	boom := errors.New("boom")
	for _, kind := range []ChunkerKind{Buzhash, Rabin} {
		t.Run(string(kind)+"/read error", func(t *testing.T) {
			r := io.MultiReader(bytes.NewReader(randomBytes(3, 10_000)), iotest.ErrReader(boom))
			ck, err := NewChunker(r, ChunkOptions{Chunker: kind, Size: ChunkSize{1024, 4096, 16384}})
			if err != nil {
				t.Fatal(err)
			}
			var got error
			for got == nil {
				_, got = ck.Next()
			}
			if !errors.Is(got, boom) {
				t.Fatalf("Next() = %v, want %v", got, boom)
			}
			if _, again := ck.Next(); !errors.Is(again, boom) {
				t.Errorf("Next() after error = %v, want sticky %v", again, boom)
			}
		})
		t.Run(string(kind)+"/empty", func(t *testing.T) {
			if got := cutAll(t, bytes.NewReader(nil), ChunkOptions{Chunker: kind}); len(got) != 0 {
				t.Errorf("chunks of empty input = %v, want none", got)
			}
		})
	}
	t.Run("no progress", func(t *testing.T) {
		ck, err := NewChunker(zeroReader{}, ChunkOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ck.Next(); !errors.Is(err, io.ErrNoProgress) {
			t.Errorf("Next() = %v, want %v", err, io.ErrNoProgress)
		}
	})
}

// zeroReader returns no data and no error, forever.
type zeroReader struct{}

func (zeroReader) Read([]byte) (int, error) { return 0, nil }

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// head shortens a list of sizes for a failure message.
func head(s []int) []int {
	if len(s) > 20 {
		return s[:20]
	}
	return s
}

func FuzzChunker(f *testing.F) {
	f.Add(randomBytes(1, 5000), uint16(64), uint16(256), uint16(1024), false, uint8(7))
	f.Add(textBytes(2, 5000), uint16(100), uint16(100), uint16(100), false, uint8(1))
	f.Add(make([]byte, 3000), uint16(16), uint16(64), uint16(256), true, uint8(3))
	f.Add(randomBytes(4, 9000), uint16(70), uint16(300), uint16(2000), true, uint8(0))
	f.Fuzz(fuzzChunkerBody)
}

func fuzzChunkerBody(t *testing.T, data []byte, a, b, c uint16, rabin bool, step uint8) {
	// Sort the three sizes into min <= avg <= max.
	v := []uint64{uint64(a), uint64(b), uint64(c)}
	for i := range v {
		for j := i + 1; j < len(v); j++ {
			if v[j] < v[i] {
				v[i], v[j] = v[j], v[i]
			}
		}
	}
	opts := ChunkOptions{Size: ChunkSize{max(v[0], 1), max(v[1], 1), max(v[2], 1)}}
	if rabin {
		opts.Chunker = Rabin
	}
	ck, err := NewChunker(bytes.NewReader(data), opts)
	if err != nil {
		return // sizes this chunker refuses
	}
	var got []byte
	var sizes []int
	for {
		b, err := ck.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("Next() = %v", err)
		}
		sizes = append(sizes, len(b))
		got = append(got, b...)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("chunks concatenate to %d bytes, want the %d input bytes", len(got), len(data))
	}
	for i, n := range sizes {
		if n == 0 || uint64(n) > opts.Size.Max || (uint64(n) < opts.Size.Min && i != len(sizes)-1) {
			t.Fatalf("chunk %d of %d has size %d, want %v bounds", i, len(sizes), n, opts.Size)
		}
	}
	r := iotest.OneByteReader(bytes.NewReader(data))
	if step > 1 {
		r = &stepReader{data: data, step: int(step)}
	}
	if again := cutAll(t, r, opts); !equalInts(again, sizes) {
		t.Fatalf("chunk sizes with %d-byte reads = %v, want %v", step, head(again), head(sizes))
	}
	if !rabin {
		if want := refBuzhashCuts(data, opts.Size); !equalInts(sizes, want) {
			t.Fatalf("chunk sizes = %v, want reference %v", head(sizes), head(want))
		}
	}
}

// stepReader returns step bytes per Read.
type stepReader struct {
	data []byte
	step int
}

func (r *stepReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	k := min(len(p), len(r.data), r.step)
	copy(p, r.data[:k])
	r.data = r.data[k:]
	return k, nil
}
