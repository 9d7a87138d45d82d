package chunkstore_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
	"github.com/bootfs/bootfs/chunkstore/storetest"
)

func TestLocalCorrupt(t *testing.T) {
	local := newLocal(t)
	l := chunkstore.NewCounted(local) // counted as the opener counts it
	cs := storetest.Chunks(40, 3)
	for _, c := range cs {
		if err := l.StoreChunk(context.Background(), c.ID, c.Data); err != nil {
			t.Fatal(err)
		}
	}
	name := func(c storetest.Chunk) string { return filepath.Join(local.Dir(), chunkstore.ChunkPath(c.ID)) }
	frame2, _ := os.ReadFile(name(cs[2]))
	tests := []struct {
		name    string
		content []byte
	}{
		{"other chunk's frame", frame2},
		{"garbage", []byte("garbage")},
		{"truncated", frame2[:len(frame2)/2]},
		{"empty", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := os.WriteFile(name(cs[0]), tt.content, 0o644); err != nil {
				t.Fatal(err)
			}
			data, err := l.GetChunk(context.Background(), cs[0].ID)
			var ce *casync.ChecksumError
			if !errors.As(err, &ce) || data != nil {
				t.Fatalf("GetChunk(corrupt) = %d bytes, %v; want nil, a ChecksumError", len(data), err)
			}
			if ce.Want != cs[0].ID {
				t.Errorf("ChecksumError.Want = %s, want %s", ce.Want, cs[0].ID)
			}
			if !strings.Contains(err.Error(), name(cs[0])) || !strings.Contains(err.Error(), "verify --repair") {
				t.Errorf("GetChunk error %q does not name the file and the fix", err)
			}
			if _, err := l.GetFrame(context.Background(), cs[0].ID); !errors.As(err, &ce) {
				t.Errorf("GetFrame(corrupt) = %v, want a ChecksumError", err)
			}
		})
	}
	if st := l.Stats(); st.Corrupt != 2*uint64(len(tests)) {
		t.Errorf("Stats().Corrupt = %d, want %d", st.Corrupt, 2*len(tests))
	}
}

func TestLocalLayoutAndTempFiles(t *testing.T) {
	l := newLocal(t)
	c := storetest.Chunks(41, 1)[0]
	if err := l.StoreChunk(context.Background(), c.ID, c.Data); err != nil {
		t.Fatal(err)
	}
	want := filepath.Join(l.Dir(), c.ID.String()[:4], c.ID.String()+".cacnk")
	fi, err := os.Stat(want)
	if err != nil {
		t.Fatalf("chunk not at %s: %v", want, err)
	}
	if fi.Mode().Perm() != 0o644 {
		t.Errorf("chunk mode = %v, want 0644", fi.Mode().Perm())
	}
	// Stray files: temporaries of ours, casync's and desync's, and junk.
	dir := filepath.Dir(want)
	for _, n := range []string{"." + c.ID.String() + ".cacnk.tmp-123", ".#" + c.ID.String() + ".cacnkABC", ".tmp-cacnk123", "README", strings.ToUpper(c.ID.String()) + ".cacnk"} {
		os.WriteFile(filepath.Join(dir, n), []byte("x"), 0o644)
	}
	os.MkdirAll(filepath.Join(l.Dir(), "zzzz"), 0o755)
	var got []casync.ChunkID
	l.Walk(context.Background(), func(ci chunkstore.ChunkInfo) error {
		got = append(got, ci.ID)
		return nil
	})
	if len(got) != 1 || got[0] != c.ID {
		t.Errorf("Walk = %v, want just %s", got, c.ID)
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.Contains(e.Name(), ".tmp-") && !strings.HasSuffix(e.Name(), "123") {
			t.Errorf("temporary file %s left behind", e.Name())
		}
	}
}

func TestNewLocal(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope")
	if _, err := chunkstore.NewLocal(missing, chunkstore.LocalOptions{}); err == nil {
		t.Errorf("NewLocal(missing dir) = nil error")
	}
	if _, err := chunkstore.NewLocal(missing, chunkstore.LocalOptions{Create: true}); err != nil {
		t.Errorf("NewLocal(missing, Create) = %v", err)
	}
	f := filepath.Join(t.TempDir(), "file")
	os.WriteFile(f, nil, 0o644)
	if _, err := chunkstore.NewLocal(f, chunkstore.LocalOptions{}); err == nil {
		t.Errorf("NewLocal(file) = nil error")
	}
}

func TestLocalSHA256(t *testing.T) {
	l, err := chunkstore.NewLocal(t.TempDir(), chunkstore.LocalOptions{Digest: casync.SHA256})
	if err != nil {
		t.Fatal(err)
	}
	data := []byte("sha256 chunk")
	if err := l.StoreChunk(context.Background(), casync.SHA512_256.Sum(data), data); err == nil {
		t.Error("StoreChunk(SHA-512/256 id) in a SHA-256 store = nil error")
	}
	id := casync.SHA256.Sum(data)
	if err := l.StoreChunk(context.Background(), id, data); err != nil {
		t.Fatal(err)
	}
	if got, err := l.GetChunk(context.Background(), id); err != nil || string(got) != string(data) {
		t.Errorf("GetChunk = %q, %v", got, err)
	}
}

// TestCasyncExtractFromOurLocal: a store written by our Local (copied
// chunk by chunk out of casync's) serves casync extract.
func TestCasyncExtractFromOurLocal(t *testing.T) {
	tree, store, index := casyncStore(t)
	src, _ := chunkstore.NewLocal(store, chunkstore.LocalOptions{})
	dst := newLocal(t)
	for _, id := range storeIDs(t, store) {
		data, err := src.GetChunk(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if err := dst.StoreChunk(context.Background(), id, data); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(t.TempDir(), "out")
	if b, err := exec.Command("casync", "extract", "--store="+dst.Dir(), index, out).CombinedOutput(); err != nil {
		t.Fatalf("casync extract from our store: %v\n%s", err, b)
	}
	sameFiles(t, tree, out)
}

// corruptFile replaces id's file in l with the frame of other.
func corruptFile(t *testing.T, l *chunkstore.Local, id, other casync.ChunkID) {
	t.Helper()
	frame, err := os.ReadFile(filepath.Join(l.Dir(), chunkstore.ChunkPath(other)))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(l.Dir(), chunkstore.ChunkPath(id)), frame, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestLocalTrustWrites: a trusting store skips the write check, but a read
// still refuses a chunk whose bytes do not match its ID.
func TestLocalTrustWrites(t *testing.T) {
	ctx := context.Background()
	s, err := chunkstore.NewLocal(t.TempDir(), chunkstore.LocalOptions{TrustWrites: true, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	id := casync.SHA512_256.Sum([]byte("the real content"))
	if err := s.StoreChunk(ctx, id, []byte("other content")); err != nil {
		t.Fatalf("StoreChunk(trusted, wrong data) = %v, want nil", err)
	}
	var ce *casync.ChecksumError
	if _, err := s.GetChunk(ctx, id); !errors.As(err, &ce) {
		t.Errorf("GetChunk(wrongly stored chunk) = %v, want a ChecksumError", err)
	}
}
