package casync

import (
	"encoding/binary"
	"math/bits"
	"sort"

	"github.com/dchest/siphash"
)

// A GOODBYE record closes a directory. After its header come one item per
// child, then a tail:
//
//	item: offset (from the GOODBYE record back to the child's FILENAME),
//	      size (of the FILENAME and the child's records), hash (SipHash-2-4
//	      of the name with casync's key)
//	tail: offset from the GOODBYE record back to the directory's ENTRY,
//	      size of the GOODBYE record, goodbyeTailMarker
//
// The items are sorted by hash (then by offset) and stored as an implicit
// binary search tree: the children of item i are items 2i+1 and 2i+2, all
// smaller hashes on the left. A reader finds a name in O(log n) items, and
// the tail at the very end of an archive leads to the root directory.

// goodbyeKey is casync's CA_FORMAT_GOODBYE_HASH_KEY, as the two
// little-endian halves that SipHash takes.
var (
	goodbyeK0 = binary.LittleEndian.Uint64([]byte{0xb3, 0x84, 0x1d, 0x0f, 0x2b, 0x44, 0x74, 0x85})
	goodbyeK1 = binary.LittleEndian.Uint64([]byte{0xc1, 0x2e, 0xc2, 0xd1, 0x30, 0xed, 0x36, 0x27})
)

// nameHash is the goodbye-table hash of a file name.
func nameHash(name string) uint64 {
	return siphash.Hash(goodbyeK0, goodbyeK1, []byte(name))
}

// goodbyeItem describes one child of a directory by its absolute position.
type goodbyeItem struct {
	hash       uint64
	start, end int64 // FILENAME record start, end of the child's records
}

// goodbyeSize is the size of the GOODBYE record of a directory with n
// children.
func goodbyeSize(n int) int64 { return headerSize + int64(n+1)*goodbyeItemSize }

// appendGoodbye appends the GOODBYE record for a directory whose ENTRY is
// at entryOff, whose children are items (in archive order; the slice is
// reordered) and whose GOODBYE record starts at start.
func appendGoodbye(dst []byte, items []goodbyeItem, entryOff, start int64) []byte {
	size := goodbyeSize(len(items))
	sort.Slice(items, func(i, j int) bool {
		if items[i].hash != items[j].hash {
			return items[i].hash < items[j].hash
		}
		return items[i].start < items[j].start
	})
	var h [headerSize]byte
	putHeader(h[:], uint64(size), recGoodbye)
	dst = append(dst, h[:]...)
	var rec [goodbyeItemSize]byte
	for _, i := range bstOrder(len(items)) {
		it := items[i]
		binary.LittleEndian.PutUint64(rec[0:], uint64(start-it.start))
		binary.LittleEndian.PutUint64(rec[8:], uint64(it.end-it.start))
		binary.LittleEndian.PutUint64(rec[16:], it.hash)
		dst = append(dst, rec[:]...)
	}
	binary.LittleEndian.PutUint64(rec[0:], uint64(start-entryOff))
	binary.LittleEndian.PutUint64(rec[8:], uint64(size))
	binary.LittleEndian.PutUint64(rec[16:], goodbyeTailMarker)
	return append(dst, rec[:]...)
}

// bstOrder returns, for each slot of an implicit binary search tree over n
// sorted elements, the index of the element stored there. It is the layout
// of casync's ca_make_bst: a complete binary tree whose last level fills
// from the left, so the root of a subtree of n elements at height e is the
// element that leaves the left subtree as full as the last level allows.
func bstOrder(n int) []int {
	out := make([]int, n)
	if n == 0 {
		return out
	}
	var fill func(base, n, height, slot int)
	fill = func(base, n, height, slot int) {
		if n == 0 {
			return
		}
		last := 1 << (height - 1) // capacity of the bottom level
		// Elements in the left subtree: its full upper part plus as
		// much of the bottom level as there is, up to half of it.
		var k int
		if n >= last-1+last/2 {
			k = last - 1
		} else {
			k = n - last/2
		}
		out[slot] = base + k
		fill(base, k, height-1, 2*slot+1)
		fill(base+k+1, n-k-1, height-1, 2*slot+2)
	}
	fill(0, n, bits.Len(uint(n)), 0)
	return out
}
