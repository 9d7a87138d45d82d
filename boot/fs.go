package boot

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
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
}

// cacheTimeout is how long the kernel may keep entries and attributes.
// The tree never changes, so this is long.
const cacheTimeout = 24 * time.Hour

// maxRead is the largest read the kernel sends, and its read-ahead.
const maxRead = 1 << 20

// FS is a read-only FUSE filesystem of a catar archive: its tree comes from
// a TOC, in memory, and file contents from a Reader.
//
// Inode numbers are TOC node numbers plus one (the root is 1), so they are
// stable and unique; hardlinks do not exist in a catar (they are stored as
// copies).
type FS struct {
	toc    *casync.TOC
	r      *Reader
	opts   FSOptions
	log    *slog.Logger
	failed sync.Map // casync.ChunkID of chunks already logged as failing
}

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
	return &FS{toc: toc, r: r, opts: opts, log: log}, nil
}

// Root returns the root node, for fs.Mount or fs.NewNodeFS.
func (f *FS) Root() fs.InodeEmbedder { return f.newNode(0) }

// MountOptions returns the go-fuse options Mount uses.
func (f *FS) MountOptions() *fs.Options {
	t := cacheTimeout
	flags := uintptr(syscall.MS_RDONLY)
	if !f.opts.AllowSuidDev {
		flags |= syscall.MS_NOSUID | syscall.MS_NODEV
	}
	return &fs.Options{
		MountOptions: fuse.MountOptions{
			AllowOther:       true,
			Options:          []string{"ro", "default_permissions"},
			FsName:           f.opts.FsName,
			Name:             "bootfs",
			DirectMount:      true,
			DirectMountFlags: flags,
			MaxWrite:         maxRead,
			MaxReadAhead:     maxRead,
			// Reads are answered from memory, never from a file
			// descriptor: splicing would only add system calls.
			DisableSplice: true,
			Debug:         f.opts.Debug,
		},
		EntryTimeout:    &t,
		AttrTimeout:     &t,
		NegativeTimeout: &t,
		RootStableAttr:  &fs.StableAttr{Mode: syscall.S_IFDIR, Ino: 1},
	}
}

// Mount mounts the filesystem on dir and serves it until it is
// unmounted. Unmount it with the server's Unmount (or Unmount).
func (f *FS) Mount(dir string) (*fuse.Server, error) {
	opts := f.MountOptions()
	raw := noOpenDir{fs.NewNodeFS(f.Root(), opts)}
	srv, err := fuse.NewServer(raw, dir, &opts.MountOptions)
	if err == nil {
		go srv.Serve()
		err = srv.WaitMount()
	}
	if err != nil {
		return nil, fmt.Errorf("boot: mount FUSE filesystem on %s: %w", dir, err)
	}
	return srv, nil
}

// noOpenDir answers OPENDIR with ENOSYS, which tells the kernel never to
// send OPENDIR (nor RELEASEDIR) again and to cache every listing
// (FOPEN_CACHE_DIR is what it assumes without OPENDIR): listing a
// directory costs one round trip fewer, and listing it again none.
//
// go-fuse's node bridge serves READDIR(PLUS) only on a handle its OPENDIR
// made, so a READDIR(PLUS) without one opens a handle in-process, reads
// at the kernel's offset (dirStream seeks) and releases it.
type noOpenDir struct{ fuse.RawFileSystem }

func (noOpenDir) OpenDir(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	return fuse.ENOSYS
}

func (r noOpenDir) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return r.withHandle(cancel, in, func(in *fuse.ReadIn) fuse.Status {
		return r.RawFileSystem.ReadDirPlus(cancel, in, out)
	})
}

func (r noOpenDir) ReadDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return r.withHandle(cancel, in, func(in *fuse.ReadIn) fuse.Status {
		return r.RawFileSystem.ReadDir(cancel, in, out)
	})
}

// withHandle runs read with in's directory opened for it: the kernel
// has no handle to send, as OpenDir never makes one.
func (r noOpenDir) withHandle(cancel <-chan struct{}, in *fuse.ReadIn, read func(*fuse.ReadIn) fuse.Status) fuse.Status {
	var opened fuse.OpenOut
	if st := r.RawFileSystem.OpenDir(cancel, &fuse.OpenIn{InHeader: in.InHeader}, &opened); !st.Ok() {
		return st
	}
	defer r.RawFileSystem.ReleaseDir(&fuse.ReleaseIn{InHeader: in.InHeader, Fh: opened.Fh})
	withFh := *in
	withFh.Fh = opened.Fh
	return read(&withFh)
}

// errno converts err from an operation on node i into an errno: EINTR
// for a cancelled request, EIO otherwise. It is the one place that does,
// and it logs the error: once per failing chunk, and for every other
// failure.
func (f *FS) errno(op string, i int, err error) syscall.Errno {
	if err == nil {
		return 0
	}
	if errors.Is(err, context.Canceled) {
		f.log.Debug("FUSE request interrupted", "op", op, "path", "/"+f.toc.Path(i), "err", err)
		return syscall.EINTR
	}
	var ce *ChunkError
	if errors.As(err, &ce) {
		if _, seen := f.failed.LoadOrStore(ce.ID, true); seen {
			f.log.Debug("read failed again", "op", op, "path", "/"+f.toc.Path(i), "chunk", ce.ID.String(), "err", err)
			return syscall.EIO
		}
		f.log.Error("read failed: chunk unavailable", "op", op, "path", "/"+f.toc.Path(i), "chunk", ce.ID.String(), "store", ce.Store, "err", err)
		return syscall.EIO
	}
	f.log.Error("FUSE operation failed", "op", op, "path", "/"+f.toc.Path(i), "err", err)
	return syscall.EIO
}

// node is one TOC node.
type node struct {
	fs.Inode
	fsys  *FS
	i     int
	e     *casync.Entry
	nlink uint32
	seq   sequence // of a regular file's reads
}

var (
	_ fs.NodeLookuper    = (*node)(nil)
	_ fs.NodeGetattrer   = (*node)(nil)
	_ fs.NodeReaddirer   = (*node)(nil)
	_ fs.NodeOpener      = (*node)(nil)
	_ fs.NodeReader      = (*node)(nil)
	_ fs.NodeReadlinker  = (*node)(nil)
	_ fs.NodeGetxattrer  = (*node)(nil)
	_ fs.NodeListxattrer = (*node)(nil)
	_ fs.NodeStatfser    = (*node)(nil)
)

func (f *FS) newNode(i int) *node {
	n := &node{fsys: f, i: i, e: f.toc.Entry(i), nlink: 1}
	if f.toc.IsDir(i) {
		n.nlink = 2
		for _, c := range f.toc.Children(i) {
			if f.toc.IsDir(c) {
				n.nlink++
			}
		}
	}
	return n
}

// encodeDev packs a device number as the kernel's new_encode_dev does,
// the form FUSE passes in attr.rdev.
func encodeDev(major, minor uint64) uint32 {
	return uint32(minor&0xff | major&0xfff<<8 | (minor&^0xff)<<12)
}

func (n *node) fill(a *fuse.Attr) {
	e := n.e
	a.Ino = uint64(n.i) + 1
	a.Mode = uint32(e.Mode)
	a.Nlink = n.nlink
	a.Uid, a.Gid = e.UID, e.GID
	switch e.Type() {
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

func (n *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	c, ok := n.fsys.toc.Child(n.i, name)
	if !ok {
		return nil, syscall.ENOENT
	}
	child := n.fsys.newNode(c)
	child.fill(&out.Attr)
	return n.NewInode(ctx, child, fs.StableAttr{Mode: uint32(child.e.Type()), Ino: uint64(c) + 1}), 0
}

func (n *node) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	n.fill(&out.Attr)
	return 0
}

func (n *node) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	if !n.fsys.toc.IsDir(n.i) {
		return nil, syscall.ENOTDIR
	}
	parent := n.i
	if p := n.fsys.toc.Parent(n.i); p >= 0 {
		parent = p
	}
	return &dirStream{toc: n.fsys.toc, self: n.i, parent: parent, kids: n.fsys.toc.Children(n.i)}, 0
}

func (n *node) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	if n.e.Type() != casync.ModeSymlink {
		return nil, syscall.EINVAL
	}
	return []byte(n.e.LinkTarget), 0
}

const capabilityXattr = "security.capability"

func (n *node) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	var v []byte
	found := false
	if attr == capabilityXattr && n.e.FCaps != nil {
		v, found = n.e.FCaps, true
	}
	for _, x := range n.e.Xattrs {
		if x.Name == attr {
			v, found = x.Value, true
			break
		}
	}
	if !found {
		return 0, syscall.ENODATA
	}
	if len(dest) == 0 {
		return uint32(len(v)), 0
	}
	if len(dest) < len(v) {
		return uint32(len(v)), syscall.ERANGE
	}
	return uint32(copy(dest, v)), 0
}

func (n *node) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	var list []byte
	for _, x := range n.e.Xattrs {
		list = append(append(list, x.Name...), 0)
	}
	if n.e.FCaps != nil {
		list = append(append(list, capabilityXattr...), 0)
	}
	if len(dest) == 0 {
		return uint32(len(list)), 0
	}
	if len(dest) < len(list) {
		return uint32(len(list)), syscall.ERANGE
	}
	return uint32(copy(dest, list)), 0
}

func (n *node) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	const bsize = 4096
	out.Bsize = bsize
	out.Frsize = bsize
	out.Blocks = uint64(n.fsys.toc.ArchiveSize+bsize-1) / bsize
	out.Files = uint64(n.fsys.toc.Len())
	out.NameLen = 255
	return 0
}

// Open answers ENOSYS, which tells the kernel never to send OPEN (nor
// RELEASE) again: opening a file then costs no round trip, and the kernel
// keeps each file's page cache across opens (FOPEN_KEEP_CACHE is what it
// assumes without OPEN). Nothing is lost: the mount is read-only, so the
// kernel refuses opens for writing itself, and the read-ahead state lives
// in the node.
func (n *node) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	return nil, 0, syscall.ENOSYS
}

// Flush answers ENOSYS, which tells the kernel never to send FLUSH again:
// nothing is ever written, and a close then costs no round trip.
func (n *node) Flush(ctx context.Context, fh fs.FileHandle) syscall.Errno {
	return syscall.ENOSYS
}

// sequence tracks a file's sequential reads to grow its read-ahead
// window. It is per file, not per open: without OPEN there are no handles,
// and two processes reading one file at once are rare in an image.
type sequence struct {
	mu     sync.Mutex
	next   int64 // where a sequential read would start
	window int64 // current read-ahead, 0 after a random read
}

// readAhead records a read of n bytes at off and returns how much to read
// ahead after it. Reads within maxRead of where the last one ended count
// as sequential: the kernel sends read-ahead requests concurrently, so
// they arrive slightly out of order.
func (h *sequence) readAhead(off, n, limit int64) int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	seq := off == 0 || (off >= h.next-maxRead && off <= h.next+maxRead)
	if end := off + n; end > h.next || !seq {
		h.next = end
	}
	if !seq {
		h.window = 0
		return 0
	}
	h.window = min(max(2*h.window, 2*n), limit)
	return h.window
}

func (n *node) Read(ctx context.Context, fh fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	size := int64(n.e.Size)
	if off < 0 {
		return nil, syscall.EINVAL
	}
	if off >= size {
		return fuse.ReadResultData(nil), 0
	}
	want := min(int64(len(dest)), size-off)
	if rec := n.fsys.opts.Recorder; rec != nil {
		rec.Add(n.i)
	}
	r := n.fsys.r
	if r.ReadAhead() > 0 {
		if ahead := n.seq.readAhead(off, want, r.ReadAhead()); ahead > 0 {
			from := off + want
			if left := size - from; left > 0 {
				r.Prefetch(n.e.PayloadOffset+from, min(ahead, left))
			}
		}
	}
	got, err := r.ReadAtContext(ctx, dest[:want], n.e.PayloadOffset+off)
	if err != nil && int64(got) < want {
		return nil, n.fsys.errno("read", n.i, fmt.Errorf("read %d bytes at offset %d: %w", want, off, err))
	}
	return fuse.ReadResultData(dest[:got]), 0
}

// dirStream lists a directory from the TOC: ".", "..", then the children.
type dirStream struct {
	toc          *casync.TOC
	self, parent int
	kids         []int
	pos          int // 0 ".", 1 "..", 2+k kids[k]
}

var _ fs.FileSeekdirer = (*dirStream)(nil)

func (d *dirStream) HasNext() bool { return d.pos < len(d.kids)+2 }

func (d *dirStream) Next() (fuse.DirEntry, syscall.Errno) {
	var e fuse.DirEntry
	switch d.pos {
	case 0:
		e = fuse.DirEntry{Name: ".", Mode: syscall.S_IFDIR, Ino: uint64(d.self) + 1}
	case 1:
		e = fuse.DirEntry{Name: "..", Mode: syscall.S_IFDIR, Ino: uint64(d.parent) + 1}
	default:
		c := d.kids[d.pos-2]
		e = fuse.DirEntry{Name: d.toc.Name(c), Mode: uint32(d.toc.Mode(c) & casync.ModeTypeMask), Ino: uint64(c) + 1}
	}
	d.pos++
	e.Off = uint64(d.pos)
	return e, 0
}

func (d *dirStream) Seekdir(ctx context.Context, off uint64) syscall.Errno {
	if off > uint64(len(d.kids)+2) {
		return syscall.EINVAL
	}
	d.pos = int(off)
	return 0
}

func (d *dirStream) Close() {}
