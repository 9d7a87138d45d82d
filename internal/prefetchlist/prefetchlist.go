package prefetchlist

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"

	"github.com/bootfs/bootfs/casync"
)

// Header is the comment line Marshal starts a list with.
const Header = "# bootfs prefetch list v2: a path a line (the whole file), or a Go-quoted path and OFFSET+LENGTH byte ranges"

// Range is a byte range of a file's content: Len bytes from Off.
type Range struct {
	Off, Len uint64
}

// Entry is one line of the list: a file, and the parts of it read.
type Entry struct {
	// Path is the file's absolute path in the image.
	Path string
	// Ranges are the parts of the file listed, sorted, not overlapping
	// nor touching; nil means the whole file.
	Ranges []Range
}

// Parse reads a list. Errors name the line, what is wrong and what to
// write instead; the caller adds the file's name.
func Parse(r io.Reader) ([]Entry, error) {
	var list []Entry
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for n := 1; sc.Scan(); n++ {
		e, ok, err := parseLine(strings.TrimSuffix(sc.Text(), "\r"))
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		if ok {
			list = append(list, e)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return list, nil
}

func parseLine(line string) (Entry, bool, error) {
	if strings.TrimSpace(line) == "" || strings.HasPrefix(line, "#") {
		return Entry{}, false, nil
	}
	if !strings.HasPrefix(line, `"`) {
		if !strings.HasPrefix(line, "/") {
			return Entry{}, false, fmt.Errorf("%q is not an absolute path (write one absolute image path a line, or a Go-quoted one followed by OFFSET+LENGTH ranges)", line)
		}
		return Entry{Path: line}, true, nil
	}
	q, err := strconv.QuotedPrefix(line)
	if err != nil {
		return Entry{}, false, fmt.Errorf("bad quoted path %s (write it Go-quoted, as strconv.Quote does: \"/a\\nb\")", line)
	}
	p, err := strconv.Unquote(q)
	if err != nil {
		return Entry{}, false, fmt.Errorf("bad quoted path %s (write it Go-quoted, as strconv.Quote does: \"/a\\nb\")", q)
	}
	if !strings.HasPrefix(p, "/") {
		return Entry{}, false, fmt.Errorf("%s is not an absolute path (write one absolute image path a line)", q)
	}
	rest := line[len(q):]
	if strings.TrimSpace(rest) == "" {
		return Entry{Path: p}, true, nil
	}
	if rest[0] != ' ' && rest[0] != '\t' {
		return Entry{}, false, fmt.Errorf("%q follows the quoted path %s (put a blank between the path and its OFFSET+LENGTH ranges)", rest, q)
	}
	var rs []Range
	for _, f := range strings.Fields(rest) {
		r, err := parseRange(f)
		if err != nil {
			return Entry{}, false, fmt.Errorf("range %q of %s: %w (want OFFSET+LENGTH in decimal bytes, such as 0+65536)", f, q, err)
		}
		rs = append(rs, r)
	}
	return Entry{Path: p, Ranges: Normalize(rs)}, true, nil
}

func parseRange(s string) (Range, error) {
	o, l, ok := strings.Cut(s, "+")
	if !ok {
		return Range{}, fmt.Errorf("no '+'")
	}
	off, err := strconv.ParseUint(o, 10, 64)
	if err != nil {
		return Range{}, fmt.Errorf("bad offset")
	}
	n, err := strconv.ParseUint(l, 10, 64)
	if err != nil {
		return Range{}, fmt.Errorf("bad length")
	}
	if n == 0 {
		return Range{}, fmt.Errorf("empty range")
	}
	if off > math.MaxUint64-n {
		return Range{}, fmt.Errorf("the range ends past 2^64")
	}
	return Range{Off: off, Len: n}, nil
}

// Normalize sorts rs and merges the ranges that overlap or touch, in
// place; it returns a non-nil slice for a non-empty rs.
func Normalize(rs []Range) []Range {
	slices.SortFunc(rs, func(a, b Range) int {
		switch {
		case a.Off < b.Off:
			return -1
		case a.Off > b.Off:
			return 1
		}
		return 0
	})
	out := rs[:0]
	for _, r := range rs {
		if k := len(out) - 1; k >= 0 && r.Off <= out[k].Off+out[k].Len {
			out[k].Len = max(out[k].Off+out[k].Len, r.Off+r.Len) - out[k].Off
			continue
		}
		out = append(out, r)
	}
	return out
}

// Marshal returns list in the form Parse reads, after the Header line.
// An entry of the whole file is its path alone, Go-quoted if it holds a
// newline or a carriage return; an entry with ranges is always quoted.
func Marshal(list []Entry) []byte {
	var b bytes.Buffer
	b.WriteString(Header)
	b.WriteByte('\n')
	for _, e := range list {
		if e.Ranges == nil {
			if strings.ContainsAny(e.Path, "\n\r") {
				b.WriteString(strconv.Quote(e.Path))
			} else {
				b.WriteString(e.Path)
			}
			b.WriteByte('\n')
			continue
		}
		b.WriteString(strconv.Quote(e.Path))
		for _, r := range e.Ranges {
			fmt.Fprintf(&b, " %d+%d", r.Off, r.Len)
		}
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// Chunks maps list to the positions in idx of the chunks that hold the
// listed content (the whole file, or the chunks that hold any byte of its
// ranges), in list order, each position once. Paths that are not regular
// files of toc's archive are returned in skipped: a list recorded on an
// older build of the image may name files that are gone. Paths with a
// range past the file's end (the file changed since) are returned in
// clamped, and only the part within the file is mapped.
func Chunks(idx *casync.Index, toc *casync.TOC, list []Entry) (chunks []int, skipped, clamped []string) {
	seen := make(map[int]bool)
	add := func(start, end uint64) { // archive bytes [start, end)
		for k := idx.ChunkAt(start); k >= 0 && k < len(idx.Chunks) && idx.Chunks[k].Start < end; k++ {
			if !seen[k] {
				seen[k] = true
				chunks = append(chunks, k)
			}
		}
	}
	for _, e := range list {
		i, ok := toc.Lookup(e.Path)
		if !ok || toc.Mode(i)&casync.ModeTypeMask != casync.ModeRegular {
			skipped = append(skipped, e.Path)
			continue
		}
		a := toc.Attr(i)
		if a.Size == 0 {
			continue
		}
		if a.PayloadOffset < 0 || idx.ChunkAt(uint64(a.PayloadOffset)) < 0 {
			skipped = append(skipped, e.Path)
			continue
		}
		start := uint64(a.PayloadOffset)
		if e.Ranges == nil {
			add(start, start+a.Size)
			continue
		}
		past := false
		for _, r := range e.Ranges {
			if r.Off+r.Len > a.Size {
				past = true
			}
			if r.Off >= a.Size {
				continue
			}
			add(start+r.Off, start+min(r.Off+r.Len, a.Size))
		}
		if past {
			clamped = append(clamped, e.Path)
		}
	}
	return chunks, skipped, clamped
}
