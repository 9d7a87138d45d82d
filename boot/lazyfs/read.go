package lazyfs

import (
	"context"
	"fmt"
	"io"
)

// ReadAt implements io.ReaderAt with no deadline of its own; every fetch
// is still bounded by the store's timeouts and retries.
func (r *Reader) ReadAt(p []byte, off int64) (int, error) {
	return r.ReadAtContext(context.Background(), p, off)
}

// ReadAtContext reads len(p) bytes at off, as io.ReaderAt does, fetching
// the chunks it needs as batch reads and reading ahead when it continues
// a sequential stream of reads. If ctx ends first, it returns ctx's
// error; the fetches go on for other readers.
func (r *Reader) ReadAtContext(ctx context.Context, p []byte, off int64) (int, error) {
	return r.readAt(ctx, p, off, 0, r.size)
}

// readAt is ReadAtContext of a read within a file whose bytes are the
// archive's fileStart..fileEnd: read-ahead goes past it only for a stream
// that has gone on from one file to the next before, fetches the rest
// of a small file (fileAhead), and a window around the misses of a large
// one (windowAhead).
func (r *Reader) readAt(ctx context.Context, p []byte, off, fileStart, fileEnd int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("boot: read archive at offset %d: negative offset", off)
	}
	if off >= r.size {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	want := len(p)
	var eof error
	if int64(want) > r.size-off {
		want = int(r.size - off)
		eof = io.EOF
	}
	if want == 0 {
		return 0, nil
	}
	first := r.idx.ChunkAt(uint64(off))
	last := r.idx.ChunkAt(uint64(off) + uint64(want) - 1)
	r.aheadFromCache(first, last)

	// Start the chunks in runs of up to 2*Jobs, each run one batch,
	// the next one when half of the last is copied: a large read is
	// pipelined but its memory stays bounded.
	window := 2 * r.opts.Jobs
	pending := make([]pendingChunk, 0, min(last-first+1, window+window/2))
	defer func() {
		for _, pc := range pending { // left by an error
			pc.release()
		}
	}()
	next := first
	n := 0
	var chain int64 // this read's chain of dependent fetches
	for i := first; i <= last; i++ {
		if next <= last && next-i <= window/2 {
			end := min(last, next+window-1)
			var missed bool
			pending, missed = r.startRun(pending, next, end)
			next = end + 1
			if i == first {
				// After the read's own fetches: read-ahead never
				// goes before what the read needs.
				seq := r.readAhead(off, int64(want), fileEnd)
				if missed {
					r.fileAhead(fileStart, fileEnd)
					if !seq {
						r.windowAhead(off, int64(want), fileStart, fileEnd)
					}
				}
			}
		}
		pc := pending[0]
		pending = pending[1:]
		data, err := pc.wait(ctx, &chain)
		if err != nil {
			pc.release()
			return n, err
		}
		c := &r.idx.Chunks[i]
		lo := uint64(off) + uint64(n) - c.Start
		n += copy(p[n:want], data[lo:])
		pc.release()
	}
	if chain > 0 {
		r.networkWaits.Add(1)
		for top := r.chainTop.Load(); chain > top && !r.chainTop.CompareAndSwap(top, chain); top = r.chainTop.Load() {
		}
	}
	return n, eof
}

// sequential is an io.Reader over a Reader, for streaming the whole
// archive (to build a TOC); the Reader reads ahead as it goes.
type sequential struct {
	ctx context.Context
	r   *Reader
	off int64
}

func (s *sequential) Read(p []byte) (int, error) {
	n, err := s.r.ReadAtContext(s.ctx, p, s.off)
	s.off += int64(n)
	if err == io.EOF && n > 0 {
		err = nil
	}
	return n, err
}
