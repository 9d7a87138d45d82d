package casync

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

var tocUpdate = flag.Bool("update-toc", false, "rewrite casync/testdata/toc golden files")

// tocEntryEqual compares Entries, treating nil and empty byte slices alike.
func tocEntryEqual(a, b *Entry) bool {
	if len(a.Xattrs) != len(b.Xattrs) || !bytes.Equal(a.FCaps, b.FCaps) {
		return false
	}
	for i := range a.Xattrs {
		if a.Xattrs[i].Name != b.Xattrs[i].Name || !bytes.Equal(a.Xattrs[i].Value, b.Xattrs[i].Value) {
			return false
		}
	}
	ac, bc := *a, *b
	ac.Xattrs, bc.Xattrs, ac.FCaps, bc.FCaps = nil, nil, nil, nil
	return reflect.DeepEqual(ac, bc)
}

func TestTOCTree(t *testing.T) {
	toc, entries := tocBuild(t, tocSampleTree())
	if toc.Len() != len(entries) {
		t.Fatalf("Len() = %d, want %d", toc.Len(), len(entries))
	}
	long := strings.Repeat("n", 255)
	deepPath := "deep"
	for i := 0; i < 40; i++ {
		deepPath += fmt.Sprintf("/d%02d", i)
	}
	tests := []struct {
		name     string
		path     string
		found    bool
		wantPath string // Path of the node found; path itself if empty
		kids     []string
		parent   string
	}{
		{name: "root empty", path: "", found: true, kids: []string{"bin", "deep", "dev", "etc", "home", "long", "tmp", "zero"}},
		{name: "root slash", path: "/", found: true, wantPath: "", kids: []string{"bin", "deep", "dev", "etc", "home", "long", "tmp", "zero"}},
		{name: "dir", path: "bin", found: true, kids: []string{"bash", "ping", "sh"}, parent: ""},
		{name: "leading slash", path: "/bin/bash", found: true, wantPath: "bin/bash", parent: "bin"},
		{name: "trailing and double slash", path: "bin//sh/", found: true, wantPath: "bin/sh", parent: "bin"},
		{name: "symlink is not followed", path: "bin/sh/x", found: false},
		{name: "missing", path: "bin/zsh", found: false},
		{name: "missing before first", path: "bin/a", found: false},
		{name: "missing after last", path: "zz", found: false},
		{name: "prefix of a name", path: "bi", found: false},
		{name: "dot", path: "bin/./bash", found: false},
		{name: "dotdot", path: "bin/../bin", found: false},
		{name: "file as dir", path: "zero/x", found: false},
		{name: "empty dir", path: "etc/empty", found: true, parent: "etc"},
		{name: "char device", path: "dev/null", found: true, parent: "dev"},
		{name: "unicode dir", path: "home/üñí©ødé", found: true, kids: []string{"emoji-😀", "日本語.txt"}, parent: "home"},
		{name: "unicode file", path: "home/üñí©ødé/日本語.txt", found: true, parent: "home/üñí©ødé"},
		{name: "255-byte name", path: "long/" + long, found: true, parent: "long"},
		{name: "256-byte name", path: "long/" + long + "n", found: false},
		{name: "254-byte prefix sibling", path: "long/" + long[:254] + "m", found: true, parent: "long"},
		{name: "deep", path: deepPath + "/bottom", found: true, parent: deepPath},
		{name: "deep missing", path: deepPath + "/top", found: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			i, ok := toc.Lookup(tt.path)
			if ok != tt.found {
				t.Fatalf("Lookup(%q) = %d, %v, want found %v", tt.path, i, ok, tt.found)
			}
			if !ok {
				if i != -1 {
					t.Errorf("Lookup(%q) = %d, want -1 when not found", tt.path, i)
				}
				return
			}
			want := tt.path
			if tt.wantPath != "" || tt.path == "/" {
				want = tt.wantPath
			}
			if got := toc.Path(i); got != want {
				t.Errorf("Path(Lookup(%q)) = %q, want %q", tt.path, got, want)
			}
			if got := toc.Entry(i).Path; got != want {
				t.Errorf("Entry(Lookup(%q)).Path = %q, want %q", tt.path, got, want)
			}
			if got, w := toc.Name(i), want[strings.LastIndexByte(want, '/')+1:]; got != w {
				t.Errorf("Name(Lookup(%q)) = %q, want %q", tt.path, got, w)
			}
			var kids []string
			for _, k := range toc.Children(i) {
				kids = append(kids, toc.Name(k))
				if p := toc.Parent(k); p != i {
					t.Errorf("Parent(%d) = %d, want %d", k, p, i)
				}
			}
			if !slices.Equal(kids, tt.kids) {
				t.Errorf("Children(Lookup(%q)) = %q, want %q", tt.path, kids, tt.kids)
			}
			p := toc.Parent(i)
			if i == 0 {
				if p != -1 {
					t.Errorf("Parent(root) = %d, want -1", p)
				}
				return
			}
			if got := toc.Path(p); got != tt.parent {
				t.Errorf("Path(Parent(Lookup(%q))) = %q, want %q", tt.path, got, tt.parent)
			}
		})
	}
}

// TestTOCEntries checks every field of every node against what was added,
// for the sample tree and for a generated one, and that every path looks
// up to its node.
func TestTOCEntries(t *testing.T) {
	tests := []struct {
		name string
		root *tocNodeSpec
	}{
		{name: "sample", root: tocSampleTree()},
		{name: "debian-like", root: tocDebianLike(3000, 1)},
		{name: "root only", root: tocDir("")},
		{name: "file root", root: tocFile("", 10)},
		{name: "symlink root", root: tocSymlink("", "/x")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			toc, entries := tocBuild(t, tt.root)
			for i, want := range entries {
				if got := toc.Entry(i); !tocEntryEqual(got, want) {
					t.Fatalf("Entry(%d) = %+v, want %+v", i, got, want)
				}
				if m, d := toc.Mode(i), toc.IsDir(i); m != want.Mode || d != want.IsDir() {
					t.Fatalf("Mode(%d), IsDir(%d) = %#o, %v, want %#o, %v", i, i, m, d, want.Mode, want.IsDir())
				}
				if j, ok := toc.Lookup(want.Path); !ok || j != i {
					t.Fatalf("Lookup(%q) = %d, %v, want %d, true", want.Path, j, ok, i)
				}
				kids := toc.Children(i)
				if !slices.IsSortedFunc(kids, func(a, b int) int { return strings.Compare(toc.Name(a), toc.Name(b)) }) {
					t.Fatalf("Children(%d) not in strcmp order", i)
				}
			}
		})
	}
}

// TestTOCEntryIsACopy checks that a caller cannot change a TOC through
// the Entry it returns.
func TestTOCEntryIsACopy(t *testing.T) {
	toc, _ := tocBuild(t, tocSampleTree())
	i, _ := toc.Lookup("etc/xattrs")
	e := toc.Entry(i)
	e.Xattrs[0].Value[0] = 'n'
	if got := toc.Entry(i).Xattrs[0].Value[0]; got != 'y' {
		t.Errorf("after changing a returned xattr, Entry(%d).Xattrs[0].Value[0] = %q, want 'y'", i, got)
	}
	j, _ := toc.Lookup("bin/ping")
	toc.Entry(j).FCaps[0] = 9
	if got := toc.Entry(j).FCaps[0]; got != 1 {
		t.Errorf("after changing returned fcaps, Entry(%d).FCaps[0] = %d, want 1", j, got)
	}
}

func TestTOCRoundTrip(t *testing.T) {
	for _, tt := range []struct {
		name string
		root *tocNodeSpec
	}{
		{name: "sample", root: tocSampleTree()},
		{name: "debian-like", root: tocDebianLike(2000, 7)},
		{name: "file root", root: tocFile("", 0)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			toc, entries := tocBuild(t, tt.root)
			data, err := toc.MarshalBinary()
			if err != nil {
				t.Fatalf("MarshalBinary() = %v", err)
			}
			got, err := UnmarshalTOC(data)
			if err != nil {
				t.Fatalf("UnmarshalTOC() = %v", err)
			}
			if got.ArchiveSize != toc.ArchiveSize || got.Features != toc.Features || got.Len() != len(entries) {
				t.Fatalf("UnmarshalTOC() = size %d, features %#x, %d entries; want %d, %#x, %d",
					got.ArchiveSize, got.Features, got.Len(), toc.ArchiveSize, toc.Features, len(entries))
			}
			for i, want := range entries {
				if e := got.Entry(i); !tocEntryEqual(e, want) {
					t.Fatalf("UnmarshalTOC(MarshalBinary()).Entry(%d) = %+v, want %+v", i, e, want)
				}
			}
			again, err := got.MarshalBinary()
			if err != nil || !bytes.Equal(again, data) {
				t.Fatalf("MarshalBinary(UnmarshalTOC(data)) = %d bytes, %v; want the %d input bytes", len(again), err, len(data))
			}
			sum := sha256.Sum256(data)
			if d, want := got.Digest(), "sha256:"+hex.EncodeToString(sum[:]); d != want {
				t.Errorf("Digest() = %q, want %q", d, want)
			}
			var u TOC
			if err := u.UnmarshalBinary(data); err != nil || u.Digest() != got.Digest() {
				t.Errorf("UnmarshalBinary() = %v, digest %q, want nil, %q", err, u.Digest(), got.Digest())
			}
		})
	}
}

// TestTOCGolden pins the format: a change to the bytes needs a new version.
func TestTOCGolden(t *testing.T) {
	toc, _ := tocBuild(t, tocSampleTree())
	data, err := toc.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "toc", "sample.toc")
	if *tocUpdate {
		if err := os.WriteFile(golden, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test ./casync -run TestTOCGolden -update-toc to create it)", err)
	}
	if !bytes.Equal(data, want) {
		t.Errorf("MarshalBinary() of the sample tree = %d bytes differing from %s (%d bytes); "+
			"a format change needs a new TOCVersion", len(data), golden, len(want))
	}
}

func TestTOCBuilderErrors(t *testing.T) {
	dir := func(p string) *Entry { return &Entry{Path: p, Mode: ModeDir | 0o755} }
	file := func(p string) *Entry { return &Entry{Path: p, Mode: ModeRegular | 0o644} }
	tests := []struct {
		name    string
		entries []*Entry
		edit    func(es []*Entry) // applied after Add, before TOC
		want    string
	}{
		{name: "no entries", want: "no entries"},
		{name: "root not first", entries: []*Entry{file("a")}, want: "must be the root"},
		{name: "sibling order", entries: []*Entry{dir(""), file("b"), file("a")}, want: `"a" comes after its sibling "b"`},
		{name: "duplicate", entries: []*Entry{dir(""), file("a"), file("a")}, want: "duplicate"},
		{name: "parent missing", entries: []*Entry{dir(""), file("a/b")}, want: `directory "a" is not`},
		{name: "child of a file", entries: []*Entry{dir(""), file("a"), file("a/b")}, want: `directory "a" is not`},
		{name: "after its subtree", entries: []*Entry{dir(""), dir("a"), file("b"), file("a/c")}, want: `directory "a" is not`},
		{name: "child of a file root", entries: []*Entry{file(""), file("a")}, want: `directory "" is not`},
		{name: "dot name", entries: []*Entry{dir(""), file(".")}, want: `name "."`},
		{name: "empty name", entries: []*Entry{dir(""), dir("a"), file("a/")}, want: "empty name"},
		{name: "long name", entries: []*Entry{dir(""), file(strings.Repeat("x", 256))}, want: "256 bytes"},
		{name: "mode bits", entries: []*Entry{{Mode: ModeDir | 0o200000}}, want: "bits outside"},
		{name: "no file type", entries: []*Entry{{Mode: 0o644}}, want: "unknown file type"},
		{name: "size on a dir", entries: []*Entry{{Mode: ModeDir, Size: 1}}, want: "not a regular file"},
		{name: "target on a file", entries: []*Entry{{Mode: ModeRegular, LinkTarget: "x"}}, want: "link target"},
		{name: "symlink without target", entries: []*Entry{{Mode: ModeSymlink}}, want: "link target"},
		{name: "NUL in target", entries: []*Entry{{Mode: ModeSymlink, LinkTarget: "a\x00b"}}, want: "NUL"},
		{name: "rdev on a fifo", entries: []*Entry{{Mode: ModeFIFO, RdevMinor: 1}}, want: "not a device"},
		{name: "negative offset", entries: []*Entry{{Mode: ModeDir, End: -1}}, want: "negative"},
		{name: "xattr order", entries: []*Entry{{Mode: ModeDir, Xattrs: []Xattr{{Name: "user.b"}, {Name: "user.a"}}}}, want: "strcmp order"},
		{name: "xattr empty name", entries: []*Entry{{Mode: ModeDir, Xattrs: []Xattr{{Name: ""}}}}, want: "empty name"},
		{name: "root end is not the size", entries: []*Entry{{Mode: ModeDir, End: 100}},
			edit: func(es []*Entry) { es[0].End = 99 }, want: "not the root's End"},
		{name: "child before parent", entries: []*Entry{dir(""), file("a")},
			edit: func(es []*Entry) { es[0].End = 100; es[1].Offset = 0; es[1].End = 1 }, want: "not after 0"},
		{name: "payload outside", entries: []*Entry{dir(""), file("a")},
			edit: func(es []*Entry) {
				es[0].End = 100
				es[1].Offset = 10
				es[1].PayloadOffset = 20
				es[1].Size = 50
				es[1].End = 60
			}, want: "payload"},
		{name: "dir ends before child", entries: []*Entry{dir(""), dir("a"), file("a/b")},
			edit: func(es []*Entry) {
				es[0].End = 100
				es[1].Offset, es[1].End = 10, 20
				es[2].Offset, es[2].PayloadOffset, es[2].End = 30, 40, 50
			}, want: "before its last child's end 50"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := NewTOCBuilder()
			var err error
			for _, e := range tt.entries {
				if err = b.Add(e); err != nil {
					if err2 := b.Add(dir("zzz")); err2 != err {
						t.Errorf("Add after a failed Add = %v, want the sticky error %v", err2, err)
					}
					break
				}
			}
			if err == nil {
				if tt.edit != nil {
					tt.edit(tt.entries)
				}
				size := int64(100)
				_, err = b.TOC(size, 0)
			}
			if !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("building %d entries: error %v, want ErrFormat containing %q", len(tt.entries), err, tt.want)
			}
		})
	}
}

// TestTOCBuilderKeepsPointers checks the encoder contract: a directory's
// End is filled in after Add.
func TestTOCBuilderKeepsPointers(t *testing.T) {
	entries, size := tocEntries(tocSampleTree(), 0)
	ends := make([]int64, len(entries))
	b := NewTOCBuilder()
	for i, e := range entries {
		if e.IsDir() {
			ends[i], e.End = e.End, 0
		}
		if err := b.Add(e); err != nil {
			t.Fatal(err)
		}
	}
	for i, e := range entries {
		if e.IsDir() {
			e.End = ends[i]
		}
	}
	toc, err := b.TOC(size, 0)
	if err != nil {
		t.Fatalf("TOC() with Ends set after Add = %v", err)
	}
	for i, e := range entries {
		if got := toc.Entry(i).End; got != e.End {
			t.Errorf("Entry(%d).End = %d, want %d", i, got, e.End)
		}
	}
}

func tocSampleBytes(t testing.TB) []byte {
	t.Helper()
	toc, _ := tocBuild(t, tocSampleTree())
	data, err := toc.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestUnmarshalTOCDamaged(t *testing.T) {
	data := tocSampleBytes(t)
	t.Run("truncated", func(t *testing.T) {
		for n := 0; n < len(data); n++ {
			if _, err := UnmarshalTOC(data[:n]); !errors.Is(err, ErrFormat) {
				t.Fatalf("UnmarshalTOC(first %d of %d bytes) = %v, want ErrFormat", n, len(data), err)
			}
		}
	})
	t.Run("appended", func(t *testing.T) {
		if _, err := UnmarshalTOC(append(slices.Clip(data), 0)); !errors.Is(err, ErrFormat) {
			t.Fatalf("UnmarshalTOC(data + 1 byte) = %v, want ErrFormat", err)
		}
	})
	t.Run("bit flips", func(t *testing.T) {
		b := slices.Clone(data)
		for i := range b {
			for bit := 0; bit < 8; bit++ {
				b[i] ^= 1 << bit
				_, err := UnmarshalTOC(b)
				b[i] ^= 1 << bit
				want := ErrFormat
				if i >= 8 && i < 12 {
					want = ErrUnsupported // the version field
				}
				if !errors.Is(err, want) {
					t.Fatalf("UnmarshalTOC(bit %d of byte %d flipped) = %v, want %v", bit, i, err, want)
				}
			}
		}
	})
	t.Run("version", func(t *testing.T) {
		b := slices.Clone(data)
		binary.LittleEndian.PutUint32(b[8:], 2)
		_, err := UnmarshalTOC(b)
		if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "version 2") || !strings.Contains(err.Error(), "version 1") {
			t.Fatalf("UnmarshalTOC(version 2) = %v, want ErrUnsupported naming versions 2 and 1", err)
		}
	})
}

// tocCraft builds a TOC from a header and raw record bytes, with a valid
// digest, so tests reach the record checks behind it.
func tocCraft(size, features uint64, count, strs uint32, records ...any) []byte {
	b := make([]byte, tocHeaderSize)
	copy(b, tocMagic)
	binary.LittleEndian.PutUint32(b[8:], TOCVersion)
	binary.LittleEndian.PutUint64(b[16:], size)
	binary.LittleEndian.PutUint64(b[24:], features)
	binary.LittleEndian.PutUint32(b[32:], count)
	binary.LittleEndian.PutUint32(b[36:], strs)
	for _, r := range records {
		switch r := r.(type) {
		case int:
			b = binary.AppendUvarint(b, uint64(r))
		case uint64:
			b = binary.AppendUvarint(b, r)
		case string:
			b = append(b, r...)
		case []byte:
			b = append(b, r...)
		default:
			panic(fmt.Sprintf("tocCraft: %T", r))
		}
	}
	sum := sha256.Sum256(b)
	return append(b, sum[:]...)
}

func TestUnmarshalTOCInvalid(t *testing.T) {
	const dirT, regT, lnkT, chrT = ModeDir >> 12, ModeRegular >> 12, ModeSymlink >> 12, ModeChar >> 12
	// A valid archive of a root with files "a" and "b": root at 0,
	// a at 81 with payload at 161, size 1, b at 180 with payload at 260,
	// size 1, root's goodbye 261 to 333.
	valid := []any{dirT, 2, 0, regT, 0, 1, "a", 1, 81, 80, 0, regT, 0, 1, "b", 1, 18, 80, 0, 72}
	if _, err := UnmarshalTOC(tocCraft(333, 0, 3, 2, valid...)); err != nil {
		t.Fatalf("UnmarshalTOC(valid crafted TOC) = %v", err)
	}
	tests := []struct {
		name    string
		size    uint64
		count   uint32
		strs    uint32
		records []any
		want    string
	}{
		{name: "no entries", size: 333, count: 0, strs: 2, records: valid, want: "no entries"},
		{name: "too many entries", size: 333, count: 1000, strs: 2, records: valid, want: "cannot fit"},
		{name: "too many strings", size: 333, count: 3, strs: 2000, records: valid, want: "string bytes cannot"},
		{name: "wrong string count", size: 333, count: 3, strs: 3, records: valid, want: "the entries hold 2"},
		{name: "fewer strings than names", size: 333, count: 3, strs: 1, records: valid, want: "exceed the 1"},
		{name: "size too big", size: 1 << 63, count: 3, strs: 2, records: valid, want: "out of range"},
		{name: "size is not root end", size: 334, count: 3, strs: 2, records: valid, want: "not at the archive's end 334"},
		{name: "garbage after", size: 333, count: 3, strs: 2, records: append(slices.Clone(valid), 0), want: "garbage"},
		{name: "children exceed entries", size: 333, count: 3, strs: 2, records: []any{dirT, 2, 0, dirT, 1, 0, 1, "a", 81, regT, 0, 1, "b", 1, 81, 80, 0, 0, 72}, want: "children of all directories exceed"},
		{name: "extra entry", size: 100, count: 2, strs: 1, records: []any{regT, 0, 0, 80, 20, regT, 0, 1, "a", 1, 0, 0, 0}, want: "after the root's end"},
		{name: "too many children", size: 333, count: 3, strs: 2, records: append([]any{dirT, 3}, valid[2:]...), want: "3 children, but only 2"},
		{name: "non-minimal varint", size: 333, count: 3, strs: 2, records: append([]any{[]byte{dirT | 0x80, 0}}, valid[1:]...), want: "shortest form"},
		{name: "unknown head bit", size: 333, count: 3, strs: 2, records: append([]any{dirT | 1<<11}, valid[1:]...), want: "unknown head bits"},
		{name: "unknown type", size: 333, count: 3, strs: 2, records: append([]any{3}, valid[1:]...), want: "unknown file type"},
		{name: "nsec without mtime", size: 333, count: 3, strs: 2, records: append([]any{dirT | tocHasNsec}, valid[1:]...), want: "nanoseconds without"},
		{name: "root offset", size: 333, count: 3, strs: 2, records: append([]any{dirT, 2, 5}, valid[3:]...), want: "root at offset 5"},
		{name: "names out of order", size: 333, count: 3, strs: 2, records: []any{dirT, 2, 0, regT, 0, 1, "b", 1, 81, 80, 0, regT, 0, 1, "a"}, want: "strcmp order"},
		{name: "duplicate name", size: 333, count: 3, strs: 2, records: []any{dirT, 2, 0, regT, 0, 1, "a", 1, 81, 80, 0, regT, 1, 0}, want: "does not follow"},
		{name: "prefix too long", size: 333, count: 3, strs: 2, records: []any{dirT, 2, 0, regT, 0, 1, "a", 1, 81, 80, 0, regT, 2, 1, "b"}, want: "shares 2 bytes"},
		{name: "prefix not longest", size: 333, count: 3, strs: 3, records: []any{dirT, 2, 0, regT, 0, 1, "a", 1, 81, 80, 0, regT, 0, 2, "ab"}, want: "not the longest"},
		{name: "first child with a prefix", size: 333, count: 3, strs: 2, records: []any{dirT, 2, 0, regT, 1, 1, "a"}, want: "shares 1 bytes with the 0-byte"},
		{name: "slash in name", size: 333, count: 3, strs: 2, records: []any{dirT, 2, 0, regT, 0, 1, "/"}, want: "slash"},
		{name: "dotdot name", size: 333, count: 3, strs: 3, records: []any{dirT, 2, 0, regT, 0, 2, ".."}, want: `name ".."`},
		{name: "NUL in name", size: 333, count: 3, strs: 2, records: []any{dirT, 2, 0, regT, 0, 1, "\x00"}, want: "NUL"},
		{name: "name too long", size: 333, count: 3, strs: 2, records: []any{dirT, 2, 0, regT, 0, 256}, want: "longer than 255"},
		{name: "name truncated", size: 333, count: 3, strs: 2, records: []any{dirT, 2, 0, regT, 0, 100, "a"}, want: "runs past the end"},
		{name: "repeated perm", size: 333, count: 3, strs: 2, records: append([]any{dirT | tocHasPerm, 2, 0o755}, valid[2:]...), want: "repeat"},
		{name: "perm range", size: 333, count: 3, strs: 2, records: append([]any{dirT | tocHasPerm, 2, 0o10000}, valid[2:]...), want: "out of range"},
		{name: "repeated owner", size: 333, count: 3, strs: 2, records: append([]any{dirT | tocHasOwner, 2, 0, 0}, valid[2:]...), want: "repeats"},
		{name: "uid over 32 bits", size: 333, count: 3, strs: 2, records: append([]any{dirT | tocHasOwner, 2, uint64(1) << 32, 0}, valid[2:]...), want: "exceeds 32 bits"},
		{name: "repeated mtime", size: 333, count: 3, strs: 2, records: append([]any{dirT | tocHasMTime, 2, 0}, valid[2:]...), want: "repeats"},
		{name: "negative mtime", size: 333, count: 3, strs: 2, records: append([]any{dirT | tocHasMTime, 2, 1}, valid[2:]...), want: "out of range"},
		{name: "mtime overflow", size: 333, count: 3, strs: 2, records: append([]any{dirT | tocHasMTime | tocHasNsec, 2, 2 * 18446744073, 999999999}, valid[2:]...), want: "overflows"},
		{name: "zero nsec", size: 333, count: 3, strs: 2, records: append([]any{dirT | tocHasMTime | tocHasNsec, 2, 2, 0}, valid[2:]...), want: "nanoseconds 0"},
		{name: "big nsec", size: 333, count: 3, strs: 2, records: append([]any{dirT | tocHasMTime | tocHasNsec, 2, 2, 1000000000}, valid[2:]...), want: "nanoseconds 1000000000"},
		{name: "repeated flags", size: 333, count: 3, strs: 2, records: append([]any{dirT | tocHasFlags, 2, 0}, valid[2:]...), want: "repeat"},
		{name: "empty xattrs", size: 333, count: 3, strs: 2, records: append([]any{dirT | tocHasXattrs, 2, 0}, valid[2:]...), want: "empty xattr list"},
		{name: "xattr order", size: 333, count: 3, strs: 2, records: append([]any{dirT | tocHasXattrs, 2, 2, 1, "b", 0, 1, "a", 0}, valid[2:]...), want: "strcmp order"},
		{name: "xattr empty name", size: 333, count: 3, strs: 2, records: append([]any{dirT | tocHasXattrs, 2, 1, 0, 0}, valid[2:]...), want: "empty name"},
		{name: "too many xattrs", size: 333, count: 3, strs: 2, records: append([]any{dirT | tocHasXattrs, 2, 1000, 1, "b", 0}, valid[2:]...), want: "cannot fit"},
		{name: "empty fcaps", size: 333, count: 3, strs: 2, records: append([]any{dirT | tocHasFCaps, 2, 0}, valid[2:]...), want: "empty fcaps"},
		{name: "empty symlink", size: 100, count: 1, strs: 0, records: []any{lnkT, 0, 0, 100}, want: "empty target"},
		{name: "NUL in symlink", size: 100, count: 1, strs: 1, records: []any{lnkT, 1, "\x00", 0, 100}, want: "NUL"},
		{name: "device numbers truncated", size: 100, count: 1, strs: 0, records: []any{chrT, 1}, want: "truncated varint"},
		{name: "child at parent offset", size: 333, count: 3, strs: 2, records: []any{dirT, 2, 0, regT, 0, 1, "a", 1, 0}, want: "not after 0"},
		{name: "offset past end", size: 333, count: 3, strs: 2, records: []any{dirT, 2, 0, regT, 0, 1, "a", 1, 334}, want: "past the archive's end"},
		{name: "payload at offset", size: 333, count: 3, strs: 2, records: []any{dirT, 2, 0, regT, 0, 1, "a", 1, 81, 0}, want: "payload offset 81 not after"},
		{name: "payload past end", size: 333, count: 3, strs: 2, records: []any{dirT, 2, 0, regT, 0, 1, "a", 1000, 81, 80}, want: "runs past the archive's end"},
		{name: "empty dir ends at offset", size: 100, count: 1, strs: 0, records: []any{dirT, 0, 0, 0}, want: "end 0 not after offset 0"},
		{name: "fifo ends at offset", size: 100, count: 1, strs: 0, records: []any{ModeFIFO >> 12, 0, 0}, want: "end 0 not after offset 0"},
		{name: "dir end past archive", size: 333, count: 3, strs: 2, records: append(slices.Clone(valid[:len(valid)-1]), 73), want: "past the archive's end"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := tocCraft(tt.size, 0, tt.count, tt.strs, tt.records...)
			_, err := UnmarshalTOC(data)
			if !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("UnmarshalTOC(%s) = %v, want ErrFormat containing %q", tt.name, err, tt.want)
			}
		})
	}
}

func TestTOCMarshalErrors(t *testing.T) {
	var zero TOC
	if _, err := zero.MarshalBinary(); !errors.Is(err, ErrFormat) {
		t.Errorf("TOC{}.MarshalBinary() = %v, want ErrFormat", err)
	}
	if d := zero.Digest(); d != "" {
		t.Errorf("TOC{}.Digest() = %q, want \"\"", d)
	}
	toc, _ := tocBuild(t, tocSampleTree())
	toc.ArchiveSize++
	if _, err := toc.MarshalBinary(); !errors.Is(err, ErrFormat) {
		t.Errorf("MarshalBinary() with a wrong ArchiveSize = %v, want ErrFormat", err)
	}
}

func TestTOCNoAllocs(t *testing.T) {
	toc, _ := tocBuild(t, tocDebianLike(3000, 3))
	paths := make([]string, toc.Len())
	missing := make([]string, toc.Len())
	for i := range paths {
		paths[i] = toc.Path(i)
		missing[i] = paths[i] + "x/y"
	}
	tests := []struct {
		name string
		f    func(i int)
	}{
		{name: "Lookup", f: func(i int) { toc.Lookup(paths[i]) }},
		{name: "Lookup missing", f: func(i int) { toc.Lookup(missing[i]) }},
		{name: "Child", f: func(i int) { toc.Child(toc.Parent(i), toc.Name(i)) }},
		{name: "Children", f: func(i int) { _ = toc.Children(toc.Parent(i)) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			i := 0
			allocs := testing.AllocsPerRun(1000, func() {
				i = i%(len(paths)-1) + 1
				tt.f(i)
			})
			if allocs != 0 {
				t.Errorf("%s allocates %v times per call, want 0", tt.name, allocs)
			}
		})
	}
}
