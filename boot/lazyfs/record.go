package lazyfs

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/internal/atomicfile"
)

// Recorder records which regular files of an image have their content
// read, in the order of their first read, for BOOTFS_RECORD and
// `boot mount --record`. mkimage --prefetch turns the list into the
// config's prefetch chunk list. It is safe for concurrent use; a file
// read again costs one atomic load.
type Recorder struct {
	toc  *casync.TOC
	seen []atomic.Uint64 // a bit per TOC node

	mu    sync.Mutex
	order []int // TOC nodes, in first-read order
}

// NewRecorder returns an empty Recorder for the image toc describes.
func NewRecorder(toc *casync.TOC) *Recorder {
	return &Recorder{toc: toc, seen: make([]atomic.Uint64, (toc.Len()+63)/64)}
}

// Add records a read of TOC node i; only its first read counts.
func (r *Recorder) Add(i int) {
	if i < 0 || i >= r.toc.Len() {
		return
	}
	w, bit := &r.seen[i/64], uint64(1)<<(i%64)
	if w.Load()&bit != 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	// Under the lock, so the order is that of the bits set.
	if w.Or(bit)&bit == 0 {
		r.order = append(r.order, i)
	}
}

// Paths returns the absolute image paths of the files read so far, in
// first-read order.
func (r *Recorder) Paths() []string {
	r.mu.Lock()
	order := r.order[:len(r.order):len(r.order)]
	r.mu.Unlock()
	out := make([]string, len(order))
	for k, i := range order {
		out[k] = "/" + r.toc.Path(i)
	}
	return out
}

// Marshal returns the list as mkimage --prefetch reads it: one absolute
// path per line, each line ending in a newline. A path that holds a
// newline or a carriage return is written Go-quoted (strconv.Quote; the
// line then starts with a double quote, which no absolute path does), so
// every line is one path.
func (r *Recorder) Marshal() []byte {
	var b bytes.Buffer
	for _, p := range r.Paths() {
		if strings.ContainsAny(p, "\n\r") {
			p = strconv.Quote(p)
		}
		b.WriteString(p)
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// WriteFile writes the list to name, atomically, with the process's
// rights. (boot's init runs it with those of the user who started it.)
func (r *Recorder) WriteFile(name string) error {
	if err := atomicfile.WriteFile(name, r.Marshal()); err != nil {
		return fmt.Errorf("boot: write the list of files read: %w", err)
	}
	return nil
}
