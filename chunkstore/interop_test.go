package chunkstore_test

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"math/rand/v2"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/folbricht/desync"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
	"github.com/bootfs/bootfs/chunkstore/storetest"
	"github.com/bootfs/bootfs/internal/testenv"
)

// casyncStore makes a small tree and chunks it with the real casync into a
// store. It returns the tree, the store directory and the caidx.
func casyncStore(t *testing.T) (tree, store, index string) {
	t.Helper()
	bin := testenv.LookPath(t, "casync")
	dir := t.TempDir()
	tree = filepath.Join(dir, "tree")
	store = filepath.Join(dir, "store")
	index = filepath.Join(dir, "x.caidx")
	r := rand.New(rand.NewPCG(7, 7))
	big := make([]byte, 3<<20)
	for i := range big {
		big[i] = byte(r.Uint32())
	}
	files := map[string][]byte{
		"big":             big,
		"small":           []byte("hello\n"),
		"sub/text":        bytes.Repeat([]byte("compressible text "), 50000),
		"sub/deeper/last": big[:100000],
	}
	for name, data := range files {
		p := filepath.Join(tree, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(bin, "make", "--store="+store, index, tree)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("casync make: %v\n%s", err, out)
	}
	return tree, store, index
}

// sameFiles checks that the regular files under want are in got, equal.
func sameFiles(t *testing.T, want, got string) {
	t.Helper()
	n := 0
	err := filepath.WalkDir(want, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		rel, _ := filepath.Rel(want, p)
		a, _ := os.ReadFile(p)
		b, err := os.ReadFile(filepath.Join(got, rel))
		if err != nil || !bytes.Equal(a, b) {
			t.Errorf("%s: extracted copy differs (%v)", rel, err)
		}
		n++
		return nil
	})
	if err != nil || n == 0 {
		t.Fatalf("compare trees: %d files, %v", n, err)
	}
}

func storeIDs(t *testing.T, dir string) []casync.ChunkID {
	t.Helper()
	l, err := chunkstore.NewLocal(dir, chunkstore.LocalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var ids []casync.ChunkID
	if err := l.Walk(context.Background(), func(ci chunkstore.ChunkInfo) error {
		ids = append(ids, ci.ID)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(ids) < 5 {
		t.Fatalf("store %s has %d chunks, want several", dir, len(ids))
	}
	return ids
}

// TestCasyncExtractFromOurServer: casync extract through our HTTP server
// reproduces the tree.
func TestCasyncExtractFromOurServer(t *testing.T) {
	tree, store, index := casyncStore(t)
	l, err := chunkstore.NewLocal(store, chunkstore.LocalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	served := chunkstore.NewCounted(l) // as chunkstore serve counts it
	srv := httptest.NewServer(chunkstore.NewHTTPHandler(served, chunkstore.HandlerOptions{}))
	defer srv.Close()
	out := filepath.Join(t.TempDir(), "out")
	cmd := exec.Command("casync", "extract", "--store="+srv.URL+"/", index, out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("casync extract --store=%s/: %v\n%s", srv.URL, err, b)
	}
	sameFiles(t, tree, out)
	if st := served.Stats(); st.Hits == 0 {
		t.Errorf("server store Stats = %+v, want hits", st)
	}
}

// TestLocalReadsCasyncStore: our Local reads every chunk casync wrote.
func TestLocalReadsCasyncStore(t *testing.T) {
	_, store, _ := casyncStore(t)
	l, err := chunkstore.NewLocal(store, chunkstore.LocalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range storeIDs(t, store) {
		data, err := l.GetChunk(context.Background(), id)
		if err != nil {
			t.Fatalf("GetChunk(%s) = %v", id, err)
		}
		if casync.SHA512_256.Sum(data) != id {
			t.Fatalf("GetChunk(%s) returned other data", id)
		}
	}
	sum, err := chunkstore.Verify(context.Background(), store, false, chunkstore.MaintenanceOptions{})
	if err != nil || sum.Bad != 0 || sum.Chunks == 0 {
		t.Errorf("Verify(casync store) = %+v, %v; want all good", sum, err)
	}
}

// TestDesyncClientReadsOurServer: desync's HTTP client reads our server.
func TestDesyncClientReadsOurServer(t *testing.T) {
	_, store, _ := casyncStore(t)
	l, err := chunkstore.NewLocal(store, chunkstore.LocalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(chunkstore.NewHTTPHandler(l, chunkstore.HandlerOptions{WriteToken: "tok"}))
	defer srv.Close()
	u, _ := url.Parse(srv.URL + "/")
	opts := desync.NewStoreOptionsWithDefaults()
	opts.HTTPAuth = "Bearer tok"
	d, err := desync.NewRemoteHTTPStore(u, opts)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range storeIDs(t, store) {
		c, err := d.GetChunk(desync.ChunkID(id))
		if err != nil {
			t.Fatalf("desync GetChunk(%s) = %v", id, err)
		}
		if _, err := c.Data(); err != nil {
			t.Fatal(err)
		}
	}
	if ok, err := d.HasChunk(desync.ChunkID(casync.SHA512_256.Sum(nil))); ok || err != nil {
		t.Errorf("desync HasChunk(missing) = %v, %v; want false, nil", ok, err)
	}
	// desync can write through our server, and we read what it wrote.
	c := storetest.Chunks(30, 1)[0]
	if err := d.StoreChunk(desync.NewChunk(c.Data)); err != nil {
		t.Fatalf("desync StoreChunk = %v", err)
	}
	if got, err := l.GetChunk(context.Background(), c.ID); err != nil || !bytes.Equal(got, c.Data) {
		t.Errorf("GetChunk(chunk desync stored) = %v", err)
	}
}

// TestOurClientReadsDesyncServer: our client reads desync's chunk server
// over a desync local store, and desync reads what we store.
func TestOurClientReadsDesyncServer(t *testing.T) {
	_, store, _ := casyncStore(t)
	ds, err := desync.NewLocalStore(store, desync.NewStoreOptionsWithDefaults())
	if err != nil {
		t.Fatal(err)
	}
	conv, _ := desync.NewStoreOptionsWithDefaults().StorageConverters()
	srv := httptest.NewServer(desync.NewHTTPHandler(ds, true, false, conv, ""))
	defer srv.Close()
	client, err := chunkstore.NewHTTP(srv.URL, chunkstore.HTTPOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range storeIDs(t, store) {
		if _, err := client.GetChunk(context.Background(), id); err != nil {
			t.Fatalf("GetChunk(%s) from desync = %v", id, err)
		}
	}
	if _, err := client.GetChunk(context.Background(), casync.SHA512_256.Sum(nil)); !errors.Is(err, chunkstore.ErrNotFound) {
		t.Errorf("GetChunk(missing) from desync = %v, want ErrNotFound", err)
	}
	c := storetest.Chunks(31, 1)[0]
	if err := client.StoreChunk(context.Background(), c.ID, c.Data); err != nil {
		t.Fatalf("StoreChunk to desync = %v", err)
	}
	dc, err := ds.GetChunk(desync.ChunkID(c.ID))
	if err != nil {
		t.Fatalf("desync GetChunk(our chunk) = %v", err)
	}
	if got, _ := dc.Data(); !bytes.Equal(got, c.Data) {
		t.Error("desync read other data for our chunk")
	}
}
