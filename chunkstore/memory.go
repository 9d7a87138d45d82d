package chunkstore

import (
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/bootfs/bootfs/casync"
)

// MemoryOptions configure a Memory store.
type MemoryOptions struct {
	// Digest is the hash that chunk IDs are checked against.
	Digest casync.Digest
}

// Memory is a WriteStore that keeps uncompressed chunks in a map. It is
// meant for tests and fakes.
type Memory struct {
	opts MemoryOptions
	mu   sync.RWMutex
	m    map[casync.ChunkID][]byte
}

var (
	_ WriteStore  = (*Memory)(nil)
	_ BatchGetter = (*Memory)(nil)
)

// NewMemory returns an empty Memory store.
func NewMemory(opts MemoryOptions) *Memory {
	return &Memory{opts: opts, m: make(map[casync.ChunkID][]byte)}
}

// GetChunk returns a copy of the chunk.
func (s *Memory) GetChunk(ctx context.Context, id casync.ChunkID) ([]byte, error) {
	if err := ctxErr(ctx, "get", id); err != nil {
		return nil, err
	}
	s.mu.RLock()
	data, ok := s.m[id]
	s.mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("get chunk %s from memory: %w", id, ErrNotFound)
	}
	return slices.Clone(data), nil
}

// GetChunks gets the chunks one after the other.
func (s *Memory) GetChunks(ctx context.Context, ids []casync.ChunkID, fn func(Got)) {
	for i, id := range ids {
		data, err := s.GetChunk(ctx, id)
		fn(Got{Index: i, Data: data, Err: err})
	}
}

// HasChunk reports whether the store holds id.
func (s *Memory) HasChunk(ctx context.Context, id casync.ChunkID) (bool, error) {
	if err := ctxErr(ctx, "look up", id); err != nil {
		return false, err
	}
	s.mu.RLock()
	_, ok := s.m[id]
	s.mu.RUnlock()
	return ok, nil
}

// StoreChunk verifies data against id and keeps a copy of it.
func (s *Memory) StoreChunk(ctx context.Context, id casync.ChunkID, data []byte) error {
	if err := ctxErr(ctx, "store", id); err != nil {
		return err
	}
	if err := casync.VerifyChunk(s.opts.Digest, id, data); err != nil {
		return fmt.Errorf("store chunk in memory: %w", err)
	}
	s.mu.Lock()
	if _, ok := s.m[id]; !ok {
		s.m[id] = slices.Clone(data)
	}
	s.mu.Unlock()
	return nil
}

// IDs returns the IDs of all chunks in the store, in no particular order.
func (s *Memory) IDs() []casync.ChunkID {
	s.mu.RLock()
	defer s.mu.RUnlock()
	ids := make([]casync.ChunkID, 0, len(s.m))
	for id := range s.m {
		ids = append(ids, id)
	}
	return ids
}

// Len returns the number of chunks in the store.
func (s *Memory) Len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.m)
}

// Close does nothing.
func (s *Memory) Close() error { return nil }
