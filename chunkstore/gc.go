package chunkstore

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
)

// GCSummary is what GC found and did.
type GCSummary struct {
	// Chunks and Bytes count the chunk files the cache held.
	Chunks, Bytes int64
	// Evicted and EvictedBytes count the chunk files removed or, in a dry
	// run, that would be.
	Evicted, EvictedBytes int64
}

// GC brings the chunk cache in dir down to at most maxBytes of chunk
// files by removing the least recently used ones (by mtime, which a
// cache read refreshes), as a cache capped at maxBytes would. With dryRun
// it removes nothing and reports what it would remove. opts.Report is
// called for each chunk removed (or, in a dry run, that would be);
// opts.Digest and opts.Jobs are unused.
//
// GC is safe while containers use the cache: it evicts under the lock the
// caches sharing dir evict under, a chunk file open for reading stays
// readable after its removal, and it keeps the size those caches share
// true. Without dryRun it also removes the fetch locks that killed
// processes left.
func GC(ctx context.Context, dir string, maxBytes int64, dryRun bool, opts MaintenanceOptions) (GCSummary, error) {
	var sum GCSummary
	if maxBytes < 0 {
		return sum, fmt.Errorf("gc chunk cache %s: negative size %d", dir, maxBytes)
	}
	if fi, err := os.Stat(dir); err != nil {
		return sum, fmt.Errorf("gc chunk cache: %w", err)
	} else if !fi.IsDir() {
		return sum, fmt.Errorf("gc chunk cache %s: not a directory", dir)
	}
	evict := func(ci ChunkInfo) error {
		if !dryRun {
			if err := os.Remove(ci.Path); err != nil {
				return err
			}
		}
		sum.Evicted++
		sum.EvictedBytes += ci.Size
		if opts.Report != nil {
			opts.Report(ci, nil, !dryRun)
		}
		return nil
	}
	var err error
	if dryRun {
		_, _, sum.Bytes, err = evictDir(ctx, dir, maxBytes, nil, evict)
	} else {
		sum.Bytes, err = gcLocked(ctx, dir, maxBytes, evict)
	}
	if err != nil {
		return sum, fmt.Errorf("gc chunk cache %s: %w", dir, err)
	}
	if err := walkStore(ctx, dir, func(ChunkInfo) error { sum.Chunks++; return nil }); err != nil {
		return sum, fmt.Errorf("gc chunk cache %s: %w", dir, err)
	}
	if !dryRun {
		sum.Chunks += sum.Evicted
	}
	return sum, nil
}

// gcLocked evicts dir down to maxBytes under the caches' evict lock, keeps
// their shared size true, and clears stale fetch locks. It returns the
// bytes of chunk files the directory held.
func gcLocked(ctx context.Context, dir string, maxBytes int64, remove func(ChunkInfo) error) (int64, error) {
	n := &node{dir: dir, fetch: filepath.Join(dir, nodeDir, "fetch"), log: logger(nil)}
	if err := os.MkdirAll(filepath.Join(dir, nodeDir), 0o755); err != nil {
		return 0, err
	}
	if _, err := os.Stat(filepath.Join(dir, nodeDir, "size")); err == nil {
		// Capped caches share this directory: keep their count true.
		if err := n.mapSize(); err != nil {
			return 0, err
		}
		defer n.close()
	}
	unlock, err := n.lockEvict(ctx, true)
	if err != nil {
		return 0, err
	}
	defer unlock()
	var before int64
	if n.mem != nil {
		before = atomic.LoadInt64(n.counter(sizeOffCommitted))
	}
	_, bytes, walked, err := evictDir(ctx, dir, maxBytes, nil, remove)
	if n.mem != nil && walked >= 0 {
		atomic.AddInt64(n.counter(sizeOffCommitted), walked-before-bytes)
	}
	clearStaleFetchLocks(n.fetch)
	return walked, err
}

// clearStaleFetchLocks removes the fetch lock files in dir that no process
// holds: what a process killed while fetching left.
func clearStaleFetchLocks(dir string) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		release, ok, err := lockFile(filepath.Join(dir, e.Name()), false)
		if err == nil && ok {
			release()
		}
	}
}
