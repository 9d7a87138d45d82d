package chunkstore

import (
	"context"
	"fmt"

	"golang.org/x/sys/unix"
)

// Local reports true: the store is a directory of this machine.
func (s *Local) Local() bool { return true }

// Sync makes every chunk written to the store durable with one syncfs of
// its file system: a writer that set NoSync calls it once, after the last
// chunk and before it writes the index that refers to the chunks.
func (s *Local) Sync(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("sync store %s: %w", s.dir, err)
	}
	fd, err := unix.Open(s.dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("sync store %s: %w", s.dir, err)
	}
	defer unix.Close(fd)
	if err := unix.Syncfs(fd); err != nil {
		return fmt.Errorf("sync store %s: %w", s.dir, err)
	}
	return nil
}
