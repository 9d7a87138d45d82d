package casync

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// decodeAll decodes a whole archive, reading every file's content.
func decodeAll(data []byte) ([]*Entry, error) {
	d := NewDecoder(bytes.NewReader(data))
	var ents []*Entry
	for {
		e, err := d.Next()
		if err == io.EOF {
			return ents, nil
		}
		if err != nil {
			return ents, err
		}
		if _, err := io.Copy(io.Discard, d); err != nil {
			return ents, err
		}
		ents = append(ents, e)
	}
}

// normEntry makes entries comparable with reflect.DeepEqual: empty and nil
// slices are the same.
func normEntry(e *Entry) Entry {
	c := *e
	if len(c.Xattrs) == 0 {
		c.Xattrs = nil
	}
	for i := range c.Xattrs {
		if len(c.Xattrs[i].Value) == 0 {
			c.Xattrs[i].Value = nil
		}
	}
	c.Xattrs = append([]Xattr(nil), c.Xattrs...)
	if len(c.FCaps) == 0 && c.FCaps != nil {
		c.FCaps = []byte{}
	}
	return c
}

// TestEntriesAgree checks that OnEntry, the Decoder and the ArchiveReader
// describe every node of an archive the same way, and that the contents
// read back.
func TestEntriesAgree(t *testing.T) {
	nodes := trickyTree(false)
	var reported []*Entry
	data := encodeTarBytes(t, tarOf(t, nodes...), &EncodeOptions{OnEntry: func(e *Entry) error {
		reported = append(reported, e)
		return nil
	}})
	decoded, err := decodeAll(data)
	requireOK(t, "decode", err)
	if len(decoded) != len(reported) {
		t.Fatalf("decoded %d entries, OnEntry reported %d", len(decoded), len(reported))
	}
	ar, err := NewArchiveReader(bytes.NewReader(data), int64(len(data)))
	requireOK(t, "NewArchiveReader", err)
	for i, want := range decoded {
		if got := reported[i]; !reflect.DeepEqual(normEntry(got), normEntry(want)) {
			t.Errorf("OnEntry #%d = %+v, want %+v", i, *got, *want)
		}
		got, err := ar.Lookup(want.Path)
		if err != nil {
			t.Errorf("Lookup(%q): %v", want.Path, err)
			continue
		}
		if !reflect.DeepEqual(normEntry(got), normEntry(want)) {
			t.Errorf("Lookup(%q) = %+v, want %+v", want.Path, *got, *want)
		}
	}
	// Contents, through the ArchiveReader.
	byPath := map[string]tnode{}
	for _, n := range nodes {
		if n.typ == 'L' {
			continue
		}
		byPath[n.path] = n
	}
	for _, n := range nodes {
		content := n.data
		if n.typ == '1' { // hardlink
			content = byPath[n.target].data
		} else if n.typ != '0' {
			continue
		}
		e, err := ar.Lookup(n.path)
		requireOK(t, "Lookup", err)
		sr, err := ar.OpenFile(e)
		requireOK(t, "OpenFile", err)
		got, err := io.ReadAll(sr)
		requireOK(t, "read", err)
		if !bytes.Equal(got, content) {
			t.Errorf("content of %q: got %d bytes (sha256 %x), want %d", n.path, len(got), sha256.Sum256(got), len(content))
		}
		if len(content) > 10 {
			p := make([]byte, 5)
			if _, err := sr.ReadAt(p, 3); err != nil || !bytes.Equal(p, content[3:8]) {
				t.Errorf("ReadAt(%q, 3) = %q, %v, want %q", n.path, p, err, content[3:8])
			}
		}
	}
}

// TestDecoderRoundTrip255 checks a name of NAME_MAX bytes, which casync
// itself cannot extract.
func TestDecoderRoundTrip255(t *testing.T) {
	long := strings.Repeat("é", 127) + "x" // 255 bytes
	if len(long) != 255 {
		t.Fatalf("name is %d bytes", len(long))
	}
	content := []byte("the longest name")
	data := encodeTarBytes(t, tarOf(t, tdir("."), tdir("d"), tfile("d/"+long, content)), nil)
	d := NewDecoder(bytes.NewReader(data))
	var got []string
	for {
		e, err := d.Next()
		if err == io.EOF {
			break
		}
		requireOK(t, "Next", err)
		got = append(got, e.Path)
		if e.Path == "d/"+long {
			b, err := io.ReadAll(d)
			requireOK(t, "Read", err)
			if !bytes.Equal(b, content) {
				t.Errorf("Read(%q) = %q, want %q", e.Path, b, content)
			}
		}
	}
	if want := []string{"", "d", "d/" + long}; !reflect.DeepEqual(got, want) {
		t.Errorf("paths = %q, want %q", got, want)
	}
	ar, err := NewArchiveReader(bytes.NewReader(data), int64(len(data)))
	requireOK(t, "NewArchiveReader", err)
	if _, err := ar.Lookup("d/" + long); err != nil {
		t.Errorf("Lookup(255-byte name): %v", err)
	}
	// 256 bytes is refused by the encoder.
	var buf bytes.Buffer
	err = EncodeTar(context.Background(), &buf, bytes.NewReader(tarOf(t, tfile(long+"y", nil))), nil)
	if !errors.Is(err, ErrUnsupported) {
		t.Errorf("EncodeTar(256-byte name) = %v, want ErrUnsupported", err)
	}
}

// smallArchive is a valid archive with a bit of everything, for the
// corruption tests.
func smallArchive(t testing.TB) []byte {
	return encodeTarBytes(t, tarOf(t,
		tdir("."),
		tfile("ab", []byte("hello"), withXattr("user.x", "1")),
		tdir("cd"),
		tsymlink("cd/ef", "ab"),
		tfifo("cd/gh"),
		tchardev("ij", 1, 5),
		tfile("kl", []byte("world")),
	), nil)
}

// findRecord returns the offset of the n-th record of type typ whose
// header is found by scanning (test archives only).
func findRecord(t testing.TB, data []byte, typ uint64, body string) int {
	t.Helper()
	var h [16]byte
	binary.LittleEndian.PutUint64(h[8:], typ)
	for i := 0; i+16 <= len(data); i++ {
		if bytes.Equal(data[i+8:i+16], h[8:]) && strings.HasPrefix(string(data[i+16:]), body) {
			return i
		}
	}
	t.Fatalf("no %s record with %q", recordName(typ), body)
	return 0
}

func TestDecoderRejectsCorruption(t *testing.T) {
	base := smallArchive(t)
	put := func(b []byte, off int, v uint64) { binary.LittleEndian.PutUint64(b[off:], v) }
	for _, tc := range []struct {
		name   string
		mutate func(t *testing.T, b []byte) []byte
		want   string
	}{
		{"unsorted names", func(t *testing.T, b []byte) []byte {
			i, j := findRecord(t, b, recFilename, "ab\x00"), findRecord(t, b, recFilename, "kl\x00")
			copy(b[i+16:], "kl")
			copy(b[j+16:], "ab")
			return b
		}, "not sorted"},
		{"slash in name", func(t *testing.T, b []byte) []byte {
			copy(b[findRecord(t, b, recFilename, "ab\x00")+16:], "a/")
			return b
		}, "invalid file name"},
		{"dot name", func(t *testing.T, b []byte) []byte {
			i := findRecord(t, b, recFilename, "ab\x00")
			copy(b[i+16:], "..")
			return b
		}, "invalid file name"},
		{"NUL in name", func(t *testing.T, b []byte) []byte {
			i := findRecord(t, b, recFilename, "ab\x00")
			b[i+17] = 0
			return b
		}, "invalid file name"},
		{"renamed entry", func(t *testing.T, b []byte) []byte {
			i := findRecord(t, b, recFilename, "ab\x00")
			copy(b[i+16:], "aa")
			return b
		}, "GOODBYE table"},
		{"goodbye hash", func(t *testing.T, b []byte) []byte {
			b[len(b)-24-1] ^= 1
			return b
		}, "GOODBYE table"},
		{"goodbye tail", func(t *testing.T, b []byte) []byte {
			b[len(b)-20] ^= 1
			return b
		}, "GOODBYE table"},
		{"goodbye size", func(t *testing.T, b []byte) []byte {
			i := findRecord(t, b, recGoodbye, "")
			put(b, i, 16)
			return b
		}, "GOODBYE record of 16 bytes"},
		{"flags differ", func(t *testing.T, b []byte) []byte {
			i := findRecord(t, b, recFilename, "ab\x00") + 19
			put(b, i+16, CatarFeatures&^FeatureWithFCaps)
			return b
		}, "feature flags"},
		{"unknown flags", func(t *testing.T, b []byte) []byte {
			put(b, 16, CatarFeatures|1<<40)
			return b
		}, "unknown feature flags"},
		{"mode bits", func(t *testing.T, b []byte) []byte {
			put(b, 24, ModeDir|0o10000)
			return b
		}, "invalid mode"},
		{"root not a directory", func(t *testing.T, b []byte) []byte {
			put(b, 24, ModeFIFO|0o644)
			return b
		}, "not a directory"},
		{"uid 65535", func(t *testing.T, b []byte) []byte {
			put(b, 40, 65535)
			return b
		}, "invalid uid"},
		{"huge xattr", func(t *testing.T, b []byte) []byte {
			put(b, findRecord(t, b, recXattr, "user.x"), 1<<60)
			return b
		}, "XATTR record of"},
		{"huge payload", func(t *testing.T, b []byte) []byte {
			put(b, findRecord(t, b, recPayload, "hello"), 1<<60)
			return b
		}, "truncated"},
		{"huge entry", func(t *testing.T, b []byte) []byte {
			put(b, 0, 1<<60)
			return b
		}, "ENTRY record of"},
		{"tiny record", func(t *testing.T, b []byte) []byte {
			put(b, findRecord(t, b, recXattr, "user.x"), 3)
			return b
		}, "smaller than its header"},
		{"unknown record", func(t *testing.T, b []byte) []byte {
			put(b, findRecord(t, b, recXattr, "user.x")+8, 0x1234)
			return b
		}, "unexpected unknown record"},
		{"device number", func(t *testing.T, b []byte) []byte {
			put(b, findRecord(t, b, recDevice, "")+16, 1<<12)
			return b
		}, "out of range"},
		{"symlink without NUL", func(t *testing.T, b []byte) []byte {
			i := findRecord(t, b, recSymlink, "ab\x00")
			b[i+18] = 'x'
			return b
		}, "malformed symlink"},
		{"trailing data", func(t *testing.T, b []byte) []byte {
			return append(b, 0)
		}, "data after"},
		{"empty", func(t *testing.T, b []byte) []byte { return nil }, "truncated"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := tc.mutate(t, bytes.Clone(base))
			_, err := decodeAll(data)
			if !isFormatErr(err) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("decode = %v, want an ErrFormat error containing %q", err, tc.want)
			}
		})
	}
}

// TestDecoderTruncated decodes every prefix of an archive: each must fail
// with ErrFormat, none may panic or succeed.
func TestDecoderTruncated(t *testing.T) {
	data := smallArchive(t)
	for n := 0; n < len(data); n++ {
		_, err := decodeAll(data[:n])
		if !errors.Is(err, ErrFormat) {
			t.Fatalf("decode of the first %d of %d bytes = %v, want ErrFormat", n, len(data), err)
		}
		if _, err := NewArchiveReader(bytes.NewReader(data[:n]), int64(n)); err == nil && n > 0 {
			// The tail of a prefix is never a GOODBYE tail for the root.
			t.Errorf("NewArchiveReader(first %d bytes) succeeded", n)
		}
	}
}

// TestDecoderStickyError checks that errors repeat.
func TestDecoderStickyError(t *testing.T) {
	data := smallArchive(t)
	d := NewDecoder(bytes.NewReader(data[:100]))
	var first error
	for i := 0; i < 10 && first == nil; i++ {
		_, first = d.Next()
	}
	if first == nil {
		t.Fatal("no error")
	}
	if _, err := d.Next(); err != first {
		t.Errorf("Next after %v = %v, want the same error", first, err)
	}
	if _, err := d.Read(make([]byte, 1)); err != first {
		t.Errorf("Read after %v = %v, want the same error", first, err)
	}
}

// deepSource is an in-memory tree of nested directories, deeper than tar
// or a file system would make easy.
type deepSource struct{ depth int }

func (s deepSource) meta() (*nodeMeta, error) { return &nodeMeta{mode: ModeDir | 0o755}, nil }
func (s deepSource) children() ([]encChild, error) {
	if s.depth == 0 {
		return nil, nil
	}
	return []encChild{{name: "d", src: deepSource{s.depth - 1}}}, nil
}
func (s deepSource) open() (io.ReadCloser, error) { return nil, errors.New("not a file") }

func TestDecoderDepthLimit(t *testing.T) {
	for _, tc := range []struct {
		name  string
		depth int
		ok    bool
	}{
		{"at limit", MaxCatarDepth, true},
		{"over limit", MaxCatarDepth + 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			cw := newCatarWriter(context.Background(), &buf, nil)
			cw.maxDepth = tc.depth // the encoder refuses what the decoder must refuse
			requireOK(t, "encode", cw.encodeTree(deepSource{tc.depth}))
			ents, err := decodeAll(buf.Bytes())
			if tc.ok && (err != nil || len(ents) != tc.depth+1) {
				t.Errorf("decode of depth %d = %d entries, %v", tc.depth, len(ents), err)
			}
			if !tc.ok && (!errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), fmt.Sprintf("nested %d levels deep", tc.depth))) {
				t.Errorf("decode of depth %d = %v, want a nesting error", tc.depth, err)
			}
		})
	}
}

// TestDecodeHugeClaimsDoNotAllocate checks that records claiming huge
// sizes are refused before anything is allocated for them.
func TestDecodeHugeClaimsDoNotAllocate(t *testing.T) {
	base := smallArchive(t)
	for _, typ := range []uint64{recXattr, recFilename, recSymlink, recFCaps, recSELinux, recGoodbye} {
		data := bytes.Clone(base)
		i := findRecord(t, data, recXattr, "user.x")
		binary.LittleEndian.PutUint64(data[i:], 1<<60)
		binary.LittleEndian.PutUint64(data[i+8:], typ)
		allocs := testing.AllocsPerRun(5, func() {
			if _, err := decodeAll(data); !isFormatErr(err) {
				t.Fatalf("decode with a huge %s = %v", recordName(typ), err)
			}
		})
		// decodeAll itself allocates the reader and a few entries; a
		// buffer for the claimed size would crash, not count.
		if allocs > 200 {
			t.Errorf("decode with a huge %s: %v allocations", recordName(typ), allocs)
		}
	}
}

// TestGoldenFixtures decodes the archives that casync made (see
// testdata/README.md) and compares them with casync's mtree listing.
func TestGoldenFixtures(t *testing.T) {
	files, err := filepath.Glob("testdata/catar/*.catar")
	requireOK(t, "glob", err)
	if len(files) == 0 {
		t.Fatal("no fixtures in testdata/catar")
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			requireOK(t, "read", err)
			wantMtree, err := os.ReadFile(strings.TrimSuffix(f, ".catar") + ".mtree")
			requireOK(t, "read mtree", err)
			_, gotMtree := decodeListing(t, data)
			compareMtree(t, gotMtree, string(wantMtree))

			ents, err := decodeAll(data)
			requireOK(t, "decode", err)
			ar, err := NewArchiveReader(bytes.NewReader(data), int64(len(data)))
			requireOK(t, "NewArchiveReader", err)
			children := map[string][]string{}
			for _, e := range ents {
				got, err := ar.Lookup(e.Path)
				if err != nil {
					t.Errorf("Lookup(%q): %v", e.Path, err)
				} else if !reflect.DeepEqual(normEntry(got), normEntry(e)) {
					t.Errorf("Lookup(%q) = %+v, want %+v", e.Path, *got, *e)
				}
				if e.Path != "" {
					parent := ""
					if i := strings.LastIndexByte(e.Path, '/'); i >= 0 {
						parent = e.Path[:i]
					}
					children[parent] = append(children[parent], e.Path)
				}
			}
			for _, e := range ents {
				if !e.IsDir() {
					continue
				}
				list, err := ar.ReadDir(e.Path)
				requireOK(t, "ReadDir", err)
				var got []string
				for _, c := range list {
					got = append(got, c.Path)
				}
				if !reflect.DeepEqual(got, children[e.Path]) {
					t.Errorf("ReadDir(%q) = %q, want %q", e.Path, got, children[e.Path])
				}
			}
		})
	}
}

// compareMtree compares our mtree rendering with casync's, field by field;
// casync may print fields we do not render (user and group names, chattr
// flags) for archives with more features.
func compareMtree(t testing.TB, got, want string) {
	t.Helper()
	parse := func(s string) ([]string, map[string]map[string]string) {
		var order []string
		m := map[string]map[string]string{}
		for _, line := range strings.Split(strings.TrimSpace(s), "\n") {
			f := strings.Fields(line)
			kv := map[string]string{}
			for _, x := range f[1:] {
				k, v, _ := strings.Cut(x, "=")
				kv[k] = v
			}
			order = append(order, f[0])
			m[f[0]] = kv
		}
		return order, m
	}
	gotOrder, g := parse(got)
	wantOrder, w := parse(want)
	if !reflect.DeepEqual(gotOrder, wantOrder) {
		t.Fatalf("mtree paths:\n got %q\nwant %q", gotOrder, wantOrder)
	}
	for _, p := range wantOrder {
		for k, wv := range w[p] {
			if k == "uname" || k == "gname" || k == "flags" {
				continue
			}
			if gv, ok := g[p][k]; !ok || gv != wv {
				t.Errorf("mtree %s: %s=%q, want %q", p, k, gv, wv)
			}
		}
		for k := range g[p] {
			if _, ok := w[p][k]; !ok {
				t.Errorf("mtree %s: extra field %s", p, k)
			}
		}
	}
}

var _ = fmt.Sprint
