package casync

import (
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"fmt"
	"sync/atomic"
)

// ChunkID identifies a chunk by the digest of its uncompressed bytes.
type ChunkID [32]byte

// String returns the lower-case hex form used in store paths.
func (id ChunkID) String() string { return hex.EncodeToString(id[:]) }

// ParseChunkID parses the 64-character hex form of a chunk ID.
func ParseChunkID(s string) (ChunkID, error) {
	var id ChunkID
	if len(s) != 2*len(id) {
		return id, fmt.Errorf("%w: chunk id %q: want %d hex digits, have %d", ErrFormat, s, 2*len(id), len(s))
	}
	if _, err := hex.Decode(id[:], []byte(s)); err != nil {
		return id, fmt.Errorf("%w: chunk id %q: %v", ErrFormat, s, err)
	}
	return id, nil
}

// Digest is the hash that turns chunk bytes into a ChunkID.
type Digest int

const (
	// SHA512_256 is casync's default chunk digest.
	SHA512_256 Digest = iota
	// SHA256 is selected by casync's --digest=sha256.
	SHA256
	// AnyDigest accepts, in VerifyChunk, content that hashes to its ID
	// under either digest. A chunk store's server or maintenance tool
	// needs it: a store shared by images made with either digest holds
	// chunks of both, and without their index nothing tells which digest
	// an ID was made with. Two 256-bit digests cannot both be wrong in a
	// way that matches, so this is as safe as either. It never makes
	// IDs: Sum gives SHA-512/256's, for error messages.
	AnyDigest
)

// lastMatch is the digest that AnyDigest last found a chunk to match,
// which it tries first: a store mostly holds chunks of one kind.
var lastMatch atomic.Int32

// Sum returns the ID of data under d.
func (d Digest) Sum(data []byte) ChunkID {
	if d == SHA256 {
		return sha256.Sum256(data)
	}
	return sha512.Sum512_256(data)
}

// String returns the name casync uses for d on its command line, or
// "any" for AnyDigest.
func (d Digest) String() string {
	switch d {
	case SHA256:
		return "sha256"
	case AnyDigest:
		return "any"
	}
	return "sha512-256"
}

// ParseDigest parses a digest name as casync's --digest flag spells it.
func ParseDigest(s string) (Digest, error) {
	switch s {
	case "", "sha512-256":
		return SHA512_256, nil
	case "sha256":
		return SHA256, nil
	}
	return 0, fmt.Errorf("unknown digest %q (want sha512-256 or sha256)", s)
}
