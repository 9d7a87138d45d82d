package lazyfs

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"

	"golang.org/x/sync/errgroup"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
	"github.com/bootfs/bootfs/internal/prefetchlist"
)

// prefetchBatch is the size of one batch read of the prefetch list, and
// prefetchJobs how many of them run at once: a few large requests that
// leave room on the link for reads, which never wait for a prefetch batch
// to start.
const (
	prefetchBatch = 2 << 20
	prefetchJobs  = 2
)

// PrefetchList fetches the chunks ids names (lowercase hex, from the
// config's prefetch list) into the Reader's memory and through it into
// the cache: in archive order, whatever the list's, each chunk once, as
// batch reads of about prefetchBatch bytes, prefetchJobs at a time. A
// batch takes only the chunks that no read has started by the time it
// starts, so reads come first. IDs the index does not hold are skipped
// with a warning; a chunk that cannot be had is left for the read that
// needs it to report. It returns when every batch has ended or ctx is
// done, with the number of chunks in memory or on their way for it.
func PrefetchList(ctx context.Context, r *Reader, ids []string, log *slog.Logger) int {
	if len(ids) == 0 {
		return 0
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	pos := make(map[casync.ChunkID]int, len(r.idx.Chunks))
	for i := range r.idx.Chunks {
		if _, ok := pos[r.idx.Chunks[i].ID]; !ok {
			pos[r.idx.Chunks[i].ID] = i
		}
	}
	var list []int
	for _, s := range ids {
		id, err := casync.ParseChunkID(s)
		if err != nil {
			log.Warn("bad chunk ID in the prefetch list; skipping it", "id", s, "err", err)
			continue
		}
		i, ok := pos[id]
		if !ok {
			log.Warn("prefetch list names a chunk the index does not hold; skipping it", "id", s)
			continue
		}
		list = append(list, i)
	}
	return prefetchChunks(ctx, r, list, log)
}

// prefetchChunks is PrefetchList of the index's chunks list (positions in
// the index, in any order, repeats allowed).
func prefetchChunks(ctx context.Context, r *Reader, list []int, log *slog.Logger) int {
	slices.Sort(list)
	list = slices.Compact(list)

	var got atomic.Int64
	var wg sync.WaitGroup
	sem := make(chan struct{}, prefetchJobs)
	for len(list) > 0 && ctx.Err() == nil {
		n, bytes := 0, uint64(0)
		for n < len(list) && n < chunkstore.BatchChunks {
			size := r.idx.Chunks[list[n]].Size
			if n > 0 && bytes+size > prefetchBatch {
				break
			}
			bytes += size
			n++
		}
		batch := list[:n]
		list = list[n:]
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			continue
		}
		items := r.startLoads(kindPrefetch, slices.Values(batch))
		got.Add(int64(len(batch) - len(items))) // in memory, or a read's
		wg.Add(1)
		if !r.goBackground(func() {
			defer wg.Done()
			defer func() { <-sem }()
			r.runBatch(items, kindPrefetch)
			for _, it := range items {
				if it.l.err == nil {
					got.Add(1)
				} else if r.ctx.Err() == nil {
					log.Debug("prefetch failed", "err", it.l.err)
				}
			}
		}) {
			wg.Done()
			r.failBatch(items, fmt.Errorf("reader closed: %w", context.Canceled))
			break
		}
	}
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
	}
	return int(got.Load())
}

// PrefetchEntry is one line of a prefetch list: a file of the image and
// the byte ranges of it read (nil: the whole file).
type PrefetchEntry = prefetchlist.Entry

// ReadPathList reads a prefetch list as Recorder writes it (and mkimage
// --prefetch reads it; see the format in the doc of Recorder.Marshal): a
// line an absolute image path, the whole file, or a Go-quoted path and
// the OFFSET+LENGTH byte ranges of it read; blank lines and lines that
// start with '#' are skipped.
func ReadPathList(name string) ([]PrefetchEntry, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, fmt.Errorf("boot: prefetch list: %w", err)
	}
	defer f.Close()
	list, err := prefetchlist.Parse(f)
	if err != nil {
		return nil, fmt.Errorf("boot: prefetch list %s: %w", name, err)
	}
	return list, nil
}

// PrefetchPaths is PrefetchList of the chunks that hold the content list
// names (whole files, or the chunks that hold their listed ranges), the
// list that Recorder writes: what mkimage --prefetch puts into a boot
// image's config, for `boot mount`. Paths that are not regular files of
// the image are skipped with a warning, as a list recorded on an older
// build may name files that are gone; ranges past a file's end are cut to
// it, with a warning.
func PrefetchPaths(ctx context.Context, r *Reader, toc *casync.TOC, list []PrefetchEntry, log *slog.Logger) int {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	chunks, skipped, clamped := prefetchlist.Chunks(r.idx, toc, list)
	for _, p := range skipped {
		log.Warn("prefetch list names no regular file of the image; skipping it", "path", p)
	}
	for _, p := range clamped {
		log.Warn("prefetch list names bytes past the end of a file (it changed since the recording?); prefetching the part within it", "path", p)
	}
	if len(chunks) == 0 {
		return 0
	}
	return prefetchChunks(ctx, r, chunks, log)
}

// FillCache fetches every chunk of the image that the cache directory
// does not hold yet, in index order, with jobs fetches at a time, without
// passing them through the Reader's memory. It is the background fill of
// BOOTFS_BACKGROUND=1; cancel ctx to stop it. It returns the number of
// chunks fetched, and an error only if the image has no cache.
func (im *Image) FillCache(ctx context.Context, jobs int, log *slog.Logger) (int, error) {
	if im.store.Cache == nil {
		return 0, fmt.Errorf("boot: background fill: the image has no cache directory to fill")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	jobs = max(jobs, 1)
	dir := im.store.Cache.Dir()
	seen := make(map[casync.ChunkID]bool, len(im.Index.Chunks))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(jobs)
	var fetched atomic.Int64
	for i := range im.Index.Chunks {
		id := im.Index.Chunks[i].ID
		if seen[id] {
			continue
		}
		seen[id] = true
		if gctx.Err() != nil {
			break
		}
		s := id.String()
		if _, err := os.Stat(filepath.Join(dir, s[:4], s+".cacnk")); err == nil {
			continue
		}
		g.Go(func() error {
			if _, err := im.store.Cache.GetChunk(gctx, id); err != nil {
				if gctx.Err() == nil {
					log.Debug("background fetch failed", "chunk", s, "err", err)
				}
				return nil
			}
			fetched.Add(1)
			return nil
		})
	}
	g.Wait()
	return int(fetched.Load()), nil
}
