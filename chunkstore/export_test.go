package chunkstore

import (
	"time"

	"github.com/bootfs/bootfs/casync"
)

// Hooks for the external tests.

func (c *Cache) Pin(id casync.ChunkID)   { c.pin(id) }
func (c *Cache) Unpin(id casync.ChunkID) { c.unpin(id) }

func (f *Failover) SetClock(now func() time.Time) { f.now = now }
