package agent

import (
	"errors"
	"fmt"
	"path"
	"runtime"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/bootfs/bootfs/boot/lazyfs"
	"github.com/bootfs/bootfs/internal/copytree"
)

// fuseMount is a FUSE superblock made with the new mount API: a detached
// mount (mnt) of a connection on dev (an open /dev/fuse, which the server
// takes over). Nothing in the agent's own mount table ever holds it.
type fuseMount struct {
	dev int // /dev/fuse
	mnt int // the detached mount
}

// newFuseMount opens /dev/fuse and makes a read-only FUSE mount of it,
// detached, with fsys's options. The kernel queues FUSE's INIT at once; the
// caller serves dev (lazyfs.FS.NewFDServer) before anything reads mnt.
func newFuseMount(fsys *lazyfs.FS, source string) (_ *fuseMount, err error) {
	dev, err := unix.Open("/dev/fuse", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/fuse: %w (the agent needs the fuse module loaded)", err)
	}
	defer func() {
		if err != nil {
			unix.Close(dev)
		}
	}()
	fsfd, err := unix.Fsopen("fuse", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("fsopen fuse: %w", err)
	}
	defer unix.Close(fsfd)
	opts := fsys.KernelOptions()
	opts["source"] = source
	opts["subtype"] = "bootfs"
	opts["fd"] = strconv.Itoa(dev)
	opts["rootmode"] = strconv.FormatUint(unix.S_IFDIR, 8)
	opts["user_id"] = "0"
	opts["group_id"] = "0"
	if err := configure(fsfd, opts); err != nil {
		return nil, fmt.Errorf("configure FUSE mount: %w", err)
	}
	attrs := unix.MOUNT_ATTR_RDONLY
	if !fsys.AllowSuidDev() {
		attrs |= unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV
	}
	mnt, err := unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, attrs)
	if err != nil {
		return nil, fmt.Errorf("fsmount fuse: %w", err)
	}
	return &fuseMount{dev: dev, mnt: mnt}, nil
}

// configure sets the string options opts (a flag when the value is empty)
// on the filesystem context fsfd, in a fixed order, and creates the
// superblock.
func configure(fsfd int, opts map[string]string) error {
	keys := make([]string, 0, len(opts))
	for k := range opts {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		var err error
		if v := opts[k]; v == "" {
			err = unix.FsconfigSetFlag(fsfd, k)
		} else {
			err = unix.FsconfigSetString(fsfd, k, v)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", k, err)
		}
	}
	if err := unix.FsconfigCreate(fsfd); err != nil {
		return fmt.Errorf("create: %w", err)
	}
	return nil
}

// newTmpfs returns a detached tmpfs mount, for a writable layer.
func newTmpfs() (int, error) {
	fsfd, err := unix.Fsopen("tmpfs", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return -1, fmt.Errorf("fsopen tmpfs: %w", err)
	}
	defer unix.Close(fsfd)
	if err := configure(fsfd, map[string]string{"source": "tmpfs", "mode": "0755"}); err != nil {
		return -1, fmt.Errorf("configure tmpfs: %w", err)
	}
	mnt, err := unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, unix.MOUNT_ATTR_NOSUID|unix.MOUNT_ATTR_NODEV)
	if err != nil {
		return -1, fmt.Errorf("fsmount tmpfs: %w", err)
	}
	return mnt, nil
}

// newOverlay returns a detached overlay mount of lower (a mount or
// directory fd) with the writable layer in the directory upperDir: its
// upper and work subdirectories, made if missing. The upper's root takes
// lower's mode and owner, or the overlay's root would be the upper's. Every
// layer is given by file descriptor, so no path is looked up anywhere.
func newOverlay(lower, upperDir int) (int, error) {
	var up, work int
	for _, d := range []struct {
		name string
		fd   *int
	}{{"upper", &up}, {"work", &work}} {
		if err := unix.Mkdirat(upperDir, d.name, 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
			return -1, fmt.Errorf("writable layer: mkdir %s: %w", d.name, err)
		}
		fd, err := unix.Openat2(upperDir, d.name, &unix.OpenHow{
			Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
			Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_XDEV,
		})
		if err != nil {
			return -1, fmt.Errorf("writable layer: open %s: %w", d.name, err)
		}
		defer unix.Close(fd)
		*d.fd = fd
	}
	var st unix.Stat_t
	if err := unix.Fstat(lower, &st); err != nil {
		return -1, fmt.Errorf("stat the image's root: %w", err)
	}
	// On an O_PATH fd the *at calls with AT_EMPTY_PATH act on the directory itself.
	if err := unix.Fchownat(up, "", int(st.Uid), int(st.Gid), unix.AT_EMPTY_PATH); err != nil {
		return -1, fmt.Errorf("writable layer: chown: %w", err)
	}
	if err := unix.Fchmodat(up, "", st.Mode&0o7777, unix.AT_EMPTY_PATH); err != nil && !errors.Is(err, unix.ENOTSUP) {
		// Without AT_EMPTY_PATH support for chmod, go through /proc.
		if err := unix.Chmod(fmt.Sprintf("/proc/self/fd/%d", up), st.Mode&0o7777); err != nil {
			return -1, fmt.Errorf("writable layer: chmod: %w", err)
		}
	}
	fsfd, err := unix.Fsopen("overlay", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return -1, fmt.Errorf("fsopen overlay: %w", err)
	}
	defer unix.Close(fsfd)
	for _, l := range []struct {
		key string
		fd  int
	}{{"lowerdir+", lower}, {"upperdir", up}, {"workdir", work}} {
		if err := unix.FsconfigSetFd(fsfd, l.key, l.fd); err != nil {
			return -1, fmt.Errorf("configure overlay: %s: %w", l.key, err)
		}
	}
	if err := unix.FsconfigSetString(fsfd, "source", "overlay"); err != nil {
		return -1, fmt.Errorf("configure overlay: source: %w", err)
	}
	if err := unix.FsconfigCreate(fsfd); err != nil {
		return -1, fmt.Errorf("create overlay: %w (the writable layer must not be on an overlay filesystem; use a volume)", err)
	}
	mnt, err := unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("fsmount overlay: %w", err)
	}
	return mnt, nil
}

// inMountNamespace runs f on a thread of its own in the mount namespace
// of the process pidfd names. setns into a mount namespace needs a thread
// that shares no filesystem attributes (root, cwd) with the others, so the
// thread unshares them first; it never returns to the Go scheduler's pool
// (the goroutine ends locked, and the runtime ends the thread), so no
// other goroutine ever runs in the caller's namespace.
func inMountNamespace(pidfd int, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer func() {
			// This goroutine's panic would end the agent, and every
			// container's filesystem with it.
			if v := recover(); v != nil {
				errc <- fmt.Errorf("the agent failed in the caller's namespace (a bug: %v)", v)
			}
		}()
		if err := unix.Unshare(unix.CLONE_FS); err != nil {
			errc <- fmt.Errorf("unshare the thread's filesystem attributes: %w", err)
			return
		}
		if err := unix.Setns(pidfd, unix.CLONE_NEWNS); err != nil {
			errc <- fmt.Errorf("enter the caller's mount namespace: %w", err)
			return
		}
		errc <- f()
	}()
	return <-errc
}

// resolve is how every path of the caller's is looked up: inside the
// root of dirfd, with no magic links (/proc/PID/fd/N and the like, which
// could lead out of it), and no automounts.
func resolve(dirfd int, p string, flags uint64) (int, error) {
	rel := strings.TrimPrefix(path.Clean("/"+p), "/")
	if rel == "" {
		rel = "."
	}
	return unix.Openat2(dirfd, rel, &unix.OpenHow{
		Flags:   flags | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
	})
}

// bindMount is a mount of the caller's that its new root gets too.
// Its clone keeps the mount's flags (read-only, nosuid and the like).
// A Docker volume (named or anonymous) that is empty gets the image's
// content at its path first, as Docker fills a volume from the image.
type bindMount struct {
	point  string
	volume bool
}

// pivot makes the overlay ovl the root of the mount namespace of the
// thread that runs it (inMountNamespace), with binds of the caller's /proc,
// /dev, /sys and the mounts Docker made (binds, in order: a parent before
// its children). It attaches ovl at attachAt (an existing directory of the
// caller's root), binds, then pivot_roots and detaches the old root. Every
// process whose root was the old one (the caller, PID 1 of its container)
// has the new one from then on.
func pivot(ovl int, attachAt string, binds []bindMount) error {
	// Lookups from AT_FDCWD (resolve) take the working directory as
	// their root: the caller's root, as setns left it.
	if err := unix.Chdir("/"); err != nil {
		return err
	}
	// pivot_root refuses a shared root; a private root keeps the new
	// mounts from propagating anywhere.
	if err := unix.Mount("", "/", "", unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make the root private: %w", err)
	}
	at, err := resolve(unix.AT_FDCWD, attachAt, unix.O_PATH|unix.O_DIRECTORY)
	if err != nil {
		return fmt.Errorf("open %s: %w", attachAt, err)
	}
	err = unix.MoveMount(ovl, "", at, "", unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH)
	unix.Close(at)
	if err != nil {
		return fmt.Errorf("attach the root at %s: %w", attachAt, err)
	}
	for _, b := range binds {
		if b.volume {
			if err := fillVolume(ovl, b.point); err != nil {
				return err
			}
		}
		if err := bind(ovl, b); err != nil {
			return err
		}
	}
	if err := unix.Fchdir(ovl); err != nil {
		return fmt.Errorf("enter the new root: %w", err)
	}
	// pivot_root(".", ".") stacks the old root on the new one; detaching
	// "." then removes it, with no directory needed to hold it.
	if err := unix.PivotRoot(".", "."); err != nil {
		return fmt.Errorf("pivot_root: %w", err)
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detach the old root: %w", err)
	}
	return nil
}

// fillVolume copies the image's directory at p, if it has one, into the
// caller's volume at p if that is empty. The image's path is resolved in
// the image (root), the volume's in the caller's root; the copy walks
// from the image directory as the thread's working directory, so no
// symlink of the image is followed.
func fillVolume(root int, p string) error {
	if !copytree.IsEmptyDir(p) {
		return nil
	}
	src, err := resolve(root, p, unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return nil // nothing in the image there
	}
	defer unix.Close(src)
	if err := unix.Fchdir(src); err != nil {
		return fmt.Errorf("fill the volume %s: %w", p, err)
	}
	// Lookups from AT_FDCWD (resolve) take the working directory as root.
	defer unix.Chdir("/")
	if err := copytree.Copy(".", p, nil); err != nil {
		return fmt.Errorf("copy the image's %s into its empty volume: %w", p, err)
	}
	return nil
}

// bind clones the caller's mount at b.point, with everything below it,
// onto the same path in the new root (whose root directory is root),
// making the mount point if the image lacks it.
func bind(root int, b bindMount) error {
	src, err := resolve(unix.AT_FDCWD, b.point, unix.O_PATH)
	if err != nil {
		return fmt.Errorf("open the mount %s: %w", b.point, err)
	}
	defer unix.Close(src)
	var st unix.Stat_t
	if err := unix.Fstat(src, &st); err != nil {
		return fmt.Errorf("stat the mount %s: %w", b.point, err)
	}
	tree, err := unix.OpenTree(src, "", unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_RECURSIVE|unix.AT_EMPTY_PATH)
	if err != nil {
		return fmt.Errorf("clone the mount %s: %w", b.point, err)
	}
	defer unix.Close(tree)
	dst, err := mountPoint(root, b.point, st.Mode&unix.S_IFMT == unix.S_IFDIR)
	if err != nil {
		return fmt.Errorf("mount point %s in the new root: %w", b.point, err)
	}
	defer unix.Close(dst)
	if err := unix.MoveMount(tree, "", dst, "", unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH); err != nil {
		return fmt.Errorf("bind %s into the new root: %w", b.point, err)
	}
	return nil
}

// mountPoint opens p inside root as an O_PATH fd, making it first if it
// is missing (parents as directories 0755, p as a directory if dir, else
// an empty file), every step resolved inside root.
func mountPoint(root int, p string, dir bool) (int, error) {
	fd, err := resolve(root, p, unix.O_PATH)
	p = path.Clean("/" + p)
	if !errors.Is(err, unix.ENOENT) || p == "/" {
		return fd, err
	}
	parent, err := mountPoint(root, path.Dir(p), true)
	if err != nil {
		return -1, err
	}
	defer unix.Close(parent)
	pdir, err := unix.Openat(parent, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	defer unix.Close(pdir)
	name := path.Base(p)
	if dir {
		err = unix.Mkdirat(pdir, name, 0o755)
	} else {
		var f int
		f, err = unix.Openat(pdir, name, unix.O_CREAT|unix.O_EXCL|unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o644)
		if err == nil {
			unix.Close(f)
		}
	}
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return -1, err
	}
	return resolve(root, p, unix.O_PATH)
}

// closeFD closes fd if it is one.
func closeFD(fd int) {
	if fd >= 0 {
		unix.Close(fd)
	}
}
