package casync

import (
	"fmt"
	"io"
	"runtime"
	"strconv"
	"strings"
)

// Default chunk sizes, casync's: 16 KiB : 64 KiB : 256 KiB.
const (
	DefaultChunkSizeMin = 16 << 10
	DefaultChunkSizeAvg = 64 << 10
	DefaultChunkSizeMax = 256 << 10
)

// ChunkSize holds the minimum, average and maximum chunk size in bytes.
// The zero value means casync's defaults, 16k:64k:256k. With only Avg set,
// Min and Max follow from it as in ParseChunkSize.
type ChunkSize struct {
	Min, Avg, Max uint64
}

// DefaultChunkSize is casync's default chunk size.
var DefaultChunkSize = ChunkSize{DefaultChunkSizeMin, DefaultChunkSizeAvg, DefaultChunkSizeMax}

func (s ChunkSize) withDefaults() ChunkSize {
	switch {
	case s == ChunkSize{}:
		return DefaultChunkSize
	case s.Min == 0 && s.Max == 0 && s.Avg <= ChunkSizeLimitMax:
		return sizesFromAvg(s.Avg)
	}
	return s
}

// sizesFromAvg derives min and max from an average as casync's
// ca_chunker_set_size does when only the average is given.
func sizesFromAvg(avg uint64) ChunkSize {
	return ChunkSize{Min: max(avg/4, ChunkSizeLimitMin), Avg: avg, Max: min(avg*4, ChunkSizeLimitMax)}
}

// String formats s the way ParseChunkSize reads it, in bytes.
func (s ChunkSize) String() string {
	s = s.withDefaults()
	return fmt.Sprintf("%d:%d:%d", s.Min, s.Avg, s.Max)
}

// ParseChunkSize parses a chunk size as casync's --chunk-size takes it:
// either "min:avg:max" or a single average, from which min is avg/4 and max
// is avg*4 (within casync's limits). Each number is in bytes, or has a k, m
// or g suffix (either case) for KiB, MiB or GiB. It enforces casync's
// limits: 1 <= min <= avg <= max <= 128 MiB.
func ParseChunkSize(s string) (ChunkSize, error) {
	parts := strings.Split(s, ":")
	var v [3]uint64
	for i, p := range parts {
		if len(parts) != 1 && len(parts) != 3 {
			break
		}
		n, err := ParseSize(p)
		if err != nil {
			return ChunkSize{}, fmt.Errorf("chunk size %q: %w", s, err)
		}
		v[i] = n
	}
	var cs ChunkSize
	switch len(parts) {
	case 1:
		// casync's ca_chunker_set_size with only the average given.
		avg := v[0]
		if avg < ChunkSizeLimitMin || avg > ChunkSizeLimitMax {
			return ChunkSize{}, fmt.Errorf("chunk size %q: average must be within %d..%d", s, ChunkSizeLimitMin, ChunkSizeLimitMax)
		}
		cs = sizesFromAvg(avg)
	case 3:
		cs = ChunkSize{Min: v[0], Avg: v[1], Max: v[2]}
	default:
		return ChunkSize{}, fmt.Errorf("chunk size %q: want min:avg:max or a single average", s)
	}
	if err := cs.check(); err != nil {
		return ChunkSize{}, fmt.Errorf("chunk size %q: %w", s, err)
	}
	return cs, nil
}

// check enforces casync's limits on s.
func (s ChunkSize) check() error {
	switch {
	case s.Min < ChunkSizeLimitMin:
		return fmt.Errorf("min %d is below %d", s.Min, ChunkSizeLimitMin)
	case s.Min > s.Avg:
		return fmt.Errorf("min %d is larger than avg %d", s.Min, s.Avg)
	case s.Avg > s.Max:
		return fmt.Errorf("avg %d is larger than max %d", s.Avg, s.Max)
	case s.Max > ChunkSizeLimitMax:
		return fmt.Errorf("max %d is above casync's limit %d", s.Max, ChunkSizeLimitMax)
	}
	return nil
}

// ParseSize parses a byte count with an optional binary k, m, g or t
// suffix, as --chunk-size and the byte-count flags of the commands take it.
func ParseSize(s string) (uint64, error) {
	num, mult := s, uint64(1)
	if n := len(s); n > 0 {
		switch s[n-1] {
		case 'k', 'K':
			num, mult = s[:n-1], 1<<10
		case 'm', 'M':
			num, mult = s[:n-1], 1<<20
		case 'g', 'G':
			num, mult = s[:n-1], 1<<30
		case 't', 'T':
			num, mult = s[:n-1], 1<<40
		}
	}
	if num == "" || num[0] < '0' || num[0] > '9' {
		return 0, fmt.Errorf("size %q: want a number of bytes, optionally with a k, m, g or t suffix", s)
	}
	n, err := strconv.ParseUint(num, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("size %q: want a number of bytes, optionally with a k, m, g or t suffix", s)
	}
	if n > ^uint64(0)/mult {
		return 0, fmt.Errorf("size %q: too large", s)
	}
	return n * mult, nil
}

// ChunkerKind names a chunking algorithm.
type ChunkerKind string

const (
	// Buzhash is casync's chunker. It is the default.
	Buzhash ChunkerKind = "buzhash"
	// Rabin is restic's Rabin-fingerprint chunker, with RabinPolynomial.
	Rabin ChunkerKind = "rabin"
)

// ParseChunkerKind parses "buzhash" or "rabin"; "" means buzhash.
func ParseChunkerKind(s string) (ChunkerKind, error) {
	switch k := ChunkerKind(s); k {
	case "", Buzhash:
		return Buzhash, nil
	case Rabin:
		return k, nil
	}
	return "", fmt.Errorf("unknown chunker %q (want buzhash or rabin)", s)
}

// ChunkOptions configure chunking. The zero value chunks like casync with
// its defaults: buzhash, 16k:64k:256k, SHA-512/256, one hashing goroutine
// per CPU. The fields map one to one to mkimage's flags.
type ChunkOptions struct {
	// Chunker is the algorithm (--chunker). "" means Buzhash.
	Chunker ChunkerKind
	// Size is the chunk size (--chunk-size). The zero value means
	// DefaultChunkSize.
	Size ChunkSize
	// Digest makes chunk IDs (--digest).
	Digest Digest
	// Jobs is the number of goroutines that hash chunks (-j). Zero or
	// less means runtime.GOMAXPROCS(0). The output never depends on it.
	Jobs int
}

func (o ChunkOptions) jobs() int {
	if o.Jobs > 0 {
		return o.Jobs
	}
	return runtime.GOMAXPROCS(0)
}

// Chunker cuts a byte stream into content-defined chunks.
type Chunker interface {
	// Next returns the next chunk. The slice belongs to the chunker and
	// stays valid only until the next call to Next. At the end of the
	// stream Next returns io.EOF; a read error is returned as is and is
	// sticky.
	Next() ([]byte, error)
}

// NewChunker returns a chunker for r with the algorithm and sizes of opts.
// Besides casync's limits (see ParseChunkSize) it needs max <= MaxChunkSize,
// so that every chunk can be read back. Buzhash needs max >= 48, its hash
// window, unless min == avg == max (fixed-size chunks); casync would cut
// such chunks longer than max. Rabin needs min >= 64, its window.
func NewChunker(r io.Reader, opts ChunkOptions) (Chunker, error) {
	s := opts.Size.withDefaults()
	if err := s.check(); err != nil {
		return nil, fmt.Errorf("chunk size %v: %w", s, err)
	}
	if s.Max > MaxChunkSize {
		return nil, fmt.Errorf("chunk size %v: max is above %d, the largest chunk frame bootfs reads", s, MaxChunkSize)
	}
	kind, err := ParseChunkerKind(string(opts.Chunker))
	if err != nil {
		return nil, err
	}
	switch kind {
	case Rabin:
		return newRabinChunker(r, s)
	default:
		return newBuzhashChunker(r, s)
	}
}
