package casync

import (
	"bytes"
	"errors"
	"fmt"
	"os"
)

// ErrTempMax is wrapped by the error EncodeTar returns when the contents
// it must hold until the tar is read pass EncodeOptions.TempMax.
var ErrTempMax = errors.New("casync: temporary file limit reached")

const (
	// holeBlock is the unit in which the spill file leaves zeros out:
	// an aligned block of it that is all zeros becomes a hole.
	holeBlock = 64 << 10
	// spillBuffer is how much the spill file gathers per write.
	spillBuffer = 1 << 20
)

// spillFile holds the contents of a tar's regular files in one unlinked
// temporary file, at offsets that only grow. Aligned blocks of zeros are
// not written but left as holes, which read back as zeros: archive/tar
// expands a sparse entry's holes into zeros on Read (it keeps its
// hole-skipping writeTo unexported, golang.org/issue/22735), so this is
// what keeps a sparse entry's holes off the disk, and long runs of zeros
// in any file with them.
type spillFile struct {
	f       *os.File
	pend    []byte // bytes not yet written, from pendOff
	pendOff int64
	end     int64 // logical size: where the next byte goes
	max     int64 // limit on end; 0 means none
}

func newSpillFile(f *os.File, max int64) *spillFile {
	return &spillFile{f: f, pend: make([]byte, 0, spillBuffer+holeBlock), max: max}
}

// reserve checks that n more bytes keep the file within its limit, before
// any of them is read.
func (s *spillFile) reserve(n int64) error {
	if s.max > 0 && n > s.max-s.end {
		return fmt.Errorf("%w: its %d bytes (a sparse file counts in full) would take the temporary file to %d bytes, past its limit of %d", ErrTempMax, n, s.end+n, s.max)
	}
	return nil
}

// Write appends p, leaving out the aligned blocks of zeros it completes.
func (s *spillFile) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		k := min(len(p), holeBlock-int(s.end%holeBlock))
		s.pend = append(s.pend, p[:k]...)
		s.end += int64(k)
		p = p[k:]
		if s.end%holeBlock != 0 {
			continue
		}
		// pend starts at a block boundary, so its last holeBlock bytes
		// are the block just completed.
		if blk := s.pend[len(s.pend)-holeBlock:]; isZero(blk) {
			s.pend = s.pend[:len(s.pend)-holeBlock]
			if err := s.flush(); err != nil {
				return 0, err
			}
			s.pendOff = s.end
		} else if len(s.pend) >= spillBuffer {
			if err := s.flush(); err != nil {
				return 0, err
			}
		}
	}
	return n, nil
}

func (s *spillFile) flush() error {
	if len(s.pend) > 0 {
		if _, err := s.f.WriteAt(s.pend, s.pendOff); err != nil {
			return fmt.Errorf("casync: encode tar: write temporary file: %w", err)
		}
	}
	s.pendOff += int64(len(s.pend))
	s.pend = s.pend[:0]
	return nil
}

// finish writes what is pending and gives the file its logical size, so
// that a trailing hole reads back as zeros.
func (s *spillFile) finish() error {
	if err := s.flush(); err != nil {
		return err
	}
	if err := s.f.Truncate(s.end); err != nil {
		return fmt.Errorf("casync: encode tar: size temporary file: %w", err)
	}
	return nil
}

var zeroBlock [holeBlock]byte

func isZero(b []byte) bool { return bytes.Equal(b, zeroBlock[:len(b)]) }
