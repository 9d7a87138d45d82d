package boot

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// ErrSetuid is wrapped by the errors of what boot refuses to do when a
// non-root user started it setuid root.
var ErrSetuid = errors.New("boot: started setuid root by a non-root user")

// Caller is the non-root user who started boot when it runs setuid
// root. mkimage installs /.bootfs/boot setuid root and gives the boot
// image the original image's USER, so that Docker starts the container's
// init as the user it would start the original's workload as (the
// image's USER, or docker run --user UID[:GID] or NAME) and runs docker
// exec and health checks as that user too. boot becomes root for its own
// work (the mounts) and runs the workload as the Caller, with the ids
// Docker gave.
//
// Everything a Caller names is used with the Caller's rights, never
// root's: see InitOptions.ConfineToCaller.
type Caller struct {
	// UID and GID are the real ids Docker gave. Docker gives gid 0 when
	// --user names no group and the image's /etc/passwd (the copy the
	// boot image holds) does not list the uid.
	UID, GID int
	// Groups are the supplementary groups Docker gave: those of the
	// image's /etc/group, and any --group-add.
	Groups []int
}

// SetuidCaller returns the user who started boot if it runs setuid root
// (a real uid other than 0 and an effective uid of 0), else nil.
func SetuidCaller() (*Caller, error) {
	ruid, euid, _ := unix.Getresuid()
	if ruid == 0 || euid != 0 {
		return nil, nil
	}
	return startedAs()
}

// startedAs returns the real ids and supplementary groups this process
// was started with: the user Docker started the container's init as.
func startedAs() (*Caller, error) {
	groups, err := unix.Getgroups()
	if err != nil {
		return nil, fmt.Errorf("boot: supplementary groups: %w", err)
	}
	return &Caller{UID: unix.Getuid(), GID: unix.Getgid(), Groups: groups}, nil
}

// ErrNotRoot is wrapped by the error Init returns when boot runs as a
// user other than root and its setuid bit gave it no root either.
var ErrNotRoot = errors.New("boot: started as a user other than root, and /.bootfs/boot's setuid bit gave it no root")

// checkRoot fails, wrapping ErrNotRoot, unless the effective uid is 0:
// boot starts as the image's USER (or --user), and its setuid bit makes
// it root, unless the container has no_new_privs (docker run
// --security-opt no-new-privileges) or its root is mounted nosuid.
func checkRoot() error {
	if unix.Geteuid() == 0 {
		return nil
	}
	why := "the container's root filesystem is mounted nosuid, or /.bootfs/boot lost its setuid bit"
	if noNewPrivs() {
		why = "the container has no_new_privs (docker run --security-opt no-new-privileges), which ignores setuid bits"
	}
	return fmt.Errorf("%w (uid %d): %s. Drop that, or start the container as root with the workload's user in BOOTFS_USER: docker run --user 0 -e BOOTFS_USER=USER ... (docker exec then needs -u USER)",
		ErrNotRoot, unix.Getuid(), why)
}

// noNewPrivs reports whether this process has no_new_privs set.
func noNewPrivs() bool {
	v, err := unix.PrctlRetInt(unix.PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0)
	return err == nil && v == 1
}

// dockerInit is where Docker puts its init (tini) for docker run --init.
const dockerInit = "/sbin/docker-init"

// CheckInit fails, wrapping ErrSetuid, unless boot runs as a container's
// init: PID 1 of the container, or the child of Docker's --init
// (/sbin/docker-init as PID 1, which runs as the same user). Anything
// else that reaches /.bootfs/boot (a docker exec in the first moments of
// a start, whose parent is outside the container) gets no root from it.
func (c *Caller) CheckInit() error {
	return c.checkInit(os.Getpid(), os.Getppid(), func() (string, error) { return c.readlink("/proc/1/exe") })
}

// checkInit is CheckInit with this process's pid and ppid, and a readlink
// of /proc/1/exe.
func (c *Caller) checkInit(pid, ppid int, pid1Exe func() (string, error)) error {
	if pid == 1 {
		return nil
	}
	if ppid == 1 {
		if exe, err := pid1Exe(); err == nil && exe == dockerInit {
			return nil
		}
	}
	return fmt.Errorf("%w (uid %d): boot -- CMD runs setuid only as a container's init: PID 1, or the child of docker run --init's %s (this is pid %d, its parent %d)",
		ErrSetuid, c.UID, dockerInit, pid, ppid)
}

// readlink reads the symbolic link name with the Caller's rights: root
// without CAP_SYS_PTRACE may not read /proc/1/exe of an init that runs
// as the Caller, the Caller may.
func (c *Caller) readlink(name string) (string, error) {
	var s string
	err := c.do(func() error {
		var err error
		s, err = os.Readlink(name)
		return err
	})
	return s, err
}

// BecomeRoot sets the real, effective and saved uid and gid of every
// thread to 0, so that what init starts (the workload process, helpers)
// runs as root and not as a setuid program. The supplementary groups
// stay the Caller's. The capabilities a setuid-root exec granted stay.
//
// Under docker run --init (boot is not PID 1), the saved uid stays the
// Caller's: Docker's init runs as the Caller and forwards signals to
// boot (docker stop), which the kernel allows only to a sender whose uid
// is the target's real or saved uid. Everything boot starts runs with
// all three 0 all the same, as exec makes the saved uid the effective.
func (c *Caller) BecomeRoot() error {
	saved := 0
	if os.Getpid() != 1 {
		saved = c.UID
	}
	if err := syscall.Setresgid(0, 0, 0); err != nil {
		return fmt.Errorf("boot: become root: set gid 0: %w", err)
	}
	if err := syscall.Setresuid(0, 0, saved); err != nil {
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

// withoutSecureTraceback drops the GOTRACEBACK=none that the Go runtime
// appends to the environment of a setuid program that has no GOTRACEBACK
// (so a crash of boot prints no memory): the container's environment did
// not hold it, and the workload must not get it.
func withoutSecureTraceback(environ []string) []string {
	n := len(environ)
	if n == 0 || environ[n-1] != "GOTRACEBACK=none" {
		return environ
	}
	for _, kv := range environ[:n-1] {
		if strings.HasPrefix(kv, "GOTRACEBACK=") {
			return environ
		}
	}
	return environ[:n-1]
}
