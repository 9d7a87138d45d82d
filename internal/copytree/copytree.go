// Package copytree copies a directory tree with its metadata, as Docker
// fills an empty volume from the image: boot does it in the container, the
// node agent in the container's mount namespace. It depends on the
// standard library and golang.org/x/sys only.
package copytree

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// IsEmptyDir reports whether dir is a directory with no entries.
func IsEmptyDir(dir string) bool {
	f, err := os.Open(dir)
	if err != nil {
		return false
	}
	defer f.Close()
	names, err := f.Readdirnames(1)
	return err == io.EOF && len(names) == 0
}

// Copy copies the tree at src into the existing directory dst, as
// Docker fills an empty volume from the image: contents, modes, owners,
// times and xattrs, with symlinks, device nodes and FIFOs as they are.
// dst takes src's owner, mode and times too.
func Copy(src, dst string, log *slog.Logger) error {
	type dirTimes struct {
		path string
		ts   []unix.Timespec
	}
	var dirs []dirTimes
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return fmt.Errorf("stat %s: no owner", p)
		}
		mode := fi.Mode()
		switch {
		case rel == ".":
		case mode.IsDir():
			if err := os.Mkdir(target, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
				return err
			}
		case mode.IsRegular():
			if err := copyFile(p, target); err != nil {
				return err
			}
		case mode&fs.ModeSymlink != 0:
			link, err := os.Readlink(p)
			if err != nil {
				return err
			}
			if err := os.Symlink(link, target); err != nil {
				return err
			}
		case mode&(fs.ModeDevice|fs.ModeNamedPipe|fs.ModeSocket) != 0:
			if err := unix.Mknod(target, st.Mode, int(st.Rdev)); err != nil {
				return err
			}
		default:
			log.Warn("not copying an entry of unknown type into the volume", "path", p, "mode", mode)
			return nil
		}
		if err := os.Lchown(target, int(st.Uid), int(st.Gid)); err != nil {
			return err
		}
		copyXattrs(p, target, log)
		if mode&fs.ModeSymlink == 0 {
			// After chown, which clears setuid and setgid bits.
			if err := unix.Chmod(target, st.Mode&0o7777); err != nil {
				return err
			}
		}
		ts := []unix.Timespec{unix.NsecToTimespec(time.Now().UnixNano()), unix.Timespec(st.Mtim)}
		if mode.IsDir() {
			// Set once the directory is filled, below.
			dirs = append(dirs, dirTimes{target, ts})
			return nil
		}
		return unix.UtimesNanoAt(unix.AT_FDCWD, target, ts, unix.AT_SYMLINK_NOFOLLOW)
	})
	if err != nil {
		return err
	}
	for _, d := range slices.Backward(dirs) {
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, d.path, d.ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return err
		}
	}
	return nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	return nil
}

// copyXattrs copies the extended attributes of src to dst, without
// following symlinks. A failure is logged: the content is what matters.
func copyXattrs(src, dst string, log *slog.Logger) {
	sz, err := unix.Llistxattr(src, nil)
	if err != nil || sz <= 0 {
		return
	}
	buf := make([]byte, sz)
	sz, err = unix.Llistxattr(src, buf)
	if err != nil {
		return
	}
	for name := range strings.SplitSeq(string(buf[:sz]), "\x00") {
		if name == "" {
			continue
		}
		vsz, err := unix.Lgetxattr(src, name, nil)
		if err != nil {
			continue
		}
		val := make([]byte, vsz)
		if vsz, err = unix.Lgetxattr(src, name, val); err != nil {
			continue
		}
		if err := unix.Lsetxattr(dst, name, val[:vsz], 0); err != nil {
			log.Debug("cannot copy xattr into the volume", "path", dst, "xattr", name, "err", err)
		}
	}
}
