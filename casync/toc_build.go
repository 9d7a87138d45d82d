package casync

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
)

// TOCBuilder collects the entries of a catar as it is encoded or decoded
// and turns them into a TOC. Its Add method fits EncodeOptions.OnEntry.
// A TOCBuilder is not safe for concurrent use.
type TOCBuilder struct {
	// entries are kept as pointers: the catar encoder fills in a
	// directory's End on the same Entry after reporting it.
	entries []*Entry
	parents []int32
	open    []tocBuildDir
	err     error
	// maxDepth, if not zero, replaces MaxCatarDepth; tests raise it to
	// make TOCs that UnmarshalTOC must refuse.
	maxDepth int
}

// tocBuildDir is a directory whose children may still come.
type tocBuildDir struct {
	index int32
	path  string
	last  string // name of the last child added
}

// NewTOCBuilder returns an empty builder.
func NewTOCBuilder() *TOCBuilder { return &TOCBuilder{} }

// Add records the next entry in archive (pre-order) order: the root first
// (Path ""), every node after its directory, siblings in strcmp order. It
// keeps e and reads it again in TOC, so a directory's End may be set after
// Add. It fails, for this and every later call, on an entry out of order
// or with fields a catar cannot hold.
func (b *TOCBuilder) Add(e *Entry) error {
	if b.err != nil {
		return b.err
	}
	if err := b.add(e); err != nil {
		b.err = fmt.Errorf("%w: TOC entry %d (%s): %w", ErrFormat, len(b.entries), quotePath(e.Path), err)
		return b.err
	}
	return nil
}

func (b *TOCBuilder) add(e *Entry) error {
	i := len(b.entries)
	if i >= math.MaxInt32 {
		return fmt.Errorf("more than %d entries", math.MaxInt32)
	}
	parent := int32(-1)
	if i == 0 {
		if e.Path != "" {
			return fmt.Errorf("the first entry must be the root, with an empty path")
		}
	} else {
		dir, name := "", e.Path
		if j := strings.LastIndexByte(e.Path, '/'); j >= 0 {
			dir, name = e.Path[:j], e.Path[j+1:]
		}
		if msg := tocCheckName(name); msg != "" {
			return fmt.Errorf("%s", msg)
		}
		for len(b.open) > 0 && b.open[len(b.open)-1].path != dir {
			b.open = b.open[:len(b.open)-1]
		}
		if len(b.open) == 0 {
			return fmt.Errorf("directory %q is not the root or an open directory (entries must come in pre-order, each after its directory)", dir)
		}
		if depth := len(b.open); depth > cmp.Or(b.maxDepth, MaxCatarDepth) { // the root and every ancestor are open
			return errors.New(depthMsg(depth))
		}
		top := &b.open[len(b.open)-1]
		switch {
		case top.last == name:
			return fmt.Errorf("duplicate entry")
		case top.last > name:
			return fmt.Errorf("%q comes after its sibling %q (siblings must come in strcmp order)", name, top.last)
		}
		top.last = name
		parent = top.index
	}
	if err := tocCheckEntry(e); err != nil {
		return err
	}
	b.entries = append(b.entries, e)
	b.parents = append(b.parents, parent)
	switch {
	case e.IsDir():
		b.open = append(b.open, tocBuildDir{index: int32(i), path: e.Path})
	case i == 0:
		b.open = nil // a root that is not a directory has no children
	}
	return nil
}

// tocCheckEntry checks the fields of e that do not depend on the entries
// around it.
func tocCheckEntry(e *Entry) error {
	typ := e.Mode & ModeTypeMask
	switch {
	case e.Mode&^(ModeTypeMask|ModePermMask) != 0:
		return fmt.Errorf("mode %#o has bits outside %#o", e.Mode, ModeTypeMask|ModePermMask)
	case !tocValidType(typ >> 12):
		return fmt.Errorf("unknown file type in mode %#o", e.Mode)
	case typ != ModeRegular && (e.Size != 0 || e.PayloadOffset != 0):
		return fmt.Errorf("size %d and payload offset %d on a node that is not a regular file", e.Size, e.PayloadOffset)
	case (typ == ModeSymlink) != (e.LinkTarget != ""):
		return fmt.Errorf("link target %q on mode %#o (a symlink needs one; no other node has one)", e.LinkTarget, e.Mode)
	case strings.IndexByte(e.LinkTarget, 0) >= 0:
		return fmt.Errorf("symlink target %q contains a NUL byte", e.LinkTarget)
	case typ != ModeBlock && typ != ModeChar && (e.RdevMajor != 0 || e.RdevMinor != 0):
		return fmt.Errorf("device number %d:%d on a node that is not a device", e.RdevMajor, e.RdevMinor)
	case e.Offset < 0 || e.PayloadOffset < 0 || e.End < 0:
		return fmt.Errorf("negative offset: offset %d, payload %d, end %d", e.Offset, e.PayloadOffset, e.End)
	}
	for k, x := range e.Xattrs {
		switch {
		case x.Name == "":
			return fmt.Errorf("xattr %d has an empty name", k)
		case strings.IndexByte(x.Name, 0) >= 0:
			return fmt.Errorf("xattr name %q contains a NUL byte", x.Name)
		case k > 0 && e.Xattrs[k-1].Name >= x.Name:
			return fmt.Errorf("xattr %q does not follow %q in strcmp order", x.Name, e.Xattrs[k-1].Name)
		}
	}
	return nil
}

// TOC returns the TOC of the entries added so far, reading every Entry
// again, so call it once encoding is done and every directory's End is
// set. archiveSize is the catar's length and must be the root's End;
// features are the archive's feature flags. The result is what
// UnmarshalTOC returns for its MarshalBinary output.
func (b *TOCBuilder) TOC(archiveSize int64, features uint64) (*TOC, error) {
	if b.err != nil {
		return nil, b.err
	}
	if len(b.entries) == 0 {
		return nil, fmt.Errorf("%w: TOC: no entries (a TOC needs at least the root)", ErrFormat)
	}
	t := &TOC{
		ArchiveSize: archiveSize,
		Features:    features,
		nodes:       make([]tocNode, len(b.entries)),
		kids:        make([]int, len(b.entries)-1),
	}
	// Give every directory its run of kids, then fill them in pre-order,
	// which puts each run in strcmp order.
	for i := 1; i < len(b.entries); i++ {
		t.nodes[b.parents[i]].nkids++
	}
	var next uint32
	for i := range t.nodes {
		t.nodes[i].kids = next
		next += t.nodes[i].nkids
	}
	filled := make([]uint32, len(b.entries))
	var strs []byte
	for i, e := range b.entries {
		n := &t.nodes[i]
		p := b.parents[i]
		n.parent = p
		if p >= 0 {
			t.kids[t.nodes[p].kids+filled[p]] = i
			filled[p]++
		}
		name := e.Path[strings.LastIndexByte(e.Path, '/')+1:]
		n.name, n.nameLen = uint32(len(strs)), uint32(len(name))
		strs = append(strs, name...)
		n.mode, n.uid, n.gid = uint32(e.Mode), e.UID, e.GID
		n.mtime, n.size, n.flags = e.MTime, e.Size, e.Flags
		n.offset, n.payload, n.end = e.Offset, e.PayloadOffset, e.End
		typ := e.Mode & ModeTypeMask
		if typ != ModeSymlink && typ != ModeBlock && typ != ModeChar && len(e.Xattrs) == 0 && len(e.FCaps) == 0 {
			continue
		}
		x := tocExtra{
			link: uint32(len(strs)), linkLen: uint32(len(e.LinkTarget)),
			major: e.RdevMajor, minor: e.RdevMinor,
			xattr: uint32(len(t.xattrs)), nxattr: uint32(len(e.Xattrs)),
		}
		strs = append(strs, e.LinkTarget...)
		for _, a := range e.Xattrs {
			ta := tocXattr{name: uint32(len(t.xblob)), nameLen: uint32(len(a.Name))}
			t.xblob = append(t.xblob, a.Name...)
			ta.value, ta.valueLen = uint32(len(t.xblob)), uint32(len(a.Value))
			t.xblob = append(t.xblob, a.Value...)
			t.xattrs = append(t.xattrs, ta)
		}
		x.fcaps, x.nfcaps = uint32(len(t.xblob)), uint32(len(e.FCaps))
		t.xblob = append(t.xblob, e.FCaps...)
		t.extras = append(t.extras, x)
		n.extra = uint32(len(t.extras))
	}
	if uint64(len(strs)) > math.MaxUint32 || uint64(len(t.xblob)) > math.MaxUint32 {
		return nil, fmt.Errorf("%w: TOC: names, link targets or xattrs exceed the format's 4 GiB", ErrFormat)
	}
	t.strs = string(strs)
	// Encoding checks the offsets; decoding the result checks the rest
	// and gives the TOC its compact, loaded form.
	data, err := t.MarshalBinary()
	if err != nil {
		return nil, err
	}
	return UnmarshalTOC(data)
}

// BuildTOC rebuilds the TOC of the catar archive read from r, as the
// encoder's OnEntry hook would have built it. The archive's feature flags
// are its root's. Errors from the catar Decoder are returned as they are.
func BuildTOC(r io.Reader) (*TOC, error) {
	cr := &tocCountingReader{r: r}
	d := NewDecoder(cr)
	b := NewTOCBuilder()
	var root *Entry
	for {
		e, err := d.Next()
		if err == io.EOF { // exactly the end, as archive/tar's Next reports it

			break
		}
		if err != nil {
			return nil, err
		}
		if root == nil {
			root = e
		}
		if err := b.Add(e); err != nil {
			return nil, err
		}
	}
	if root == nil {
		return nil, fmt.Errorf("%w: TOC: empty catar archive", ErrFormat)
	}
	return b.TOC(cr.n, root.Flags)
}

// tocCountingReader counts the bytes read through it.
type tocCountingReader struct {
	r io.Reader
	n int64
}

func (c *tocCountingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
