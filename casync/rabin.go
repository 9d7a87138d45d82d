package casync

import (
	"fmt"
	"io"
	"math"

	"github.com/restic/chunker"
)

// RabinPolynomial is the irreducible polynomial of degree 53 that the Rabin
// chunker uses, fixed so that the same data is cut the same way on every
// run and machine and so dedups across images. (restic picks a random
// polynomial per repository instead; bootfs wants global dedup.)
const RabinPolynomial = chunker.Pol(0x3DA3358B4DC173)

// rabinWindow is restic's rolling-hash window; restic needs min >= it.
const rabinWindow = 64

// RabinAverageBits returns the number of fingerprint bits that must be
// zero for the Rabin chunker to cut, for average size avg: log2(avg)
// rounded to the nearest integer. A cut then happens with probability
// 2^-bits at each byte past min, so chunks average about min + 2^bits
// bytes, less the ones truncated at max. For 16k:64k:256k that is 16 bits.
func RabinAverageBits(avg uint64) int {
	return int(math.Round(math.Log2(float64(max(avg, 1)))))
}

// rabinChunker wraps restic's chunker.
type rabinChunker struct {
	c   *chunker.Chunker
	buf []byte
	err error
}

func newRabinChunker(r io.Reader, s ChunkSize) (*rabinChunker, error) {
	if s.Min < rabinWindow {
		return nil, fmt.Errorf("chunk size %v: the rabin chunker needs min >= %d", s, rabinWindow)
	}
	c := chunker.NewWithBoundaries(r, RabinPolynomial, uint(s.Min), uint(s.Max))
	c.SetAverageBits(RabinAverageBits(s.Avg))
	return &rabinChunker{c: c, buf: make([]byte, 0, s.Max)}, nil
}

// Next implements Chunker.
func (c *rabinChunker) Next() ([]byte, error) {
	if c.err != nil {
		return nil, c.err
	}
	ch, err := c.c.Next(c.buf[:0])
	if err != nil {
		c.err = err
		return nil, err
	}
	return ch.Data, nil
}
