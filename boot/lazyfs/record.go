package lazyfs

import (
	"fmt"
	"math/bits"
	"sync"
	"sync/atomic"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/internal/atomicfile"
	"github.com/bootfs/bootfs/internal/prefetchlist"
)

// recordBlock is the granularity at which Recorder notes the parts of a
// file read: a bit per 64 KiB of content, about a chunk's size. A 30 MB
// file costs 60 bytes, and the bits of every file together one per
// 64 KiB of the content read, plus a word per file.
const recordBlock = 64 << 10

// Recorder records which regular files of an image have their content
// read, in the order of their first read, and which 64 KiB blocks of each
// (FUSE reads, page faults of a mapped file among them), for
// BOOTFS_RECORD and `boot mount --record`. mkimage --prefetch turns the
// list into the config's prefetch chunk list. It is safe for concurrent
// use; a read of blocks already recorded costs an atomic load for the
// file and one per 64 words of blocks.
type Recorder struct {
	toc   *casync.TOC
	files []atomic.Pointer[readBlocks] // per TOC node; nil until read

	mu    sync.Mutex
	order []int // TOC nodes, in first-read order
}

// readBlocks holds a bit per recordBlock of a file's content, set once
// the block was read.
type readBlocks struct {
	size  uint64
	words []atomic.Uint64
}

// NewRecorder returns an empty Recorder for the image toc describes.
func NewRecorder(toc *casync.TOC) *Recorder {
	return &Recorder{toc: toc, files: make([]atomic.Pointer[readBlocks], toc.Len())}
}

// Add records a read of n bytes at off of the content of TOC node i;
// files are listed in the order of their first read. Parts past the
// file's end are ignored.
func (r *Recorder) Add(i int, off, n int64) {
	if i < 0 || i >= len(r.files) {
		return
	}
	if off < 0 || n <= 0 {
		return
	}
	b := r.files[i].Load()
	if b == nil {
		if uint64(off) >= r.toc.Attr(i).Size {
			return // no content read: not listed
		}
		b = r.first(i)
	}
	if uint64(off) >= b.size {
		return
	}
	first := uint64(off) / recordBlock
	last := (min(uint64(off)+uint64(n), b.size) - 1) / recordBlock
	for w := first / 64; w <= last/64; w++ {
		lo, hi := max(first, w*64)-w*64, min(last, w*64+63)-w*64
		mask := (^uint64(0) >> (63 - hi)) &^ (uint64(1)<<lo - 1)
		if b.words[w].Load()&mask != mask {
			b.words[w].Or(mask)
		}
	}
}

// first returns node i's blocks, adding them and the node to the order
// unless another read did first.
func (r *Recorder) first(i int) *readBlocks {
	r.mu.Lock()
	defer r.mu.Unlock()
	if b := r.files[i].Load(); b != nil {
		return b
	}
	size := r.toc.Attr(i).Size
	b := &readBlocks{size: size, words: make([]atomic.Uint64, ((size+recordBlock-1)/recordBlock+63)/64)}
	r.files[i].Store(b)
	r.order = append(r.order, i)
	return b
}

// Paths returns the absolute image paths of the files read so far, in
// first-read order.
func (r *Recorder) Paths() []string {
	order := r.readOrder()
	out := make([]string, len(order))
	for k, i := range order {
		out[k] = "/" + r.toc.Path(i)
	}
	return out
}

func (r *Recorder) readOrder() []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.order[:len(r.order):len(r.order)]
}

// Entries returns the files read so far, in first-read order, each with
// the byte ranges read, rounded out to whole 64 KiB blocks and clamped to
// the file's size; a file read in every block has nil Ranges (the whole
// file).
func (r *Recorder) Entries() []prefetchlist.Entry {
	order := r.readOrder()
	out := make([]prefetchlist.Entry, 0, len(order))
	for _, i := range order {
		b := r.files[i].Load()
		e := prefetchlist.Entry{Path: "/" + r.toc.Path(i)}
		blocks := (b.size + recordBlock - 1) / recordBlock
		set := uint64(0)
		for k := range b.words {
			set += uint64(bits.OnesCount64(b.words[k].Load()))
		}
		if set < blocks {
			e.Ranges = b.ranges(blocks)
		}
		out = append(out, e)
	}
	return out
}

// ranges returns the runs of blocks read as byte ranges.
func (b *readBlocks) ranges(blocks uint64) []prefetchlist.Range {
	rs := []prefetchlist.Range{} // not nil: none read is no whole file
	isSet := func(k uint64) bool { return b.words[k/64].Load()&(1<<(k%64)) != 0 }
	for k := uint64(0); k < blocks; k++ {
		if !isSet(k) {
			continue
		}
		j := k
		for j+1 < blocks && isSet(j+1) {
			j++
		}
		off := k * recordBlock
		end := min((j+1)*recordBlock, b.size)
		rs = append(rs, prefetchlist.Range{Off: off, Len: end - off})
		k = j
	}
	return rs
}

// Marshal returns the list as mkimage --prefetch reads it (see
// prefetchlist): a header comment, then a line a file in first-read
// order, its path alone if every block of it was read, else Go-quoted and
// followed by the OFFSET+LENGTH ranges read.
func (r *Recorder) Marshal() []byte {
	return prefetchlist.Marshal(r.Entries())
}

// WriteFile writes the list to name, atomically, with the process's
// rights. (boot's init runs it with those of the user who started it.)
func (r *Recorder) WriteFile(name string) error {
	if err := atomicfile.WriteFile(name, r.Marshal()); err != nil {
		return fmt.Errorf("boot: write the list of files read: %w", err)
	}
	return nil
}
