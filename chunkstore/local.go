package chunkstore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bootfs/bootfs/casync"
)

// LocalOptions configure a Local store.
type LocalOptions struct {
	// Digest is the hash that chunk IDs are checked against.
	Digest casync.Digest
	// Create makes the store directory if it does not exist. Without it,
	// NewLocal fails on a missing directory, so a mistyped store path is
	// reported at once rather than as a missing chunk.
	Create bool
	// NoSync skips the fsync of each new chunk file before it is renamed
	// into place. By default a chunk is synced, so that after a crash a
	// chunk file that exists is whole: a store is the source of truth, and
	// mkimage skips chunks the store already has. A cache, whose chunks
	// can always be fetched again, sets NoSync. The directory itself is
	// not synced: after a crash a chunk may be missing, which is safe
	// (it is written again), but never torn.
	NoSync bool
	// TrustWrites skips checking, in StoreChunk and StoreFrame, that the
	// data hashes to its ID. It is only for a writer that has just
	// computed the ID from the same bytes itself, as mkimage does; every
	// read still verifies.
	TrustWrites bool
	// MaxChunkSize refuses, in StoreChunk and StoreFrame, a chunk larger
	// than this many bytes uncompressed, with an error wrapping
	// *ChunkSizeError (checked with its content, so not under
	// TrustWrites). Zero means casync.MaxChunkSize.
	MaxChunkSize int
	// RememberVerified is how many verified chunk files GetFrame
	// remembers, by device, inode, size, mtime and ctime, so that it
	// serves one again without decompressing and hashing it; a file
	// changed or replaced since is verified again. Zero verifies every
	// read.
	RememberVerified int
	// Logger receives debug and warning lines; nil discards them.
	Logger *slog.Logger
}

// Local is a store in a local directory in casync's layout,
// <dir>/<first 4 hex>/<64 hex>.cacnk, each file a zstd frame. It reads
// stores that casync and desync made, and they read its stores.
//
// Chunks are written to a temporary file in the same directory and renamed
// into place, so readers, in this process or another, never see half a
// chunk. Temporary files start with a dot and never match a chunk name.
type Local struct {
	dir      string
	opts     LocalOptions
	log      *slog.Logger
	verified *verifiedFiles
}

var (
	_ FrameWriteStore = (*Local)(nil)
	_ Syncer          = (*Local)(nil)
	_ BatchGetter     = (*Local)(nil)
)

// NewLocal opens the store in dir.
func NewLocal(dir string, opts LocalOptions) (*Local, error) {
	if dir == "" {
		return nil, errors.New("open local chunk store: empty directory name")
	}
	if opts.Create {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("create local chunk store: %w", err)
		}
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("open local chunk store: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("open local chunk store %s: not a directory", dir)
	}
	return &Local{dir: dir, opts: opts, log: logger(opts.Logger), verified: newVerifiedFiles(opts.RememberVerified)}, nil
}

// Dir returns the store's directory.
func (s *Local) Dir() string { return s.dir }

// String returns the store's directory.
func (s *Local) String() string { return s.dir }

// GetChunk reads, decompresses and verifies the chunk. A file that does not
// verify gives an error wrapping *casync.ChecksumError.
func (s *Local) GetChunk(ctx context.Context, id casync.ChunkID) ([]byte, error) {
	frame, _, err := s.readFrame(ctx, id)
	if err != nil {
		return nil, err
	}
	data, err := decodeFrame(nil, s.opts.Digest, id, frame)
	if err != nil {
		return nil, fmt.Errorf("read chunk from %s: %w (run chunkstore verify --repair)", chunkFile(s.dir, id), err)
	}
	return data, nil
}

// GetChunks reads the chunks one after the other, each with its frame as
// stored.
func (s *Local) GetChunks(ctx context.Context, ids []casync.ChunkID, fn func(Got)) {
	for i, id := range ids {
		g := Got{Index: i}
		frame, _, err := s.readFrame(ctx, id)
		if err == nil {
			g.Data, err = decodeFrame(nil, s.opts.Digest, id, frame)
			if err != nil {
				err = fmt.Errorf("read chunk from %s: %w (run chunkstore verify --repair)", chunkFile(s.dir, id), err)
			} else {
				g.Frame = frame
			}
		}
		g.Err = err
		fn(g)
	}
}

// GetFrame reads the chunk's frame and verifies it, unless this version
// of its file was verified before (see RememberVerified).
func (s *Local) GetFrame(ctx context.Context, id casync.ChunkID) ([]byte, error) {
	frame, version, err := s.readFrame(ctx, id)
	if err != nil {
		return nil, err
	}
	err = s.verified.verify(id, version, func() error { return VerifyFrame(s.opts.Digest, id, frame) })
	if err != nil {
		return nil, fmt.Errorf("read chunk from %s: %w (run chunkstore verify --repair)", chunkFile(s.dir, id), err)
	}
	return frame, nil
}

func (s *Local) readFrame(ctx context.Context, id casync.ChunkID) ([]byte, fileVersion, error) {
	if err := ctxErr(ctx, "read", id); err != nil {
		return nil, fileVersion{}, err
	}
	frame, version, err := readChunkFile(chunkFile(s.dir, id), nil)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fileVersion{}, fmt.Errorf("read chunk %s from %s: %w", id, s.dir, ErrNotFound)
		}
		return nil, fileVersion{}, fmt.Errorf("read chunk %s: %w", id, err)
	}
	return frame, version, nil
}

// readFrameFileInto reads a whole chunk file with readChunkFile and
// returns its mtime.
func readFrameFileInto(name string, dst []byte) ([]byte, time.Time, error) {
	frame, v, err := readChunkFile(name, dst)
	return frame, time.Unix(0, v.mtime), err
}

// HasChunk reports whether the chunk file exists. It does not read or
// verify it. Anything but a regular file is an error wrapping
// ErrNotRegular, as for GetChunk.
func (s *Local) HasChunk(ctx context.Context, id casync.ChunkID) (bool, error) {
	if err := ctxErr(ctx, "look up", id); err != nil {
		return false, err
	}
	ok, err := statChunkFile(chunkFile(s.dir, id))
	switch {
	case ok:
		return true, nil
	case err == nil:
		return false, nil
	}
	return false, fmt.Errorf("look up chunk %s: %w", id, err)
}

// StoreChunk verifies data against id, compresses it and writes it
// atomically. A chunk already present is left as it is.
func (s *Local) StoreChunk(ctx context.Context, id casync.ChunkID, data []byte) error {
	if err := ctxErr(ctx, "store", id); err != nil {
		return err
	}
	if max := s.opts.MaxChunkSize; max > 0 && len(data) > max && !s.opts.TrustWrites {
		return fmt.Errorf("store chunk in %s: %w", s.dir, &ChunkSizeError{ID: id, Size: int64(len(data)), Max: int64(max)})
	}
	if err := s.verifyWrite(casync.VerifyChunk, id, data); err != nil {
		return err
	}
	if s.has(id) {
		return nil
	}
	return s.writeFrame(id, casync.CompressChunk(nil, data))
}

// StoreFrame verifies frame against id and writes it as is.
func (s *Local) StoreFrame(ctx context.Context, id casync.ChunkID, frame []byte) error {
	if err := ctxErr(ctx, "store", id); err != nil {
		return err
	}
	verify := func(d casync.Digest, id casync.ChunkID, frame []byte) error {
		return verifyFrameMax(d, id, frame, s.opts.MaxChunkSize)
	}
	if err := s.verifyWrite(verify, id, frame); err != nil {
		return err
	}
	if s.has(id) {
		return nil
	}
	return s.writeFrame(id, frame)
}

// verifyWrite checks b (data or a frame, by verify) against id unless the
// store trusts its writer.
func (s *Local) verifyWrite(verify func(casync.Digest, casync.ChunkID, []byte) error, id casync.ChunkID, b []byte) error {
	if s.opts.TrustWrites {
		return nil
	}
	if err := verify(s.opts.Digest, id, b); err != nil {
		return fmt.Errorf("store chunk in %s: %w", s.dir, err)
	}
	return nil
}

// has reports whether the chunk's file is there. Anything else at its
// name (a FIFO, a link) is replaced by the write.
func (s *Local) has(id casync.ChunkID) bool {
	ok, _ := statChunkFile(chunkFile(s.dir, id))
	return ok
}

// writeFrame writes frame to a temporary file beside the chunk's final
// name and renames it into place. Concurrent writers of the same chunk,
// in any process, each rename a whole identical file; the last one wins.
func (s *Local) writeFrame(id casync.ChunkID, frame []byte) error {
	if err := writeFileAtomic(chunkFile(s.dir, id), frame, !s.opts.NoSync); err != nil {
		return fmt.Errorf("store chunk %s in %s: %w", id, s.dir, err)
	}
	s.log.Debug("stored chunk", "id", id, "bytes", len(frame))
	return nil
}

func writeFileAtomic(name string, data []byte, sync bool) error {
	dir := filepath.Dir(name)
	tmp, fd, err := createTemp(dir, filepath.Base(name))
	if errors.Is(err, fs.ErrNotExist) {
		// First chunk of this prefix. Prefix directories are never
		// removed, so there is no race with a remover.
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		tmp, fd, err = createTemp(dir, filepath.Base(name))
	}
	if err != nil {
		return err
	}
	err = writeAll(fd, data)
	if err == nil {
		err = unix.Fchmod(fd, 0o644)
	}
	if err == nil && sync {
		err = unix.Fsync(fd)
	}
	if cerr := unix.Close(fd); err == nil {
		err = cerr
	}
	if err == nil {
		err = unix.Rename(tmp, name)
	}
	if err != nil {
		unix.Unlink(tmp)
		return &fs.PathError{Op: "write", Path: name, Err: err}
	}
	return nil
}

// createTemp creates a new file named .BASE.tmp-RANDOM in dir. It works
// on a raw descriptor: for one small file per chunk, an *os.File's poller
// registration and flag probes cost more system calls than the write.
func createTemp(dir, base string) (string, int, error) {
	for {
		tmp := filepath.Join(dir, "."+base+".tmp-"+strconv.FormatUint(rand.Uint64(), 36))
		fd, err := unix.Open(tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, 0o600)
		switch {
		case err == nil:
			return tmp, fd, nil
		case err == unix.EINTR || err == unix.EEXIST:
			continue
		}
		return "", -1, &fs.PathError{Op: "create", Path: tmp, Err: err}
	}
}

func writeAll(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// RemoveChunk deletes the chunk's file. Removing a missing chunk gives an
// error wrapping ErrNotFound.
func (s *Local) RemoveChunk(ctx context.Context, id casync.ChunkID) error {
	if err := ctxErr(ctx, "remove", id); err != nil {
		return err
	}
	err := os.Remove(chunkFile(s.dir, id))
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove chunk %s from %s: %w", id, s.dir, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("remove chunk %s: %w", id, err)
	}
	return nil
}

// ChunkInfo describes one chunk file found by Walk.
type ChunkInfo struct {
	ID      casync.ChunkID
	Path    string
	Size    int64
	ModTime time.Time
}

// Walk calls fn for every chunk file in the store, one prefix directory
// at a time, in directory order. It skips temporary files and anything
// else that is not named like a chunk, and chunks removed while it runs.
// An error from fn stops the walk and is returned.
func (s *Local) Walk(ctx context.Context, fn func(ChunkInfo) error) error {
	return walkStore(ctx, s.dir, fn)
}

func walkStore(ctx context.Context, dir string, fn func(ChunkInfo) error) error {
	return walkLayout(ctx, dir, fn, nil)
}

// walkLayout is walkStore that also calls odd, if set, for what sits in
// the layout but is not a chunk file: anything but a directory named like
// a prefix directory (a link to one is not followed), and anything but a
// regular file named like a chunk. Its ChunkInfo has Path, Size and, for
// a chunk name, ID; mode is the entry's type.
func walkLayout(ctx context.Context, dir string, fn func(ChunkInfo) error, odd func(ChunkInfo, fs.FileMode) error) error {
	top, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("list chunk store: %w", err)
	}
	for _, d := range top {
		name := d.Name()
		if len(name) != 4 || !isLowerHex(name) {
			continue
		}
		if !d.IsDir() {
			if odd != nil {
				if err := odd(ChunkInfo{Path: filepath.Join(dir, name)}, d.Type()); err != nil {
					return err
				}
			}
			continue
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("list chunk store %s: %w", dir, err)
		}
		sub := filepath.Join(dir, name)
		entries, err := os.ReadDir(sub)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			return fmt.Errorf("list chunk store: %w", err)
		}
		for _, e := range entries {
			id, ok := parseChunkName(e.Name())
			if !ok || e.Name()[:4] != name {
				continue
			}
			fi, err := e.Info()
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					continue
				}
				return fmt.Errorf("list chunk store: %w", err)
			}
			info := ChunkInfo{ID: id, Path: filepath.Join(sub, e.Name()), Size: fi.Size(), ModTime: fi.ModTime()}
			if !fi.Mode().IsRegular() {
				if odd != nil {
					if err := odd(info, fi.Mode().Type()); err != nil {
						return err
					}
				}
				continue
			}
			if err := fn(info); err != nil {
				return err
			}
		}
	}
	return nil
}

// Close does nothing; a Local store holds no open files.
func (s *Local) Close() error { return nil }

var discard = slog.New(slog.DiscardHandler)

func logger(l *slog.Logger) *slog.Logger {
	if l == nil {
		return discard
	}
	return l
}
