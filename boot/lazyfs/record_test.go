package lazyfs

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/bootfs/bootfs/casync"
)

// recordTOC builds the TOC of a small tree, with a name holding a
// newline, and returns it with the node index of each path.
func recordTOC(t *testing.T) (*casync.TOC, map[string]int) {
	t.Helper()
	dir := t.TempDir()
	for _, name := range []string{"a", "b/c", "b/d", "e", "new\nline", "z"} {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(name), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	im := buildImage(t, dir, smallChunks)
	nodes := make(map[string]int)
	for i := range im.tocObj.Len() {
		nodes["/"+im.tocObj.Path(i)] = i
	}
	return im.tocObj, nodes
}

func TestRecorder(t *testing.T) {
	toc, nodes := recordTOC(t)
	tests := []struct {
		name  string
		reads []string
		want  string
	}{
		{name: "none", reads: nil, want: ""},
		{name: "first-read order", reads: []string{"/z", "/b/c", "/a"}, want: "/z\n/b/c\n/a\n"},
		{name: "each once", reads: []string{"/e", "/a", "/e", "/e", "/a", "/b/d"}, want: "/e\n/a\n/b/d\n"},
		{name: "newline quoted", reads: []string{"/new\nline", "/a"}, want: "\"/new\\nline\"\n/a\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := NewRecorder(toc)
			for _, p := range tt.reads {
				i, ok := nodes[p]
				if !ok {
					t.Fatalf("no node %q in the TOC", p)
				}
				r.Add(i)
			}
			r.Add(-1)
			r.Add(toc.Len())
			if got := string(r.Marshal()); got != tt.want {
				t.Errorf("Marshal after reads %q = %q, want %q", tt.reads, got, tt.want)
			}
			out := filepath.Join(t.TempDir(), "list")
			if err := r.WriteFile(out); err != nil {
				t.Fatal(err)
			}
			if b, err := os.ReadFile(out); err != nil || string(b) != tt.want {
				t.Errorf("WriteFile wrote %q, %v; want %q", b, err, tt.want)
			}
		})
	}
}

// TestRecorderConcurrent: many readers of overlapping files; each file
// is listed once, and a file one goroutine read before another started
// comes first.
func TestRecorderConcurrent(t *testing.T) {
	toc, nodes := recordTOC(t)
	r := NewRecorder(toc)
	r.Add(nodes["/z"])
	var all []int
	for _, i := range nodes {
		all = append(all, i)
	}
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			for k := range 200 {
				r.Add(all[(g+k)%len(all)])
				_ = r.Paths()
			}
		})
	}
	wg.Wait()
	got := r.Paths()
	if len(got) != len(all) || got[0] != "/z" {
		t.Fatalf("Paths() = %q, want %d paths, /z first", got, len(all))
	}
	sorted := slices.Clone(got)
	slices.Sort(sorted)
	if len(slices.Compact(sorted)) != len(got) {
		t.Errorf("Paths() has duplicates: %q", got)
	}
	for _, p := range got {
		if !strings.HasPrefix(p, "/") {
			t.Errorf("Paths() has %q, want absolute paths", p)
		}
	}
}

// TestMountRecord: `boot mount --record` lists the files whose content
// was read, not those only looked up or listed.
func TestMountRecord(t *testing.T) {
	requireFUSE(t)
	im := newTreeImage(t)
	mnt := t.TempDir()
	list := filepath.Join(t.TempDir(), "list")
	stop := startMount(t, im.index, mnt, MountOptions{ImageOptions: ImageOptions{Store: im.store}, Record: list})
	for _, name := range []string{"small.txt", "deep/a/b/c/d/e/leaf", "small.txt"} {
		if _, err := os.ReadFile(filepath.Join(mnt, name)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(filepath.Join(mnt, "big.bin")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.ReadDir(filepath.Join(mnt, "many")); err != nil {
		t.Fatal(err)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(list)
	if want := "/small.txt\n/deep/a/b/c/d/e/leaf\n"; err != nil || string(b) != want {
		t.Errorf("--record wrote %q, %v; want %q", b, err, want)
	}
}
