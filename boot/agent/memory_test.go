package agent

import (
	"context"
	"errors"
	"path/filepath"
	"runtime/debug"
	"testing"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore/opener"
)

// nopOpener opens no store.
func nopOpener(context.Context, casync.Digest) (*opener.Opened, error) {
	return nil, errors.New("no store in this test")
}

// TestMemoryLimit: the soft limit grows by the per-mount allowance for
// every mount after the first, and by what the images served hold.
func TestMemoryLimit(t *testing.T) {
	const mib = 1 << 20
	tests := []struct {
		name       string
		mounts     int
		imageBytes int64
		want       int64
	}{
		{name: "no mount", want: 56 * mib},
		{name: "one mount", mounts: 1, imageBytes: 2 * mib, want: 58 * mib},
		{name: "eight mounts of one image", mounts: 8, imageBytes: 2 * mib, want: (56 + 28 + 2) * mib},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := memoryLimit(56*mib, tt.mounts, tt.imageBytes); got != tt.want {
				t.Errorf("memoryLimit(56 MiB, %d, %d) = %d, want %d", tt.mounts, tt.imageBytes, got, tt.want)
			}
		})
	}
}

// TestNewSetsMemoryLimit: an agent sets the runtime's soft limit from its
// LRU's size by default, to what --memory-limit says, and leaves it with
// a negative MemoryLimit (GOMEMLIMIT set).
func TestNewSetsMemoryLimit(t *testing.T) {
	orig := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(orig) })
	for _, tt := range []struct {
		name       string
		lru, limit int64
		want       int64
	}{
		{name: "default", want: DefaultMemoryBytes + memoryBase},
		{name: "bigger LRU", lru: 100 << 20, want: 100<<20 + memoryBase},
		{name: "given", limit: 200 << 20, want: 200 << 20},
		{name: "left alone", limit: -1, want: 12345 << 10},
	} {
		t.Run(tt.name, func(t *testing.T) {
			debug.SetMemoryLimit(12345 << 10)
			dir := t.TempDir()
			a, err := New(Options{Open: nopOpener, Cache: filepath.Join(dir, "cache"), SocketDir: dir, MemoryBytes: tt.lru, MemoryLimit: tt.limit})
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			if got := debug.SetMemoryLimit(-1); got != tt.want {
				t.Errorf("soft memory limit = %d, want %d", got, tt.want)
			}
		})
	}
}
