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
}

var (
	_ FrameWriteStore = (*Failover)(nil)
	_ FrameStore      = (*Failover)(nil)
	_ BatchHaser      = (*Failover)(nil)
	_ BatchGetter     = (*Failover)(nil)
	_ Syncer          = (*Failover)(nil)
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
	return f.get(ctx, id, func(s Store) ([]byte, error) { return s.GetChunk(ctx, id) })
}

// GetFrame returns the chunk's frame from the first store that has it: as
// stored from a FrameStore, compressed here from any other. A cache in
// front of the failover then stores frames as they come, and a caller
// can count the bytes that crossed the network.
func (f *Failover) GetFrame(ctx context.Context, id casync.ChunkID) ([]byte, error) {
	return f.get(ctx, id, func(s Store) ([]byte, error) { return GetFrame(ctx, s, id) })
}

// get returns what get gives for the first store that has the chunk.
func (f *Failover) get(ctx context.Context, id casync.ChunkID, get func(Store) ([]byte, error)) ([]byte, error) {
	var errs []error
	for _, i := range f.order() {
		b, err := get(f.stores[i])
		if err == nil {
			f.markUp(i)
			return b, nil
		}
		if ctx.Err() != nil {
			f.hung(ctx, i)
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

// GetChunks gets the chunks from the stores in order, each in one call if
// it is a BatchGetter: it asks the next store only for the chunks the ones
// before could not give (missing, corrupt or failed). A store that fails
// a chunk for a transient reason is skipped for a while, as for GetChunk.
func (f *Failover) GetChunks(ctx context.Context, ids []casync.ChunkID, fn func(Got)) {
	todo := make([]int, len(ids))
	for i := range todo {
		todo[i] = i
	}
	errs := make([][]error, len(ids))
	for _, i := range f.order() {
		if len(todo) == 0 {
			return
		}
		sub := make([]casync.ChunkID, len(todo))
		for k, pos := range todo {
			sub[k] = ids[pos]
		}
		var left []int
		answered := make([]bool, len(sub))
		gave, down := false, false
		GetChunks(ctx, f.stores[i], sub, batchParallel, func(g Got) {
			if g.Index < 0 || g.Index >= len(sub) || answered[g.Index] {
				return
			}
			answered[g.Index] = true
			pos := todo[g.Index]
			if g.Err == nil {
				gave = true
				g.Index = pos
				fn(g)
				return
			}
			down = down || transient(ctx, g.Err)
			errs[pos] = append(errs[pos], g.Err)
			left = append(left, pos)
		})
		for k, ok := range answered {
			if !ok { // a store that broke the contract
				errs[todo[k]] = append(errs[todo[k]], fmt.Errorf("get chunk %s from %s: the store gave no answer for it", sub[k], Name(f.stores[i])))
				left = append(left, todo[k])
			}
		}
		if ctx.Err() != nil {
			f.hung(ctx, i)
			for _, pos := range left {
				fn(Got{Index: pos, Err: fmt.Errorf("get chunk %s: %w", ids[pos], ctx.Err())})
			}
			return
		}
		switch {
		case down:
			f.markDown(i)
		case gave || len(left) > 0:
			f.markUp(i)
		}
		todo = left
	}
	for _, pos := range todo {
		fn(Got{Index: pos, Err: f.fail(ids[pos], errs[pos])})
	}
}

// fail combines the errors of every store. It wraps ErrNotFound only if
// every store said the chunk is missing.
func (f *Failover) fail(id casync.ChunkID, errs []error) error {
	if len(errs) == 0 {
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
		// Each store's error names the chunk.
		return fmt.Errorf("%w in any of %d stores: %s", ErrNotFound, len(errs), strings.Join(msgs, "; "))
	}
	return fmt.Errorf("all %d stores failed: %w", len(errs), errors.Join(errs...))
}

// HasChunk reports whether any store has id.
func (f *Failover) HasChunk(ctx context.Context, id casync.ChunkID) (bool, error) {
	var errs []error
	for _, i := range f.order() {
		ok, err := f.stores[i].HasChunk(ctx, id)
		if err == nil {
			f.markUp(i)
			if ok {
				return true, nil
			}
			continue
		}
		if ctx.Err() != nil {
			f.hung(ctx, i)
			return false, fmt.Errorf("look up chunk %s: %w", id, ctx.Err())
		}
		if transient(ctx, err) {
			f.markDown(i)
		}
		errs = append(errs, err)
	}
	if len(errs) == len(f.stores) && len(errs) > 0 {
		return false, fmt.Errorf("all %d stores failed: %w", len(errs), errors.Join(errs...))
	}
	return false, nil
}

// StoreChunk stores the chunk in the first writable, healthy store.
func (f *Failover) StoreChunk(ctx context.Context, id casync.ChunkID, data []byte) error {
	return f.store(ctx, id, func(s Store) error { return s.(WriteStore).StoreChunk(ctx, id, data) })
}

// StoreFrame stores the frame in the first writable, healthy store (see
// StoreFrame).
func (f *Failover) StoreFrame(ctx context.Context, id casync.ChunkID, frame []byte) error {
	return f.store(ctx, id, func(s Store) error { return WriteFrame(ctx, s, id, frame) })
}

// store runs put on the first writable, healthy store that takes it.
func (f *Failover) store(ctx context.Context, id casync.ChunkID, put func(Store) error) error {
	var errs []error
	for _, i := range f.order() {
		if _, ok := f.stores[i].(WriteStore); !ok {
			continue
		}
		err := put(f.stores[i])
		if err == nil {
			f.markUp(i)
			return nil
		}
		if ctx.Err() != nil || isCorrupt(err) {
			return err
		}
		if transient(ctx, err) {
			f.markDown(i)
		}
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		return fmt.Errorf("store chunk %s: %w: none of the %d stores is writable", id, ErrReadOnly, len(f.stores))
	}
	return fmt.Errorf("all writable stores failed: %w", errors.Join(errs...))
}

// HasChunks asks the stores in order about the chunks the ones before
// lacked, each in one call if it is a BatchHaser. A store that fails is
// skipped, as for HasChunk; if every store fails, so does HasChunks.
func (f *Failover) HasChunks(ctx context.Context, ids []casync.ChunkID) ([]bool, error) {
	out := make([]bool, len(ids))
	ask := make([]int, len(ids)) // positions in ids still unanswered
	for i := range ask {
		ask[i] = i
	}
	var errs []error
	for _, i := range f.order() {
		if len(ask) == 0 {
			break
		}
		sub := make([]casync.ChunkID, len(ask))
		for k, pos := range ask {
			sub[k] = ids[pos]
		}
		has, err := HasChunks(ctx, f.stores[i], sub, hasParallel)
		if err != nil {
			if ctx.Err() != nil {
				f.hung(ctx, i)
				return nil, fmt.Errorf("look up %d chunks: %w", len(ids), ctx.Err())
			}
			if transient(ctx, err) {
				f.markDown(i)
			}
			errs = append(errs, err)
			continue
		}
		f.markUp(i)
		left := ask[:0]
		for k, pos := range ask {
			if has[k] {
				out[pos] = true
			} else {
				left = append(left, pos)
			}
		}
		ask = left
	}
	if len(errs) == len(f.stores) && len(errs) > 0 {
		return nil, fmt.Errorf("look up %d chunks: all %d stores failed: %w", len(ids), len(errs), errors.Join(errs...))
	}
	return out, nil
}

// String names the stores, in order.
func (f *Failover) String() string {
	names := make([]string, len(f.stores))
	for i, s := range f.stores {
		names[i] = Name(s)
	}
	return strings.Join(names, ",")
}

// Local reports whether any of the stores is local.
func (f *Failover) Local() bool {
	for _, s := range f.stores {
		if IsLocal(s) {
			return true
		}
	}
	return false
}

// Sync syncs every store that is a Syncer.
func (f *Failover) Sync(ctx context.Context) error {
	var errs []error
	for _, s := range f.stores {
		errs = append(errs, Sync(ctx, s))
	}
	return errors.Join(errs...)
}

// Close closes every store.
func (f *Failover) Close() error {
	var errs []error
	for _, s := range f.stores {
		errs = append(errs, s.Close())
	}
	return errors.Join(errs...)
}
