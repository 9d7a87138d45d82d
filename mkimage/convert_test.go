package mkimage

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore/opener"
	"github.com/bootfs/bootfs/internal/testenv"
)

// writeTree makes a small root filesystem with enough data for several
// chunks, repeated content and the common node types.
func writeTree(t *testing.T, dir string) {
	t.Helper()
	rng := rand.New(rand.NewPCG(1, 2))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	big := random(3 << 20)
	files := map[string][]byte{
		"bin/tool":        big,
		"bin/tool-copy":   big, // dedups within the archive
		"etc/os-release":  []byte("NAME=test\n"),
		"etc/empty":       nil,
		"usr/lib/libx.so": random(700 << 10),
		"var/log/zeros":   make([]byte, 1<<20),
	}
	for name, data := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Join(dir, "tmp"), 0o1777); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../bin/tool", filepath.Join(dir, "usr/tool")); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		addSpecialNodes(t, dir)
	}
}

// addSpecialNodes adds what only root can make: devices, a FIFO, xattrs
// and file capabilities, a hardlink, setuid, ids above 65535 and a
// nanosecond mtime.
func addSpecialNodes(t *testing.T, dir string) {
	t.Helper()
	p := func(name string) string { return filepath.Join(dir, name) }
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(p("dev"), 0o755))
	must(unix.Mknod(p("dev/null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
	must(unix.Mknod(p("dev/loop9"), unix.S_IFBLK|0o660, int(unix.Mkdev(7, 9))))
	must(unix.Mkfifo(p("tmp/fifo"), 0o644))
	must(unix.Setxattr(p("bin/tool"), "user.comment", []byte("hello"), 0))
	// cap_net_bind_service, permitted and effective (vfs_cap_data v2).
	capData := []byte{1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	must(unix.Setxattr(p("usr/lib/libx.so"), "security.capability", capData, 0))
	must(os.Link(p("etc/os-release"), p("etc/os-release.hardlink")))
	must(os.Chmod(p("bin/tool"), 0o4755))
	must(os.Lchown(p("etc/empty"), 100000, 100001))
	must(os.Chtimes(p("etc/os-release"), time.Unix(1700000000, 123456789), time.Unix(1700000000, 123456789)))
}

// convert converts src into the store that spec names ("" for none), as
// convertTo does, and fails the test on an error.
func convert(t *testing.T, src Source, spec string, opts Options) *Summary {
	t.Helper()
	sum, err := convertTo(context.Background(), src, spec, opts)
	if err != nil {
		t.Fatalf("Convert(%s) = %v", src, err)
	}
	return sum
}

// convertTo converts src into the store that spec names ("" for none),
// opened as cmd/mkimage opens it, with ssh credentials from the
// environment.
func convertTo(ctx context.Context, src Source, spec string, opts Options) (*Summary, error) {
	return convertWith(ctx, src, spec, opener.Credentials{}.WithSSHFromEnv(os.Getenv), opts)
}

// convertWith is convertTo with the given credentials.
func convertWith(ctx context.Context, src Source, spec string, creds opener.Credentials, opts Options) (*Summary, error) {
	if spec == "" {
		return Convert(ctx, src, nil, opts)
	}
	o, err := opener.Open(ctx, spec, opener.Options{Credentials: creds, Digest: opts.Digest, Write: true, Logger: opts.Log})
	if err != nil {
		return nil, err
	}
	defer o.Close()
	return Convert(ctx, src, o.Store, opts)
}

// TestConvertCasyncExtract checks the whole format path against the real
// casync: our index and store extract to the source tree, and our catar is
// the one casync makes of the same tree.
func TestConvertCasyncExtract(t *testing.T) {
	casyncBin := testenv.LookPath(t, "casync")
	testenv.RequireRoot(t)
	tmp := t.TempDir()
	root := filepath.Join(tmp, "root")
	writeTree(t, root)
	store := filepath.Join(tmp, "store")
	index := filepath.Join(tmp, "rootfs.caidx")
	catar := filepath.Join(tmp, "rootfs.catar")

	sum := convert(t, Source{Kind: "dir", Path: root}, store, Options{IndexOut: index, CatarOut: catar, Jobs: 2})
	if sum.Chunks < 10 || sum.UniqueChunks >= sum.Chunks {
		t.Errorf("Convert: %d chunks, %d distinct; want >= 10 chunks with repeats", sum.Chunks, sum.UniqueChunks)
	}
	if sum.NewChunks != sum.UniqueChunks {
		t.Errorf("Convert into an empty store: %d new chunks, want %d", sum.NewChunks, sum.UniqueChunks)
	}
	if _, err := os.Stat(index + ".toc"); err != nil {
		t.Errorf("TOC beside the index: %v", err)
	}

	out := filepath.Join(tmp, "out")
	run(t, casyncBin, "extract", "--store="+store, index, out)
	digestArgs := append([]string{"digest"}, casync.CasyncMakeArgs...)
	want := run(t, casyncBin, append(digestArgs, root)...)
	got := run(t, casyncBin, append(digestArgs, out)...)
	if got != want {
		t.Errorf("casync digest of the extracted tree = %s, want %s (the source's)", got, want)
	}

	// The real casync makes the same caidx of the same tree, and cuts our
	// catar, as a blob, into the same chunks.
	theirIndex := filepath.Join(tmp, "casync.caidx")
	run(t, casyncBin, append(append([]string{"make", "--store=" + filepath.Join(tmp, "store2")}, casync.CasyncMakeArgs...), theirIndex, root)...)
	ours, _ := os.ReadFile(index)
	theirsIdx, _ := os.ReadFile(theirIndex)
	if !bytes.Equal(ours, theirsIdx) {
		t.Errorf("our caidx (%d bytes) differs from casync make's (%d bytes)", len(ours), len(theirsIdx))
	}
	blobIndex := filepath.Join(tmp, "ours.caibx")
	run(t, casyncBin, "make", "--store="+filepath.Join(tmp, "store3"), blobIndex, catar)
	f, err := os.Open(blobIndex)
	if err != nil {
		t.Fatal(err)
	}
	blob, err := casync.ReadIndex(f)
	f.Close()
	if err != nil {
		t.Fatalf("ReadIndex(casync's caibx of our catar): %v", err)
	}
	if len(blob.Chunks) != len(sum.Index.Chunks) {
		t.Fatalf("casync cuts our catar into %d chunks, we cut %d", len(blob.Chunks), len(sum.Index.Chunks))
	}
	for i := range blob.Chunks {
		if blob.Chunks[i] != sum.Index.Chunks[i] {
			t.Fatalf("chunk %d: casync %+v, ours %+v", i, blob.Chunks[i], sum.Index.Chunks[i])
		}
	}

	theirs := filepath.Join(tmp, "casync.catar")
	run(t, casyncBin, append(append([]string{"make"}, casync.CasyncMakeArgs...), theirs, root)...)
	a, _ := os.ReadFile(catar)
	b, _ := os.ReadFile(theirs)
	if !bytes.Equal(a, b) {
		t.Errorf("our catar (%d bytes) differs from casync make's (%d bytes)", len(a), len(b))
	}
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// TestConvertReproducible: the same input gives byte-identical caidx, TOC
// and catar whatever the parallelism, and a second conversion into the
// same store writes nothing.
func TestConvertReproducible(t *testing.T) {
	tmp := t.TempDir()
	root := filepath.Join(tmp, "root")
	writeTree(t, root)
	store := filepath.Join(tmp, "store")

	var outputs [][3][]byte
	for i, jobs := range []int{1, 8} {
		dir := filepath.Join(tmp, "out", string(rune('a'+i)))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		index := filepath.Join(dir, "rootfs.caidx")
		catar := filepath.Join(dir, "rootfs.catar")
		sum := convert(t, Source{Kind: "dir", Path: root}, store, Options{IndexOut: index, CatarOut: catar, Jobs: jobs})
		if i == 1 && (sum.NewChunks != 0 || sum.BytesWritten != 0) {
			t.Errorf("second conversion wrote %d chunks (%d bytes), want 0", sum.NewChunks, sum.BytesWritten)
		}
		var o [3][]byte
		for k, name := range []string{index, index + ".toc", catar} {
			b, err := os.ReadFile(name)
			if err != nil {
				t.Fatal(err)
			}
			o[k] = b
		}
		outputs = append(outputs, o)
	}
	for k, what := range []string{"caidx", "TOC", "catar"} {
		if !bytes.Equal(outputs[0][k], outputs[1][k]) {
			t.Errorf("-j 1 and -j 8 give different %s", what)
		}
	}

	// The TOC built while encoding is the one rebuilt from the catar.
	f, err := os.Open(filepath.Join(tmp, "out", "a", "rootfs.catar"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rebuilt, err := casync.BuildTOC(f)
	if err != nil {
		t.Fatalf("BuildTOC: %v", err)
	}
	b, err := rebuilt.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, outputs[0][1]) {
		t.Errorf("TOC rebuilt from the catar differs from the one written while encoding")
	}
}

// TestConvertTarMatchesDir: a tar of the tree gives the same archive as the
// tree itself.
func TestConvertTarMatchesDir(t *testing.T) {
	tmp := t.TempDir()
	root := filepath.Join(tmp, "root")
	writeTree(t, root)
	tarFile := filepath.Join(tmp, "root.tar")
	if out, err := exec.Command("tar", "--format=posix", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-C", root, "-cf", tarFile, ".").CombinedOutput(); err != nil {
		t.Fatalf("tar: %v %s", err, out)
	}
	a := convert(t, Source{Kind: "dir", Path: root}, "", Options{})
	b := convert(t, Source{Kind: "tar", Path: tarFile}, "", Options{})
	if len(a.Index.Chunks) != len(b.Index.Chunks) {
		t.Fatalf("dir gives %d chunks, tar %d", len(a.Index.Chunks), len(b.Index.Chunks))
	}
	for i := range a.Index.Chunks {
		if a.Index.Chunks[i] != b.Index.Chunks[i] {
			t.Fatalf("chunk %d: dir %+v, tar %+v", i, a.Index.Chunks[i], b.Index.Chunks[i])
		}
	}
}

// TestConvertFailureLeavesNothing: when the source is bad, no index, TOC
// or catar appears, and the store holds no temporary files.
func TestConvertFailureLeavesNothing(t *testing.T) {
	tmp := t.TempDir()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	data := bytes.Repeat([]byte("x"), 1<<20)
	tw.WriteHeader(&tar.Header{Name: "a", Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg})
	tw.Write(data)
	tw.WriteHeader(&tar.Header{Name: "etc/.wh.passwd", Mode: 0o644, Typeflag: tar.TypeReg})
	tw.Close()
	tarFile := filepath.Join(tmp, "layer.tar")
	if err := os.WriteFile(tarFile, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	store := filepath.Join(tmp, "store")
	index := filepath.Join(tmp, "out.caidx")
	catar := filepath.Join(tmp, "out.catar")
	_, err := convertTo(context.Background(), Source{Kind: "tar", Path: tarFile}, store, Options{IndexOut: index, CatarOut: catar})
	if err == nil || !strings.Contains(err.Error(), ".wh.passwd") {
		t.Fatalf("Convert(layer with whiteout) = %v, want an error naming the whiteout", err)
	}
	entries, _ := os.ReadDir(tmp)
	for _, e := range entries {
		if e.Name() != "store" && e.Name() != "layer.tar" {
			t.Errorf("left behind %s", e.Name())
		}
	}
	filepath.WalkDir(store, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && !strings.HasSuffix(p, ".cacnk") {
			t.Errorf("store holds a stray file %s", p)
		}
		return nil
	})

	_, err = Convert(context.Background(), Source{Kind: "dir", Path: filepath.Join(tmp, "missing")}, nil, Options{IndexOut: index})
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Convert(missing dir) = %v, want ErrNotExist", err)
	}
}

func TestParseSource(t *testing.T) {
	tests := []struct {
		name, in string
		want     Source
		wantErr  bool
	}{
		{name: "dir", in: "dir:/srv/root", want: Source{Kind: "dir", Path: "/srv/root"}},
		{name: "tar file", in: "tar:root.tar", want: Source{Kind: "tar", Path: "root.tar"}},
		{name: "stdin", in: "tar:-", want: Source{Kind: "tar", Path: "-"}},
		{name: "empty", in: "", wantErr: true},
		{name: "no path", in: "dir:", wantErr: true},
		{name: "image", in: "debian:bookworm", want: Source{Kind: "docker", Path: "debian:bookworm"}},
		{name: "image with registry port", in: "localhost:5000/app:1", want: Source{Kind: "docker", Path: "localhost:5000/app:1"}},
		{name: "bad image reference", in: "Debian:Book worm", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseSource(tt.in)
			if (err != nil) != tt.wantErr || (err == nil && got != tt.want) {
				t.Errorf("ParseSource(%q) = %+v, %v; want %+v, error %v", tt.in, got, err, tt.want, tt.wantErr)
			}
		})
	}
}
