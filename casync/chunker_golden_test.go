package casync

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// goldenCase is a seeded-random input whose chunk table, {offset, length,
// id} per line, is kept in testdata/chunker/NAME.golden, as restic/chunker
// keeps its own. The buzhash tables were checked against casync when they
// were recorded.
type goldenCase struct {
	name string
	blob func() []byte
	opts ChunkOptions
	args []string // casync make arguments for the same cut (buzhash only)
}

var goldenCases = []goldenCase{
	{name: "buzhash-default", blob: func() []byte { return randomBytes(42, 8<<20) }},
	{name: "buzhash-2k8k32k", blob: func() []byte { return randomBytes(43, 1<<20) },
		opts: ChunkOptions{Size: ChunkSize{2 << 10, 8 << 10, 32 << 10}}, args: []string{"--chunk-size=2K:8K:32K"}},
	{name: "rabin-default", blob: func() []byte { return randomBytes(42, 8<<20) },
		opts: ChunkOptions{Chunker: Rabin}},
	{name: "rabin-2k8k32k", blob: func() []byte { return randomBytes(43, 1<<20) },
		opts: ChunkOptions{Chunker: Rabin, Size: ChunkSize{2 << 10, 8 << 10, 32 << 10}}},
}

// formatTable writes one "offset length id" line per chunk.
func formatTable(chunks []IndexChunk) []byte {
	var b bytes.Buffer
	for _, c := range chunks {
		fmt.Fprintf(&b, "%d %d %s\n", c.Start, c.Size, c.ID)
	}
	return b.Bytes()
}

func parseTable(t *testing.T, b []byte) []IndexChunk {
	t.Helper()
	var out []IndexChunk
	sc := bufio.NewScanner(bytes.NewReader(b))
	for line := 1; sc.Scan(); line++ {
		f := strings.Fields(sc.Text())
		if len(f) != 3 {
			t.Fatalf("golden line %d: %q: want offset length id", line, sc.Text())
		}
		start, err1 := strconv.ParseUint(f[0], 10, 64)
		size, err2 := strconv.ParseUint(f[1], 10, 64)
		id, err3 := ParseChunkID(f[2])
		if err1 != nil || err2 != nil || err3 != nil {
			t.Fatalf("golden line %d: %q: %v %v %v", line, sc.Text(), err1, err2, err3)
		}
		out = append(out, IndexChunk{Start: start, Size: size, ID: id})
	}
	return out
}

func TestChunkerGolden(t *testing.T) {
	for _, tc := range goldenCases {
		t.Run(tc.name, func(t *testing.T) {
			x, err := BuildIndex(context.Background(), bytes.NewReader(tc.blob()), IndexBlobFlags, tc.opts, nil)
			if err != nil {
				t.Fatalf("BuildIndex = %v", err)
			}
			if len(x.Chunks) < 50 {
				t.Fatalf("%d chunks; a golden table needs more", len(x.Chunks))
			}
			path := filepath.Join("testdata", "chunker", tc.name+".golden")
			if *updateIndexFixtures {
				if tc.opts.Chunker != Rabin {
					want, err := ReadIndex(bytes.NewReader(casyncMakeBlob(t, tc.blob(), tc.args...)))
					if err != nil {
						t.Fatal(err)
					}
					if !bytes.Equal(formatTable(x.Chunks), formatTable(want.Chunks)) {
						t.Fatalf("chunk table differs from casync's; not recording it")
					}
				}
				writeFixture(t, path, formatTable(x.Chunks))
			}
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("golden table missing (make it with -update-index-fixtures): %v", err)
			}
			want := parseTable(t, b)
			if len(x.Chunks) != len(want) {
				t.Errorf("%d chunks, want %d", len(x.Chunks), len(want))
			}
			for i := range min(len(x.Chunks), len(want)) {
				if x.Chunks[i] != want[i] {
					g, w := x.Chunks[i], want[i]
					t.Fatalf("chunk %d = {%d %d %s}, want {%d %d %s}", i, g.Start, g.Size, g.ID, w.Start, w.Size, w.ID)
				}
			}
		})
	}
}
