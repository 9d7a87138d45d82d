package bench

import (
	"context"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/folbricht/desync"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore/opener"
	"github.com/bootfs/bootfs/mkimage"
)

// rootfs returns the tree to convert: $BENCH_ROOTFS, made by
// bench/rootfs.sh (a debootstrap'd Debian), and its content size.
func rootfs(b *testing.B) (string, int64) {
	b.Helper()
	dir := os.Getenv("BENCH_ROOTFS")
	if dir == "" {
		b.Skip("set BENCH_ROOTFS to a root filesystem directory (bench/rootfs.sh makes one)")
	}
	var size int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			fi, err := d.Info()
			if err != nil {
				return err
			}
			size += fi.Size()
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	return dir, size
}

// BenchmarkConvertDir converts one directory tree into an empty local
// store and writes its index, with mkimage, `casync make` and desync's
// tar+chunk pipeline (what `desync tar -i` runs), one after the other in
// the same run. All three use casync's default chunk sizes and encode the
// same feature set; the tree is in the page cache for all of them. The
// MB/s figure is file content converted per second.
func BenchmarkConvertDir(b *testing.B) {
	dir, size := rootfs(b)
	run := func(b *testing.B, convert func(store, index string) error) {
		b.SetBytes(size)
		b.ReportAllocs()
		for b.Loop() {
			b.StopTimer()
			tmp, err := os.MkdirTemp("", "bench-convert-")
			if err != nil {
				b.Fatal(err)
			}
			// Write back what earlier runs left dirty, so that no run
			// pays for another's writes.
			syscall.Sync()
			b.StartTimer()
			if err := convert(filepath.Join(tmp, "store"), filepath.Join(tmp, "rootfs.caidx")); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			os.RemoveAll(tmp)
			b.StartTimer()
		}
	}
	for _, jobs := range []int{1, 2} {
		b.Run("mkimage-j"+string(rune('0'+jobs)), func(b *testing.B) {
			run(b, func(store, index string) error {
				ctx := context.Background()
				o, err := opener.Open(ctx, store, opener.Options{Write: true})
				if err != nil {
					return err
				}
				defer o.Close()
				_, err = mkimage.Convert(ctx, mkimage.Source{Kind: "dir", Path: dir}, o.Store, mkimage.Options{IndexOut: index, Jobs: jobs})
				return err
			})
		})
	}
	b.Run("casync-make", func(b *testing.B) {
		if _, err := exec.LookPath("casync"); err != nil {
			b.Skip("casync is not installed")
		}
		run(b, func(store, index string) error {
			args := append([]string{"make", "--store=" + store}, casync.CasyncMakeArgs...)
			out, err := exec.Command("casync", append(args, index, dir)...).CombinedOutput()
			if err != nil {
				b.Fatalf("casync make: %v\n%s", err, out)
			}
			return nil
		})
	})
	b.Run("desync-tar-j2", func(b *testing.B) {
		run(b, func(store, index string) error { return desyncTar(dir, store, index, 2) })
	})
}

// desyncTar is `desync tar -i -s STORE INDEX DIR` through desync's library:
// its catar encoder piped into its parallel chunker and local store.
func desyncTar(dir, storeDir, index string, n int) error {
	if err := os.MkdirAll(storeDir, 0o755); err != nil {
		return err
	}
	s, err := desync.NewLocalStore(storeDir, desync.StoreOptions{})
	if err != nil {
		return err
	}
	defer s.Close()
	ctx := context.Background()
	pr, pw := io.Pipe()
	go func() {
		pw.CloseWithError(desync.Tar(ctx, pw, desync.NewLocalFS(dir, desync.LocalFSOptions{})))
	}()
	c, err := desync.NewChunker(pr, 16<<10, 64<<10, 256<<10)
	if err != nil {
		return err
	}
	idx, err := desync.ChunkStream(ctx, c, s, n)
	if err != nil {
		return err
	}
	f, err := os.Create(index)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = idx.WriteTo(f)
	return err
}
