package casync

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bootfs/bootfs/internal/testenv"
	"github.com/folbricht/desync"
)

var updateIndexFixtures = flag.Bool("update-index-fixtures", false, "rewrite testdata/index and testdata/chunker from the real casync")

// indexCase is one blob that casync chunks into a caibx, kept as a fixture
// in testdata/index/NAME.caibx. The blob is generated, never stored.
type indexCase struct {
	name string
	blob func() []byte
	args []string // casync make arguments besides --store
	opts ChunkOptions
}

var indexCases = []indexCase{
	{name: "random-4m", blob: func() []byte { return input("random", 4<<20) }},
	{name: "random-4m-sha256", blob: func() []byte { return input("random", 4<<20) },
		args: []string{"--digest=sha256"}, opts: ChunkOptions{Digest: SHA256}},
	{name: "random-1m-4k16k64k", blob: func() []byte { return input("random", 1<<20) },
		args: []string{"--chunk-size=4K:16K:64K"}, opts: ChunkOptions{Size: ChunkSize{4 << 10, 16 << 10, 64 << 10}}},
	{name: "random-1m-avg32k", blob: func() []byte { return input("random", 1<<20) },
		args: []string{"--chunk-size=32K"}, opts: ChunkOptions{Size: ChunkSize{8 << 10, 32 << 10, 128 << 10}}},
	{name: "random-256k-64-256-1024", blob: func() []byte { return input("random", 256<<10) },
		args: []string{"--chunk-size=64:256:1024"}, opts: ChunkOptions{Size: ChunkSize{64, 256, 1024}}},
	{name: "random-64k-16-64-256", blob: func() []byte { return input("random", 64<<10) },
		args: []string{"--chunk-size=16:64:256"}, opts: ChunkOptions{Size: ChunkSize{16, 64, 256}}},
	{name: "random-100000-fixed8k", blob: func() []byte { return input("random", 100000) },
		args: []string{"--chunk-size=8K:8K:8K"}, opts: ChunkOptions{Size: ChunkSize{8 << 10, 8 << 10, 8 << 10}}},
	{name: "zeros-1m", blob: func() []byte { return input("zeros", 1<<20) }},
	{name: "zeros-100000-1k4k16k", blob: func() []byte { return input("zeros", 100000) },
		args: []string{"--chunk-size=1K:4K:16K"}, opts: ChunkOptions{Size: ChunkSize{1 << 10, 4 << 10, 16 << 10}}},
	{name: "text-4m", blob: func() []byte { return input("text", 4<<20) }},
	{name: "text-1m-sha256-2k8k32k", blob: func() []byte { return input("text", 1<<20) },
		args: []string{"--digest=sha256", "--chunk-size=2K:8K:32K"}, opts: ChunkOptions{Digest: SHA256, Size: ChunkSize{2 << 10, 8 << 10, 32 << 10}}},
	{name: "mincut", blob: func() []byte { return minCutInput(DefaultChunkSize, 3, 100_000) }},
	{name: "mincut-1k4k16k", blob: func() []byte { return minCutInput(ChunkSize{1 << 10, 4 << 10, 16 << 10}, 5, 20_000) },
		args: []string{"--chunk-size=1K:4K:16K"}, opts: ChunkOptions{Size: ChunkSize{1 << 10, 4 << 10, 16 << 10}}},
	{name: "short-1000", blob: func() []byte { return input("random", 1000) }},
	{name: "empty", blob: func() []byte { return nil }},
}

// minCutInput returns a blob whose first n chunks under s (buzhash) are
// cut at exactly s.Min, followed by tail random bytes. Each of those
// chunks is min-48 random bytes, then a 48-byte window drawn from a seeded
// stream until its hash satisfies casync's cut test. No cut can come
// earlier, since none is allowed before min.
func minCutInput(s ChunkSize, n, tail int) []byte {
	var key [32]byte
	key[0] = 2
	src := rand.NewChaCha8(key)
	d := buzhashDiscriminator(s)
	var out []byte
	for range n {
		chunk := make([]byte, s.Min)
		src.Read(chunk)
		w := chunk[s.Min-buzhashWindow:]
		for buzhashSum(w)%d != d-1 {
			src.Read(w)
		}
		out = append(out, chunk...)
	}
	rest := make([]byte, tail)
	src.Read(rest)
	return append(out, rest...)
}

// casyncMake runs `casync make --store=DIR/store ARGS... DIR/OUT SRC` and
// returns the bytes of OUT.
func casyncMake(t testing.TB, src, out string, args ...string) []byte {
	t.Helper()
	bin := testenv.LookPath(t, "casync")
	dir := t.TempDir()
	argv := append([]string{"make", "--store=" + filepath.Join(dir, "store")}, args...)
	argv = append(argv, filepath.Join(dir, out), src)
	if b, err := exec.Command(bin, argv...).CombinedOutput(); err != nil {
		t.Fatalf("casync %s: %v\n%s", strings.Join(argv, " "), err, b)
	}
	b, err := os.ReadFile(filepath.Join(dir, out))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// casyncMakeBlob writes blob to a file and returns casync's caibx of it.
func casyncMakeBlob(t testing.TB, blob []byte, args ...string) []byte {
	t.Helper()
	testenv.LookPath(t, "casync")
	p := filepath.Join(t.TempDir(), "blob")
	if err := os.WriteFile(p, blob, 0o644); err != nil {
		t.Fatal(err)
	}
	return casyncMake(t, p, "blob.caibx", args...)
}

// ourIndex chunks blob and returns the encoded index.
func ourIndex(t testing.TB, blob []byte, flags uint64, opts ChunkOptions) []byte {
	t.Helper()
	x, err := BuildIndex(context.Background(), bytes.NewReader(blob), flags, opts, nil)
	if err != nil {
		t.Fatalf("BuildIndex = %v", err)
	}
	var b bytes.Buffer
	if _, err := x.WriteTo(&b); err != nil {
		t.Fatalf("WriteTo = %v", err)
	}
	return b.Bytes()
}

// diffIndex describes the first difference between two encoded indexes.
func diffIndex(got, want []byte) string {
	gx, gerr := ReadIndex(bytes.NewReader(got))
	wx, werr := ReadIndex(bytes.NewReader(want))
	if gerr != nil || werr != nil {
		return fmt.Sprintf("got %v, want %v", gerr, werr)
	}
	if gx.Flags != wx.Flags || gx.ChunkSizeMin != wx.ChunkSizeMin || gx.ChunkSizeAvg != wx.ChunkSizeAvg || gx.ChunkSizeMax != wx.ChunkSizeMax {
		return fmt.Sprintf("header %#x %d:%d:%d, want %#x %d:%d:%d", gx.Flags, gx.ChunkSizeMin, gx.ChunkSizeAvg, gx.ChunkSizeMax,
			wx.Flags, wx.ChunkSizeMin, wx.ChunkSizeAvg, wx.ChunkSizeMax)
	}
	for i := range min(len(gx.Chunks), len(wx.Chunks)) {
		if gx.Chunks[i] != wx.Chunks[i] {
			return fmt.Sprintf("chunk %d = {%d %d %s}, want {%d %d %s}", i,
				gx.Chunks[i].Start, gx.Chunks[i].Size, gx.Chunks[i].ID, wx.Chunks[i].Start, wx.Chunks[i].Size, wx.Chunks[i].ID)
		}
	}
	return fmt.Sprintf("%d chunks, want %d", len(gx.Chunks), len(wx.Chunks))
}

// TestIndexCasyncParity chunks each case with the real casync and with
// this package and wants byte-identical caibx files. With
// -update-index-fixtures it records casync's output as the fixture.
func TestIndexCasyncParity(t *testing.T) {
	testenv.LookPath(t, "casync")
	for _, tc := range indexCases {
		t.Run(tc.name, func(t *testing.T) {
			blob := tc.blob()
			want := casyncMakeBlob(t, blob, tc.args...)
			got := ourIndex(t, blob, IndexBlobFlags, tc.opts)
			if !bytes.Equal(got, want) {
				t.Fatalf("caibx of %s differs from casync make %s: %s", tc.name, strings.Join(tc.args, " "), diffIndex(got, want))
			}
			path := filepath.Join("testdata", "index", tc.name+".caibx")
			if *updateIndexFixtures {
				writeFixture(t, path, want)
			}
		})
	}
}

func writeFixture(t testing.TB, path string, b []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestIndexFixtures checks the recorded casync output without casync:
// each fixture reads back and re-encodes to the same bytes, and chunking
// the same blob here gives the same file.
func TestIndexFixtures(t *testing.T) {
	for _, tc := range indexCases {
		t.Run(tc.name, func(t *testing.T) {
			want, err := os.ReadFile(filepath.Join("testdata", "index", tc.name+".caibx"))
			if err != nil {
				t.Fatalf("fixture missing (make it with -update-index-fixtures, see testdata/README-index.md): %v", err)
			}
			x, err := ReadIndex(bytes.NewReader(want))
			if err != nil {
				t.Fatalf("ReadIndex(%s) = %v", tc.name, err)
			}
			var b bytes.Buffer
			if _, err := x.WriteTo(&b); err != nil || !bytes.Equal(b.Bytes(), want) {
				t.Fatalf("WriteTo(ReadIndex(%s)) = %d bytes, %v; want the %d fixture bytes", tc.name, b.Len(), err, len(want))
			}
			blob := tc.blob()
			if x.Length() != uint64(len(blob)) {
				t.Errorf("Length() = %d, want %d", x.Length(), len(blob))
			}
			if x.Digest() != tc.opts.Digest {
				t.Errorf("Digest() = %v, want %v", x.Digest(), tc.opts.Digest)
			}
			for i, c := range x.Chunks {
				if err := VerifyChunk(x.Digest(), c.ID, blob[c.Start:c.Start+c.Size]); err != nil {
					t.Fatalf("chunk %d: %v", i, err)
				}
			}
			if got := ourIndex(t, blob, IndexBlobFlags, tc.opts); !bytes.Equal(got, want) {
				t.Fatalf("our caibx of %s differs from the casync fixture: %s", tc.name, diffIndex(got, want))
			}
		})
	}
}

// TestMinCut checks that a chunk of exactly min bytes is cut where casync
// cuts it. desync v1.1.0 starts testing one byte later and misses it.
func TestMinCut(t *testing.T) {
	for _, s := range []ChunkSize{DefaultChunkSize, {1 << 10, 4 << 10, 16 << 10}} {
		t.Run(s.String(), func(t *testing.T) {
			blob := minCutInput(s, 3, 50_000)
			sizes := cutAll(t, bytes.NewReader(blob), ChunkOptions{Size: s})
			for i := range 3 {
				if sizes[i] != int(s.Min) {
					t.Fatalf("chunk sizes = %v, want the first three of size %d", head(sizes), s.Min)
				}
			}
		})
	}
	t.Run("casync", func(t *testing.T) {
		blob := minCutInput(DefaultChunkSize, 3, 100_000)
		x, err := ReadIndex(bytes.NewReader(casyncMakeBlob(t, blob)))
		if err != nil {
			t.Fatal(err)
		}
		for i := range 3 {
			if x.Chunks[i].Size != DefaultChunkSizeMin {
				t.Fatalf("casync chunk %d has size %d, want %d", i, x.Chunks[i].Size, DefaultChunkSizeMin)
			}
		}
	})
}

// TestIndexCasyncTree chunks catar archives that casync made from
// directory trees and compares with casync's own caidx of the same tree:
// a real tree (Go's src/encoding) live, and a generated one from fixtures.
func TestIndexCasyncTree(t *testing.T) {
	t.Run("goroot", func(t *testing.T) {
		bin := testenv.LookPath(t, "go")
		out, err := exec.Command(bin, "env", "GOROOT").Output()
		if err != nil {
			t.Skipf("go env GOROOT: %v", err)
		}
		tree := filepath.Join(strings.TrimSpace(string(out)), "src", "encoding")
		if _, err := os.Stat(tree); err != nil {
			testenv.Skip(t, "no Go source tree: "+err.Error())
		}
		for _, args := range [][]string{nil, {"--chunk-size=4K:16K:64K", "--digest=sha256"}} {
			catar := casyncMake(t, tree, "tree.catar", args...)
			caidx := casyncMake(t, tree, "tree.caidx", args...)
			checkTreeIndex(t, catar, caidx)
		}
	})
	t.Run("fixture", func(t *testing.T) {
		dir := filepath.Join("testdata", "index")
		if *updateIndexFixtures {
			tree := makeTree(t)
			writeFixture(t, filepath.Join(dir, "tree.catar.zst"), CompressChunk(nil, casyncMake(t, tree, "tree.catar", treeArgs...)))
			writeFixture(t, filepath.Join(dir, "tree.caidx"), casyncMake(t, tree, "tree.caidx", treeArgs...))
		}
		z, err := os.ReadFile(filepath.Join(dir, "tree.catar.zst"))
		if err != nil {
			t.Fatal(err)
		}
		catar, err := DecompressChunk(nil, z)
		if err != nil {
			t.Fatal(err)
		}
		caidx, err := os.ReadFile(filepath.Join(dir, "tree.caidx"))
		if err != nil {
			t.Fatal(err)
		}
		checkTreeIndex(t, catar, caidx)
	})
}

// treeArgs are the casync make arguments of the tree fixture.
var treeArgs = []string{"--chunk-size=4K:16K:64K"}

// checkTreeIndex chunks catar with the parameters and flags of the caidx
// casync made and wants the same bytes.
func checkTreeIndex(t *testing.T, catar, caidx []byte) {
	t.Helper()
	want, err := ReadIndex(bytes.NewReader(caidx))
	if err != nil {
		t.Fatalf("ReadIndex(casync caidx) = %v", err)
	}
	if len(want.Chunks) < 10 {
		t.Fatalf("casync caidx has %d chunks; the test needs more", len(want.Chunks))
	}
	opts := ChunkOptions{Digest: want.Digest(), Size: ChunkSize{want.ChunkSizeMin, want.ChunkSizeAvg, want.ChunkSizeMax}}
	if got := ourIndex(t, catar, want.Flags, opts); !bytes.Equal(got, caidx) {
		t.Fatalf("our caidx of casync's catar differs from casync's caidx: %s", diffIndex(got, caidx))
	}
}

// makeTree writes a small deterministic tree of text and binary files,
// with some duplicated content, fixed modes and mtimes.
func makeTree(t testing.TB) string {
	t.Helper()
	root := t.TempDir()
	var key [32]byte
	key[0] = 5
	src := rand.NewChaCha8(key)
	for i := range 40 {
		dir := filepath.Join(root, fmt.Sprintf("d%d", i%5), fmt.Sprintf("s%d", i%3))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		n := int(src.Uint64()%40_000) + 1
		var b []byte
		switch i % 4 {
		case 0, 1:
			b = textBytes(uint64(i), n)
		case 2:
			b = make([]byte, n/8) // incompressible: keep the fixture small
			src.Read(b)
		case 3:
			b = textBytes(uint64(i-3), n) // shares a prefix with file i-3
		}
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%02d", i)), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// Fix every mtime, deepest first, so the archive does not depend on
	// when it was made.
	var paths []string
	filepath.Walk(root, func(p string, _ os.FileInfo, err error) error {
		paths = append(paths, p)
		return err
	})
	mtime := time.Unix(1600000000, 123456789)
	for i := len(paths) - 1; i >= 0; i-- {
		if err := os.Chtimes(paths[i], mtime, mtime); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestReadIndexErrors(t *testing.T) {
	valid := ourIndex(t, input("random", 300_000), IndexBlobFlags, ChunkOptions{Size: ChunkSize{4 << 10, 16 << 10, 64 << 10}})
	n := (len(valid) - indexHeaderSize - tableHeaderSize - tableTailSize) / tableItemSize
	if n < 5 {
		t.Fatalf("test index has %d chunks, want at least 5", n)
	}
	item := func(i int) int { return indexHeaderSize + tableHeaderSize + i*tableItemSize }
	tail := item(n)
	put := func(off int, v uint64) func([]byte) []byte {
		return func(b []byte) []byte { binary.LittleEndian.PutUint64(b[off:], v); return b }
	}
	end := func(i int) uint64 { return binary.LittleEndian.Uint64(valid[item(i):]) }
	tests := []struct {
		name   string
		mutate func([]byte) []byte
		err    string
	}{
		{name: "empty file", mutate: func(b []byte) []byte { return nil }, err: "truncated"},
		{name: "short header", mutate: func(b []byte) []byte { return b[:30] }, err: "truncated"},
		{name: "bad magic", mutate: put(8, 0x1234), err: "not a caidx"},
		{name: "bad header size", mutate: put(0, 64), err: "not a caidx"},
		{name: "unknown flag", mutate: put(16, IndexSHA512_256|0x0800000000000000), err: "unknown feature flags"},
		{name: "unnormalized flags", mutate: put(16, idxFlagNsecTime|idxFlagSecTime), err: "not normalized"},
		{name: "min zero", mutate: put(24, 0), err: "out of range"},
		{name: "max too large", mutate: put(40, ChunkSizeLimitMax+1), err: "out of range"},
		{name: "min above avg", mutate: put(24, 32<<10), err: "not ordered"},
		{name: "table size", mutate: put(48, 100), err: "table header"},
		{name: "table type", mutate: put(56, 1), err: "table header"},
		{name: "truncated table", mutate: func(b []byte) []byte { return b[:item(2)+7] }, err: "truncated"},
		{name: "no tail", mutate: func(b []byte) []byte { return b[:tail] }, err: "truncated"},
		{name: "offsets not increasing", mutate: put(item(2), end(0)), err: "not after previous"},
		{name: "chunk above max", mutate: put(item(1), end(0)+64<<10+1), err: "exceeds max"},
		{name: "chunk below min", mutate: func([]byte) []byte { return rawIndex(IndexBlobFlags, 100, 200, 400, 300, 350, 450) }, err: "below min"},
		{name: "tail fill", mutate: put(tail+8, 1), err: "non-zero fill"},
		{name: "tail index offset", mutate: put(tail+16, 47), err: "index offset"},
		{name: "tail size", mutate: put(tail+24, 1<<40), err: "table size"},
		{name: "tail marker", mutate: put(tail+32, 1), err: "marker"},
		{name: "trailing garbage", mutate: func(b []byte) []byte { return append(b, 0) }, err: "trailing data"},
		{name: "billion chunks claimed", mutate: func(b []byte) []byte {
			b = append(b[:tail:tail], make([]byte, tableTailSize)...)
			binary.LittleEndian.PutUint64(b[tail+16:], indexHeaderSize)
			binary.LittleEndian.PutUint64(b[tail+24:], tableHeaderSize+1e9*tableItemSize+tableTailSize)
			binary.LittleEndian.PutUint64(b[tail+32:], tableTailMarker)
			return b
		}, err: "table size"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := tt.mutate(bytes.Clone(valid))
			x, err := ReadIndex(bytes.NewReader(b))
			if err == nil || !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), tt.err) {
				t.Fatalf("ReadIndex(%s) = %v, %v; want ErrFormat containing %q", tt.name, x, err, tt.err)
			}
		})
	}
	t.Run("read error", func(t *testing.T) {
		boom := errors.New("boom")
		_, err := ReadIndex(io.MultiReader(bytes.NewReader(valid[:100]), errReader{boom}))
		if !errors.Is(err, boom) || errors.Is(err, ErrFormat) {
			t.Fatalf("ReadIndex(failing reader) = %v, want %v and not ErrFormat", err, boom)
		}
	})
	t.Run("last chunk short", func(t *testing.T) {
		x, err := ReadIndex(bytes.NewReader(rawIndex(IndexBlobFlags, 100, 200, 400, 300, 400, 401)))
		if err != nil || len(x.Chunks) != 3 || x.Chunks[2] != (IndexChunk{Start: 400, Size: 1, ID: x.Chunks[2].ID}) {
			t.Fatalf("ReadIndex(last chunk of 1 byte) = %+v, %v; want 3 chunks, the last {400 1}", x, err)
		}
	})
}

// rawIndex encodes an index with the given header and end offsets, and no
// checks, for tests of what ReadIndex refuses.
func rawIndex(flags, minSize, avgSize, maxSize uint64, ends ...uint64) []byte {
	le := binary.LittleEndian
	var b []byte
	for _, v := range []uint64{indexHeaderSize, indexMagic, flags, minSize, avgSize, maxSize, ^uint64(0), tableMagic} {
		b = le.AppendUint64(b, v)
	}
	for i, e := range ends {
		b = le.AppendUint64(b, e)
		b = append(b, ChunkID{byte(i)}.String()[:32]...)
	}
	b = append(b, make([]byte, 16)...)
	b = le.AppendUint64(b, indexHeaderSize)
	b = le.AppendUint64(b, uint64(tableHeaderSize+len(ends)*tableItemSize+tableTailSize))
	return le.AppendUint64(b, tableTailMarker)
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

func TestIndexWriteToRejects(t *testing.T) {
	good := func() *Index {
		x := NewIndex(IndexBlobFlags, ChunkOptions{Size: ChunkSize{100, 200, 400}})
		x.Chunks = []IndexChunk{{0, 300, ChunkID{1}}, {300, 100, ChunkID{2}}, {400, 50, ChunkID{3}}}
		return x
	}
	tests := []struct {
		name   string
		mutate func(*Index)
		err    string
	}{
		{name: "gap", mutate: func(x *Index) { x.Chunks[1].Start = 301 }, err: "contiguous"},
		{name: "too large", mutate: func(x *Index) { x.Chunks[0].Size = 401; x.Chunks[1].Start = 401; x.Chunks[2].Start = 501 }, err: "exceeds max"},
		{name: "too small", mutate: func(x *Index) { x.Chunks[1].Size = 99; x.Chunks[2].Start = 399 }, err: "below min"},
		{name: "empty chunk", mutate: func(x *Index) { x.Chunks[2].Size = 0 }, err: "not after previous"},
		{name: "bad sizes", mutate: func(x *Index) { x.ChunkSizeAvg = 500 }, err: "not ordered"},
		{name: "bad flags", mutate: func(x *Index) { x.Flags |= 1 << 40 }, err: "unknown feature flags"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			x := good()
			tt.mutate(x)
			var b bytes.Buffer
			if n, err := x.WriteTo(&b); err == nil || !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), tt.err) || n != 0 {
				t.Fatalf("WriteTo(%s) = %d, %v; want 0 and ErrFormat containing %q", tt.name, n, err, tt.err)
			}
		})
	}
	var b bytes.Buffer
	if n, err := good().WriteTo(&b); err != nil || n != int64(b.Len()) || n != 64+3*40+40 {
		t.Fatalf("WriteTo(good) = %d, %v (wrote %d bytes), want %d", n, err, b.Len(), 64+3*40+40)
	}
	t.Run("write error", func(t *testing.T) {
		boom := errors.New("boom")
		if _, err := good().WriteTo(failWriter{boom}); !errors.Is(err, boom) {
			t.Fatalf("WriteTo(failing writer) = %v, want %v", err, boom)
		}
	})
}

type failWriter struct{ err error }

func (w failWriter) Write([]byte) (int, error) { return 0, w.err }

func TestIndexChunkAt(t *testing.T) {
	x := &Index{Chunks: []IndexChunk{{0, 10, ChunkID{}}, {10, 5, ChunkID{}}, {15, 20, ChunkID{}}}}
	tests := []struct {
		off  uint64
		want int
	}{{0, 0}, {9, 0}, {10, 1}, {14, 1}, {15, 2}, {34, 2}, {35, -1}, {1 << 62, -1}}
	for _, tt := range tests {
		if got := x.ChunkAt(tt.off); got != tt.want {
			t.Errorf("ChunkAt(%d) = %d, want %d", tt.off, got, tt.want)
		}
	}
	if got := (&Index{}).ChunkAt(0); got != -1 {
		t.Errorf("empty index: ChunkAt(0) = %d, want -1", got)
	}
	if x.Length() != 35 {
		t.Errorf("Length() = %d, want 35", x.Length())
	}
}

func TestIndexAdd(t *testing.T) {
	x := NewIndex(0, ChunkOptions{Digest: SHA256, Size: ChunkSize{1, 2, 4}})
	if x.Flags != 0 || x.Digest() != SHA256 {
		t.Errorf("NewIndex(SHA256) flags = %#x digest %v, want 0 and sha256", x.Flags, x.Digest())
	}
	if err := x.Add(Chunk{Start: 0, Size: 4}); err != nil {
		t.Fatal(err)
	}
	if err := x.Add(Chunk{Start: 5, Size: 1}); !errors.Is(err, ErrFormat) {
		t.Errorf("Add(out of order) = %v, want ErrFormat", err)
	}
	if err := x.Add(Chunk{Start: 4, Size: 5}); !errors.Is(err, ErrFormat) {
		t.Errorf("Add(above max) = %v, want ErrFormat", err)
	}
	if y := NewIndex(IndexBlobFlags, ChunkOptions{}); y.Flags != 0xb000000000000000 || y.ChunkSizeAvg != 64<<10 {
		t.Errorf("NewIndex(blob) = %#x %d, want casync's 0xb000000000000000 and 65536", y.Flags, y.ChunkSizeAvg)
	}
}

// TestIndexDesyncReads checks that desync, another casync implementation,
// reads our index the same way.
func TestIndexDesyncReads(t *testing.T) {
	blob := input("text", 1<<20)
	b := ourIndex(t, blob, IndexBlobFlags, ChunkOptions{Size: ChunkSize{4 << 10, 16 << 10, 64 << 10}})
	ours, err := ReadIndex(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	theirs, err := desync.IndexFromReader(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("desync.IndexFromReader = %v", err)
	}
	if len(theirs.Chunks) != len(ours.Chunks) {
		t.Fatalf("desync reads %d chunks, want %d", len(theirs.Chunks), len(ours.Chunks))
	}
	for i, c := range theirs.Chunks {
		if o := ours.Chunks[i]; c.Start != o.Start || c.Size != o.Size || ChunkID(c.ID) != o.ID {
			t.Fatalf("desync chunk %d = {%d %d %s}, want {%d %d %s}", i, c.Start, c.Size, c.ID, o.Start, o.Size, o.ID)
		}
	}
	if theirs.Index.ChunkSizeMin != ours.ChunkSizeMin || theirs.Index.ChunkSizeMax != ours.ChunkSizeMax || theirs.Index.FeatureFlags != ours.Flags {
		t.Errorf("desync header = %+v, want flags %#x sizes %d..%d", theirs.Index, ours.Flags, ours.ChunkSizeMin, ours.ChunkSizeMax)
	}
}

func FuzzReadIndex(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join("testdata", "index", "*.ca?dx"))
	for _, p := range files {
		if b, err := os.ReadFile(p); err == nil && len(b) < 64<<10 {
			f.Add(b)
		}
	}
	for i, s := range []ChunkSize{{64, 256, 1024}, {1, 1, 1}, {16, 64, 256}} {
		f.Add(ourIndex(f, input("text", 2000*(i+1)), IndexBlobFlags, ChunkOptions{Size: s}))
	}
	f.Add(ourIndex(f, nil, 0, ChunkOptions{Digest: SHA256}))
	f.Fuzz(func(t *testing.T, data []byte) {
		x, err := ReadIndex(bytes.NewReader(data))
		if err != nil {
			if !errors.Is(err, ErrFormat) {
				t.Fatalf("ReadIndex = %v, want an error wrapping ErrFormat", err)
			}
			return
		}
		var b bytes.Buffer
		if _, err := x.WriteTo(&b); err != nil {
			t.Fatalf("WriteTo(ReadIndex(data)) = %v", err)
		}
		if !bytes.Equal(b.Bytes(), data) {
			t.Fatalf("WriteTo(ReadIndex(data)) differs from data")
		}
		if x.Length() > 0 && x.ChunkAt(x.Length()-1) != len(x.Chunks)-1 {
			t.Fatalf("ChunkAt(Length-1) = %d, want %d", x.ChunkAt(x.Length()-1), len(x.Chunks)-1)
		}
	})
}
