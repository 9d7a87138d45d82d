package chunkstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
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
