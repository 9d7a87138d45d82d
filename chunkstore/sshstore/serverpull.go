package sshstore

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
)

const (
	// lookahead is how many chunk look-ups a session runs ahead of the
	// one it is sending.
	lookahead = 4
	// maxQueued bounds the chunk requests a pull session holds unanswered
	// (32 bytes each: 32 MiB). casync asks for every chunk of its index
	// at once, so this is about 64 GiB of archive; past it the server
	// reads no more requests until it has answered some.
	maxQueued = 1 << 20
)

// job is one chunk request, looked up ahead of its turn to be sent.
type job struct {
	id    casync.ChunkID
	done  chan struct{}
	frame []byte // nil: missing
	err   error  // store failure other than a missing or corrupt chunk
}

// serveChunks speaks the serving side of casync's protocol on sess until
// the client says GOODBYE or closes its end. Then it ends the session at
// once, as casync's own server does ("when somebody pulls from us, he's
// welcome to terminate any time he likes"): casync asks for chunks twice
// (once ahead, once when it needs them), closes its end when it has all
// it needs, and leaves the answers it no longer wants unread. OpenSSH
// then drops what it had buffered for casync without opening the window
// for it, so a server that went on sending them would wait forever.
//
// Reading the client's requests never waits for the answers to go out: a
// client may send all its requests before it reads any answer (casync
// does, for every chunk of its index), so a reader that stopped while the
// writer waits for the client to read would leave both sides waiting on
// each other's full window. Requests wait in a requestQueue instead, and
// only lookahead of them are looked up at a time.
func (s *Server) serveChunks(ctx context.Context, sess *serverSession, log *slog.Logger) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	br := bufio.NewReaderSize(sess, 64<<10)
	bw := bufio.NewWriterSize(sess, 64<<10)
	abort := func(errno uint64, err error) error {
		bw.Write(appendAbort(nil, errno, err.Error()))
		bw.Flush()
		return err
	}
	// sendFailed names why a write failed: when the session was ended
	// (see handleSession), that is the cause rather than the closed
	// channel.
	sendFailed := func(err error) error {
		if cause := context.Cause(ctx); cause != nil && cause != context.Canceled {
			return cause
		}
		return fmt.Errorf("send: %w", err)
	}

	// Both sides send HELLO at once, as casync does.
	bw.Write(appendHello(nil, featReadableStore))
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("send HELLO: %w", err)
	}
	hello, err := readMessage(br)
	if err != nil {
		if err == io.EOF {
			return fmt.Errorf("%w: client closed before HELLO", ErrProtocol)
		}
		return abort(errnoEBADMSG, fmt.Errorf("read HELLO: %w", err))
	}
	if hello.typ != msgHello {
		return abort(errnoEBADMSG, fmt.Errorf("%w: got %s before HELLO", ErrProtocol, typeName(hello.typ)))
	}
	if unsupported := hello.flags & featOperations &^ featPullChunks; unsupported != 0 {
		return abort(errnoEBADE, fmt.Errorf("%w: client asks for operations %#x; this server only serves chunks (%#x)", ErrProtocol, unsupported, featPullChunks))
	}
	if hello.flags&featPullChunks == 0 {
		return abort(errnoEBADE, fmt.Errorf("%w: client HELLO %#x asks for nothing this server does", ErrProtocol, hello.flags))
	}

	q := newRequestQueue(maxQueued)
	readErr := make(chan error, 1)
	go func() {
		err := readRequests(br, q)
		if err == nil {
			cancel(errClientGone)
			sess.end(0) // frees a write blocked on the client's window
		}
		q.close()
		readErr <- err
	}()
	order := make(chan *job, lookahead)
	go func() {
		defer close(order)
		defer q.close() // a reader waiting for room gives up
		for {
			id, ok := q.next(ctx)
			if !ok {
				return
			}
			j := &job{id: id, done: make(chan struct{})}
			select {
			case order <- j:
			case <-ctx.Done():
				return
			}
			go s.lookup(ctx, j, log)
		}
	}()

	var hdr []byte
	for j := range order {
		select {
		case <-j.done:
		case <-ctx.Done():
			return context.Cause(ctx)
		}
		switch {
		case j.err != nil:
			return abort(errnoEIO, fmt.Errorf("chunk %s: %w", j.id, j.err))
		case j.frame == nil:
			hdr = appendMissing(hdr[:0], j.id)
			bw.Write(hdr)
		default:
			hdr = appendChunkHeader(hdr[:0], chunkCompressed, j.id, len(j.frame))
			bw.Write(hdr)
			bw.Write(j.frame)
		}
		if len(order) == 0 {
			if err := bw.Flush(); err != nil {
				return sendFailed(err)
			}
		}
	}
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	if err := bw.Flush(); err != nil {
		return sendFailed(err)
	}
	err = <-readErr
	if errors.Is(err, ErrProtocol) {
		return abort(errnoEBADMSG, err)
	}
	return err
}

// readRequests reads the client's messages and queues the chunks it
// requests on q. It returns nil at the end of the client's stream or on
// GOODBYE.
func readRequests(br *bufio.Reader, q *requestQueue) error {
	for {
		m, err := readMessage(br)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			if errors.Is(err, ErrProtocol) {
				return err
			}
			return fmt.Errorf("read request: %w", err)
		}
		switch m.typ {
		case msgRequest:
			if !q.add(m.ids, m.flags&requestHighPriority != 0) {
				return nil // the session is over
			}
		case msgGoodbye:
			return nil
		case msgAbort:
			return fmt.Errorf("client aborted (errno %d): %s", m.errno, m.reason)
		default:
			return fmt.Errorf("%w: unexpected %s from a pulling client", ErrProtocol, typeName(m.typ))
		}
	}
}

// requestQueue holds the chunk requests of a pull session that are not
// yet being looked up. High-priority requests are answered first, each
// kind in the order it arrived, as casync's own server does: casync asks
// for its whole index at low priority, then for the chunk it needs next
// at high priority. A high-priority request for a chunk that waits at low
// priority takes that request's place, so the chunk goes out once.
type requestQueue struct {
	mu      sync.Mutex
	wake    chan struct{} // has a value when the queue changed
	space   chan struct{} // has a value when the queue shrank
	max     int
	high    []casync.ChunkID
	low     []casync.ChunkID
	lowWait map[casync.ChunkID]int // low-priority requests queued per chunk
	skip    map[casync.ChunkID]int // of those, the ones a high-priority request answers
	skipped int                    // sum of skip
	closed  bool
}

func newRequestQueue(max int) *requestQueue {
	return &requestQueue{
		wake:    make(chan struct{}, 1),
		space:   make(chan struct{}, 1),
		max:     max,
		lowWait: make(map[casync.ChunkID]int),
		skip:    make(map[casync.ChunkID]int),
	}
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// len is the number of requests waiting; q.mu must be held.
func (q *requestQueue) len() int {
	return len(q.high) + len(q.low) - q.skipped
}

// add queues ids, waiting while the queue is full. It reports false once
// the queue is closed.
func (q *requestQueue) add(ids []casync.ChunkID, high bool) bool {
	for len(ids) > 0 {
		q.mu.Lock()
		for q.len() >= q.max && !q.closed {
			q.mu.Unlock()
			<-q.space
			q.mu.Lock()
		}
		if q.closed {
			q.mu.Unlock()
			return false
		}
		n := min(len(ids), q.max-q.len())
		for _, id := range ids[:n] {
			switch {
			case !high:
				q.low = append(q.low, id)
				q.lowWait[id]++
			case q.lowWait[id] > q.skip[id]:
				q.skip[id]++
				q.skipped++
				q.high = append(q.high, id)
			default:
				q.high = append(q.high, id)
			}
		}
		ids = ids[n:]
		q.mu.Unlock()
		signal(q.wake)
	}
	return true
}

// close ends the queue: next returns what is left, then false.
func (q *requestQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	signal(q.wake)
	signal(q.space)
}

// next returns the request to answer next, waiting for one. It reports
// false once the queue is closed and empty, or ctx is done.
func (q *requestQueue) next(ctx context.Context) (casync.ChunkID, bool) {
	for {
		q.mu.Lock()
		id, ok := q.pop()
		closed := q.closed
		q.mu.Unlock()
		if ok {
			signal(q.space)
			return id, true
		}
		if closed {
			return casync.ChunkID{}, false
		}
		select {
		case <-q.wake:
		case <-ctx.Done():
			q.close()
			return casync.ChunkID{}, false
		}
	}
}

// pop takes the next request off the queue; q.mu must be held.
func (q *requestQueue) pop() (casync.ChunkID, bool) {
	if len(q.high) > 0 {
		id := q.high[0]
		q.high = q.high[1:]
		return id, true
	}
	for len(q.low) > 0 {
		id := q.low[0]
		q.low = q.low[1:]
		if q.lowWait[id]--; q.lowWait[id] == 0 {
			delete(q.lowWait, id)
		}
		if q.skip[id] > 0 {
			q.skipped--
			if q.skip[id]--; q.skip[id] == 0 {
				delete(q.skip, id)
			}
			continue // answered at high priority
		}
		return id, true
	}
	return casync.ChunkID{}, false
}

// lookup fetches and checks the frame for j. A missing or corrupt chunk
// leaves j.frame nil, to be answered with MISSING; a corrupt one is logged.
func (s *Server) lookup(ctx context.Context, j *job, log *slog.Logger) {
	defer close(j.done)
	start := time.Now()
	frame, err := s.frame(ctx, j.id)
	var sum *casync.ChecksumError
	switch {
	case err == nil:
		j.frame = frame
		log.Debug("chunk request", "id", j.id, "result", "sent", "bytes", len(frame), "took", time.Since(start))
	case errors.Is(err, chunkstore.ErrNotFound):
		log.Debug("chunk request", "id", j.id, "result", "missing", "took", time.Since(start))
	case errors.As(err, &sum) || errors.Is(err, casync.ErrFormat):
		log.Warn("chunk request: corrupt chunk in store, answered MISSING", "id", j.id, "err", err)
	default:
		j.err = err
		log.Warn("chunk request", "id", j.id, "result", "error", "err", err)
	}
}

// frame returns the compressed frame of id. Both paths return verified
// chunks only, by the chunkstore contracts: a FrameStore's GetFrame checks
// the frame, and GetChunk returns verified data or an error wrapping
// *casync.ChecksumError.
func (s *Server) frame(ctx context.Context, id casync.ChunkID) ([]byte, error) {
	if fs, ok := s.store.(chunkstore.FrameStore); ok {
		return fs.GetFrame(ctx, id)
	}
	data, err := s.store.GetChunk(ctx, id)
	if err != nil {
		return nil, err
	}
	return casync.CompressChunk(nil, data), nil
}
