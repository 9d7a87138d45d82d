package lazyfs

import (
	"bytes"
	"path"
	"strings"
	"sync"

	"github.com/bootfs/bootfs/casync"
)

// Read-ahead along ELF dependencies.
//
// The dynamic loader opens a program's libraries one after the other
// (its DT_NEEDED, breadth first): it reads each one's ELF header, then
// maps it and faults its pages in. On a cold mount every library costs
// at least one round trip, strictly after the previous one's: for
// postgres, with some 35 libraries, most of the longest chain of
// dependent fetches of its start.
//
// So when a read at the start of a regular file returns bytes that begin
// an ELF object (or a #! script), the FS parses it, in the background:
// program headers, PT_INTERP, and the dynamic section's DT_NEEDED,
// DT_RPATH and DT_RUNPATH, fetching the bytes it needs that the read did
// not bring as read-ahead first. It resolves each name as ld.so would,
// but against the image's TOC: the object's DT_RPATH (when it has no
// DT_RUNPATH) and DT_RUNPATH, with $ORIGIN, then /usr/local/lib and the
// multiarch and system directories of the object's machine (the dirs
// the image's ld.so.cache lists on Debian and Alpine), following
// symlinks within the image. Each library found starts its read-ahead
// at once, with those of its siblings in one or a few batches: all of it
// when it is at most fileAheadBytes, as fileAhead would on its first
// miss, else its head and, once that is parsed, its dynamic section and
// the tables ld.so reads before running any of its code. Each library is
// then parsed in turn as its head arrives, for its own DT_NEEDED, and so
// on, breadth first, as ld.so goes, but without waiting for ld.so.
//
// It is read-ahead: it runs beside the reads, never before them, takes
// read-ahead's room (ReadAhead bytes in flight) and never a read's slot,
// and what it fetches counts as read-ahead (and as waste until read). A
// library that is not in the image, a name it cannot resolve, or an
// object that does not parse only ends the read-ahead of that object.
// Everything is bounded: the parse (elf.go), the objects followed per
// mount (maxELFObjects), its bytes (maxELFAheadBytes), the depth and the
// symlink hops.

const (
	// maxELFObjects bounds the objects a mount follows (a program and
	// its libraries, the extension modules it loads and theirs).
	maxELFObjects = 512
	// maxELFAheadBytes bounds the bytes a mount fetches ahead for the
	// objects it follows.
	maxELFAheadBytes = 64 << 20
	// maxELFDepth bounds the levels of libraries followed below an
	// object read.
	maxELFDepth = 16
	// elfHeadBytes is the head fetched first of a library too large to
	// fetch whole: its headers and, mostly, its dynamic tables.
	elfHeadBytes = 64 << 10
	// elfPeekBytes is what parsing reads first of an object: its ELF
	// header and program headers, or a script's #! line.
	elfPeekBytes = 4 << 10
)

// elfAhead is an FS's read-ahead along ELF dependencies.
type elfAhead struct {
	toc *casync.TOC
	r   *Reader

	mu    sync.Mutex
	seen  map[int]struct{} // the objects followed, or being followed
	bytes int64            // the bytes fetched ahead for them
}

func newELFAhead(toc *casync.TOC, r *Reader) *elfAhead {
	if r.opts.ReadAhead <= 0 {
		return nil
	}
	return &elfAhead{toc: toc, r: r, seen: make(map[int]struct{})}
}

// noteRead is told of a read at offset 0 of regular file i that got
// head. If head begins an ELF object or a #! script not followed yet, it
// follows its dependencies in the background. It never blocks.
func (a *elfAhead) noteRead(i int, head []byte) {
	if a == nil || !(bytes.HasPrefix(head, []byte("\x7fELF")) || bytes.HasPrefix(head, []byte("#!"))) {
		return
	}
	if !a.mark(i) {
		return
	}
	a.r.goBackground(func() { a.follow(i) })
}

// mark notes object i as followed, and reports whether it was not yet
// and the mount may follow one more.
func (a *elfAhead) mark(i int) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.seen[i]; ok || len(a.seen) >= maxELFObjects {
		return false
	}
	a.seen[i] = struct{}{}
	return true
}

// followed reports whether object i is followed already: a library
// every other one needs (libc) is looked at once, not its chunks' cache
// files once for each.
func (a *elfAhead) followed(i int) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	_, ok := a.seen[i]
	return ok
}

// elfObject is an object to follow: TOC node i, found at path (for
// $ORIGIN), depth levels below the object read.
type elfObject struct {
	node  int
	path  string
	depth int
}

// elfQueue is what follow has yet to fetch, in the order it wants it:
// heads and tables first, then the rest of the libraries fetched whole.
type elfQueue struct {
	first, rest []elfSpan // archive spans
	inflight    []batchItem
}

// follow follows the dependencies of object root, breadth first.
func (a *elfAhead) follow(root int) {
	queue := []elfObject{{node: root, path: "/" + a.toc.Path(root)}}
	var q elfQueue
	for len(queue) > 0 && a.r.ctx.Err() == nil {
		o := queue[0]
		queue = queue[1:]
		deps, tables := a.visit(o)
		if a.large(o.node) { // a smaller one comes whole
			q.first = append(q.first, tables...)
		}
		for _, d := range deps {
			e := a.toc.Attr(d.node)
			start, size := int64(e.PayloadOffset), int64(e.Size)
			if size <= 0 {
				continue
			}
			q.first = append(q.first, elfSpan{start, min(size, elfHeadBytes)})
			if size > elfHeadBytes && size <= a.r.fileAheadBytes() {
				q.rest = append(q.rest, elfSpan{start + elfHeadBytes, size - elfHeadBytes})
			}
			if d.depth < maxELFDepth {
				queue = append(queue, d)
			}
		}
		a.pump(&q)
	}
	// What found no room: as the fetches in flight end.
	for len(q.first)+len(q.rest) > 0 && len(q.inflight) > 0 {
		if !a.r.waitLoads(q.inflight) {
			return
		}
		q.inflight = nil
		a.pump(&q)
	}
}

// large reports whether file i is too large for fileAhead: what read-ahead
// fetches of it is its head and tables.
func (a *elfAhead) large(i int) bool {
	return int64(a.toc.Attr(i).Size) > a.r.fileAheadBytes()
}

// pump fetches what q wants that read-ahead has room for, in order, as
// one or a few batches, and keeps the rest for later.
func (a *elfAhead) pump(q *elfQueue) {
	room := a.r.opts.ReadAhead - a.r.aheadInFlight.Load()
	a.mu.Lock()
	room = min(room, maxELFAheadBytes-a.bytes)
	var take []elfSpan
	for _, l := range []*[]elfSpan{&q.first, &q.rest} {
		for len(*l) > 0 && (*l)[0].n <= room {
			take = append(take, (*l)[0])
			room -= (*l)[0].n
			a.bytes += (*l)[0].n
			*l = (*l)[1:]
		}
		if len(*l) > 0 {
			break // in order: the rest waits for the head of the list
		}
	}
	a.mu.Unlock()
	if len(take) == 0 {
		return
	}
	items := a.r.fetchAheadChunks(func(yield func(int) bool) {
		for _, s := range take {
			if s.n <= 0 || s.off < 0 || s.off+s.n > a.r.size {
				continue
			}
			last := a.r.idx.ChunkAt(uint64(s.off + s.n - 1))
			for i := a.r.idx.ChunkAt(uint64(s.off)); i <= last; i++ {
				if !yield(i) {
					return
				}
			}
		}
	})
	q.inflight = append(q.inflight, items...)
}

// visit parses object o and returns the objects it depends on that are
// not followed yet, and the archive spans of its dynamic tables.
func (a *elfAhead) visit(o elfObject) ([]elfObject, []elfSpan) {
	e := a.toc.Attr(o.node)
	src := &archiveSource{r: a.r, start: int64(e.PayloadOffset), n: int64(e.Size)}
	head := make([]byte, min(src.n, elfPeekBytes))
	if err := src.readAt(head, 0); err != nil {
		a.debug("ELF read-ahead: cannot read the head", o, err)
		return nil, nil
	}
	src.head = head
	if bytes.HasPrefix(head, []byte("#!")) {
		interp, ok := scriptInterpreter(head)
		if !ok {
			return nil, nil
		}
		return a.deps(o, []string{interp}, nil, nil), nil
	}
	info, err := parseELF(src)
	if err != nil {
		a.debug("ELF read-ahead: not followed", o, err)
		return nil, nil
	}
	var names []string
	if info.interp != "" {
		names = append(names, info.interp)
	}
	names = append(names, info.needed...)
	var dirs []string
	if len(info.runpath) == 0 {
		dirs = append(dirs, info.rpath...)
	}
	dirs = append(dirs, info.runpath...)
	dirs = append(dirs, defaultLibDirs(info.machine, info.class)...)
	tables := make([]elfSpan, 0, len(info.tables))
	for _, t := range info.tables {
		tables = append(tables, elfSpan{src.start + t.off, t.n})
	}
	return a.deps(o, names, dirs, info), tables
}

// deps resolves names, needed by object o, in dirs, and returns those
// found that are not followed yet nor in the local cache, marking them
// followed.
func (a *elfAhead) deps(o elfObject, names, dirs []string, info *elfInfo) []elfObject {
	var out []elfObject
	origin := path.Dir(o.path)
	for _, name := range names {
		i, p, ok := a.resolve(name, dirs, origin)
		if !ok {
			a.r.log.Debug("ELF read-ahead: library not found in the image", "store", a.r.opts.StoreName, "object", o.path, "library", name)
			continue
		}
		if !a.followed(i) && a.cachedLocally(i) {
			// A file read away when ld.so asks; not marked, so that
			// its own read follows what it needs in turn.
			continue
		}
		if a.mark(i) {
			out = append(out, elfObject{node: i, path: p, depth: o.depth + 1})
		}
	}
	return out
}

// cachedLocally reports whether what read-ahead would fetch of file i (its
// head if it is large, else all of it) is in the local cache. Loading it
// ahead would cost a decompression and room in the LRU for nothing: on a
// warm node, that is every library.
func (a *elfAhead) cachedLocally(i int) bool {
	if a.r.local == nil {
		return false
	}
	e := a.toc.Attr(i)
	start, n := int64(e.PayloadOffset), int64(e.Size)
	if a.large(i) {
		n = elfHeadBytes
	}
	if n <= 0 || start < 0 || start+n > a.r.size {
		return false
	}
	last := a.r.idx.ChunkAt(uint64(start + n - 1))
	for c := a.r.idx.ChunkAt(uint64(start)); c <= last; c++ {
		if !a.r.local.Cached(a.r.idx.Chunks[c].ID) {
			return false
		}
	}
	return true
}

func (a *elfAhead) debug(msg string, o elfObject, err error) {
	if a.r.ctx.Err() == nil {
		a.r.log.Debug(msg, "store", a.r.opts.StoreName, "object", o.path, "err", err)
	}
}

// resolve finds library name as ld.so would: a name with a slash is a
// path, any other is looked for in dirs, where $ORIGIN is origin. It
// returns the regular file's node and the path it was found at.
func (a *elfAhead) resolve(name string, dirs []string, origin string) (int, string, bool) {
	if strings.Contains(name, "/") {
		if !strings.HasPrefix(name, "/") {
			return 0, "", false // relative to the working directory
		}
		i, ok := a.lookup(name)
		return i, name, ok
	}
	for _, d := range dirs {
		d = strings.NewReplacer("${ORIGIN}", origin, "$ORIGIN", origin).Replace(d)
		if strings.Contains(d, "$") || !strings.HasPrefix(d, "/") {
			continue // $LIB, $PLATFORM: not known here
		}
		p := d + "/" + name
		if i, ok := a.lookup(p); ok {
			return i, path.Clean(p), true
		}
	}
	return 0, "", false
}

// lookup returns the regular file at p, an absolute path in the image,
// following symlinks within it (at most maxSymlinkHops).
func (a *elfAhead) lookup(p string) (int, bool) {
	i, ok := lookupFollow(a.toc, p)
	if !ok || a.toc.Mode(i)&casync.ModeTypeMask != casync.ModeRegular {
		return 0, false
	}
	return i, true
}
