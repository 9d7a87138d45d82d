package casync

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/bits"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
)

// countingReaderAt counts the calls and bytes read through it.
type countingReaderAt struct {
	r            io.ReaderAt
	mu           sync.Mutex
	calls, bytes int
}

func (c *countingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	c.mu.Lock()
	c.calls++
	c.bytes += len(p)
	c.mu.Unlock()
	return c.r.ReadAt(p, off)
}

func (c *countingReaderAt) reset() (calls, bytes int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	calls, bytes = c.calls, c.bytes
	c.calls, c.bytes = 0, 0
	return calls, bytes
}

// wideDeepTree has a directory of n files with some content each, at the
// end of a path of depth directories.
func wideDeepTree(depth, n int) ([]tnode, string) {
	nodes := []tnode{tdir(".")}
	p := ""
	for i := range depth {
		p = joinPath(p, fmt.Sprintf("level%d", i))
		nodes = append(nodes, tdir(p), tfile(p+"/sibling", make([]byte, 1000)))
	}
	for i := range n {
		nodes = append(nodes, tfile(fmt.Sprintf("%s/file%05d", p, i), bytes.Repeat([]byte{byte(i)}, 100)))
	}
	return nodes, p
}

// TestLookupTouchesLittle checks that a lookup reads O(depth * log n)
// small pieces of the archive, not the archive.
func TestLookupTouchesLittle(t *testing.T) {
	const depth, n = 6, 5000
	nodes, dirPath := wideDeepTree(depth, n)
	data := encodeTarBytes(t, tarOf(t, nodes...), nil)
	cr := &countingReaderAt{r: bytes.NewReader(data)}
	ar, err := NewArchiveReader(cr, int64(len(data)))
	requireOK(t, "NewArchiveReader", err)
	calls, read := cr.reset()
	t.Logf("open: %d reads, %d bytes of %d", calls, read, len(data))

	logn := bits.Len(uint(n))
	for _, name := range []string{"file00000", "file02500", "file04999", "nonexistent"} {
		p := dirPath + "/" + name
		e, err := ar.Lookup(p)
		if name == "nonexistent" {
			if !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("Lookup(%q) = %v, want fs.ErrNotExist", p, err)
			}
		} else if err != nil || e.Path != p {
			t.Fatalf("Lookup(%q) = %v, %v", p, e, err)
		}
		calls, read := cr.reset()
		// Per level: the GOODBYE items of a binary search, the
		// FILENAME and node records of the hit, the GOODBYE tail
		// and header of the next directory.
		maxCalls := (depth + 1) * (logn + 4)
		maxBytes := (depth + 1) * (logn*goodbyeItemSize + 3*atWindow)
		t.Logf("Lookup(%s): %d reads, %d bytes (limits %d, %d)", name, calls, read, maxCalls, maxBytes)
		if calls > maxCalls || read > maxBytes {
			t.Errorf("Lookup(%q) made %d reads of %d bytes, want at most %d reads of %d bytes", p, calls, read, maxCalls, maxBytes)
		}
	}
}

func TestArchiveReaderErrors(t *testing.T) {
	data := smallArchive(t)
	ar, err := NewArchiveReader(bytes.NewReader(data), int64(len(data)))
	requireOK(t, "NewArchiveReader", err)
	for _, tc := range []struct {
		name, path string
		want       error
	}{
		{"missing", "nope", fs.ErrNotExist},
		{"missing in dir", "cd/nope", fs.ErrNotExist},
		{"through a file", "ab/x", fs.ErrNotExist},
		{"through a symlink", "cd/ef/x", fs.ErrNotExist},
		{"dot dot", "cd/..", fs.ErrNotExist},
		{"too long", strings.Repeat("x", 256), fs.ErrNotExist},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ar.Lookup(tc.path); !errors.Is(err, tc.want) {
				t.Errorf("Lookup(%q) = %v, want %v", tc.path, err, tc.want)
			}
		})
	}
	for _, tc := range []struct{ path, want string }{
		{"", ""}, {"/", ""}, {".", ""}, {"/cd/", "cd"}, {"./cd/./gh", "cd/gh"}, {"ab/", "ab"},
	} {
		e, err := ar.Lookup(tc.path)
		if err != nil || e.Path != tc.want {
			t.Errorf("Lookup(%q) = %v, %v, want path %q", tc.path, e, err, tc.want)
		}
	}
	if _, err := ar.ReadDir("ab"); err == nil {
		t.Error("ReadDir of a file succeeded")
	}
	e, _ := ar.Lookup("cd")
	if _, err := ar.OpenFile(e); err == nil {
		t.Error("OpenFile of a directory succeeded")
	}

	// Corruptions that random access notices.
	for _, tc := range []struct {
		name   string
		mutate func(b []byte)
		op     func(ar *ArchiveReader) error
	}{
		{"tail marker", func(b []byte) { b[len(b)-1] ^= 1 }, nil},
		{"tail entry offset", func(b []byte) { b[len(b)-24] ^= 8 }, nil},
		{"tail size", func(b []byte) { b[len(b)-16] += 24 }, nil},
		{"root ENTRY", func(b []byte) { b[8] ^= 1 }, nil},
		{"item offset", func(b []byte) {
			b[len(b)-int(goodbyeSize(4))+headerSize] ^= 0x40
		}, func(ar *ArchiveReader) error { _, err := ar.ReadDir(""); return err }},
		{"item hash", func(b []byte) {
			for i := 0; i < 4; i++ { // every item, so any lookup notices
				b[len(b)-int(goodbyeSize(4))+headerSize+i*goodbyeItemSize+16] ^= 1
			}
		}, func(ar *ArchiveReader) error { _, err := ar.ReadDir(""); return err }},
		{"renamed", func(b []byte) {
			copy(b[findRecord(t, b, recFilename, "kl\x00")+16:], "km")
		}, func(ar *ArchiveReader) error { _, err := ar.ReadDir(""); return err }},
		{"child size", func(b []byte) {
			i := findRecord(t, b, recPayload, "world")
			b[i] = 16 + 4
		}, func(ar *ArchiveReader) error { _, err := ar.Lookup("kl"); return err }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := bytes.Clone(data)
			tc.mutate(b)
			ar, err := NewArchiveReader(bytes.NewReader(b), int64(len(b)))
			if err == nil && tc.op != nil {
				err = tc.op(ar)
			}
			if !errors.Is(err, ErrFormat) {
				t.Errorf("got %v, want ErrFormat", err)
			}
		})
	}
}

func TestReadDir(t *testing.T) {
	nodes, dirPath := wideDeepTree(2, 300)
	data := encodeTarBytes(t, tarOf(t, nodes...), nil)
	ar, err := NewArchiveReader(bytes.NewReader(data), int64(len(data)))
	requireOK(t, "NewArchiveReader", err)
	ents, err := ar.ReadDir(dirPath)
	requireOK(t, "ReadDir", err)
	if len(ents) != 301 {
		t.Fatalf("ReadDir(%q) = %d entries, want 301", dirPath, len(ents))
	}
	for i, e := range ents {
		want := fmt.Sprintf("%s/file%05d", dirPath, i)
		if i == 300 {
			want = dirPath + "/sibling"
		}
		if e.Path != want {
			t.Fatalf("ReadDir(%q)[%d] = %q, want %q", dirPath, i, e.Path, want)
		}
		got, err := ar.Lookup(e.Path)
		requireOK(t, "Lookup", err)
		if !reflect.DeepEqual(normEntry(got), normEntry(e)) {
			t.Errorf("Lookup(%q) = %+v, ReadDir gave %+v", e.Path, *got, *e)
		}
	}
	root, err := ar.ReadDir("")
	requireOK(t, "ReadDir root", err)
	if len(root) != 1 || root[0].Path != "level0" || root[0].End == 0 {
		t.Errorf("ReadDir(\"\") = %v", root)
	}
}

// fuzzSeeds are the corpus seeds for the catar fuzzers: the casync fixtures
// and encoder output.
func fuzzSeeds(f *testing.F) {
	files, _ := filepath.Glob("testdata/catar/*.catar")
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add(smallArchive(f))
	nodes, _ := wideDeepTree(3, 20)
	f.Add(encodeTarBytes(f, tarOf(f, nodes...), nil))
	f.Add(encodeTarBytes(f, tarOf(f, tdir(".")), nil))
}

// FuzzDecode checks that the Decoder never panics, and fails only with
// ErrFormat or ErrUnsupported.
func FuzzDecode(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		d := NewDecoder(bytes.NewReader(data))
		for i := 0; ; i++ {
			e, err := d.Next()
			if err == io.EOF {
				return
			}
			if err != nil {
				if !isFormatErr(err) {
					t.Fatalf("Next: %v does not wrap ErrFormat", err)
				}
				return
			}
			if e.End != 0 && e.End < e.Offset {
				t.Fatalf("%q: End %d before Offset %d", e.Path, e.End, e.Offset)
			}
			if _, err := io.Copy(io.Discard, d); err != nil && !isFormatErr(err) {
				t.Fatalf("Read: %v does not wrap ErrFormat", err)
			}
		}
	})
}

// FuzzLookup checks that the ArchiveReader never panics, and fails only
// with ErrFormat, ErrUnsupported or fs.ErrNotExist.
func FuzzLookup(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		ar, err := NewArchiveReader(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			if !isFormatErr(err) {
				t.Fatalf("NewArchiveReader: %v does not wrap ErrFormat", err)
			}
			return
		}
		ok := func(err error) {
			if err != nil && !isFormatErr(err) && !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("%v does not wrap ErrFormat or fs.ErrNotExist", err)
			}
		}
		for _, p := range []string{"ab", "cd/ef", "a/b/c/deep.txt", "level0/level1/file00001", "nope"} {
			e, err := ar.Lookup(p)
			ok(err)
			if err == nil && e.IsRegular() {
				sr, err := ar.OpenFile(e)
				ok(err)
				if err == nil {
					_, err = io.Copy(io.Discard, sr)
					ok(err)
				}
			}
		}
		// Walk the whole tree; each directory lies strictly inside
		// its parent, so this ends.
		budget := 1000
		var walk func(path string)
		walk = func(path string) {
			ents, err := ar.ReadDir(path)
			ok(err)
			for _, e := range ents {
				if budget--; budget < 0 {
					return
				}
				if e.IsDir() {
					walk(e.Path)
				}
			}
		}
		walk("")
	})
}

// TestArchiveReaderConcurrent runs lookups from many goroutines; run it
// with -race.
func TestArchiveReaderConcurrent(t *testing.T) {
	nodes, dirPath := wideDeepTree(3, 200)
	data := encodeTarBytes(t, tarOf(t, nodes...), nil)
	ar, err := NewArchiveReader(bytes.NewReader(data), int64(len(data)))
	requireOK(t, "NewArchiveReader", err)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := g; i < 200; i += 8 {
				p := fmt.Sprintf("%s/file%05d", dirPath, i)
				e, err := ar.Lookup(p)
				if err != nil || e.Path != p {
					t.Errorf("Lookup(%q) = %v, %v", p, e, err)
					return
				}
				sr, err := ar.OpenFile(e)
				if err != nil {
					t.Errorf("OpenFile(%q): %v", p, err)
					return
				}
				b, err := io.ReadAll(sr)
				if err != nil || !bytes.Equal(b, bytes.Repeat([]byte{byte(i)}, 100)) {
					t.Errorf("content of %q = %v, %v", p, b, err)
				}
			}
		})
	}
	wg.Wait()
}
