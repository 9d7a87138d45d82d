package chunkstore_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
	"github.com/bootfs/bootfs/chunkstore/storetest"
)

// oddChunks puts, at the chunk paths of cs[0], cs[1] and cs[2] in dir, a
// FIFO, a symbolic link to that chunk's valid frame outside the store,
// and a directory. It unblocks whoever opened the FIFO when the test ends.
func oddChunks(t *testing.T, dir string, cs []storetest.Chunk) {
	t.Helper()
	for _, c := range cs[:3] {
		os.MkdirAll(filepath.Join(dir, chunkstore.ChunkPath(c.ID)[:4]), 0o755)
	}
	fifo := filepath.Join(dir, chunkstore.ChunkPath(cs[0].ID))
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// A reader blocked in open(2) on the FIFO (the bug) returns
		// once a writer opens it.
		if fd, err := syscall.Open(fifo, syscall.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
			syscall.Close(fd)
		}
	})
	outside := filepath.Join(t.TempDir(), "frame")
	if err := os.WriteFile(outside, casync.CompressChunk(nil, cs[1].Data), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(dir, chunkstore.ChunkPath(cs[1].ID))); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, chunkstore.ChunkPath(cs[2].ID)), 0o755); err != nil {
		t.Fatal(err)
	}
}

// TestHTTPNonRegularChunkFileRefused is issue 16 item 7: a FIFO, a link
// or a directory at a chunk's name is refused at once by GET and HEAD
// alike (500, naming the problem), never waited on or followed; 40 GETs
// of the FIFO wedge nothing.
func TestHTTPNonRegularChunkFileRefused(t *testing.T) {
	l := newLocal(t)
	cs := storetest.Chunks(160, 4)
	if err := l.StoreChunk(context.Background(), cs[3].ID, cs[3].Data); err != nil {
		t.Fatal(err)
	}
	oddChunks(t, l.Dir(), cs)
	base := serveReal(t, l, chunkstore.ServerOptions{})
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	fifo := base + "/" + chunkstore.ChunkPath(cs[0].ID)
	errc := make(chan error, 40)
	for range 40 {
		go func() { errc <- wantStatus(client, "GET", fifo, http.StatusInternalServerError) }()
	}
	for range 40 {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	for i, what := range []string{"FIFO", "symbolic link", "directory"} {
		url := base + "/" + chunkstore.ChunkPath(cs[i].ID)
		for _, method := range []string{"GET", "HEAD"} {
			if err := wantStatus(client, method, url, http.StatusInternalServerError); err != nil {
				t.Errorf("%s: %v", what, err)
			}
		}
		if _, err := l.GetChunk(context.Background(), cs[i].ID); !errors.Is(err, chunkstore.ErrNotRegular) || !strings.Contains(err.Error(), what) {
			t.Errorf("GetChunk(%s) = %v, want an error wrapping ErrNotRegular naming a %s", what, err, what)
		}
	}
	if err := wantStatus(client, "GET", base+"/"+chunkstore.ChunkPath(cs[3].ID), http.StatusOK); err != nil {
		t.Error(err)
	}
	// A writer replaces what is not a file with the chunk.
	for _, c := range cs[:2] {
		if err := l.StoreChunk(context.Background(), c.ID, c.Data); err != nil {
			t.Fatalf("StoreChunk over a non-regular file: %v", err)
		}
		if got, err := l.GetChunk(context.Background(), c.ID); err != nil || string(got) != string(c.Data) {
			t.Errorf("GetChunk after StoreChunk over a non-regular file = %d bytes, %v", len(got), err)
		}
	}
}

// wantStatus sends method to url and checks the status within 5 s.
func wantStatus(client *http.Client, method, url string, want int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, method, url, nil)
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %v", method, url, err)
	}
	resp.Body.Close()
	if resp.StatusCode != want {
		return fmt.Errorf("%s %s = %d, want %d", method, url, resp.StatusCode, want)
	}
	return nil
}

// TestCacheNonRegularChunkFileRefetched is issue 16 item 7 for the cache:
// a FIFO, link or directory in the cache directory is never opened for
// reading or followed; the chunk comes from the remote.
func TestCacheNonRegularChunkFileRefetched(t *testing.T) {
	cs := storetest.Chunks(161, 4)
	c := newCache(t, memWith(t, cs), chunkstore.CacheOptions{})
	oddChunks(t, c.Dir(), cs)
	for i, what := range []string{"FIFO", "symbolic link", "directory"} {
		done := make(chan error, 1)
		go func() {
			got, err := c.GetChunk(context.Background(), cs[i].ID)
			if err == nil && string(got) != string(cs[i].Data) {
				err = fmt.Errorf("wrong bytes")
			}
			done <- err
		}()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("GetChunk with a %s in the cache: %v", what, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("GetChunk with a %s in the cache hangs", what)
		}
	}
	// The FIFO and the link were replaced by the fetched chunk.
	for _, id := range []casync.ChunkID{cs[0].ID, cs[1].ID} {
		fi, err := os.Lstat(filepath.Join(c.Dir(), chunkstore.ChunkPath(id)))
		if err != nil || !fi.Mode().IsRegular() {
			t.Errorf("cache file of %s after GetChunk: %v, %v; want a regular file", id, fi.Mode(), err)
		}
	}
}

// TestVerifyReportsNonRegularChunkFiles is issue 16 item 7 for verify:
// FIFOs, links and directories in chunk paths, and a link in place of a
// prefix directory, are bad chunks; repair removes them (a link, never
// its target).
func TestVerifyReportsNonRegularChunkFiles(t *testing.T) {
	l := newLocal(t)
	cs := storetest.Chunks(162, 4)
	if err := l.StoreChunk(context.Background(), cs[3].ID, cs[3].Data); err != nil {
		t.Fatal(err)
	}
	oddChunks(t, l.Dir(), cs)
	elsewhere := t.TempDir()
	os.WriteFile(filepath.Join(elsewhere, "keep"), []byte("x"), 0o644)
	if err := os.Symlink(elsewhere, filepath.Join(l.Dir(), "abcd")); err != nil {
		t.Fatal(err)
	}
	reported := map[string]string{}
	opts := chunkstore.MaintenanceOptions{Report: func(ci chunkstore.ChunkInfo, err error, removed bool) {
		reported[filepath.Base(ci.Path)] = err.Error()
	}}
	sum, err := chunkstore.Verify(context.Background(), l.Dir(), false, opts)
	if err != nil || sum.Bad != 4 || sum.Removed != 0 {
		t.Fatalf("Verify = %+v, %v; want 4 bad (FIFO, link, directory, linked prefix), 0 removed", sum, err)
	}
	for i, what := range []string{"FIFO", "symbolic link", "directory"} {
		if msg := reported[cs[i].ID.String()+".cacnk"]; !strings.Contains(msg, what) {
			t.Errorf("Verify reported %q for the %s, want it named", msg, what)
		}
	}
	if msg := reported["abcd"]; !strings.Contains(msg, "prefix directory") {
		t.Errorf("Verify reported %q for a linked prefix directory", msg)
	}
	sum, err = chunkstore.Verify(context.Background(), l.Dir(), true, opts)
	if err != nil || sum.Bad != 4 || sum.Removed != 4 {
		t.Fatalf("Verify(repair) = %+v, %v; want 4 bad, 4 removed", sum, err)
	}
	if _, err := os.Stat(filepath.Join(elsewhere, "keep")); err != nil {
		t.Errorf("repair removed the target of a link: %v", err)
	}
	sum, err = chunkstore.Verify(context.Background(), l.Dir(), false, chunkstore.MaintenanceOptions{})
	if err != nil || sum.Chunks != 1 || sum.Bad != 0 {
		t.Errorf("Verify after repair = %+v, %v; want 1 good chunk", sum, err)
	}
}
