package mkimage

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
)

func TestParsePrefetchPaths(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    []string
		wantErr string
	}{
		{name: "plain", in: "/bin/sh\n/etc/os-release\n", want: []string{"/bin/sh", "/etc/os-release"}},
		{name: "no final newline", in: "/a\n/b", want: []string{"/a", "/b"}},
		{name: "blank and comments", in: "# recorded by boot\n\n/a\n  \n", want: []string{"/a"}},
		{name: "quoted newline", in: "\"/odd\\nname\"\n/b\n", want: []string{"/odd\nname", "/b"}},
		{name: "empty", in: "", want: nil},
		{name: "relative", in: "/a\netc/passwd\n", wantErr: `line 2: "etc/passwd" is not an absolute path`},
		{name: "bad quote", in: "\"/a\n", wantErr: "line 1: bad quoted path"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parsePrefetchPaths(strings.NewReader(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("parsePrefetchPaths(%q) = %v, want error %q", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil || !slices.Equal(got, tt.want) {
				t.Fatalf("parsePrefetchPaths(%q) = %q, %v, want %q", tt.in, got, err, tt.want)
			}
		})
	}
	if _, err := ReadPrefetchPaths(filepath.Join(t.TempDir(), "missing")); err == nil || !strings.Contains(err.Error(), "prefetch list") {
		t.Errorf("ReadPrefetchPaths(missing file) = %v, want an error naming the prefetch list", err)
	}
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
		ids, skipped := PrefetchChunks(sum.Index, sum.TOC, []string{name})
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

	all := []string{"/bin/tool", "/bin/tool-copy", "/etc/empty", "/nope", "/usr/tool", "/tmp", "/bin/tool"}
	ids, skipped := PrefetchChunks(sum.Index, sum.TOC, all)
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
	tool, _ := PrefetchChunks(sum.Index, sum.TOC, []string{"/bin/tool"})
	if !slices.Equal(ids[:len(tool)], tool) {
		t.Errorf("the list does not start with /bin/tool's chunks in order")
	}
	if len(ids) >= 2*len(tool) {
		t.Errorf("/bin/tool and its copy need %d chunks, want fewer than %d: the copy's chunks are mostly the same", len(ids), 2*len(tool))
	}
}
