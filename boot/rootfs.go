package boot

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/bootfs/bootfs/boot/lazyfs"
)

// ErrRootfs is wrapped by errors building the workload's root.
var ErrRootfs = errors.New("boot: cannot build the workload's root")

// rootfs is the workload's root and the mounts under it.
type rootfs struct {
	log    *slog.Logger
	dir    string // Workdir
	root   string // the overlay
	lower  string
	srv    *fuse.Server
	mounts []string // to unmount at teardown, in reverse order
}

// build mounts the FUSE tree, the overlay and the binds.
func (r *rootfs) build(fsys *lazyfs.FS, upper string, mounts []MountInfo) error {
	r.lower = filepath.Join(r.dir, "lower")
	r.root = filepath.Join(r.dir, "root")
	for _, d := range []string{r.lower, r.root} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("%w: %v", ErrRootfs, err)
		}
	}
	srv, err := fsys.Mount(r.lower)
	if err != nil {
		return err
	}
	r.srv = srv

	if upper == "" {
		upper = filepath.Join(r.dir, "rw")
		if err := os.MkdirAll(upper, 0o755); err != nil {
			return fmt.Errorf("%w: %v", ErrRootfs, err)
		}
		if err := r.mount("tmpfs", upper, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755"); err != nil {
			return err
		}
	}
	up, work := filepath.Join(upper, "upper"), filepath.Join(upper, "work")
	for _, d := range []string{up, work} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("%w: writable layer: %v", ErrRootfs, err)
		}
	}
	// The upper's root takes the image root's mode and owner, or the
	// overlay's root would be the upper's (0755 root).
	if st, err := os.Stat(r.lower); err == nil {
		sys := st.Sys().(*syscall.Stat_t)
		_ = os.Chown(up, int(sys.Uid), int(sys.Gid))
		_ = unix.Chmod(up, sys.Mode&0o7777)
	}
	if err := r.overlay(up, work); err != nil {
		return err
	}

	for _, d := range []string{"dev", "proc", "sys"} {
		if err := r.bindPoint("/"+d, true); err != nil {
			return err
		}
	}
	for _, d := range []string{"/dev", "/sys"} {
		if err := r.mount(d, filepath.Join(r.root, d), "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return err
		}
	}
	vols := containerMounts(mounts)
	byDepth(vols)
	for _, m := range vols {
		if err := r.bindMount(m); err != nil {
			return err
		}
	}
	return nil
}

// overlay mounts the overlay of the image and the writable layer on
// r.root. overlayfs shows its options in /proc/mounts as they were given,
// so they are paths relative to r.dir, where init changes to for the
// mount: the workload's mount table then never names /.bootfs.
func (r *rootfs) overlay(up, work string) error {
	rel := func(p string) (string, error) {
		s, err := filepath.Rel(r.dir, p)
		if err != nil {
			return "", fmt.Errorf("%w: %v", ErrRootfs, err)
		}
		if strings.ContainsAny(s, ",:") {
			// overlayfs splits its options at commas and lowerdir at colons.
			return "", fmt.Errorf("%w: %s: a path for overlayfs must not hold ',' or ':'", ErrRootfs, p)
		}
		return s, nil
	}
	var dirs [3]string
	for i, p := range []string{r.lower, up, work} {
		var err error
		if dirs[i], err = rel(p); err != nil {
			return err
		}
	}
	back, err := os.Open(".")
	if err != nil {
		return fmt.Errorf("%w: %v", ErrRootfs, err)
	}
	defer back.Close()
	if err := os.Chdir(r.dir); err != nil {
		return fmt.Errorf("%w: %v", ErrRootfs, err)
	}
	defer back.Chdir()
	data := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", dirs[0], dirs[1], dirs[2])
	if err := r.mount("overlay", r.root, "overlay", 0, data); err != nil {
		return fmt.Errorf("%w (BOOTFS_UPPER must not be on an overlay filesystem; use a volume)", err)
	}
	return nil
}

// bindPoint makes the mount point p (a container path) in the root, and
// returns nil if it exists already.
func (r *rootfs) bindPoint(p string, dir bool) error {
	_, err := r.target(p, dir)
	return err
}

func (r *rootfs) target(p string, dir bool) (string, error) {
	t, err := resolveIn(r.root, p)
	if err != nil {
		return "", err
	}
	if err := mountPoint(t, dir); err != nil {
		return "", fmt.Errorf("%w: mount point %s: %v", ErrRootfs, p, err)
	}
	return t, nil
}

// bindMount binds the container's mount m into the root at the same path.
func (r *rootfs) bindMount(m MountInfo) error {
	fi, err := os.Stat(m.Point)
	if err != nil {
		r.log.Warn("cannot see a mount Docker made; not passing it on", "path", m.Point, "err", err)
		return nil
	}
	if fi.IsDir() && m.IsNamedVolume() && isEmptyDir(m.Point) {
		if err := r.fillVolume(m.Point); err != nil {
			return err
		}
	}
	t, err := r.target(m.Point, fi.IsDir())
	if err != nil {
		return err
	}
	if err := r.mount(m.Point, t, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return err
	}
	if m.ReadOnly() {
		if err := unix.Mount("", t, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY, ""); err != nil {
			return fmt.Errorf("%w: make %s read-only: %v", ErrRootfs, m.Point, err)
		}
	}
	r.log.Debug("bound", "path", m.Point, "fstype", m.FSType, "ro", m.ReadOnly())
	return nil
}

// fillVolume copies the image's content at p, if it has any, into the
// empty volume mounted at p.
func (r *rootfs) fillVolume(p string) error {
	src, err := resolveIn(r.lower, p)
	if err != nil {
		return err
	}
	fi, err := os.Stat(src)
	if err != nil || !fi.IsDir() {
		return nil
	}
	start := time.Now()
	if err := copyTree(src, p, r.log); err != nil {
		return fmt.Errorf("%w: copy the image's %s into its empty volume: %v", ErrRootfs, p, err)
	}
	r.log.Debug("filled empty volume from the image", "path", p, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

func (r *rootfs) mount(source, target, fstype string, flags uintptr, data string) error {
	if err := unix.Mount(source, target, fstype, flags, data); err != nil {
		if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
			// CAP_SYS_ADMIN without --privileged: seccomp or AppArmor.
			return fmt.Errorf("%w: mount %s: %v; run it with docker run --privileged --device /dev/fuse ...", ErrNotPrivileged, target, err)
		}
		return fmt.Errorf("%w: mount %s on %s (%s %s): %v", ErrRootfs, source, target, fstype, data, err)
	}
	r.mounts = append(r.mounts, target)
	return nil
}

// teardown unmounts everything build mounted: the root's tree at once
// (lazily), then the FUSE server, so the cache is left complete.
func (r *rootfs) teardown() {
	for i := len(r.mounts) - 1; i >= 0; i-- {
		if err := unix.Unmount(r.mounts[i], unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			r.log.Debug("unmount", "path", r.mounts[i], "err", err)
		}
	}
	r.mounts = nil
	if r.srv != nil {
		if err := lazyfs.Unmount(r.srv, r.lower, r.log); err != nil {
			r.log.Warn("cannot unmount the image", "path", r.lower, "err", err)
		}
		r.srv = nil
	}
}

// resolveIn resolves p inside root as if root were "/": symlinks are
// followed, absolute ones and ".." relative to root, never leaving it.
// Components that do not exist are kept as they are. It returns the host
// path.
func resolveIn(root, p string) (string, error) {
	rest := strings.Split(p, "/")
	cur := "/"
	links := 0
	for len(rest) > 0 {
		c := rest[0]
		rest = rest[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			cur = path.Dir(cur)
			continue
		}
		next := path.Join(cur, c)
		fi, err := os.Lstat(filepath.Join(root, next))
		if err != nil || fi.Mode()&fs.ModeSymlink == 0 {
			if err != nil && !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, syscall.ENOTDIR) {
				return "", fmt.Errorf("%w: resolve %s: %v", ErrRootfs, p, err)
			}
			cur = next
			continue
		}
		if links++; links > 40 {
			return "", fmt.Errorf("%w: resolve %s: too many levels of symbolic links", ErrRootfs, p)
		}
		target, err := os.Readlink(filepath.Join(root, next))
		if err != nil {
			return "", fmt.Errorf("%w: resolve %s: %v", ErrRootfs, p, err)
		}
		if strings.HasPrefix(target, "/") {
			cur = "/"
		}
		rest = append(strings.Split(target, "/"), rest...)
	}
	return filepath.Join(root, cur), nil
}

// mountPoint makes sure target exists, as a directory if dir, else as an
// empty file, creating parent directories (0755) as needed.
func mountPoint(target string, dir bool) error {
	if dir {
		return os.MkdirAll(target, 0o755)
	}
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(target, os.O_CREATE|os.O_RDONLY, 0o644)
	if err != nil {
		return err
	}
	return f.Close()
}

// byDepth sorts mounts so a mount comes after every mount whose path is a
// parent of its own (fewer path components first), keeping mountinfo's
// order otherwise, as Docker orders a container's mounts.
func byDepth(mounts []MountInfo) {
	slices.SortStableFunc(mounts, func(a, b MountInfo) int {
		return strings.Count(a.Point, "/") - strings.Count(b.Point, "/")
	})
}
