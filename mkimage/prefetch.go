package mkimage

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/bootfs/bootfs/casync"
)

// ReadPrefetchPaths reads a prefetch path list (--prefetch FILE): one
// absolute image path per line, in the order the workload first read
// them, as boot writes it with BOOTFS_RECORD. A line that starts with a
// double quote is a Go-quoted path (how a name holding a newline is
// written); blank lines and lines starting with '#' are skipped.
func ReadPrefetchPaths(name string) ([]string, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, fmt.Errorf("prefetch list: %w", err)
	}
	defer f.Close()
	paths, err := parsePrefetchPaths(f)
	if err != nil {
		return nil, fmt.Errorf("prefetch list %s: %w", name, err)
	}
	return paths, nil
}

func parsePrefetchPaths(r io.Reader) ([]string, error) {
	var paths []string
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if strings.TrimSpace(line) == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasPrefix(line, `"`) {
			p, err := strconv.Unquote(line)
			if err != nil {
				return nil, fmt.Errorf("line %d: bad quoted path %s", n, line)
			}
			line = p
		}
		if !strings.HasPrefix(line, "/") {
			return nil, fmt.Errorf("line %d: %q is not an absolute path", n, line)
		}
		paths = append(paths, line)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return paths, nil
}

// PrefetchChunks maps image paths to the chunks that hold their content,
// in path order, each chunk once, as lowercase hex IDs for config.json's
// prefetch list. Paths that are not regular files of the archive are
// returned in skipped: a list recorded on an older build of the image may
// name files that are gone, which is no reason to fail the conversion.
func PrefetchChunks(idx *casync.Index, toc *casync.TOC, paths []string) (ids, skipped []string) {
	seen := make(map[casync.ChunkID]bool)
	for _, p := range paths {
		i, ok := toc.Lookup(p)
		if !ok || toc.Mode(i)&casync.ModeTypeMask != casync.ModeRegular {
			skipped = append(skipped, p)
			continue
		}
		e := toc.Entry(i)
		if e.Size == 0 {
			continue
		}
		start := uint64(e.PayloadOffset)
		first := idx.ChunkAt(start)
		if e.PayloadOffset < 0 || first < 0 {
			skipped = append(skipped, p)
			continue
		}
		end := start + e.Size
		for k := first; k < len(idx.Chunks) && idx.Chunks[k].Start < end; k++ {
			id := idx.Chunks[k].ID
			if !seen[id] {
				seen[id] = true
				ids = append(ids, id.String())
			}
		}
	}
	return ids, skipped
}
