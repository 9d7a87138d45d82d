package boot

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrNotPrivileged is wrapped by the error Init returns at once when the
// container lacks /dev/fuse or the privilege to mount.
var ErrNotPrivileged = errors.New("boot: the container cannot mount its image")

// checkPrivileges fails, wrapping ErrNotPrivileged, unless /dev/fuse is a
// character device this process can open and it may mount filesystems
// (CAP_SYS_ADMIN).
func checkPrivileges() error {
	var missing []string
	f, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0)
	if err != nil {
		missing = append(missing, "--device /dev/fuse")
	} else {
		f.Close()
	}
	if !hasCapSysAdmin() {
		missing = append(missing, "--privileged")
	}
	if len(missing) == 0 {
		return nil
	}
	return fmt.Errorf("%w: this is a bootfs image, which mounts its root filesystem with FUSE at start; run it with docker run --privileged --device /dev/fuse ... (missing: %s), or with no privilege at all through the node's bootfs-agent: docker run -v /run/bootfs:/run/bootfs ...",
		ErrNotPrivileged, strings.Join(missing, " "))
}

// hasCapSysAdmin reports whether CAP_SYS_ADMIN is in the effective set.
func hasCapSysAdmin() bool {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && caps&(1<<unix.CAP_SYS_ADMIN) != 0
		}
	}
	return false
}

// privilegeHint names the docker run flags that lift err, if it is the
// EPERM or EACCES that Docker's default seccomp profile or AppArmor give
// a container with CAP_SYS_ADMIN but not --privileged.
func privilegeHint(err error) string {
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
		return " (Docker's seccomp profile or AppArmor forbids it: run with docker run --privileged --device /dev/fuse, or add --security-opt seccomp=unconfined --security-opt apparmor=unconfined)"
	}
	return ""
}
