package casync

import (
	"bytes"
	"compress/gzip"
	"testing"
)

// tocBenchTOC is a Debian-sized TOC: 15,000 nodes.
func tocBenchTOC(b *testing.B) (*TOC, []byte) {
	b.Helper()
	toc, _ := tocBuild(b, tocDebianLike(15000, 2024))
	data, err := toc.MarshalBinary()
	if err != nil {
		b.Fatal(err)
	}
	return toc, data
}

// BenchmarkUnmarshalTOC15000 measures loading a boot image's TOC. The
// budget is 50 ms; B/entry is the file size per node, gzB/entry what it
// costs in a gzip-compressed image layer.
func BenchmarkUnmarshalTOC15000(b *testing.B) {
	toc, data := tocBenchTOC(b)
	var z bytes.Buffer
	zw := gzip.NewWriter(&z)
	zw.Write(data)
	zw.Close()
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := UnmarshalTOC(data); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(data))/float64(toc.Len()), "B/entry")
	b.ReportMetric(float64(z.Len())/float64(toc.Len()), "gzB/entry")
}

func BenchmarkMarshalTOC15000(b *testing.B) {
	toc, data := tocBenchTOC(b)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := toc.MarshalBinary(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkTOCBuilder15000 measures what the encoder's OnEntry hook and
// TOC() cost mkimage.
func BenchmarkTOCBuilder15000(b *testing.B) {
	entries, size := tocEntries(tocDebianLike(15000, 2024), tocTestFeatures)
	b.ReportAllocs()
	for b.Loop() {
		tb := NewTOCBuilder()
		for _, e := range entries {
			if err := tb.Add(e); err != nil {
				b.Fatal(err)
			}
		}
		if _, err := tb.TOC(size, tocTestFeatures); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkLookup(b *testing.B) {
	toc, _ := tocBenchTOC(b)
	paths := make([]string, toc.Len())
	for i := range paths {
		paths[i] = toc.Path(i)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		if i == len(paths) {
			i = 0
		}
		if _, ok := toc.Lookup(paths[i]); !ok {
			b.Fatalf("Lookup(%q) = false", paths[i])
		}
	}
}

func BenchmarkTOCEntry(b *testing.B) {
	toc, _ := tocBenchTOC(b)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		if i == toc.Len() {
			i = 0
		}
		_ = toc.Entry(i)
	}
}
