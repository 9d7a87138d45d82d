package chunkstore

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/bootfs/bootfs/casync"
)

// FrameStore is a Store that holds chunks as casync chunk frames (zstd, the
// .cacnk format) and hands them out as stored, without recompressing them.
// Servers use it to pass frames through.
type FrameStore interface {
	Store
	// GetFrame returns the stored frame of id after checking that it
	// decompresses to data that hashes to id. Errors are as for GetChunk.
	GetFrame(ctx context.Context, id casync.ChunkID) ([]byte, error)
}

// FrameWriteStore is a WriteStore that takes chunk frames as they come
// over the wire.
type FrameWriteStore interface {
	WriteStore
	// StoreFrame stores frame under id after checking that it
	// decompresses to data that hashes to id; a frame that does not gives
	// an error wrapping *casync.ChecksumError and stores nothing.
	StoreFrame(ctx context.Context, id casync.ChunkID, frame []byte) error
}

// maxFrameSize bounds a compressed chunk file or HTTP body: a frame of
// MaxChunkSize incompressible bytes, plus zstd's block and frame headers.
const maxFrameSize = casync.MaxChunkSize + casync.MaxChunkSize/64 + 1<<10

// scratch holds reusable buffers for frames that are decompressed only to
// be verified.
var scratch = sync.Pool{New: func() any { b := make([]byte, 0, 256<<10); return &b }}

// corruptError reports a frame that does not decompress: there is no
// content to hash, so Got is the digest of the frame bytes themselves.
func corruptError(d casync.Digest, id casync.ChunkID, frame []byte, cause error) error {
	return fmt.Errorf("%w (%w)", &casync.ChecksumError{Want: id, Got: d.Sum(frame)}, cause)
}

// decodeFrame decompresses frame, appending to dst, and verifies it
// against id. Every failure wraps *casync.ChecksumError, so callers treat
// an undecodable frame and a wrong one alike.
func decodeFrame(dst []byte, d casync.Digest, id casync.ChunkID, frame []byte) ([]byte, error) {
	data, err := casync.DecompressChunk(dst, frame)
	if err != nil {
		return nil, corruptError(d, id, frame, err)
	}
	if err := casync.VerifyChunk(d, id, data[len(dst):]); err != nil {
		return nil, err
	}
	return data, nil
}

// VerifyFrame checks that frame decompresses to data that hashes to id
// under d, without keeping the data. Every failure wraps
// *casync.ChecksumError.
func VerifyFrame(d casync.Digest, id casync.ChunkID, frame []byte) error {
	bp := scratch.Get().(*[]byte)
	data, err := casync.DecompressChunk((*bp)[:0], frame)
	if err != nil {
		scratch.Put(bp)
		return corruptError(d, id, frame, err)
	}
	err = casync.VerifyChunk(d, id, data)
	if cap(data) <= 4<<20 {
		*bp = data[:0]
		scratch.Put(bp)
	}
	return err
}

// isCorrupt reports whether err is about a chunk that failed verification.
func isCorrupt(err error) bool {
	var ce *casync.ChecksumError
	return errors.As(err, &ce)
}

// ctxErr returns ctx's error wrapped with what was being done, or nil.
func ctxErr(ctx context.Context, op string, id casync.ChunkID) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s chunk %s: %w", op, id, err)
	}
	return nil
}

// StoreFrame stores the compressed chunk frame under id in ws: with
// ws.StoreFrame if ws is a FrameWriteStore, else decompressed through
// ws.StoreChunk. Either verifies it; a frame that does not decompress
// gives an error wrapping *casync.ChecksumError (d names its digest).
func StoreFrame(ctx context.Context, ws WriteStore, d casync.Digest, id casync.ChunkID, frame []byte) error {
	if fws, ok := ws.(FrameWriteStore); ok {
		return fws.StoreFrame(ctx, id, frame)
	}
	data, err := casync.DecompressChunk(nil, frame)
	if err != nil {
		return corruptError(d, id, frame, err)
	}
	return ws.StoreChunk(ctx, id, data)
}
