package agent

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
	"github.com/bootfs/bootfs/internal/testenv"
)

// testImage is a tree chunked into a local store, with its index and TOC.
type testImage struct {
	store      string
	idx        *casync.Index
	toc        *casync.TOC
	index, tcb []byte
}

// buildImage encodes src into a store in a new directory.
func buildImage(t testing.TB, src string) *testImage {
	t.Helper()
	ctx := context.Background()
	var buf bytes.Buffer
	if err := casync.EncodeDir(ctx, &buf, src, nil); err != nil {
		t.Fatalf("EncodeDir(%s): %v", src, err)
	}
	im := &testImage{store: filepath.Join(t.TempDir(), "store")}
	local, err := chunkstore.NewLocal(im.store, chunkstore.LocalOptions{Create: true, NoSync: true})
	if err != nil {
		t.Fatalf("NewLocal: %v", err)
	}
	size := casync.ChunkSize{Min: 4 << 10, Avg: 16 << 10, Max: 64 << 10}
	im.idx, err = casync.BuildIndex(ctx, bytes.NewReader(buf.Bytes()), casync.CatarFeatureFlags(casync.SHA512_256), casync.ChunkOptions{Size: size}, func(c casync.Chunk) error {
		return local.StoreChunk(ctx, c.ID, c.Data)
	})
	if err != nil {
		t.Fatalf("BuildIndex: %v", err)
	}
	var ib bytes.Buffer
	if _, err := im.idx.WriteTo(&ib); err != nil {
		t.Fatal(err)
	}
	im.index = ib.Bytes()
	if im.toc, err = casync.BuildTOC(bytes.NewReader(buf.Bytes())); err != nil {
		t.Fatalf("BuildTOC: %v", err)
	}
	if im.tcb, err = im.toc.MarshalBinary(); err != nil {
		t.Fatal(err)
	}
	return im
}

// requireMounts skips t unless it may mount FUSE and overlay filesystems.
func requireMounts(t testing.TB) {
	t.Helper()
	testenv.RequireRoot(t)
	if _, err := os.Stat("/dev/fuse"); err != nil {
		testenv.Skip(t, "no /dev/fuse: "+err.Error())
	}
}

// writeTree writes files (path → content) under dir.
func writeTree(t testing.TB, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// dialPacket connects to the agent's socket.
func dialPacket(sock string) (net.Conn, error) { return net.Dial("unixpacket", sock) }
