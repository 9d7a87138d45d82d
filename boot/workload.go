package boot

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// WorkloadCommand is the first argument with which Init re-executes its
// own binary to become the workload. cmd/boot hands it to RunWorkload.
const WorkloadCommand = "__bootfs_workload"

// defaultPath is the PATH the workload gets when its environment has none
// (Docker always sets one).
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// ExitError is an error with the exit status the workload process exits
// with: 127 for a command that is not found, 126 for one that cannot be
// run, as a shell and Docker report them.
type ExitError struct {
	Status int
	Err    error
}

func (e *ExitError) Error() string { return e.Err.Error() }
func (e *ExitError) Unwrap() error { return e.Err }

// RunWorkload is the workload process that Init starts in new PID and
// mount namespaces. It reads its spec from fd 3, switches to the
// workload's root (pivot_root, the old root detached, a fresh /proc),
// takes the image's user and groups, changes to the working directory and
// execs the command, looked up in the workload's PATH inside the new root.
// On success it does not return. On failure it reports the error on fd 4
// (which exec closes) and returns it; cmd/boot exits with its status.
func RunWorkload() error {
	spec := os.NewFile(3, "spec")
	execW := os.NewFile(4, "exec")
	if spec == nil || execW == nil {
		return &ExitError{Status: 1, Err: errors.New("boot: " + WorkloadCommand + " is internal: init runs it")}
	}
	if c, err := SetuidCaller(); err != nil || c != nil {
		// Init becomes root before it starts the workload process.
		return &ExitError{Status: 1, Err: fmt.Errorf("%w: %s is internal: init runs it as root", ErrSetuid, WorkloadCommand)}
	}
	unix.CloseOnExec(4)
	err := runWorkload(spec)
	io.WriteString(execW, err.Error())
	execW.Close()
	var ee *ExitError
	if !errors.As(err, &ee) {
		err = &ExitError{Status: 1, Err: err}
	}
	return err
}

func runWorkload(specFile *os.File) error {
	b, err := io.ReadAll(io.LimitReader(specFile, 16<<20))
	specFile.Close()
	if err != nil {
		return fmt.Errorf("boot: read workload spec: %w", err)
	}
	var s workloadSpec
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("boot: workload spec: %w", err)
	}
	if len(s.Argv) == 0 {
		return errors.New("boot: no command to run")
	}
	if err := enterRoot(s.Root); err != nil {
		return err
	}
	u, err := resolveImageUser(s.User)
	if err != nil {
		return err
	}
	u.Groups = mergeGroups(u.Groups, s.ExtraGroups)
	env := workloadEnv(s.Env, s.ImageEnv, u.Home)
	wd := s.WorkingDir
	if wd == "" {
		wd = "/"
	}
	if _, err := os.Stat(wd); errors.Is(err, fs.ErrNotExist) {
		// Docker creates a missing WORKDIR.
		if err := os.MkdirAll(wd, 0o755); err != nil {
			return fmt.Errorf("boot: create working directory %s: %w", wd, err)
		}
	}
	if err := os.Chdir(wd); err != nil {
		return fmt.Errorf("boot: change to working directory %s: %w", wd, err)
	}
	prog, err := lookPath(s.Argv[0], getenvFrom(env, "PATH"))
	if err != nil {
		return err
	}
	if err := setUser(u); err != nil {
		return err
	}
	err = unix.Exec(prog, s.Argv, env)
	status := 126
	if errors.Is(err, unix.ENOENT) {
		status = 127
	}
	return &ExitError{Status: status, Err: fmt.Errorf("boot: exec %s: %w", s.Argv[0], err)}
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

// enterRoot makes root the process's root: private mounts, pivot_root,
// the old root detached, and a /proc of the new PID namespace.
func enterRoot(root string) error {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("boot: make mounts private: %w%s", err, privilegeHint(err))
	}
	if err := unix.Chdir(root); err != nil {
		return fmt.Errorf("boot: enter %s: %w", root, err)
	}
	// pivot_root(".", ".") stacks the old root on the new one; detaching
	// "." then removes it, with no directory needed to hold it.
	if err := unix.PivotRoot(".", "."); err != nil {
		return fmt.Errorf("boot: pivot_root to %s: %w%s", root, err, privilegeHint(err))
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("boot: detach the old root: %w%s", err, privilegeHint(err))
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("boot: %w", err)
	}
	if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("boot: mount /proc: %w%s", err, privilegeHint(err))
	}
	return nil
}

// resolveImageUser resolves spec against the root's /etc/passwd and
// /etc/group.
func resolveImageUser(spec string) (User, error) {
	open := func(name string) (io.Reader, func()) {
		f, err := os.Open(name)
		if err != nil {
			return nil, func() {}
		}
		return f, func() { f.Close() }
	}
	passwd, closeP := open("/etc/passwd")
	defer closeP()
	group, closeG := open("/etc/group")
	defer closeG()
	return ResolveUser(spec, passwd, group)
}

// setUser switches every thread to u's groups, gid and uid.
func setUser(u User) error {
	groups := u.Groups
	if groups == nil {
		groups = []int{}
	}
	if err := syscall.Setgroups(groups); err != nil {
		return fmt.Errorf("boot: set groups %v: %w", groups, err)
	}
	if err := syscall.Setgid(u.GID); err != nil {
		return fmt.Errorf("boot: set gid %d: %w", u.GID, err)
	}
	if err := syscall.Setuid(u.UID); err != nil {
		return fmt.Errorf("boot: set uid %d: %w", u.UID, err)
	}
	return nil
}

// lookPath finds the program name names, as a shell does: a name with a
// slash is taken as it is, else the first executable regular file of that
// name in a directory of pathList.
func lookPath(name, pathList string) (string, error) {
	if name == "" {
		return "", &ExitError{Status: 127, Err: errors.New("boot: exec: empty command name")}
	}
	if strings.Contains(name, "/") {
		return name, nil
	}
	if pathList == "" {
		pathList = defaultPath
	}
	denied := ""
	for dir := range strings.SplitSeq(pathList, ":") {
		if dir == "" {
			dir = "."
		}
		p := filepath.Join(dir, name)
		if !path.IsAbs(dir) {
			p = "./" + p
		}
		fi, err := os.Stat(p)
		if err != nil || !fi.Mode().IsRegular() {
			continue
		}
		if fi.Mode()&0o111 == 0 {
			denied = p
			continue
		}
		return p, nil
	}
	if denied != "" {
		return denied, nil
	}
	return "", &ExitError{Status: 127, Err: fmt.Errorf("boot: exec: %q: executable file not found in $PATH", name)}
}
