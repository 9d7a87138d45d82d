package boot

import (
	"container/list"
	"sync"

	"github.com/bootfs/bootfs/casync"
)

// chunkLRU holds recently used chunks up to a number of bytes. The slices
// it hands out are shared and must not be modified.
type chunkLRU struct {
	mu   sync.Mutex
	max  int64
	size int64
	ll   list.List // of *lruItem, most recently used first
	m    map[casync.ChunkID]*list.Element
}

type lruItem struct {
	id   casync.ChunkID
	data []byte
}

func newChunkLRU(maxBytes int64) *chunkLRU {
	return &chunkLRU{max: maxBytes, m: make(map[casync.ChunkID]*list.Element)}
}

func (l *chunkLRU) get(id casync.ChunkID) ([]byte, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.m[id]
	if !ok {
		return nil, false
	}
	l.ll.MoveToFront(e)
	return e.Value.(*lruItem).data, true
}

func (l *chunkLRU) contains(id casync.ChunkID) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, ok := l.m[id]
	return ok
}

// add keeps data, evicting the least recently used chunks beyond the
// limit, but never the one just added.
func (l *chunkLRU) add(id casync.ChunkID, data []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e, ok := l.m[id]; ok {
		l.ll.MoveToFront(e)
		return
	}
	l.m[id] = l.ll.PushFront(&lruItem{id: id, data: data})
	l.size += int64(len(data))
	for l.size > l.max && l.ll.Len() > 1 {
		e := l.ll.Back()
		it := e.Value.(*lruItem)
		l.ll.Remove(e)
		delete(l.m, it.id)
		l.size -= int64(len(it.data))
	}
}

// bytes returns the bytes held.
func (l *chunkLRU) bytes() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.size
}
