package mkimage

import (
	"fmt"
	"os"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/internal/prefetchlist"
)

// PrefetchEntry is one line of a prefetch list: a file of the image and
// the byte ranges of it the workload read (nil: the whole file).
type PrefetchEntry = prefetchlist.Entry

// ReadPrefetchPaths reads a prefetch list (--prefetch FILE), as boot
// writes it with BOOTFS_RECORD or `boot mount --record`: the files in the
// order the workload first read them, a line each. A line that is an
// absolute image path alone names the whole file. A line that starts
// with a double quote holds a Go-quoted path (strconv.Quote: how a name
// with a newline is written), then either nothing (the whole file) or
// blanks and the byte ranges read, each OFFSET+LENGTH in decimal bytes:
//
//	/etc/os-release
//	"/usr/lib/postgresql/15/bin/postgres" 0+262144 1048576+65536
//
// Blank lines and lines starting with '#' are skipped.
func ReadPrefetchPaths(name string) ([]PrefetchEntry, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, fmt.Errorf("prefetch list: %w", err)
	}
	defer f.Close()
	list, err := prefetchlist.Parse(f)
	if err != nil {
		return nil, fmt.Errorf("prefetch list %s: %w", name, err)
	}
	return list, nil
}

// PrefetchChunks maps a prefetch list to the chunks that hold the content
// it names, whole files or the chunks that hold any byte of their ranges,
// in list order, each chunk once, as lowercase hex IDs for config.json's
// prefetch list. Paths that are not regular files of the archive are
// returned in skipped: a list recorded on an older build of the image may
// name files that are gone, which is no reason to fail the conversion.
// Paths with ranges past the file's end (it changed since the recording)
// are returned in clamped, and only the part within the file is mapped.
func PrefetchChunks(idx *casync.Index, toc *casync.TOC, list []PrefetchEntry) (ids, skipped, clamped []string) {
	chunks, skipped, clamped := prefetchlist.Chunks(idx, toc, list)
	seen := make(map[casync.ChunkID]bool, len(chunks))
	for _, k := range chunks {
		id := idx.Chunks[k].ID
		if !seen[id] {
			seen[id] = true
			ids = append(ids, id.String())
		}
	}
	return ids, skipped, clamped
}
