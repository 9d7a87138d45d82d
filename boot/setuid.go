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
