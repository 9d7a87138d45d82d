package agent

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/bootfs/bootfs/boot/lazyfs"
	"github.com/bootfs/bootfs/chunkstore"
)

// TestDetachedMounts: a FUSE mount made with fsopen and served on its
// /dev/fuse fd, under an overlay given by fds, reads the image's files and
// takes writes in the upper; closing the fds ends the server.
func TestDetachedMounts(t *testing.T) {
	requireMounts(t)
	src := t.TempDir()
	writeTree(t, src, map[string]string{"etc/hello": "hello\n", "data/big": string(make([]byte, 3<<20))})
	im := buildImage(t, src)
	store, err := chunkstore.NewLocal(im.store, chunkstore.LocalOptions{Digest: im.idx.Digest()})
	if err != nil {
		t.Fatal(err)
	}
	r := lazyfs.NewReader(im.idx, store, lazyfs.ReaderOptions{})
	defer r.Close()
	fsys, err := lazyfs.NewFS(im.toc, r, lazyfs.FSOptions{AllowSuidDev: true})
	if err != nil {
		t.Fatal(err)
	}
	fm, err := newFuseMount(fsys, "bootfs-test")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := fsys.NewFDServer(fm.dev)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { srv.Serve(); close(served) }()
	tmp, err := newTmpfs()
	if err != nil {
		t.Fatal(err)
	}
	ovl, err := newOverlay(fm.mnt, tmp)
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(tmp)
	unix.Close(fm.mnt)
	dir := t.TempDir()
	if err := unix.MoveMount(ovl, "", unix.AT_FDCWD, dir, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		t.Fatal(err)
	}
	unix.Close(ovl)
	got, err := os.ReadFile(filepath.Join(dir, "etc/hello"))
	if err != nil || string(got) != "hello\n" {
		t.Errorf("read etc/hello = %q, %v", got, err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "data/big")); err != nil || len(b) != 3<<20 {
		t.Errorf("read data/big: %d bytes, %v", len(b), err)
	}
	if err := os.WriteFile(filepath.Join(dir, "etc/new"), []byte("x"), 0o644); err != nil {
		t.Errorf("write into the overlay: %v", err)
	}
	if err := unix.Unmount(dir, 0); err != nil {
		t.Fatal(err)
	}
	<-served
}
