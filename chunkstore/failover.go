package chunkstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/bootfs/bootfs/casync"
)

// failoverCooldown is how long a store that failed is tried only after
// the others.
const failoverCooldown = 30 * time.Second

// Failover reads from several stores in order. A chunk missing from one
// store is looked for in the next. A store that fails for another reason
// (unreachable, 5xx, timeout) is skipped, and is tried only after the
// healthy ones for 30 seconds, so a dead primary costs one timeout, not
// one per chunk. A corrupt chunk in one store is looked for in the next
// too.
type Failover struct {
	stores   []Store
	downTill []atomic.Int64 // unix nanoseconds; 0 = healthy
	cooldown time.Duration
	now      func() time.Time
	stats    counters
}

var (
	_ WriteStore    = (*Failover)(nil)
	_ FrameStore    = (*Failover)(nil)
	_ StatsReporter = (*Failover)(nil)
)

// NewFailover returns a store that tries stores in the given order.
func NewFailover(stores ...Store) *Failover {
	return &Failover{
		stores:   stores,
		downTill: make([]atomic.Int64, len(stores)),
		cooldown: failoverCooldown,
		now:      time.Now,
	}
}

// Stores returns the stores in order.
func (f *Failover) Stores() []Store { return f.stores }

// order returns the store indexes to try: healthy ones first, in order,
// then the ones in cooldown.
func (f *Failover) order() []int {
	now := f.now().UnixNano()
	idx := make([]int, 0, len(f.stores))
	var down []int
	for i := range f.stores {
		if f.downTill[i].Load() > now {
			down = append(down, i)
		} else {
			idx = append(idx, i)
		}
	}
	return append(idx, down...)
}

func (f *Failover) markDown(i int) {
	f.downTill[i].Store(f.now().Add(f.cooldown).UnixNano())
}

// hung marks store i down if the caller's deadline passed while it was
// asked: a store that accepts connections but never answers uses up
// each attempt's whole time, and the caller's next attempt should go to
// the next store. A cancellation says nothing about the store.
func (f *Failover) hung(ctx context.Context, i int) {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		f.markDown(i)
	}
}

func (f *Failover) markUp(i int) {
	if f.downTill[i].Load() != 0 {
		f.downTill[i].Store(0)
	}
}

// transient reports whether err marks a store as unhealthy: not a
// missing or corrupt chunk and not the caller's cancellation.
func transient(ctx context.Context, err error) bool {
	return ctx.Err() == nil && !errors.Is(err, ErrNotFound) && !isCorrupt(err) && !errors.Is(err, ErrReadOnly)
}

// GetChunk returns the chunk from the first store that has it.
func (f *Failover) GetChunk(ctx context.Context, id casync.ChunkID) ([]byte, error) {
	data, err := f.get(ctx, id, func(s Store) ([]byte, error) { return s.GetChunk(ctx, id) })
	if err == nil {
		f.stats.bytes.Add(uint64(len(data)))
	}
	return data, err
}

// GetFrame returns the chunk's frame from the first store that has it: as
// stored from a FrameStore, compressed here from any other. A cache in
// front of the failover then stores frames as they come, and a caller
// can count the bytes that crossed the network.
func (f *Failover) GetFrame(ctx context.Context, id casync.ChunkID) ([]byte, error) {
	frame, err := f.get(ctx, id, func(s Store) ([]byte, error) {
		if fs, ok := s.(FrameStore); ok {
			return fs.GetFrame(ctx, id)
		}
		data, err := s.GetChunk(ctx, id)
		if err != nil {
			return nil, err
		}
		return casync.CompressChunk(nil, data), nil
	})
	if err == nil {
		f.stats.wireBytes.Add(uint64(len(frame)))
	}
	return frame, err
}

// get returns what get gives for the first store that has the chunk.
func (f *Failover) get(ctx context.Context, id casync.ChunkID, get func(Store) ([]byte, error)) ([]byte, error) {
	f.stats.requests.Add(1)
	var errs []error
	for _, i := range f.order() {
		b, err := get(f.stores[i])
		if err == nil {
			f.markUp(i)
			f.stats.hits.Add(1)
			return b, nil
		}
		if ctx.Err() != nil {
			f.hung(ctx, i)
			f.stats.errors.Add(1)
			return nil, fmt.Errorf("get chunk %s: %w", id, ctx.Err())
		}
		if transient(ctx, err) {
			f.markDown(i)
		} else {
			f.markUp(i)
		}
		errs = append(errs, err)
	}
	return nil, f.fail(id, errs)
}

// fail combines the errors of every store. It wraps ErrNotFound only if
// every store said the chunk is missing.
func (f *Failover) fail(id casync.ChunkID, errs []error) error {
	if len(errs) == 0 {
		f.stats.errors.Add(1)
		return fmt.Errorf("get chunk %s: no stores configured", id)
	}
	missing := 0
	msgs := make([]string, len(errs))
	for i, err := range errs {
		if errors.Is(err, ErrNotFound) {
			missing++
		}
		msgs[i] = err.Error()
	}
	if missing == len(errs) {
		f.stats.misses.Add(1)
		return fmt.Errorf("%w: chunk %s is in none of %d stores: %s", ErrNotFound, id, len(errs), strings.Join(msgs, "; "))
	}
	f.stats.errors.Add(1)
	return fmt.Errorf("chunk %s: all %d stores failed: %w", id, len(errs), errors.Join(errs...))
}

// HasChunk reports whether any store has id.
func (f *Failover) HasChunk(ctx context.Context, id casync.ChunkID) (bool, error) {
	f.stats.requests.Add(1)
	var errs []error
	for _, i := range f.order() {
		ok, err := f.stores[i].HasChunk(ctx, id)
		if err == nil {
			f.markUp(i)
			if ok {
				f.stats.hits.Add(1)
				return true, nil
			}
			continue
		}
		if ctx.Err() != nil {
			f.hung(ctx, i)
			f.stats.errors.Add(1)
			return false, fmt.Errorf("look up chunk %s: %w", id, ctx.Err())
		}
		if transient(ctx, err) {
			f.markDown(i)
		}
		errs = append(errs, err)
	}
	if len(errs) == len(f.stores) && len(errs) > 0 {
		f.stats.errors.Add(1)
		return false, fmt.Errorf("look up chunk %s: all %d stores failed: %w", id, len(errs), errors.Join(errs...))
	}
	f.stats.misses.Add(1)
	return false, nil
}

// StoreChunk stores the chunk in the first writable, healthy store.
func (f *Failover) StoreChunk(ctx context.Context, id casync.ChunkID, data []byte) error {
	f.stats.requests.Add(1)
	var errs []error
	for _, i := range f.order() {
		ws, ok := f.stores[i].(WriteStore)
		if !ok {
			continue
		}
		err := ws.StoreChunk(ctx, id, data)
		if err == nil {
			f.markUp(i)
			f.stats.bytes.Add(uint64(len(data)))
			return nil
		}
		if ctx.Err() != nil || isCorrupt(err) {
			f.stats.errors.Add(1)
			return err
		}
		if transient(ctx, err) {
			f.markDown(i)
		}
		errs = append(errs, err)
	}
	f.stats.errors.Add(1)
	if len(errs) == 0 {
		return fmt.Errorf("store chunk %s: %w: none of the %d stores is writable", id, ErrReadOnly, len(f.stores))
	}
	return fmt.Errorf("store chunk %s: all writable stores failed: %w", id, errors.Join(errs...))
}

// Stats returns the failover's own counters; each store keeps its own.
func (f *Failover) Stats() Stats { return f.stats.snapshot() }

// Close closes every store.
func (f *Failover) Close() error {
	var errs []error
	for _, s := range f.stores {
		errs = append(errs, s.Close())
	}
	return errors.Join(errs...)
}
