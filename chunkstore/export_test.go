package chunkstore

import (
	"time"

	"github.com/bootfs/bootfs/casync"
)

// Hooks for the external tests.

func (c *Cache) Pin(id casync.ChunkID)   { c.pin(id) }
func (c *Cache) Unpin(id casync.ChunkID) { c.unpin(id) }

func (f *Failover) SetClock(now func() time.Time) { f.now = now }

// Verifications counts the chunk files GetFrame has decompressed and
// hashed, with LocalOptions.RememberVerified.
func (s *Local) Verifications() uint64 {
	if s.verified == nil {
		return 0
	}
	return s.verified.checks.Load()
}
