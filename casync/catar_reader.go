package casync

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"sort"
	"strings"
)

// ArchiveReader gives random access to a catar archive through its GOODBYE
// tables, like estargz.Open does through its TOC: Lookup finds a node by
// path, ReadDir lists a directory, and OpenFile reads a file's content.
// It reads only what an operation needs: a lookup reads, per path
// component, O(log n) GOODBYE items of a directory of n entries and the
// records of one node.
//
// Everything read is checked; malformed input gives errors that wrap
// ErrFormat. An ArchiveReader is safe for concurrent use if its
// io.ReaderAt is.
type ArchiveReader struct {
	r    io.ReaderAt
	size int64
	fs   featureState
	root *dirNode
}

// dirNode is a directory whose GOODBYE record has been located.
type dirNode struct {
	e *Entry
	// first is where its first child's FILENAME would start (just after
	// its metadata records), goodbye where its GOODBYE record starts.
	first, goodbye int64
	n              int // number of children
}

// NewArchiveReader opens the catar archive of size bytes in r. It reads
// the root directory's ENTRY record, at offset 0, and the tail of its
// GOODBYE record, at the very end.
func NewArchiveReader(r io.ReaderAt, size int64) (*ArchiveReader, error) {
	if size < entryRecordSize+goodbyeSize(0) {
		return nil, fmt.Errorf("%w: archive of %d bytes is too small", ErrFormat, size)
	}
	a := &ArchiveReader{r: r, size: size}
	rr := a.at(0, size)
	e, err := readNode(rr, &a.fs, "")
	if err != nil {
		return nil, err
	}
	if !e.IsDir() {
		return nil, formatErr(0, "archive root has mode %#o, not a directory", e.Mode)
	}
	e.End = size
	a.root, err = a.dir(e, rr.pos())
	if err != nil {
		return nil, err
	}
	return a, nil
}

// Root returns the Entry of the archive's root directory.
func (a *ArchiveReader) Root() *Entry { return a.root.e }

// dir locates the GOODBYE record of directory e, whose metadata records
// end at first, from the tail at e.End.
func (a *ArchiveReader) dir(e *Entry, first int64) (*dirNode, error) {
	off := e.End - goodbyeItemSize
	if off < first {
		return nil, formatErr(e.Offset, "directory %s is too short for a GOODBYE record", quotePath(e.Path))
	}
	var b [goodbyeItemSize]byte
	if err := a.readAt(b[:], off); err != nil {
		return nil, err
	}
	t, start, err := checkGoodbyeTail(b[:], off)
	if err != nil {
		return nil, err
	}
	if start < first || start-int64(t.entryOffset) != e.Offset {
		return nil, formatErr(off, "GOODBYE tail of %s points to offset %d, not to its ENTRY at %d", quotePath(e.Path), start-int64(t.entryOffset), e.Offset)
	}
	if err := a.readAt(b[:headerSize], start); err != nil {
		return nil, err
	}
	if le64(b[:]) != t.size || le64(b[8:]) != recGoodbye {
		return nil, formatErr(start, "no GOODBYE record where the tail of %s says", quotePath(e.Path))
	}
	n := (t.size - uint64(goodbyeSize(0))) / goodbyeItemSize
	if n > 0 && start-first < int64(n)*(headerSize+2+entryRecordSize) {
		return nil, formatErr(start, "GOODBYE record of %s lists %d entries that cannot fit", quotePath(e.Path), n)
	}
	return &dirNode{e: e, first: first, goodbye: start, n: int(n)}, nil
}

func (a *ArchiveReader) readAt(p []byte, off int64) error {
	if off < 0 || off > a.size || int64(len(p)) > a.size-off {
		return formatErr(off, "read of %d bytes beyond the archive's %d", len(p), a.size)
	}
	n, err := a.r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("casync: read catar at offset %d: %w", off, err)
}

// item reads GOODBYE item i of d.
func (a *ArchiveReader) item(d *dirNode, i int) (goodbyeItem, error) {
	var b [goodbyeItemSize]byte
	off := d.goodbye + headerSize + int64(i)*goodbyeItemSize
	if err := a.readAt(b[:], off); err != nil {
		return goodbyeItem{}, err
	}
	return a.checkItem(d, b[:], off)
}

func (a *ArchiveReader) checkItem(d *dirNode, b []byte, off int64) (goodbyeItem, error) {
	rel, size, hash := le64(b), le64(b[8:]), le64(b[16:])
	if rel > uint64(d.goodbye-d.first) || size > rel || size < headerSize+2+entryRecordSize {
		return goodbyeItem{}, formatErr(off, "GOODBYE item of %s (offset %d, size %d) outside the directory", quotePath(d.e.Path), rel, size)
	}
	start := d.goodbye - int64(rel)
	return goodbyeItem{hash: hash, start: start, end: start + int64(size)}, nil
}

// child reads the FILENAME record and node at it, a child of d.
func (a *ArchiveReader) child(d *dirNode, it goodbyeItem) (string, *Entry, int64, error) {
	rr := a.at(it.start, it.end)
	name, err := readFilename(rr)
	if err != nil {
		return "", nil, 0, err
	}
	if nameHash(name) != it.hash {
		return "", nil, 0, formatErr(it.start, "name %q in %s does not match its GOODBYE hash", name, quotePath(d.e.Path))
	}
	e, err := readNode(rr, &a.fs, joinPath(d.e.Path, name))
	if err != nil {
		return "", nil, 0, err
	}
	switch {
	case e.IsDir():
		e.End = it.end
	case e.End != it.end:
		return "", nil, 0, formatErr(e.Offset, "%q ends at %d, its GOODBYE item says %d", e.Path, e.End, it.end)
	}
	return name, e, rr.pos(), nil
}

// Lookup returns the Entry at path: slash-separated, relative to the root
// (a leading slash and "." components are ignored). A path that does not
// exist gives an error wrapping fs.ErrNotExist.
func (a *ArchiveReader) Lookup(path string) (*Entry, error) {
	d, e, err := a.lookup(path)
	if err != nil {
		return nil, err
	}
	if d != nil {
		return d.e, nil
	}
	return e, nil
}

// lookup returns the dirNode for a directory, else the Entry.
func (a *ArchiveReader) lookup(path string) (*dirNode, *Entry, error) {
	d := a.root
	parts := strings.Split(path, "/")
	for i, name := range parts {
		if name == "" || name == "." {
			continue
		}
		if d == nil {
			return nil, nil, &fs.PathError{Op: "lookup", Path: path, Err: fmt.Errorf("%s is not a directory: %w", strings.Join(parts[:i], "/"), fs.ErrNotExist)}
		}
		if !validName(name) {
			return nil, nil, &fs.PathError{Op: "lookup", Path: path, Err: fs.ErrNotExist}
		}
		e, first, err := a.find(d, name)
		if err != nil {
			return nil, nil, err
		}
		if e == nil {
			return nil, nil, &fs.PathError{Op: "lookup", Path: path, Err: fs.ErrNotExist}
		}
		if !e.IsDir() {
			d = nil
			if i == len(parts)-1 || allEmpty(parts[i+1:]) {
				return nil, e, nil
			}
			continue
		}
		if d, err = a.dir(e, first); err != nil {
			return nil, nil, err
		}
	}
	return d, nil, nil
}

func allEmpty(parts []string) bool {
	for _, p := range parts {
		if p != "" && p != "." {
			return false
		}
	}
	return true
}

// find searches d's GOODBYE table for name. It returns a nil Entry if
// there is none.
func (a *ArchiveReader) find(d *dirNode, name string) (*Entry, int64, error) {
	h := nameHash(name)
	// Items with equal hashes may sit in both subtrees, so search like
	// casync: left while h <= item, right while h >= item.
	var search func(i, depth int) (*Entry, int64, error)
	search = func(i, depth int) (*Entry, int64, error) {
		if i >= d.n || depth > 64 {
			return nil, 0, nil
		}
		it, err := a.item(d, i)
		if err != nil {
			return nil, 0, err
		}
		if it.hash == h {
			got, e, first, err := a.child(d, it)
			if err != nil {
				return nil, 0, err
			}
			if got == name {
				return e, first, nil
			}
		}
		if h <= it.hash {
			if e, first, err := search(2*i+1, depth+1); e != nil || err != nil {
				return e, first, err
			}
		}
		if h >= it.hash {
			return search(2*i+2, depth+1)
		}
		return nil, 0, nil
	}
	return search(0, 0)
}

// ReadDir returns the entries of the directory at path, sorted by name.
// It reads the directory's whole GOODBYE table and the records of each
// entry, and checks that the table covers the directory exactly.
func (a *ArchiveReader) ReadDir(path string) ([]*Entry, error) {
	d, _, err := a.lookup(path)
	if err != nil {
		return nil, err
	}
	if d == nil {
		return nil, &fs.PathError{Op: "readdir", Path: path, Err: errors.New("not a directory")}
	}
	items := make([]goodbyeItem, 0, d.n)
	buf := make([]byte, min(d.n, 4096)*goodbyeItemSize)
	for i := 0; i < d.n; {
		k := min(d.n-i, len(buf)/goodbyeItemSize)
		off := d.goodbye + headerSize + int64(i)*goodbyeItemSize
		if err := a.readAt(buf[:k*goodbyeItemSize], off); err != nil {
			return nil, err
		}
		for j := 0; j < k; j++ {
			it, err := a.checkItem(d, buf[j*goodbyeItemSize:], off+int64(j)*goodbyeItemSize)
			if err != nil {
				return nil, err
			}
			items = append(items, it)
		}
		i += k
	}
	sort.Slice(items, func(i, j int) bool { return items[i].start < items[j].start })
	ents := make([]*Entry, 0, len(items))
	next, last := d.first, ""
	for _, it := range items {
		if it.start != next {
			return nil, formatErr(it.start, "GOODBYE table of %s does not cover its entries (entry at %d, want %d)", quotePath(d.e.Path), it.start, next)
		}
		name, e, _, err := a.child(d, it)
		if err != nil {
			return nil, err
		}
		if last != "" && name <= last {
			return nil, formatErr(it.start, "file name %q after %q in %s: not sorted", name, last, quotePath(d.e.Path))
		}
		last, next = name, it.end
		ents = append(ents, e)
	}
	if next != d.goodbye {
		return nil, formatErr(next, "GOODBYE table of %s does not cover its entries (end at %d, GOODBYE at %d)", quotePath(d.e.Path), next, d.goodbye)
	}
	return ents, nil
}

// OpenFile returns a reader of the content of regular file e, an Entry
// this ArchiveReader returned.
func (a *ArchiveReader) OpenFile(e *Entry) (*io.SectionReader, error) {
	if !e.IsRegular() {
		return nil, &fs.PathError{Op: "open", Path: e.Path, Err: errors.New("not a regular file")}
	}
	if e.PayloadOffset <= 0 || e.PayloadOffset > a.size || int64(e.Size) > a.size-e.PayloadOffset || int64(e.Size) < 0 {
		return nil, formatErr(e.PayloadOffset, "content of %q (%d bytes) is outside the archive", e.Path, e.Size)
	}
	return io.NewSectionReader(a.r, e.PayloadOffset, int64(e.Size)), nil
}

// atReader reads records from an io.ReaderAt between off and end, a
// window at a time.
type atReader struct {
	a        *ArchiveReader
	off, end int64
	buf      []byte // bytes from off on
}

const atWindow = 512

func (a *ArchiveReader) at(off, end int64) *atReader {
	return &atReader{a: a, off: off, end: end}
}

// fill makes n bytes from r.off available, or fewer at end.
func (r *atReader) fill(n int) error {
	if len(r.buf) >= n {
		return nil
	}
	want := max(n, atWindow)
	if left := r.end - r.off; int64(want) > left {
		want = int(left)
	}
	if want <= len(r.buf) {
		return nil
	}
	b := make([]byte, want)
	copy(b, r.buf)
	if err := r.a.readAt(b[len(r.buf):], r.off+int64(len(r.buf))); err != nil {
		return err
	}
	r.buf = b
	return nil
}

func (r *atReader) header() (uint64, uint64, error) {
	if err := r.fill(headerSize); err != nil {
		return 0, 0, err
	}
	if len(r.buf) < headerSize {
		if len(r.buf) == 0 {
			return 0, 0, io.EOF
		}
		return 0, 0, io.ErrUnexpectedEOF
	}
	return le64(r.buf), le64(r.buf[8:]), nil
}

func (r *atReader) record(size uint64) ([]byte, error) {
	if size > uint64(r.end-r.off) {
		return nil, io.ErrUnexpectedEOF
	}
	if err := r.fill(int(size)); err != nil {
		return nil, err
	}
	b := r.buf[headerSize:size]
	r.advance(int(size))
	return b, nil
}

func (r *atReader) skipHeader() error {
	if err := r.fill(headerSize); err != nil {
		return err
	}
	r.advance(headerSize)
	return nil
}

func (r *atReader) advance(n int) {
	r.buf = r.buf[n:]
	r.off += int64(n)
}

func (r *atReader) pos() int64 { return r.off }
