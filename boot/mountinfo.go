package boot

import (
	"io"
	"path"
	"strings"

	"github.com/bootfs/bootfs/internal/mountinfo"
)

// ErrMountInfo is wrapped by errors parsing /proc/self/mountinfo.
var ErrMountInfo = mountinfo.ErrInvalid

// MountInfo is one line of /proc/self/mountinfo (proc(5)).
type MountInfo = mountinfo.Mount

// ParseMountInfo parses the content of /proc/self/mountinfo.
func ParseMountInfo(r io.Reader) ([]MountInfo, error) { return mountinfo.Parse(r) }

// containerMounts returns the mounts Docker made into the container that
// the workload's root must get too: volumes, bind mounts, tmpfs mounts and
// the /etc/hosts, /etc/hostname and /etc/resolv.conf files. It leaves out
// the root, /proc, /dev and /sys and all below them (init mounts those
// itself), and the /.bootfs mounts. The order is mountinfo's.
func containerMounts(mounts []MountInfo) []MountInfo {
	var out []MountInfo
	for _, m := range mounts {
		p := path.Clean(m.Point)
		switch {
		case p == "/", !path.IsAbs(p),
			under(p, "/proc"), under(p, "/dev"), under(p, "/sys"), under(p, "/.bootfs"):
			continue
		}
		m.Point = p
		out = append(out, m)
	}
	return out
}

// under reports whether p is dir or lies below it.
func under(p, dir string) bool {
	return p == dir || strings.HasPrefix(p, dir+"/")
}
