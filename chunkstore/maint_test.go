package chunkstore_test

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
	"github.com/bootfs/bootfs/chunkstore/storetest"
)

func TestVerify(t *testing.T) {
	l := newLocal(t)
	cs := storetest.Chunks(70, 10)
	for _, c := range cs {
		if err := l.StoreChunk(context.Background(), c.ID, c.Data); err != nil {
			t.Fatal(err)
		}
	}
	corruptFile(t, l, cs[0].ID, cs[1].ID)
	os.WriteFile(filepath.Join(l.Dir(), chunkstore.ChunkPath(cs[2].ID)), []byte("junk"), 0o644)
	var mu sync.Mutex
	reported := map[casync.ChunkID]bool{}
	opts := chunkstore.MaintenanceOptions{Jobs: 3, Report: func(ci chunkstore.ChunkInfo, err error, removed bool) {
		mu.Lock()
		reported[ci.ID] = removed
		mu.Unlock()
	}}
	sum, err := chunkstore.Verify(context.Background(), l.Dir(), false, opts)
	if err != nil || sum.Chunks != 10 || sum.Bad != 2 || sum.Removed != 0 {
		t.Fatalf("Verify = %+v, %v; want 10 chunks, 2 bad, 0 removed", sum, err)
	}
	if len(reported) != 2 || reported[cs[0].ID] || reported[cs[2].ID] {
		t.Errorf("Verify reported %v, want chunks 0 and 2 not removed", reported)
	}
	sum, err = chunkstore.Verify(context.Background(), l.Dir(), true, opts)
	if err != nil || sum.Bad != 2 || sum.Removed != 2 || !reported[cs[0].ID] {
		t.Fatalf("Verify(repair) = %+v, %v; want 2 removed", sum, err)
	}
	if ok, _ := l.HasChunk(context.Background(), cs[0].ID); ok {
		t.Error("bad chunk still present after repair")
	}
	sum, err = chunkstore.Verify(context.Background(), l.Dir(), false, chunkstore.MaintenanceOptions{})
	if err != nil || sum.Chunks != 8 || sum.Bad != 0 {
		t.Errorf("Verify after repair = %+v, %v; want 8 good", sum, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := chunkstore.Verify(ctx, l.Dir(), false, chunkstore.MaintenanceOptions{}); err == nil {
		t.Error("Verify(canceled ctx) = nil error")
	}
}

func TestPrune(t *testing.T) {
	l := newLocal(t)
	cs := storetest.Chunks(71, 10)
	old := time.Now().Add(-time.Hour)
	for _, c := range cs {
		if err := l.StoreChunk(context.Background(), c.ID, c.Data); err != nil {
			t.Fatal(err)
		}
		os.Chtimes(filepath.Join(l.Dir(), chunkstore.ChunkPath(c.ID)), old, old)
	}
	keep := map[casync.ChunkID]struct{}{cs[0].ID: {}, cs[1].ID: {}, cs[2].ID: {}}
	sum, err := chunkstore.Prune(context.Background(), l.Dir(), keep, true, chunkstore.MaintenanceOptions{})
	if err != nil || sum.Chunks != 10 || sum.Unreferenced != 7 || sum.Removed != 0 {
		t.Fatalf("Prune(dry run) = %+v, %v; want 7 unreferenced, none removed", sum, err)
	}
	// A chunk written just now survives, though keep lacks it.
	fresh := storetest.Chunks(72, 1)[0]
	l.StoreChunk(context.Background(), fresh.ID, fresh.Data)
	future := time.Now().Add(time.Hour)
	os.Chtimes(filepath.Join(l.Dir(), chunkstore.ChunkPath(fresh.ID)), future, future)
	sum, err = chunkstore.Prune(context.Background(), l.Dir(), keep, false, chunkstore.MaintenanceOptions{})
	if err != nil || sum.Removed != 7 {
		t.Fatalf("Prune = %+v, %v; want 7 removed", sum, err)
	}
	for i, c := range cs {
		ok, _ := l.HasChunk(context.Background(), c.ID)
		if want := i < 3; ok != want {
			t.Errorf("after Prune HasChunk(chunk %d) = %v, want %v", i, ok, want)
		}
	}
	if ok, _ := l.HasChunk(context.Background(), fresh.ID); !ok {
		t.Error("Prune removed a chunk written after it started")
	}
}

// TestPruneCasyncIndex prunes a casync store down to what its index uses.
func TestPruneCasyncIndex(t *testing.T) {
	_, store, index := casyncStore(t)
	l, _ := chunkstore.NewLocal(store, chunkstore.LocalOptions{})
	extra := storetest.Chunks(73, 3)
	for _, c := range extra {
		l.StoreChunk(context.Background(), c.ID, c.Data)
		old := time.Now().Add(-time.Hour)
		os.Chtimes(filepath.Join(store, chunkstore.ChunkPath(c.ID)), old, old)
	}
	before := len(storeIDs(t, store))
	keep, err := chunkstore.ReadKeepSet(index)
	if err != nil {
		t.Fatal(err)
	}
	if len(keep) != before-len(extra) {
		t.Fatalf("ReadKeepSet = %d chunks, want %d", len(keep), before-len(extra))
	}
	sum, err := chunkstore.Prune(context.Background(), store, keep, false, chunkstore.MaintenanceOptions{})
	if err != nil || sum.Removed != int64(len(extra)) {
		t.Errorf("Prune = %+v, %v; want %d removed", sum, err, len(extra))
	}
	if _, err := chunkstore.ReadKeepSet(filepath.Join(store, "nope.caidx")); err == nil {
		t.Error("ReadKeepSet(missing file) = nil error")
	}
}

// TestVerifyStaleTemps: a temporary file that a killed writer left behind
// is reported, and removed by repair; one being written now is left alone.
func TestVerifyStaleTemps(t *testing.T) {
	l := newLocal(t)
	c := storetest.Chunks(72, 1)[0]
	if err := l.StoreChunk(context.Background(), c.ID, c.Data); err != nil {
		t.Fatal(err)
	}
	prefix := filepath.Dir(filepath.Join(l.Dir(), chunkstore.ChunkPath(c.ID)))
	stale := filepath.Join(prefix, "."+c.ID.String()+".cacnk.tmp-old")
	fresh := filepath.Join(prefix, "."+c.ID.String()+".cacnk.tmp-new")
	for _, f := range []string{stale, fresh} {
		if err := os.WriteFile(f, []byte("half a chunk"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	old := time.Now().Add(-2 * chunkstore.StaleTempAge)
	os.Chtimes(stale, old, old)

	sum, err := chunkstore.Verify(context.Background(), l.Dir(), false, chunkstore.MaintenanceOptions{})
	if err != nil || sum.StaleTemps != 1 || sum.Bad != 0 {
		t.Fatalf("Verify = %+v, %v; want 1 stale temporary file, 0 bad", sum, err)
	}
	if _, err := os.Stat(stale); err != nil {
		t.Errorf("Verify without repair removed the stale file: %v", err)
	}
	if _, err := chunkstore.Verify(context.Background(), l.Dir(), true, chunkstore.MaintenanceOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("stale temporary file after repair: %v, want it removed", err)
	}
	if _, err := os.Stat(fresh); err != nil {
		t.Errorf("repair removed a temporary file being written: %v", err)
	}
}
