package casync

import (
	"fmt"
	"io"
	"math/bits"
)

// buzhashWindow is the size of casync's rolling-hash window
// (CA_CHUNKER_WINDOW_SIZE).
const buzhashWindow = 48

// buzhashTable is casync's buzhash table (src/cachunker.c). Chunk
// boundaries, and so chunk IDs, depend on every entry.
var buzhashTable = [256]uint32{
	0x458be752, 0xc10748cc, 0xfbbcdbb8, 0x6ded5b68, 0xb10a82b5, 0x20d75648, 0xdfc5665f, 0xa8428801,
	0x7ebf5191, 0x841135c7, 0x65cc53b3, 0x280a597c, 0x16f60255, 0xc78cbc3e, 0x294415f5, 0xb938d494,
	0xec85c4e6, 0xb7d33edc, 0xe549b544, 0xfdeda5aa, 0x882bf287, 0x3116737c, 0x05569956, 0xe8cc1f68,
	0x0806ac5e, 0x22a14443, 0x15297e10, 0x50d090e7, 0x4ba60f6f, 0xefd9f1a7, 0x5c5c885c, 0x82482f93,
	0x9bfd7c64, 0x0b3e7276, 0xf2688e77, 0x8fad8abc, 0xb0509568, 0xf1ada29f, 0xa53efdfe, 0xcb2b1d00,
	0xf2a9e986, 0x6463432b, 0x95094051, 0x5a223ad2, 0x9be8401b, 0x61e579cb, 0x1a556a14, 0x5840fdc2,
	0x9261ddf6, 0xcde002bb, 0x52432bb0, 0xbf17373e, 0x7b7c222f, 0x2955ed16, 0x9f10ca59, 0xe840c4c9,
	0xccabd806, 0x14543f34, 0x1462417a, 0x0d4a1f9c, 0x087ed925, 0xd7f8f24c, 0x7338c425, 0xcf86c8f5,
	0xb19165cd, 0x9891c393, 0x325384ac, 0x0308459d, 0x86141d7e, 0xc922116a, 0xe2ffa6b6, 0x53f52aed,
	0x2cd86197, 0xf5b9f498, 0xbf319c8f, 0xe0411fae, 0x977eb18c, 0xd8770976, 0x9833466a, 0xc674df7f,
	0x8c297d45, 0x8ca48d26, 0xc49ed8e2, 0x7344f874, 0x556f79c7, 0x6b25eaed, 0xa03e2b42, 0xf68f66a4,
	0x8e8b09a2, 0xf2e0e62a, 0x0d3a9806, 0x9729e493, 0x8c72b0fc, 0x160b94f6, 0x450e4d3d, 0x7a320e85,
	0xbef8f0e1, 0x21d73653, 0x4e3d977a, 0x1e7b3929, 0x1cc6c719, 0xbe478d53, 0x8d752809, 0xe6d8c2c6,
	0x275f0892, 0xc8acc273, 0x4cc21580, 0xecc4a617, 0xf5f7be70, 0xe795248a, 0x375a2fe9, 0x425570b6,
	0x8898dcf8, 0xdc2d97c4, 0x0106114b, 0x364dc22f, 0x1e0cad1f, 0xbe63803c, 0x5f69fac2, 0x4d5afa6f,
	0x1bc0dfb5, 0xfb273589, 0x0ea47f7b, 0x3c1c2b50, 0x21b2a932, 0x6b1223fd, 0x2fe706a8, 0xf9bd6ce2,
	0xa268e64e, 0xe987f486, 0x3eacf563, 0x1ca2018c, 0x65e18228, 0x2207360a, 0x57cf1715, 0x34c37d2b,
	0x1f8f3cde, 0x93b657cf, 0x31a019fd, 0xe69eb729, 0x8bca7b9b, 0x4c9d5bed, 0x277ebeaf, 0xe0d8f8ae,
	0xd150821c, 0x31381871, 0xafc3f1b0, 0x927db328, 0xe95effac, 0x305a47bd, 0x426ba35b, 0x1233af3f,
	0x686a5b83, 0x50e072e5, 0xd9d3bb2a, 0x8befc475, 0x487f0de6, 0xc88dff89, 0xbd664d5e, 0x971b5d18,
	0x63b14847, 0xd7d3c1ce, 0x7f583cf3, 0x72cbcb09, 0xc0d0a81c, 0x7fa3429b, 0xe9158a1b, 0x225ea19a,
	0xd8ca9ea3, 0xc763b282, 0xbb0c6341, 0x020b8293, 0xd4cd299d, 0x58cfa7f8, 0x91b4ee53, 0x37e4d140,
	0x95ec764c, 0x30f76b06, 0x5ee68d24, 0x679c8661, 0xa41979c2, 0xf2b61284, 0x4fac1475, 0x0adb49f9,
	0x19727a23, 0x15a7e374, 0xc43a18d5, 0x3fb1aa73, 0x342fc615, 0x924c0793, 0xbee2d7f0, 0x8a279de9,
	0x4aa2d70c, 0xe24dd37f, 0xbe862c0b, 0x177c22c2, 0x5388e5ee, 0xcd8a7510, 0xf901b4fd, 0xdbc13dbc,
	0x6c0bae5b, 0x64efe8c7, 0x48b02079, 0x80331a49, 0xca3d8ae6, 0xf3546190, 0xfed7108b, 0xc49b941b,
	0x32baf4a9, 0xeb833a4a, 0x88a3f1a5, 0x3a91ce0a, 0x3cc27da1, 0x7112e684, 0x4a3096b1, 0x3794574c,
	0xa3c8b6f3, 0x1d213941, 0x6e0a2e00, 0x233479f1, 0x0f4cd82f, 0x6093edd2, 0x5d7d209e, 0x464fe319,
	0xd4dcac9e, 0x0db845cb, 0xfb5e4bc3, 0xe0256ce1, 0x09fb4ed1, 0x0914be1e, 0xa5bdb2c3, 0xc6eb57bb,
	0x30320350, 0x3f397e91, 0xa67791bc, 0x86bc0e2c, 0xefa0a7e2, 0xe9ff7543, 0xe733612c, 0xd185897b,
	0x329e5388, 0x91dd236b, 0x2ecb0d93, 0xf4d82a3d, 0x35b5c03f, 0xe4e606f0, 0x05b21843, 0x37b45964,
	0x5eff22f4, 0x6027f4cc, 0x77178b3c, 0xae507131, 0x7bf7cabc, 0xf9c18d66, 0x593ade65, 0xd95ddf11,
}

// buzhashOut[b] is the term that byte b contributes to the hash when it
// leaves the window: its table entry rotated by the window size.
var buzhashOut = func() (t [256]uint32) {
	for i, v := range buzhashTable {
		t[i] = bits.RotateLeft32(v, buzhashWindow%32)
	}
	return t
}()

// buzhashSum returns the hash of one full window, as casync's
// ca_chunker_start computes it: the entry of the byte i places from the
// window's end is rotated left by i.
func buzhashSum(w []byte) uint32 {
	var h uint32
	for i, b := range w {
		h ^= bits.RotateLeft32(buzhashTable[b], (len(w)-1-i)%32)
	}
	return h
}

// buzhashDiscriminator returns casync's cut discriminator for avg
// (CA_CHUNKER_DISCRIMINATOR_FROM_AVG): casync cuts where the hash h
// satisfies h % d == d-1, and the correction makes the chunk sizes between
// min = avg/4 and max = 4*avg average out to about avg. The result is
// clamped to min..max, as ca_chunker_set_size does.
func buzhashDiscriminator(s ChunkSize) uint32 {
	a := float64(s.Avg)
	// The explicit float64 conversion keeps the compiler from fusing
	// the multiply and add, which would round differently from casync.
	d := uint64(a / (float64(-1.42888852e-7*a) + 1.33237515))
	d = max(d, s.Min)
	d = min(d, s.Max)
	return uint32(d)
}

// buzhashCutter finds casync's chunk boundaries in a buffer.
//
// casync hashes each chunk from its own first byte: after the first 48
// bytes it hashes the window of the last 48 bytes at every further byte.
// Once the chunk is n bytes long, it cuts after byte n when n >= max, or
// when n >= min and the window hash h ending there has h % d == d-1. A
// chunk can therefore be exactly min bytes long, cut on the hash of its
// bytes min-48..min. If min == avg == max, chunks have that fixed size.
type buzhashCutter struct {
	min, max int
	d        uint32
	m        uint64 // fastmod constant for d: 2^64/d rounded up
	fixed    bool
}

func newBuzhashCutter(s ChunkSize) buzhashCutter {
	d := buzhashDiscriminator(s)
	return buzhashCutter{
		min:   int(s.Min),
		max:   int(s.Max),
		d:     d,
		m:     ^uint64(0)/uint64(d) + 1,
		fixed: s.Min == s.Avg && s.Avg == s.Max,
	}
}

// fastmod returns h % d without a division: Lemire, Kaser and Kurz,
// "Faster Remainder by Direct Computation" (2019), exact for every 32-bit
// h and d, given m = 2^64/d rounded up.
func fastmod(h uint32, m, d uint64) uint64 {
	hi, _ := bits.Mul64(m*uint64(h), d)
	return hi
}

// cut returns the length of the chunk that starts at data[0], or -1 if
// data is shorter than max and holds no boundary, so that more data (or
// the end of the stream) must decide.
func (c *buzhashCutter) cut(data []byte) int {
	if c.fixed {
		if len(data) >= c.max {
			return c.max
		}
		return -1
	}
	// The first size casync tests is the larger of min and the window.
	first := max(c.min, buzhashWindow)
	if len(data) < first {
		return -1
	}
	if first >= c.max {
		return first
	}
	limit := min(len(data), c.max)
	m, d, hit := c.m, uint64(c.d), uint64(c.d-1)
	h := buzhashSum(data[first-buzhashWindow : first])
	if fastmod(h, m, d) == hit {
		return first
	}
	in := data[first:limit]
	out := data[first-buzhashWindow : limit-buzhashWindow]
	out = out[:len(in)] // lets the compiler drop the bounds check on out[i]
	for i, b := range in {
		h = bits.RotateLeft32(h, 1) ^ buzhashOut[out[i]] ^ buzhashTable[b]
		if fastmod(h, m, d) == hit {
			return first + i + 1
		}
	}
	if limit == c.max {
		return c.max
	}
	return -1
}

// buzhashChunker cuts a stream exactly where casync does.
type buzhashChunker struct {
	cutter   buzhashCutter
	r        io.Reader
	buf      []byte
	pos, end int   // buf[pos:end] is read but not yet returned
	err      error // sticky: io.EOF once r is drained, or r's error
}

func newBuzhashChunker(r io.Reader, s ChunkSize) (*buzhashChunker, error) {
	if s.Max < buzhashWindow && (s.Min != s.Avg || s.Avg != s.Max) {
		return nil, fmt.Errorf("chunk size %v: the buzhash chunker needs max >= %d (its window) unless min == avg == max", s, buzhashWindow)
	}
	return &buzhashChunker{
		cutter: newBuzhashCutter(s),
		r:      r,
		buf:    make([]byte, chunkerBufSize(s)),
	}, nil
}

// chunkerBufSize is the read buffer of a chunker: room for two max-size
// chunks, so that reads stay large and moving the unread tail to the
// front costs less than one copy of the stream.
func chunkerBufSize(s ChunkSize) int {
	return max(2*int(s.Max), 256<<10)
}

// Next implements Chunker.
func (c *buzhashChunker) Next() ([]byte, error) {
	if c.end-c.pos < c.cutter.max && c.err == nil {
		c.fill()
	}
	if c.err != nil && c.err != io.EOF {
		return nil, c.err
	}
	data := c.buf[c.pos:c.end]
	if len(data) == 0 {
		return nil, io.EOF
	}
	n := c.cutter.cut(data)
	if n < 0 {
		// fill stops short of max bytes only at the end of the stream:
		// the rest is the last chunk.
		n = len(data)
	}
	c.pos += n
	return data[:n:n], nil
}

// fill reads until at least max bytes are buffered or the stream ends.
func (c *buzhashChunker) fill() {
	if len(c.buf)-c.pos < c.cutter.max {
		c.end = copy(c.buf, c.buf[c.pos:c.end])
		c.pos = 0
	}
	empty := 0
	for c.end-c.pos < c.cutter.max {
		n, err := c.r.Read(c.buf[c.end:])
		c.end += n
		if err != nil {
			c.err = err
			return
		}
		if n > 0 {
			empty = 0
		} else if empty++; empty >= 100 {
			c.err = io.ErrNoProgress
			return
		}
	}
}
