package boot

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bootfs/bootfs/internal/bootconfig"
	"github.com/bootfs/bootfs/internal/inputfile"
	"github.com/bootfs/bootfs/internal/testenv"
)

// TestIssue16Item10HostileFiles checks that config.json, and the index
// and TOC it names, are refused at once, naming them, when they are a
// FIFO, a device or not the size the config says (lazyfs's own test does
// the index and TOC of boot mount): a FIFO hung boot beyond SIGTERM, and
// /dev/zero fed it until the OOM killer came.
func TestIssue16Item10HostileFiles(t *testing.T) {
	dir := t.TempDir()
	fifo := testenv.FIFO(t)
	index, toc := filepath.Join(dir, "rootfs.caidx"), filepath.Join(dir, "rootfs.toc")
	for _, tc := range []struct {
		name, config string
		want         error
	}{
		{"config FIFO", fifo, inputfile.ErrNotRegular},
		{"config dev zero", "/dev/zero", inputfile.ErrNotRegular},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := testenv.Within(t, "loadConfig of "+tc.name, func() error {
				_, err := loadConfig(InitOptions{Config: tc.config, Index: index, TOC: toc})
				return err
			})
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.config) {
				t.Errorf("loadConfig(%s) = %v, want %v naming it", tc.config, err, tc.want)
			}
		})
	}
	t.Run("config names a FIFO", func(t *testing.T) {
		err := testenv.Within(t, "checkBlob of a FIFO", func() error {
			return checkBlob(fifo, bootconfig.Blob{Digest: "sha256:" + strings.Repeat("0", 64), Size: 100})
		})
		if !errors.Is(err, inputfile.ErrNotRegular) || !strings.Contains(err.Error(), fifo) {
			t.Errorf("checkBlob(%s) = %v, want ErrNotRegular naming it", fifo, err)
		}
	})
	t.Run("bigger than the config says", func(t *testing.T) {
		big := filepath.Join(dir, "big")
		if err := os.WriteFile(big, make([]byte, 101), 0o644); err != nil {
			t.Fatal(err)
		}
		err := checkBlob(big, bootconfig.Blob{Digest: "sha256:" + strings.Repeat("0", 64), Size: 100})
		if !errors.Is(err, inputfile.ErrTooLarge) || !strings.Contains(err.Error(), big) {
			t.Errorf("checkBlob(%s) = %v, want ErrTooLarge naming it", big, err)
		}
	})
}
