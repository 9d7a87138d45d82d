package chunkstore

import "sync/atomic"

// Stats are the counters of a store since it was opened. All fields only
// grow.
type Stats struct {
	// Requests counts GetChunk, HasChunk and StoreChunk calls.
	Requests uint64
	// Hits counts chunks found (GetChunk and HasChunk), Misses chunks not
	// found. For a Cache, a hit is a chunk served from the cache directory
	// and a miss one fetched from the remote.
	Hits, Misses uint64
	// Bytes counts uncompressed chunk bytes returned by GetChunk or taken
	// by StoreChunk.
	Bytes uint64
	// WireBytes counts compressed frame bytes read from or written to the
	// backing directory or network.
	WireBytes uint64
	// Errors counts calls that failed for a reason other than a missing
	// chunk, including corrupt chunks.
	Errors uint64
	// Retries counts repeated attempts after transient failures.
	Retries uint64
	// Corrupt counts chunks that failed verification.
	Corrupt uint64
}

// StatsReporter is implemented by every store in this package.
type StatsReporter interface {
	Stats() Stats
}

// counters is the atomic form of Stats embedded in every store.
type counters struct {
	requests, hits, misses, bytes, wireBytes, errors, retries, corrupt atomic.Uint64
}

func (c *counters) snapshot() Stats {
	return Stats{
		Requests:  c.requests.Load(),
		Hits:      c.hits.Load(),
		Misses:    c.misses.Load(),
		Bytes:     c.bytes.Load(),
		WireBytes: c.wireBytes.Load(),
		Errors:    c.errors.Load(),
		Retries:   c.retries.Load(),
		Corrupt:   c.corrupt.Load(),
	}
}
