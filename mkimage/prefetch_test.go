package mkimage

import (
	"bytes"
	"context"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
	"github.com/bootfs/bootfs/internal/prefetchlist"
)

// TestReadPrefetchPaths: both forms of a line, and errors that name the
// file and the line.
func TestReadPrefetchPaths(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    []PrefetchEntry
		wantErr string
	}{
		{name: "plain", in: "/bin/sh\n/etc/os-release\n", want: whole("/bin/sh", "/etc/os-release")},
		{name: "no final newline", in: "/a\n/b", want: whole("/a", "/b")},
		{name: "blank and comments", in: "# recorded by boot\n\n/a\n  \n", want: whole("/a")},
		{name: "quoted newline", in: "\"/odd\\nname\"\n/b\n", want: whole("/odd\nname", "/b")},
		{name: "ranges", in: "\"/a b\" 65536+10 0+4096\n", want: []PrefetchEntry{{Path: "/a b", Ranges: []prefetchlist.Range{{Off: 0, Len: 4096}, {Off: 65536, Len: 10}}}}},
		{name: "empty", in: "", want: nil},
		{name: "relative", in: "/a\netc/passwd\n", wantErr: `line 2: "etc/passwd" is not an absolute path`},
		{name: "bad quote", in: "\"/a\n", wantErr: "line 1: bad quoted path"},
		{name: "bad range", in: "\"/a\" 10\n", wantErr: `line 1: range "10" of "/a": no '+' (want OFFSET+LENGTH`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name := filepath.Join(t.TempDir(), "list")
			if err := os.WriteFile(name, []byte(tt.in), 0o644); err != nil {
				t.Fatal(err)
			}
			got, err := ReadPrefetchPaths(name)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), name) {
					t.Fatalf("ReadPrefetchPaths(%q) = %v, want error %q naming the file", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("ReadPrefetchPaths(%q) = %+v, %v, want %+v", tt.in, got, err, tt.want)
			}
		})
	}
	if _, err := ReadPrefetchPaths(filepath.Join(t.TempDir(), "missing")); err == nil || !strings.Contains(err.Error(), "prefetch list") {
		t.Errorf("ReadPrefetchPaths(missing file) = %v, want an error naming the prefetch list", err)
	}
}

// whole returns the list of the whole files paths names.
func whole(paths ...string) []PrefetchEntry {
	var list []PrefetchEntry
	for _, p := range paths {
		list = append(list, PrefetchEntry{Path: p})
	}
	return list
}

// TestPrefetchChunks checks the chunks named for a path by their content:
// together they hold the file, and each is named once.
func TestPrefetchChunks(t *testing.T) {
	src := t.TempDir()
	writeTree(t, src)
	storeDir := t.TempDir()
	sum := convert(t, Source{Kind: "dir", Path: src}, storeDir, Options{})
	store, err := chunkstore.NewLocal(storeDir, chunkstore.LocalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	join := func(ids []string) []byte {
		var b []byte
		for _, s := range ids {
			id, err := casync.ParseChunkID(s)
			if err != nil {
				t.Fatal(err)
			}
			data, err := store.GetChunk(ctx, id)
			if err != nil {
				t.Fatalf("prefetch chunk %s: %v", s, err)
			}
			b = append(b, data...)
		}
		return b
	}
	for _, name := range []string{"/etc/os-release", "/bin/tool", "/usr/lib/libx.so", "/var/log/zeros"} {
		want, err := os.ReadFile(filepath.Join(src, name))
		if err != nil {
			t.Fatal(err)
		}
		ids, skipped, _ := PrefetchChunks(sum.Index, sum.TOC, whole(name))
		if len(skipped) != 0 || len(ids) == 0 {
			t.Fatalf("PrefetchChunks(%s) = %d ids, skipped %q", name, len(ids), skipped)
		}
		// Chunks of a file are contiguous in the archive, except where one
		// chunk repeats (the zeros); then the file spans more bytes than
		// the distinct chunks hold, so check it only for the others.
		if name != "/var/log/zeros" && !bytes.Contains(join(ids), want) {
			t.Errorf("the %d chunks named for %s do not hold its %d bytes", len(ids), name, len(want))
		}
	}

	all := whole("/bin/tool", "/bin/tool-copy", "/etc/empty", "/nope", "/usr/tool", "/tmp", "/bin/tool")
	ids, skipped, _ := PrefetchChunks(sum.Index, sum.TOC, all)
	if want := []string{"/nope", "/usr/tool", "/tmp"}; !slices.Equal(skipped, want) {
		t.Errorf("skipped = %q, want %q (missing, symlink, directory)", skipped, want)
	}
	seen := map[string]bool{}
	for _, id := range ids {
		if seen[id] {
			t.Errorf("chunk %s named twice", id)
		}
		seen[id] = true
	}
	tool, _, _ := PrefetchChunks(sum.Index, sum.TOC, whole("/bin/tool"))
	if !slices.Equal(ids[:len(tool)], tool) {
		t.Errorf("the list does not start with /bin/tool's chunks in order")
	}
	if len(ids) >= 2*len(tool) {
		t.Errorf("/bin/tool and its copy need %d chunks, want fewer than %d: the copy's chunks are mostly the same", len(ids), 2*len(tool))
	}
}

// TestPrefetchChunksRanges: a 20 MB file read in three places maps to the
// few chunks that hold those places, a range across a chunk boundary to
// both chunks, and a range past the end is cut to the file and reported.
func TestPrefetchChunksRanges(t *testing.T) {
	src := t.TempDir()
	rng := rand.New(rand.NewPCG(3, 4))
	big := make([]byte, 20<<20)
	for i := range big {
		big[i] = byte(rng.Uint32())
	}
	if err := os.WriteFile(filepath.Join(src, "big"), big, 0o644); err != nil {
		t.Fatal(err)
	}
	sum := convert(t, Source{Kind: "dir", Path: src}, t.TempDir(), Options{})
	i, ok := sum.TOC.Lookup("/big")
	if !ok {
		t.Fatal("no /big in the TOC")
	}
	start := uint64(sum.TOC.Attr(i).PayloadOffset)
	idx := sum.Index
	all, _, _ := PrefetchChunks(idx, sum.TOC, whole("/big"))
	// chunksOf is the IDs of the chunks that hold file bytes [off, off+n).
	chunksOf := func(off, n uint64) map[string]bool {
		m := map[string]bool{}
		for k := idx.ChunkAt(start + off); k < len(idx.Chunks) && idx.Chunks[k].Start < start+off+n; k++ {
			m[idx.Chunks[k].ID.String()] = true
		}
		return m
	}

	// A range that ends one byte into the chunk after a boundary.
	k := idx.ChunkAt(start + 10<<20)
	boundary := idx.Chunks[k].Start + idx.Chunks[k].Size - start
	rs := []prefetchlist.Range{{Off: 0, Len: 4096}, {Off: boundary - 100, Len: 101}, {Off: 19 << 20, Len: 200 << 10}}
	ids, skipped, clamped := PrefetchChunks(idx, sum.TOC, []PrefetchEntry{{Path: "/big", Ranges: rs}})
	if len(skipped) != 0 || len(clamped) != 0 {
		t.Fatalf("skipped %q, clamped %q; want none", skipped, clamped)
	}
	want := map[string]bool{}
	for _, r := range rs {
		maps.Copy(want, chunksOf(r.Off, r.Len))
	}
	got := map[string]bool{}
	for _, id := range ids {
		got[id] = true
	}
	if !maps.Equal(got, want) || len(ids) != len(got) {
		t.Errorf("ranges map to %d chunks, want the %d that hold them", len(ids), len(want))
	}
	if b := chunksOf(boundary-100, 101); len(b) != 2 || !got[idx.Chunks[k].ID.String()] || !got[idx.Chunks[k+1].ID.String()] {
		t.Errorf("the range across the boundary of chunks %d and %d does not get both", k, k+1)
	}
	if len(ids) > 10 || len(all) < 100 {
		t.Errorf("three places of the file map to %d chunks of its %d; want a few", len(ids), len(all))
	}

	// Past the end: cut to the file, reported; wholly past: nothing.
	ids, _, clamped = PrefetchChunks(idx, sum.TOC, []PrefetchEntry{{Path: "/big", Ranges: []prefetchlist.Range{{Off: 20<<20 - 10, Len: 1 << 20}, {Off: 30 << 20, Len: 1}}}})
	last := chunksOf(20<<20-10, 10)
	if len(clamped) != 1 || len(ids) != len(last) || !last[ids[0]] {
		t.Errorf("a range past the end maps to %q, clamped %q; want the last chunk, /big clamped", ids, clamped)
	}
}
