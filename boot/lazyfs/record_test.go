package lazyfs

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

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
	open, hits := countingOpener(im.store)
	want := map[casync.ChunkID]bool{}
	for _, p := range []string{"/other.bin", "/big.bin"} {
		i, ok := im.tocObj.Lookup(p)
		if !ok {
			t.Fatalf("Lookup(%s) found nothing", p)
		}
		e := im.tocObj.Entry(i)
		maps.Copy(want, coveringChunks(im.idx, e.PayloadOffset, int64(e.Size)))
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

// sparseTOC builds the TOC of a tree with a file of size bytes (zeros,
// quick to chunk) at /big and a small file at /small.
func sparseTOC(t *testing.T, size int64) (*casync.TOC, int, int) {
	t.Helper()
	dir := t.TempDir()
	f, err := os.Create(filepath.Join(dir, "big"))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := os.WriteFile(filepath.Join(dir, "small"), []byte("small"), 0o644); err != nil {
		t.Fatal(err)
	}
	im := buildImage(t, dir, casync.ChunkSize{Min: 64 << 10, Avg: 256 << 10, Max: 1 << 20})
	big, ok1 := im.tocObj.Lookup("/big")
	small, ok2 := im.tocObj.Lookup("/small")
	if !ok1 || !ok2 {
		t.Fatal("no /big or /small in the TOC")
	}
	return im.tocObj, big, small
}

// TestRecorderBlocks: the parts read are recorded as whole 64 KiB blocks,
// cut to the file's end; a file read in every block is listed whole, and
// reads past the end or of nothing list nothing.
func TestRecorderBlocks(t *testing.T) {
	const size = 30 << 20
	toc, big, small := sparseTOC(t, size)
	r := NewRecorder(toc)
	r.Add(small, 5, 10)  // at the end: nothing read
	r.Add(big, size, 10) // likewise
	r.Add(big, 0, 0)
	if got := r.Entries(); len(got) != 0 {
		t.Fatalf("Entries after reads of nothing = %+v, want none", got)
	}
	r.Add(big, 100<<10, 1)            // block 1
	r.Add(small, 1, 100)              // the whole small file
	r.Add(big, 10<<20-1, 2)           // blocks 159 and 160
	r.Add(big, 10<<20+64<<10, 64<<10) // block 161: one run 159–161
	r.Add(big, size-1, 1<<20)         // the last block, cut to the end
	r.Add(big, 100<<10, 1)            // again: no change
	want := []prefetchlist.Entry{
		{Path: "/big", Ranges: []prefetchlist.Range{{Off: 64 << 10, Len: 64 << 10}, {Off: 10<<20 - 64<<10, Len: 3 * 64 << 10}, {Off: size - 64<<10, Len: 64 << 10}}},
		{Path: "/small"},
	}
	if got := r.Entries(); !reflect.DeepEqual(got, want) {
		t.Errorf("Entries() = %+v, want %+v", got, want)
	}
	// Bounded: a bit per block of the file, however it is read.
	if n := len(r.files[big].Load().words); n != (size/recordBlock+63)/64 {
		t.Errorf("the 30 MB file holds %d words of bits, want %d", n, (size/recordBlock+63)/64)
	}
	// Repeated reads of recorded blocks allocate nothing.
	if a := testing.AllocsPerRun(100, func() { r.Add(big, 10<<20, 128<<10) }); a != 0 {
		t.Errorf("a read of recorded blocks allocates %v times, want 0", a)
	}

	// Read in every block: the whole file, its path alone.
	for off := int64(0); off < size; off += 1 << 20 {
		r.Add(big, off, 1<<20)
	}
	if got := string(r.Marshal()); got != prefetchlist.Header+"\n/big\n/small\n" {
		t.Errorf("Marshal after reading all of /big = %q, want both paths alone", got)
	}
}

// TestRecorderConcurrentBlocks: many goroutines reading parts of one large
// file and a small one, under -race; every block read is recorded once.
func TestRecorderConcurrentBlocks(t *testing.T) {
	const size = 8 << 20
	toc, big, small := sparseTOC(t, size)
	r := NewRecorder(toc)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for k := range 100 {
				// Goroutine g reads blocks 2g, 2g+1 (one read across
				// them), and block 64+g, a word further.
				r.Add(big, int64(2*g)*recordBlock+recordBlock/2, recordBlock)
				r.Add(big, int64(64+g)*recordBlock, 1)
				if k%10 == 0 {
					r.Add(small, 0, 1)
					_ = r.Marshal()
				}
			}
		})
	}
	wg.Wait()
	list, err := prefetchlist.Parse(bytes.NewReader(r.Marshal()))
	if err != nil {
		t.Fatal(err)
	}
	want := []prefetchlist.Entry{
		{Path: "/big", Ranges: []prefetchlist.Range{{Off: 0, Len: 16 * recordBlock}, {Off: 64 * recordBlock, Len: 8 * recordBlock}}},
		{Path: "/small"},
	}
	if got := r.Entries(); !reflect.DeepEqual(got, want) && !reflect.DeepEqual(got, []prefetchlist.Entry{want[1], want[0]}) {
		t.Errorf("Entries() = %+v, want %+v in either order", got, want)
	}
	if len(list) != 2 {
		t.Errorf("Marshal wrote %d entries, want 2: %+v", len(list), list)
	}
}

// TestMountRecordRanges: a workload that reads a large file in three
// places, one through mmap, and two small files whole, through `boot
// mount --record`; the list it writes, mapped to chunks as mkimage
// --prefetch does, covers every chunk the reads needed and none far from
// them.
func TestMountRecordRanges(t *testing.T) {
	requireFUSE(t)
	src := t.TempDir()
	const size = 16 << 20
	files := map[string][]byte{"big.bin": randBytes(7, size), "a.txt": []byte("alpha"), "lib/b.so": randBytes(8, 100<<10)}
	for name, data := range files {
		p := filepath.Join(src, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	im := buildImage(t, src, smallChunks)
	mnt := t.TempDir()
	listFile := filepath.Join(t.TempDir(), "list")
	stop := startMount(t, im.index, mnt, MountOptions{ImageOptions: ImageOptions{Open: openStore(im.store, "")}, Record: listFile})
	for _, name := range []string{"a.txt", "lib/b.so"} {
		if _, err := os.ReadFile(filepath.Join(mnt, name)); err != nil {
			t.Fatal(err)
		}
	}
	places := []int64{0, 5<<20 + 12345, 11 << 20}
	f, err := os.Open(filepath.Join(mnt, "big.bin"))
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 100)
	for _, off := range places[:2] {
		if _, err := f.ReadAt(buf, off); err != nil || !bytes.Equal(buf, files["big.bin"][off:off+100]) {
			t.Fatalf("ReadAt(%d) = %v, or wrong bytes", off, err)
		}
	}
	m, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	if m[places[2]+7] != files["big.bin"][places[2]+7] {
		t.Error("mapped byte differs from the file's")
	}
	unix.Munmap(m)
	f.Close()
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	list, err := ReadPathList(listFile)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("--record wrote %+v", list)
	chunks, skipped, clamped := prefetchlist.Chunks(im.idx, im.tocObj, list)
	if len(skipped)+len(clamped) != 0 {
		t.Errorf("skipped %q, clamped %q; want none", skipped, clamped)
	}
	got := map[casync.ChunkID]bool{}
	for _, k := range chunks {
		got[im.idx.Chunks[k].ID] = true
	}
	payload := func(name string) int64 {
		i, ok := im.tocObj.Lookup(name)
		if !ok {
			t.Fatalf("no %s in the TOC", name)
		}
		return im.tocObj.Attr(i).PayloadOffset
	}
	bigStart := payload("/big.bin")
	need := map[casync.ChunkID]bool{} // what the reads needed
	near := map[casync.ChunkID]bool{} // and what the kernel's read-ahead may add
	for _, name := range []string{"/a.txt", "/lib/b.so"} {
		maps.Copy(need, coveringChunks(im.idx, payload(name), int64(len(files[name[1:]]))))
	}
	maps.Copy(near, need)
	for _, off := range places {
		maps.Copy(need, coveringChunks(im.idx, bigStart+off, 100))
		// Read-ahead, or read-around for a page fault.
		lo := max(off-512<<10, 0) &^ (recordBlock - 1)
		maps.Copy(near, coveringChunks(im.idx, bigStart+lo, off+1<<20-lo))
	}
	for id := range need {
		if !got[id] {
			t.Errorf("chunk %s, which a read needed, is not in the prefetch list", id)
		}
	}
	for id := range got {
		if !near[id] {
			t.Errorf("chunk %s, far from every read, is in the prefetch list", id)
		}
	}
	all := coveringChunks(im.idx, bigStart, size)
	t.Logf("the list maps to %d chunks; the reads needed %d; big.bin has %d", len(got), len(need), len(all))
	if len(got) >= len(all)/4 {
		t.Errorf("the list maps to %d chunks, want far fewer than big.bin's %d", len(got), len(all))
	}
}

// TestMountPrefetchRanges: `boot mount --prefetch` of a list with ranges
// fetches the chunks that hold them and no others; a range past the end
// is cut to the file.
func TestMountPrefetchRanges(t *testing.T) {
	requireFUSE(t)
	im := newTreeImage(t)
	i, ok := im.tocObj.Lookup("/big.bin")
	if !ok {
		t.Fatal("no /big.bin in the TOC")
	}
	e := im.tocObj.Attr(i)
	size := int64(e.Size)
	list := writeTemp(t, fmt.Sprintf("%s\n\"/big.bin\" 0+1 %d+100 %d+1000000\n", prefetchlist.Header, size/2, size-10))
	want := coveringChunks(im.idx, e.PayloadOffset, 1)
	maps.Copy(want, coveringChunks(im.idx, e.PayloadOffset+size/2, 100))
	maps.Copy(want, coveringChunks(im.idx, e.PayloadOffset+size-10, 10))
	if all := coveringChunks(im.idx, e.PayloadOffset, size); len(all) <= len(want)+2 {
		t.Fatalf("big.bin has %d chunks, too few for the test", len(all))
	}
	open, hits := countingOpener(im.store)
	stop := startMount(t, im.index, t.TempDir(), MountOptions{ImageOptions: ImageOptions{Open: open}, Prefetch: list})
	defer stop()
	waitFor(t, 30*time.Second, "the prefetch list fetched", func() bool { return hits() >= uint64(len(want)) })
	time.Sleep(200 * time.Millisecond) // time for any chunk too many
	if got := hits(); got != uint64(len(want)) {
		t.Errorf("the store served %d chunks, want the %d that hold the listed ranges", got, len(want))
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// countingOpener opens store with no cache, and reports how many chunks
// the store has served since.
func countingOpener(store string) (Opener, func() uint64) {
	var (
		mu     sync.Mutex
		opened *opener.Opened
	)
	open := func(ctx context.Context, d casync.Digest) (*opener.Opened, error) {
		o, err := openStore(store, "")(ctx, d)
		mu.Lock()
		opened = o
		mu.Unlock()
		return o, err
	}
	hits := func() uint64 {
		mu.Lock()
		defer mu.Unlock()
		if opened == nil {
			return 0
		}
		return opened.Remote.Stats().Hits
	}
	return open, hits
}
