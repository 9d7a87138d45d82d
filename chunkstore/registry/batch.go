package registry

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"golang.org/x/sync/errgroup"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
)

var _ chunkstore.BatchGetter = (*Store)(nil)

const (
	// coalesceGap is the most bytes of unwanted chunks one range request
	// reads through to reach the next wanted chunk of the same pack: at
	// about one chunk, they cost less than another request's round trip.
	coalesceGap = 64 << 10
	// rangeJobs bounds the range requests of one GetChunks in flight.
	rangeJobs = 4
)

// wanted is one distinct chunk of a batch: where it is and every index
// of the batch that asks for it.
type wanted struct {
	id  casync.ChunkID
	at  loc
	idx []int
}

// span is one range request: chunks of one pack, sorted by offset and
// not overlapping, that lie at most coalesceGap apart.
type span struct {
	pack     pack
	off, end int64
	chunks   []*wanted
	first    int // the lowest index that asks for one of them
}

// GetChunks gets ids with as few requests as the packs allow: the chunks
// of one pack that lie at most 64 KiB apart come in one Range request of
// at most chunkstore.BatchBytes, up to 4 such requests at once, the one
// with the earliest index first. Each chunk is verified on its own as it
// arrives; one that is corrupt, or that a short or mismatched reply does
// not hold, gives its indices an error and the others still come.
// Spooled chunks are read from the spool, as GetChunk reads them.
func (s *Store) GetChunks(ctx context.Context, ids []casync.ChunkID, fn func(chunkstore.Got)) {
	var mu sync.Mutex
	deliver := func(w *wanted, data, frame []byte, err error) {
		mu.Lock()
		defer mu.Unlock()
		for _, i := range w.idx {
			if err != nil {
				fn(chunkstore.Got{Index: i, Err: err})
			} else {
				fn(chunkstore.Got{Index: i, Data: data, Frame: frame})
			}
		}
	}
	fail := func(ws []*wanted, err error) {
		for _, w := range ws {
			deliver(w, nil, nil, fmt.Errorf("get chunk %s from %s: %w", w.id, s.url, err))
		}
	}

	var ws []*wanted
	byID := make(map[casync.ChunkID]*wanted, len(ids))
	for i, id := range ids {
		w, ok := byID[id]
		if !ok {
			w = &wanted{id: id}
			byID[id] = w
			ws = append(ws, w)
		}
		w.idx = append(w.idx, i)
	}
	if err := ctx.Err(); err != nil {
		fail(ws, err)
		return
	}

	var spooled, remote []*wanted
	s.mu.Lock()
	for _, w := range ws {
		if sp, ok := s.spooled[w.id]; ok {
			w.at = sp
			spooled = append(spooled, w)
		} else {
			remote = append(remote, w)
		}
	}
	s.mu.Unlock()
	for _, w := range spooled {
		frame := make([]byte, w.at.size)
		if _, err := s.spool.ReadAt(frame, w.at.off); err != nil {
			fail([]*wanted{w}, fmt.Errorf("spool: %w", err))
			continue
		}
		data, err := s.decode(nil, w.id, frame)
		deliver(w, data, frame, err)
	}
	if len(remote) == 0 {
		return
	}

	if err := s.index(ctx); err != nil {
		fail(remote, err)
		return
	}
	var missing []*wanted
	byPack := map[int][]*wanted{}
	s.mu.Lock()
	packs := make(map[int]pack)
	for _, w := range remote {
		l, ok := s.chunks[w.id]
		if !ok {
			missing = append(missing, w)
			continue
		}
		w.at = l
		byPack[l.pack] = append(byPack[l.pack], w)
		packs[l.pack] = s.packs[l.pack]
	}
	s.mu.Unlock()
	fail(missing, chunkstore.ErrNotFound)

	gap := int64(coalesceGap)
	if s.warnedRange.Load() {
		// The registry sends whole blobs: every request of a pack
		// downloads it from the start, so one per pack is the least.
		gap = chunkstore.BatchBytes
	}
	var spans []*span
	for j, cs := range byPack {
		spans = append(spans, coalesce(packs[j], cs, gap)...)
	}
	slices.SortFunc(spans, func(a, b *span) int { return cmp.Compare(a.first, b.first) })

	var g errgroup.Group
	g.SetLimit(rangeJobs)
	for _, sp := range spans {
		g.Go(func() error {
			s.readSpan(ctx, sp, deliver, fail)
			return nil
		})
	}
	g.Wait()
}

// coalesce cuts the chunks cs of pack p into spans: neighbours at most
// gap bytes apart share one, as long as it stays within
// chunkstore.BatchBytes. Chunks that overlap (only a damaged map has
// them) go in different spans.
func coalesce(p pack, cs []*wanted, gap int64) []*span {
	slices.SortFunc(cs, func(a, b *wanted) int { return cmp.Compare(a.at.off, b.at.off) })
	var out []*span
	var cur *span
	for _, w := range cs {
		off, end := w.at.off, w.at.off+w.at.size
		if cur == nil || off < cur.end || off-cur.end > gap || end-cur.off > chunkstore.BatchBytes {
			cur = &span{pack: p, off: off, first: w.idx[0]}
			out = append(out, cur)
		}
		cur.end = end
		cur.chunks = append(cur.chunks, w)
		cur.first = min(cur.first, w.idx[0])
	}
	return out
}

// readSpan reads sp with one Range request and delivers its chunks as
// they arrive, each verified against its ID. The frame and data buffers
// are reused from chunk to chunk, as BatchGetter allows.
func (s *Store) readSpan(ctx context.Context, sp *span, deliver func(*wanted, []byte, []byte, error), fail func([]*wanted, error)) {
	if err := ctx.Err(); err != nil {
		fail(sp.chunks, err)
		return
	}
	r, err := s.getRange(ctx, sp.pack, sp.off, sp.end-sp.off)
	if err != nil {
		fail(sp.chunks, withCtx(ctx, err))
		return
	}
	defer r.Close()
	var frame, data []byte
	for _, w := range sp.chunks {
		frame = slices.Grow(frame[:0], int(w.at.size))[:w.at.size]
		if err := r.read(frame, w.at.off); err != nil {
			fail([]*wanted{w}, withCtx(ctx, err))
			continue
		}
		d, err := s.decode(data[:0], w.id, frame)
		if err == nil {
			data = d
		}
		deliver(w, d, frame, err)
	}
}

// withCtx makes err, which happened while ctx was canceled or timed
// out, wrap ctx's error: a body read cut short by a cancel may not say
// why.
func withCtx(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil && !errors.Is(err, cerr) {
		return fmt.Errorf("%w (%w)", cerr, err)
	}
	return err
}
