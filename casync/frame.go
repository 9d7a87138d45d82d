package casync

import (
	"errors"
	"fmt"
	"runtime"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// MaxChunkSize bounds the decompressed size of one chunk frame. casync caps
// chunk sizes far below this; the bound keeps a hostile frame from making a
// reader allocate without limit.
const MaxChunkSize = 16 << 20

var (
	encoderOnce sync.Once
	encoder     *zstd.Encoder
	decoderOnce sync.Once
	decoder     *zstd.Decoder
)

func frameEncoder() *zstd.Encoder {
	encoderOnce.Do(func() {
		// EncodeAll takes one of the encoder's block encoders for the
		// whole call, so there must be one per CPU or concurrent
		// compressions (mkimage's uploads) queue behind each other.
		encoder, _ = zstd.NewWriter(nil,
			zstd.WithEncoderLevel(zstd.SpeedDefault),
			zstd.WithEncoderConcurrency(runtime.GOMAXPROCS(0)),
			zstd.WithZeroFrames(true),
			// casync writes no content checksum either; the chunk ID is
			// the checksum.
			zstd.WithEncoderCRC(false))
	})
	return encoder
}

func frameDecoder() *zstd.Decoder {
	decoderOnce.Do(func() {
		decoder, _ = zstd.NewReader(nil,
			zstd.WithDecoderConcurrency(0),
			zstd.WithDecoderMaxMemory(MaxChunkSize),
			zstd.IgnoreChecksum(false))
	})
	return decoder
}

// CompressChunk appends the zstd frame of data to dst and returns it. This is
// the .cacnk wire and disk format of casync and desync.
func CompressChunk(dst, data []byte) []byte {
	return frameEncoder().EncodeAll(data, dst)
}

// DecompressChunk appends the contents of a zstd chunk frame to dst. It
// refuses frames that decode to more than MaxChunkSize bytes.
func DecompressChunk(dst, frame []byte) ([]byte, error) {
	out, err := frameDecoder().DecodeAll(frame, dst)
	if err != nil {
		if errors.Is(err, zstd.ErrDecoderSizeExceeded) || errors.Is(err, zstd.ErrWindowSizeExceeded) {
			return nil, fmt.Errorf("%w: chunk frame decodes to more than %d bytes", ErrFormat, MaxChunkSize)
		}
		return nil, fmt.Errorf("%w: chunk frame: %v", ErrFormat, err)
	}
	if len(out)-len(dst) > MaxChunkSize {
		return nil, fmt.Errorf("%w: chunk frame decodes to more than %d bytes", ErrFormat, MaxChunkSize)
	}
	return out, nil
}

// ChecksumError reports chunk bytes whose digest is not the ID they were
// stored or requested under.
type ChecksumError struct {
	Want, Got ChunkID
}

func (e *ChecksumError) Error() string {
	return fmt.Sprintf("chunk %s: content hashes to %s (corrupt or wrong digest)", e.Want, e.Got)
}

// VerifyChunk checks that data hashes to id under d; under AnyDigest, to
// id under either digest.
func VerifyChunk(d Digest, id ChunkID, data []byte) error {
	if d != AnyDigest {
		if got := d.Sum(data); got != id {
			return &ChecksumError{Want: id, Got: got}
		}
		return nil
	}
	first := Digest(lastMatch.Load())
	got := first.Sum(data)
	if got == id {
		return nil
	}
	other := SHA256
	if first == SHA256 {
		other = SHA512_256
	}
	if other.Sum(data) == id {
		lastMatch.Store(int32(other))
		return nil
	}
	return &ChecksumError{Want: id, Got: got}
}

// DecodeChunk decompresses frame and verifies the result against id.
func DecodeChunk(d Digest, id ChunkID, frame []byte) ([]byte, error) {
	data, err := DecompressChunk(nil, frame)
	if err != nil {
		return nil, fmt.Errorf("chunk %s: %w", id, err)
	}
	if err := VerifyChunk(d, id, data); err != nil {
		return nil, err
	}
	return data, nil
}
