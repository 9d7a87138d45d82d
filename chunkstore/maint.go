package chunkstore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/bootfs/bootfs/casync"
)

// MaintenanceOptions configure Verify and Prune. The zero value works.
type MaintenanceOptions struct {
	// Digest is the hash that chunk IDs are checked against.
	Digest casync.Digest
	// Jobs is how many chunks are handled in parallel. Zero means
	// GOMAXPROCS.
	Jobs int
	// Report, if set, is called for every bad chunk (Verify) or
	// unreferenced chunk (Prune), with err the reason a chunk is bad and
	// removed whether it was deleted. Calls are serialized.
	Report func(c ChunkInfo, err error, removed bool)
	// Logger receives a line per bad chunk; nil discards.
	Logger *slog.Logger
}

// Summary is what Verify or Prune found and did.
type Summary struct {
	// Chunks and Bytes count the chunk files examined.
	Chunks, Bytes int64
	// Bad counts chunks that failed verification (Verify).
	Bad int64
	// Unreferenced counts chunks that no index references (Prune).
	Unreferenced, UnreferencedBytes int64
	// Removed counts chunk files deleted, RemovedBytes their size.
	Removed, RemovedBytes int64
	// StaleTemps counts temporary files that a killed writer left behind
	// more than StaleTempAge ago (Verify); --repair removes them.
	StaleTemps int64
}

// StaleTempAge is how old a temporary chunk file must be before Verify
// counts it as left behind rather than being written right now.
const StaleTempAge = time.Hour

func (s Summary) String() string {
	return fmt.Sprintf("%d chunks (%d bytes), %d bad, %d unreferenced (%d bytes), %d removed (%d bytes), %d stale temporary files",
		s.Chunks, s.Bytes, s.Bad, s.Unreferenced, s.UnreferencedBytes, s.Removed, s.RemovedBytes, s.StaleTemps)
}

type summer struct {
	chunks, bytes, bad, unref, unrefBytes, removed, removedBytes atomic.Int64
	mu                                                           sync.Mutex
	report                                                       func(ChunkInfo, error, bool)
}

func (s *summer) summary() Summary {
	return Summary{
		Chunks: s.chunks.Load(), Bytes: s.bytes.Load(), Bad: s.bad.Load(),
		Unreferenced: s.unref.Load(), UnreferencedBytes: s.unrefBytes.Load(),
		Removed: s.removed.Load(), RemovedBytes: s.removedBytes.Load(),
	}
}

func (s *summer) call(ci ChunkInfo, err error, removed bool) {
	if s.report == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.report(ci, err, removed)
}

// remove deletes a chunk file; one already gone counts as removed.
func (s *summer) remove(ci ChunkInfo) (bool, error) {
	if err := os.Remove(ci.Path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("remove chunk: %w", err)
	}
	s.removed.Add(1)
	s.removedBytes.Add(ci.Size)
	return true, nil
}

func jobs(n int) int {
	if n <= 0 {
		return runtime.GOMAXPROCS(0)
	}
	return n
}

// Verify reads and verifies every chunk in the store in dir. With repair,
// it removes the bad ones. Anything but a regular file at a chunk's name,
// or anything but a directory at a prefix directory's, is bad too (see
// ErrNotRegular): repair removes it (a link itself, never its target). A bad chunk is not an error: it is counted in
// Summary.Bad and reported. Errors are for a store that cannot be read.
func Verify(ctx context.Context, dir string, repair bool, opts MaintenanceOptions) (Summary, error) {
	log := logger(opts.Logger)
	s := &summer{report: opts.Report}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(jobs(opts.Jobs))
	err := walkLayout(gctx, dir, func(ci ChunkInfo) error {
		g.Go(func() error {
			s.chunks.Add(1)
			s.bytes.Add(ci.Size)
			frame, _, err := readChunkFile(ci.Path, nil)
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			if err == nil {
				err = VerifyFrame(opts.Digest, ci.ID, frame)
			} else {
				// Unreadable for a reason other than absence
				// (too large, not a regular file): as bad as corrupt.
				err = fmt.Errorf("%w (%w)", &casync.ChecksumError{Want: ci.ID}, err)
			}
			if err == nil {
				return nil
			}
			s.bad.Add(1)
			removed := false
			if repair {
				var rerr error
				if removed, rerr = s.remove(ci); rerr != nil {
					return rerr
				}
			}
			log.Warn("bad chunk", "path", ci.Path, "err", err, "removed", removed)
			s.call(ci, err, removed)
			return nil
		})
		return nil
	}, func(ci ChunkInfo, mode fs.FileMode) error {
		// A FIFO, link or directory where a chunk or prefix directory
		// belongs: never served, and as bad as a corrupt chunk.
		s.chunks.Add(1)
		s.bad.Add(1)
		err := notRegularError(ci.Path, mode)
		if ci.ID == (casync.ChunkID{}) {
			err = fmt.Errorf("%s is a %s where a chunk prefix directory belongs (a link is not followed)", ci.Path, fileKind(mode))
		}
		removed := false
		if repair {
			rm := os.Remove
			if mode.IsDir() {
				rm = os.RemoveAll
			}
			if rerr := rm(ci.Path); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
				return fmt.Errorf("remove %s: %w", ci.Path, rerr)
			}
			removed = true
			s.removed.Add(1)
		}
		log.Warn("bad chunk path", "path", ci.Path, "err", err, "removed", removed)
		s.call(ci, err, removed)
		return nil
	})
	if werr := g.Wait(); err == nil {
		err = werr
	}
	var stale int64
	if err == nil {
		stale, err = staleTemps(ctx, dir, repair, log)
	}
	sum := s.summary()
	sum.StaleTemps = stale
	if err != nil {
		return sum, fmt.Errorf("verify chunk store %s: %w", dir, err)
	}
	return sum, nil
}

// staleTemps counts, and with remove deletes, the temporary chunk files
// (.ID.cacnk.tmp-*) in the prefix directories of dir that are older than
// StaleTempAge: what a writer killed between create and rename left.
// Readers never see them, but they take space.
func staleTemps(ctx context.Context, dir string, remove bool, log *slog.Logger) (int64, error) {
	matches, err := filepath.Glob(filepath.Join(dir, "[0-9a-f][0-9a-f][0-9a-f][0-9a-f]", ".*.cacnk.tmp-*"))
	if err != nil {
		return 0, err
	}
	var n int64
	for _, m := range matches {
		if err := ctx.Err(); err != nil {
			return n, err
		}
		fi, err := os.Lstat(m)
		if err != nil || !fi.Mode().IsRegular() || time.Since(fi.ModTime()) < StaleTempAge {
			continue
		}
		n++
		if remove {
			if err := os.Remove(m); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return n, err
			}
		}
		log.Warn("stale temporary chunk file", "path", m, "removed", remove)
	}
	return n, nil
}

// Prune removes the chunks of the store in dir that are not in keep. With
// dryRun it only counts and reports them. Chunks modified after Prune
// starts are kept, so a chunk that a concurrent upload has just written
// survives even if keep was computed before it.
func Prune(ctx context.Context, dir string, keep map[casync.ChunkID]struct{}, dryRun bool, opts MaintenanceOptions) (Summary, error) {
	start := time.Now()
	s := &summer{report: opts.Report}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(jobs(opts.Jobs))
	err := walkStore(gctx, dir, func(ci ChunkInfo) error {
		s.chunks.Add(1)
		s.bytes.Add(ci.Size)
		if _, ok := keep[ci.ID]; ok || !ci.ModTime.Before(start) {
			return nil
		}
		s.unref.Add(1)
		s.unrefBytes.Add(ci.Size)
		if dryRun {
			s.call(ci, nil, false)
			return nil
		}
		g.Go(func() error {
			removed, err := s.remove(ci)
			if err != nil {
				return err
			}
			s.call(ci, nil, removed)
			return nil
		})
		return nil
	})
	if werr := g.Wait(); err == nil {
		err = werr
	}
	if err != nil {
		return s.summary(), fmt.Errorf("prune chunk store %s: %w", dir, err)
	}
	return s.summary(), nil
}
