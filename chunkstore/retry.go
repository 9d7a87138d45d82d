package chunkstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/bootfs/bootfs/casync"
)

// RetryOptions configure Retry. The zero value works.
type RetryOptions struct {
	// Retries is how many times a failed call is tried again. Zero means
	// 3; negative means none. A missing chunk, a corrupt one, a read-only
	// store, a cancelled call and an error marked Permanent are never
	// retried.
	Retries int
	// Backoff is the wait before the first retry. It doubles for each
	// further one, up to 5 seconds, with random jitter. Zero means 100ms.
	Backoff time.Duration
	// Timeout bounds each attempt, even of a store that does not heed its
	// context. Zero means 30 seconds.
	Timeout time.Duration
	// OnRetry is called before each repeated attempt (Counted.CountRetry).
	OnRetry func()
	// Logger receives a debug line per retry; nil discards them.
	Logger *slog.Logger
}

const (
	defaultRetries = 3
	defaultBackoff = 100 * time.Millisecond
	maxBackoff     = 5 * time.Second
	defaultTimeout = 30 * time.Second
)

func (o RetryOptions) withDefaults() RetryOptions {
	switch {
	case o.Retries == 0:
		o.Retries = defaultRetries
	case o.Retries < 0:
		o.Retries = 0
	}
	if o.Backoff <= 0 {
		o.Backoff = defaultBackoff
	}
	if o.Timeout <= 0 {
		o.Timeout = defaultTimeout
	}
	if o.OnRetry == nil {
		o.OnRetry = func() {}
	}
	o.Logger = logger(o.Logger)
	return o
}

// Retry repeats the calls of the store it wraps that fail for a transient
// reason (a transport error, a 5xx, a broken session, a timeout), with
// backoff, and bounds each attempt with a timeout. It is the one place
// that retries: backends make one attempt per call.
type Retry struct {
	forward
	opts RetryOptions
}

var (
	_ FrameWriteStore = (*Retry)(nil)
	_ FrameStore      = (*Retry)(nil)
	_ BatchHaser      = (*Retry)(nil)
	_ BatchGetter     = (*Retry)(nil)
	_ Syncer          = (*Retry)(nil)
	_ Committer       = (*Retry)(nil)
)

// NewRetry returns s with its calls retried as opts say.
func NewRetry(s Store, opts RetryOptions) *Retry {
	return &Retry{forward: forward{s}, opts: opts.withDefaults()}
}

// NewCountedRetry returns s retried as opts say and counted, with the
// retries counted too: the remote that the opener composes. opts.OnRetry,
// if set, is called as well.
func NewCountedRetry(s Store, opts RetryOptions) *Counted {
	var c *Counted
	also := opts.OnRetry
	opts.OnRetry = func() {
		c.CountRetry()
		if also != nil {
			also()
		}
	}
	c = NewCounted(NewRetry(s, opts))
	return c
}

// AttemptsError is the error of a call that failed on every one of
// Attempts (more than one) attempts; Err is the last attempt's error,
// which names the store and the chunk.
type AttemptsError struct {
	Attempts int
	Err      error
}

func (e *AttemptsError) Error() string {
	return fmt.Sprintf("%v (gave up after %d attempts)", e.Err, e.Attempts)
}

func (e *AttemptsError) Unwrap() error { return e.Err }

// Attempts returns how many attempts the call that returned err made: the
// count of an *AttemptsError in it, else 1.
func Attempts(err error) int {
	var ae *AttemptsError
	if errors.As(err, &ae) {
		return ae.Attempts
	}
	return 1
}

// permanent marks an error that retrying cannot mend.
type permanent struct{ error }

func (p permanent) Unwrap() error { return p.error }

// Permanent marks err as one that Retry must not retry, such as a refused
// key or an untrusted certificate. Its message is unchanged.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return permanent{err}
}

// retryable reports whether a call that failed with err may succeed when
// tried again.
func retryable(err error) bool {
	var p permanent
	return !errors.Is(err, ErrNotFound) && !isCorrupt(err) && !errors.Is(err, ErrReadOnly) &&
		!errors.Is(err, ErrBadURL) && !errors.Is(err, context.Canceled) && !errors.As(err, &p)
}

const opStore = "store"

// retry runs call, once per attempt, as r's options say.
func retry[T any](r *Retry, ctx context.Context, op string, id casync.ChunkID, call func(context.Context) (T, error)) (T, error) {
	wait := r.opts.Backoff
	for n := 1; ; n++ {
		v, err := attempt(r, ctx, op, id, call)
		if err == nil || ctx.Err() != nil || !retryable(err) || n > r.opts.Retries {
			if err != nil && n > 1 && ctx.Err() == nil {
				err = &AttemptsError{Attempts: n, Err: err}
			}
			return v, err
		}
		d := wait/2 + rand.N(wait/2+1)
		r.opts.Logger.Debug("retrying chunk store call", "op", op, "chunk", id.String(), "store", r.String(), "attempt", n, "wait", d, "err", err)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return v, err
		case <-t.C:
		}
		r.opts.OnRetry()
		wait = min(2*wait, maxBackoff)
	}
}

// attempt runs call once, under the per-attempt timeout. A read returns
// when the timeout passes even if call does not, so that a store that
// ignores its context cannot hang the caller. A write is waited for: its
// caller may reuse the buffer as soon as it returns.
func attempt[T any](r *Retry, ctx context.Context, op string, id casync.ChunkID, call func(context.Context) (T, error)) (T, error) {
	actx, cancel := context.WithTimeout(ctx, r.opts.Timeout)
	defer cancel()
	type result struct {
		v   T
		err error
	}
	var res result
	if op == opStore {
		res.v, res.err = call(actx)
	} else {
		done := make(chan result, 1)
		go func() {
			v, err := call(actx)
			done <- result{v, err}
		}()
		select {
		case res = <-done:
		case <-actx.Done():
			res.err = fmt.Errorf("%s chunk %s in %s: %w", op, id, r.String(), actx.Err())
		}
	}
	if res.err != nil && ctx.Err() == nil && errors.Is(actx.Err(), context.DeadlineExceeded) {
		res.err = fmt.Errorf("%w (timed out after %v)", res.err, r.opts.Timeout)
	}
	return res.v, res.err
}

// GetChunk gets the chunk, retrying.
func (r *Retry) GetChunk(ctx context.Context, id casync.ChunkID) ([]byte, error) {
	return retry(r, ctx, "get", id, func(ctx context.Context) ([]byte, error) { return r.s.GetChunk(ctx, id) })
}

// GetFrame gets the chunk's frame (see GetFrame), retrying.
func (r *Retry) GetFrame(ctx context.Context, id casync.ChunkID) ([]byte, error) {
	return retry(r, ctx, "get", id, func(ctx context.Context) ([]byte, error) { return GetFrame(ctx, r.s, id) })
}

// HasChunk asks the wrapped store, retrying.
func (r *Retry) HasChunk(ctx context.Context, id casync.ChunkID) (bool, error) {
	return retry(r, ctx, "look up", id, func(ctx context.Context) (bool, error) { return r.s.HasChunk(ctx, id) })
}

// HasChunks asks the wrapped store about every id, retrying the batch as
// a whole.
func (r *Retry) HasChunks(ctx context.Context, ids []casync.ChunkID) ([]bool, error) {
	var first casync.ChunkID
	if len(ids) > 0 {
		first = ids[0]
	}
	return retry(r, ctx, "look up", first, func(ctx context.Context) ([]bool, error) { return HasChunks(ctx, r.s, ids, hasParallel) })
}

// StoreChunk stores the chunk, retrying.
func (r *Retry) StoreChunk(ctx context.Context, id casync.ChunkID, data []byte) error {
	_, err := retry(r, ctx, opStore, id, func(ctx context.Context) (struct{}, error) { return struct{}{}, Write(ctx, r.s, id, data) })
	return err
}

// StoreFrame stores the frame (see StoreFrame), retrying.
func (r *Retry) StoreFrame(ctx context.Context, id casync.ChunkID, frame []byte) error {
	_, err := retry(r, ctx, opStore, id, func(ctx context.Context) (struct{}, error) { return struct{}{}, WriteFrame(ctx, r.s, id, frame) })
	return err
}

// GetChunks gets the chunks from the wrapped store, in one call if it is
// a BatchGetter, and then asks again for only the chunks that failed for a
// transient reason, with backoff, until each is had or has used up its
// retries. Each attempt is bounded by the timeout, even if the store does
// not heed its context: the chunks it has not answered by then fail that
// attempt.
func (r *Retry) GetChunks(ctx context.Context, ids []casync.ChunkID, fn func(Got)) {
	// mu keeps fn's calls from overlapping, and stops an attempt that
	// timed out from calling it after it was given up.
	var mu sync.Mutex
	todo := make([]int, len(ids))
	for i := range todo {
		todo[i] = i
	}
	wait := r.opts.Backoff
	for n := 1; len(todo) > 0; n++ {
		failed := r.attemptBatch(ctx, ids, todo, &mu, fn)
		if len(failed) == 0 {
			return
		}
		if n > r.opts.Retries || ctx.Err() != nil {
			r.giveUp(&mu, failed, n, ctx, fn)
			return
		}
		d := wait/2 + rand.N(wait/2+1)
		r.opts.Logger.Debug("retrying chunk store batch", "chunks", len(failed), "store", r.String(), "attempt", n, "wait", d, "err", failed[0].Err)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			r.giveUp(&mu, failed, n, ctx, fn)
			return
		case <-t.C:
		}
		r.opts.OnRetry()
		wait = min(2*wait, maxBackoff)
		todo = make([]int, 0, len(failed))
		for _, g := range failed {
			todo = append(todo, g.Index)
		}
	}
}

// giveUp passes on the last errors of chunks that failed n attempts.
func (r *Retry) giveUp(mu *sync.Mutex, failed []Got, n int, ctx context.Context, fn func(Got)) {
	mu.Lock()
	defer mu.Unlock()
	for _, g := range failed {
		if n > 1 && ctx.Err() == nil {
			g.Err = &AttemptsError{Attempts: n, Err: g.Err}
		}
		fn(g)
	}
}

// attemptBatch asks the wrapped store once for the chunks of ids at the
// positions todo, under the per-attempt timeout. It passes every chunk
// had, and every failure that retrying cannot mend, to fn, and returns
// the chunks that may be had when asked again, with their errors.
func (r *Retry) attemptBatch(ctx context.Context, ids []casync.ChunkID, todo []int, mu *sync.Mutex, fn func(Got)) []Got {
	actx, cancel := context.WithTimeout(ctx, r.opts.Timeout)
	defer cancel()
	sub := make([]casync.ChunkID, len(todo))
	for k, pos := range todo {
		sub[k] = ids[pos]
	}
	answered := make([]bool, len(todo))
	abandoned := false
	var failed []Got
	done := make(chan struct{})
	go func() {
		defer close(done)
		GetChunks(actx, r.s, sub, batchParallel, func(g Got) {
			mu.Lock()
			defer mu.Unlock()
			if abandoned || g.Index < 0 || g.Index >= len(sub) || answered[g.Index] {
				return
			}
			answered[g.Index] = true
			g.Index = todo[g.Index]
			if g.Err == nil || !retryable(g.Err) || ctx.Err() != nil {
				fn(g)
				return
			}
			if errors.Is(actx.Err(), context.DeadlineExceeded) {
				g.Err = fmt.Errorf("%w (timed out after %v)", g.Err, r.opts.Timeout)
			}
			failed = append(failed, Got{Index: g.Index, Err: g.Err})
		})
	}()
	select {
	case <-done:
	case <-actx.Done():
	}
	mu.Lock()
	defer mu.Unlock()
	abandoned = true
	for k, ok := range answered {
		if ok {
			continue
		}
		err := actx.Err()
		if err == nil {
			err = errors.New("the store gave no answer for it")
		}
		err = fmt.Errorf("get chunk %s from %s: %w", sub[k], r.String(), err)
		if ctx.Err() == nil && errors.Is(actx.Err(), context.DeadlineExceeded) {
			err = fmt.Errorf("%w (timed out after %v)", err, r.opts.Timeout)
		}
		failed = append(failed, Got{Index: todo[k], Err: err})
	}
	return failed
}
