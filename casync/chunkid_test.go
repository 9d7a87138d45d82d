package casync

import (
	"errors"
	"testing"
)

// TestVerifyChunkAnyDigest: AnyDigest accepts a chunk under either
// digest, in either order (it remembers the last one that matched), and
// still rejects wrong content; the named digests stay strict.
func TestVerifyChunkAnyDigest(t *testing.T) {
	data := []byte("one chunk of content")
	ids := map[Digest]ChunkID{SHA512_256: SHA512_256.Sum(data), SHA256: SHA256.Sum(data)}
	for _, order := range [][]Digest{{SHA256, SHA512_256, SHA256}, {SHA512_256, SHA512_256, SHA256}} {
		for _, d := range order {
			if err := VerifyChunk(AnyDigest, ids[d], data); err != nil {
				t.Errorf("VerifyChunk(AnyDigest, %s ID) = %v, want nil", d, err)
			}
		}
	}
	var ce *ChecksumError
	for d, id := range ids {
		if err := VerifyChunk(AnyDigest, id, []byte("other content")); !errors.As(err, &ce) || ce.Want != id {
			t.Errorf("VerifyChunk(AnyDigest, %s ID of other content) = %v, want a ChecksumError for that ID", d, err)
		}
	}
	if err := VerifyChunk(SHA512_256, ids[SHA256], data); !errors.As(err, &ce) {
		t.Errorf("VerifyChunk(SHA512_256, SHA-256 ID) = %v, want a ChecksumError", err)
	}
	if err := VerifyChunk(SHA256, ids[SHA512_256], data); !errors.As(err, &ce) {
		t.Errorf("VerifyChunk(SHA256, SHA-512/256 ID) = %v, want a ChecksumError", err)
	}
	if _, err := ParseDigest("any"); err == nil {
		t.Error(`ParseDigest("any") succeeded: AnyDigest must never make IDs`)
	}
}
