package casync

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand"
	"path/filepath"
	"testing"
)

// benchTree is a rootfs-like tree: many small files in a few directories
// and some large ones, about 48 MiB of content.
func benchTree() ([]tnode, int64) {
	rng := rand.New(rand.NewSource(7))
	nodes := []tnode{tdir(".")}
	var total int64
	for d := range 20 {
		dir := fmt.Sprintf("usr/lib/d%02d", d)
		nodes = append(nodes, tdir("usr"), tdir("usr/lib"), tdir(dir))
		for f := range 100 {
			size := 1 << (8 + rng.Intn(8)) // 256 B to 32 KiB
			nodes = append(nodes, tfile(fmt.Sprintf("%s/f%03d.so", dir, f), catarRandom(int64(d*1000+f), size)))
			total += int64(size)
		}
	}
	for i := range 3 {
		nodes = append(nodes, tfile(fmt.Sprintf("big%d", i), catarRandom(int64(i), 12<<20)))
		total += 12 << 20
	}
	return nodes, total
}

func BenchmarkEncodeTar(b *testing.B) {
	nodes, total := benchTree()
	tarball := tarOf(b, nodes...)
	tmp := b.TempDir()
	b.SetBytes(total)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if err := EncodeTar(context.Background(), io.Discard, bytes.NewReader(tarball), &EncodeOptions{TempDir: tmp}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEncodeDir(b *testing.B) {
	nodes, total := benchTree()
	root := filepath.Join(b.TempDir(), "root")
	writeTestTree(b, root, nodes...)
	b.SetBytes(total)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if err := EncodeDir(context.Background(), io.Discard, root, nil); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkCatarDecode(b *testing.B) {
	nodes, total := benchTree()
	data := encodeTarBytes(b, tarOf(b, nodes...), nil)
	b.SetBytes(total)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := decodeAll(data); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkArchiveReaderLookup(b *testing.B) {
	nodes, _ := benchTree()
	data := encodeTarBytes(b, tarOf(b, nodes...), nil)
	ar, err := NewArchiveReader(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := ar.Lookup("usr/lib/d13/f042.so"); err != nil {
			b.Fatal(err)
		}
	}
}
