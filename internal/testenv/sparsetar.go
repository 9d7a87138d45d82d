package testenv

import (
	"archive/tar"
	"bytes"
	"encoding/binary"
	"fmt"
	"testing"
	"time"
)

// SparseTar returns a tar of one old-GNU sparse entry (type 'S') of
// realSize bytes whose data is head at offset 0 and tail at the end; the
// rest is a hole. archive/tar cannot write sparse entries, so the header
// is patched from a regular one. The tar is the size of head and tail,
// whatever realSize claims.
func SparseTar(t testing.TB, name string, realSize int64, head, tail []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	data := append(bytes.Clone(head), tail...)
	hdr := &tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(data)), Format: tar.FormatGNU, ModTime: time.Unix(1700000000, 0)}
	if err := tw.WriteHeader(hdr); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	// numeric writes v in the n-byte field at off: octal, or base 256
	// when 11 octal digits do not hold it.
	numeric := func(off, n int, v int64) {
		if v < 1<<33 {
			copy(b[off:off+n], fmt.Sprintf("%0*o\x00", n-1, v))
			return
		}
		clear(b[off : off+n])
		b[off] = 0x80
		binary.BigEndian.PutUint64(b[off+n-8:], uint64(v))
	}
	b[156] = tar.TypeGNUSparse
	numeric(386, 12, 0) // sparse[0]: offset, numbytes
	numeric(398, 12, int64(len(head)))
	numeric(410, 12, realSize-int64(len(tail))) // sparse[1]
	numeric(422, 12, int64(len(tail)))
	b[482] = 0 // no extended sparse headers
	numeric(483, 12, realSize)
	copy(b[148:156], "        ")
	var sum int64
	for _, c := range b[:512] {
		sum += int64(c)
	}
	copy(b[148:156], fmt.Sprintf("%06o\x00 ", sum))
	return b
}
