package lazyfs

import (
	"encoding/json"
	"fmt"

	"github.com/bootfs/bootfs/internal/atomicfile"
)

// Stats are the figures boot reports, as JSON in the --stats file.
type Stats struct {
	// ChunksFetched and BytesFetched count the chunks, and their bytes,
	// received from the store: as stored (compressed) when a cache
	// receives them, else uncompressed.
	ChunksFetched uint64 `json:"chunks_fetched"`
	BytesFetched  uint64 `json:"bytes_fetched"`
	// CacheHits counts the chunks read from the cache directory instead.
	CacheHits uint64 `json:"cache_hits"`
	// MemoryHits counts chunk reads served from memory.
	MemoryHits uint64 `json:"memory_hits"`
	// Retries counts repeated fetch attempts.
	Retries uint64 `json:"retries"`
	// Errors counts chunks that could not be had.
	Errors uint64 `json:"errors"`
	// StartToExecMS is the time from start to exec of the workload, in
	// milliseconds; 0 when there is no workload (boot mount).
	StartToExecMS int64 `json:"start_to_exec_ms"`
	// Batches, ReadAhead*, PrefetchUnreadBytes, NetworkWaits and
	// LongestChain are the Reader's (see ReaderStats): its batch reads,
	// what read-ahead fetched over the network and what of it no read
	// used, the reads that waited for the network, and the longest
	// chain of dependent fetches.
	Batches               uint64 `json:"batches"`
	ReadAheadChunks       uint64 `json:"read_ahead_chunks"`
	ReadAheadBytes        uint64 `json:"read_ahead_bytes"`
	ReadAheadWastedChunks uint64 `json:"read_ahead_wasted_chunks"`
	ReadAheadWastedBytes  uint64 `json:"read_ahead_wasted_bytes"`
	PrefetchUnreadBytes   uint64 `json:"prefetch_unread_bytes"`
	NetworkWaits          uint64 `json:"network_waits"`
	LongestChain          uint64 `json:"longest_chain"`
}

// LogArgs returns s as the key-value pairs of the stats log line.
func (s Stats) LogArgs() []any {
	args := []any{"chunks_fetched", s.ChunksFetched, "bytes_fetched", s.BytesFetched, "cache_hits", s.CacheHits,
		"memory_hits", s.MemoryHits, "retries", s.Retries, "errors", s.Errors}
	if s.StartToExecMS != 0 {
		args = append(args, "start_to_exec_ms", s.StartToExecMS)
	}
	return append(args, "batches", s.Batches,
		"read_ahead_chunks", s.ReadAheadChunks, "read_ahead_bytes", s.ReadAheadBytes,
		"read_ahead_wasted_chunks", s.ReadAheadWastedChunks, "read_ahead_wasted_bytes", s.ReadAheadWastedBytes,
		"prefetch_unread_bytes", s.PrefetchUnreadBytes, "network_waits", s.NetworkWaits, "longest_chain", s.LongestChain)
}

// WriteStats writes s as JSON to name, atomically.
func WriteStats(name string, s Stats) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(name, append(b, '\n')); err != nil {
		return fmt.Errorf("boot: write stats: %w", err)
	}
	return nil
}
