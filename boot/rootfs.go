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
	// entered is set once root is the namespace's root: nothing is left
	// to unmount, the namespace's end takes it all.
	entered bool
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
		upper = filepath.Join(r.dir, "upper")
		if !slices.ContainsFunc(mounts, func(m MountInfo) bool { return m.Point == upper }) {
			// Not the boot image's volume (an image of an older mkimage,
			// or a Workdir of a test): a tmpfs, which a restart loses.
			if err := os.MkdirAll(upper, 0o755); err != nil {
				return fmt.Errorf("%w: %v", ErrRootfs, err)
			}
			r.log.Warn("no volume for the writable layer; writes live in memory and are lost on restart", "path", upper)
			if err := r.mount("tmpfs", upper, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755"); err != nil {
				return err
			}
		}
	}
	up, work, err := prepareUpper(upper)
	if err != nil {
		return err
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
	// The container's own /proc, with Docker's masked paths: the
	// workload and docker exec share its PID namespace.
	for _, d := range []string{"/proc", "/dev", "/sys"} {
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
	if rootReadOnly(mounts) {
		// docker run --read-only: so is the workload's root; its
		// volumes and tmpfs mounts stay as Docker made them.
		if err := unix.Mount("", r.root, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY, ""); err != nil {
			return fmt.Errorf("%w: make the root read-only: %v", ErrRootfs, err)
		}
	}
	return nil
}

// enter makes the root the root of the container's mount namespace (see
// pivotHere).
func (r *rootfs) enter() error {
	if err := pivotHere(r.root); err != nil {
		return err
	}
	r.entered = true
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
	if r.entered {
		// The mounts are the namespace's now and end with it; the FUSE
		// connection ends when init exits. Chunks reach the cache
		// atomically, so it is complete either way.
		return
	}
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

// pivotHere makes root the root of this process's own mount namespace,
// the container's: pivot_root, then the old root (the boot image, with
// /.bootfs and the FUSE mount) detached. The runtime's setns for docker
// exec and health checks then lands in root, as it does in the original
// image's root. What init still needs of the old root it holds through
// file descriptors opened before (the FUSE device, the cache directory)
// or has read into memory (config, index, TOC).
func pivotHere(root string) error {
	// pivot_root refuses shared mounts; Docker makes the root private
	// already, the overlay inherits it. Only these two: a volume's own
	// propagation (-v ...:rslave) stays as it was asked for.
	for _, m := range []string{"/", root} {
		if err := unix.Mount("", m, "", unix.MS_PRIVATE, ""); err != nil {
			return fmt.Errorf("%w: make %s private: %v%s", ErrRootfs, m, err, privilegeHint(err))
		}
	}
	if err := unix.Chdir(root); err != nil {
		return fmt.Errorf("%w: enter %s: %v", ErrRootfs, root, err)
	}
	// pivot_root(".", ".") stacks the old root on the new one; detaching
	// "." then removes it, with no directory needed to hold it.
	if err := unix.PivotRoot(".", "."); err != nil {
		// Out of the root again, or the working directory keeps the
		// overlay, and through it the FUSE mount, busy at teardown.
		unix.Chdir("/")
		return fmt.Errorf("%w: pivot_root to %s: %v%s", ErrRootfs, root, err, privilegeHint(err))
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("%w: detach the old root: %v%s", ErrRootfs, err, privilegeHint(err))
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("%w: %v", ErrRootfs, err)
	}
	return nil
}

// heldDir opens dir (made if missing) and returns it with a name that
// reaches it through the open descriptor, /proc/self/fd/N: the name
// still works once pivotHere has detached the tree dir was in, as long
// as the file stays open and /proc is mounted in the new root.
func heldDir(dir string) (*os.File, string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, "", fmt.Errorf("boot: %w", err)
	}
	f, err := os.Open(dir)
	if err != nil {
		return nil, "", fmt.Errorf("boot: %w", err)
	}
	return f, fmt.Sprintf("/proc/self/fd/%d", f.Fd()), nil
}

// prepareUpper makes the writable layer's upper and work directories in
// upper, reusing what a previous start of the container left there: the
// upper is kept, the work directory (overlayfs's scratch space, empty
// between mounts) is emptied. A volume that is full or read-only fails
// here, with an error that names it, and not later in the workload.
func prepareUpper(upper string) (up, work string, err error) {
	up, work = filepath.Join(upper, "upper"), filepath.Join(upper, "work")
	fail := func(err error) error {
		hint := ""
		switch {
		case errors.Is(err, unix.ENOSPC), errors.Is(err, unix.EDQUOT):
			hint = ": the volume is full; free space on it, or give the container another (docker run -v VOLUME:" + upper + ")"
		case errors.Is(err, unix.EROFS):
			hint = ": the volume is read-only; mount it read-write, or give the container another (docker run -v VOLUME:" + upper + ")"
		}
		return fmt.Errorf("%w: the writable layer's volume at %s: %v%s", ErrRootfs, upper, err, hint)
	}
	if err := os.RemoveAll(work); err != nil {
		return "", "", fail(err)
	}
	for _, d := range []string{up, work} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return "", "", fail(err)
		}
	}
	// A write that needs a new block: a full volume still takes empty
	// directories.
	probe, err := os.CreateTemp(work, "probe")
	if err != nil {
		return "", "", fail(err)
	}
	defer os.Remove(probe.Name())
	_, err = probe.Write(make([]byte, 4096))
	if err == nil {
		err = probe.Sync()
	}
	if cerr := probe.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", "", fail(err)
	}
	return up, work, nil
}

// rootReadOnly reports whether the container's root is mounted read-only
// (docker run --read-only).
func rootReadOnly(mounts []MountInfo) bool {
	ro := false
	for _, m := range mounts {
		if m.Point == "/" {
			ro = m.ReadOnly() // the last mount on / is the one in view
		}
	}
	return ro
}
