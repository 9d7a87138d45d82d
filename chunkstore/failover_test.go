package chunkstore_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
	"github.com/bootfs/bootfs/chunkstore/storetest"
)

// flakyStore fails every call with err while down is set, and counts calls.
type flakyStore struct {
	chunkstore.Store
	down  atomic.Bool
	calls atomic.Int64
}

var errDown = errors.New("store unreachable")

func (f *flakyStore) GetChunk(ctx context.Context, id casync.ChunkID) ([]byte, error) {
	f.calls.Add(1)
	if f.down.Load() {
		return nil, errDown
	}
	return f.Store.GetChunk(ctx, id)
}

func (f *flakyStore) HasChunk(ctx context.Context, id casync.ChunkID) (bool, error) {
	f.calls.Add(1)
	if f.down.Load() {
		return false, errDown
	}
	return f.Store.HasChunk(ctx, id)
}

func TestFailover(t *testing.T) {
	cs := storetest.Chunks(60, 3)
	ctx := context.Background()
	primary := &flakyStore{Store: memWith(t, cs[:1])}
	secondary := &flakyStore{Store: memWith(t, cs[:2])}
	f := chunkstore.NewFailover(primary, secondary)
	now := time.Now()
	f.SetClock(func() time.Time { return now })

	// Missing in the primary: found in the secondary.
	if _, err := f.GetChunk(ctx, cs[1].ID); err != nil {
		t.Fatalf("GetChunk(only in secondary) = %v", err)
	}
	// Missing everywhere: ErrNotFound.
	if _, err := f.GetChunk(ctx, cs[2].ID); !errors.Is(err, chunkstore.ErrNotFound) {
		t.Fatalf("GetChunk(missing) = %v, want ErrNotFound", err)
	}
	// Primary goes down: one failed call, then it is skipped.
	primary.down.Store(true)
	primary.calls.Store(0)
	for range 5 {
		if _, err := f.GetChunk(ctx, cs[0].ID); err != nil {
			t.Fatalf("GetChunk(primary down) = %v", err)
		}
	}
	if n := primary.calls.Load(); n != 1 {
		t.Errorf("calls to the down primary = %d, want 1 during the cooldown", n)
	}
	// Both down: an error that is not ErrNotFound and names the cause.
	secondary.down.Store(true)
	_, err := f.GetChunk(ctx, cs[0].ID)
	if err == nil || errors.Is(err, chunkstore.ErrNotFound) || !errors.Is(err, errDown) {
		t.Errorf("GetChunk(all down) = %v, want errDown, not ErrNotFound", err)
	}
	// After the cooldown, the primary is tried first again.
	primary.down.Store(false)
	secondary.down.Store(false)
	now = now.Add(time.Minute)
	primary.calls.Store(0)
	secondary.calls.Store(0)
	if _, err := f.GetChunk(ctx, cs[0].ID); err != nil {
		t.Fatal(err)
	}
	if primary.calls.Load() != 1 || secondary.calls.Load() != 0 {
		t.Errorf("after the cooldown calls = %d primary, %d secondary; want 1, 0", primary.calls.Load(), secondary.calls.Load())
	}
	if ok, err := f.HasChunk(ctx, cs[1].ID); !ok || err != nil {
		t.Errorf("HasChunk(only in secondary) = %v, %v", ok, err)
	}
	if ok, err := f.HasChunk(ctx, cs[2].ID); ok || err != nil {
		t.Errorf("HasChunk(missing) = %v, %v", ok, err)
	}
}

func TestFailoverCorruptPrimary(t *testing.T) {
	cs := storetest.Chunks(61, 2)
	bad := newLocal(t)
	good := memWith(t, cs[:1])
	// The primary's copy of chunk 0 is another chunk's frame.
	if err := bad.StoreChunk(context.Background(), cs[1].ID, cs[1].Data); err != nil {
		t.Fatal(err)
	}
	if err := bad.StoreChunk(context.Background(), cs[0].ID, cs[0].Data); err != nil {
		t.Fatal(err)
	}
	corruptFile(t, bad, cs[0].ID, cs[1].ID)
	f := chunkstore.NewFailover(bad, good)
	if got, err := f.GetChunk(context.Background(), cs[0].ID); err != nil || string(got) != string(cs[0].Data) {
		t.Errorf("GetChunk(corrupt in primary) = %v, want the secondary's copy", err)
	}
}

// TestFailoverGetFrame: a failover hands out frames, as stored from a
// FrameStore and compressed from any other, from the first store that
// has the chunk, and counts their bytes.
func TestFailoverGetFrame(t *testing.T) {
	cs := storetest.Chunks(62, 3)
	ctx := context.Background()
	local, err := chunkstore.NewLocal(t.TempDir(), chunkstore.LocalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := local.StoreChunk(ctx, cs[0].ID, cs[0].Data); err != nil {
		t.Fatal(err)
	}
	down := &flakyStore{Store: memWith(t, cs)}
	down.down.Store(true)
	// Counted as the opener counts it.
	f := chunkstore.NewCounted(chunkstore.NewFailover(down, local, memWith(t, cs[1:2])))
	var wire uint64
	for _, c := range cs[:2] { // from local (a FrameStore), then from memory
		frame, err := f.GetFrame(ctx, c.ID)
		if err != nil {
			t.Fatalf("GetFrame(%s) = %v", c.ID, err)
		}
		if err := chunkstore.VerifyFrame(casync.SHA512_256, c.ID, frame); err != nil {
			t.Errorf("GetFrame(%s) returned a bad frame: %v", c.ID, err)
		}
		wire += uint64(len(frame))
	}
	if _, err := f.GetFrame(ctx, cs[2].ID); !errors.Is(err, chunkstore.ErrNotFound) {
		t.Errorf("GetFrame(missing) = %v, want ErrNotFound", err)
	}
	if s := f.Stats(); s.WireBytes != wire || s.Hits != 2 {
		t.Errorf("Stats() = %+v, want %d wire bytes and 2 hits", s, wire)
	}
}

// hangingStore never answers: each call waits for its context to end.
type hangingStore struct {
	chunkstore.Store
	calls atomic.Int64
}

func (h *hangingStore) GetChunk(ctx context.Context, id casync.ChunkID) ([]byte, error) {
	h.calls.Add(1)
	<-ctx.Done()
	return nil, ctx.Err()
}

// TestFailoverHangingPrimary: a primary that accepts requests but never
// answers uses up the caller's deadline once; the caller's next attempt
// goes to the secondary. A cancellation does not mark a store down.
func TestFailoverHangingPrimary(t *testing.T) {
	cs := storetest.Chunks(63, 1)
	primary := &hangingStore{Store: memWith(t, cs)}
	f := chunkstore.NewFailover(primary, memWith(t, cs))

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := f.GetChunk(ctx, cs[0].ID); !errors.Is(err, context.Canceled) {
		t.Fatalf("GetChunk(cancelled) = %v, want context.Canceled", err)
	}
	ctx, cancel = context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := f.GetChunk(ctx, cs[0].ID); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("GetChunk(primary hangs) = %v, want the deadline", err)
	}
	if n := primary.calls.Load(); n != 2 {
		t.Fatalf("primary asked %d times, want 2: a cancellation must not mark it down", n)
	}
	ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := f.GetChunk(ctx, cs[0].ID); err != nil {
		t.Fatalf("GetChunk after the primary hung = %v, want the chunk from the secondary", err)
	}
	if n := primary.calls.Load(); n != 2 {
		t.Errorf("primary asked %d times, want it skipped after it hung", n)
	}
}
