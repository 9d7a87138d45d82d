// Package mountinfo parses /proc/PID/mountinfo (proc(5)), for boot, which
// reads its container's mounts, and the node agent, which reads its
// callers'. It depends on the standard library only.
package mountinfo

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"path"
	"strconv"
	"strings"
)

// ErrInvalid is wrapped by errors parsing /proc/self/mountinfo.
var ErrInvalid = errors.New("mountinfo: bad mountinfo")

// Mount is one line of /proc/self/mountinfo (proc(5)).
type Mount struct {
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
func (m Mount) ReadOnly() bool {
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
func (m Mount) IsNamedVolume() bool {
	dir, file := path.Split(m.Root)
	return file == "_data" && path.Base(path.Dir(path.Clean(dir))) == "volumes"
}

// Parse parses the content of /proc/self/mountinfo.
func Parse(r io.Reader) ([]Mount, error) {
	var out []Mount
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if strings.TrimSpace(line) == "" {
			continue
		}
		m, err := parseLine(line)
		if err != nil {
			return nil, fmt.Errorf("%w: line %d %q: %v", ErrInvalid, n, line, err)
		}
		out = append(out, m)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	return out, nil
}

// parseLine parses
//
//	36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
func parseLine(line string) (Mount, error) {
	f := strings.Fields(line)
	sep := -1
	for i := 6; i < len(f); i++ {
		if f[i] == "-" {
			sep = i
			break
		}
	}
	if len(f) < 7 || sep < 0 || len(f) < sep+3 {
		return Mount{}, errors.New("want ID PARENT MAJ:MIN ROOT POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS")
	}
	id, err := strconv.Atoi(f[0])
	if err != nil {
		return Mount{}, fmt.Errorf("mount ID %q: %v", f[0], err)
	}
	parent, err := strconv.Atoi(f[1])
	if err != nil {
		return Mount{}, fmt.Errorf("parent ID %q: %v", f[1], err)
	}
	root, err := unescapeMountPath(f[3])
	if err != nil {
		return Mount{}, fmt.Errorf("root: %v", err)
	}
	point, err := unescapeMountPath(f[4])
	if err != nil {
		return Mount{}, fmt.Errorf("mount point: %v", err)
	}
	source, err := unescapeMountPath(f[sep+2])
	if err != nil {
		return Mount{}, fmt.Errorf("source: %v", err)
	}
	return Mount{ID: id, Parent: parent, Root: root, Point: point, Options: f[5], FSType: f[sep+1], Source: source}, nil
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
