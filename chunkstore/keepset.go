package chunkstore

import (
	"fmt"
	"os"

	"github.com/bootfs/bootfs/casync"
)

// ReadKeepSet returns the IDs of every chunk that the caidx or caibx files
// at paths reference, for Prune.
func ReadKeepSet(paths ...string) (map[casync.ChunkID]struct{}, error) {
	keep := make(map[casync.ChunkID]struct{})
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return nil, fmt.Errorf("read index: %w", err)
		}
		idx, err := casync.ReadIndex(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("read index %s: %w", p, err)
		}
		for _, c := range idx.Chunks {
			keep[c.ID] = struct{}{}
		}
	}
	return keep, nil
}
