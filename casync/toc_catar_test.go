package casync

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/bootfs/bootfs/internal/testenv"
)

// This file checks the TOC against the catar code: the TOC built while
// encoding equals the one rebuilt from the archive, and both agree with
// the Decoder, the ArchiveReader and the file contents.

// tocTarTree converts a generated tree into tar nodes (file contents are
// small, so a large tree stays quick to encode).
func tocTarTree(root *tocNodeSpec) []tnode {
	var out []tnode
	var walk func(n *tocNodeSpec, path string)
	walk = func(n *tocNodeSpec, path string) {
		perm := int64(n.e.Mode & ModePermMask)
		var tn tnode
		switch n.e.Mode & ModeTypeMask {
		case ModeDir:
			tn = tdir(path, withMode(perm))
		case ModeRegular:
			tn = tfile(path, bytes.Repeat([]byte{byte(len(path))}, int(n.e.Size%2000)), withMode(perm))
		case ModeSymlink:
			tn = tsymlink(path, n.e.LinkTarget)
		case ModeChar:
			tn = tchardev(path, int64(n.e.RdevMajor), int64(n.e.RdevMinor), withMode(perm))
		default:
			return
		}
		tn.uid, tn.gid = int(n.e.UID), int(n.e.GID)
		for _, x := range n.e.Xattrs {
			tn.xattrs[x.Name] = string(x.Value)
		}
		out = append(out, tn)
		for _, k := range n.kids {
			walk(k, path+"/"+k.name)
		}
	}
	walk(root, ".")
	return out
}

// tocCheckArchive checks toc against the archive it indexes: the Decoder
// yields the same entries, the ArchiveReader looks up the same nodes, and
// every file's bytes at PayloadOffset are the ones the Decoder reads.
func tocCheckArchive(t *testing.T, toc *TOC, catar []byte) {
	t.Helper()
	if toc.ArchiveSize != int64(len(catar)) {
		t.Fatalf("ArchiveSize = %d, want %d", toc.ArchiveSize, len(catar))
	}
	d := NewDecoder(bytes.NewReader(catar))
	var decoded []*Entry
	for i := 0; ; i++ {
		e, err := d.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("Decoder.Next() = %v", err)
		}
		content, err := io.ReadAll(d)
		if err != nil {
			t.Fatalf("Decoder.Read(%q) = %v", e.Path, err)
		}
		if i >= toc.Len() {
			t.Fatalf("the archive has more than the TOC's %d entries", toc.Len())
		}
		got := toc.Entry(i)
		if got.Path != e.Path {
			t.Fatalf("Entry(%d).Path = %q, want %q", i, got.Path, e.Path)
		}
		if e.IsRegular() {
			if b := catar[got.PayloadOffset : got.PayloadOffset+int64(got.Size)]; !bytes.Equal(b, content) {
				t.Errorf("archive bytes at Entry(%q).PayloadOffset differ from its content", e.Path)
			}
		}
		decoded = append(decoded, e)
	}
	if len(decoded) != toc.Len() {
		t.Fatalf("the archive has %d entries, the TOC %d", len(decoded), toc.Len())
	}
	// A directory's End is final only once the Decoder is past it.
	for i, e := range decoded {
		if got := toc.Entry(i); !tocEntryEqual(got, e) {
			t.Errorf("Entry(%d) = %+v, Decoder gives %+v", i, got, e)
		}
	}
	ar, err := NewArchiveReader(bytes.NewReader(catar), int64(len(catar)))
	if err != nil {
		t.Fatalf("NewArchiveReader() = %v", err)
	}
	for i := 0; i < toc.Len(); i++ {
		want := toc.Entry(i)
		got, err := ar.Lookup(want.Path)
		if err != nil {
			t.Fatalf("ArchiveReader.Lookup(%q) = %v", want.Path, err)
		}
		if got.Offset != want.Offset || got.Mode != want.Mode || got.Size != want.Size || got.PayloadOffset != want.PayloadOffset {
			t.Errorf("ArchiveReader.Lookup(%q) = offset %d, mode %#o, size %d, payload %d; TOC has %d, %#o, %d, %d",
				want.Path, got.Offset, got.Mode, got.Size, got.PayloadOffset, want.Offset, want.Mode, want.Size, want.PayloadOffset)
		}
		if want.IsDir() {
			ents, err := ar.ReadDir(want.Path)
			if err != nil {
				t.Fatalf("ArchiveReader.ReadDir(%q) = %v", want.Path, err)
			}
			kids := toc.Children(i)
			if len(ents) != len(kids) {
				t.Fatalf("ArchiveReader.ReadDir(%q) has %d entries, Children has %d", want.Path, len(ents), len(kids))
			}
			for k, e := range ents {
				if e.Path != toc.Path(kids[k]) {
					t.Errorf("ArchiveReader.ReadDir(%q)[%d] = %q, Children gives %q", want.Path, k, e.Path, toc.Path(kids[k]))
				}
			}
		}
	}
}

// TestTOCFromEncoder checks that the TOC that EncodeTar's OnEntry hook
// builds is byte-identical to BuildTOC of the archive, and right.
func TestTOCFromEncoder(t *testing.T) {
	tests := []struct {
		name  string
		nodes []tnode
	}{
		{name: "tricky", nodes: trickyTree(false)},
		{name: "debian-like", nodes: tocTarTree(tocDebianLike(2000, 11))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := NewTOCBuilder()
			var buf bytes.Buffer
			opts := &EncodeOptions{OnEntry: b.Add}
			if err := EncodeTar(context.Background(), &buf, bytes.NewReader(tarOf(t, tt.nodes...)), opts); err != nil {
				t.Fatalf("EncodeTar() = %v", err)
			}
			catar := buf.Bytes()
			toc, err := b.TOC(int64(len(catar)), CatarFeatureFlags(SHA512_256))
			if err != nil {
				t.Fatalf("TOC() = %v", err)
			}
			rebuilt, err := BuildTOC(bytes.NewReader(catar))
			if err != nil {
				t.Fatalf("BuildTOC() = %v", err)
			}
			want, _ := toc.MarshalBinary()
			got, err := rebuilt.MarshalBinary()
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("BuildTOC(catar).MarshalBinary() = %d bytes, %v; want the %d bytes built while encoding", len(got), err, len(want))
			}
			tocCheckArchive(t, rebuilt, catar)
		})
	}
}

// TestBuildTOCErrors checks that a broken archive gives the Decoder's
// error, not a TOC.
func TestBuildTOCErrors(t *testing.T) {
	var buf bytes.Buffer
	if err := EncodeTar(context.Background(), &buf, bytes.NewReader(tarOf(t, trickyTree(false)...)), nil); err != nil {
		t.Fatal(err)
	}
	catar := buf.Bytes()
	for _, n := range []int{0, 1, 64, len(catar) / 2, len(catar) - 1} {
		if toc, err := BuildTOC(bytes.NewReader(catar[:n])); err == nil {
			t.Errorf("BuildTOC(first %d of %d bytes) = %d entries, want an error", n, len(catar), toc.Len())
		}
	}
	if toc, err := BuildTOC(bytes.NewReader(append(bytes.Clone(catar), 0))); err == nil {
		t.Errorf("BuildTOC(archive + 1 byte) = %d entries, want an error", toc.Len())
	}
}

// TestTOCOfCasyncFixtures builds the TOC of the archives in
// testdata/catar, which the real casync made, and pins them as golden
// files in testdata/toc (which also seed FuzzUnmarshalTOC).
func TestTOCOfCasyncFixtures(t *testing.T) {
	fixtures, _ := filepath.Glob(filepath.Join("testdata", "catar", "*.catar"))
	if len(fixtures) == 0 {
		t.Fatal("no testdata/catar/*.catar fixtures")
	}
	for _, f := range fixtures {
		name := filepath.Base(f)
		t.Run(name, func(t *testing.T) {
			catar, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			toc, err := BuildTOC(bytes.NewReader(catar))
			if err != nil {
				t.Fatalf("BuildTOC(%s) = %v", f, err)
			}
			tocCheckArchive(t, toc, catar)
			data, err := toc.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			golden := filepath.Join("testdata", "toc", name[:len(name)-len(".catar")]+".toc")
			if *tocUpdate {
				if err := os.WriteFile(golden, data, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test ./casync -run TestTOCOfCasyncFixtures -update-toc)", err)
			}
			if !bytes.Equal(data, want) {
				t.Errorf("TOC of %s = %d bytes, differing from %s (%d bytes)", f, len(data), golden, len(want))
			}
		})
	}
}

// TestTOCMatchesCasync makes an archive of a tree on disk with the real
// casync, and checks that its TOC equals the one EncodeDir's OnEntry hook
// builds for the same tree.
func TestTOCMatchesCasync(t *testing.T) {
	testenv.LookPath(t, "casync")
	root := makeCatarTree(t, withSocket(trickyTree(false)))
	out := filepath.Join(t.TempDir(), "tree.catar")
	runCasync(t, append(append([]string{"make"}, CasyncMakeArgs...), out, root)...)
	catar, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	fromCasync, err := BuildTOC(bytes.NewReader(catar))
	if err != nil {
		t.Fatalf("BuildTOC(casync's archive) = %v", err)
	}
	tocCheckArchive(t, fromCasync, catar)

	b := NewTOCBuilder()
	ours := encodeDirBytes(t, root, &EncodeOptions{OnEntry: b.Add})
	fromEncoder, err := b.TOC(int64(len(ours)), CatarFeatureFlags(SHA512_256))
	if err != nil {
		t.Fatalf("TOC() = %v", err)
	}
	if got, want := fromEncoder.Digest(), fromCasync.Digest(); got != want {
		for i := 0; i < min(fromEncoder.Len(), fromCasync.Len()); i++ {
			if a, c := fromEncoder.Entry(i), fromCasync.Entry(i); !tocEntryEqual(a, c) {
				t.Errorf("first difference: EncodeDir gives %+v, casync %+v", a, c)
				break
			}
		}
		t.Fatalf("TOC from EncodeDir has digest %s, from casync's archive %s", got, want)
	}
	if n := fromCasync.Len(); n < len(trickyTree(false)) {
		t.Errorf("TOC of casync's archive has %d entries, want at least %d", n, len(trickyTree(false)))
	}
}
