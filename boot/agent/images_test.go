package agent

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/bootfs/bootfs/internal/bootconfig"
)

// filesOf returns what a container of im carries, as readImage returns it
// once it has checked the digests.
func filesOf(im *testImage) *imageFiles {
	blob := func(b []byte) bootconfig.Blob {
		sum := sha256.Sum256(b)
		return bootconfig.Blob{Digest: "sha256:" + hex.EncodeToString(sum[:]), Size: int64(len(b))}
	}
	return &imageFiles{
		cfg:   &bootconfig.Config{Index: blob(im.index), TOC: blob(im.tcb)},
		index: im.index, toc: im.tcb,
	}
}

// manyFiles is a tree of n small files in nested directories, as an
// image's package tree is.
func manyFiles(t *testing.T, n int) *testImage {
	t.Helper()
	files := make(map[string]string, n)
	for i := range n {
		files[fmt.Sprintf("usr/lib/pkg%03d/mod%04d.py", i%100, i)] = strings.Repeat(fmt.Sprintf("line %d\n", i), 20)
	}
	src := t.TempDir()
	writeTree(t, src, files)
	return buildImage(t, src)
}

// TestImagesShared: the containers of one image share one parsed index
// and TOC, held until the last of them ends; another image gets its own.
func TestImagesShared(t *testing.T) {
	a, b := manyFiles(t, 3000), manyFiles(t, 10)
	s := newImages()
	var held []*image
	var wg sync.WaitGroup
	var mu sync.Mutex
	for range 8 { // containers of a starting at once
		wg.Add(1)
		go func() {
			defer wg.Done()
			im, err := s.acquire(filesOf(a))
			if err != nil {
				t.Errorf("acquire: %v", err)
				return
			}
			mu.Lock()
			held = append(held, im)
			mu.Unlock()
		}()
	}
	wg.Wait()
	for _, im := range held {
		if im != held[0] || im.toc != held[0].toc || im.idx != held[0].idx {
			t.Fatalf("8 containers of one image hold %p and %p; want one parsed index and TOC", held[0], im)
		}
	}
	if got := held[0].toc.Len(); got != a.toc.Len() {
		t.Errorf("shared TOC has %d entries, want %d", got, a.toc.Len())
	}
	other, err := s.acquire(filesOf(b))
	if err != nil {
		t.Fatal(err)
	}
	if other == held[0] {
		t.Fatal("another image got the first one's index and TOC")
	}
	n, bytes := s.stats()
	if n != 2 || bytes < int64(a.toc.Len())*64 {
		t.Errorf("stats() = %d images, %d bytes; want 2 images, at least %d bytes", n, bytes, a.toc.Len()*64)
	}
	for i, im := range held {
		s.release(im)
		if n, _ := s.stats(); (i < len(held)-1 && n != 2) || (i == len(held)-1 && n != 1) {
			t.Fatalf("after %d of 8 containers of an image ended, %d images held", i+1, n)
		}
	}
	again, err := s.acquire(filesOf(a))
	if err != nil {
		t.Fatal(err)
	}
	if again == held[0] {
		t.Error("the image was kept after its last container ended")
	}
	s.release(again)
	s.release(other)
	if n, bytes := s.stats(); n != 0 || bytes != 0 {
		t.Errorf("with no container left: %d images, %d bytes held; want none", n, bytes)
	}
}

// TestImagesCraftedStaysOwn: a container whose index or TOC does not
// parse (its config's digests are of the crafted bytes) gets an error
// naming the file, leaves nothing behind, and another container of a good
// image is served as before.
func TestImagesCraftedStaysOwn(t *testing.T) {
	good := manyFiles(t, 50)
	s := newImages()
	held, err := s.acquire(filesOf(good))
	if err != nil {
		t.Fatal(err)
	}
	badTOC := *good
	badTOC.tcb = append([]byte(nil), good.tcb...)
	badTOC.tcb[len(badTOC.tcb)/2] ^= 0xff
	badIndex := *good
	badIndex.index = good.index[:len(good.index)-7]
	other := manyFiles(t, 5)
	mismatched := *good
	mismatched.tcb = other.tcb
	for _, tt := range []struct {
		name string
		im   *testImage
		want string
	}{
		{"corrupt TOC", &badTOC, bootconfig.TOCPath},
		{"truncated index", &badIndex, bootconfig.IndexPath},
		{"TOC of another archive", &mismatched, "do not belong together"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			for range 2 { // again: the failure is not remembered either
				im, err := s.acquire(filesOf(tt.im))
				if err == nil || !strings.Contains(err.Error(), tt.want) {
					t.Fatalf("acquire = %v, %v; want an error naming %s", im, err, tt.want)
				}
			}
			if n, _ := s.stats(); n != 1 {
				t.Errorf("after the crafted image: %d images held, want only the good one", n)
			}
		})
	}
	im, err := s.acquire(filesOf(good))
	if err != nil || im != held {
		t.Errorf("the good image after crafted ones: %p, %v; want the one held, %p", im, err, held)
	}
}
