package registry

import (
	"encoding/json"
	"fmt"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/bootfs/bootfs/casync"
)

// Media types of what this package puts in a registry.
const (
	// MediaTypeChunkMap is the chunk map: the keep-alive manifest's config.
	MediaTypeChunkMap = "application/vnd.bootfs.chunkmap.v1+json"
	// MediaTypePack is a pack of chunk frames: the keep-alive manifest's layers.
	MediaTypePack = "application/vnd.bootfs.chunkpack.v1"
	// ArtifactType marks a keep-alive manifest.
	ArtifactType = "application/vnd.bootfs.chunks.v1"
)

// maxMapSize bounds a chunk map: 64 MiB is about 600 000 chunks, 40 GB
// of image at the default chunk size.
const maxMapSize = 64 << 20

// maxFrame bounds one chunk frame in a pack: MaxChunkSize incompressible
// bytes and zstd's headers.
const maxFrame = casync.MaxChunkSize + casync.MaxChunkSize/64 + 1<<10

// chunkMap is where each chunk of one image is: in which pack, at which
// offset, how long its frame is.
type chunkMap struct {
	MediaType string     `json:"mediaType"`
	Digest    string     `json:"digest"` // the chunk ID hash, casync's name
	Packs     []pack     `json:"packs"`
	Chunks    []mapEntry `json:"chunks"`
}

type pack struct {
	Digest v1.Hash `json:"digest"`
	Size   int64   `json:"size"`
}

// mapEntry is encoded as [hex id, pack index, offset, size] to keep maps
// small: they are read once per node for every image.
type mapEntry struct {
	ID   casync.ChunkID
	Pack int
	Off  int64
	Size int64
}

func (e mapEntry) MarshalJSON() ([]byte, error) {
	return json.Marshal([]any{e.ID.String(), e.Pack, e.Off, e.Size})
}

func (e *mapEntry) UnmarshalJSON(b []byte) error {
	var raw []json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil || len(raw) != 4 {
		return fmt.Errorf("chunk entry %s: want [id, pack, offset, size]", b)
	}
	var id string
	if err := json.Unmarshal(raw[0], &id); err != nil {
		return fmt.Errorf("chunk entry %s: %v", b, err)
	}
	var err error
	if e.ID, err = casync.ParseChunkID(id); err != nil {
		return err
	}
	for i, p := range []any{&e.Pack, &e.Off, &e.Size} {
		if err := json.Unmarshal(raw[i+1], p); err != nil {
			return fmt.Errorf("chunk entry %s: field %d: %v", b, i+2, err)
		}
	}
	return nil
}

// parseChunkMap decodes and checks a chunk map: every entry inside a
// pack it names, every frame of a plausible size.
func parseChunkMap(b []byte) (*chunkMap, error) {
	var m chunkMap
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("chunk map: %w", err)
	}
	if m.MediaType != MediaTypeChunkMap {
		return nil, fmt.Errorf("chunk map: media type %q, want %q", m.MediaType, MediaTypeChunkMap)
	}
	for i, p := range m.Packs {
		if p.Digest.Algorithm != "sha256" || len(p.Digest.Hex) != 64 || p.Size <= 0 {
			return nil, fmt.Errorf("chunk map: pack %d: bad descriptor %s (%d bytes)", i, p.Digest, p.Size)
		}
	}
	for _, e := range m.Chunks {
		if e.Pack < 0 || e.Pack >= len(m.Packs) {
			return nil, fmt.Errorf("chunk map: chunk %s: pack %d of %d", e.ID, e.Pack, len(m.Packs))
		}
		if e.Size <= 0 || e.Size > maxFrame || e.Off < 0 || e.Off+e.Size > m.Packs[e.Pack].Size {
			return nil, fmt.Errorf("chunk map: chunk %s: bytes %d+%d do not fit pack %s of %d bytes", e.ID, e.Off, e.Size, m.Packs[e.Pack].Digest, m.Packs[e.Pack].Size)
		}
	}
	return &m, nil
}
