package lazyfs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/bootfs/bootfs/casync"
)

// FSOptions configure an FS. The zero value works.
type FSOptions struct {
	// Logger receives one line per failed operation; nil discards.
	Logger *slog.Logger
	// AllowSuidDev mounts without nosuid and nodev, so setuid programs
	// and device nodes in the image work. An init that runs the image's
	// workload sets it; a debugging mount on a host should not.
	AllowSuidDev bool
	// FsName is the mount's source, shown by mount and df (default
	// "bootfs").
	FsName string
	// Debug logs every FUSE request (very verbose).
	Debug bool
	// Recorder, if set, records every regular file whose content is
	// read (see Recorder). It must be of the same TOC.
	Recorder *Recorder
	// NoELFAhead turns off read-ahead along the libraries of the ELF
	// programs read (see elfahead.go); read-ahead off (ReaderOptions)
	// turns it off too.
	NoELFAhead bool
}

// cacheTimeout is how long the kernel may keep entries and attributes.
// The tree never changes, so this is long.
const cacheTimeout = 24 * time.Hour

// maxRead is the largest read the kernel sends, and its read-ahead.
const maxRead = 1 << 20

// FS is a read-only FUSE filesystem of a catar archive: its tree comes from
// a TOC, in memory, and file contents from a Reader.
//
// It speaks FUSE's raw protocol. Node IDs are TOC node numbers plus one
// (the root's is 1, FUSE's root ID), and so are inode numbers: stable and
// unique, since a catar has no hardlinks (it stores copies). So a lookup
// needs no inode table and FORGET has nothing to forget. go-fuse's node
// API kept a Go object per entry the kernel knew, which cost more than
// the kernel's round trip on every entry of a listing.
type FS struct {
	enosys // for every write, and whatever else is not here

	toc    *casync.TOC
	r      *Reader
	opts   FSOptions
	log    *slog.Logger
	failed sync.Map  // casync.ChunkID of chunks already logged as failing
	elf    *elfAhead // nil: off
}

// enosys names the embedded fuse.RawFileSystem so that it is not exported.
type enosys = fuse.RawFileSystem

var _ fuse.RawFileSystem = (*FS)(nil)

// NewFS returns the filesystem of the archive that toc describes and r
// reads. It fails, wrapping ErrMismatch, if they are not of the same
// archive size.
func NewFS(toc *casync.TOC, r *Reader, opts FSOptions) (*FS, error) {
	if toc.ArchiveSize != r.Size() {
		return nil, fmt.Errorf("%w: the TOC describes a %d-byte archive, the index a %d-byte one (was the TOC made from this index?)", ErrMismatch, toc.ArchiveSize, r.Size())
	}
	if !toc.IsDir(0) {
		return nil, fmt.Errorf("%w: the archive's root is not a directory (mode %#o)", ErrMismatch, toc.Mode(0))
	}
	if opts.Recorder != nil && opts.Recorder.toc != toc {
		return nil, fmt.Errorf("%w: the Recorder is of another TOC", ErrMismatch)
	}
	if opts.FsName == "" {
		opts.FsName = "bootfs"
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	f := &FS{enosys: fuse.NewDefaultRawFileSystem(), toc: toc, r: r, opts: opts, log: log}
	if !opts.NoELFAhead {
		f.elf = newELFAhead(toc, r)
	}
	return f, nil
}

func (f *FS) String() string { return f.opts.FsName }

// node returns the TOC node of a FUSE node ID. The kernel only sends IDs
// that this filesystem gave it; any other is stale.
func (f *FS) node(id uint64) (int, fuse.Status) {
	if id == 0 || id > uint64(f.toc.Len()) {
		return 0, fuse.Status(syscall.ESTALE)
	}
	return int(id - 1), fuse.OK
}

// errno converts err from an operation on node i into an errno: EINTR
// for a cancelled request, EIO otherwise. It is the one place that does,
// and it logs the error: once per failing chunk, and for every other
// failure.
func (f *FS) errno(op string, i int, err error) fuse.Status {
	if err == nil {
		return fuse.OK
	}
	if errors.Is(err, context.Canceled) {
		f.log.Debug("FUSE request interrupted", "op", op, "path", "/"+f.toc.Path(i), "err", err)
		return fuse.EINTR
	}
	var ce *ChunkError
	if errors.As(err, &ce) {
		if _, seen := f.failed.LoadOrStore(ce.ID, true); seen {
			f.log.Debug("read failed again", "op", op, "path", "/"+f.toc.Path(i), "chunk", ce.ID.String(), "err", err)
			return fuse.EIO
		}
		f.log.Error("read failed: chunk unavailable", "op", op, "path", "/"+f.toc.Path(i), "chunk", ce.ID.String(), "store", ce.Store, "err", err)
		return fuse.EIO
	}
	f.log.Error("FUSE operation failed", "op", op, "path", "/"+f.toc.Path(i), "err", err)
	return fuse.EIO
}

// encodeDev packs a device number as the kernel's new_encode_dev does,
// the form FUSE passes in attr.rdev.
func encodeDev(major, minor uint64) uint32 {
	return uint32(minor&0xff | major&0xfff<<8 | (minor&^0xff)<<12)
}

// fill sets a to node i's attributes.
func (f *FS) fill(i int, a *fuse.Attr) {
	e := f.toc.Attr(i)
	a.Ino = uint64(i) + 1
	a.Mode = uint32(e.Mode)
	a.Nlink = 1
	a.Uid, a.Gid = e.UID, e.GID
	switch e.Type() {
	case casync.ModeDir:
		a.Nlink = 2
		for _, c := range f.toc.Children(i) {
			if f.toc.IsDir(c) {
				a.Nlink++
			}
		}
	case casync.ModeRegular:
		a.Size = e.Size
	case casync.ModeSymlink:
		a.Size = uint64(len(e.LinkTarget))
	case casync.ModeBlock, casync.ModeChar:
		a.Rdev = encodeDev(e.RdevMajor, e.RdevMinor)
	}
	a.Blocks = (a.Size + 511) / 512
	a.Blksize = 4096
	sec, nsec := e.MTime/1e9, uint32(e.MTime%1e9)
	a.Mtime, a.Mtimensec = sec, nsec
	a.Atime, a.Atimensec = sec, nsec
	a.Ctime, a.Ctimensec = sec, nsec
}

// entry fills out with node i, for the kernel to cache: the tree never
// changes.
func (f *FS) entry(i int, out *fuse.EntryOut) {
	out.NodeId = uint64(i) + 1
	out.SetEntryTimeout(cacheTimeout)
	out.SetAttrTimeout(cacheTimeout)
	f.fill(i, &out.Attr)
}

func (f *FS) Lookup(cancel <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	dir, st := f.node(h.NodeId)
	if !st.Ok() {
		return st
	}
	if !f.toc.IsDir(dir) {
		return fuse.ENOTDIR
	}
	c, ok := f.toc.Child(dir, name)
	if !ok {
		// Node ID 0 is a negative entry, which the kernel keeps too.
		out.NodeId = 0
		out.SetEntryTimeout(cacheTimeout)
		return fuse.OK
	}
	f.entry(c, out)
	return fuse.OK
}

func (f *FS) GetAttr(cancel <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	i, st := f.node(in.NodeId)
	if !st.Ok() {
		return st
	}
	out.SetTimeout(cacheTimeout)
	f.fill(i, &out.Attr)
	return fuse.OK
}

func (f *FS) Readlink(cancel <-chan struct{}, h *fuse.InHeader) ([]byte, fuse.Status) {
	i, st := f.node(h.NodeId)
	if !st.Ok() {
		return nil, st
	}
	e := f.toc.Attr(i)
	if e.Type() != casync.ModeSymlink {
		return nil, fuse.EINVAL
	}
	return []byte(e.LinkTarget), fuse.OK
}

const capabilityXattr = "security.capability"

func (f *FS) GetXAttr(cancel <-chan struct{}, h *fuse.InHeader, attr string, dest []byte) (uint32, fuse.Status) {
	i, st := f.node(h.NodeId)
	if !st.Ok() {
		return 0, st
	}
	v, found := f.toc.Xattr(i, attr)
	if fcaps := f.toc.Attr(i).FCaps; attr == capabilityXattr && fcaps != nil {
		v, found = fcaps, true
	}
	if !found {
		return 0, fuse.ENODATA
	}
	if len(dest) == 0 {
		return uint32(len(v)), fuse.OK
	}
	if len(dest) < len(v) {
		return uint32(len(v)), fuse.ERANGE
	}
	return uint32(copy(dest, v)), fuse.OK
}

func (f *FS) ListXAttr(cancel <-chan struct{}, h *fuse.InHeader, dest []byte) (uint32, fuse.Status) {
	i, st := f.node(h.NodeId)
	if !st.Ok() {
		return 0, st
	}
	var list []byte
	for _, x := range f.toc.Xattrs(i) {
		list = append(append(list, x.Name...), 0)
	}
	if f.toc.Attr(i).FCaps != nil {
		list = append(append(list, capabilityXattr...), 0)
	}
	if len(dest) == 0 {
		return uint32(len(list)), fuse.OK
	}
	if len(dest) < len(list) {
		return uint32(len(list)), fuse.ERANGE
	}
	return uint32(copy(dest, list)), fuse.OK
}

func (f *FS) StatFs(cancel <-chan struct{}, h *fuse.InHeader, out *fuse.StatfsOut) fuse.Status {
	const bsize = 4096
	out.Bsize = bsize
	out.Frsize = bsize
	out.Blocks = uint64(f.toc.ArchiveSize+bsize-1) / bsize
	out.Files = uint64(f.toc.Len())
	out.NameLen = 255
	return fuse.OK
}

// Open answers ENOSYS, which tells the kernel never to send OPEN (nor
// RELEASE) again: opening a file then costs no round trip, and the kernel
// keeps each file's page cache across opens (FOPEN_KEEP_CACHE is what it
// assumes without OPEN). Nothing is lost: the mount is read-only, so the
// kernel refuses opens for writing itself, and the read-ahead state is
// per file.
func (f *FS) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	return fuse.ENOSYS
}

// OpenDir answers ENOSYS, which tells the kernel never to send OPENDIR
// (nor RELEASEDIR) again and to cache every listing (FOPEN_CACHE_DIR is
// what it assumes without OPENDIR): listing a directory costs one round
// trip fewer, and listing it again none. Listings need no handle: the
// kernel's offset is a position in the TOC's list of children.
func (f *FS) OpenDir(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	return fuse.ENOSYS
}

// Flush answers ENOSYS, which tells the kernel never to send FLUSH again:
// nothing is ever written, and a close then costs no round trip.
func (f *FS) Flush(cancel <-chan struct{}, in *fuse.FlushIn) fuse.Status {
	return fuse.ENOSYS
}

func (f *FS) Read(cancel <-chan struct{}, in *fuse.ReadIn, buf []byte) (fuse.ReadResult, fuse.Status) {
	i, st := f.node(in.NodeId)
	if !st.Ok() {
		return nil, st
	}
	e := f.toc.Attr(i)
	switch e.Type() {
	case casync.ModeRegular:
	case casync.ModeDir:
		return nil, fuse.Status(syscall.EISDIR)
	default:
		return nil, fuse.EINVAL
	}
	size := int64(e.Size)
	off := int64(in.Offset)
	if off < 0 {
		return nil, fuse.EINVAL
	}
	if off >= size {
		return fuse.ReadResultData(nil), fuse.OK
	}
	want := min(int64(len(buf)), int64(in.Size), size-off)
	if rec := f.opts.Recorder; rec != nil {
		rec.Add(i, off, want)
	}
	// The Reader reads ahead, in archive order: on into the next files.
	got, err := f.r.readAt(cancelContext{cancel}, buf[:want], e.PayloadOffset+off, e.PayloadOffset, e.PayloadOffset+size)
	if err != nil && int64(got) < want {
		return nil, f.errno("read", i, fmt.Errorf("read %d bytes at offset %d: %w", want, off, err))
	}
	if off == 0 {
		f.elf.noteRead(i, buf[:got]) // a program or library: its libraries next
	}
	return fuse.ReadResultData(buf[:got]), fuse.OK
}

// cancelContext is the context of a FUSE request: done when the kernel
// interrupts it.
type cancelContext struct{ done <-chan struct{} }

func (c cancelContext) Deadline() (time.Time, bool) { return time.Time{}, false }
func (c cancelContext) Done() <-chan struct{}       { return c.done }
func (c cancelContext) Value(key any) any           { return nil }
func (c cancelContext) Err() error {
	select {
	case <-c.done:
		return context.Canceled
	default:
		return nil
	}
}

func (f *FS) ReadDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return f.list(in, out, false)
}

func (f *FS) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return f.list(in, out, true)
}

// list lists the directory from the kernel's offset on: position 0 is
// ".", 1 "..", 2+k the k-th child, and each entry's offset is the
// position after it. With plus, every child comes with its entry, for the
// kernel to keep; "." and ".." come with none, as the kernel ignores them.
func (f *FS) list(in *fuse.ReadIn, out *fuse.DirEntryList, plus bool) fuse.Status {
	dir, st := f.node(in.NodeId)
	if !st.Ok() {
		return st
	}
	if !f.toc.IsDir(dir) {
		return fuse.ENOTDIR
	}
	kids := f.toc.Children(dir)
	for pos := in.Offset; pos < uint64(len(kids))+2; pos++ {
		var e fuse.DirEntry
		child := -1
		switch pos {
		case 0:
			e = fuse.DirEntry{Name: ".", Mode: syscall.S_IFDIR, Ino: uint64(dir) + 1}
		case 1:
			parent := dir
			if p := f.toc.Parent(dir); p >= 0 {
				parent = p
			}
			e = fuse.DirEntry{Name: "..", Mode: syscall.S_IFDIR, Ino: uint64(parent) + 1}
		default:
			child = kids[pos-2]
			e = fuse.DirEntry{Name: f.toc.Name(child), Mode: uint32(f.toc.Mode(child) & casync.ModeTypeMask), Ino: uint64(child) + 1}
		}
		e.Off = pos + 1
		if !plus {
			if !out.AddDirEntry(e) {
				break
			}
			continue
		}
		eo := out.AddDirLookupEntry(e)
		if eo == nil {
			break
		}
		if child >= 0 {
			f.entry(child, eo)
		}
	}
	return fuse.OK
}
