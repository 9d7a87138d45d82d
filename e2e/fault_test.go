package e2e

import (
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bootfs/bootfs/casync"
)

// TestCorruptChunk: a chunk altered in the store gives EIO for the file
// that needs it, never its wrong bytes, and the container goes on: other
// files and commands work.
func TestCorruptChunk(t *testing.T) {
	e := setup(t)
	tree := filepath.Join(e.tmp, "bb-big")
	if err := os.CopyFS(tree, os.DirFS(filepath.Join(e.tmp, "bb"))); err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 1<<20)
	rand.Read(big)
	if err := os.WriteFile(filepath.Join(tree, "big.bin"), big, 0o644); err != nil {
		t.Fatal(err)
	}
	orig, boot := e.prefix+"/bbbig:orig", e.prefix+"/bbbig:boot"
	if err := dockerImport(tree, orig, `CMD ["/bin/sh"]`); err != nil {
		t.Fatal(err)
	}
	// Its own store and server, so the corruption stays here.
	store := filepath.Join(e.tmp, "store-corrupt")
	url, err := serveStore(e.bin, store)
	if err != nil {
		t.Fatal(err)
	}
	index := filepath.Join(e.tmp, "big.caidx")
	se := *e
	se.storeURL = url
	if _, err := se.convert(orig, boot, store, "--index-out", index); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(index)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := casync.ReadIndex(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	// big.bin sorts first ("big.bin" < "bin"), so its payload starts the
	// archive: the chunk at 512 KiB lies inside it.
	id := idx.Chunks[idx.ChunkAt(512<<10)].ID.String()
	chunk := filepath.Join(store, id[:4], id+".cacnk")
	frame, err := os.ReadFile(chunk)
	if err != nil {
		t.Fatal(err)
	}
	for i := len(frame) / 2; i < len(frame)/2+16 && i < len(frame); i++ {
		frame[i] ^= 0xff
	}
	if err := os.WriteFile(chunk, frame, 0o644); err != nil {
		t.Fatal(err)
	}

	got := e.run(t, true, []string{"-e", "BOOTFS_CACHE=none"}, boot, "sh", "-c",
		`cat /big.bin > /tmp/copy; echo cat=$?; head -c 4096 /big.bin | md5sum; md5sum /bin/busybox | cut -c1-32; echo done`)
	lines := strings.Split(strings.TrimSpace(got.stdout), "\n")
	want := e.run(t, false, nil, orig, "sh", "-c", `head -c 4096 /big.bin | md5sum; md5sum /bin/busybox | cut -c1-32`)
	if got.code != 0 || len(lines) != 4 || lines[0] == "cat=0" || strings.Join(lines[1:3], "\n") != strings.TrimSpace(want.stdout) || lines[3] != "done" {
		t.Errorf("with a corrupt chunk: exit %d, stdout:\n%s\nwant cat to fail, then\n%s\ndone\nstderr: %s", got.code, got.stdout, want.stdout, got.stderr)
	}
	t.Logf("run with a corrupt chunk took %v", got.took)
	if !strings.Contains(got.stderr, id) || !strings.Contains(got.stderr, "Input/output error") {
		t.Errorf("stderr names neither the chunk %s nor EIO:\n%s", id, got.stderr)
	}
}
