package casync

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"math"
)

// MaxCatarDepth is how deeply an entry may be nested: its path has at most
// MaxCatarDepth components (the root has none). It is the one limit of the
// whole format: EncodeTar and EncodeDir refuse deeper input, and the
// Decoder, BuildTOC, TOCBuilder and UnmarshalTOC refuse deeper archives, so
// an archive that converts also mounts, with its TOC or without. Linux
// paths are at most 4096 bytes, hence 2048 levels of one-byte names.
const MaxCatarDepth = 2048

// Decoder reads a catar archive as a stream, in archive order, the way
// archive/tar's Reader reads a tar: Next returns each node's Entry, and
// Read returns the content of the current regular file.
//
// The Decoder checks the whole archive as it goes: record sizes and order,
// the feature flags, modes, owners and times they allow, names (1 to 255
// bytes, no "/" or NUL, not "." or "..", in strictly increasing order),
// nesting depth, and every GOODBYE table against the directory it closes.
// It allocates only for bounded records, whatever sizes the input claims.
// Errors wrap ErrFormat (or ErrUnsupported for unknown feature flags), say
// at which offset they were found, and are sticky.
type Decoder struct {
	br     *bufio.Reader
	off    int64
	fs     featureState
	stack  []*decodeDir
	cur    *Entry
	left   int64 // unread content of cur
	err    error
	rec    []byte
	closed bool // the root directory is closed
}

// decodeDir is an open directory.
type decodeDir struct {
	e     *Entry
	pb    *pathBuilder  // gives the children their paths
	last  string        // name of the previous child
	items []goodbyeItem // children seen so far
	open  bool          // the last item's end is not known yet
}

// NewDecoder returns a Decoder reading the catar archive from r.
func NewDecoder(r io.Reader) *Decoder {
	return &Decoder{br: bufio.NewReaderSize(r, 64<<10)}
}

// Next advances to the next node and returns its Entry, or io.EOF after
// the root directory's GOODBYE record. Any unread content of the previous
// file is skipped.
//
// Every field of the Entry is set, except that a directory's End is zero
// until its GOODBYE record has been read; the Decoder then fills it in on
// the same *Entry, so it is valid once Next has moved past the directory
// (returned a node outside it, or io.EOF).
func (d *Decoder) Next() (*Entry, error) {
	if d.err != nil {
		return nil, d.err
	}
	e, err := d.next()
	if err != nil {
		d.err = err
		return nil, err
	}
	return e, nil
}

func (d *Decoder) next() (*Entry, error) {
	for d.left > 0 { // skip the rest of the previous file
		n, err := d.br.Discard(int(min(d.left, math.MaxInt32)))
		d.off += int64(n)
		d.left -= int64(n)
		if err != nil {
			return nil, eofErr(d.off, "file content", err)
		}
	}
	d.cur = nil
	if d.closed {
		return nil, io.EOF
	}
	if len(d.stack) == 0 {
		// The root node.
		e, err := readNode(d, &d.fs, "")
		if err != nil {
			return nil, err
		}
		if !e.IsDir() {
			return nil, formatErr(0, "archive root has mode %#o, not a directory", e.Mode)
		}
		d.stack = append(d.stack, &decodeDir{e: e, pb: &pathBuilder{}})
		return e, nil
	}
	for {
		dir := d.stack[len(d.stack)-1]
		off := d.off
		_, typ, err := d.header()
		if err != nil {
			return nil, eofErr(off, "directory "+quotePath(dir.e.Path), err)
		}
		if dir.open {
			dir.items[len(dir.items)-1].end = off
			dir.open = false
		}
		switch typ {
		case recFilename:
			return d.child(dir)
		case recGoodbye:
			if err := d.goodbye(dir); err != nil {
				return nil, err
			}
			d.stack = d.stack[:len(d.stack)-1]
			if len(d.stack) == 0 {
				d.closed = true
				if _, err := d.br.Peek(1); err == nil {
					return nil, formatErr(d.off, "data after the root directory's GOODBYE record")
				} else if err != io.EOF {
					return nil, eofErr(d.off, "the end of the archive", err)
				}
				return nil, io.EOF
			}
		default:
			return nil, formatErr(off, "unexpected %s record in directory %s", recordName(typ), quotePath(dir.e.Path))
		}
	}
}

// child reads a FILENAME record and the node after it.
func (d *Decoder) child(dir *decodeDir) (*Entry, error) {
	start := d.off
	name, err := readFilename(d)
	if err != nil {
		return nil, err
	}
	if dir.last != "" && name <= dir.last {
		return nil, formatErr(start, "file name %q after %q in %s: not sorted", name, dir.last, quotePath(dir.e.Path))
	}
	dir.last = name
	pb := dir.pb.child(dir.e.Path, name)
	path := pb.String()
	if depth := len(d.stack); depth > MaxCatarDepth { // the stack holds the root and every ancestor
		return nil, formatErr(start, "%s is %s", quotePath(path), depthMsg(depth))
	}
	e, err := readNode(d, &d.fs, path)
	if err != nil {
		return nil, err
	}
	// The item's end is filled in when the next record of dir comes.
	dir.items = append(dir.items, goodbyeItem{hash: nameHash(name), start: start})
	dir.open = true
	switch {
	case e.IsDir():
		d.stack = append(d.stack, &decodeDir{e: e, pb: pb})
	case e.IsRegular():
		d.cur = e
		d.left = int64(e.Size)
	}
	return e, nil
}

// goodbye reads dir's GOODBYE record and checks it against the children.
func (d *Decoder) goodbye(dir *decodeDir) error {
	off := d.off
	size, _, err := d.header()
	if err != nil {
		return eofErr(off, "GOODBYE", err)
	}
	want := goodbyeSize(len(dir.items))
	if size != uint64(want) {
		return formatErr(off, "GOODBYE record of %d bytes for %d entries of %s, want %d", size, len(dir.items), quotePath(dir.e.Path), want)
	}
	got, err := d.record(size)
	if err != nil {
		return eofErr(off, "GOODBYE", err)
	}
	exp := appendGoodbye(nil, dir.items, dir.e.Offset, off)
	if !bytes.Equal(got, exp[headerSize:]) {
		return formatErr(off, "GOODBYE table of %s does not match its entries", quotePath(dir.e.Path))
	}
	dir.e.End = d.off
	return nil
}

// Read reads the content of the current regular file. It returns io.EOF
// at the end of the content, or when the current node has none.
func (d *Decoder) Read(p []byte) (int, error) {
	if d.err != nil {
		return 0, d.err
	}
	if d.left == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > d.left {
		p = p[:d.left]
	}
	n, err := d.br.Read(p)
	d.off += int64(n)
	d.left -= int64(n)
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		d.err = eofErr(d.off, "file content", err)
		return n, d.err
	}
	return n, nil
}

// recReader implementation.

func (d *Decoder) header() (size, typ uint64, err error) {
	b, err := d.br.Peek(headerSize)
	if err != nil {
		if err == io.EOF && len(b) > 0 {
			err = io.ErrUnexpectedEOF
		}
		return 0, 0, err
	}
	return le64(b), le64(b[8:]), nil
}

func (d *Decoder) record(size uint64) ([]byte, error) {
	if cap(d.rec) < int(size) {
		d.rec = make([]byte, size)
	}
	b := d.rec[:size]
	n, err := io.ReadFull(d.br, b)
	d.off += int64(n)
	if err != nil {
		return nil, err
	}
	return b[headerSize:], nil
}

func (d *Decoder) skipHeader() error {
	n, err := d.br.Discard(headerSize)
	d.off += int64(n)
	return err
}

func (d *Decoder) pos() int64 { return d.off }
