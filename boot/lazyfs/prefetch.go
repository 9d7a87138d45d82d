package lazyfs

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"

	"golang.org/x/sync/errgroup"

	"github.com/bootfs/bootfs/casync"
)

// PrefetchList fetches the chunks ids names (lowercase hex, from the
// config's prefetch list), in order and up to the Reader's Jobs at a time,
// into the Reader's memory and through it into the cache. IDs the index
// does not hold are skipped with a warning; a chunk that cannot be had is
// left for the read that needs it to report. It returns when every fetch
// has ended or ctx is done, with the number of chunks it got.
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
	var pending []pendingChunk
	got := 0
	wait := func() {
		pc := pending[0]
		pending = pending[1:]
		if _, err := pc.wait(ctx); err == nil {
			got++
		} else if ctx.Err() == nil {
			log.Debug("prefetch failed", "err", err)
		}
		pc.release()
	}
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
		if len(pending) == r.opts.Jobs {
			wait()
		}
		if ctx.Err() != nil {
			break
		}
		pending = append(pending, r.start(i))
	}
	for len(pending) > 0 {
		wait()
	}
	return got
}

// FillCache fetches every chunk of the image that the cache directory
// does not hold yet, in index order, with jobs fetches at a time, without
// passing them through the Reader's memory. It is the background fill of
// BOOTFS_BACKGROUND=1; cancel ctx to stop it. It returns the number of
// chunks fetched, and an error only if the image has no cache.
func (im *Image) FillCache(ctx context.Context, jobs int, log *slog.Logger) (int, error) {
	if im.cache == nil {
		return 0, fmt.Errorf("boot: background fill: the image has no cache directory to fill")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	jobs = max(jobs, 1)
	dir := im.cache.Dir()
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
			if _, err := im.cache.GetChunk(gctx, id); err != nil {
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
