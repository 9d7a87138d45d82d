package casync

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"math/rand"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// This file describes test trees once, and builds them both as directories
// on disk and as tar streams, like estargz's tarOf(tfile(...), tdir(...)).
// compareTrees checks that two directories hold the same tree.

// tnode is one node of a test tree.
type tnode struct {
	path     string
	typ      byte // tar type flag; tar.TypeLink for hardlinks, 's' for a socket
	mode     int64
	uid, gid int
	mtime    time.Time
	data     []byte
	target   string // symlink or hardlink target
	major    int64
	minor    int64
	xattrs   map[string]string
}

type topt func(*tnode)

func withMode(m int64) topt             { return func(n *tnode) { n.mode = m } }
func withOwner(uid, gid int) topt       { return func(n *tnode) { n.uid, n.gid = uid, gid } }
func withMTime(t time.Time) topt        { return func(n *tnode) { n.mtime = t } }
func withXattr(name, value string) topt { return func(n *tnode) { n.xattrs[name] = value } }

var defaultMTime = time.Unix(1700000000, 123456789)

func newNode(path string, typ byte, mode int64, opts []topt) tnode {
	n := tnode{path: path, typ: typ, mode: mode, mtime: defaultMTime, xattrs: map[string]string{}}
	for _, o := range opts {
		o(&n)
	}
	return n
}

func tfile(path string, data []byte, opts ...topt) tnode {
	n := newNode(path, tar.TypeReg, 0o644, opts)
	n.data = data
	return n
}

func tdir(path string, opts ...topt) tnode { return newNode(path, tar.TypeDir, 0o755, opts) }

func tsymlink(path, target string, opts ...topt) tnode {
	n := newNode(path, tar.TypeSymlink, 0o777, opts)
	n.target = target
	return n
}

// hardlink makes path a hardlink to target, which must come earlier.
func thardlink(path, target string) tnode {
	return tnode{path: path, typ: tar.TypeLink, target: target}
}

func tfifo(path string, opts ...topt) tnode { return newNode(path, tar.TypeFifo, 0o644, opts) }

func tchardev(path string, major, minor int64, opts ...topt) tnode {
	n := newNode(path, tar.TypeChar, 0o666, opts)
	n.major, n.minor = major, minor
	return n
}

func tblockdev(path string, major, minor int64, opts ...topt) tnode {
	n := newNode(path, tar.TypeBlock, 0o660, opts)
	n.major, n.minor = major, minor
	return n
}

// socket exists only on disk: tar cannot carry one.
func tsocket(path string, opts ...topt) tnode { return newNode(path, 's', 0o755, opts) }

// tarOf builds a PAX tar stream of nodes, in the given order. A node with
// path "." is the root directory.
func tarOf(t testing.TB, nodes ...tnode) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	byPath := map[string]tnode{}
	for _, n := range nodes {
		if n.typ == 's' {
			t.Fatalf("tarOf: socket %q cannot be in a tar", n.path)
		}
		hdrNode := n
		if n.typ == tar.TypeLink {
			hdrNode = byPath[n.target]
			hdrNode.path = n.path
		}
		byPath[n.path] = hdrNode
		name := n.path
		if n.typ == tar.TypeDir && name != "." {
			name += "/"
		}
		if name == "." {
			name = "./"
		}
		h := &tar.Header{
			Typeflag: n.typ,
			Name:     name,
			Linkname: n.target,
			Mode:     hdrNode.mode,
			Uid:      hdrNode.uid,
			Gid:      hdrNode.gid,
			ModTime:  hdrNode.mtime,
			Devmajor: n.major,
			Devminor: n.minor,
			Format:   tar.FormatPAX,
		}
		if n.typ == tar.TypeReg {
			h.Size = int64(len(n.data))
		}
		for k, v := range hdrNode.xattrs {
			if h.PAXRecords == nil {
				h.PAXRecords = map[string]string{}
			}
			h.PAXRecords["SCHILY.xattr."+k] = v
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatalf("tarOf: %s: %v", n.path, err)
		}
		if n.typ == tar.TypeReg {
			if _, err := tw.Write(n.data); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// writeTree creates nodes under root, which must not exist yet, with all
// their metadata. It needs root privileges for owners and devices.
func writeTestTree(t testing.TB, root string, nodes ...tnode) {
	t.Helper()
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	rootNode := tdir(".")
	var all []tnode
	for _, n := range nodes {
		if n.path == "." {
			rootNode = n
			continue
		}
		all = append(all, n)
	}
	check := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("writeTree: %s: %v", what, err)
		}
	}
	for _, n := range all {
		p := filepath.Join(root, n.path)
		check("mkdir parent", os.MkdirAll(filepath.Dir(p), 0o755))
		switch n.typ {
		case tar.TypeReg:
			check(n.path, os.WriteFile(p, n.data, 0o600))
		case tar.TypeDir:
			check(n.path, os.MkdirAll(p, 0o700))
		case tar.TypeSymlink:
			check(n.path, os.Symlink(n.target, p))
		case tar.TypeLink:
			check(n.path, os.Link(filepath.Join(root, n.target), p))
		case tar.TypeFifo:
			check(n.path, unix.Mkfifo(p, 0o600))
		case tar.TypeChar:
			check(n.path, unix.Mknod(p, unix.S_IFCHR|0o600, int(unix.Mkdev(uint32(n.major), uint32(n.minor)))))
		case tar.TypeBlock:
			check(n.path, unix.Mknod(p, unix.S_IFBLK|0o600, int(unix.Mkdev(uint32(n.major), uint32(n.minor)))))
		case 's':
			check(n.path, unix.Mknod(p, unix.S_IFSOCK|0o600, 0))
		default:
			t.Fatalf("writeTree: %s: unknown type %q", n.path, n.typ)
		}
	}
	// Metadata, in an order that keeps it: owner before mode (chown
	// clears setuid), mtimes last and deepest first.
	all = append(all, rootNode)
	for _, n := range all {
		if n.typ == tar.TypeLink {
			continue
		}
		p := filepath.Join(root, n.path)
		check("chown "+n.path, os.Lchown(p, n.uid, n.gid))
		for k, v := range n.xattrs {
			check("setxattr "+n.path+" "+k, unix.Lsetxattr(p, k, []byte(v), 0))
		}
		if n.typ != tar.TypeSymlink {
			check("chmod "+n.path, unix.Chmod(p, uint32(n.mode)))
		}
	}
	sort.SliceStable(all, func(i, j int) bool {
		return strings.Count(all[i].path, "/") > strings.Count(all[j].path, "/")
	})
	for _, n := range all {
		if n.typ == tar.TypeLink {
			continue
		}
		p := filepath.Join(root, n.path)
		ts := []unix.Timespec{unix.NsecToTimespec(n.mtime.UnixNano()), unix.NsecToTimespec(n.mtime.UnixNano())}
		check("utimes "+n.path, unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW))
	}
	// Parents implied by MkdirAll got fresh mtimes; set the rest again
	// so that explicitly listed directories keep theirs.
	for _, n := range all {
		if n.typ == tar.TypeDir || n.path == "." {
			p := filepath.Join(root, n.path)
			ts := []unix.Timespec{unix.NsecToTimespec(n.mtime.UnixNano()), unix.NsecToTimespec(n.mtime.UnixNano())}
			check("utimes "+n.path, unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW))
		}
	}
}

// fcapsValue is a VFS_CAP_REVISION_2 security.capability value granting
// CAP_NET_BIND_SERVICE, effective.
func fcapsValue() string {
	b := make([]byte, 20)
	binary.LittleEndian.PutUint32(b[0:], 0x02000001)
	binary.LittleEndian.PutUint32(b[4:], 1<<10)
	return string(b)
}

func catarRandom(seed int64, n int) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(b)
	return b
}

// trickyTree is the tree of the compatibility tests: every node type and
// every piece of metadata the encoder stores. It has no socket, so that it
// can be a tar too; withSocket adds one.
func trickyTree(big bool) []tnode {
	mt := func(sec, nsec int64) topt { return withMTime(time.Unix(sec, nsec)) }
	bigRandom, bigZeros := catarRandom(1, 3000), make([]byte, 10000)
	if big {
		bigRandom, bigZeros = catarRandom(1, 5<<20), make([]byte, 20<<20)
	}
	nodes := []tnode{
		tdir(".", withMode(0o755), mt(1600000000, 111111111)),
		tfile("empty", nil),
		tfile("one", []byte("x"), mt(1500000000, 999999999)),
		tdir("big"),
		tfile("big/random", bigRandom),
		tfile("big/zeros", bigZeros),
		tdir("a", withXattr("user.dir", "on a directory")),
		tdir("a/b", withMode(0o2755), withOwner(100000, 200000)),
		tdir("a/b/c"),
		tfile("a/b/c/deep.txt", []byte("deep\n"), withOwner(65536, 65537), mt(1234567890, 1)),
		tdir("emptydir", withMode(0o700)),
		tdir("tmp", withMode(0o1777)),
		tsymlink("link", "one", mt(1600000001, 5)),
		tsymlink("dangling", "nowhere/at/all"),
		tsymlink("abs", "/etc/passwd", withOwner(7, 8)),
		tfifo("fifo", withMode(0o640)),
		tchardev("null", 1, 3),
		tblockdev("loop0", 7, 0),
		tchardev("bigdev", 4095, 1048575),
		tfile("setuid", []byte("#!/bin/sh\n"), withMode(0o4755)),
		tfile("setgid", []byte("g"), withMode(0o2711)),
		tfile("xattrs", []byte("with xattrs"),
			withXattr("user.a", "first"), withXattr("user.b", ""), withXattr("trusted.t", "trusted\x00binary\xff")),
		tfile("capable", []byte("\x7fELF"), withMode(0o755), withXattr("security.capability", fcapsValue())),
		tfile("linked", []byte("shared content"), withMode(0o600), withOwner(1000, 1000), withXattr("user.l", "v")),
		thardlink("hardlink", "linked"),
		thardlink("a/hardlink2", "linked"),
		tfile("name with spaces", []byte("spaces")),
		tfile("ünïcødé-文件", []byte("unicode")),
		tfile(strings.Repeat("n", 200), []byte("long name")),
		tfile("\\back#slash", []byte("escapes")),
		tdir("many"),
	}
	for i := range 37 {
		nodes = append(nodes, tfile(fmt.Sprintf("many/f%02d", i), []byte{byte(i)}))
	}
	return nodes
}

func withSocket(nodes []tnode) []tnode {
	return append(append([]tnode(nil), nodes...), tsocket("sock"), tsocket("a/b/sock", withMode(0o600)))
}

// fileInfo is what compareTrees compares of one node.
type fileInfo struct {
	Type     fs.FileMode
	Perm     uint32
	UID, GID uint32
	MTime    int64
	Rdev     uint64
	Target   string
	Size     int64
	Digest   [32]byte
	Xattrs   map[string]string
}

func (fi fileInfo) String() string {
	return fmt.Sprintf("%v perm=%04o owner=%d:%d mtime=%d rdev=%#x target=%q size=%d sha256=%x xattrs=%q",
		fi.Type, fi.Perm, fi.UID, fi.GID, fi.MTime, fi.Rdev, fi.Target, fi.Size, fi.Digest[:8], fi.Xattrs)
}

// scanTree describes every node under root, by relative path.
func scanTree(t testing.TB, root string) map[string]fileInfo {
	t.Helper()
	out := map[string]fileInfo{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		fi := fileInfo{
			Type:  d.Type(),
			Perm:  st.Mode & 0o7777,
			UID:   st.Uid,
			GID:   st.Gid,
			MTime: st.Mtim.Nano(),
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			fi.Size, fi.Digest = int64(len(data)), sha256.Sum256(data)
		case unix.S_IFLNK:
			fi.Target, err = os.Readlink(p)
			if err != nil {
				return err
			}
		case unix.S_IFCHR, unix.S_IFBLK:
			fi.Rdev = st.Rdev
		}
		if st.Mode&unix.S_IFMT != unix.S_IFLNK {
			names, err := listXattrs(p)
			if err != nil {
				return err
			}
			for _, n := range names {
				if !storedXattr(n) && n != fcapsXattr {
					continue
				}
				v, err := getXattr(p, n)
				if err != nil {
					return err
				}
				if fi.Xattrs == nil {
					fi.Xattrs = map[string]string{}
				}
				fi.Xattrs[n] = string(v)
			}
		}
		out[rel] = fi
		return nil
	})
	if err != nil {
		t.Fatalf("scan %s: %v", root, err)
	}
	return out
}

// compareTrees fails t unless the trees at want and got are the same:
// names, types, permission bits, owners, mtimes (ns), device numbers,
// symlink targets, contents and stored xattrs. Hardlinks compare as files
// with equal content.
func compareTrees(t testing.TB, want, got string) {
	t.Helper()
	w, g := scanTree(t, want), scanTree(t, got)
	var paths []string
	for p := range w {
		paths = append(paths, p)
	}
	for p := range g {
		if _, ok := w[p]; !ok {
			paths = append(paths, p)
		}
	}
	sort.Strings(paths)
	bad := 0
	for _, p := range paths {
		wi, wok := w[p]
		gi, gok := g[p]
		switch {
		case !wok:
			t.Errorf("%s: unexpected in %s", p, got)
		case !gok:
			t.Errorf("%s: missing from %s", p, got)
		case wi.String() != gi.String():
			t.Errorf("%s:\n got %v\nwant %v", p, gi, wi)
		default:
			continue
		}
		if bad++; bad > 20 {
			t.Fatal("too many differences")
		}
	}
}

// requireOK fails t if err is not nil.
func requireOK(t testing.TB, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func isFormatErr(err error) bool {
	return errors.Is(err, ErrFormat) || errors.Is(err, ErrUnsupported)
}
