package boot

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"path"
	"strconv"
	"strings"
)

// ErrMountInfo is wrapped by errors parsing /proc/self/mountinfo.
var ErrMountInfo = errors.New("boot: bad mountinfo")

// MountInfo is one line of /proc/self/mountinfo (proc(5)).
type MountInfo struct {
	ID, Parent int
	// Root is the path of the mount's root within its filesystem; for a
	// Docker named volume it ends in /volumes/NAME/_data.
	Root string
	// Point is where it is mounted.
	Point string
	// Options are the per-mount options ("rw,relatime").
	Options string
	FSType  string
	Source  string
}

// ReadOnly reports whether the mount is read-only.
func (m MountInfo) ReadOnly() bool {
	for o := range strings.SplitSeq(m.Options, ",") {
		if o == "ro" {
			return true
		}
	}
	return false
}

// IsNamedVolume reports whether the mount looks like a Docker volume
// (named or anonymous) rather than a bind mount of a host path: Docker
// keeps volumes in .../volumes/NAME/_data.
func (m MountInfo) IsNamedVolume() bool {
	dir, file := path.Split(m.Root)
	return file == "_data" && path.Base(path.Dir(path.Clean(dir))) == "volumes"
}

// ParseMountInfo parses the content of /proc/self/mountinfo.
func ParseMountInfo(r io.Reader) ([]MountInfo, error) {
	var out []MountInfo
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if strings.TrimSpace(line) == "" {
			continue
		}
		m, err := parseMountInfoLine(line)
		if err != nil {
			return nil, fmt.Errorf("%w: line %d %q: %v", ErrMountInfo, n, line, err)
		}
		out = append(out, m)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMountInfo, err)
	}
	return out, nil
}

// parseMountInfoLine parses
//
//	36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
func parseMountInfoLine(line string) (MountInfo, error) {
	f := strings.Fields(line)
	sep := -1
	for i := 6; i < len(f); i++ {
		if f[i] == "-" {
			sep = i
			break
		}
	}
	if len(f) < 7 || sep < 0 || len(f) < sep+3 {
		return MountInfo{}, errors.New("want ID PARENT MAJ:MIN ROOT POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS")
	}
	id, err := strconv.Atoi(f[0])
	if err != nil {
		return MountInfo{}, fmt.Errorf("mount ID %q: %v", f[0], err)
	}
	parent, err := strconv.Atoi(f[1])
	if err != nil {
		return MountInfo{}, fmt.Errorf("parent ID %q: %v", f[1], err)
	}
	root, err := unescapeMountPath(f[3])
	if err != nil {
		return MountInfo{}, fmt.Errorf("root: %v", err)
	}
	point, err := unescapeMountPath(f[4])
	if err != nil {
		return MountInfo{}, fmt.Errorf("mount point: %v", err)
	}
	source, err := unescapeMountPath(f[sep+2])
	if err != nil {
		return MountInfo{}, fmt.Errorf("source: %v", err)
	}
	return MountInfo{ID: id, Parent: parent, Root: root, Point: point, Options: f[5], FSType: f[sep+1], Source: source}, nil
}

// unescapeMountPath undoes the kernel's octal escapes (\040 for a space,
// \011, \012, \134).
func unescapeMountPath(s string) (string, error) {
	if !strings.Contains(s, `\`) {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' {
			b.WriteByte(s[i])
			continue
		}
		if i+4 > len(s) {
			return "", fmt.Errorf("%q: truncated escape at byte %d", s, i)
		}
		v, err := strconv.ParseUint(s[i+1:i+4], 8, 8)
		if err != nil {
			return "", fmt.Errorf("%q: bad escape at byte %d", s, i)
		}
		b.WriteByte(byte(v))
		i += 3
	}
	return b.String(), nil
}

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
