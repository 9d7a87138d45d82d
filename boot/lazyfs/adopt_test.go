package lazyfs

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bootfs/bootfs/casync"
)

// readFileRaw reads a whole file with system calls only: Go's os.Open
// would register the file with epoll, which a FUSE file answers with a
// POLL request to this very process.
func readFileRaw(name string) ([]byte, error) {
	fd, err := unix.Open(name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	var out []byte
	buf := make([]byte, 256<<10)
	for {
		n, err := unix.Read(fd, buf)
		if err != nil {
			return nil, err
		}
		if n == 0 {
			return out, nil
		}
		out = append(out, buf[:n]...)
	}
}

// TestAdoptServer is a server's death and its successor's takeover in one
// process: the first server answers INIT and then never serves; a request
// is read off the connection and dropped, as a dying server leaves it; a
// second server adopts the connection, has the kernel re-send that
// request, and the reader that waited meanwhile gets the file's bytes.
func TestAdoptServer(t *testing.T) {
	requireFUSE(t)
	src := t.TempDir()
	makeTree(t, src)
	im := buildImage(t, src, casync.ChunkSize{Min: 16 << 10, Avg: 64 << 10, Max: 256 << 10})
	r := NewReader(im.idx, im.localStore(t), ReaderOptions{})
	defer r.Close()
	fsys, err := NewFS(im.tocObj, r, FSOptions{Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("NewFS: %v", err)
	}
	dev, err := unix.Open("/dev/fuse", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open /dev/fuse: %v", err)
	}
	defer unix.Close(dev)
	mnt := t.TempDir()
	opts := fmt.Sprintf("fd=%d,rootmode=40000,user_id=0,group_id=0,allow_other,default_permissions,max_read=%d", dev, maxRead)
	if err := unix.Mount("bootfs", mnt, "fuse.bootfs", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, opts); err != nil {
		t.Fatalf("mount FUSE on %s: %v", mnt, err)
	}
	defer unix.Unmount(mnt, unix.MNT_DETACH)

	_, init, err := fsys.NewInitServer(dev) // the first server: never serves
	if errors.Is(err, ErrNoResend) {
		t.Skipf("this kernel cannot re-send FUSE requests: %v", err)
	}
	if err != nil {
		t.Fatalf("NewInitServer: %v", err)
	}
	type result struct {
		b   []byte
		err error
	}
	got := make(chan result, 1)
	go func() {
		b, err := readFileRaw(filepath.Join(mnt, "big.bin"))
		got <- result{b, err}
	}()
	// The reader's first request (its LOOKUP), read and never answered,
	// into a buffer as /dev/fuse wants it: room for the largest write.
	buf := make([]byte, maxRead+initReadBuffer)
	if _, err := readEINTR(dev, buf); err != nil {
		t.Fatalf("read a request off the connection: %v", err)
	}
	select {
	case res := <-got:
		t.Fatalf("the read returned (%d bytes, %v) with no server", len(res.b), res.err)
	case <-time.After(100 * time.Millisecond):
	}

	srv, err := fsys.AdoptServer(dev, init)
	if err != nil {
		t.Fatalf("AdoptServer: %v", err)
	}
	served := make(chan struct{})
	go func() {
		srv.Serve()
		close(served)
	}()
	if err := Resend(dev); err != nil {
		t.Fatalf("Resend: %v", err)
	}
	res := <-got
	want, err := os.ReadFile(filepath.Join(src, "big.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if res.err != nil || !bytes.Equal(res.b, want) {
		t.Fatalf("read big.bin across the takeover = %d bytes, %v; want its %d bytes", len(res.b), res.err, len(want))
	}
	// And the adopted server answers new requests.
	b, err := readFileRaw(filepath.Join(mnt, "small.txt"))
	if err != nil || string(b) != "hello, bootfs\n" {
		t.Fatalf("read small.txt after the takeover = %q, %v", b, err)
	}
	if err := unix.Unmount(mnt, 0); err != nil {
		t.Fatalf("unmount: %v", err)
	}
	<-served
}

// TestAdoptServerRefuses is what AdoptServer makes of an INIT it cannot
// take over from.
func TestAdoptServerRefuses(t *testing.T) {
	initReq := func(flags, flags2 uint32) []byte {
		b := make([]byte, 40+64)
		put := func(off int, v uint32) {
			b[off], b[off+1], b[off+2], b[off+3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
		}
		put(0, uint32(len(b)))
		put(4, 26) // FUSE_INIT
		put(40, 7)
		put(44, 45)
		put(52, flags)
		put(56, flags2)
		return b
	}
	fsys := &FS{}
	for _, tc := range []struct {
		name string
		init []byte
		want error
	}{
		{"no resend", initReq(1<<30, 0), ErrNoResend},
		{"not an INIT", append([]byte{104, 0, 0, 0, 1, 0, 0, 0}, make([]byte, 96)...), nil},
		{"short", []byte{1, 2, 3}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := fsys.AdoptServer(-1, tc.init)
			if err == nil || (tc.want != nil && !errors.Is(err, tc.want)) {
				t.Fatalf("AdoptServer(%s) = %v, want an error wrapping %v", tc.name, err, tc.want)
			}
		})
	}
}
