package harness

import (
	"strconv"
	"strings"
)

// BootStats are the counters of boot's stats line (`bootfs stats`, logged
// at exit with BOOTFS_LOG=info; see lazyfs.Stats.LogArgs): what its
// Reader fetched, in how many batch reads, what read-ahead and the
// prefetch fetched that no read used, how often a read waited for the
// network, and the longest chain of fetches that each waited on the one
// before.
type BootStats struct {
	ChunksFetched, BytesFetched int64
	Batches                     int64
	ReadAheadBytes              int64
	ReadAheadWastedBytes        int64
	PrefetchUnreadBytes         int64
	NetworkWaits                int64
	LongestChain                int64
}

// Wasted is what was fetched and never read: read-ahead's waste and the
// prefetch's unread chunks.
func (b BootStats) Wasted() int64 { return b.ReadAheadWastedBytes + b.PrefetchUnreadBytes }

// parseBootStats finds the last `bootfs stats` line in a boot's output
// (slog's text form: key=value pairs) and returns its counters; ok is
// false when there is none, as with a boot that predates it or one that
// did not exit.
func parseBootStats(out string) (b BootStats, ok bool) {
	var line string
	for l := range strings.Lines(out) {
		if strings.Contains(l, `msg="bootfs stats"`) {
			line = l
		}
	}
	if line == "" {
		return BootStats{}, false
	}
	fields := map[string]*int64{
		"chunks_fetched": &b.ChunksFetched, "bytes_fetched": &b.BytesFetched, "batches": &b.Batches,
		"read_ahead_bytes": &b.ReadAheadBytes, "read_ahead_wasted_bytes": &b.ReadAheadWastedBytes,
		"prefetch_unread_bytes": &b.PrefetchUnreadBytes, "network_waits": &b.NetworkWaits, "longest_chain": &b.LongestChain,
	}
	for _, f := range strings.Fields(line) {
		k, v, found := strings.Cut(f, "=")
		if p := fields[k]; found && p != nil {
			if n, err := strconv.ParseInt(v, 10, 64); err == nil {
				*p = n
			}
		}
	}
	return b, true
}
