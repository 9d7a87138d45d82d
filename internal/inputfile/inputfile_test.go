package inputfile

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bootfs/bootfs/internal/testenv"
)

func TestOpen(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("12345"), 0o644); err != nil {
		t.Fatal(err)
	}
	fifo := testenv.FIFO(t)
	link := filepath.Join(dir, "link")
	if err := os.Symlink("file", link); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, path string
		max        int64
		want       error
		msg        string
	}{
		{"regular", file, 5, nil, ""},
		{"too large", file, 4, ErrTooLarge, "5 bytes, more than the 4"},
		{"fifo", fifo, 1 << 20, ErrNotRegular, "FIFO"},
		{"dev zero", "/dev/zero", 1 << 20, ErrNotRegular, "character device"},
		{"directory", dir, 1 << 20, ErrNotRegular, "directory"},
		{"symlink", link, 1 << 20, ErrNotRegular, "symlink"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b []byte
			err := testenv.Within(t, "ReadFile of "+tc.path, func() (err error) {
				b, err = ReadFile(tc.path, tc.max)
				return err
			})
			if tc.want == nil {
				if err != nil || string(b) != "12345" {
					t.Errorf("ReadFile(%q) = %q, %v", tc.path, b, err)
				}
				return
			}
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg) || !strings.Contains(err.Error(), tc.path) {
				t.Errorf("ReadFile(%q) = %v, want %v naming the file and %q", tc.path, err, tc.want, tc.msg)
			}
		})
	}
	f, err := OpenFollow(link, 5)
	if err != nil {
		t.Fatalf("OpenFollow(%q) = %v", link, err)
	}
	f.Close()
}
