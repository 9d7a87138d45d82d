package lazyfs

import (
	"io"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/bootfs/bootfs/casync"
)

// BenchmarkSequentialRead reads a 64 MiB file from start to end: from the
// source on disk, and through the mount with the chunk store warm in the
// page cache. Before each read, the file's pages are dropped from the page
// cache (except in "page-cache"), so the mount's reads reach boot.
//
//	go test ./boot -run '^$' -bench SequentialRead -benchtime 5x
func BenchmarkSequentialRead(b *testing.B) {
	requireFUSE(b)
	src := b.TempDir()
	if err := os.WriteFile(filepath.Join(src, "big"), randBytes(42, 64<<20), 0o644); err != nil {
		b.Fatal(err)
	}
	im := buildImage(b, src, casync.DefaultChunkSize)
	small, _ := mountImage(b, im, im.localStore(b), ReaderOptions{CacheBytes: 16 << 20})
	large, _ := mountImage(b, im, im.localStore(b), ReaderOptions{CacheBytes: 256 << 20})
	readAll(b, filepath.Join(small, "big"), false) // warm the store's files
	readAll(b, filepath.Join(large, "big"), true)  // and the large LRU

	for _, tc := range []struct {
		name string
		path string
		keep bool
	}{
		{name: "disk", path: filepath.Join(src, "big")},
		{name: "mount/store", path: filepath.Join(small, "big")},
		{name: "mount/memory", path: filepath.Join(large, "big")},
		{name: "mount/page-cache", path: filepath.Join(large, "big"), keep: true},
	} {
		b.Run(tc.name, func(b *testing.B) {
			b.SetBytes(64 << 20)
			b.ReportAllocs()
			for b.Loop() {
				readAll(b, tc.path, tc.keep)
			}
		})
	}
}

var benchBuf = make([]byte, 1<<20)

func readAll(b *testing.B, name string, keepCache bool) {
	f, err := os.Open(name)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if !keepCache {
		if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
			b.Fatal(err)
		}
	}
	n, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{f}, benchBuf)
	if err != nil || n != 64<<20 {
		b.Fatalf("read %s: %d bytes, %v", name, n, err)
	}
}
