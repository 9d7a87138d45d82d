package casync

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// EncodeDir writes a catar archive of the directory tree at dir to w, as
// `casync make` with CasyncMakeArgs would: children sorted by name, regular
// files with their content, hardlinks as full copies, symlinks, device
// nodes, FIFOs and sockets, user.* and trusted.* xattrs, and
// security.capability of regular files as an FCAPS record. Other xattrs
// (security.selinux, ACLs, ...) are not stored. dir itself may be a
// symlink to a directory; symlinks below it are stored as symlinks.
//
// Mount points are not special: EncodeDir descends into them.
func EncodeDir(ctx context.Context, w io.Writer, dir string, opts *EncodeOptions) error {
	cw := newCatarWriter(ctx, w, opts)
	root, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return fmt.Errorf("casync: encode %s: %w", dir, err)
	}
	return cw.encodeTree(&dirSource{path: root, log: cw.log})
}

// dirSource is a node of a directory tree on disk.
type dirSource struct {
	path string
	log  *slog.Logger
	st   unix.Stat_t
	done bool
}

func (d *dirSource) stat() error {
	if d.done {
		return nil
	}
	if err := unix.Lstat(d.path, &d.st); err != nil {
		return fmt.Errorf("casync: encode %s: %w", d.path, &os.PathError{Op: "lstat", Path: d.path, Err: err})
	}
	d.done = true
	return nil
}

func (d *dirSource) meta() (*nodeMeta, error) {
	if err := d.stat(); err != nil {
		return nil, err
	}
	st := &d.st
	m := &nodeMeta{
		mode:  uint64(st.Mode),
		uid:   uint64(st.Uid),
		gid:   uint64(st.Gid),
		mtime: st.Mtim.Nano(),
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		m.size = uint64(st.Size)
	case unix.S_IFLNK:
		t, err := os.Readlink(d.path)
		if err != nil {
			return nil, fmt.Errorf("casync: encode %s: %w", d.path, err)
		}
		m.target = t
		return m, nil // casync stores no xattrs for symlinks
	case unix.S_IFBLK, unix.S_IFCHR:
		m.major = uint64(unix.Major(uint64(st.Rdev)))
		m.minor = uint64(unix.Minor(uint64(st.Rdev)))
	}
	if err := d.readXattrs(m); err != nil {
		return nil, err
	}
	return m, nil
}

// readXattrs reads the xattrs that casync stores.
func (d *dirSource) readXattrs(m *nodeMeta) error {
	names, err := listXattrs(d.path)
	if err != nil {
		return fmt.Errorf("casync: encode %s: list xattrs: %w", d.path, err)
	}
	regular := m.mode&ModeTypeMask == ModeRegular
	for _, name := range names {
		stored := storedXattr(name)
		if !stored && !(regular && name == fcapsXattr) {
			if name != "" {
				d.log.Debug("xattr not stored", "path", d.path, "xattr", name)
			}
			continue
		}
		v, err := getXattr(d.path, name)
		if errors.Is(err, unix.ENODATA) {
			continue // removed since we listed it
		}
		if err != nil {
			return fmt.Errorf("casync: encode %s: read xattr %s: %w", d.path, name, err)
		}
		if stored {
			m.xattrs = append(m.xattrs, Xattr{Name: name, Value: v})
		} else {
			m.fcaps = v
		}
	}
	sortXattrs(m.xattrs)
	return nil
}

func listXattrs(path string) ([]string, error) {
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		n, err := unix.Llistxattr(path, buf)
		switch {
		case errors.Is(err, unix.ERANGE) && size < 1<<24:
			continue
		case errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EBADF):
			return nil, nil
		case err != nil:
			return nil, err
		}
		var names []string
		for _, s := range strings.Split(string(buf[:n]), "\x00") {
			if s != "" {
				names = append(names, s)
			}
		}
		return names, nil
	}
}

func getXattr(path, name string) ([]byte, error) {
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		n, err := unix.Lgetxattr(path, name, buf)
		if errors.Is(err, unix.ERANGE) && size < 1<<20 {
			continue
		}
		if err != nil {
			return nil, err
		}
		return buf[:n], nil
	}
}

func (d *dirSource) children() ([]encChild, error) {
	ents, err := os.ReadDir(d.path) // sorted by name, as strcmp sorts
	if err != nil {
		return nil, fmt.Errorf("casync: encode %s: %w", d.path, err)
	}
	kids := make([]encChild, len(ents))
	for i, e := range ents {
		kids[i] = encChild{name: e.Name(), src: &dirSource{path: filepath.Join(d.path, e.Name()), log: d.log}}
	}
	return kids, nil
}

func (d *dirSource) open() (io.ReadCloser, error) {
	f, err := os.Open(d.path)
	if err != nil {
		return nil, fmt.Errorf("casync: encode: %w", err)
	}
	return f, nil
}
