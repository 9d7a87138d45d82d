package agent

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"

	"github.com/bootfs/bootfs/internal/bootconfig"
)

// Limits on what the agent reads of a container: enough for an image of
// hundreds of gigabytes (an index entry is 40 bytes per 64 KiB chunk), and
// a bound on what one container can make the agent hold.
const (
	maxConfig = 16 << 20
	maxIndex  = 256 << 20
	maxTOC    = 256 << 20
)

// readInRoot reads the regular file p of the tree whose root is root,
// resolving every component inside it (a symlink or ".." planted in the
// container never leads out of it), and fails if the file is larger than
// limit.
func readInRoot(root int, p string, limit int64) ([]byte, error) {
	// O_PATH first: opening a device or FIFO the container put there
	// could block or act; only a regular file is opened for reading.
	pfd, err := resolve(root, p, unix.O_PATH)
	if err != nil {
		return nil, fmt.Errorf("open %s in the container: %w", p, err)
	}
	defer unix.Close(pfd)
	var st unix.Stat_t
	if err := unix.Fstat(pfd, &st); err != nil {
		return nil, fmt.Errorf("stat %s in the container: %w", p, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, fmt.Errorf("%s in the container is not a regular file (mode %#o)", p, st.Mode)
	}
	if st.Size > limit {
		return nil, fmt.Errorf("%s in the container has %d bytes, more than the agent reads (%d)", p, st.Size, limit)
	}
	f, err := os.Open(fmt.Sprintf("/proc/self/fd/%d", pfd))
	if err != nil {
		return nil, fmt.Errorf("open %s in the container: %w", p, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read %s in the container: %w", p, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s in the container grew past %d bytes as it was read", p, limit)
	}
	return b, nil
}

// imageFiles are what a boot image carries for the agent.
type imageFiles struct {
	cfg        *bootconfig.Config
	index, toc []byte
}

// readImage reads and checks the config, index and TOC of the boot image
// whose root is root: the index and TOC must be those the config records.
func readImage(root int) (*imageFiles, error) {
	b, err := readInRoot(root, bootconfig.Path, maxConfig)
	if err != nil {
		return nil, fmt.Errorf("%w (is this an image that mkimage converted?)", err)
	}
	cfg, err := bootconfig.Load(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", bootconfig.Path, err)
	}
	im := &imageFiles{cfg: cfg}
	for _, f := range []struct {
		path  string
		limit int64
		want  bootconfig.Blob
		out   *[]byte
	}{
		{bootconfig.IndexPath, maxIndex, cfg.Index, &im.index},
		{bootconfig.TOCPath, maxTOC, cfg.TOC, &im.toc},
	} {
		b, err := readInRoot(root, f.path, f.limit)
		if err != nil {
			return nil, err
		}
		sum := sha256.Sum256(b)
		if got := "sha256:" + hex.EncodeToString(sum[:]); got != f.want.Digest || int64(len(b)) != f.want.Size {
			return nil, fmt.Errorf("%s is %s (%d bytes), the config says %s (%d bytes)", f.path, got, len(b), f.want.Digest, f.want.Size)
		}
		*f.out = b
	}
	return im, nil
}
