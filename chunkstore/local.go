package chunkstore

import (
	"context"
	"errors"
	"fmt"
	"io"
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
	dir  string
	opts LocalOptions
	log  *slog.Logger
}

var (
	_ FrameWriteStore = (*Local)(nil)
	_ Syncer          = (*Local)(nil)
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
	return &Local{dir: dir, opts: opts, log: logger(opts.Logger)}, nil
}

// Dir returns the store's directory.
func (s *Local) Dir() string { return s.dir }

// String returns the store's directory.
func (s *Local) String() string { return s.dir }

// GetChunk reads, decompresses and verifies the chunk. A file that does not
// verify gives an error wrapping *casync.ChecksumError.
func (s *Local) GetChunk(ctx context.Context, id casync.ChunkID) ([]byte, error) {
	frame, err := s.readFrame(ctx, id)
	if err != nil {
		return nil, err
	}
	data, err := decodeFrame(nil, s.opts.Digest, id, frame)
	if err != nil {
		return nil, fmt.Errorf("read chunk from %s: %w (run chunkstore verify --repair)", chunkFile(s.dir, id), err)
	}
	return data, nil
}

// GetFrame reads the chunk's frame and verifies it.
func (s *Local) GetFrame(ctx context.Context, id casync.ChunkID) ([]byte, error) {
	frame, err := s.readFrame(ctx, id)
	if err != nil {
		return nil, err
	}
	if err := VerifyFrame(s.opts.Digest, id, frame); err != nil {
		return nil, fmt.Errorf("read chunk from %s: %w (run chunkstore verify --repair)", chunkFile(s.dir, id), err)
	}
	return frame, nil
}

func (s *Local) readFrame(ctx context.Context, id casync.ChunkID) ([]byte, error) {
	if err := ctxErr(ctx, "read", id); err != nil {
		return nil, err
	}
	frame, _, err := readFrameFile(chunkFile(s.dir, id))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("read chunk %s from %s: %w", id, s.dir, ErrNotFound)
		}
		return nil, fmt.Errorf("read chunk %s: %w", id, err)
	}
	return frame, nil
}

// readFrameFile reads a whole chunk file, refusing one larger than any
// frame can be.
func readFrameFile(name string) ([]byte, time.Time, error) {
	return readFrameFileInto(name, nil)
}

// readFrameFileInto is readFrameFile reading into dst's storage when it
// is large enough, so that a caller that only decodes the frame can
// recycle the buffer.
func readFrameFileInto(name string, dst []byte) ([]byte, time.Time, error) {
	// Raw descriptors, as in writeFileAtomic: a cache hit is one small
	// file, and an *os.File would cost more system calls than the read.
	fd, err := openRetry(name)
	if err != nil {
		return nil, time.Time{}, &fs.PathError{Op: "open", Path: name, Err: err}
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, time.Time{}, &fs.PathError{Op: "stat", Path: name, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, time.Time{}, fmt.Errorf("%s: not a regular file", name)
	}
	if st.Size > maxFrameSize {
		return nil, time.Time{}, fmt.Errorf("%s: %d bytes, more than any chunk frame (%d)", name, st.Size, maxFrameSize)
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
			return nil, time.Time{}, &fs.PathError{Op: "read", Path: name, Err: err}
		case m == 0:
			return nil, time.Time{}, fmt.Errorf("%s: %w", name, io.ErrUnexpectedEOF)
		}
		n += m
	}
	return buf, time.Unix(st.Mtim.Unix()), nil
}

func openRetry(name string) (int, error) {
	for {
		fd, err := unix.Open(name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != unix.EINTR {
			return fd, err
		}
	}
}

// HasChunk reports whether the chunk file exists. It does not read or
// verify it.
func (s *Local) HasChunk(ctx context.Context, id casync.ChunkID) (bool, error) {
	if err := ctxErr(ctx, "look up", id); err != nil {
		return false, err
	}
	_, err := os.Stat(chunkFile(s.dir, id))
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
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
	if err := s.verifyWrite(VerifyFrame, id, frame); err != nil {
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

func (s *Local) has(id casync.ChunkID) bool {
	_, err := os.Stat(chunkFile(s.dir, id))
	return err == nil
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
	top, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("list chunk store: %w", err)
	}
	for _, d := range top {
		name := d.Name()
		if len(name) != 4 || !isLowerHex(name) || !d.IsDir() {
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
			if !fi.Mode().IsRegular() {
				continue
			}
			info := ChunkInfo{ID: id, Path: filepath.Join(sub, e.Name()), Size: fi.Size(), ModTime: fi.ModTime()}
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
