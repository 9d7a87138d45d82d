package mkimage

import (
	"context"
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"

	"github.com/bootfs/bootfs/chunkstore"
)

func defaultJobs() int { return runtime.GOMAXPROCS(0) }

// openWriteStore opens the store that chunks are written to.
//
// Chunk IDs are computed here from the very bytes that are stored, so the
// stores skip checking them again (TrustWrites); every reader verifies.
//
// A local store is written without an fsync per chunk; instead
// syncStore flushes the whole file system once, after the last chunk and
// before the index that refers to the chunks is written. A crash before
// that leaves no index that names an unsynced chunk.
func openWriteStore(ctx context.Context, spec string, opts Options) (chunkstore.WriteStore, error) {
	s, err := chunkstore.Open(ctx, spec, chunkstore.Options{
		Digest: opts.Digest,
		Local:  chunkstore.LocalOptions{Create: true, NoSync: true, TrustWrites: true},
		HTTP:   chunkstore.HTTPOptions{TrustWrites: true, Token: opts.StoreToken, CAFile: opts.StoreCAFile},
		Logger: opts.Log,
	})
	if err != nil {
		return nil, err
	}
	ws, ok := s.(chunkstore.WriteStore)
	if !ok {
		s.Close()
		return nil, fmt.Errorf("store %s cannot be written to", spec)
	}
	return ws, nil
}

// syncStore makes the chunks written to a local store durable.
func syncStore(s chunkstore.WriteStore) error {
	l, ok := s.(*chunkstore.Local)
	if !ok {
		return nil
	}
	f, err := os.Open(l.Dir())
	if err != nil {
		return fmt.Errorf("sync store %s: %w", l.Dir(), err)
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("sync store %s: %w", l.Dir(), err)
	}
	return nil
}
