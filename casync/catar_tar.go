package casync

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"strings"
)

// EncodeTar writes a catar archive of the root filesystem in the tar
// stream r to w. The result is what EncodeDir gives for the tree that
// extracting r as root would create, so a rootfs from `docker export`
// encodes the same as the directory it came from.
//
// The tar may list entries in any order. EncodeTar keeps the metadata of
// every entry in memory and the file contents in one unlinked temporary
// file in opts.TempDir, then writes the archive in catar order; it never
// holds the image in memory.
//
// Tar semantics, as extraction gives them:
//   - Leading "/" and "./" are dropped; "." components are ignored; a ".."
//     component is an error naming the entry.
//   - A directory that a path implies but that has no entry of its own gets
//     mode 0755, owner 0:0 and mtime 0 (the Unix epoch).
//   - A path that appears again replaces the earlier entry; a directory
//     over a directory only replaces its metadata and keeps the children.
//   - A hardlink becomes a full copy of its target as it was when the
//     link was read: same content, mode, owner, mtime and xattrs.
//   - xattrs come from PAX SCHILY.xattr.* records. user.* and trusted.*
//     are stored; security.capability of a regular file becomes the FCAPS
//     record; any other xattr is dropped, as casync drops it.
//   - uid and gid may use 32 bits, mtimes keep their nanoseconds, and long
//     names (GNU or PAX) work; a name component over 255 bytes is an error.
//
// Whiteouts (".wh.*" entries) are refused with an error naming the entry:
// they mean r is a single image layer, which must not be encoded as a
// rootfs. Use a flattened rootfs such as the output of `docker export`.
func EncodeTar(ctx context.Context, w io.Writer, r io.Reader, opts *EncodeOptions) error {
	tempDir, tempMax := "", int64(0)
	if opts != nil {
		tempDir, tempMax = opts.TempDir, opts.TempMax
	}
	spill, err := os.CreateTemp(tempDir, "bootfs-catar-*")
	if err != nil {
		return fmt.Errorf("casync: encode tar: temporary file for contents: %w", err)
	}
	defer spill.Close()
	// Unlinked at once: nothing is left behind, whatever happens.
	if err := os.Remove(spill.Name()); err != nil {
		return fmt.Errorf("casync: encode tar: %w", err)
	}
	cw := newCatarWriter(ctx, w, opts)
	tb := &tarTree{
		log:   cw.log,
		opts:  opts,
		spill: newSpillFile(spill, tempMax),
		root:  impliedDir(),
	}
	if err := tb.read(ctx, r); err != nil {
		return err
	}
	if err := tb.spill.finish(); err != nil {
		return err
	}
	return cw.encodeTree(&tarSource{n: tb.root, spill: spill})
}

// tarNode is one node of the tree that a tar stream describes.
type tarNode struct {
	meta     nodeMeta
	dataOff  int64 // where a regular file's content is in the spill file
	children map[string]*tarNode
}

func impliedDir() *tarNode {
	return &tarNode{meta: nodeMeta{mode: ModeDir | 0o755}, children: map[string]*tarNode{}}
}

type tarTree struct {
	log     *slog.Logger
	spill   *spillFile
	copyBuf []byte
	root    *tarNode
	opts    *EncodeOptions
}

func (tb *tarTree) read(ctx context.Context, r io.Reader) error {
	tr := tar.NewReader(r)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("casync: encode tar: read tar: %w", err)
		}
		if tb.opts != nil && tb.opts.TarHeader != nil {
			size, typ := hdr.Size, hdr.Typeflag
			if err := tb.opts.TarHeader(hdr); err != nil {
				return fmt.Errorf("casync: encode tar: entry %s: %w", quotePath(hdr.Name), err)
			}
			if hdr.Size != size || hdr.Typeflag != typ {
				return fmt.Errorf("casync: encode tar: entry %s: TarHeader changed its size or type", quotePath(hdr.Name))
			}
		}
		if err := tb.add(hdr, tr); err != nil {
			return fmt.Errorf("casync: encode tar: entry %s: %w", quotePath(hdr.Name), err)
		}
	}
}

// splitTarPath cleans a tar entry name into path components.
func splitTarPath(name string) ([]string, error) {
	var parts []string
	for _, p := range strings.Split(name, "/") {
		switch p {
		case "", ".":
			continue
		case "..":
			return nil, fmt.Errorf("%w: path has a \"..\" component", ErrUnsupported)
		}
		parts = append(parts, p)
	}
	return parts, nil
}

func (tb *tarTree) add(hdr *tar.Header, tr *tar.Reader) error {
	parts, err := splitTarPath(hdr.Name)
	if err != nil {
		return err
	}
	if len(parts) > MaxCatarDepth {
		// Refused before anything is built for it: memory stays
		// linear in the depth, whatever the tar claims.
		return fmt.Errorf("%w: %s", ErrUnsupported, depthMsg(len(parts)))
	}
	if len(parts) > 0 {
		base := parts[len(parts)-1]
		if strings.HasPrefix(base, ".wh.") {
			return fmt.Errorf("%w: %q is an overlay whiteout: the input looks like an image layer, not a flattened rootfs (use docker export)", ErrUnsupported, base)
		}
		for _, p := range parts {
			if len(p) > maxNameLen {
				return fmt.Errorf("%w: name %q is %d bytes, longer than %d", ErrUnsupported, p, len(p), maxNameLen)
			}
		}
	}

	n := &tarNode{}
	m := &n.meta
	switch hdr.Typeflag {
	case tar.TypeXGlobalHeader:
		return nil
	case tar.TypeReg, tar.TypeRegA, tar.TypeGNUSparse:
		m.mode = ModeRegular
		if hdr.Size < 0 {
			return fmt.Errorf("%w: negative size %d", ErrFormat, hdr.Size)
		}
		m.size = uint64(hdr.Size)
		// hdr.Size is what the entry holds once extracted: for a
		// sparse entry, holes included.
		if err := tb.spill.reserve(hdr.Size); err != nil {
			return err
		}
		n.dataOff = tb.spill.end
		if tb.copyBuf == nil {
			tb.copyBuf = make([]byte, copyBufferSize)
		}
		c, err := io.CopyBuffer(writerOnly{tb.spill}, tr, tb.copyBuf)
		if err != nil {
			return fmt.Errorf("read content: %w", err)
		}
		if c != hdr.Size {
			return fmt.Errorf("%w: content is %d bytes, header says %d", ErrFormat, c, hdr.Size)
		}
	case tar.TypeLink:
		tparts, err := splitTarPath(hdr.Linkname)
		if err != nil {
			return fmt.Errorf("hardlink target %s: %w", quotePath(hdr.Linkname), err)
		}
		t := tb.lookup(tparts)
		if t == nil {
			return fmt.Errorf("%w: hardlink target %s is not in the archive before the link", ErrFormat, quotePath(hdr.Linkname))
		}
		if t.meta.mode&ModeTypeMask == ModeDir {
			return fmt.Errorf("%w: hardlink target %s is a directory", ErrFormat, quotePath(hdr.Linkname))
		}
		if len(parts) == 0 {
			return fmt.Errorf("%w: hardlink at the archive root", ErrFormat)
		}
		// A hardlink shares its target's inode, hence all its metadata.
		cp := *t
		return tb.place(parts, &cp)
	case tar.TypeSymlink:
		m.mode = ModeSymlink | 0o777
		m.target = hdr.Linkname
	case tar.TypeChar, tar.TypeBlock:
		m.mode = ModeChar
		if hdr.Typeflag == tar.TypeBlock {
			m.mode = ModeBlock
		}
		if hdr.Devmajor < 0 || hdr.Devminor < 0 {
			return fmt.Errorf("%w: device number %d:%d", ErrFormat, hdr.Devmajor, hdr.Devminor)
		}
		m.major, m.minor = uint64(hdr.Devmajor), uint64(hdr.Devminor)
	case tar.TypeDir:
		m.mode = ModeDir
	case tar.TypeFifo:
		m.mode = ModeFIFO
	default:
		return fmt.Errorf("%w: tar entry type %q", ErrUnsupported, hdr.Typeflag)
	}
	if m.mode&ModeTypeMask != ModeSymlink {
		m.mode |= uint64(hdr.Mode) & ModePermMask
	}
	if hdr.Uid < 0 || hdr.Gid < 0 || uint64(hdr.Uid) > uidInvalid32 || uint64(hdr.Gid) > uidInvalid32 {
		return fmt.Errorf("%w: uid %d or gid %d out of range", ErrUnsupported, hdr.Uid, hdr.Gid)
	}
	m.uid, m.gid = uint64(hdr.Uid), uint64(hdr.Gid)
	m.mtime = hdr.ModTime.UnixNano()
	if m.mode&ModeTypeMask != ModeSymlink {
		tb.xattrs(hdr, m)
	}

	if len(parts) == 0 {
		if m.mode&ModeTypeMask != ModeDir {
			return fmt.Errorf("%w: the archive root must be a directory", ErrFormat)
		}
		tb.root.meta = *m
		return nil
	}
	return tb.place(parts, n)
}

// xattrs takes the xattrs that casync stores from the PAX records.
func (tb *tarTree) xattrs(hdr *tar.Header, m *nodeMeta) {
	const prefix = "SCHILY.xattr."
	for k, v := range hdr.PAXRecords {
		name, ok := strings.CutPrefix(k, prefix)
		if !ok {
			continue
		}
		switch {
		case storedXattr(name) && len(v) <= maxXattrValueLen:
			m.xattrs = append(m.xattrs, Xattr{Name: name, Value: []byte(v)})
		case name == fcapsXattr && m.mode&ModeTypeMask == ModeRegular && len(v) <= maxFCapsLen:
			m.fcaps = []byte(v)
		default:
			tb.log.Debug("xattr not stored", "path", hdr.Name, "xattr", name)
		}
	}
	sortXattrs(m.xattrs)
}

// lookup finds the node at parts, or nil.
func (tb *tarTree) lookup(parts []string) *tarNode {
	n := tb.root
	for _, p := range parts {
		if n.children == nil {
			return nil
		}
		n = n.children[p]
		if n == nil {
			return nil
		}
	}
	return n
}

// place puts n at parts, creating implied parent directories.
func (tb *tarTree) place(parts []string, n *tarNode) error {
	dir := tb.root
	for i, p := range parts[:len(parts)-1] {
		c := dir.children[p]
		if c == nil {
			c = impliedDir()
			dir.children[p] = c
			if tb.log.Enabled(context.Background(), slog.LevelDebug) { // the join costs O(depth)
				tb.log.Debug("implied directory", "path", strings.Join(parts[:i+1], "/"))
			}
		} else if c.children == nil {
			return fmt.Errorf("%w: parent %q is not a directory", ErrFormat, strings.Join(parts[:i+1], "/"))
		}
		dir = c
	}
	name := parts[len(parts)-1]
	old := dir.children[name]
	if n.meta.mode&ModeTypeMask == ModeDir {
		if old != nil && old.children != nil {
			old.meta = n.meta // a directory again: new metadata, same children
			return nil
		}
		n.children = map[string]*tarNode{}
	}
	dir.children[name] = n
	return nil
}

// tarSource is a node of a tarTree, with contents in the spill file.
type tarSource struct {
	n     *tarNode
	spill *os.File
}

func (s *tarSource) meta() (*nodeMeta, error) { return &s.n.meta, nil }

func (s *tarSource) children() ([]encChild, error) {
	kids := make([]encChild, 0, len(s.n.children))
	for name, c := range s.n.children {
		kids = append(kids, encChild{name: name, src: &tarSource{n: c, spill: s.spill}})
	}
	sort.Slice(kids, func(i, j int) bool { return kids[i].name < kids[j].name })
	return kids, nil
}

func (s *tarSource) open() (io.ReadCloser, error) {
	return io.NopCloser(io.NewSectionReader(s.spill, s.n.dataOff, int64(s.n.meta.size))), nil
}
