package casync

import (
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"testing"
)

// tocNodeSpec is a node of a tree that tests build in code; tocEntries
// flattens it into the Entries a catar encoder would report.
type tocNodeSpec struct {
	name string
	e    Entry // Path and offsets are filled in by tocEntries
	kids []*tocNodeSpec
}

func tocDir(name string, kids ...*tocNodeSpec) *tocNodeSpec {
	return &tocNodeSpec{name: name, e: Entry{Mode: ModeDir | 0o755}, kids: kids}
}

func tocFile(name string, size uint64) *tocNodeSpec {
	return &tocNodeSpec{name: name, e: Entry{Mode: ModeRegular | 0o644, Size: size}}
}

func tocSymlink(name, target string) *tocNodeSpec {
	return &tocNodeSpec{name: name, e: Entry{Mode: ModeSymlink | 0o777, LinkTarget: target}}
}

func tocDevice(name string, typ uint64, major, minor uint64) *tocNodeSpec {
	return &tocNodeSpec{name: name, e: Entry{Mode: typ | 0o660, RdevMajor: major, RdevMinor: minor}}
}

func tocSpecial(name string, typ uint64) *tocNodeSpec {
	return &tocNodeSpec{name: name, e: Entry{Mode: typ | 0o644}}
}

// with lets a test set fields of a node's Entry inline.
func (n *tocNodeSpec) with(f func(e *Entry)) *tocNodeSpec {
	f(&n.e)
	return n
}

// tocEntries returns the nodes of root in archive order, with Path and
// the offsets that casync's record layout gives them.
func tocEntries(root *tocNodeSpec, features uint64) ([]*Entry, int64) {
	var out []*Entry
	var off int64
	var walk func(n *tocNodeSpec, path string)
	walk = func(n *tocNodeSpec, path string) {
		e := n.e
		e.Path = path
		e.Flags = features
		e.Offset = off
		off += 64 // ENTRY
		for _, x := range e.Xattrs {
			off += 16 + int64(len(x.Name)) + 1 + int64(len(x.Value))
		}
		if len(e.FCaps) > 0 {
			off += 16 + int64(len(e.FCaps))
		}
		out = append(out, &e)
		switch e.Mode & ModeTypeMask {
		case ModeRegular:
			off += 16
			e.PayloadOffset = off
			off += int64(e.Size)
		case ModeSymlink:
			off += 16 + int64(len(e.LinkTarget)) + 1
		case ModeBlock, ModeChar:
			off += 32
		case ModeDir:
			kids := append([]*tocNodeSpec(nil), n.kids...)
			sort.Slice(kids, func(i, j int) bool { return kids[i].name < kids[j].name })
			for _, k := range kids {
				off += 16 + int64(len(k.name)) + 1 // FILENAME
				p := k.name
				if path != "" {
					p = path + "/" + k.name
				}
				walk(k, p)
			}
			off += 16 + 24*int64(len(kids)+1) // GOODBYE
		}
		e.End = off
	}
	walk(root, "")
	return out, off
}

// tocBuild builds the TOC of root, failing t on error.
func tocBuild(t testing.TB, root *tocNodeSpec) (*TOC, []*Entry) {
	t.Helper()
	entries, size := tocEntries(root, tocTestFeatures)
	b := NewTOCBuilder()
	for _, e := range entries {
		if err := b.Add(e); err != nil {
			t.Fatalf("Add(%q) = %v", e.Path, err)
		}
	}
	toc, err := b.TOC(size, tocTestFeatures)
	if err != nil {
		t.Fatalf("TOC() = %v", err)
	}
	return toc, entries
}

// tocTestFeatures are casync's default feature flags for a catar with
// SHA-512/256 chunk IDs; the exact value only matters in that it is
// realistic and large.
const tocTestFeatures = 0xb000000000f9bfff

// tocSampleTree has a bit of everything a TOC must hold.
func tocSampleTree() *tocNodeSpec {
	long := strings.Repeat("n", 255)
	deep := tocFile("bottom", 3)
	for i := 39; i >= 0; i-- {
		deep = tocDir(fmt.Sprintf("d%02d", i), deep)
	}
	return tocDir("",
		tocDir("bin",
			tocFile("bash", 1234567).with(func(e *Entry) { e.Mode = ModeRegular | 0o755; e.MTime = 1700000000123456789 }),
			tocSymlink("sh", "bash"),
			tocFile("ping", 70000).with(func(e *Entry) {
				e.Mode = ModeRegular | 0o4755
				e.FCaps = []byte{1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
			}),
		),
		tocDir("dev",
			tocDevice("null", ModeChar, 1, 3),
			tocDevice("sda", ModeBlock, 8, 0),
			tocDevice("big", ModeChar, 0xfffff, 0xffffffff),
			tocSpecial("initctl", ModeFIFO),
			tocSpecial("log", ModeSocket).with(func(e *Entry) { e.Mode = ModeSocket | 0o666 }),
		),
		tocDir("etc",
			tocFile("passwd", 1000),
			tocFile("shadow", 500).with(func(e *Entry) { e.Mode = ModeRegular | 0o640; e.GID = 42 }),
			tocFile("xattrs", 1).with(func(e *Entry) {
				e.Xattrs = []Xattr{
					{Name: "trusted.overlay.opaque", Value: []byte("y")},
					{Name: "user.empty", Value: []byte{}},
					{Name: "user.mime", Value: []byte("text/plain\x00with nul")},
				}
			}),
			tocDir("empty"),
		),
		tocDir("home",
			tocDir("üñí©ødé",
				tocFile("日本語.txt", 12),
				tocFile("emoji-😀", 0),
			).with(func(e *Entry) { e.UID, e.GID = 1000, 1000 }),
		).with(func(e *Entry) { e.MTime = 1600000000000000000 }),
		tocDir("long", tocFile(long, 255), tocFile(long[:254]+"m", 1), tocSymlink("l", long)),
		tocDir("deep", deep),
		tocDir("tmp").with(func(e *Entry) { e.Mode = ModeDir | 0o1777 }),
		tocFile("zero", 0),
	)
}

// tocDebianLike builds a tree of n nodes shaped like a Debian root file
// system: directories of widely varied fan-out (preferential attachment
// makes a few of them large), names of 5 to 40 bytes that share prefixes,
// mostly regular files, some symlinks, a few devices and xattrs.
func tocDebianLike(n int, seed uint64) *tocNodeSpec {
	r := rand.New(rand.NewPCG(seed, 42))
	words := []string{"lib", "python3", "perl", "share", "locale", "doc", "gnu", "linux",
		"x86_64", "systemd", "apt", "dpkg", "ssl", "certs", "man", "include", "bin",
		"gcc", "postgresql", "zoneinfo", "terminfo", "Europe", "America", "config",
		"module", "util", "core", "test", "crypto", "encoding", "http", "json", "unicode"}
	exts := []string{"", ".so", ".so.6", ".so.1.2.3", ".py", ".pyc", ".h", ".gz", ".conf", ".mo", ".txt", ".pm", ".list", ".md5sums"}
	name := func() string {
		var b strings.Builder
		for b.Len() < 5 || (b.Len() < 24 && r.IntN(3) > 0) {
			if b.Len() > 0 {
				b.WriteByte("-_."[r.IntN(3)])
			}
			b.WriteString(words[r.IntN(len(words))])
		}
		if r.IntN(4) == 0 {
			fmt.Fprintf(&b, "%d", r.IntN(200))
		}
		b.WriteString(exts[r.IntN(len(exts))])
		s := b.String()
		if len(s) > 40 {
			s = s[:40]
		}
		return s
	}
	mtimes := make([]uint64, 64)
	for i := range mtimes {
		mtimes[i] = uint64(1_600_000_000+r.IntN(100_000_000)) * 1e9
		if i%4 == 0 {
			mtimes[i] += uint64(r.IntN(1e9))
		}
	}
	root := tocDir("")
	dirs := []*tocNodeSpec{root}
	var all []*tocNodeSpec // nodes other than the root, for preferential attachment
	names := map[*tocNodeSpec]map[string]bool{root: {}}
	parentOf := map[*tocNodeSpec]*tocNodeSpec{}
	for count := 1; count < n; count++ {
		p := dirs[r.IntN(len(dirs))]
		if len(all) > 0 && r.IntN(10) < 7 {
			p = parentOf[all[r.IntN(len(all))]]
		}
		nm := name()
		for names[p][nm] {
			nm = name()
		}
		names[p][nm] = true
		var k *tocNodeSpec
		switch x := r.IntN(100); {
		case x < 12:
			k = tocDir(nm)
			dirs = append(dirs, k)
			names[k] = map[string]bool{}
		case x < 22:
			k = tocSymlink(nm, "../lib/x86_64-linux-gnu/"+name())
		case x < 23:
			k = tocDevice(nm, ModeChar, uint64(r.IntN(256)), uint64(r.IntN(256)))
		default:
			k = tocFile(nm, uint64(r.ExpFloat64()*20000))
			if r.IntN(5) == 0 {
				k.e.Mode = ModeRegular | 0o755
			}
			switch r.IntN(200) {
			case 0:
				k.e.FCaps = []byte{1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
			case 1, 2:
				k.e.Xattrs = []Xattr{{Name: "user.checksum", Value: []byte(name())}}
			}
		}
		k.e.MTime = mtimes[r.IntN(8)+8*(len(dirs)%8)]
		if r.IntN(20) == 0 {
			k.e.UID, k.e.GID = 100+uint32(r.IntN(5)), 100
		}
		p.kids = append(p.kids, k)
		parentOf[k] = p
		all = append(all, k)
	}
	return root
}
