package casync

import (
	"archive/tar"
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
)

// EncodeOptions configure EncodeDir and EncodeTar. The zero value works.
type EncodeOptions struct {
	// OnEntry, if set, is called once for every node, in archive
	// (pre-order) order, with every field of the Entry set. A regular
	// file, symlink or device is reported once its records are written.
	// A directory is reported after its ENTRY record, before its
	// children, with End zero; End is filled in on the same *Entry once
	// the directory's GOODBYE record is written, so the callee may keep
	// the pointer and read End after encoding returns. The callee must
	// not modify the Entry. An error from OnEntry stops the encoding and
	// is returned.
	OnEntry func(*Entry) error
	// TarHeader, if set, is called by EncodeTar with every header as it
	// is read, and may change its metadata (names, mode, owner, times,
	// xattrs) but not its size or type. mkimage uses it to make the
	// timestamps Docker gives a container's mount points reproducible.
	TarHeader func(*tar.Header) error
	// TempDir is where EncodeTar keeps file contents until it has read
	// the whole tar stream (default os.TempDir()), in one unlinked file
	// in which blocks of zeros, such as the holes of a sparse entry, take
	// no disk space.
	TempDir string
	// TempMax, if positive, bounds that file: the sum of the sizes of the
	// tar's regular files, a sparse entry counted at its full size. An
	// entry that would pass it stops EncodeTar, before its contents are
	// read, with an error wrapping ErrTempMax. Zero means no limit.
	TempMax int64
	// Log receives debug messages and warnings about dropped metadata.
	// Nil discards them.
	Log *slog.Logger
	// Digest is the chunk digest the archive will be indexed with. It
	// only selects the FeatureSHA512_256 bit in the ENTRY records, as
	// casync does.
	Digest Digest
}

func (o *EncodeOptions) logger() *slog.Logger {
	if o == nil || o.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return o.Log
}

// nodeMeta is what the encoder needs to know about a node, from any source.
type nodeMeta struct {
	mode         uint64 // type and permission bits
	uid, gid     uint64
	mtime        int64 // ns since the epoch
	size         uint64
	target       string
	major, minor uint64
	xattrs       []Xattr // stored ones only, sorted by name
	fcaps        []byte
}

// encSource is one node of the tree being encoded.
type encSource interface {
	// meta describes the node.
	meta() (*nodeMeta, error)
	// children returns a directory's children, sorted by name.
	children() ([]encChild, error)
	// open returns a regular file's content.
	open() (io.ReadCloser, error)
}

type encChild struct {
	name string
	src  encSource
}

// catarWriter is the encoder core shared by the directory and tar sources:
// it writes records through a large buffer and keeps track of offsets.
type catarWriter struct {
	ctx     context.Context
	w       *bufio.Writer
	off     int64
	flags   uint64
	onEntry func(*Entry) error
	log     *slog.Logger
	rec     []byte // scratch for metadata records
	copyBuf []byte
	// maxDepth is MaxCatarDepth; tests raise it to make archives that
	// the decoders must refuse.
	maxDepth int
}

const (
	encodeBufferSize = 1 << 20
	copyBufferSize   = 256 << 10
)

// writerOnly hides a writer's ReadFrom, so that io.CopyBuffer uses the
// buffer it is given instead of one the ReadFrom allocates per call.
type writerOnly struct{ io.Writer }

func newCatarWriter(ctx context.Context, w io.Writer, opts *EncodeOptions) *catarWriter {
	cw := &catarWriter{
		ctx:      ctx,
		w:        bufio.NewWriterSize(w, encodeBufferSize),
		log:      opts.logger(),
		maxDepth: MaxCatarDepth,
	}
	var d Digest
	if opts != nil {
		d = opts.Digest
		cw.onEntry = opts.OnEntry
	}
	cw.flags = CatarFeatureFlags(d)
	return cw
}

func (cw *catarWriter) write(b []byte) error {
	n, err := cw.w.Write(b)
	cw.off += int64(n)
	if err != nil {
		return fmt.Errorf("casync: write archive at offset %d: %w", cw.off, err)
	}
	return nil
}

// encodeTree writes the whole archive for the root directory src and
// flushes it.
func (cw *catarWriter) encodeTree(src encSource) error {
	if err := cw.encode(&pathBuilder{}, 0, src); err != nil {
		return err
	}
	if err := cw.w.Flush(); err != nil {
		return fmt.Errorf("casync: write archive: %w", err)
	}
	return nil
}

// encode writes the node at pb's path, depth components below the root,
// and, for a directory, everything below.
func (cw *catarWriter) encode(pb *pathBuilder, depth int, src encSource) error {
	path := pb.String()
	if err := cw.ctx.Err(); err != nil {
		return err
	}
	if depth > cw.maxDepth {
		return fmt.Errorf("%w: %s is %s", ErrUnsupported, quotePath(path), depthMsg(depth))
	}
	m, err := src.meta()
	if err != nil {
		return err
	}
	if path == "" && m.mode&ModeTypeMask != ModeDir {
		return fmt.Errorf("casync: archive root must be a directory, not mode %#o", m.mode)
	}
	e, err := cw.writeEntry(path, m)
	if err != nil {
		return err
	}
	switch m.mode & ModeTypeMask {
	case ModeRegular:
		if err := cw.copyPayload(path, src, m.size); err != nil {
			return err
		}
	case ModeDir:
		if cw.onEntry != nil {
			if err := cw.onEntry(e); err != nil {
				return err
			}
		}
		kids, err := src.children()
		if err != nil {
			return err
		}
		items := make([]goodbyeItem, 0, len(kids))
		for i, k := range kids {
			if i > 0 && kids[i-1].name >= k.name {
				return fmt.Errorf("casync: children of %q out of order: %q before %q", path, kids[i-1].name, k.name)
			}
			start := cw.off
			if err := cw.writeFilename(path, k.name); err != nil {
				return err
			}
			if err := cw.encode(pb.child(path, k.name), depth+1, k.src); err != nil {
				return err
			}
			items = append(items, goodbyeItem{hash: nameHash(k.name), start: start, end: cw.off})
		}
		cw.rec = appendGoodbye(cw.rec[:0], items, e.Offset, cw.off)
		if err := cw.write(cw.rec); err != nil {
			return err
		}
		e.End = cw.off
		return nil
	}
	e.End = cw.off
	if cw.onEntry != nil {
		return cw.onEntry(e)
	}
	return nil
}

// depthMsg says why an entry depth components deep is refused.
func depthMsg(depth int) string {
	return fmt.Sprintf("nested %d levels deep; an archive holds at most %d (casync.MaxCatarDepth)", depth, MaxCatarDepth)
}

// pathBuilder gives the children of a directory their paths. The first
// child's path is appended to the directory's own, in the same buffer,
// so a chain of first children shares one growing buffer and memory stays
// linear in its depth; a later child's path starts a buffer of its own.
// Strings a pathBuilder returned never change.
type pathBuilder struct {
	b    *strings.Builder // nil for the root's empty path
	used bool             // a child has appended to b
}

func (pb *pathBuilder) String() string {
	if pb.b == nil {
		return ""
	}
	return pb.b.String()
}

// child returns the builder of the child name of the directory at dir,
// which is pb's path.
func (pb *pathBuilder) child(dir, name string) *pathBuilder {
	b := pb.b
	if b == nil || pb.used {
		b = &strings.Builder{}
		b.Grow(2 * (len(dir) + 1 + len(name)))
		b.WriteString(dir)
	}
	pb.used = true
	if dir != "" {
		b.WriteByte('/')
	}
	b.WriteString(name)
	return &pathBuilder{b: b}
}

func joinPath(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

func (cw *catarWriter) writeFilename(dir, name string) error {
	if !validName(name) {
		return fmt.Errorf("%w: cannot store file name %q in %q: catar names are 1 to %d bytes without '/' or NUL", ErrUnsupported, name, dir, maxNameLen)
	}
	size := headerSize + len(name) + 1
	b := cw.rec[:0]
	b = binary.LittleEndian.AppendUint64(b, uint64(size))
	b = binary.LittleEndian.AppendUint64(b, recFilename)
	b = append(b, name...)
	b = append(b, 0)
	cw.rec = b
	return cw.write(b)
}

// writeEntry writes a node's ENTRY record and the metadata records after
// it, up to and including the PAYLOAD header, SYMLINK or DEVICE record.
func (cw *catarWriter) writeEntry(path string, m *nodeMeta) (*Entry, error) {
	typ := m.mode & ModeTypeMask
	mode := m.mode & (ModeTypeMask | ModePermMask)
	switch typ {
	case ModeRegular, ModeDir, ModeFIFO, ModeSocket:
	case ModeSymlink:
		mode = ModeSymlink | 0o777
		if m.target == "" || len(m.target) > maxSymlinkTarget {
			return nil, fmt.Errorf("%w: symlink %q: target of %d bytes (want 1 to %d)", ErrUnsupported, path, len(m.target), maxSymlinkTarget)
		}
		if !validSymlinkTarget(m.target) {
			return nil, fmt.Errorf("%w: symlink %q: target contains NUL", ErrUnsupported, path)
		}
	case ModeBlock, ModeChar:
		if m.major >= maxDeviceMajor || m.minor >= maxDeviceMinor {
			return nil, fmt.Errorf("%w: device %q: number %d:%d out of range", ErrUnsupported, path, m.major, m.minor)
		}
	default:
		return nil, fmt.Errorf("%w: %q has unknown file type %#o", ErrUnsupported, path, typ)
	}
	if !validUID(m.uid) || !validUID(m.gid) {
		return nil, fmt.Errorf("%w: %q: uid %d or gid %d cannot be stored (casync reserves 65535 and 4294967295)", ErrUnsupported, path, m.uid, m.gid)
	}
	mtime := m.mtime
	if mtime < 0 {
		cw.log.Warn("mtime before 1970 stored as 0", "path", path, "mtime_ns", mtime)
		mtime = 0
	}
	e := &Entry{
		Path:   path,
		Mode:   mode,
		Flags:  cw.flags,
		UID:    uint32(m.uid),
		GID:    uint32(m.gid),
		MTime:  uint64(mtime),
		Offset: cw.off,
	}

	b := cw.rec[:0]
	b = binary.LittleEndian.AppendUint64(b, entryRecordSize)
	b = binary.LittleEndian.AppendUint64(b, recEntry)
	b = binary.LittleEndian.AppendUint64(b, cw.flags)
	b = binary.LittleEndian.AppendUint64(b, mode)
	b = binary.LittleEndian.AppendUint64(b, 0) // chattr and FAT flags: not in CatarFeatures
	b = binary.LittleEndian.AppendUint64(b, m.uid)
	b = binary.LittleEndian.AppendUint64(b, m.gid)
	b = binary.LittleEndian.AppendUint64(b, uint64(mtime))

	if typ != ModeSymlink {
		for i, x := range m.xattrs {
			if !storedXattr(x.Name) || len(x.Value) > maxXattrValueLen {
				return nil, fmt.Errorf("%w: %q: xattr %q (%d bytes) cannot be stored", ErrUnsupported, path, x.Name, len(x.Value))
			}
			if i > 0 && m.xattrs[i-1].Name >= x.Name {
				return nil, fmt.Errorf("casync: %q: xattrs out of order: %q before %q", path, m.xattrs[i-1].Name, x.Name)
			}
			b = binary.LittleEndian.AppendUint64(b, uint64(headerSize+len(x.Name)+1+len(x.Value)))
			b = binary.LittleEndian.AppendUint64(b, recXattr)
			b = append(b, x.Name...)
			b = append(b, 0)
			b = append(b, x.Value...)
		}
		e.Xattrs = m.xattrs
	}
	if typ == ModeRegular && m.fcaps != nil {
		if len(m.fcaps) > maxFCapsLen {
			return nil, fmt.Errorf("%w: %q: file capability of %d bytes", ErrUnsupported, path, len(m.fcaps))
		}
		b = binary.LittleEndian.AppendUint64(b, uint64(headerSize+len(m.fcaps)))
		b = binary.LittleEndian.AppendUint64(b, recFCaps)
		b = append(b, m.fcaps...)
		e.FCaps = m.fcaps
	}
	switch typ {
	case ModeRegular:
		b = binary.LittleEndian.AppendUint64(b, headerSize+m.size)
		b = binary.LittleEndian.AppendUint64(b, recPayload)
		e.Size = m.size
	case ModeSymlink:
		b = binary.LittleEndian.AppendUint64(b, uint64(headerSize+len(m.target)+1))
		b = binary.LittleEndian.AppendUint64(b, recSymlink)
		b = append(b, m.target...)
		b = append(b, 0)
		e.LinkTarget = m.target
	case ModeBlock, ModeChar:
		b = binary.LittleEndian.AppendUint64(b, deviceRecordSize)
		b = binary.LittleEndian.AppendUint64(b, recDevice)
		b = binary.LittleEndian.AppendUint64(b, m.major)
		b = binary.LittleEndian.AppendUint64(b, m.minor)
		e.RdevMajor, e.RdevMinor = m.major, m.minor
	}
	cw.rec = b
	if err := cw.write(b); err != nil {
		return nil, err
	}
	if typ == ModeRegular {
		e.PayloadOffset = cw.off
	}
	return e, nil
}

func validSymlinkTarget(t string) bool {
	for i := 0; i < len(t); i++ {
		if t[i] == 0 {
			return false
		}
	}
	return true
}

// copyPayload copies exactly size bytes of a regular file's content.
func (cw *catarWriter) copyPayload(path string, src encSource, size uint64) error {
	if size == 0 {
		return nil
	}
	r, err := src.open()
	if err != nil {
		return err
	}
	defer r.Close()
	if cw.copyBuf == nil {
		cw.copyBuf = make([]byte, copyBufferSize)
	}
	n, err := io.CopyBuffer(writerOnly{cw.w}, &ctxReader{ctx: cw.ctx, r: io.LimitReader(r, int64(size))}, cw.copyBuf)
	cw.off += n
	if err != nil {
		return fmt.Errorf("casync: copy content of %q: %w", path, err)
	}
	if uint64(n) != size {
		return fmt.Errorf("casync: copy content of %q: got %d bytes, want %d (did the file change while encoding?)", path, n, size)
	}
	return nil
}

// ctxReader stops a long copy when its context is cancelled.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// sortXattrs sorts xattrs by name, as casync stores them.
func sortXattrs(x []Xattr) {
	sort.Slice(x, func(i, j int) bool { return x[i].Name < x[j].Name })
}
