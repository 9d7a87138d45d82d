package registry_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
	"github.com/bootfs/bootfs/chunkstore/opener"
	"github.com/bootfs/bootfs/chunkstore/registry"
	"github.com/bootfs/bootfs/chunkstore/storetest"
	"github.com/bootfs/bootfs/internal/registrytest"
)

var repoN atomic.Int64

// newRepo returns the URL of a repository nobody wrote to yet.
func newRepo(r *registrytest.Registry) string {
	return fmt.Sprintf("oci://%s/test/repo%d", r.Host, repoN.Add(1))
}

func open(t *testing.T, url string, o registry.Options) *registry.Store {
	t.Helper()
	s, err := registry.New(context.Background(), url, o)
	if err != nil {
		t.Fatalf("New(%s) = %v", url, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// commit stores cs in a new repository of r and commits them; it
// returns the repository and the URL that pins their map.
func commit(t *testing.T, r *registrytest.Registry, o registry.Options, cs []storetest.Chunk) (repo, pinned string) {
	t.Helper()
	repo = newRepo(r)
	o.Write = true
	w := open(t, repo, o)
	ids := make([]casync.ChunkID, len(cs))
	for i, c := range cs {
		if err := w.StoreChunk(context.Background(), c.ID, c.Data); err != nil {
			t.Fatal(err)
		}
		ids[i] = c.ID
	}
	pinned, err := w.Commit(context.Background(), ids)
	if err != nil {
		t.Fatalf("Commit = %v", err)
	}
	return repo, pinned
}

func TestConformance(t *testing.T) {
	r := registrytest.Start(t, registrytest.Config{})
	// Small packs, so that the suite's chunks span several.
	o := registry.Options{PackSize: 256 << 10, TempDir: t.TempDir()}
	t.Run("Write", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T) chunkstore.WriteStore {
			wo := o
			wo.Write = true
			return open(t, newRepo(r), wo)
		})
	})
	t.Run("Pinned", func(t *testing.T) {
		storetest.RunReadOnly(t, func(t *testing.T, cs []storetest.Chunk) chunkstore.Store {
			_, pinned := commit(t, r, o, cs)
			return open(t, pinned, o)
		})
	})
	t.Run("Repository", func(t *testing.T) {
		storetest.RunReadOnly(t, func(t *testing.T, cs []storetest.Chunk) chunkstore.Store {
			repo, _ := commit(t, r, o, cs)
			return open(t, repo, o)
		})
	})
	t.Run("Opener", func(t *testing.T) {
		storetest.RunReadOnly(t, func(t *testing.T, cs []storetest.Chunk) chunkstore.Store {
			_, pinned := commit(t, r, o, cs)
			s, err := opener.Open(context.Background(), pinned+",/nonexistent/store", opener.Options{Registry: o})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return s.Store
		})
	})
}

// TestDedup: a second commit to the repository uploads only the chunks
// it did not hold, and its map still names every chunk of its image.
func TestDedup(t *testing.T) {
	r := registrytest.Start(t, registrytest.Config{})
	o := registry.Options{PackSize: 256 << 10, TempDir: t.TempDir(), Write: true}
	base := storetest.Chunks(10, 40)
	more := append(append([]storetest.Chunk(nil), base[:30]...), storetest.Chunks(11, 10)...)
	repo, _ := commit(t, r, o, base)
	r.ResetLog()

	w := open(t, repo, o)
	ids := make([]casync.ChunkID, len(more))
	for i, c := range more {
		ids[i] = c.ID
	}
	has, err := w.HasChunks(context.Background(), ids)
	if err != nil {
		t.Fatal(err)
	}
	inBase := map[casync.ChunkID]bool{}
	for _, c := range base {
		inBase[c.ID] = true
	}
	var missing, want int
	for i, c := range more {
		if !inBase[c.ID] {
			want++
		}
		if !has[i] {
			missing++
			if err := w.StoreChunk(context.Background(), c.ID, c.Data); err != nil {
				t.Fatal(err)
			}
		}
	}
	if missing != want {
		t.Errorf("HasChunks: %d of the second image's chunks missing, want the %d new ones", missing, want)
	}
	pinned, err := w.Commit(context.Background(), ids)
	if err != nil {
		t.Fatal(err)
	}
	uploads := strings.Count(r.Log(), `"PUT /v2/test/`)
	// The new chunks' packs, the map, the keep-alive manifest.
	if uploads > 4 {
		t.Errorf("second commit made %d PUTs, want at most 4 (packs of 10 new chunks, map, manifest):\n%s", uploads, r.Log())
	}
	rs := open(t, pinned, registry.Options{})
	for _, c := range more {
		got, err := rs.GetChunk(context.Background(), c.ID)
		if err != nil || string(got) != string(c.Data) {
			t.Fatalf("GetChunk(%s) = %d bytes, %v", c.ID, len(got), err)
		}
	}
	if ok, _ := rs.HasChunk(context.Background(), base[35].ID); ok {
		t.Errorf("the pinned map of the second image has a chunk only the first has")
	}
}

// TestDamagedPack: a pack whose bytes changed in the registry's storage
// gives a checksum error, and a missing one ErrNotFound; never bytes.
func TestDamagedPack(t *testing.T) {
	r := registrytest.Start(t, registrytest.Config{})
	cs := storetest.Chunks(12, 8)
	_, pinned := commit(t, r, registry.Options{TempDir: t.TempDir()}, cs)
	// The packs are the blobs that are zstd frames.
	var packs []string
	for _, p := range registryBlobs(t, r) {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.HasPrefix(b, []byte{0x28, 0xb5, 0x2f, 0xfd}) {
			packs = append(packs, p)
		}
	}
	if len(packs) == 0 {
		t.Fatal("no pack blobs in the registry's storage")
	}
	s := open(t, pinned, registry.Options{})
	if _, err := s.GetChunk(context.Background(), cs[0].ID); err != nil {
		t.Fatal(err)
	}
	for _, p := range packs {
		b, _ := os.ReadFile(p)
		for i := range b {
			b[i] ^= 0x55
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var ce *casync.ChecksumError
	for _, c := range cs[1:] {
		data, err := s.GetChunk(context.Background(), c.ID)
		if !errors.As(err, &ce) {
			t.Fatalf("GetChunk(%s) of a damaged pack = %d bytes, %v; want a ChecksumError", c.ID, len(data), err)
		}
	}
	for _, p := range packs {
		os.Remove(p)
	}
	s2 := open(t, pinned, registry.Options{})
	if data, err := s2.GetChunk(context.Background(), cs[0].ID); !errors.Is(err, chunkstore.ErrNotFound) {
		t.Fatalf("GetChunk after the packs were removed = %d bytes, %v; want ErrNotFound", len(data), err)
	}
}

func registryBlobs(t *testing.T, r *registrytest.Registry) []string {
	t.Helper()
	var out []string
	root := r.Storage + "/docker/registry/v2/blobs/sha256"
	dirs, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range dirs {
		subs, _ := os.ReadDir(root + "/" + d.Name())
		for _, s := range subs {
			out = append(out, root+"/"+d.Name()+"/"+s.Name()+"/data")
		}
	}
	return out
}
