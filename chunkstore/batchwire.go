package chunkstore

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/bootfs/bootfs/casync"
)

// The batch read of the HTTP server (POST /batch), on the wire:
//
//	request  = id{n}                      n binary 32-byte chunk IDs, 1 <= n <= BatchChunks
//	reply    = record* end
//	record   = id[32] status[1] length[4] payload[length]
//	end      = zero[32] 0xff count[4]      count: the records before it
//
// Lengths and counts are big-endian. A record's status says what its
// payload is:
//
//	0 found   the chunk's frame (zstd, .cacnk), as a GET would answer it
//	1 missing empty: the store does not have the chunk
//	2 failed  a short message: the server could not serve the chunk
//	          (corrupt in its store, an I/O error); asking again may help
//
// The server answers each chunk asked for at most once, in any order, and
// may end the reply before it has answered them all (it stops after
// about BatchBytes of frames): the client asks again for the rest. The
// client verifies every frame against the ID of its record, and treats
// a record it did not ask for, a repeated one, a bad status or length and
// a reply cut short as a broken reply: the chunks it has not had by then
// fail, and it never passes on bytes it has not verified.

// Statuses of a batch record.
const (
	batchFound   = 0
	batchMissing = 1
	batchFailed  = 2
	batchEnd     = 0xff
)

const (
	batchHeaderLen = 32 + 1 + 4
	// batchMaxMessage bounds the payload of a failed record.
	batchMaxMessage = 1 << 10
	// batchMaxRequest bounds a request body.
	batchMaxRequest = BatchChunks * 32
)

// BatchHeader is the response header with which the chunkstore server
// says, on every answer, which extensions it speaks: "batch" for POST
// /batch. A client learns it from its first reply; a server without it
// (desync, casync over a plain web server) gets plain GETs.
const BatchHeader = "Bootfs-Chunkstore"

// batchPath is the path of the batch read.
const batchPath = "/batch"

// ErrBadBatch is wrapped by errors about a batch request or reply that
// breaks the protocol.
var ErrBadBatch = errors.New("chunkstore: malformed batch")

// appendBatchRequest appends the request body for ids to dst.
func appendBatchRequest(dst []byte, ids []casync.ChunkID) []byte {
	for _, id := range ids {
		dst = append(dst, id[:]...)
	}
	return dst
}

// parseBatchRequest returns the chunk IDs of a batch request body.
func parseBatchRequest(body []byte) ([]casync.ChunkID, error) {
	switch {
	case len(body) == 0:
		return nil, fmt.Errorf("%w: an empty request (want 1 to %d chunk IDs of 32 bytes each)", ErrBadBatch, BatchChunks)
	case len(body)%32 != 0:
		return nil, fmt.Errorf("%w: a request of %d bytes is not a whole number of 32-byte chunk IDs", ErrBadBatch, len(body))
	case len(body) > batchMaxRequest:
		return nil, fmt.Errorf("%w: %d chunk IDs in one request, more than %d", ErrBadBatch, len(body)/32, BatchChunks)
	}
	ids := make([]casync.ChunkID, len(body)/32)
	for i := range ids {
		copy(ids[i][:], body[32*i:])
	}
	return ids, nil
}

// appendBatchRecord appends the header of a record of id to dst.
func appendBatchRecord(dst []byte, id casync.ChunkID, status byte, length int) []byte {
	dst = append(dst, id[:]...)
	dst = append(dst, status)
	return binary.BigEndian.AppendUint32(dst, uint32(length))
}

// appendBatchEnd appends the end record of a reply of count records.
func appendBatchEnd(dst []byte, count int) []byte {
	return appendBatchRecord(dst, casync.ChunkID{}, batchEnd, count)
}

// batchFailure is the error of a chunk the server said it could not serve.
type batchFailure struct{ msg string }

func (e *batchFailure) Error() string { return "the server could not serve it: " + e.msg }

// readBatch reads a batch reply to a request for ids (which hold no
// repeats) from r, verifying each frame under d, and calls fn for each
// chunk answered, with its position in ids. Data and frame are nil
// unless err is; err wraps ErrNotFound for a missing chunk, a
// *casync.ChecksumError for a frame that is not the chunk's, or a
// *batchFailure. Data and frame are reused after fn returns. readBatch
// returns how many chunks the reply answered, and an error wrapping
// ErrBadBatch (or the reader's error) if the reply broke off or broke the
// protocol; the chunks answered before that stand.
func readBatch(r io.Reader, d casync.Digest, ids []casync.ChunkID, fn func(k int, data, frame []byte, err error)) (int, error) {
	at := make(map[casync.ChunkID]int, len(ids))
	for k, id := range ids {
		at[id] = k
	}
	seen := make([]bool, len(ids))
	br := bufio.NewReaderSize(r, 64<<10)
	var head [batchHeaderLen]byte
	var frame, data []byte
	n := 0
	for {
		if _, err := io.ReadFull(br, head[:]); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return n, fmt.Errorf("%w: the reply ended after %d of %d chunks, without its end record", ErrBadBatch, n, len(ids))
			}
			return n, err
		}
		var id casync.ChunkID
		copy(id[:], head[:32])
		status, length := head[32], binary.BigEndian.Uint32(head[33:])
		if status == batchEnd {
			if id != (casync.ChunkID{}) || int64(length) != int64(n) {
				return n, fmt.Errorf("%w: an end record that counts %d chunks after %d", ErrBadBatch, length, n)
			}
			return n, nil
		}
		k, ok := at[id]
		switch {
		case !ok:
			return n, fmt.Errorf("%w: a record of chunk %s, which was not asked for", ErrBadBatch, id)
		case seen[k]:
			return n, fmt.Errorf("%w: chunk %s answered twice", ErrBadBatch, id)
		case status == batchFound && length > maxFrameSize:
			return n, fmt.Errorf("%w: a frame of %d bytes for chunk %s, larger than any chunk frame", ErrBadBatch, length, id)
		case status == batchMissing && length != 0:
			return n, fmt.Errorf("%w: a missing chunk %s with a payload of %d bytes", ErrBadBatch, id, length)
		case status == batchFailed && length > batchMaxMessage:
			return n, fmt.Errorf("%w: a message of %d bytes for chunk %s", ErrBadBatch, length, id)
		case status != batchFound && status != batchMissing && status != batchFailed:
			return n, fmt.Errorf("%w: status %d for chunk %s", ErrBadBatch, status, id)
		}
		if cap(frame) < int(length) {
			frame = make([]byte, length)
		}
		frame = frame[:length]
		if _, err := io.ReadFull(br, frame); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return n, fmt.Errorf("%w: the reply ended inside the record of chunk %s", ErrBadBatch, id)
			}
			return n, err
		}
		seen[k] = true
		n++
		switch status {
		case batchFound:
			var err error
			data, err = decodeFrame(data[:0], d, id, frame)
			if err != nil {
				fn(k, nil, nil, err)
				continue
			}
			fn(k, data, frame, nil)
		case batchMissing:
			fn(k, nil, nil, ErrNotFound)
		case batchFailed:
			fn(k, nil, nil, &batchFailure{msg: string(sanitize(frame))})
		}
	}
}

// sanitize makes a message from the server printable.
func sanitize(b []byte) []byte {
	out := make([]byte, 0, len(b))
	for _, c := range b {
		if c < ' ' || c > '~' {
			c = '?'
		}
		out = append(out, c)
	}
	return out
}
