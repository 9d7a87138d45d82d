package boot

import (
	"log/slog"

	"github.com/bootfs/bootfs/internal/copytree"
)

// isEmptyDir reports whether dir is a directory with no entries.
func isEmptyDir(dir string) bool { return copytree.IsEmptyDir(dir) }

// copyTree copies the tree at src into the existing directory dst, as
// Docker fills an empty volume from the image (see copytree.Copy).
func copyTree(src, dst string, log *slog.Logger) error { return copytree.Copy(src, dst, log) }
