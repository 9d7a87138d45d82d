package casync

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"testing"
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
