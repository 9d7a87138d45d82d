// Package atomicfile writes a file through a temporary file in the same
// directory and a rename, so readers never see half of it. boot and
// boot/lazyfs both write their reports this way; it depends on the
// standard library only.
package atomicfile

import (
	"os"
	"path/filepath"
)

// WriteFile writes data to name, mode 0644, atomically: a temporary file
// beside name is written, closed and renamed over it. On failure the
// temporary file is removed and name is left as it was.
func WriteFile(name string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(name), "."+filepath.Base(name)+".*")
	if err != nil {
		return err
	}
	_, err = tmp.Write(data)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp.Name(), 0o644)
	}
	if err == nil {
		err = os.Rename(tmp.Name(), name)
	}
	if err != nil {
		os.Remove(tmp.Name())
	}
	return err
}
