package casync

import (
	"bytes"
	"crypto/sha256"
	"os"
	"path/filepath"
	"testing"
)

// FuzzUnmarshalTOC feeds UnmarshalTOC arbitrary bytes, and the same bytes
// with the trailing digest recomputed so that the fuzzer reaches the record
// parser. Whatever decodes must re-encode to the same bytes (a TOC has one
// encoding) and answer every accessor without panicking.
func FuzzUnmarshalTOC(f *testing.F) {
	seeds, _ := filepath.Glob(filepath.Join("testdata", "toc", "*.toc"))
	for _, p := range seeds {
		data, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	for _, root := range []*tocNodeSpec{tocSampleTree(), tocDebianLike(60, 5), tocDir(""), tocSymlink("", "x")} {
		toc, _ := tocBuild(f, root)
		data, err := toc.MarshalBinary()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		tocCheckDecode(t, data)
		if len(data) >= tocHeaderSize+tocTrailer {
			fixed := bytes.Clone(data)
			sum := sha256.Sum256(fixed[:len(fixed)-tocTrailer])
			copy(fixed[len(fixed)-tocTrailer:], sum[:])
			tocCheckDecode(t, fixed)
		}
	})
}

func tocCheckDecode(t *testing.T, data []byte) {
	toc, err := UnmarshalTOC(data)
	if err != nil {
		if toc != nil {
			t.Fatalf("UnmarshalTOC() = %v, %v; want a nil TOC with the error", toc, err)
		}
		return
	}
	again, err := toc.MarshalBinary()
	if err != nil || !bytes.Equal(again, data) {
		t.Fatalf("MarshalBinary(UnmarshalTOC(data)) = %d bytes, %v; want the %d input bytes", len(again), err, len(data))
	}
	b := NewTOCBuilder()
	for i := 0; i < toc.Len(); i++ {
		e := toc.Entry(i)
		if j, ok := toc.Lookup(e.Path); !ok || j != i {
			t.Fatalf("Lookup(Entry(%d).Path = %q) = %d, %v; want %d, true", i, e.Path, j, ok, i)
		}
		for _, k := range toc.Children(i) {
			if toc.Parent(k) != i {
				t.Fatalf("Parent(%d) = %d, want %d", k, toc.Parent(k), i)
			}
		}
		if err := b.Add(e); err != nil {
			t.Fatalf("Add(Entry(%d)) = %v", i, err)
		}
	}
	// The entries a TOC yields rebuild the same TOC.
	rebuilt, err := b.TOC(toc.ArchiveSize, toc.Features)
	if err != nil {
		t.Fatalf("rebuilding from the entries: %v", err)
	}
	if d, want := rebuilt.Digest(), toc.Digest(); d != want {
		t.Fatalf("rebuilt TOC digest %s, want %s", d, want)
	}
}
