package lazyfs

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
)

// hostPrograms are host binaries the loader tests use, the first that
// exists: more libraries make a clearer difference.
var hostPrograms = []string{"/usr/bin/xdpyinfo", "/usr/bin/ip", "/usr/bin/ls", "/bin/ls", "/bin/bash"}

// hostProgram returns a host program and the host paths of the libraries
// ldd lists for it (and its interpreter), or skips.
func hostProgram(t *testing.T) (string, []string) {
	t.Helper()
	for _, p := range hostPrograms {
		if _, err := os.Stat(p); err != nil {
			continue
		}
		out, err := exec.Command("ldd", p).Output()
		if err != nil {
			continue
		}
		var libs []string
		for line := range strings.SplitSeq(string(out), "\n") {
			f := strings.Fields(line)
			switch {
			case len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "/"):
				libs = append(libs, f[2])
			case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
				libs = append(libs, f[0]) // the interpreter
			}
		}
		if len(libs) >= 3 {
			return p, libs
		}
	}
	t.Skip("no dynamically linked host program with ldd")
	return "", nil
}

// copyFile copies host file from to to, creating its directory.
func copyFile(t *testing.T, from, to string) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, data, 0o755); err != nil {
		t.Fatal(err)
	}
}

// loaderTree is a tree of a host program and its libraries, as a
// merged-/usr Debian has them: the libraries in /usr/lib/<triple>, /lib a
// symlink to usr/lib, /lib64/ld-linux… a symlink into it, and each
// library's name a symlink to the real file where the host's is.
type loaderTree struct {
	dir     string
	program string            // path in the tree
	libs    map[string]string // library file name -> its path in the tree
}

func makeLoaderTree(t *testing.T, program string, libs []string) *loaderTree {
	t.Helper()
	lt := &loaderTree{dir: t.TempDir(), program: "/usr/bin/" + filepath.Base(program), libs: map[string]string{}}
	copyFile(t, program, filepath.Join(lt.dir, lt.program))
	for _, lib := range libs {
		real, err := filepath.EvalSymlinks(lib)
		if err != nil {
			t.Fatal(err)
		}
		dir := "/usr/lib/" + filepath.Base(filepath.Dir(real))
		if filepath.Base(filepath.Dir(real)) == "lib64" || filepath.Base(filepath.Dir(real)) == "lib" {
			dir = "/usr/lib"
		}
		name, realName := filepath.Base(lib), filepath.Base(real)
		copyFile(t, real, filepath.Join(lt.dir, dir, realName))
		if name != realName {
			if err := os.Symlink(realName, filepath.Join(lt.dir, dir, name)); err != nil && !os.IsExist(err) {
				t.Fatal(err)
			}
		}
		lt.libs[name] = dir + "/" + name
		if strings.HasPrefix(lib, "/lib64/") { // the interpreter
			if err := os.MkdirAll(filepath.Join(lt.dir, "lib64"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink("../usr"+dir[len("/usr"):]+"/"+name, filepath.Join(lt.dir, "lib64", name)); err != nil && !os.IsExist(err) {
				t.Fatal(err)
			}
		}
	}
	if err := os.Symlink("usr/lib", filepath.Join(lt.dir, "lib")); err != nil {
		t.Fatal(err)
	}
	// Neighbours in archive order, which nobody reads.
	if err := os.WriteFile(filepath.Join(lt.dir, "usr/bin/zz-data"), randBytes(9, 300<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	return lt
}

// loadOrder returns the objects ld.so loads for the program in tree,
// in its order: the program, its interpreter, then the DT_NEEDED
// libraries breadth first, as tree paths. It reads them with debug/elf.
func (lt *loaderTree) loadOrder(t *testing.T) []string {
	t.Helper()
	order := []string{lt.program}
	f, err := elf.Open(filepath.Join(lt.dir, lt.program))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			b := make([]byte, p.Filesz)
			p.ReadAt(b, 0)
			order = append(order, lt.libs[filepath.Base(string(bytes.TrimRight(b, "\x00")))])
		}
	}
	f.Close()
	seen := map[string]bool{}
	for k := 0; k < len(order); k++ {
		if k == 1 {
			continue // the interpreter: loaded by the kernel
		}
		f, err := elf.Open(filepath.Join(lt.dir, order[k]))
		if err != nil {
			t.Fatal(err)
		}
		needed, err := f.ImportedLibraries()
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range needed {
			p, ok := lt.libs[n]
			if !ok || seen[n] || slices.Contains(order, p) {
				continue
			}
			seen[n] = true
			order = append(order, p)
		}
	}
	return order
}

// simulateLoader reads, through fsys, each object of order as ld.so
// does: its head, then its pages, in 128 KiB reads; it checks the bytes
// against the tree.
func simulateLoader(t *testing.T, fsys *FS, toc *casync.TOC, dir string, order []string) {
	t.Helper()
	for _, p := range order {
		i, ok := lookupFollow(toc, p)
		if !ok {
			continue // a library missing from the image: ld.so fails, the test goes on
		}
		want, err := os.ReadFile(filepath.Join(dir, p))
		if err != nil {
			t.Fatal(err)
		}
		var got []byte
		for off := 0; off < len(want); off += 128 << 10 {
			buf := make([]byte, 128<<10)
			res, st := fsys.Read(nil, &fuse.ReadIn{InHeader: fuse.InHeader{NodeId: uint64(i) + 1}, Offset: uint64(off), Size: uint32(len(buf))}, buf)
			if !st.Ok() {
				t.Fatalf("read %s at %d: %v", p, off, st)
			}
			b, _ := res.Bytes(buf)
			got = append(got, b...)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("read %s: %d bytes, not the file's %d", p, len(got), len(want))
		}
	}
}

// loaderRun is the counters of one simulated start.
type loaderRun struct {
	stats    ReaderStats
	requests int
}

func runLoader(t *testing.T, im *testImage, order []string, on bool) loaderRun {
	t.Helper()
	store := &batchStore{Store: im.localStore(t), latency: 20 * time.Millisecond}
	r := NewReader(im.idx, store, ReaderOptions{})
	fsys, err := NewFS(im.tocObj, r, FSOptions{NoELFAhead: !on})
	if err != nil {
		t.Fatal(err)
	}
	simulateLoader(t, fsys, im.tocObj, im.src, order)
	r.Close()
	return loaderRun{stats: r.Stats(), requests: store.count()}
}

// TestELFAheadLoader: a host program and its libraries, started as ld.so
// does, wait for the network fewer times, and in a shorter chain, with
// read-ahead along DT_NEEDED than without, and waste little.
func TestELFAheadLoader(t *testing.T) {
	prog, libs := hostProgram(t)
	lt := makeLoaderTree(t, prog, libs)
	order := lt.loadOrder(t)
	im := buildImage(t, lt.dir, casync.DefaultChunkSize)
	off := runLoader(t, im, order, false)
	on := runLoader(t, im, order, true)
	t.Logf("%s: %d objects: off: chain %d, waits %d, %d requests; on: chain %d, waits %d, %d requests, %d of %d bytes ahead unread",
		prog, len(order), off.stats.LongestChain, off.stats.NetworkWaits, off.requests,
		on.stats.LongestChain, on.stats.NetworkWaits, on.requests, on.stats.ReadAheadWastedBytes, on.stats.BytesFetched)
	// The program's head, its dynamic section, then the libraries
	// together; without, a link in the chain per library or two
	// (neighbours in the archive share chunks).
	if on.stats.LongestChain > 3 || on.stats.LongestChain >= off.stats.LongestChain || (len(order) >= 8 && 2*on.stats.LongestChain > off.stats.LongestChain) {
		t.Errorf("longest chain %d with ELF read-ahead, %d without, for %d objects; want at most 3, fewer, and half for 8 objects or more", on.stats.LongestChain, off.stats.LongestChain, len(order))
	}
	// The loader here runs no code between its reads, so it catches up
	// with the read-ahead and waits for it, but for fetches in flight
	// together (a chain of two), started by fewer requests.
	if 2*on.requests > off.requests {
		t.Errorf("%d requests with ELF read-ahead, %d without; want at most half", on.requests, off.requests)
	}
	// The loader reads every object whole: what is unread is the
	// neighbours' share of the chunks at the ends.
	if limit := 3 * casync.DefaultChunkSize.Max; on.stats.ReadAheadWastedBytes > limit {
		t.Errorf("%d bytes fetched ahead and never read; want at most %d", on.stats.ReadAheadWastedBytes, limit)
	}
}

// TestELFAheadWarmLoadsNothing: on a warm node, every chunk in the local
// cache, following a program's libraries loads only what parsing the
// program reads: a library in the cache is a file read away when ld.so
// asks, and loading it ahead would cost a decompression and room in the
// LRU for nothing. With a cold cache the same follow loads them all.
func TestELFAheadWarmLoadsNothing(t *testing.T) {
	prog, libs := hostProgram(t)
	lt := makeLoaderTree(t, prog, libs)
	order := lt.loadOrder(t)
	im := buildImage(t, lt.dir, casync.DefaultChunkSize)
	root, ok := lookupFollow(im.tocObj, order[0])
	if !ok {
		t.Fatalf("%s not in the image", order[0])
	}
	follow := func(warm bool) int {
		cache, err := chunkstore.NewCache(im.localStore(t), t.TempDir(), chunkstore.CacheOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if warm {
			for id := range uniqueIDs(im.idx) {
				if _, err := cache.GetChunk(context.Background(), id); err != nil {
					t.Fatal(err)
				}
			}
		}
		counted := &countingCache{Cache: cache}
		r := NewReader(im.idx, counted, ReaderOptions{CacheBytes: 256 << 20})
		newELFAhead(im.tocObj, r).follow(root)
		r.Close() // waits for the fetches follow started
		counted.mu.Lock()
		defer counted.mu.Unlock()
		return len(counted.reads)
	}
	e := im.tocObj.Attr(root)
	own := im.idx.ChunkAt(uint64(e.PayloadOffset)+e.Size-1) - im.idx.ChunkAt(uint64(e.PayloadOffset)) + 1
	cold, warm := follow(false), follow(true)
	t.Logf("%s: %d objects; following it read %d chunks from a cold cache, %d from a warm one (the program is %d)", prog, len(order), cold, warm, own)
	if warm > own {
		t.Errorf("warm cache: following %s read %d chunks, want at most the program's own %d", prog, warm, own)
	}
	if cold <= own {
		t.Errorf("cold cache: following %s read %d chunks, want its libraries' too (more than %d)", prog, cold, own)
	}
}

// TestELFAheadMissingAndBroken: a library missing from the image and one
// whose ELF is truncated change nothing but the read-ahead: every read
// returns the file's bytes.
func TestELFAheadMissingAndBroken(t *testing.T) {
	prog, libs := hostProgram(t)
	lt := makeLoaderTree(t, prog, libs)
	order := lt.loadOrder(t)
	// order[0] is the program, [1] ld.so; break the first library,
	// remove the last.
	if len(order) < 4 {
		t.Skipf("%s has too few libraries", prog)
	}
	broken := filepath.Join(lt.dir, order[2])
	real, err := filepath.EvalSymlinks(broken)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(real)
	if err != nil {
		t.Fatal(err)
	}
	trunc := data[:4096]
	binary.LittleEndian.PutUint16(trunc[56:], 0xffff) // e_phnum
	if err := os.WriteFile(real, trunc, 0o755); err != nil {
		t.Fatal(err)
	}
	missing, err := filepath.EvalSymlinks(filepath.Join(lt.dir, order[len(order)-1]))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(missing); err != nil {
		t.Fatal(err)
	}
	im := buildImage(t, lt.dir, casync.DefaultChunkSize)
	off := runLoader(t, im, order, false)
	on := runLoader(t, im, order, true)
	t.Logf("off: chain %d, waits %d; on: chain %d, waits %d, %d bytes unread", off.stats.LongestChain, off.stats.NetworkWaits, on.stats.LongestChain, on.stats.NetworkWaits, on.stats.ReadAheadWastedBytes)
	if on.stats.Errors != 0 || off.stats.Errors != 0 {
		t.Errorf("errors: %d with ELF read-ahead, %d without; want none", on.stats.Errors, off.stats.Errors)
	}
	if on.stats.LongestChain > off.stats.LongestChain {
		t.Errorf("longest chain %d with ELF read-ahead, %d without", on.stats.LongestChain, off.stats.LongestChain)
	}
}

// TestELFAheadBoundedLoop: symlink loops, a library that needs itself
// and one that names a directory end the read-ahead, quickly.
func TestELFAheadBoundedLoop(t *testing.T) {
	dir := t.TempDir()
	lib := makeELF(elfSpec{needed: []string{"libself.so", "libloop.so", "libdir.so", "libabs.so"}, runpath: "$ORIGIN/../lib:/nowhere"})
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(dir, "usr/lib/libdir.so"), 0o755))
	must(os.MkdirAll(filepath.Join(dir, "usr/bin"), 0o755))
	must(os.WriteFile(filepath.Join(dir, "usr/lib/libself.so"), lib, 0o755))
	must(os.WriteFile(filepath.Join(dir, "usr/bin/prog"), lib, 0o755))
	must(os.Symlink("libloop2.so", filepath.Join(dir, "usr/lib/libloop.so")))
	must(os.Symlink("libloop.so", filepath.Join(dir, "usr/lib/libloop2.so")))
	must(os.Symlink("/usr/lib/libself.so", filepath.Join(dir, "usr/lib/libabs.so")))
	im := buildImage(t, dir, smallChunks)
	store := &batchStore{Store: im.localStore(t), latency: time.Millisecond}
	r := NewReader(im.idx, store, ReaderOptions{})
	fsys, err := NewFS(im.tocObj, r, FSOptions{})
	if err != nil {
		t.Fatal(err)
	}
	simulateLoader(t, fsys, im.tocObj, dir, []string{"/usr/bin/prog"})
	seen := func() int {
		fsys.elf.mu.Lock()
		defer fsys.elf.mu.Unlock()
		return len(fsys.elf.seen)
	}
	waitFor(t, 5*time.Second, "libself.so followed", func() bool { return seen() == 2 })
	time.Sleep(50 * time.Millisecond) // for anything more it would follow
	done := make(chan struct{})
	go func() { r.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("ELF read-ahead did not end")
	}
	// prog and libself.so (also as libabs.so, and as itself).
	if n := seen(); n != 2 {
		t.Errorf("followed %d objects; want 2 (prog, libself.so)", n)
	}
}

func TestLookupFollow(t *testing.T) {
	dir := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(dir, "usr/lib/x"), 0o755))
	must(os.WriteFile(filepath.Join(dir, "usr/lib/x/libz.so.1.3"), []byte("z"), 0o644))
	must(os.Symlink("libz.so.1.3", filepath.Join(dir, "usr/lib/x/libz.so.1")))
	must(os.Symlink("usr/lib", filepath.Join(dir, "lib")))
	must(os.Symlink("../../lib/x/libz.so.1", filepath.Join(dir, "usr/lib/rel")))
	must(os.Symlink("loop", filepath.Join(dir, "loop")))
	im := buildImage(t, dir, smallChunks)
	want, _ := im.tocObj.Lookup("usr/lib/x/libz.so.1.3")
	for _, tc := range []struct {
		name string
		path string
		ok   bool
	}{
		{"plain", "/usr/lib/x/libz.so.1.3", true},
		{"link", "/usr/lib/x/libz.so.1", true},
		{"dir link", "/lib/x/libz.so.1", true},
		{"relative link with ..", "/usr/lib/rel", true},
		{"dot and dotdot", "/usr/./lib/x/../x/libz.so.1", true},
		{"loop", "/loop", false},
		{"missing", "/lib/x/libnone.so", false},
		{"file as dir", "/usr/lib/x/libz.so.1/x", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			i, ok := lookupFollow(im.tocObj, tc.path)
			if ok != tc.ok || (ok && i != want) {
				t.Errorf("lookupFollow(%q) = %d, %v; want %d, %v", tc.path, i, ok, want, tc.ok)
			}
		})
	}
}

// TestParseELFHost: parseELF finds what debug/elf finds in the host's
// programs and libraries.
func TestParseELFHost(t *testing.T) {
	prog, libs := hostProgram(t)
	for _, p := range append([]string{prog}, libs...) {
		t.Run(filepath.Base(p), func(t *testing.T) {
			data, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			info, err := parseELF(bytesSource(data))
			if err != nil {
				t.Fatalf("parseELF(%s): %v", p, err)
			}
			f, err := elf.NewFile(bytes.NewReader(data))
			if err != nil {
				t.Fatal(err)
			}
			needed, _ := f.ImportedLibraries()
			if !slices.Equal(info.needed, needed) {
				t.Errorf("parseELF(%s).needed = %q, debug/elf says %q", p, info.needed, needed)
			}
			runpath, _ := f.DynString(elf.DT_RUNPATH)
			rpath, _ := f.DynString(elf.DT_RPATH)
			if strings.Join(info.runpath, ":") != strings.Join(runpath, ":") || strings.Join(info.rpath, ":") != strings.Join(rpath, ":") {
				t.Errorf("parseELF(%s): runpath %q, rpath %q; debug/elf says %q, %q", p, info.runpath, info.rpath, runpath, rpath)
			}
			var interp string
			for _, ph := range f.Progs {
				if ph.Type == elf.PT_INTERP {
					b := make([]byte, ph.Filesz)
					ph.ReadAt(b, 0)
					interp = string(bytes.TrimRight(b, "\x00"))
				}
			}
			if info.interp != interp || info.machine != uint16(f.Machine) || info.class != byte(f.Class) {
				t.Errorf("parseELF(%s): interp %q, machine %d, class %d; debug/elf says %q, %d, %d", p, info.interp, info.machine, info.class, interp, f.Machine, f.Class)
			}
			if dyn := f.Section(".dynstr"); dyn != nil && !slices.ContainsFunc(info.tables, func(s elfSpan) bool { return s.off == int64(dyn.Offset) }) {
				t.Errorf("parseELF(%s): tables %v lack .dynstr at %d", p, info.tables, dyn.Offset)
			}
			for _, s := range info.tables {
				if s.off < 0 || s.n < 0 || s.off+s.n > int64(len(data)) {
					t.Errorf("parseELF(%s): table %v out of the file", p, s)
				}
			}
		})
	}
}

// elfSpec describes a small ELF64 object makeELF writes.
type elfSpec struct {
	needed  []string
	runpath string
	interp  string
}

// makeELF writes a little-endian x86-64 ELF64 object: header, three
// program headers (PT_LOAD of the whole file at 0x400000, PT_INTERP if
// any, PT_DYNAMIC), the interpreter, the string table and the dynamic
// section.
func makeELF(s elfSpec) []byte {
	const base = 0x400000
	le := binary.LittleEndian
	strtab := []byte{0}
	str := func(v string) uint64 {
		o := len(strtab)
		strtab = append(append(strtab, v...), 0)
		return uint64(o)
	}
	var dyn []uint64
	for _, n := range s.needed {
		dyn = append(dyn, dtNeeded, str(n))
	}
	if s.runpath != "" {
		dyn = append(dyn, dtRunpath, str(s.runpath))
	}
	const phoff, phnum = 64, 3
	interpOff := uint64(phoff + phnum*56)
	interp := append([]byte(s.interp), 0)
	strOff := interpOff + uint64(len(interp))
	dynOff := (strOff + uint64(len(strtab)) + 7) &^ 7
	dyn = append(dyn, dtStrtab, base+strOff, dtStrSz, uint64(len(strtab)), dtNull, 0)
	size := dynOff + uint64(len(dyn))*8
	b := make([]byte, size)
	copy(b, "\x7fELF\x02\x01\x01")
	le.PutUint16(b[16:], 3)  // ET_DYN
	le.PutUint16(b[18:], 62) // EM_X86_64
	le.PutUint32(b[20:], 1)
	le.PutUint64(b[32:], phoff)
	le.PutUint16(b[52:], 64)
	le.PutUint16(b[54:], 56)
	le.PutUint16(b[56:], phnum)
	ph := func(k int, typ uint32, off, n uint64) {
		p := b[phoff+k*56:]
		le.PutUint32(p, typ)
		le.PutUint64(p[8:], off)
		le.PutUint64(p[16:], base+off)
		le.PutUint64(p[32:], n)
		le.PutUint64(p[40:], n)
	}
	ph(0, ptLoad, 0, size)
	if s.interp != "" {
		ph(1, ptInterp, interpOff, uint64(len(interp)))
	}
	ph(2, ptDynamic, dynOff, uint64(len(dyn))*8)
	copy(b[interpOff:], interp)
	copy(b[strOff:], strtab)
	for k, v := range dyn {
		le.PutUint64(b[dynOff+uint64(k)*8:], v)
	}
	return b
}

func TestParseELFMalformed(t *testing.T) {
	good := makeELF(elfSpec{needed: []string{"libc.so.6", "libm.so.6"}, runpath: "$ORIGIN/lib", interp: "/lib64/ld-linux-x86-64.so.2"})
	if info, err := parseELF(bytesSource(good)); err != nil || !slices.Equal(info.needed, []string{"libc.so.6", "libm.so.6"}) || info.interp != "/lib64/ld-linux-x86-64.so.2" || !slices.Equal(info.runpath, []string{"$ORIGIN/lib"}) {
		t.Fatalf("parseELF(makeELF) = %+v, %v", info, err)
	}
	le := binary.LittleEndian
	edit := func(f func(b []byte)) []byte {
		b := slices.Clone(good)
		f(b)
		return b
	}
	dynOff := le.Uint64(good[64+2*56+8:])
	for _, tc := range []struct {
		name string
		data []byte
	}{
		{"empty", nil},
		{"not ELF", []byte("#!/bin/sh\necho hello, this is no ELF object at all, just text\n")},
		{"header only", good[:64]},
		{"truncated in the phdrs", good[:100]},
		{"truncated in the dynamic section", good[:len(good)-20]},
		{"huge phnum", edit(func(b []byte) { le.PutUint16(b[56:], 0xffff) })},
		{"phoff out of range", edit(func(b []byte) { le.PutUint64(b[32:], 1<<62) })},
		{"small phentsize", edit(func(b []byte) { le.PutUint16(b[54:], 8) })},
		{"bad class", edit(func(b []byte) { b[4] = 9 })},
		{"bad byte order", edit(func(b []byte) { b[5] = 0 })},
		{"dynamic past the end", edit(func(b []byte) { le.PutUint64(b[64+2*56+8:], 1<<40) })},
		{"huge dynamic size", edit(func(b []byte) { le.PutUint64(b[64+2*56+32:], 1<<62) })},
		{"strtab unmapped", edit(func(b []byte) { le.PutUint64(b[dynOff+4*16+8:], 0x10) })},
		{"needed past strsz", edit(func(b []byte) { le.PutUint64(b[dynOff+8:], 1<<50) })},
		{"no NUL", edit(func(b []byte) {
			for k := int(le.Uint64(good[64+2*56+8:])) - 40; k < int(dynOff); k++ {
				b[k] = 'x'
			}
		})},
		{"interp past the end", edit(func(b []byte) { le.PutUint64(b[64+56+8:], uint64(len(good)-2)) })},
	} {
		t.Run(tc.name, func(t *testing.T) {
			info, err := parseELF(bytesSource(tc.data))
			if err == nil {
				for _, s := range info.tables {
					if s.off < 0 || s.n < 0 || s.off+s.n > int64(len(tc.data)) {
						t.Errorf("table %v out of a %d-byte object", s, len(tc.data))
					}
				}
			}
			t.Logf("%+v, %v", info, err)
		})
	}
}

func TestScriptInterpreter(t *testing.T) {
	for _, tc := range []struct {
		head string
		want string
		ok   bool
	}{
		{"#!/bin/sh\n", "/bin/sh", true},
		{"#! /usr/bin/env python3\nprint()", "/usr/bin/env", true},
		{"#!relative\n", "", false},
		{"#!/bin/sh", "", false},
	} {
		got, ok := scriptInterpreter([]byte(tc.head))
		if got != tc.want || ok != tc.ok {
			t.Errorf("scriptInterpreter(%q) = %q, %v; want %q, %v", tc.head, got, ok, tc.want, tc.ok)
		}
	}
}

func FuzzELFParse(f *testing.F) {
	f.Add(makeELF(elfSpec{needed: []string{"libc.so.6"}, runpath: "$ORIGIN", interp: "/lib/ld.so"}))
	f.Add(makeELF(elfSpec{}))
	f.Add([]byte("\x7fELF\x01\x01\x01"))
	if b, err := os.ReadFile("/bin/true"); err == nil && len(b) < 1<<20 {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		info, err := parseELF(bytesSource(data))
		if err != nil {
			return
		}
		if len(info.needed) > maxNeeded || len(info.interp) > maxELFName {
			t.Fatalf("unbounded: %d names, interp of %d bytes", len(info.needed), len(info.interp))
		}
		for _, s := range info.tables {
			if s.off < 0 || s.n < 0 || s.off+s.n > int64(len(data)) {
				t.Fatalf("table %v out of a %d-byte object", s, len(data))
			}
		}
	})
}
