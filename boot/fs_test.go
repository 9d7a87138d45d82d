package boot

import (
	"bytes"
	"errors"
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
	store := im.localStore(t)
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
	r := NewReader(im.idx, im.localStore(t), ReaderOptions{Retries: 1, Backoff: time.Millisecond, StoreName: "teststore"})
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
	mnt, _ := mountImage(t, im, hs, ReaderOptions{Timeout: 200 * time.Millisecond, Retries: 1, Backoff: 10 * time.Millisecond})
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
