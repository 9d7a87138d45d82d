package casync

import (
	"bytes"
	"context"
	"crypto/sha512"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bootfs/bootfs/internal/testenv"
)

// These tests use the real casync as the oracle.

func runCasync(t testing.TB, args ...string) []byte {
	t.Helper()
	bin := testenv.LookPath(t, "casync")
	cmd := exec.Command(bin, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("casync %s: %v\n%s", strings.Join(args, " "), err, stderr.Bytes())
	}
	return out
}

func encodeDirBytes(t testing.TB, dir string, opts *EncodeOptions) []byte {
	t.Helper()
	var buf bytes.Buffer
	requireOK(t, "EncodeDir", EncodeDir(context.Background(), &buf, dir, opts))
	return buf.Bytes()
}

func encodeTarBytes(t testing.TB, tarball []byte, opts *EncodeOptions) []byte {
	t.Helper()
	var buf bytes.Buffer
	requireOK(t, "EncodeTar", EncodeTar(context.Background(), &buf, bytes.NewReader(tarball), opts))
	return buf.Bytes()
}

// diffArchives reports where two archives first differ, with the entries
// around that offset.
func diffArchives(t testing.TB, got, want []byte) {
	t.Helper()
	if bytes.Equal(got, want) {
		return
	}
	i := 0
	for i < len(got) && i < len(want) && got[i] == want[i] {
		i++
	}
	var near string
	if ents, err := decodeAll(want); err == nil {
		for _, e := range ents {
			if e.Offset <= int64(i) {
				near = e.Path
			}
		}
	}
	lo, hi := max(0, i-16), i+32
	t.Errorf("archives differ at offset %d (near %q), got %d bytes, want %d\n got %x\nwant %x",
		i, near, len(got), len(want), got[lo:min(hi, len(got))], want[lo:min(hi, len(want))])
}

func makeCatarTree(t testing.TB, nodes []tnode) string {
	t.Helper()
	testenv.RequireRoot(t)
	root := filepath.Join(t.TempDir(), "root")
	writeTestTree(t, root, nodes...)
	return root
}

// TestEncodeDirMatchesCasync is the strongest check of the encoder: casync
// make with CasyncMakeArgs and EncodeDir give byte-identical archives.
func TestEncodeDirMatchesCasync(t *testing.T) {
	testenv.LookPath(t, "casync")
	for _, tc := range []struct {
		name   string
		nodes  []tnode
		digest Digest
	}{
		{name: "tricky", nodes: withSocket(trickyTree(true))},
		{name: "sha256", nodes: trickyTree(false), digest: SHA256},
		{name: "empty", nodes: []tnode{tdir(".")}},
		{name: "fanout", nodes: fanoutTree(130)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := makeCatarTree(t, tc.nodes)
			out := filepath.Join(t.TempDir(), "casync.catar")
			args := append([]string{"make"}, CasyncMakeArgs...)
			if tc.digest == SHA256 {
				args = append(args, "--digest=sha256")
			}
			runCasync(t, append(args, out, root)...)
			want, err := os.ReadFile(out)
			requireOK(t, "read casync output", err)
			got := encodeDirBytes(t, root, &EncodeOptions{Digest: tc.digest})
			diffArchives(t, got, want)
			if _, err := decodeAll(want); err != nil {
				t.Errorf("decode casync's archive: %v", err)
			}
		})
	}
}

// fanoutTree has directories of 0 to n entries, which exercises every shape
// of the GOODBYE search tree.
func fanoutTree(n int) []tnode {
	nodes := []tnode{tdir(".")}
	for _, k := range []int{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 15, 16, 17, 31, 32, 33, 63, 64, 65, n} {
		d := fmt.Sprintf("d%03d", k)
		nodes = append(nodes, tdir(d))
		for i := range k {
			nodes = append(nodes, tfifo(fmt.Sprintf("%s/%x", d, i*7919)))
		}
	}
	return nodes
}

// TestEncodeTarMatchesEncodeDir checks that a tar and a directory of the
// same tree encode to the same bytes.
func TestEncodeTarMatchesEncodeDir(t *testing.T) {
	nodes := trickyTree(false)
	root := makeCatarTree(t, nodes)
	fromDir := encodeDirBytes(t, root, nil)
	fromTar := encodeTarBytes(t, tarOf(t, nodes...), nil)
	diffArchives(t, fromTar, fromDir)
}

// TestCasyncExtract checks that casync extract of our archives reproduces
// the tree exactly.
func TestCasyncExtract(t *testing.T) {
	testenv.LookPath(t, "casync")
	for _, tc := range []struct {
		name    string
		nodes   []tnode
		fromTar bool
	}{
		{name: "dir", nodes: withSocket(trickyTree(true))},
		{name: "tar", nodes: trickyTree(true), fromTar: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := makeCatarTree(t, tc.nodes)
			var data []byte
			if tc.fromTar {
				data = encodeTarBytes(t, tarOf(t, tc.nodes...), nil)
			} else {
				data = encodeDirBytes(t, root, nil)
			}
			tmp := t.TempDir()
			archive := filepath.Join(tmp, "our.catar")
			requireOK(t, "write archive", os.WriteFile(archive, data, 0o644))
			dest := filepath.Join(tmp, "extracted")
			runCasync(t, "extract", archive, dest)
			compareTrees(t, root, dest)
		})
	}
}

// lsMode formats a mode as casync list does.
func lsMode(m uint64) string {
	typ := map[uint64]byte{ModeSocket: 's', ModeDir: 'd', ModeRegular: '-', ModeBlock: 'b', ModeChar: 'c', ModeSymlink: 'l', ModeFIFO: 'p'}[m&ModeTypeMask]
	b := []byte{typ, '-', '-', '-', '-', '-', '-', '-', '-', '-'}
	for i, c := range "rwxrwxrwx" {
		if m&(1<<(8-i)) != 0 {
			b[1+i] = byte(c)
		}
	}
	special := func(i int, bit uint64, set, unset byte) {
		if m&bit != 0 {
			if b[i] == 'x' {
				b[i] = set
			} else {
				b[i] = unset
			}
		}
	}
	special(3, 0o4000, 's', 'S')
	special(6, 0o2000, 's', 'S')
	special(9, 0o1000, 't', 'T')
	return string(b)
}

// mtreeEscape escapes as casync's mtree output does.
func mtreeEscape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 127 || c == '\\' || c == '#' {
			fmt.Fprintf(&b, "\\%03o", c)
		} else {
			b.WriteByte(c)
		}
	}
	return b.String()
}

func dotPath(p string) string {
	if p == "" {
		return "."
	}
	return p
}

// mtreeLine renders an Entry as casync mtree does, for archives without
// user names and chattr flags. digest is the content's SHA-512/256.
func mtreeLine(e *Entry, digest []byte) string {
	var b strings.Builder
	b.WriteString(mtreeEscape(dotPath(e.Path)))
	b.WriteString(map[uint64]string{ModeSymlink: " type=link", ModeDir: " type=dir", ModeRegular: " type=file",
		ModeSocket: " type=socket", ModeChar: " type=char", ModeBlock: " type=block", ModeFIFO: " type=fifo"}[e.Type()])
	fmt.Fprintf(&b, " mode=%04o", e.Mode&ModePermMask)
	if e.IsRegular() {
		fmt.Fprintf(&b, " size=%d", e.Size)
	}
	if e.Type() == ModeSymlink {
		fmt.Fprintf(&b, " link=%s", mtreeEscape(e.LinkTarget))
	}
	if e.Type() == ModeChar || e.Type() == ModeBlock {
		fmt.Fprintf(&b, " device=linux,%d,%d", e.RdevMajor, e.RdevMinor)
	}
	fmt.Fprintf(&b, " uid=%d gid=%d time=%d.%09d", e.UID, e.GID, e.MTime/1e9, e.MTime%1e9)
	if e.IsRegular() {
		fmt.Fprintf(&b, " sha512256digest=%s", hex.EncodeToString(digest))
	}
	return b.String()
}

// decodeListing decodes data with our Decoder and renders casync's list
// and mtree outputs.
func decodeListing(t testing.TB, data []byte) (list, mtree string) {
	t.Helper()
	var lb, mb strings.Builder
	d := NewDecoder(bytes.NewReader(data))
	for {
		e, err := d.Next()
		if err == io.EOF {
			break
		}
		requireOK(t, "Next", err)
		h := sha512.New512_256()
		if _, err := io.Copy(h, d); err != nil {
			t.Fatalf("read %q: %v", e.Path, err)
		}
		fmt.Fprintf(&lb, "%s %s\n", lsMode(e.Mode), mtreeEscape(dotPath(e.Path)))
		fmt.Fprintf(&mb, "%s\n", mtreeLine(e, h.Sum(nil)))
	}
	return lb.String(), mb.String()
}

// TestCasyncListMatchesDecoder checks that casync lists our archive as our
// Decoder does.
func TestCasyncListMatchesDecoder(t *testing.T) {
	testenv.LookPath(t, "casync")
	data := encodeTarBytes(t, tarOf(t, trickyTree(false)...), nil)
	archive := filepath.Join(t.TempDir(), "our.catar")
	requireOK(t, "write archive", os.WriteFile(archive, data, 0o644))
	wantList := string(runCasync(t, "list", archive))
	wantMtree := string(runCasync(t, "mtree", archive))
	gotList, gotMtree := decodeListing(t, data)
	if gotList != wantList {
		t.Errorf("list:\n got %s\nwant %s", gotList, wantList)
	}
	if gotMtree != wantMtree {
		t.Errorf("mtree:\n got %s\nwant %s", gotMtree, wantMtree)
	}
}
