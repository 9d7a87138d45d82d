package sshstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/bootfs/bootfs/casync"
)

// ErrProtocol is wrapped by errors about malformed or unexpected casync
// protocol messages, from either side.
var ErrProtocol = errors.New("sshstore: casync protocol error")

// Message types of casync's remote protocol (src/caprotocol.h). Every
// message starts with a 16-byte header: le64 size (header included), le64
// type.
const (
	msgHello      uint64 = 0x3c71d0948ca5fbee
	msgIndex      uint64 = 0xb32a91dd2b3e27f8
	msgIndexEOF   uint64 = 0x4f0932f1043718f5
	msgArchive    uint64 = 0x95d6428a69eddcc5
	msgArchiveEOF uint64 = 0x450bef663f24cbad
	msgRequest    uint64 = 0x8ab427e0f89d9210
	msgChunk      uint64 = 0x5213dd180a84bc8c
	msgMissing    uint64 = 0xd010f9fac82b7b6c
	msgGoodbye    uint64 = 0xad205dbf1a3686c3
	msgAbort      uint64 = 0xe7d9136b7efea352
)

// HELLO feature flags: services a side provides and operations it wants.
const (
	featReadableStore   uint64 = 0x1
	featWritableStore   uint64 = 0x2
	featReadableIndex   uint64 = 0x4
	featWritableIndex   uint64 = 0x8
	featReadableArchive uint64 = 0x10
	featWritableArchive uint64 = 0x20
	featPullChunks      uint64 = 0x40
	featPullIndex       uint64 = 0x80
	featPullArchive     uint64 = 0x100
	featPushChunks      uint64 = 0x200
	featPushIndex       uint64 = 0x400
	featPushIndexChunks uint64 = 0x800
	featPushArchive     uint64 = 0x1000
	featMax             uint64 = 0x1fff

	featOperations = featPullChunks | featPullIndex | featPullArchive |
		featPushChunks | featPushIndex | featPushArchive
)

const (
	// requestHighPriority is the only REQUEST flag.
	requestHighPriority uint64 = 1
	// chunkCompressed marks a CHUNK payload as a compressed frame (zstd
	// for every casync built since 2017, and desync) rather than raw bytes.
	chunkCompressed uint64 = 1
)

const (
	headerSize   = 16
	helloSize    = headerSize + 8
	requestFixed = headerSize + 8          // header, flags; then IDs
	chunkFixed   = headerSize + 8 + idSize // header, flags, ID; then data
	missingSize  = headerSize + idSize     // header, ID
	abortFixed   = headerSize + 8          // header, errno; then reason
	idSize       = 32                      // len(casync.ChunkID{})
	maxMessage   = 16 << 20                // CA_PROTOCOL_SIZE_MAX
	maxAbortErr  = 1<<31 - 1               // errno must fit an int32
	growStep     = 64 << 10                // see readFull
	maxRequestID = (maxMessage - requestFixed) / idSize
)

var _ [idSize]byte = casync.ChunkID{}

// message is one decoded protocol message. Which fields are set depends on
// typ: flags for HELLO, REQUEST and CHUNK; ids for REQUEST; id for CHUNK
// and MISSING; data for CHUNK and INDEX; errno and reason for ABORT.
type message struct {
	typ    uint64
	flags  uint64
	id     casync.ChunkID
	ids    []casync.ChunkID
	data   []byte
	errno  uint64
	reason string
}

// typeName names a message type for error messages.
func typeName(t uint64) string {
	switch t {
	case msgHello:
		return "HELLO"
	case msgIndex:
		return "INDEX"
	case msgIndexEOF:
		return "INDEX_EOF"
	case msgArchive:
		return "ARCHIVE"
	case msgArchiveEOF:
		return "ARCHIVE_EOF"
	case msgRequest:
		return "REQUEST"
	case msgChunk:
		return "CHUNK"
	case msgMissing:
		return "MISSING"
	case msgGoodbye:
		return "GOODBYE"
	case msgAbort:
		return "ABORT"
	}
	return fmt.Sprintf("unknown type %#016x", t)
}

// readMessage reads and validates one message with the same rules as
// casync's validate_* functions. It returns io.EOF only for a clean end of
// stream between messages. ARCHIVE messages are well-formed but
// unsupported here (this store only exchanges chunks and indexes) and are
// reported as errors wrapping ErrProtocol.
func readMessage(r io.Reader) (message, error) {
	var hdr [headerSize]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		if err == io.ErrUnexpectedEOF {
			return message{}, fmt.Errorf("%w: truncated message header", ErrProtocol)
		}
		return message{}, err
	}
	size := binary.LittleEndian.Uint64(hdr[0:8])
	m := message{typ: binary.LittleEndian.Uint64(hdr[8:16])}
	if size < headerSize || size > maxMessage {
		return m, fmt.Errorf("%w: %s message size %d out of range [%d, %d]", ErrProtocol, typeName(m.typ), size, headerSize, maxMessage)
	}
	if err := checkSize(m.typ, size); err != nil {
		return m, err
	}
	body, err := readFull(r, int(size-headerSize))
	if err != nil {
		return m, fmt.Errorf("%w: %s message of %d bytes: %v", ErrProtocol, typeName(m.typ), size, err)
	}
	return m, m.decode(body)
}

// checkSize rejects a size that cannot be valid for typ before the body is
// read, so that a bad header never makes the reader wait for or allocate a
// body it will refuse.
func checkSize(typ, size uint64) error {
	bad := false
	switch typ {
	case msgHello:
		bad = size != helloSize
	case msgRequest:
		bad = size < requestFixed+idSize || (size-requestFixed)%idSize != 0
	case msgChunk:
		bad = size < chunkFixed+1
	case msgMissing:
		bad = size != missingSize
	case msgGoodbye, msgIndexEOF, msgArchiveEOF:
		bad = size != headerSize
	case msgAbort:
		bad = size < abortFixed+1
	case msgIndex, msgArchive:
		bad = size < headerSize+1
	default:
		return fmt.Errorf("%w: %s message", ErrProtocol, typeName(typ))
	}
	if bad {
		return fmt.Errorf("%w: %s message has invalid size %d", ErrProtocol, typeName(typ), size)
	}
	return nil
}

// readFull reads n bytes, growing the buffer as data arrives rather than
// trusting a peer's size field with one large allocation up front.
func readFull(r io.Reader, n int) ([]byte, error) {
	buf := make([]byte, 0, min(n, growStep))
	for len(buf) < n {
		if len(buf) == cap(buf) {
			buf = append(buf, make([]byte, min(n-len(buf), cap(buf)))...)[:len(buf)]
		}
		k, err := io.ReadFull(r, buf[len(buf):min(cap(buf), n)])
		buf = buf[:len(buf)+k]
		if err != nil {
			if err == io.EOF || err == io.ErrUnexpectedEOF {
				return nil, fmt.Errorf("truncated: have %d of %d body bytes", len(buf), n)
			}
			return nil, err
		}
	}
	return buf, nil
}

// decode fills m from the body that follows its header.
func (m *message) decode(b []byte) error {
	switch m.typ {
	case msgHello:
		m.flags = binary.LittleEndian.Uint64(b)
		if m.flags == 0 || m.flags&^featMax != 0 {
			return fmt.Errorf("%w: HELLO with feature flags %#x (want non-zero, within %#x)", ErrProtocol, m.flags, featMax)
		}
	case msgRequest:
		m.flags = binary.LittleEndian.Uint64(b)
		if m.flags&^requestHighPriority != 0 {
			return fmt.Errorf("%w: REQUEST with unknown flags %#x", ErrProtocol, m.flags)
		}
		b = b[8:]
		m.ids = make([]casync.ChunkID, len(b)/idSize)
		for i := range m.ids {
			copy(m.ids[i][:], b[i*idSize:])
		}
	case msgChunk:
		m.flags = binary.LittleEndian.Uint64(b)
		if m.flags&^chunkCompressed != 0 {
			return fmt.Errorf("%w: CHUNK with unknown flags %#x", ErrProtocol, m.flags)
		}
		copy(m.id[:], b[8:])
		m.data = b[8+idSize:]
	case msgMissing:
		copy(m.id[:], b)
	case msgAbort:
		m.errno = binary.LittleEndian.Uint64(b)
		if m.errno >= maxAbortErr {
			return fmt.Errorf("%w: ABORT with errno %d", ErrProtocol, m.errno)
		}
		r := b[8:]
		if r[len(r)-1] != 0 {
			return fmt.Errorf("%w: ABORT reason is not NUL-terminated", ErrProtocol)
		}
		r = r[:len(r)-1]
		for i, c := range r {
			if c < ' ' {
				return fmt.Errorf("%w: ABORT reason has control byte %#x at %d", ErrProtocol, c, i)
			}
		}
		m.reason = string(r)
	case msgIndex:
		m.data = b
	case msgGoodbye, msgIndexEOF:
	default:
		return fmt.Errorf("%w: %s message is not supported by a chunk store session", ErrProtocol, typeName(m.typ))
	}
	return nil
}

func appendHeader(dst []byte, size int, typ uint64) []byte {
	dst = binary.LittleEndian.AppendUint64(dst, uint64(size))
	return binary.LittleEndian.AppendUint64(dst, typ)
}

func appendHello(dst []byte, flags uint64) []byte {
	dst = appendHeader(dst, helloSize, msgHello)
	return binary.LittleEndian.AppendUint64(dst, flags)
}

// appendRequest appends one REQUEST for ids, which must number between 1
// and maxRequestID.
func appendRequest(dst []byte, flags uint64, ids []casync.ChunkID) []byte {
	dst = appendHeader(dst, requestFixed+len(ids)*idSize, msgRequest)
	dst = binary.LittleEndian.AppendUint64(dst, flags)
	for _, id := range ids {
		dst = append(dst, id[:]...)
	}
	return dst
}

// appendChunkHeader appends everything of a CHUNK message but its n bytes
// of data, so a large payload can be written without copying it.
func appendChunkHeader(dst []byte, flags uint64, id casync.ChunkID, n int) []byte {
	dst = appendHeader(dst, chunkFixed+n, msgChunk)
	dst = binary.LittleEndian.AppendUint64(dst, flags)
	return append(dst, id[:]...)
}

func appendMissing(dst []byte, id casync.ChunkID) []byte {
	dst = appendHeader(dst, missingSize, msgMissing)
	return append(dst, id[:]...)
}

// appendIndex appends an INDEX message carrying the next bytes of an
// index file; data must not be empty.
func appendIndex(dst []byte, data []byte) []byte {
	dst = appendHeader(dst, headerSize+len(data), msgIndex)
	return append(dst, data...)
}

func appendIndexEOF(dst []byte) []byte {
	return appendHeader(dst, headerSize, msgIndexEOF)
}

func appendGoodbye(dst []byte) []byte {
	return appendHeader(dst, headerSize, msgGoodbye)
}

// appendAbort appends an ABORT with errno and reason; bytes of reason that
// casync would refuse (control characters) become '?'.
func appendAbort(dst []byte, errno uint64, reason string) []byte {
	r := []byte(reason)
	for i, c := range r {
		if c < ' ' {
			r[i] = '?'
		}
	}
	dst = appendHeader(dst, abortFixed+len(r)+1, msgAbort)
	dst = binary.LittleEndian.AppendUint64(dst, errno)
	dst = append(dst, r...)
	return append(dst, 0)
}

// appendMessage encodes m; it is the inverse of readMessage for the types
// readMessage accepts.
func appendMessage(dst []byte, m message) []byte {
	switch m.typ {
	case msgHello:
		return appendHello(dst, m.flags)
	case msgRequest:
		return appendRequest(dst, m.flags, m.ids)
	case msgChunk:
		return append(appendChunkHeader(dst, m.flags, m.id, len(m.data)), m.data...)
	case msgMissing:
		return appendMissing(dst, m.id)
	case msgAbort:
		return appendAbort(dst, m.errno, m.reason)
	case msgIndex:
		return appendIndex(dst, m.data)
	case msgIndexEOF:
		return appendIndexEOF(dst)
	}
	return appendGoodbye(dst)
}

// Linux errno values, which casync puts in ABORT messages.
const (
	errnoENOENT  = 2
	errnoEIO     = 5
	errnoEACCES  = 13
	errnoEFBIG   = 27
	errnoEBADE   = 52
	errnoEBADMSG = 74
)
