package lazyfs

import (
	"bytes"
	"context"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore/opener"
	"github.com/bootfs/bootfs/internal/prefetchlist"
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
				r.Add(i, 0, 1<<20)
			}
			r.Add(-1, 0, 1)
			r.Add(toc.Len(), 0, 1)
			if tt.want != "" {
				tt.want = prefetchlist.Header + "\n" + tt.want
			} else {
				tt.want = prefetchlist.Header + "\n"
			}
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
	r.Add(nodes["/z"], 0, 1)
	var all []int
	for _, i := range nodes {
		if toc.Mode(i)&casync.ModeTypeMask == casync.ModeRegular {
			all = append(all, i)
		}
	}
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			for k := range 200 {
				r.Add(all[(g+k)%len(all)], 0, 1)
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
	stop := startMount(t, im.index, mnt, MountOptions{ImageOptions: ImageOptions{Open: openStore(im.store, "")}, Record: list})
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
	if want := prefetchlist.Header + "\n/small.txt\n/deep/a/b/c/d/e/leaf\n"; err != nil || string(b) != want {
		t.Errorf("--record wrote %q, %v; want %q", b, err, want)
	}
}

// TestMountPrefetch: `boot mount --prefetch LIST` fetches the content of
// the files a --record list names before any read asks for it, skips the
// names that are no regular file, and the reads then fetch nothing more.
func TestMountPrefetch(t *testing.T) {
	requireFUSE(t)
	im := newTreeImage(t)
	mnt := t.TempDir()
	list := filepath.Join(t.TempDir(), "list")
	if err := os.WriteFile(list, []byte("/other.bin\n/gone\n/many\n\n# a comment\n/big.bin\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var (
		mu     sync.Mutex
		opened *opener.Opened
	)
	open := func(ctx context.Context, d casync.Digest) (*opener.Opened, error) {
		o, err := openStore(im.store, "")(ctx, d)
		mu.Lock()
		opened = o
		mu.Unlock()
		return o, err
	}
	want := map[casync.ChunkID]bool{}
	for _, p := range []string{"/other.bin", "/big.bin"} {
		i, ok := im.tocObj.Lookup(p)
		if !ok {
			t.Fatalf("Lookup(%s) found nothing", p)
		}
		e := im.tocObj.Entry(i)
		maps.Copy(want, coveringChunks(im.idx, e.PayloadOffset, int64(e.Size)))
	}
	hits := func() uint64 {
		mu.Lock()
		defer mu.Unlock()
		if opened == nil {
			return 0
		}
		return opened.Remote.Stats().Hits
	}
	stop := startMount(t, im.index, mnt, MountOptions{ImageOptions: ImageOptions{Open: open}, Prefetch: list})
	defer stop()
	waitFor(t, 30*time.Second, "the prefetch list fetched", func() bool { return hits() >= uint64(len(want)) })
	before := hits()
	for _, name := range []string{"big.bin", "other.bin"} {
		got, err := os.ReadFile(filepath.Join(mnt, name))
		wantData, _ := os.ReadFile(filepath.Join(im.src, name))
		if err != nil || !bytes.Equal(got, wantData) {
			t.Fatalf("ReadFile(%s) = %d bytes, %v; want the file's %d", name, len(got), err, len(wantData))
		}
	}
	if after := hits(); after != before || before != uint64(len(want)) {
		t.Errorf("the store served %d chunks, then %d after the reads; want the %d of the listed files, and no more", before, after, len(want))
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// TestReadPathListErrors: a list that is not --record's form fails with
// the line that is wrong, before anything is mounted.
func TestReadPathListErrors(t *testing.T) {
	for _, tc := range []struct{ name, list, want string }{
		{"relative", "/a\nusr/bin/x\n", "line 2"},
		{"bad quote", "\"/a\n", "line 1"},
		{"bad range", "/a\n\"/b\" 0-10\n", "line 2: range \"0-10\""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := filepath.Join(t.TempDir(), "list")
			if err := os.WriteFile(name, []byte(tc.list), 0o644); err != nil {
				t.Fatal(err)
			}
			if _, err := ReadPathList(name); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("ReadPathList(%q) = %v, want an error naming %s", tc.list, err, tc.want)
			}
		})
	}
	got, err := ReadPathList(writeTemp(t, "/a\n\"/b\\nc\"\n\n# x\r\n/d\r\n\"/e\" 0+10 20+5\n"))
	want := []PrefetchEntry{{Path: "/a"}, {Path: "/b\nc"}, {Path: "/d"}, {Path: "/e", Ranges: []prefetchlist.Range{{Off: 0, Len: 10}, {Off: 20, Len: 5}}}}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("ReadPathList = %+v, %v; want %+v", got, err, want)
	}
}

func writeTemp(t *testing.T, data string) string {
	t.Helper()
	name := filepath.Join(t.TempDir(), "list")
	if err := os.WriteFile(name, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	return name
}
