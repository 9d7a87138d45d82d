package chunkstore

import "sync/atomic"

// Stats are the counters of a store since it was opened. All fields only
// grow. A Counted store keeps them for the store it wraps; a Cache keeps
// its own Hits, Misses and Corrupt for its directory.
type Stats struct {
	// Requests counts GetChunk, GetFrame, HasChunk and StoreChunk calls,
	// and each chunk of a HasChunks or GetChunks call.
	Requests uint64
	// Batches counts GetChunks calls: a store that is a BatchGetter
	// answers each in one request (or a few) instead of one per chunk.
	Batches uint64
	// Hits counts chunks found (GetChunk and HasChunk), Misses chunks not
	// found. For a Cache, a hit is a chunk served from the cache directory
	// and a miss one fetched from the remote.
	Hits, Misses uint64
	// Bytes counts uncompressed chunk bytes returned by GetChunk or taken
	// by StoreChunk.
	Bytes uint64
	// WireBytes counts compressed frame bytes returned by GetFrame or
	// taken by StoreFrame: what a Cache in front of the store reads from
	// the network and what mkimage sends.
	WireBytes uint64
	// Errors counts calls that failed for a reason other than a missing
	// chunk, including corrupt chunks.
	Errors uint64
	// Retries counts repeated attempts after transient failures.
	Retries uint64
	// Corrupt counts chunks that failed verification.
	Corrupt uint64
}

// StatsReporter is a store that keeps Stats: Counted and Cache.
type StatsReporter interface {
	Stats() Stats
}

// counters is the atomic form of Stats.
type counters struct {
	requests, batches, hits, misses, bytes, wireBytes, errors, retries, corrupt atomic.Uint64
}

// done counts the outcome of one call: found or not (for a call that
// got an answer), or err.
func (c *counters) done(found bool, err error) {
	switch {
	case err == nil && found:
		c.hits.Add(1)
	case err == nil, isNotFound(err):
		c.misses.Add(1)
	case isCorrupt(err):
		c.errors.Add(1)
		c.corrupt.Add(1)
	default:
		c.errors.Add(1)
	}
}

func (c *counters) snapshot() Stats {
	return Stats{
		Requests:  c.requests.Load(),
		Batches:   c.batches.Load(),
		Hits:      c.hits.Load(),
		Misses:    c.misses.Load(),
		Bytes:     c.bytes.Load(),
		WireBytes: c.wireBytes.Load(),
		Errors:    c.errors.Load(),
		Retries:   c.retries.Load(),
		Corrupt:   c.corrupt.Load(),
	}
}
