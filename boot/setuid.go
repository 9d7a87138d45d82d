package boot

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/bootfs/bootfs/chunkstore"
)

// ErrSetuid is wrapped by the errors of what boot refuses to do when a
// non-root user started it setuid root.
var ErrSetuid = errors.New("boot: started setuid root by a non-root user")

// Caller is the non-root user who started boot when it runs setuid
// root. mkimage installs /.bootfs/boot setuid root, so that
// `docker run --user UID[:GID]`, which starts the container's init as
// that user, still lets boot mount the image: boot becomes root for its
// own work and runs the workload as the Caller.
//
// Everything a Caller names is used with the Caller's rights, never
// root's: see InitOptions.ConfineToCaller.
type Caller struct {
	// UID and GID are the real ids Docker gave. Docker gives gid 0 when
	// --user names no group, as the boot image has no /etc/passwd.
	UID, GID int
	// Groups are the supplementary groups Docker gave (--group-add).
	Groups []int
}

// SetuidCaller returns the user who started boot if it runs setuid root
// (a real uid other than 0 and an effective uid of 0), else nil.
func SetuidCaller() (*Caller, error) {
	ruid, euid, _ := unix.Getresuid()
	if ruid == 0 || euid != 0 {
		return nil, nil
	}
	rgid, _, _ := unix.Getresgid()
	groups, err := unix.Getgroups()
	if err != nil {
		return nil, fmt.Errorf("boot: supplementary groups: %w", err)
	}
	return &Caller{UID: ruid, GID: rgid, Groups: groups}, nil
}

// BecomeRoot sets the real, effective and saved uid and gid of every
// thread to 0, so that what init starts (the workload process, helpers)
// runs as root and not as a setuid program. The supplementary groups
// stay the Caller's. The capabilities a setuid-root exec granted stay.
func BecomeRoot() error {
	if err := syscall.Setresgid(0, 0, 0); err != nil {
		return fmt.Errorf("boot: become root: set gid 0: %w", err)
	}
	if err := syscall.Setresuid(0, 0, 0); err != nil {
		return fmt.Errorf("boot: become root: set uid 0: %w", err)
	}
	return nil
}

// spec is the workload's user as Docker would have resolved it on the
// original image: "UID", or "UID:GID" when Docker gave a gid other than
// 0. Docker gives gid 0 both for --user UID and for --user UID:0, so an
// explicit --user UID:0 takes the primary group of UID in the image's
// /etc/passwd as --user UID does.
func (c *Caller) spec() string {
	if c.GID == 0 {
		return strconv.Itoa(c.UID)
	}
	return strconv.Itoa(c.UID) + ":" + strconv.Itoa(c.GID)
}

// do runs f with the Caller's rights on the filesystem: on one locked
// thread whose filesystem uid and gid are the Caller's (the
// supplementary groups are the Caller's already), which also clears
// CAP_DAC_OVERRIDE and the other file capabilities of that thread. f must
// not start goroutines that touch files. A nil Caller runs f as it is.
func (c *Caller) do(f func() error) error {
	if c == nil {
		return f()
	}
	runtime.LockOSThread()
	unix.Setfsgid(c.GID)
	unix.Setfsuid(c.UID)
	restored := false
	defer func() {
		unix.Setfsuid(0)
		unix.Setfsgid(0)
		if uid, _ := unix.SetfsuidRetUid(-1); uid == 0 {
			if gid, _ := unix.SetfsgidRetGid(-1); gid == 0 {
				restored = true
			}
		}
		if restored {
			runtime.UnlockOSThread()
		}
		// Else the thread stays locked and ends with the goroutine.
	}()
	if uid, _ := unix.SetfsuidRetUid(-1); uid != c.UID {
		return fmt.Errorf("%w: cannot take uid %d's rights on the filesystem", ErrSetuid, c.UID)
	}
	return f()
}

// openFile opens name for reading with the Caller's rights.
func (c *Caller) openFile(name string) (*os.File, error) {
	var f *os.File
	err := c.do(func() error {
		var err error
		f, err = os.Open(name)
		return err
	})
	return f, err
}

// writeFileAtomic writes data to name through a temporary file in the
// same directory and a rename, with the Caller's rights, so readers never
// see half a file and a setuid boot writes nowhere its Caller could not.
func writeFileAtomic(name string, data []byte, c *Caller) error {
	return c.do(func() error {
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
	})
}

// ConfineToCaller makes options safe for a boot that o.Caller started
// setuid root; it does nothing when o.Caller is nil. The Caller must get
// no more from boot than mounting the image and running its workload as
// the Caller:
//
//   - BOOTFS_USER is refused: the workload runs as the Caller.
//   - BOOTFS_UPPER is refused: overlayfs empties its work directory with
//     the mounter's (root's) rights, and the Caller could swap the path
//     for a symlink to any directory in between.
//   - BOOTFS_CACHE other than the image's own /.bootfs/cache (or "none")
//     is refused: boot creates, renames and evicts files there as root.
//   - The files BOOTFS_SSH_KEY, BOOTFS_SSH_KNOWN_HOSTS and BOOTFS_CA_FILE
//     name are opened now with the Caller's rights, and the options then
//     name the open files (/proc/self/fd/N), so root never opens a path
//     the Caller chose. An ssh store needs both set explicitly: the
//     defaults under $HOME would be read as root.
//   - BOOTFS_STATS and BOOTFS_RECORD are written with the Caller's rights.
//
// It returns a function that closes the files it opened.
func (o *InitOptions) ConfineToCaller() (closeFiles func(), err error) {
	var files []*os.File
	closeFiles = func() {
		for _, f := range files {
			f.Close()
		}
	}
	c := o.Caller
	if c == nil {
		return closeFiles, nil
	}
	refuse := func(env, why string) error {
		return fmt.Errorf("%w (uid %d, docker run --user): %s is not allowed then: %s", ErrSetuid, c.UID, env, why)
	}
	if o.User != "" {
		return closeFiles, refuse(EnvUser, "the workload runs as the --user that started the container")
	}
	if o.Upper != "" {
		return closeFiles, refuse(EnvUpper, "overlayfs would clean its work directory there with root's rights; run as root (BOOTFS_USER instead of --user) to use it")
	}
	switch filepath.Clean(o.Cache) {
	case ".", "none", filepath.Clean(o.withDefaults().Workdir) + "/cache":
	default:
		return closeFiles, refuse(EnvCache, "boot writes the cache as root; mount the cache volume on /.bootfs/cache instead")
	}
	open := func(env, name string) (string, error) {
		f, err := c.openFile(name)
		if err != nil {
			return "", fmt.Errorf("boot: %s: %w (it is opened with the rights of uid %d, who started the container)", env, err, c.UID)
		}
		files = append(files, f)
		return "/proc/self/fd/" + strconv.Itoa(int(f.Fd())), nil
	}
	keys := make([]string, len(o.SSHKeys))
	for i, k := range o.SSHKeys {
		if keys[i], err = open(EnvSSHKey, k); err != nil {
			closeFiles()
			return func() {}, err
		}
	}
	o.SSHKeys = keys
	for _, p := range []struct {
		env  string
		name *string
	}{{EnvSSHKnownHosts, &o.SSHKnownHosts}, {EnvCAFile, &o.CAFile}} {
		if *p.name == "" {
			continue
		}
		if *p.name, err = open(p.env, *p.name); err != nil {
			closeFiles()
			return func() {}, err
		}
	}
	o.confined = true
	return closeFiles, nil
}

// checkCallerStore refuses an ssh store for a Caller without explicit
// keys and known_hosts: the ssh client's defaults, under $HOME, would be
// read with root's rights.
func (o *InitOptions) checkCallerStore(store string) error {
	if o.Caller == nil {
		return nil
	}
	if !o.confined {
		return fmt.Errorf("%w: InitOptions.ConfineToCaller was not called", ErrSetuid)
	}
	locs, err := chunkstore.ParseURLs(store)
	if err != nil {
		return fmt.Errorf("boot: %w", err)
	}
	for _, l := range locs {
		if strings.EqualFold(l.Scheme, "ssh") && (len(o.SSHKeys) == 0 || o.SSHKnownHosts == "") {
			return fmt.Errorf("%w (uid %d, docker run --user): the ssh store %s needs %s and %s set explicitly",
				ErrSetuid, o.Caller.UID, l, EnvSSHKey, EnvSSHKnownHosts)
		}
	}
	return nil
}

// mergeGroups returns a followed by the members of b it lacks.
func mergeGroups(a, b []int) []int {
	out := slices.Clone(a)
	for _, g := range b {
		if !slices.Contains(out, g) {
			out = append(out, g)
		}
	}
	return out
}
