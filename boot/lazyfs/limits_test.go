package lazyfs

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/internal/inputfile"
	"github.com/bootfs/bootfs/internal/testenv"
)

// TestIssue16Item10HostileFiles checks that the index and the TOC an image
// is opened with are refused at once, naming them, when they are a FIFO,
// a device, a symlink or larger than they can be (boot's own test does
// config.json):
// `boot mount --toc /dev/zero` was killed by the OOM killer at 24 GB, and
// a FIFO hung it.
func TestIssue16Item10HostileFiles(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	os.MkdirAll(src, 0o755)
	os.WriteFile(filepath.Join(src, "f"), []byte("data"), 0o644)
	im := buildImage(t, src, smallChunks)

	fifo := testenv.FIFO(t)
	// Sparse files one byte over each limit: they cost no disk.
	bigTOC := filepath.Join(dir, "big.toc")
	bigIndex := filepath.Join(dir, "big.caidx")
	for name, size := range map[string]int64{bigTOC: casync.MaxTOCSize(int64(im.idx.Length())) + 1, bigIndex: maxIndexSize + 1} {
		f, err := os.Create(name)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Truncate(size); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	link := filepath.Join(dir, "link.toc")
	if err := os.Symlink(im.toc, link); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name, index, toc string
		want             error
		file             string // the file the error names
	}{
		{"TOC FIFO", im.index, fifo, inputfile.ErrNotRegular, fifo},
		{"TOC too large", im.index, bigTOC, inputfile.ErrTooLarge, bigTOC},
		{"TOC symlink", im.index, link, inputfile.ErrNotRegular, link},
		{"index FIFO", fifo, im.toc, inputfile.ErrNotRegular, fifo},
		{"index too large", bigIndex, im.toc, inputfile.ErrTooLarge, bigIndex},
		{"index dev zero", "/dev/zero", im.toc, inputfile.ErrNotRegular, "/dev/zero"},
		{"TOC dev zero", im.index, "/dev/zero", inputfile.ErrNotRegular, "/dev/zero"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := testenv.Within(t, "OpenImage of "+tc.name, func() error {
				got, err := OpenImage(context.Background(), tc.index, ImageOptions{Open: openStore(im.store, ""), TOC: tc.toc})
				if err == nil {
					got.Close()
				}
				return err
			})
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.file) {
				t.Errorf("OpenImage(%s, --toc %s) = %v, want %v naming %s", tc.index, tc.toc, err, tc.want, tc.file)
			}
		})
	}

}
