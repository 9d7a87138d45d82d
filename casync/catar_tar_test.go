package casync

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"
)

// decodeTar encodes a tar and decodes the archive into entries and
// contents by path.
func decodeTar(t *testing.T, tarball []byte) (map[string]*Entry, map[string]string, []string) {
	t.Helper()
	data := encodeTarBytes(t, tarball, nil)
	d := NewDecoder(bytes.NewReader(data))
	ents, contents := map[string]*Entry{}, map[string]string{}
	var order []string
	for {
		e, err := d.Next()
		if err == io.EOF {
			return ents, contents, order
		}
		requireOK(t, "Next", err)
		b, err := io.ReadAll(d)
		requireOK(t, "Read", err)
		ents[e.Path], contents[e.Path] = e, string(b)
		order = append(order, e.Path)
	}
}

// rawTar builds a tar from headers as given, for names and types that
// tarOf would not write.
func rawTar(t *testing.T, format tar.Format, hdrs ...*tar.Header) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range hdrs {
		if h.Format == tar.FormatUnknown {
			h.Format = format
		}
		if h.ModTime.IsZero() {
			h.ModTime = defaultMTime
		}
		data := strings.Repeat("x", int(h.Size))
		requireOK(t, "WriteHeader "+h.Name, tw.WriteHeader(h))
		if _, err := tw.Write([]byte(data)); err != nil {
			t.Fatal(err)
		}
	}
	requireOK(t, "close tar", tw.Close())
	return buf.Bytes()
}

func TestEncodeTarSemantics(t *testing.T) {
	mtime := time.Unix(1700000000, 987654321)
	for _, tc := range []struct {
		name  string
		tar   func(t *testing.T) []byte
		check func(t *testing.T, ents map[string]*Entry, contents map[string]string, order []string)
	}{
		{"implied directories", func(t *testing.T) []byte {
			return tarOf(t, tfile("a/b/file", []byte("x"), withOwner(5, 5)))
		}, func(t *testing.T, ents map[string]*Entry, _ map[string]string, order []string) {
			if want := []string{"", "a", "a/b", "a/b/file"}; !reflect.DeepEqual(order, want) {
				t.Errorf("paths = %q, want %q", order, want)
			}
			for _, p := range []string{"", "a", "a/b"} {
				e := ents[p]
				if e.Mode != ModeDir|0o755 || e.UID != 0 || e.GID != 0 || e.MTime != 0 {
					t.Errorf("implied %q = mode %#o owner %d:%d mtime %d, want 040755 0:0 0", p, e.Mode, e.UID, e.GID, e.MTime)
				}
			}
		}},
		{"explicit directory after its child", func(t *testing.T) []byte {
			return tarOf(t, tfile("a/f", nil), tdir("a", withMode(0o700), withOwner(3, 4), withMTime(mtime)))
		}, func(t *testing.T, ents map[string]*Entry, _ map[string]string, _ []string) {
			if e := ents["a"]; e.Mode != ModeDir|0o700 || e.UID != 3 || e.MTime != uint64(mtime.UnixNano()) {
				t.Errorf("a = %+v, want the explicit entry's metadata", *e)
			}
			if ents["a/f"] == nil {
				t.Error("a/f lost")
			}
		}},
		{"leading slash and dot", func(t *testing.T) []byte {
			return rawTar(t, tar.FormatPAX,
				&tar.Header{Name: "/etc/x", Typeflag: tar.TypeReg, Mode: 0o644},
				&tar.Header{Name: "./etc/y", Typeflag: tar.TypeReg, Mode: 0o644},
				&tar.Header{Name: "etc//./z", Typeflag: tar.TypeReg, Mode: 0o644})
		}, func(t *testing.T, _ map[string]*Entry, _ map[string]string, order []string) {
			if want := []string{"", "etc", "etc/x", "etc/y", "etc/z"}; !reflect.DeepEqual(order, want) {
				t.Errorf("paths = %q, want %q", order, want)
			}
		}},
		{"root entry", func(t *testing.T) []byte {
			return tarOf(t, tdir(".", withMode(0o711), withOwner(1, 2), withMTime(mtime)), tfile("f", nil))
		}, func(t *testing.T, ents map[string]*Entry, _ map[string]string, _ []string) {
			if e := ents[""]; e.Mode != ModeDir|0o711 || e.UID != 1 || e.GID != 2 || e.MTime != uint64(mtime.UnixNano()) {
				t.Errorf("root = %+v", *e)
			}
		}},
		{"repeated path, later wins", func(t *testing.T) []byte {
			return tarOf(t,
				tfile("f", []byte("old")), tfile("f", []byte("new"), withMode(0o600)),
				tdir("d", withMode(0o700)), tfile("d/kept", []byte("k")), tdir("d", withMode(0o750)),
				tdir("dir2file"), tfile("dir2file/gone", nil), tfile("dir2file", []byte("file now")),
				tfile("file2dir", []byte("gone")), tdir("file2dir"), tfile("file2dir/child", nil),
			)
		}, func(t *testing.T, ents map[string]*Entry, contents map[string]string, _ []string) {
			if contents["f"] != "new" || ents["f"].Mode != ModeRegular|0o600 {
				t.Errorf("f = %q mode %#o, want the later entry", contents["f"], ents["f"].Mode)
			}
			if ents["d"].Mode != ModeDir|0o750 || ents["d/kept"] == nil {
				t.Errorf("d = mode %#o, kept %v: want new metadata and the old child", ents["d"].Mode, ents["d/kept"] != nil)
			}
			if contents["dir2file"] != "file now" || ents["dir2file/gone"] != nil {
				t.Errorf("dir2file = %q, want a file without children", contents["dir2file"])
			}
			if !ents["file2dir"].IsDir() || ents["file2dir/child"] == nil {
				t.Errorf("file2dir = %+v, want a directory", *ents["file2dir"])
			}
		}},
		{"hardlinks are full copies", func(t *testing.T) []byte {
			return tarOf(t,
				tfile("a", []byte("shared"), withMode(0o4750), withOwner(7, 8), withXattr("user.x", "y"), withXattr("security.capability", fcapsValue())),
				thardlink("b", "a"), thardlink("sub/c", "/a"),
				tfile("a", []byte("replaced")), // the links keep the old inode
				tfifo("p"), thardlink("q", "p"),
			)
		}, func(t *testing.T, ents map[string]*Entry, contents map[string]string, _ []string) {
			if contents["a"] != "replaced" {
				t.Errorf("a = %q, want %q", contents["a"], "replaced")
			}
			for _, p := range []string{"b", "sub/c"} {
				e := ents[p]
				if contents[p] != "shared" || e.Mode != ModeRegular|0o4750 || e.UID != 7 || len(e.Xattrs) != 1 || string(e.FCaps) != fcapsValue() {
					t.Errorf("%s = %q %+v, want a copy of the original a", p, contents[p], *e)
				}
			}
			if ents["q"].Type() != ModeFIFO {
				t.Errorf("q = mode %#o, want a FIFO", ents["q"].Mode)
			}
		}},
		{"owners and times", func(t *testing.T) []byte {
			return tarOf(t, tfile("f", nil, withOwner(100000, 4000000000), withMTime(mtime)))
		}, func(t *testing.T, ents map[string]*Entry, _ map[string]string, _ []string) {
			if e := ents["f"]; e.UID != 100000 || e.GID != 4000000000 || e.MTime != uint64(mtime.UnixNano()) {
				t.Errorf("f = owner %d:%d mtime %d", e.UID, e.GID, e.MTime)
			}
		}},
		{"long names", func(t *testing.T) []byte {
			long := strings.Repeat("d", 150) + "/" + strings.Repeat("f", 200)
			return rawTar(t, tar.FormatGNU,
				&tar.Header{Name: long, Typeflag: tar.TypeReg, Mode: 0o644, Size: 3},
				&tar.Header{Name: "l", Typeflag: tar.TypeSymlink, Linkname: strings.Repeat("t/", 300)})
		}, func(t *testing.T, ents map[string]*Entry, contents map[string]string, _ []string) {
			long := strings.Repeat("d", 150) + "/" + strings.Repeat("f", 200)
			if contents[long] != "xxx" {
				t.Errorf("long name = %q", contents[long])
			}
			if ents["l"].LinkTarget != strings.Repeat("t/", 300) {
				t.Errorf("long link target = %q", ents["l"].LinkTarget)
			}
		}},
		{"xattrs casync stores", func(t *testing.T) []byte {
			return tarOf(t,
				tfile("f", nil, withXattr("user.b", "2"), withXattr("user.a", "1"), withXattr("trusted.t", "t"),
					withXattr("security.selinux", "system_u:object_r:bin_t:s0"), withXattr("system.posix_acl_access", "x")),
				tdir("d", withXattr("security.capability", fcapsValue()), withXattr("user.d", "")),
				tsymlink("l", "f", withXattr("user.l", "on a symlink")))
		}, func(t *testing.T, ents map[string]*Entry, _ map[string]string, _ []string) {
			want := []Xattr{{"trusted.t", []byte("t")}, {"user.a", []byte("1")}, {"user.b", []byte("2")}}
			if got := ents["f"].Xattrs; !reflect.DeepEqual(got, want) {
				t.Errorf("f xattrs = %q, want %q", got, want)
			}
			if d := ents["d"]; d.FCaps != nil || len(d.Xattrs) != 1 {
				t.Errorf("d = xattrs %q fcaps %x: want user.d only", d.Xattrs, d.FCaps)
			}
			if l := ents["l"]; l.Xattrs != nil {
				t.Errorf("symlink xattrs = %q, want none", l.Xattrs)
			}
		}},
		{"devices", func(t *testing.T) []byte {
			return tarOf(t, tchardev("c", 4095, 1048575), tblockdev("b", 8, 1))
		}, func(t *testing.T, ents map[string]*Entry, _ map[string]string, _ []string) {
			if c := ents["c"]; c.Type() != ModeChar || c.RdevMajor != 4095 || c.RdevMinor != 1048575 {
				t.Errorf("c = %+v", *c)
			}
			if b := ents["b"]; b.Type() != ModeBlock || b.RdevMajor != 8 || b.RdevMinor != 1 {
				t.Errorf("b = %+v", *b)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ents, contents, order := decodeTar(t, tc.tar(t))
			tc.check(t, ents, contents, order)
		})
	}
}

func TestEncodeTarErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		tar  func(t *testing.T) []byte
		want []string
		is   error
	}{
		{"dot dot", func(t *testing.T) []byte {
			return rawTar(t, tar.FormatPAX, &tar.Header{Name: "a/../../etc/passwd", Typeflag: tar.TypeReg})
		}, []string{`"a/../../etc/passwd"`, `".."`}, ErrUnsupported},
		{"whiteout", func(t *testing.T) []byte {
			return tarOf(t, tdir("etc"), tfile("etc/.wh.passwd", nil))
		}, []string{`"etc/.wh.passwd"`, "image layer", "docker export"}, ErrUnsupported},
		{"opaque whiteout", func(t *testing.T) []byte {
			return tarOf(t, tfile("var/.wh..wh..opq", nil))
		}, []string{`"var/.wh..wh..opq"`, "image layer"}, ErrUnsupported},
		{"name too long", func(t *testing.T) []byte {
			return tarOf(t, tfile(strings.Repeat("n", 256), nil))
		}, []string{"256 bytes"}, ErrUnsupported},
		{"hardlink to nothing", func(t *testing.T) []byte {
			return rawTar(t, tar.FormatPAX, &tar.Header{Name: "l", Typeflag: tar.TypeLink, Linkname: "missing"})
		}, []string{`"l"`, `"missing"`}, ErrFormat},
		{"hardlink to a directory", func(t *testing.T) []byte {
			return tarOf(t, tdir("d"), thardlink("l", "d"))
		}, []string{`"l"`, "directory"}, ErrFormat},
		{"parent is a file", func(t *testing.T) []byte {
			return tarOf(t, tfile("f", nil), tfile("f/g", nil))
		}, []string{`"f/g"`, "not a directory"}, ErrFormat},
		{"root is a file", func(t *testing.T) []byte {
			return rawTar(t, tar.FormatPAX, &tar.Header{Name: ".", Typeflag: tar.TypeReg})
		}, []string{"root must be a directory"}, ErrFormat},
		{"uid 65535", func(t *testing.T) []byte {
			return tarOf(t, tfile("f", nil, withOwner(65535, 0)))
		}, []string{`"f"`, "65535"}, ErrUnsupported},
		{"empty symlink", func(t *testing.T) []byte {
			return rawTar(t, tar.FormatPAX, &tar.Header{Name: "l", Typeflag: tar.TypeSymlink})
		}, []string{`"l"`, "target"}, ErrUnsupported},
		{"unknown type", func(t *testing.T) []byte {
			return rawTar(t, tar.FormatGNU, &tar.Header{Name: "c", Typeflag: tar.TypeCont})
		}, []string{`"c"`, "type"}, ErrUnsupported},
		{"not a tar", func(t *testing.T) []byte {
			return bytes.Repeat([]byte("not a tar "), 100)
		}, []string{"read tar"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := EncodeTar(context.Background(), io.Discard, bytes.NewReader(tc.tar(t)), nil)
			if err == nil {
				t.Fatal("EncodeTar succeeded")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("EncodeTar = %v, want a message with %s", err, w)
				}
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("EncodeTar = %v, want it to wrap %v", err, tc.is)
			}
		})
	}
}

// TestEncodeTarTempFile checks that the spill file is unlinked while in
// use and gone afterwards.
func TestEncodeTarTempFile(t *testing.T) {
	tmp := t.TempDir()
	empty := func(when string) {
		ents, err := os.ReadDir(tmp)
		requireOK(t, "ReadDir", err)
		if len(ents) != 0 {
			t.Errorf("%s: %s holds %v", when, tmp, ents)
		}
	}
	opts := &EncodeOptions{TempDir: tmp, OnEntry: func(*Entry) error { empty("during encoding"); return nil }}
	encodeTarBytes(t, tarOf(t, tfile("f", []byte("content"))), opts)
	empty("after encoding")
	opts.TempDir = "/nonexistent/dir"
	if err := EncodeTar(context.Background(), io.Discard, bytes.NewReader(tarOf(t, tfile("f", nil))), opts); err == nil {
		t.Error("EncodeTar with a missing TempDir succeeded")
	}
}

func TestEncodeStops(t *testing.T) {
	tarball := tarOf(t, tfile("a", []byte("a")), tfile("b", []byte("b")))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := EncodeTar(ctx, io.Discard, bytes.NewReader(tarball), nil); !errors.Is(err, context.Canceled) {
		t.Errorf("EncodeTar(cancelled) = %v, want context.Canceled", err)
	}
	if err := EncodeDir(ctx, io.Discard, t.TempDir(), nil); !errors.Is(err, context.Canceled) {
		t.Errorf("EncodeDir(cancelled) = %v, want context.Canceled", err)
	}
	stop := errors.New("stop")
	n := 0
	err := EncodeTar(context.Background(), io.Discard, bytes.NewReader(tarball), &EncodeOptions{OnEntry: func(*Entry) error {
		if n++; n == 2 {
			return stop
		}
		return nil
	}})
	if !errors.Is(err, stop) || n != 2 {
		t.Errorf("EncodeTar with a failing OnEntry = %v after %d calls, want stop after 2", err, n)
	}
}

// zeroTar streams a tar of one file of size zero bytes, without holding it.
func zeroTar(size int64) io.Reader {
	pr, pw := io.Pipe()
	go func() {
		tw := tar.NewWriter(pw)
		err := tw.WriteHeader(&tar.Header{Name: "zeros", Typeflag: tar.TypeReg, Mode: 0o644, Size: size})
		if err == nil {
			_, err = io.CopyN(tw, zeroReaderCatar{}, size)
		}
		if err == nil {
			err = tw.Close()
		}
		pw.CloseWithError(err)
	}()
	return pr
}

type zeroReaderCatar struct{}

func (zeroReaderCatar) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// TestEncodeTarBoundedMemory checks that EncodeTar does not hold file
// contents in memory.
func TestEncodeTarBoundedMemory(t *testing.T) {
	const size = 64 << 20
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	cw := &countWriterCatar{}
	requireOK(t, "EncodeTar", EncodeTar(context.Background(), cw, zeroTar(size), &EncodeOptions{TempDir: t.TempDir()}))
	runtime.ReadMemStats(&after)
	if cw.n < size {
		t.Fatalf("wrote %d bytes, want more than %d", cw.n, size)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 8<<20 {
		t.Errorf("EncodeTar of a %d MiB file allocated %d MiB", size>>20, alloc>>20)
	}
}

type countWriterCatar struct{ n int64 }

func (c *countWriterCatar) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return len(p), nil
}
