package lazyfs

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
)

func newTreeImage(t *testing.T) *testImage {
	t.Helper()
	requireFUSE(t)
	src := t.TempDir()
	makeTree(t, src)
	return buildImage(t, src, smallChunks)
}

// nodeInfo is what a tree comparison looks at for one path.
type nodeInfo struct {
	Mode     uint32
	UID, GID uint32
	Size     int64
	Mtime    unix.Timespec
	Rdev     uint64
	Link     string
	Xattrs   map[string]string
	Content  []byte
	Nlink    uint64
	IsDir    bool
}

// walkTree lstat()s every node under root; with content it also reads
// every regular file.
func walkTree(t *testing.T, root string, content bool) map[string]nodeInfo {
	t.Helper()
	out := make(map[string]nodeInfo)
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		ni := nodeInfo{Mode: st.Mode, UID: st.Uid, GID: st.Gid, Mtime: st.Mtim, Xattrs: map[string]string{}}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			ni.Size = st.Size
			if content {
				if ni.Content, err = os.ReadFile(p); err != nil {
					return err
				}
			}
		case unix.S_IFLNK:
			ni.Size = st.Size
			if ni.Link, err = os.Readlink(p); err != nil {
				return err
			}
		case unix.S_IFCHR, unix.S_IFBLK:
			ni.Rdev = st.Rdev
		case unix.S_IFDIR:
			ni.IsDir = true
			ni.Nlink = st.Nlink
		}
		buf := make([]byte, 4096)
		n, err := unix.Llistxattr(p, buf)
		if err != nil {
			return err
		}
		for _, name := range strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00") {
			if name == "" || !(strings.HasPrefix(name, "user.") || name == "security.capability") {
				continue
			}
			v := make([]byte, 4096)
			vn, err := unix.Lgetxattr(p, name, v)
			if err != nil {
				return err
			}
			ni.Xattrs[name] = string(v[:vn])
		}
		out[rel] = ni
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", root, err)
	}
	return out
}

func TestMountMatchesSource(t *testing.T) {
	im := newTreeImage(t)
	mnt, _ := mountImage(t, im, im.localStore(t), ReaderOptions{})

	want := walkTree(t, im.src, true)
	got := walkTree(t, mnt, true)
	for p, w := range want {
		g, ok := got[p]
		if !ok {
			t.Errorf("mount has no %q", p)
			continue
		}
		if p == "." {
			// The root's own metadata is the source directory's.
			g.Mode, w.Mode = 0, 0
		}
		if !bytes.Equal(g.Content, w.Content) {
			t.Errorf("content of %q differs: %d bytes, want %d", p, len(g.Content), len(w.Content))
		}
		g.Content, w.Content = nil, nil
		if g.Link != w.Link || g.Mode != w.Mode || g.UID != w.UID || g.GID != w.GID || g.Size != w.Size ||
			g.Mtime != w.Mtime || g.Rdev != w.Rdev || g.Nlink != w.Nlink || !equalMaps(g.Xattrs, w.Xattrs) {
			t.Errorf("lstat(%q) = %+v, want %+v", p, g, w)
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			t.Errorf("mount has %q, source does not", p)
		}
	}
	// casync is the oracle for everything it records.
	args := casync.CasyncMakeArgs
	if g, w := casyncDigest(t, mnt, args...), casyncDigest(t, im.src, args...); g != w {
		t.Errorf("casync digest of the mount = %s, of the source %s", g, w)
	}
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// Listing and stat()ing the whole tree, reading links and xattrs needs no
// chunk: the TOC answers everything.
func TestMountMetadataFetchesNothing(t *testing.T) {
	im := newTreeImage(t)
	store := chunkstore.NewCounted(im.localStore(t))
	mnt, r := mountImage(t, im, store, ReaderOptions{})
	walkTree(t, mnt, false)
	var sfs unix.Statfs_t
	if err := unix.Statfs(mnt, &sfs); err != nil {
		t.Fatalf("statfs: %v", err)
	}
	if s := store.Stats(); s.Requests != 0 {
		t.Errorf("store Stats() after a metadata walk = %+v, want 0 requests", s)
	}
	if s := r.Stats(); s.ChunksFetched != 0 {
		t.Errorf("reader Stats() after a metadata walk = %+v, want nothing fetched", s)
	}
}

// Reading a small file fetches exactly the chunks that hold it.
func TestMountReadFetchesOnlyItsChunks(t *testing.T) {
	im := newTreeImage(t)
	for _, name := range []string{"small.txt", "deep/a/b/c/d/e/leaf", "other.bin", "many/m.txt"} {
		t.Run(name, func(t *testing.T) {
			rec := newRecordingStore(im.localStore(t))
			mnt, _ := mountImage(t, im, rec, ReaderOptions{})
			got, err := os.ReadFile(filepath.Join(mnt, name))
			if err != nil {
				t.Fatal(err)
			}
			want, _ := os.ReadFile(filepath.Join(im.src, name))
			if !bytes.Equal(got, want) {
				t.Fatalf("ReadFile(%s) returned wrong bytes", name)
			}
			e := im.entry(t, name)
			need := coveringChunks(im.idx, e.PayloadOffset, int64(e.Size))
			fetched := rec.fetched()
			for id, n := range fetched {
				if !need[id] {
					t.Errorf("read of %s fetched chunk %s, which does not hold it", name, id)
				}
				if n != 1 {
					t.Errorf("read of %s fetched chunk %s %d times, want once", name, id, n)
				}
			}
			for id := range need {
				if fetched[id] == 0 {
					t.Errorf("read of %s did not fetch chunk %s, which holds it", name, id)
				}
			}
		})
	}
}

func TestMountRandomReads(t *testing.T) {
	im := newTreeImage(t)
	mnt, _ := mountImage(t, im, im.localStore(t), ReaderOptions{CacheBytes: 128 << 10})
	rng := rand.New(rand.NewPCG(5, 6))
	for _, name := range []string{"big.bin", "other.bin", "bin/sgid"} {
		want, _ := os.ReadFile(filepath.Join(im.src, name))
		f, err := os.Open(filepath.Join(mnt, name))
		if err != nil {
			t.Fatal(err)
		}
		for range 200 {
			off := rng.Int64N(int64(len(want)) + 10)
			p := make([]byte, rng.IntN(300<<10))
			n, err := f.ReadAt(p, off)
			wantN := max(0, min(len(p), len(want)-int(off)))
			if n != wantN || (err != nil && err != io.EOF) {
				t.Fatalf("ReadAt(%s, %d bytes, %d) = %d, %v, want %d", name, len(p), off, n, err, wantN)
			}
			if n > 0 && !bytes.Equal(p[:n], want[off:off+int64(n)]) {
				t.Fatalf("ReadAt(%s, %d bytes, %d) returned wrong bytes", name, len(p), off)
			}
		}
		f.Close()
	}
}

// A corrupt chunk gives EIO for the file that needs it, and one log line
// naming the chunk, the store and the path; other files still read.
func TestMountCorruptChunk(t *testing.T) {
	im := newTreeImage(t)
	e := im.entry(t, "big.bin")
	var bad casync.IndexChunk
	for _, c := range im.idx.Chunks {
		if int64(c.Start) > e.PayloadOffset && int64(c.Start+c.Size) < e.PayloadOffset+int64(e.Size) {
			bad = c
			break
		}
	}
	name := filepath.Join(im.store, chunkstore.ChunkPath(bad.ID))
	if err := os.WriteFile(name, casync.CompressChunk(nil, []byte("not the chunk")), 0o644); err != nil {
		t.Fatal(err)
	}
	requireFUSE(t)
	log, w := newTestLog(t)
	store := chunkstore.NewCountedRetry(im.localStore(t), chunkstore.RetryOptions{Retries: 1, Backoff: time.Millisecond})
	r := NewReader(im.idx, store, ReaderOptions{StoreName: "teststore"})
	defer r.Close()
	fsys, err := NewFS(im.tocObj, r, FSOptions{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	mnt := t.TempDir()
	srv, err := fsys.Mount(mnt)
	if err != nil {
		t.Fatal(err)
	}
	defer Unmount(srv, mnt, nil)

	for range 2 {
		_, err = os.ReadFile(filepath.Join(mnt, "big.bin"))
		if !errors.Is(err, syscall.EIO) {
			t.Fatalf("ReadFile(big.bin with a corrupt chunk) = %v, want EIO", err)
		}
	}
	if lines := w.grep("level=ERROR", bad.ID.String(), "teststore", "path=/big.bin"); len(lines) != 1 {
		t.Errorf("log has %d error lines naming chunk, store and path, want 1:\n%s", len(lines), strings.Join(w.grep("level=ERROR"), ""))
	}
	for _, other := range []string{"other.bin", "small.txt", "many/z.txt"} {
		got, err := os.ReadFile(filepath.Join(mnt, other))
		want, _ := os.ReadFile(filepath.Join(im.src, other))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("ReadFile(%s) next to a corrupt chunk = %v, want its content", other, err)
		}
	}
	// The bytes before the corrupt chunk still read.
	f, err := os.Open(filepath.Join(mnt, "big.bin"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p := make([]byte, 4096)
	if _, err := f.ReadAt(p, 0); err != nil {
		t.Errorf("ReadAt(big.bin, 0) before the corrupt chunk = %v, want nil", err)
	}
}

// A store that hangs gives EIO within the timeout, not a hung read.
func TestMountHangingStore(t *testing.T) {
	im := newTreeImage(t)
	hs := &hangingStore{Store: im.localStore(t), ignoreCtx: true, release: make(chan struct{})}
	defer close(hs.release)
	store := chunkstore.NewCountedRetry(hs, chunkstore.RetryOptions{Timeout: 200 * time.Millisecond, Retries: 1, Backoff: 10 * time.Millisecond})
	mnt, _ := mountImage(t, im, store, ReaderOptions{})
	start := time.Now()
	done := make(chan error, 1)
	go func() {
		_, err := os.ReadFile(filepath.Join(mnt, "small.txt"))
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, syscall.EIO) {
			t.Fatalf("ReadFile(hanging store) = %v, want EIO", err)
		}
		if took := time.Since(start); took > 3*time.Second {
			t.Errorf("ReadFile(hanging store) took %v, want about 410ms", took)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("ReadFile(hanging store) hangs")
	}
}

func TestMountConcurrentReaders(t *testing.T) {
	im := newTreeImage(t)
	mnt, _ := mountImage(t, im, im.localStore(t), ReaderOptions{Jobs: 3, CacheBytes: 256 << 10})
	names := []string{"big.bin", "other.bin", "bin/sgid", "bin/suid", "deep/a/b/c/d/e/leaf", "many/q.txt"}
	src := make(map[string][]byte)
	for _, n := range names {
		src[n], _ = os.ReadFile(filepath.Join(im.src, n))
	}
	var wg sync.WaitGroup
	errs := make(chan string, 8)
	for g := range 8 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 9))
			for range 60 {
				name := names[rng.IntN(len(names))]
				want := src[name]
				f, err := os.Open(filepath.Join(mnt, name))
				if err != nil {
					errs <- err.Error()
					return
				}
				off := rng.Int64N(int64(len(want)))
				p := make([]byte, rng.IntN(200<<10)+1)
				n, err := f.ReadAt(p, off)
				f.Close()
				if (err != nil && err != io.EOF) || !bytes.Equal(p[:n], want[off:off+int64(n)]) || n != min(len(p), len(want)-int(off)) {
					errs <- "wrong bytes from " + name
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

func TestMountIsReadOnly(t *testing.T) {
	im := newTreeImage(t)
	mnt, _ := mountImage(t, im, im.localStore(t), ReaderOptions{})
	for _, tc := range []struct {
		name string
		op   func() error
	}{
		{name: "open for writing", op: func() error {
			f, err := os.OpenFile(filepath.Join(mnt, "small.txt"), os.O_WRONLY, 0)
			if err == nil {
				f.Close()
			}
			return err
		}},
		{name: "create", op: func() error { return os.WriteFile(filepath.Join(mnt, "new"), nil, 0o644) }},
		{name: "mkdir", op: func() error { return os.Mkdir(filepath.Join(mnt, "newdir"), 0o755) }},
		{name: "remove", op: func() error { return os.Remove(filepath.Join(mnt, "small.txt")) }},
		{name: "chmod", op: func() error { return os.Chmod(filepath.Join(mnt, "small.txt"), 0o777) }},
		{name: "setxattr", op: func() error { return unix.Setxattr(filepath.Join(mnt, "small.txt"), "user.x", []byte("y"), 0) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.op(); !errors.Is(err, syscall.EROFS) {
				t.Errorf("%s on the mount = %v, want EROFS", tc.name, err)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(mnt, "nope")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Stat(missing) = %v, want ErrNotExist", err)
	}
	ents, err := os.ReadDir(mnt)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	wantEnts, _ := os.ReadDir(im.src)
	var want []string
	for _, e := range wantEnts {
		want = append(want, e.Name())
	}
	if !slices.Equal(names, want) {
		t.Errorf("ReadDir(mount) = %q, want %q", names, want)
	}
}

// A file read once is served from the kernel's page cache afterwards, by
// any process that opens it: no read reaches the filesystem again.
func TestMountKeepsPageCacheAcrossOpens(t *testing.T) {
	im := newTreeImage(t)
	mnt, r := mountImage(t, im, im.localStore(t), ReaderOptions{})
	want, _ := os.ReadFile(filepath.Join(im.src, "big.bin"))
	for i := range 3 {
		// Read-ahead that the last read started counts memory hits
		// of its own as it ends.
		waitFor(t, 5*time.Second, "read-ahead to end", func() bool {
			return r.aheadInFlight.Load() == 0 && !r.aheadRunning.Load()
		})
		before := r.Stats()
		got, err := os.ReadFile(filepath.Join(mnt, "big.bin"))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("read %d of big.bin returned wrong bytes", i+1)
		}
		after := r.Stats()
		if i == 0 && after.ChunksFetched == before.ChunksFetched {
			t.Fatalf("the first read fetched nothing: %+v", after)
		}
		if i > 0 && after != before {
			t.Errorf("read %d of big.bin reached the filesystem: stats %+v, then %+v", i+1, before, after)
		}
	}
}

// A directory too big for one FUSE reply lists completely and in order,
// in small batches, again after a rewind, from a position taken in the
// middle, and by several processes at once.
func TestMountBigDirectory(t *testing.T) {
	requireFUSE(t)
	src := t.TempDir()
	var want []string
	for i := range 1500 {
		name := fmt.Sprintf("entry-%04d-%s", i, strings.Repeat("n", i%100))
		want = append(want, name)
		if i%10 == 0 {
			if err := os.Mkdir(filepath.Join(src, name), 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.WriteFile(filepath.Join(src, name), []byte(name), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	im := buildImage(t, src, smallChunks)
	mnt, _ := mountImage(t, im, im.localStore(t), ReaderOptions{})

	f, err := os.Open(mnt)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var got []string
	for {
		names, err := f.Readdirnames(7)
		got = append(got, names...)
		if err == io.EOF || len(got) > 2*len(want) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("listing in batches of 7: %d names, want %d (first difference at %d)", len(got), len(want), firstDiff(got, want))
	}

	// Rewind, then list with getdents and note each entry's offset.
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	ents := getdents(t, int(f.Fd()))
	if names := direntNames(ents); !slices.Equal(names, want) {
		t.Fatalf("listing after a rewind: %d names, want %d (first difference at %d)", len(names), len(want), firstDiff(names, want))
	}
	for _, k := range []int{1, 137, 1000, len(ents) - 2} {
		if _, err := unix.Seek(int(f.Fd()), ents[k].off, io.SeekStart); err != nil {
			t.Fatal(err)
		}
		rest := direntNames(getdents(t, int(f.Fd())))
		if wantRest := direntNames(ents[k+1:]); !slices.Equal(rest, wantRest) {
			t.Errorf("listing from the offset of entry %d: %d names, want %d (first difference at %d)", k, len(rest), len(wantRest), firstDiff(rest, wantRest))
		}
	}

	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for range 5 {
				names, err := readDirNames(filepath.Join(mnt))
				if err != nil {
					t.Errorf("lister %d: %v", g, err)
					return
				}
				if !slices.Equal(names, want) {
					t.Errorf("lister %d: %d names, want %d (first difference at %d)", g, len(names), len(want), firstDiff(names, want))
					return
				}
			}
		})
	}
	wg.Wait()
	for _, name := range []string{want[0], want[1], want[999], want[1499]} {
		st, err := os.Stat(filepath.Join(mnt, name))
		if err != nil {
			t.Fatal(err)
		}
		if wantDir := name == want[0]; st.IsDir() != wantDir {
			t.Errorf("%s: IsDir = %v, want %v", name, st.IsDir(), wantDir)
		}
	}
}

func readDirNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var names []string
	for len(names) <= 10000 { // a listing that never ends fails, not hangs
		batch, err := f.Readdirnames(100)
		names = append(names, batch...)
		if err == io.EOF {
			return names, nil
		}
		if err != nil {
			return names, err
		}
	}
	return names, nil
}

type dirent struct {
	name string
	off  int64
}

// getdents lists fd from its position with getdents64, in small reads,
// leaving out "." and "..".
func getdents(t *testing.T, fd int) []dirent {
	t.Helper()
	var out []dirent
	buf := make([]byte, 2048)
	for {
		n, err := unix.Getdents(fd, buf)
		if err != nil {
			t.Fatalf("getdents: %v", err)
		}
		if n == 0 || len(out) > 10000 {
			return out // the end, or a listing that never ends
		}
		for b := buf[:n]; len(b) > 0; {
			// struct linux_dirent64: ino u64, off s64, reclen u16, type u8, name.
			off := int64(binary.NativeEndian.Uint64(b[8:16]))
			reclen := binary.NativeEndian.Uint16(b[16:18])
			name := string(b[19:reclen])
			name = name[:strings.IndexByte(name, 0)]
			if name != "." && name != ".." {
				out = append(out, dirent{name: name, off: off})
			}
			b = b[reclen:]
		}
	}
}

func direntNames(ents []dirent) []string {
	var names []string
	for _, e := range ents {
		names = append(names, e.name)
	}
	return names
}

func firstDiff(a, b []string) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
