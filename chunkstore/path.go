package chunkstore

import (
	"fmt"
	"path/filepath"

	"github.com/bootfs/bootfs/casync"
)

// chunkExt is the file extension of a compressed chunk in casync's layout.
const chunkExt = ".cacnk"

// ChunkPath returns the slash-separated path of id inside a store in
// casync's layout: "<first 4 hex>/<64 hex>.cacnk".
func ChunkPath(id casync.ChunkID) string {
	var b [4 + 1 + 64 + len(chunkExt)]byte
	s := id.String()
	copy(b[:], s[:4])
	b[4] = '/'
	copy(b[5:], s)
	copy(b[5+64:], chunkExt)
	return string(b[:])
}

// ParseChunkPath is the inverse of ChunkPath. It accepts exactly
// "<4 hex>/<64 hex>.cacnk" in lower case, where the 4 hex digits are the
// first four of the id, and nothing else: no leading slash, no dot
// segments, no upper case, no other extension.
func ParseChunkPath(p string) (casync.ChunkID, error) {
	var id casync.ChunkID
	if len(p) != 5+64+len(chunkExt) || p[4] != '/' || p[5+64:] != chunkExt {
		return id, fmt.Errorf("%w: chunk path %q: want <4 hex>/<64 hex>%s", ErrBadPath, p, chunkExt)
	}
	name := p[5 : 5+64]
	if !isLowerHex(name) || p[:4] != name[:4] {
		return id, fmt.Errorf("%w: chunk path %q: want <4 hex>/<64 hex>%s with the directory the first 4 digits of the id", ErrBadPath, p, chunkExt)
	}
	id, err := casync.ParseChunkID(name)
	if err != nil {
		return id, fmt.Errorf("%w: chunk path %q: %v", ErrBadPath, p, err)
	}
	return id, nil
}

// parseChunkName parses a file name "<64 hex>.cacnk" as found in a store's
// prefix directory. Temporary files and anything else give ok == false.
func parseChunkName(name string) (id casync.ChunkID, ok bool) {
	if len(name) != 64+len(chunkExt) || name[64:] != chunkExt || !isLowerHex(name[:64]) {
		return id, false
	}
	id, err := casync.ParseChunkID(name[:64])
	return id, err == nil
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// chunkFile returns the local file name of id in the store at dir.
func chunkFile(dir string, id casync.ChunkID) string {
	return filepath.Join(dir, filepath.FromSlash(ChunkPath(id)))
}
