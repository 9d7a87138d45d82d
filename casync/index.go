package casync

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sort"
)

// Index feature flags. An index header carries the feature flags of the
// archive it describes (catar flags for a caidx, none for a caibx), plus
// flags about the index itself. Only the ones that concern the index are
// named here; catar flags come from the catar encoder.
const (
	// IndexSHA512_256 is set when chunk IDs are SHA-512/256 digests
	// (CA_FORMAT_SHA512_256). Without it they are SHA-256 digests.
	IndexSHA512_256 uint64 = 0x2000000000000000

	// IndexBlobFlags are the flags that `casync make` writes into a
	// caibx besides the digest flag: CA_FORMAT_EXCLUDE_NODUMP and
	// CA_FORMAT_EXCLUDE_FILE, left over from its default feature set.
	// Pass them to NewIndex to write a caibx byte-identical to casync's.
	IndexBlobFlags uint64 = 0x8000000000000000 | 0x1000000000000000
)

// Chunk-size limits that casync enforces on index headers and on
// --chunk-size (CA_CHUNK_SIZE_LIMIT_MIN and CA_CHUNK_SIZE_LIMIT_MAX).
const (
	ChunkSizeLimitMin = 1
	ChunkSizeLimitMax = 128 << 20
)

// On-disk layout of caidx and caibx files (casync's src/caformat.h).
const (
	indexMagic      uint64 = 0x96824d9c7b129ff9 // CA_FORMAT_INDEX
	tableMagic      uint64 = 0xe75b9e112f17417d // CA_FORMAT_TABLE
	tableTailMarker uint64 = 0x4b4f050e5549ecd1 // CA_FORMAT_TABLE_TAIL_MARKER

	indexHeaderSize = 48 // CaFormatIndex: size, type, flags, min, avg, max
	tableHeaderSize = 16 // CaFormatHeader with size UINT64_MAX
	tableItemSize   = 40 // CaFormatTableItem: end offset, chunk ID
	tableTailSize   = 40 // CaFormatTableTail: 0, 0, index offset, table size, marker
)

// Feature-flag bits casync knows (CA_FORMAT_FEATURE_FLAGS_MAX) and the
// groups its normalization rules talk about (src/caformat-util.c).
const (
	idxFlag16BitUIDs    = 0x1
	idxFlag32BitUIDs    = 0x2
	idxFlagUserNames    = 0x4
	idxFlagSecTime      = 0x8
	idxFlagUsecTime     = 0x10
	idxFlagNsecTime     = 0x20
	idxFlag2SecTime     = 0x40
	idxFlagReadOnly     = 0x80
	idxFlagPermissions  = 0x100
	idxFlagNoDump       = 0x100000
	idxFlagSubvolume    = 0x4000000
	idxFlagSubvolumeRO  = 0x8000000
	idxFlagACL          = 0x20000000
	idxFlagExcludeNoDmp = 0x8000000000000000

	idxFlagsKnown uint64 = 0x1ffffffff | // every CA_FORMAT_WITH_* bit
		0x8000000000000000 | // EXCLUDE_NODUMP
		0x4000000000000000 | // EXCLUDE_SUBMOUNTS
		0x1000000000000000 | // EXCLUDE_FILE
		IndexSHA512_256
)

// Index is a caidx or caibx file: the chunk parameters and the table of
// chunks that make up a catar archive or a blob.
type Index struct {
	// Flags are the feature flags, including the digest flag
	// IndexSHA512_256.
	Flags uint64
	// ChunkSizeMin, ChunkSizeAvg and ChunkSizeMax are the chunker
	// parameters the table was cut with.
	ChunkSizeMin, ChunkSizeAvg, ChunkSizeMax uint64
	// Chunks lists the chunks in stream order. They are contiguous: each
	// starts where the previous one ends, and the first at 0.
	Chunks []IndexChunk
}

// IndexChunk is one entry of an index table.
type IndexChunk struct {
	Start, Size uint64
	ID          ChunkID
}

// NewIndex returns an empty index for chunks cut with opts. flags are the
// feature flags of what is chunked (IndexBlobFlags for a blob, the catar
// encoder's flags for an archive); the digest flag is set from
// opts.Digest. Chunk sizes are those opts resolves to.
func NewIndex(flags uint64, opts ChunkOptions) *Index {
	s := opts.Size.withDefaults()
	return &Index{
		Flags:        opts.Digest.indexFlags(flags),
		ChunkSizeMin: s.Min,
		ChunkSizeAvg: s.Avg,
		ChunkSizeMax: s.Max,
	}
}

// indexFlags returns flags with the digest flag set for d.
func (d Digest) indexFlags(flags uint64) uint64 {
	if d == SHA256 {
		return flags &^ IndexSHA512_256
	}
	return flags | IndexSHA512_256
}

// Add appends a chunk that Split emitted. Chunks must come in stream order.
func (x *Index) Add(c Chunk) error {
	if end := x.Length(); c.Start != end {
		return fmt.Errorf("%w: index: chunk at offset %d added after offset %d (chunks must be added in order)", ErrFormat, c.Start, end)
	}
	if c.Size == 0 || c.Size > x.ChunkSizeMax {
		return fmt.Errorf("%w: index: chunk %d at offset %d has size %d, want 1..%d", ErrFormat, len(x.Chunks), c.Start, c.Size, x.ChunkSizeMax)
	}
	x.Chunks = append(x.Chunks, IndexChunk{Start: c.Start, Size: c.Size, ID: c.ID})
	return nil
}

// Digest returns the hash the chunk IDs were made with.
func (x *Index) Digest() Digest {
	if x.Flags&IndexSHA512_256 != 0 {
		return SHA512_256
	}
	return SHA256
}

// Length returns the size of the archive or blob the index describes.
func (x *Index) Length() uint64 {
	if len(x.Chunks) == 0 {
		return 0
	}
	last := x.Chunks[len(x.Chunks)-1]
	return last.Start + last.Size
}

// ChunkAt returns the position in Chunks of the chunk holding byte off, or
// -1 if off is at or past Length.
func (x *Index) ChunkAt(off uint64) int {
	i := sort.Search(len(x.Chunks), func(i int) bool {
		c := x.Chunks[i]
		return c.Start+c.Size > off
	})
	if i == len(x.Chunks) {
		return -1
	}
	return i
}

// checkHeader applies casync's checks on an index header
// (ca_index_read_head) to x.
func (x *Index) checkHeader() error {
	if err := checkIndexFlags(x.Flags); err != nil {
		return err
	}
	for _, f := range []struct {
		name string
		v    uint64
	}{{"min", x.ChunkSizeMin}, {"avg", x.ChunkSizeAvg}, {"max", x.ChunkSizeMax}} {
		if f.v < ChunkSizeLimitMin || f.v > ChunkSizeLimitMax {
			return fmt.Errorf("%w: index header: %s chunk size %d out of range %d..%d", ErrFormat, f.name, f.v, ChunkSizeLimitMin, ChunkSizeLimitMax)
		}
	}
	if x.ChunkSizeMin > x.ChunkSizeAvg || x.ChunkSizeAvg > x.ChunkSizeMax {
		return fmt.Errorf("%w: index header: chunk sizes %d:%d:%d are not ordered min <= avg <= max", ErrFormat, x.ChunkSizeMin, x.ChunkSizeAvg, x.ChunkSizeMax)
	}
	return nil
}

// checkIndexFlags reports flags that casync would refuse in an index: bits
// it does not know, or a combination that is not normalized
// (ca_feature_flags_are_normalized).
func checkIndexFlags(flags uint64) error {
	if unknown := flags &^ idxFlagsKnown; unknown != 0 {
		return fmt.Errorf("%w: index header: unknown feature flags %#x", ErrFormat, unknown)
	}
	has := func(bits uint64) bool { return flags&bits != 0 }
	var conflict string
	switch {
	case has(idxFlagNsecTime) && has(idxFlagUsecTime|idxFlagSecTime|idxFlag2SecTime),
		has(idxFlagUsecTime) && has(idxFlagSecTime|idxFlag2SecTime),
		has(idxFlagSecTime) && has(idxFlag2SecTime):
		conflict = "more than one time granularity"
	case flags&(idxFlag16BitUIDs|idxFlag32BitUIDs) == idxFlag16BitUIDs|idxFlag32BitUIDs:
		conflict = "both 16-bit and 32-bit UIDs"
	case has(idxFlagPermissions) && has(idxFlagReadOnly):
		conflict = "both permissions and read-only"
	case has(idxFlagACL) && has(idxFlagPermissions|idxFlagReadOnly):
		conflict = "ACLs with permissions or read-only"
	case has(idxFlagACL) && !has(idxFlag16BitUIDs|idxFlag32BitUIDs|idxFlagUserNames):
		conflict = "ACLs without UIDs or user names"
	case has(idxFlagExcludeNoDmp) && has(idxFlagNoDump):
		conflict = "both exclude-nodump and the nodump flag"
	case has(idxFlagSubvolumeRO) && !has(idxFlagSubvolume):
		conflict = "read-only subvolume without subvolume"
	}
	if conflict != "" {
		return fmt.Errorf("%w: index header: feature flags %#x are not normalized (%s)", ErrFormat, flags, conflict)
	}
	return nil
}

// checkChunk checks chunk i, from prev to end, against the chunk-size
// limits; last says whether it is the final chunk, which may be short.
func (x *Index) checkChunk(i int, prev, end uint64, last bool) error {
	if end <= prev {
		return fmt.Errorf("%w: index chunk %d: end offset %d not after previous end %d", ErrFormat, i, end, prev)
	}
	size := end - prev
	if size > x.ChunkSizeMax {
		return fmt.Errorf("%w: index chunk %d at offset %d: size %d exceeds max chunk size %d", ErrFormat, i, prev, size, x.ChunkSizeMax)
	}
	if size < x.ChunkSizeMin && !last {
		return fmt.Errorf("%w: index chunk %d at offset %d: size %d below min chunk size %d (only the last chunk may be shorter)", ErrFormat, i, prev, size, x.ChunkSizeMin)
	}
	return nil
}

// ReadIndex reads a caidx or caibx file. It checks everything casync
// checks, and that every chunk but the last is at least ChunkSizeMin long.
// Errors about the content wrap ErrFormat. ReadIndex reads r to its end
// and allocates in proportion to what it reads.
func ReadIndex(r io.Reader) (*Index, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	var head [indexHeaderSize + tableHeaderSize]byte
	if _, err := io.ReadFull(br, head[:]); err != nil {
		return nil, readErr("index header", err)
	}
	le := binary.LittleEndian
	if size, typ := le.Uint64(head[0:]), le.Uint64(head[8:]); size != indexHeaderSize || typ != indexMagic {
		return nil, fmt.Errorf("%w: index header: size %d type %#x, want size %d type %#x (not a caidx/caibx file?)", ErrFormat, size, typ, indexHeaderSize, indexMagic)
	}
	x := &Index{
		Flags:        le.Uint64(head[16:]),
		ChunkSizeMin: le.Uint64(head[24:]),
		ChunkSizeAvg: le.Uint64(head[32:]),
		ChunkSizeMax: le.Uint64(head[40:]),
	}
	if err := x.checkHeader(); err != nil {
		return nil, err
	}
	if size, typ := le.Uint64(head[48:]), le.Uint64(head[56:]); size != ^uint64(0) || typ != tableMagic {
		return nil, fmt.Errorf("%w: table header: size %#x type %#x, want size %#x type %#x", ErrFormat, size, typ, ^uint64(0), tableMagic)
	}

	var (
		rec  [tableItemSize]byte
		prev uint64
	)
	for i := 0; ; i++ {
		if _, err := io.ReadFull(br, rec[:]); err != nil {
			return nil, readErr(fmt.Sprintf("index table record %d", i), err)
		}
		end := le.Uint64(rec[0:])
		if end == 0 {
			// An item's end offset is at least 1, so this is the tail.
			if err := checkTail(rec[:], i); err != nil {
				return nil, err
			}
			break
		}
		if end <= prev {
			return nil, fmt.Errorf("%w: index chunk %d: end offset %d not after previous end %d", ErrFormat, i, end, prev)
		}
		if end-prev > x.ChunkSizeMax {
			return nil, fmt.Errorf("%w: index chunk %d at offset %d: size %d exceeds max chunk size %d", ErrFormat, i, prev, end-prev, x.ChunkSizeMax)
		}
		c := IndexChunk{Start: prev, Size: end - prev}
		copy(c.ID[:], rec[8:])
		x.Chunks = append(x.Chunks, c)
		prev = end
	}
	if _, err := io.ReadFull(br, rec[:1]); err != io.EOF {
		if err != nil {
			return nil, fmt.Errorf("index: reading past the table tail: %w", err)
		}
		return nil, fmt.Errorf("%w: index: trailing data after the table tail", ErrFormat)
	}
	// Only now is it known which chunk is the last, the one that may be
	// shorter than the minimum.
	for i, c := range x.Chunks[:max(len(x.Chunks)-1, 0)] {
		if c.Size < x.ChunkSizeMin {
			return nil, fmt.Errorf("%w: index chunk %d at offset %d: size %d below min chunk size %d (only the last chunk may be shorter)", ErrFormat, i, c.Start, c.Size, x.ChunkSizeMin)
		}
	}
	return x, nil
}

// checkTail checks a table tail record that follows n items.
func checkTail(rec []byte, n int) error {
	le := binary.LittleEndian
	want := uint64(tableHeaderSize) + uint64(n)*tableItemSize + tableTailSize
	switch {
	case le.Uint64(rec[8:]) != 0:
		return fmt.Errorf("%w: index table tail: non-zero fill", ErrFormat)
	case le.Uint64(rec[16:]) != indexHeaderSize:
		return fmt.Errorf("%w: index table tail: index offset %d, want %d", ErrFormat, le.Uint64(rec[16:]), indexHeaderSize)
	case le.Uint64(rec[24:]) != want:
		return fmt.Errorf("%w: index table tail: table size %d, want %d for %d chunks", ErrFormat, le.Uint64(rec[24:]), want, n)
	case le.Uint64(rec[32:]) != tableTailMarker:
		return fmt.Errorf("%w: index table tail: marker %#x, want %#x", ErrFormat, le.Uint64(rec[32:]), tableTailMarker)
	}
	return nil
}

// readErr turns a short read of what into an ErrFormat error, and passes
// other read errors through.
func readErr(what string, err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: %s: truncated", ErrFormat, what)
	}
	return fmt.Errorf("reading %s: %w", what, err)
}

// WriteTo writes x in casync's caidx/caibx layout. It refuses an index
// that ReadIndex would refuse, with an error wrapping ErrFormat.
func (x *Index) WriteTo(w io.Writer) (int64, error) {
	if err := x.check(); err != nil {
		return 0, err
	}
	cw := &countWriter{w: w}
	bw := bufio.NewWriterSize(cw, 64<<10)
	le := binary.LittleEndian
	var head [indexHeaderSize + tableHeaderSize]byte
	le.PutUint64(head[0:], indexHeaderSize)
	le.PutUint64(head[8:], indexMagic)
	le.PutUint64(head[16:], x.Flags)
	le.PutUint64(head[24:], x.ChunkSizeMin)
	le.PutUint64(head[32:], x.ChunkSizeAvg)
	le.PutUint64(head[40:], x.ChunkSizeMax)
	le.PutUint64(head[48:], ^uint64(0))
	le.PutUint64(head[56:], tableMagic)
	// bufio.Writer keeps the first error and Flush reports it.
	bw.Write(head[:])
	var rec [tableItemSize]byte
	for _, c := range x.Chunks {
		le.PutUint64(rec[0:], c.Start+c.Size)
		copy(rec[8:], c.ID[:])
		bw.Write(rec[:])
	}
	var tail [tableTailSize]byte
	le.PutUint64(tail[16:], indexHeaderSize)
	le.PutUint64(tail[24:], tableHeaderSize+uint64(len(x.Chunks))*tableItemSize+tableTailSize)
	le.PutUint64(tail[32:], tableTailMarker)
	bw.Write(tail[:])
	if err := bw.Flush(); err != nil {
		return cw.n, fmt.Errorf("writing index: %w", err)
	}
	return cw.n, nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// check validates the whole index, as ReadIndex would.
func (x *Index) check() error {
	if err := x.checkHeader(); err != nil {
		return err
	}
	var prev uint64
	for i, c := range x.Chunks {
		if c.Start != prev {
			return fmt.Errorf("%w: index chunk %d starts at %d, want %d (chunks must be contiguous)", ErrFormat, i, c.Start, prev)
		}
		end := c.Start + c.Size
		if end < c.Start {
			return fmt.Errorf("%w: index chunk %d: offset overflows", ErrFormat, i)
		}
		if err := x.checkChunk(i, prev, end, i == len(x.Chunks)-1); err != nil {
			return err
		}
		prev = end
	}
	return nil
}
