package casync

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"runtime"
	"strings"
	"syscall"
	"testing"

	"github.com/bootfs/bootfs/internal/testenv"
)

// deepTar is a tar of one file whose path has depth components.
func deepTar(t testing.TB, depth int) []byte { return deepTarOf(t, "a", depth) }

// deepTarOf is a tar of one file below depth-1 directories named dir.
func deepTarOf(t testing.TB, dir string, depth int) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	hdr := &tar.Header{Name: strings.Repeat(dir+"/", depth-1) + "f", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1, Format: tar.FormatPAX}
	if err := tw.WriteHeader(hdr); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestIssue16Item8DeepTar checks that EncodeTar refuses a path nested
// deeper than MaxCatarDepth, naming it, at once and in memory linear in
// the depth: a 200 KB tar of a 100,000-level path once took 4.6 GB.
func TestIssue16Item8DeepTar(t *testing.T) {
	for _, depth := range []int{MaxCatarDepth + 1, 3000, 100_000} {
		t.Run(fmt.Sprintf("depth %d", depth), func(t *testing.T) {
			tarball := deepTar(t, depth)
			var err error
			alloc := allocated(func() {
				err = EncodeTar(context.Background(), io.Discard, bytes.NewReader(tarball),
					&EncodeOptions{OnEntry: NewTOCBuilder().Add, TempDir: t.TempDir()})
			})
			if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), fmt.Sprintf("nested %d levels deep", depth)) {
				t.Fatalf("EncodeTar of a %d-level path = %v, want a depth error", depth, err)
			}
			msg := err.Error()
			if !strings.Contains(msg, `"a/a/a/`) || !strings.Contains(msg, fmt.Sprintf("a path of %d bytes", 2*depth-1)) {
				t.Errorf("error %q does not name the path", msg)
			}
			if len(msg) > 1000 {
				t.Errorf("error of %d bytes, want one readable line", len(msg))
			}
			// The tar holds the path once; a few copies of it are fine,
			// one per level is not.
			if alloc > 64<<20 {
				t.Errorf("EncodeTar of a %d-level path allocated %d MB", depth, alloc>>20)
			}
		})
	}
}

// allocated returns the bytes f allocates.
func allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// TestIssue16Item8LinearMemory checks that a path at the depth limit
// costs memory linear in its length, to encode and to decode: a 530 KB
// tar of 2048 levels of 255-byte names once took 525 MB, one path string
// per level.
func TestIssue16Item8LinearMemory(t *testing.T) {
	tarball := deepTarOf(t, strings.Repeat("n", 255), MaxCatarDepth)
	var catar bytes.Buffer
	var err error
	alloc := allocated(func() {
		err = EncodeTar(context.Background(), &catar, bytes.NewReader(tarball),
			&EncodeOptions{OnEntry: NewTOCBuilder().Add, TempDir: t.TempDir()})
	})
	requireOK(t, "EncodeTar", err)
	if alloc > 64<<20 {
		t.Errorf("EncodeTar of a %d-byte tar at the depth limit allocated %d MB", len(tarball), alloc>>20)
	}
	alloc = allocated(func() { _, err = BuildTOC(bytes.NewReader(catar.Bytes())) })
	requireOK(t, "BuildTOC", err)
	if alloc > 64<<20 {
		t.Errorf("BuildTOC of a %d-byte archive at the depth limit allocated %d MB", catar.Len(), alloc>>20)
	}
}

// TestIssue16Item8OneDepthLimit checks that the encoder, the Decoder,
// BuildTOC and UnmarshalTOC agree on MaxCatarDepth: what converts mounts,
// with its TOC or without, and nothing deeper does either.
func TestIssue16Item8OneDepthLimit(t *testing.T) {
	t.Run("at the limit", func(t *testing.T) {
		b := NewTOCBuilder()
		var catar bytes.Buffer
		requireOK(t, "EncodeTar", EncodeTar(context.Background(), &catar, bytes.NewReader(deepTar(t, MaxCatarDepth)),
			&EncodeOptions{OnEntry: b.Add, TempDir: t.TempDir()}))
		toc, err := b.TOC(int64(catar.Len()), CatarFeatureFlags(0))
		requireOK(t, "TOC of the encoder", err)
		leaf := strings.Repeat("a/", MaxCatarDepth-1) + "f"
		if _, ok := toc.Lookup(leaf); !ok {
			t.Errorf("TOC lacks the leaf at depth %d", MaxCatarDepth)
		}
		built, err := BuildTOC(bytes.NewReader(catar.Bytes()))
		requireOK(t, "BuildTOC", err)
		if built.Digest() != toc.Digest() {
			t.Errorf("BuildTOC gives a different TOC than the encoder")
		}
		ar, err := NewArchiveReader(bytes.NewReader(catar.Bytes()), int64(catar.Len()))
		requireOK(t, "NewArchiveReader", err)
		if _, err := ar.Lookup(leaf); err != nil {
			t.Errorf("ArchiveReader.Lookup of the leaf: %v", err)
		}
	})
	t.Run("over the limit", func(t *testing.T) {
		// The encoder refuses this archive, so make it with its limit
		// raised, and see that each reader refuses it.
		depth := MaxCatarDepth + 1
		b := &TOCBuilder{maxDepth: depth}
		var catar bytes.Buffer
		cw := newCatarWriter(context.Background(), &catar, &EncodeOptions{OnEntry: b.Add})
		cw.maxDepth = depth
		requireOK(t, "encode", cw.encodeTree(deepSource{depth}))
		want := fmt.Sprintf("nested %d levels deep", depth)
		_, err := b.TOC(int64(catar.Len()), CatarFeatureFlags(0))
		if !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), want) {
			t.Errorf("UnmarshalTOC of a %d-level TOC = %v, want a depth error", depth, err)
		}
		if _, err := BuildTOC(bytes.NewReader(catar.Bytes())); !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), want) {
			t.Errorf("BuildTOC of a %d-level archive = %v, want a depth error", depth, err)
		}
		cw = newCatarWriter(context.Background(), io.Discard, &EncodeOptions{OnEntry: NewTOCBuilder().Add})
		cw.maxDepth = depth
		if err := cw.encodeTree(deepSource{depth}); !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), want) {
			t.Errorf("TOCBuilder.Add of a %d-level entry = %v, want a depth error", depth, err)
		}
	})
}

// randBytes returns n seeded random bytes.
func randBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// spillBlocks returns the bytes of disk that the spill file EncodeTar
// keeps in dir uses, found among the process's open files.
func spillBlocks(t testing.TB, dir string) int64 {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	requireOK(t, "list fds", err)
	for _, fd := range fds {
		target, err := os.Readlink("/proc/self/fd/" + fd.Name())
		if err != nil || !strings.HasPrefix(target, dir+"/bootfs-catar-") {
			continue
		}
		var st syscall.Stat_t
		requireOK(t, "stat spill", syscall.Stat("/proc/self/fd/"+fd.Name(), &st))
		return st.Blocks * 512
	}
	t.Fatalf("no spill file in %s among the open files", dir)
	return 0
}

// TestIssue16Item9SparseTar checks that a sparse tar entry's holes take
// no disk in the spill file (a 10 KB tar claiming 1 GiB wrote 1 GiB of
// zeros) while the archive still holds the file's every byte.
func TestIssue16Item9SparseTar(t *testing.T) {
	const size = 1 << 30
	head, tail := randBytes(1, 4096), randBytes(2, 4096)
	tarball := testenv.SparseTar(t, "var/log/lastlog", size, head, tail)
	dir := t.TempDir()
	var used int64 = -1
	pr, pw := io.Pipe()
	go func() {
		pw.CloseWithError(EncodeTar(context.Background(), pw, bytes.NewReader(tarball), &EncodeOptions{
			TempDir: dir,
			OnEntry: func(e *Entry) error {
				if e.Path == "var/log/lastlog" { // the tar is read: the spill file is complete
					used = spillBlocks(t, dir)
				}
				return nil
			},
		}))
	}()
	d := NewDecoder(pr)
	for {
		e, err := d.Next()
		if err == io.EOF {
			break
		}
		requireOK(t, "Next", err)
		if e.Path != "var/log/lastlog" {
			continue
		}
		if e.Size != size {
			t.Errorf("%s has %d bytes, want %d", e.Path, e.Size, size)
		}
		// Compare each read with what the file holds there: head, then
		// zeros, then tail.
		whole := map[int64][]byte{0: head, size - int64(len(tail)): tail}
		got, want := make([]byte, 1<<20), make([]byte, 1<<20)
		var off int64
		for {
			n, err := d.Read(got)
			w := want[:n]
			clear(w)
			for at, b := range whole {
				if at < off+int64(n) && at+int64(len(b)) > off {
					lo := max(at, off)
					copy(w[lo-off:], b[lo-at:])
				}
			}
			if !bytes.Equal(got[:n], w) {
				t.Fatalf("%s: bytes [%d, +%d) differ from the tar's", e.Path, off, n)
			}
			off += int64(n)
			if err == io.EOF {
				break
			}
			requireOK(t, "Read", err)
		}
		if off != size {
			t.Errorf("read %d bytes of %s, want %d", off, e.Path, size)
		}
	}
	if t.Logf("tar of %d bytes, spill file uses %d bytes of disk", len(tarball), used); used > 4<<20 {
		t.Errorf("the spill file of a %d-byte tar uses %d MB of disk for a sparse entry with 8 KiB of data", len(tarball), used>>20)
	}
}

// TestIssue16Item9TempMax checks that EncodeOptions.TempMax bounds the
// spill file, a sparse entry counted at its full size, and stops before
// the entry's contents are read: a tar claiming terabytes filled the disk.
func TestIssue16Item9TempMax(t *testing.T) {
	for _, tc := range []struct {
		name    string
		size    int64
		max     int64
		refused bool
	}{
		{"1 GiB within 2 GiB", 1 << 30, 2 << 30, false},
		{"1 GiB past 512 MiB", 1 << 30, 512 << 20, true},
		{"4 TiB past 1 TiB", 4 << 40, 1 << 40, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tarball := testenv.SparseTar(t, "big", tc.size, []byte("x"), []byte("y"))
			err := EncodeTar(context.Background(), io.Discard, bytes.NewReader(tarball), &EncodeOptions{TempDir: t.TempDir(), TempMax: tc.max})
			if !tc.refused {
				requireOK(t, "EncodeTar", err)
				return
			}
			if !errors.Is(err, ErrTempMax) || !strings.Contains(err.Error(), `"big"`) || !strings.Contains(err.Error(), fmt.Sprint(tc.max)) {
				t.Errorf("EncodeTar of a %d-byte entry with TempMax %d = %v, want ErrTempMax naming the entry and the limit", tc.size, tc.max, err)
			}
		})
	}
}

// TestSpillFileZeroRuns checks that contents with runs of zeros, aligned
// to the spill file's blocks or not, come out of the archive as they went
// into the tar, whether the runs became holes or not.
func TestSpillFileZeroRuns(t *testing.T) {
	var files []tnode
	for i, layout := range [][]int{ // alternating data and zero runs
		{1, holeBlock, 1},
		{holeBlock - 1, 3 * holeBlock, 5},
		{0, 5 * holeBlock},
		{7, holeBlock + 1},
		{spillBuffer - 3, 2*holeBlock + 9, spillBuffer + 11, holeBlock},
	} {
		var content []byte
		for j, n := range layout {
			if j%2 == 0 {
				content = append(content, randBytes(uint64(i*10+j+1), n)...)
			} else {
				content = append(content, make([]byte, n)...)
			}
		}
		files = append(files, tfile(fmt.Sprintf("f%d", i), content))
	}
	_, contents, _ := decodeTar(t, tarOf(t, files...))
	for _, f := range files {
		if got := contents[f.path]; got != string(f.data) {
			t.Errorf("%s: %d bytes out, %d in, or different", f.path, len(got), len(f.data))
		}
	}
}
