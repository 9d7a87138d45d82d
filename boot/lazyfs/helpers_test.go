package lazyfs

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
	"github.com/bootfs/bootfs/internal/testenv"
)

// smallChunks makes many chunks out of small trees.
var smallChunks = casync.ChunkSize{Min: 4 << 10, Avg: 16 << 10, Max: 64 << 10}

// randBytes returns n pseudo-random bytes from seed.
func randBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for k := range 8 {
			b[i+k] = byte(v >> (8 * k))
		}
	}
	for i := n &^ 7; i < n; i++ {
		b[i] = byte(r.Uint32())
	}
	return b
}

// capV2 is a valid security.capability value (VFS_CAP_REVISION_2,
// effective, permitted CAP_NET_BIND_SERVICE).
var capV2 = []byte{0x01, 0x00, 0x00, 0x02, 0x00, 0x04, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}

// makeTree fills dir with a tree that has every kind of node and metadata
// a catar holds. Device nodes, owners and security.capability need root.
func makeTree(t testing.TB, dir string) {
	t.Helper()
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("make tree: %s: %v", what, err)
		}
	}
	file := func(name string, data []byte, mode os.FileMode) {
		t.Helper()
		p := filepath.Join(dir, name)
		must("mkdir", os.MkdirAll(filepath.Dir(p), 0o755))
		must("write "+name, os.WriteFile(p, data, 0o644))
		must("chmod "+name, os.Chmod(p, mode))
	}
	file("empty", nil, 0o644)
	file("small.txt", []byte("hello, bootfs\n"), 0o644)
	file("big.bin", randBytes(1, 1<<20+12345), 0o644)
	file("other.bin", randBytes(2, 300<<10), 0o600)
	file("bin/suid", randBytes(3, 5000), 0o4755)
	file("bin/sgid", randBytes(4, 70<<10), 0o2711)
	file("tmp/sticky/x", []byte("x"), 0o644)
	must("chmod sticky", os.Chmod(filepath.Join(dir, "tmp/sticky"), 0o1777))
	for i := range 40 {
		file(filepath.Join("many", string(rune('a'+i%26))+strings.Repeat("z", i/26)+".txt"), randBytes(uint64(100+i), 200*i), 0o644)
	}
	file("deep/a/b/c/d/e/leaf", randBytes(5, 33333), 0o640)
	must("mkdir emptydir", os.Mkdir(filepath.Join(dir, "emptydir"), 0o700))
	must("symlink", os.Symlink("big.bin", filepath.Join(dir, "link")))
	must("symlink", os.Symlink("/nonexistent/target", filepath.Join(dir, "deep/dangling")))
	must("mkfifo", unix.Mkfifo(filepath.Join(dir, "fifo"), 0o620))
	must("mknod char", unix.Mknod(filepath.Join(dir, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
	must("mknod block", unix.Mknod(filepath.Join(dir, "blk"), unix.S_IFBLK|0o660, int(unix.Mkdev(259, 70000))))
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(dir, "sock"), Net: "unix"})
	must("socket", err)
	l.SetUnlinkOnClose(false)
	l.Close()
	must("xattr", unix.Setxattr(filepath.Join(dir, "small.txt"), "user.greeting", []byte("hi"), 0))
	must("xattr", unix.Setxattr(filepath.Join(dir, "small.txt"), "user.empty", nil, 0))
	must("xattr", unix.Setxattr(filepath.Join(dir, "deep"), "user.dir", []byte{0, 1, 2, 255}, 0))
	must("fcaps", unix.Setxattr(filepath.Join(dir, "bin/sgid"), "security.capability", capV2, 0))
	must("chown", os.Lchown(filepath.Join(dir, "other.bin"), 1234, 56789))
	must("chown", os.Lchown(filepath.Join(dir, "link"), 4242, 4343))
	// Times last, deepest first, so that creating children does not
	// change them.
	var paths []string
	filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		paths = append(paths, p)
		return err
	})
	slices.Reverse(paths)
	for k, p := range paths {
		ts := []unix.Timespec{
			{Sec: 1500000000 + int64(k), Nsec: 123456789},
			{Sec: 1600000000 + int64(k)*7, Nsec: int64(k) * 1000003 % 1e9},
		}
		must("utimes "+p, unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW))
	}
}

// testImage is an archive of a tree, chunked into a local store.
type testImage struct {
	src    string // the tree
	catar  []byte
	index  string // caidx file
	toc    string // TOC file
	store  string // local store directory
	idx    *casync.Index
	tocObj *casync.TOC
}

// buildImage encodes src with EncodeDir, chunks it into a new local store
// and writes the index and TOC.
func buildImage(t testing.TB, src string, size casync.ChunkSize) *testImage {
	t.Helper()
	ctx := context.Background()
	var buf bytes.Buffer
	if err := casync.EncodeDir(ctx, &buf, src, nil); err != nil {
		t.Fatalf("EncodeDir(%s): %v", src, err)
	}
	dir := t.TempDir()
	im := &testImage{src: src, catar: buf.Bytes(), store: filepath.Join(dir, "store"), index: filepath.Join(dir, "rootfs.caidx"), toc: filepath.Join(dir, "rootfs.toc")}
	local, err := chunkstore.NewLocal(im.store, chunkstore.LocalOptions{Create: true, NoSync: true})
	if err != nil {
		t.Fatalf("NewLocal: %v", err)
	}
	im.idx, err = casync.BuildIndex(ctx, bytes.NewReader(im.catar), casync.CatarFeatureFlags(casync.SHA512_256), casync.ChunkOptions{Size: size}, func(c casync.Chunk) error {
		return local.StoreChunk(ctx, c.ID, c.Data)
	})
	if err != nil {
		t.Fatalf("BuildIndex: %v", err)
	}
	var ib bytes.Buffer
	if _, err := im.idx.WriteTo(&ib); err != nil {
		t.Fatalf("write index: %v", err)
	}
	if err := os.WriteFile(im.index, ib.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	im.tocObj, err = casync.BuildTOC(bytes.NewReader(im.catar))
	if err != nil {
		t.Fatalf("BuildTOC: %v", err)
	}
	tb, err := im.tocObj.MarshalBinary()
	if err != nil {
		t.Fatalf("marshal TOC: %v", err)
	}
	if err := os.WriteFile(im.toc, tb, 0o644); err != nil {
		t.Fatal(err)
	}
	return im
}

// localStore opens the image's store afresh, so its Stats start at zero.
func (im *testImage) localStore(t testing.TB) *chunkstore.Local {
	t.Helper()
	s, err := chunkstore.NewLocal(im.store, chunkstore.LocalOptions{Digest: im.idx.Digest()})
	if err != nil {
		t.Fatalf("NewLocal: %v", err)
	}
	return s
}

// entry returns the TOC entry at path.
func (im *testImage) entry(t testing.TB, path string) *casync.Entry {
	t.Helper()
	i, ok := im.tocObj.Lookup(path)
	if !ok {
		t.Fatalf("TOC has no %q", path)
	}
	return im.tocObj.Entry(i)
}

// requireFUSE skips t unless it can mount FUSE filesystems.
func requireFUSE(t testing.TB) {
	t.Helper()
	testenv.RequireRoot(t)
	if _, err := os.Stat("/dev/fuse"); err != nil {
		testenv.Skip(t, "no /dev/fuse: "+err.Error())
	}
}

// mountImage mounts im read through store and returns the mountpoint.
func mountImage(t testing.TB, im *testImage, store chunkstore.Store, ro ReaderOptions) (string, *Reader) {
	t.Helper()
	requireFUSE(t)
	r := NewReader(im.idx, store, ro)
	fsys, err := NewFS(im.tocObj, r, FSOptions{Logger: testLogger(t), AllowSuidDev: true})
	if err != nil {
		t.Fatalf("NewFS: %v", err)
	}
	mnt := t.TempDir()
	srv, err := fsys.Mount(mnt)
	if err != nil {
		t.Fatalf("Mount: %v", err)
	}
	t.Cleanup(func() {
		if err := Unmount(srv, mnt, nil); err != nil {
			t.Errorf("Unmount: %v", err)
		}
		r.Close()
	})
	return mnt, r
}

// recordingStore counts and records GetChunk calls.
type recordingStore struct {
	chunkstore.Store
	gets atomic.Int64
	mu   sync.Mutex
	ids  map[casync.ChunkID]int
}

func newRecordingStore(s chunkstore.Store) *recordingStore {
	return &recordingStore{Store: s, ids: make(map[casync.ChunkID]int)}
}

func (s *recordingStore) GetChunk(ctx context.Context, id casync.ChunkID) ([]byte, error) {
	s.gets.Add(1)
	s.mu.Lock()
	s.ids[id]++
	s.mu.Unlock()
	return s.Store.GetChunk(ctx, id)
}

func (s *recordingStore) fetched() map[casync.ChunkID]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.ids)
}

// hangingStore never answers. With ignoreCtx it does not even return when
// its context ends, like a stuck network call.
type hangingStore struct {
	chunkstore.Store
	ignoreCtx bool
	calls     atomic.Int64
	release   chan struct{}
}

func (s *hangingStore) GetChunk(ctx context.Context, id casync.ChunkID) ([]byte, error) {
	s.calls.Add(1)
	if s.ignoreCtx {
		<-s.release
		return nil, errors.New("released")
	}
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-s.release:
		return nil, errors.New("released")
	}
}

// flakyStore fails the first n GetChunk calls of every chunk.
type flakyStore struct {
	chunkstore.Store
	n     int
	mu    sync.Mutex
	tries map[casync.ChunkID]int
}

func (s *flakyStore) GetChunk(ctx context.Context, id casync.ChunkID) ([]byte, error) {
	s.mu.Lock()
	if s.tries == nil {
		s.tries = make(map[casync.ChunkID]int)
	}
	s.tries[id]++
	k := s.tries[id]
	s.mu.Unlock()
	if k <= s.n {
		return nil, errors.New("flaky: connection reset")
	}
	return s.Store.GetChunk(ctx, id)
}

// coveringChunks returns the IDs of the chunks holding n bytes at off.
func coveringChunks(idx *casync.Index, off, n int64) map[casync.ChunkID]bool {
	m := make(map[casync.ChunkID]bool)
	if n <= 0 {
		return m
	}
	for i := idx.ChunkAt(uint64(off)); i >= 0 && i < len(idx.Chunks) && int64(idx.Chunks[i].Start) < off+n; i++ {
		m[idx.Chunks[i].ID] = true
	}
	return m
}

// casyncDigest runs `casync digest` with args on path.
func casyncDigest(t testing.TB, path string, args ...string) string {
	t.Helper()
	bin := testenv.LookPath(t, "casync")
	out, err := exec.Command(bin, append(append([]string{"digest"}, args...), path)...).CombinedOutput()
	if err != nil {
		t.Fatalf("casync digest %s: %v\n%s", path, err, out)
	}
	return strings.TrimSpace(string(out))
}

// waitFor polls cond until it holds or d passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// isMounted reports whether dir is a mount point.
func isMounted(dir string) bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && f[4] == dir {
			return true
		}
	}
	return false
}

// testLogger logs to t until the test ends, then discards.
func testLogger(t testing.TB) *slog.Logger {
	l, _ := newTestLog(t)
	return l
}

// newTestLog returns a logger to t and the writer that keeps its lines.
func newTestLog(t testing.TB) (*slog.Logger, *testWriter) {
	w := &testWriter{t: t}
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug})), w
}

type testWriter struct {
	mu   sync.Mutex
	t    testing.TB
	done bool
	// lines keeps what was logged, for tests that check log lines.
	lines []string
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.lines = append(w.lines, string(p))
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

// grep returns the logged lines that contain every one of subs.
func (w *testWriter) grep(subs ...string) []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
next:
	for _, l := range w.lines {
		for _, s := range subs {
			if !strings.Contains(l, s) {
				continue next
			}
		}
		out = append(out, l)
	}
	return out
}
