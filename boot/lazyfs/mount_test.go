package lazyfs

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
	"github.com/bootfs/bootfs/internal/testenv"
)

// startMount runs RunMount in the background until the returned stop is
// called, which returns RunMount's error. It returns once RunMount has
// logged "mounted": the filesystem then serves requests and has told the
// kernel that it does not poll. Using the mount before that, as soon as it
// shows in mountinfo, can deadlock this process, which serves its own
// mount: Go registers every file it opens with epoll, and a FUSE file
// answers that with a POLL request to the server.
func startMount(t *testing.T, index, mnt string, opts MountOptions) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	mounted := make(chan struct{})
	inner := opts.Logger
	if inner == nil {
		inner = slog.New(slog.DiscardHandler)
	}
	opts.Logger = slog.New(mountedSignal{Handler: inner.Handler(), once: new(sync.Once), mounted: mounted})
	done := make(chan error, 1)
	go func() { done <- RunMount(ctx, index, mnt, opts) }()
	select {
	case <-mounted:
	case err := <-done:
		cancel()
		t.Fatalf("RunMount(%s) = %v before mounting", index, err)
	case <-time.After(30 * time.Second):
		cancel()
		t.Fatalf("RunMount(%s) did not mount within 30s", index)
	}
	if !isMounted(mnt) {
		cancel()
		t.Fatalf("RunMount(%s) logged \"mounted\", but %s is not a mount point", index, mnt)
	}
	stopped := false
	stop = func() error {
		if stopped {
			return nil
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(30 * time.Second):
			t.Fatalf("RunMount did not return within 30s of cancellation")
			return nil
		}
	}
	t.Cleanup(func() { stop() })
	return stop
}

func readStats(t *testing.T, name string) Stats {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatalf("read stats: %v", err)
	}
	var s Stats
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatalf("stats file %s: %v\n%s", name, err, b)
	}
	return s
}

// Indexes made by the real casync mount, with no TOC (it is built from
// the archive through the chunks), and show the tree casync archived.
func TestRunMountCasyncIndex(t *testing.T) {
	requireFUSE(t)
	bin := testenv.LookPath(t, "casync")
	src := t.TempDir()
	makeTree(t, src)
	for _, tc := range []struct {
		name string
		args []string
		list bool // a store list: an empty store first
	}{
		{name: "CasyncMakeArgs", args: casync.CasyncMakeArgs},
		{name: "casync defaults"},
		{name: "sha256", args: append([]string{"--digest=sha256", "--chunk-size=4096:16384:65536"}, casync.CasyncMakeArgs...)},
		{name: "store list", args: casync.CasyncMakeArgs, list: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			store, index := filepath.Join(dir, "store"), filepath.Join(dir, "img.caidx")
			cmd := exec.Command(bin, append(append([]string{"make", "--store=" + store}, tc.args...), index, src)...)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("casync make: %v\n%s", err, out)
			}
			mnt, stats := t.TempDir(), filepath.Join(dir, "stats.json")
			if tc.list {
				store = t.TempDir() + "," + store
			}
			stop := startMount(t, index, mnt, MountOptions{
				ImageOptions: ImageOptions{Store: store, Logger: testLogger(t)},
				Stats:        stats,
			})
			digestArgs := tc.args
			if tc.name == "sha256" {
				digestArgs = casync.CasyncMakeArgs
			}
			if g, w := casyncDigest(t, mnt, digestArgs...), casyncDigest(t, src, digestArgs...); g != w {
				t.Errorf("casync digest of the mount = %s, of the source %s", g, w)
			}
			if err := stop(); err != nil {
				t.Fatalf("RunMount() = %v, want nil after cancellation", err)
			}
			if isMounted(mnt) {
				t.Errorf("%s is still mounted after RunMount returned", mnt)
			}
			if s := readStats(t, stats); s.ChunksFetched == 0 || s.BytesFetched == 0 || s.Errors != 0 || s.StartToExecMS != 0 {
				t.Errorf("stats = %+v, want chunks and bytes fetched, no errors", s)
			}
		})
	}
}

// With a TOC beside the index, mounting and listing fetch nothing; with a
// cache, a second mount reads from it; SIGUSR1 writes the stats.
func TestRunMountTOCAndCache(t *testing.T) {
	im := newTreeImage(t)
	cache := filepath.Join(t.TempDir(), "cache")
	stats := filepath.Join(t.TempDir(), "stats.json")
	opts := MountOptions{
		ImageOptions: ImageOptions{Store: "file://" + im.store, Cache: cache, Logger: testLogger(t)},
		Stats:        stats,
	}
	mnt := t.TempDir()
	stop := startMount(t, im.index, mnt, opts)
	walkTree(t, mnt, false)
	if err := syscall.Kill(os.Getpid(), syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "stats after SIGUSR1", func() bool { _, err := os.Stat(stats); return err == nil })
	if s := readStats(t, stats); s != (Stats{}) {
		t.Errorf("stats after listing the tree = %+v, want all zero", s)
	}
	want, _ := os.ReadFile(filepath.Join(im.src, "big.bin"))
	got, err := os.ReadFile(filepath.Join(mnt, "big.bin"))
	if err != nil || string(got) != string(want) {
		t.Fatalf("ReadFile(big.bin) = %v, want its content", err)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	first := readStats(t, stats)
	if first.ChunksFetched == 0 || first.CacheHits != 0 {
		t.Errorf("first mount stats = %+v, want chunks fetched and no cache hits", first)
	}

	mnt2 := t.TempDir()
	stop = startMount(t, im.index, mnt2, opts)
	got, err = os.ReadFile(filepath.Join(mnt2, "big.bin"))
	if err != nil || string(got) != string(want) {
		t.Fatalf("ReadFile(big.bin) from the cache = %v, want its content", err)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	// Every chunk comes from the cache; reading ahead from the cache may
	// load a few chunks past the file as well, never from the store.
	if s := readStats(t, stats); s.ChunksFetched != 0 || s.CacheHits < first.ChunksFetched {
		t.Errorf("second mount stats = %+v, want 0 chunks fetched, at least %d cache hits", s, first.ChunksFetched)
	}
}

func TestOpenImageErrors(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	os.MkdirAll(filepath.Join(src, "d"), 0o755)
	os.WriteFile(filepath.Join(src, "f"), []byte("data"), 0o644)
	im := buildImage(t, src, smallChunks)
	other := filepath.Join(dir, "other")
	os.MkdirAll(other, 0o755)
	os.WriteFile(filepath.Join(other, "g"), []byte("other data, longer"), 0o644)
	otherIm := buildImage(t, other, smallChunks)
	garbage := filepath.Join(dir, "garbage")
	os.WriteFile(garbage, []byte("not an index"), 0o644)

	for _, tc := range []struct {
		name    string
		index   string
		opts    ImageOptions
		want    error
		wantMsg string
	}{
		{name: "no store", index: im.index, wantMsg: "no chunk store"},
		{name: "missing index", index: filepath.Join(dir, "nope.caidx"), opts: ImageOptions{Store: im.store}, want: os.ErrNotExist},
		{name: "bad index", index: garbage, opts: ImageOptions{Store: im.store}, want: casync.ErrFormat},
		{name: "bad TOC", index: im.index, opts: ImageOptions{Store: im.store, TOC: garbage}, want: casync.ErrFormat},
		{name: "TOC of another archive", index: im.index, opts: ImageOptions{Store: im.store, TOC: otherIm.toc}, want: ErrMismatch},
		{name: "bad store URL", index: im.index, opts: ImageOptions{Store: "gopher://x/y"}, wantMsg: "unknown scheme"},
		{name: "wrong store, no TOC", index: otherIm.index, opts: ImageOptions{Store: im.store, TOC: "", Reader: ReaderOptions{Retries: -1}}, want: ErrUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name == "wrong store, no TOC" {
				os.Remove(otherIm.toc)
			}
			got, err := OpenImage(context.Background(), tc.index, tc.opts)
			if err == nil {
				got.Close()
				t.Fatalf("OpenImage(%s) = nil error, want one", tc.name)
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("OpenImage(%s) = %v, want %v", tc.name, err, tc.want)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("OpenImage(%s) = %v, want it to say %q", tc.name, err, tc.wantMsg)
			}
		})
	}
}

func TestFindTOC(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name  string
		index string
		files []string
		want  string
	}{
		{name: "none", index: "a.caidx"},
		{name: "index.toc", index: "a.caidx", files: []string{"a.caidx.toc", "a.toc"}, want: "a.caidx.toc"},
		{name: "rootfs.toc", index: "rootfs.caidx", files: []string{"rootfs.toc"}, want: "rootfs.toc"},
		{name: "other extension", index: "b.idx", files: []string{"b.toc"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "_"))
			os.MkdirAll(d, 0o755)
			for _, f := range tc.files {
				os.WriteFile(filepath.Join(d, f), nil, 0o644)
			}
			want := ""
			if tc.want != "" {
				want = filepath.Join(d, tc.want)
			}
			if got := findTOC(filepath.Join(d, tc.index)); got != want {
				t.Errorf("findTOC(%q) = %q, want %q", tc.index, got, want)
			}
		})
	}
}

// mountedSignal passes records on to Handler (at the levels it takes) and
// closes mounted at RunMount's "mounted" line.
type mountedSignal struct {
	slog.Handler
	once    *sync.Once
	mounted chan struct{}
}

func (h mountedSignal) Enabled(context.Context, slog.Level) bool { return true }

func (h mountedSignal) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == "mounted" {
		h.once.Do(func() { close(h.mounted) })
	}
	if !h.Handler.Enabled(ctx, r.Level) {
		return nil
	}
	return h.Handler.Handle(ctx, r)
}

func (h mountedSignal) WithAttrs(as []slog.Attr) slog.Handler {
	h.Handler = h.Handler.WithAttrs(as)
	return h
}

func (h mountedSignal) WithGroup(name string) slog.Handler {
	h.Handler = h.Handler.WithGroup(name)
	return h
}

// A mount point that is a file, or is missing, is refused before
// anything is fetched or mounted: the kernel would mount on a file, and
// go-fuse then fail to serve it, leaving a mount that answers nothing.
func TestMountpointNotADirectory(t *testing.T) {
	requireFUSE(t)
	im := newTreeImage(t)
	file := filepath.Join(t.TempDir(), "plainfile")
	if err := os.WriteFile(file, []byte("not a directory"), 0o644); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(t.TempDir(), "missing")
	for _, tc := range []struct{ dir, want string }{
		{file, "is not a directory"},
		{missing, "no such file or directory"},
	} {
		err := RunMount(context.Background(), im.index, tc.dir, MountOptions{ImageOptions: ImageOptions{Store: im.store, Logger: testLogger(t)}})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("RunMount(%s) = %v, want an error saying %q", tc.dir, err, tc.want)
		}
		fsys, err := NewFS(im.tocObj, NewReader(im.idx, chunkstore.NewMemory(chunkstore.MemoryOptions{}), ReaderOptions{}), FSOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if srv, err := fsys.Mount(tc.dir); err == nil || !strings.Contains(err.Error(), tc.want) {
			if srv != nil {
				srv.Unmount()
			}
			t.Errorf("FS.Mount(%s) = %v, want an error saying %q", tc.dir, err, tc.want)
		}
		if isMounted(tc.dir) {
			unix.Unmount(tc.dir, unix.MNT_DETACH)
			t.Errorf("%s is mounted after the failed mount", tc.dir)
		}
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "not a directory" {
		t.Errorf("the file under the refused mount reads %q, %v", b, err)
	}
}
