package casync

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"strings"
	"testing"

	"github.com/bootfs/bootfs/internal/testenv"
)

// fuzzTempMax bounds the spill file of each fuzzed tar, so that a claim
// of a huge file is refused rather than expanded.
const fuzzTempMax = 4 << 20

// FuzzEncodeTar feeds EncodeTar arbitrary tar streams, seeded with deep
// paths, sparse entries and huge size claims. EncodeTar must not panic;
// it fails with a casync error, or gives an archive that the Decoder reads
// back, with no entry deeper than MaxCatarDepth, and whose rebuilt TOC is
// the one the encoder's entries made.
func FuzzEncodeTar(f *testing.F) {
	f.Add(tarOf(f, tdir("etc"), tfile("etc/hostname", []byte("box\n")), tsymlink("bin/sh", "busybox"),
		tfile("bin/busybox", bytes.Repeat([]byte{0, 1}, 70000), withXattr("user.a", "1"))))
	f.Add(tarOf(f, tfile("a/b/c/d", make([]byte, 3*holeBlock+5))))
	f.Add(deepTar(f, MaxCatarDepth))
	f.Add(deepTar(f, MaxCatarDepth+1))
	f.Add(deepTar(f, 20_000))
	f.Add(testenv.SparseTar(f, "var/log/lastlog", 1<<20, []byte("head"), []byte("tail")))
	f.Add(testenv.SparseTar(f, "var/log/lastlog", 1<<30, []byte("head"), []byte("tail")))
	f.Add(testenv.SparseTar(f, "huge", 4<<40, []byte("h"), []byte("t")))
	var huge bytes.Buffer // a header claiming a terabyte, with no data
	tw := tar.NewWriter(&huge)
	if err := tw.WriteHeader(&tar.Header{Name: "big", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1 << 40}); err != nil {
		f.Fatal(err)
	}
	tw.Flush()
	f.Add(huge.Bytes())
	tempDir := f.TempDir()

	f.Fuzz(func(t *testing.T, data []byte) {
		b := NewTOCBuilder()
		var catar bytes.Buffer
		err := EncodeTar(context.Background(), &catar, bytes.NewReader(data), &EncodeOptions{OnEntry: b.Add, TempDir: tempDir, TempMax: fuzzTempMax})
		if err != nil {
			if !strings.HasPrefix(err.Error(), "casync: ") {
				t.Fatalf("EncodeTar error %q does not say it is casync's", err)
			}
			return
		}
		toc, err := b.TOC(int64(catar.Len()), CatarFeatureFlags(0))
		if err != nil {
			t.Fatalf("TOC of an archive EncodeTar made: %v", err)
		}
		d := NewDecoder(bytes.NewReader(catar.Bytes()))
		n := 0
		for {
			e, err := d.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("decode of an archive EncodeTar made: %v", err)
			}
			if depth := strings.Count(e.Path, "/") + 1; e.Path != "" && depth > MaxCatarDepth {
				t.Fatalf("%q is %d levels deep, past MaxCatarDepth", e.Path, depth)
			}
			if _, err := io.Copy(io.Discard, d); err != nil {
				t.Fatalf("read %q: %v", e.Path, err)
			}
			n++
		}
		if n != toc.Len() {
			t.Fatalf("decoded %d entries, the TOC has %d", n, toc.Len())
		}
		built, err := BuildTOC(bytes.NewReader(catar.Bytes()))
		if err != nil {
			t.Fatalf("BuildTOC of an archive EncodeTar made: %v", err)
		}
		if built.Digest() != toc.Digest() {
			t.Fatalf("BuildTOC and the encoder disagree on the TOC")
		}
	})
}
