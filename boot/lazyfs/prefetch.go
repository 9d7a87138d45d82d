package lazyfs

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sync/errgroup"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
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

// ReadPathList reads a list of image paths as Recorder writes it (and
// mkimage --prefetch reads it): one absolute path a line, a line that
// starts with a double quote Go-quoted; blank lines and lines that start
// with '#' are skipped.
func ReadPathList(name string) ([]string, error) {
	b, err := os.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("boot: prefetch list: %w", err)
	}
	var paths []string
	for n, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSuffix(line, "\r")
		if strings.TrimSpace(line) == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasPrefix(line, `"`) {
			p, err := strconv.Unquote(line)
			if err != nil {
				return nil, fmt.Errorf("boot: prefetch list %s, line %d: bad quoted path %s (write it as --record does)", name, n+1, line)
			}
			line = p
		}
		if !strings.HasPrefix(line, "/") {
			return nil, fmt.Errorf("boot: prefetch list %s, line %d: %q is not an absolute image path (want one a line, as --record writes them)", name, n+1, line)
		}
		paths = append(paths, line)
	}
	return paths, nil
}

// PrefetchPaths is PrefetchList of the chunks that hold the content of
// the regular files paths names, the list that Recorder writes: what
// mkimage --prefetch puts into a boot image's config, for `boot mount`.
// Paths that are not regular files of the image are skipped with a
// warning, as a list recorded on an older build may name files that are
// gone.
func PrefetchPaths(ctx context.Context, r *Reader, toc *casync.TOC, paths []string, log *slog.Logger) int {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var list []int
	for _, p := range paths {
		i, ok := toc.Lookup(p)
		if !ok || toc.Mode(i)&casync.ModeTypeMask != casync.ModeRegular {
			log.Warn("prefetch list names no regular file of the image; skipping it", "path", p)
			continue
		}
		e := toc.Entry(i)
		if e.Size == 0 || e.PayloadOffset < 0 {
			continue
		}
		start, end := uint64(e.PayloadOffset), uint64(e.PayloadOffset)+e.Size
		for k := r.idx.ChunkAt(start); k >= 0 && k < len(r.idx.Chunks) && r.idx.Chunks[k].Start < end; k++ {
			list = append(list, k)
		}
	}
	if len(list) == 0 {
		return 0
	}
	return prefetchChunks(ctx, r, list, log)
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
