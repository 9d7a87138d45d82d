package lazyfs

import (
	"container/list"
	"math/bits"
	"sync"
	"sync/atomic"

	"github.com/bootfs/bootfs/casync"
)

// chunkBuf is one chunk's bytes in memory, shared by the LRU and by the
// reads copying out of it. refs counts those holders. A pooled buffer goes
// back to bufPool when its last holder releases it, for the next chunk
// read ahead from the cache: at a gigabyte a second, allocating a fresh
// buffer per chunk costs a quarter of the throughput in GC work and cold
// memory (BenchmarkCacheHit in chunkstore). Nothing may read data after
// releasing it, so every holder takes its reference under the LRU's lock
// (acquire) or owns the buffer from its creation.
type chunkBuf struct {
	data   []byte
	refs   atomic.Int32
	pooled bool
}

// sharedBuf wraps data that the garbage collector owns, such as a chunk
// fetched from the store and handed to several readers at once: releasing
// it never recycles it.
func sharedBuf(data []byte) *chunkBuf {
	b := &chunkBuf{data: data}
	b.refs.Store(1)
	return b
}

// release drops one reference.
func (b *chunkBuf) release() {
	if b.refs.Add(-1) == 0 && b.pooled {
		bufPool.put(b.data)
		b.data = nil
	}
}

// size is what the buffer costs in memory.
func (b *chunkBuf) size() int64 { return int64(cap(b.data)) }

// bufPool recycles chunk buffers in power-of-two size classes, so a
// buffer's capacity is less than twice its chunk's size.
var bufPool chunkPool

const (
	minBufShift = 12 // 4 KiB
	maxBufShift = 24 // casync.MaxChunkSize
)

type chunkPool struct {
	classes [maxBufShift - minBufShift + 1]sync.Pool // of *[]byte
}

func bufClass(n int) int {
	if n <= 1<<minBufShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minBufShift
}

// get returns a pooled chunkBuf with room for n bytes, and an empty data.
// It holds one reference.
func (p *chunkPool) get(n int) *chunkBuf {
	b := &chunkBuf{pooled: true}
	b.refs.Store(1)
	c := bufClass(n)
	if c >= len(p.classes) {
		b.pooled = false
		b.data = make([]byte, 0, n)
		return b
	}
	if bp, ok := p.classes[c].Get().(*[]byte); ok {
		b.data = (*bp)[:0]
	} else {
		b.data = make([]byte, 0, 1<<(c+minBufShift))
	}
	return b
}

func (p *chunkPool) put(data []byte) {
	c := bufClass(cap(data))
	if c >= len(p.classes) || cap(data) != 1<<(c+minBufShift) {
		return // not one of ours
	}
	data = data[:0]
	p.classes[c].Put(&data)
}

// LRU is an in-memory cache of chunks that several Readers share (see
// ReaderOptions.LRU). Safe for concurrent use.
type LRU struct{ l *chunkLRU }

// NewLRU returns an LRU that holds up to maxBytes of chunk buffers, and
// always at least one chunk.
func NewLRU(maxBytes int64) *LRU { return &LRU{l: newChunkLRU(maxBytes)} }

// Bytes returns the buffer capacity the LRU holds.
func (l *LRU) Bytes() int64 { return l.l.bytes() }

// chunkLRU holds recently used chunks up to a number of bytes of buffer
// capacity. It holds one reference on each chunkBuf in it.
type chunkLRU struct {
	mu   sync.Mutex
	max  int64
	size int64
	ll   list.List // of *lruItem, most recently used first
	m    map[casync.ChunkID]*list.Element
}

type lruItem struct {
	id  casync.ChunkID
	buf *chunkBuf
}

func newChunkLRU(maxBytes int64) *chunkLRU {
	return &chunkLRU{max: maxBytes, m: make(map[casync.ChunkID]*list.Element)}
}

// acquire returns id's buffer with a reference for the caller, who must
// release it.
func (l *chunkLRU) acquire(id casync.ChunkID) (*chunkBuf, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.m[id]
	if !ok {
		return nil, false
	}
	l.ll.MoveToFront(e)
	b := e.Value.(*lruItem).buf
	b.refs.Add(1)
	return b, true
}

func (l *chunkLRU) contains(id casync.ChunkID) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, ok := l.m[id]
	return ok
}

// add keeps b, taking over the caller's reference, and evicts the least
// recently used chunks beyond the limit, but never the one just added. If
// id is there already, b is released instead.
func (l *chunkLRU) add(id casync.ChunkID, b *chunkBuf) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e, ok := l.m[id]; ok {
		l.ll.MoveToFront(e)
		b.release()
		return
	}
	l.m[id] = l.ll.PushFront(&lruItem{id: id, buf: b})
	l.size += b.size()
	for l.size > l.max && l.ll.Len() > 1 {
		e := l.ll.Back()
		it := e.Value.(*lruItem)
		l.ll.Remove(e)
		delete(l.m, it.id)
		l.size -= it.buf.size()
		it.buf.release()
	}
}

// bytes returns the buffer capacity held.
func (l *chunkLRU) bytes() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.size
}
