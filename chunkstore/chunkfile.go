package chunkstore

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sync"
	"sync/atomic"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"

	"github.com/bootfs/bootfs/casync"
)

// How a chunk file is opened and checked, for every reader of the casync
// layout (Local, Cache, Verify): only a regular file is a chunk. A FIFO
// named like a chunk would block an open without O_NONBLOCK until
// something writes into it; a symbolic link may lead out of the store.
// Neither is followed, opened for reading or served: each is an error
// wrapping ErrNotRegular, which `chunkstore verify` reports and --repair
// removes.

// fileVersion identifies one version of a file: a file replaced by
// rename or rewritten in place has another (another inode, or a later
// ctime and mtime).
type fileVersion struct {
	dev, ino     uint64
	size         int64
	mtime, ctime int64 // nanoseconds since the epoch
}

func versionOf(st *unix.Stat_t) fileVersion {
	return fileVersion{
		dev: st.Dev, ino: st.Ino, size: st.Size,
		mtime: st.Mtim.Nano(), ctime: st.Ctim.Nano(),
	}
}

// notRegularError names what a chunk path holds instead of a file.
func notRegularError(name string, mode fs.FileMode) error {
	return fmt.Errorf("%s is a %s: %w (run chunkstore verify --repair to remove it)", name, fileKind(mode), ErrNotRegular)
}

// fileKind names the type of a file in an error message.
func fileKind(mode fs.FileMode) string {
	switch {
	case mode&fs.ModeSymlink != 0:
		return "symbolic link"
	case mode&fs.ModeNamedPipe != 0:
		return "FIFO"
	case mode.IsDir():
		return "directory"
	case mode&fs.ModeSocket != 0:
		return "socket"
	case mode&fs.ModeDevice != 0:
		return "device"
	case mode.IsRegular():
		return "regular file"
	}
	return "special file"
}

// unixMode converts the type bits of st_mode to fs.FileMode.
func unixMode(m uint32) fs.FileMode {
	switch m & unix.S_IFMT {
	case unix.S_IFDIR:
		return fs.ModeDir
	case unix.S_IFLNK:
		return fs.ModeSymlink
	case unix.S_IFIFO:
		return fs.ModeNamedPipe
	case unix.S_IFSOCK:
		return fs.ModeSocket
	case unix.S_IFCHR:
		return fs.ModeDevice | fs.ModeCharDevice
	case unix.S_IFBLK:
		return fs.ModeDevice
	}
	return 0
}

// readChunkFile reads the whole chunk file name into dst's storage when
// it is large enough, refusing anything but a regular file of at most
// maxFrameSize bytes. It never blocks on a FIFO and never follows a
// symbolic link in the last component. It works on a raw descriptor: a
// cache hit is one small file, and an *os.File would cost more system
// calls than the read.
func readChunkFile(name string, dst []byte) ([]byte, fileVersion, error) {
	var fd int
	var err error
	for {
		fd, err = unix.Open(name, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NONBLOCK|unix.O_NOFOLLOW, 0)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		if err == unix.ELOOP {
			if fi, lerr := os.Lstat(name); lerr == nil && fi.Mode()&fs.ModeSymlink != 0 {
				return nil, fileVersion{}, notRegularError(name, fs.ModeSymlink)
			}
		}
		return nil, fileVersion{}, &fs.PathError{Op: "open", Path: name, Err: err}
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fileVersion{}, &fs.PathError{Op: "stat", Path: name, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, fileVersion{}, notRegularError(name, unixMode(st.Mode))
	}
	if st.Size > maxFrameSize {
		return nil, fileVersion{}, fmt.Errorf("%s: %d bytes, more than any chunk frame (%d)", name, st.Size, maxFrameSize)
	}
	buf := dst[:0]
	if int64(cap(buf)) < st.Size {
		buf = make([]byte, st.Size)
	}
	buf = buf[:st.Size]
	for n := 0; n < len(buf); {
		m, err := unix.Read(fd, buf[n:])
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return nil, fileVersion{}, &fs.PathError{Op: "read", Path: name, Err: err}
		case m == 0:
			return nil, fileVersion{}, fmt.Errorf("%s: %w", name, io.ErrUnexpectedEOF)
		}
		n += m
	}
	return buf, versionOf(&st), nil
}

// statChunkFile reports whether name is a chunk file: true for a regular
// file, false when nothing is there, and an error wrapping ErrNotRegular
// for anything else (not followed if it is a link), so that HEAD says
// what GET does.
func statChunkFile(name string) (bool, error) {
	fi, err := os.Lstat(name)
	switch {
	case err == nil && fi.Mode().IsRegular():
		return true, nil
	case err == nil:
		return false, notRegularError(name, fi.Mode())
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	}
	return false, err
}

// ChunkSizeError reports a chunk larger than a store takes.
type ChunkSizeError struct {
	ID casync.ChunkID
	// Size is the chunk's size, or a lower bound of it.
	Size, Max int64
}

func (e *ChunkSizeError) Error() string {
	return fmt.Sprintf("chunk %s is %d bytes, more than the %d bytes this store takes (make the image with a smaller mkimage --chunk-size max, or raise chunkstore serve --max-chunk-size)",
		e.ID, e.Size, e.Max)
}

// verifyFrameMax is VerifyFrame that also refuses, with a
// *ChunkSizeError, a frame that decodes to more than max bytes (when
// max > 0). A frame header that declares a larger size is refused
// without decoding.
func verifyFrameMax(d casync.Digest, id casync.ChunkID, frame []byte, max int) error {
	if max <= 0 {
		return VerifyFrame(d, id, frame)
	}
	var hdr zstd.Header
	if hdr.Decode(frame) == nil && hdr.HasFCS && hdr.FrameContentSize > uint64(max) {
		return &ChunkSizeError{ID: id, Size: int64(hdr.FrameContentSize), Max: int64(max)}
	}
	bp := scratch.Get().(*[]byte)
	defer scratch.Put(bp)
	data, err := casync.DecompressChunk((*bp)[:0], frame)
	if err != nil {
		return corruptError(d, id, frame, err)
	}
	if cap(data) <= 4<<20 {
		*bp = data[:0]
	}
	if len(data) > max {
		return &ChunkSizeError{ID: id, Size: int64(len(data)), Max: int64(max)}
	}
	return casync.VerifyChunk(d, id, data)
}

// verifiedFiles remembers which chunk files were verified, as of which
// version, for up to max chunks; a nil *verifiedFiles remembers nothing.
// When full it forgets an arbitrary entry, which only costs that chunk
// one more verification.
type verifiedFiles struct {
	max    int
	mu     sync.Mutex
	m      map[casync.ChunkID]fileVersion
	checks atomic.Uint64 // verifications done, for tests
}

func newVerifiedFiles(max int) *verifiedFiles {
	if max <= 0 {
		return nil
	}
	return &verifiedFiles{max: max, m: make(map[casync.ChunkID]fileVersion)}
}

// verify runs check unless the file of id was verified as of version v,
// and remembers it if check passes.
func (vf *verifiedFiles) verify(id casync.ChunkID, v fileVersion, check func() error) error {
	if vf == nil {
		return check()
	}
	vf.mu.Lock()
	known, ok := vf.m[id]
	vf.mu.Unlock()
	if ok && known == v {
		return nil
	}
	vf.checks.Add(1)
	if err := check(); err != nil {
		return err
	}
	vf.mu.Lock()
	if _, ok := vf.m[id]; !ok && len(vf.m) >= vf.max {
		for k := range vf.m {
			delete(vf.m, k)
			break
		}
	}
	vf.m[id] = v
	vf.mu.Unlock()
	return nil
}
