package boot

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// ExecStateDir holds what init records for boot exec. It is in init's
// own mount namespace, which the workload never sees.
const ExecStateDir = "/run/bootfs"

var execStatePath = filepath.Join(ExecStateDir, "workload.json")

// ErrExec is wrapped by the errors of Exec before the command runs.
var ErrExec = errors.New("boot exec: cannot enter the workload")

// execState is what init records once the workload runs.
type execState struct {
	// InitPID is init's pid, the workload's parent.
	InitPID int `json:"init_pid"`
	// PID is the workload process's pid in init's PID namespace.
	PID int `json:"pid"`
	// WorkingDir is the workload's working directory, where an exec
	// starts (as docker exec starts in the image's WORKDIR).
	WorkingDir string `json:"working_dir"`
}

// writeExecState records st for boot exec, as root, readable by root only.
func writeExecState(st execState) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(ExecStateDir, 0o700); err != nil {
		return fmt.Errorf("boot: %w", err)
	}
	if err := os.Chmod(ExecStateDir, 0o700); err != nil {
		return fmt.Errorf("boot: %w", err)
	}
	if err := writeFileAtomic(execStatePath, b, nil); err != nil {
		return fmt.Errorf("boot: record the workload for boot exec: %w", err)
	}
	return os.Chmod(execStatePath, 0o600)
}

func removeExecState() { os.Remove(execStatePath) }

// readExecState reads init's record, trusting it only if root owns it
// and its directory and no one else may write either.
func readExecState() (execState, error) {
	var st execState
	dir, err := os.Lstat(ExecStateDir)
	if err != nil {
		return st, fmt.Errorf("%w: %v (is this a running bootfs container? run it as docker exec CONTAINER /.bootfs/boot exec -- CMD)", ErrExec, err)
	}
	if err := rootOwned(dir); err != nil {
		return st, fmt.Errorf("%w: %s: %v", ErrExec, ExecStateDir, err)
	}
	f, err := os.OpenFile(execStatePath, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return st, fmt.Errorf("%w: %v (has the workload started yet?)", ErrExec, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return st, fmt.Errorf("%w: %v", ErrExec, err)
	}
	if err := rootOwned(fi); err != nil {
		return st, fmt.Errorf("%w: %s: %v", ErrExec, execStatePath, err)
	}
	b, err := io.ReadAll(io.LimitReader(f, 64<<10))
	if err != nil {
		return st, fmt.Errorf("%w: %v", ErrExec, err)
	}
	if err := json.Unmarshal(b, &st); err != nil || st.PID <= 0 {
		return st, fmt.Errorf("%w: %s: bad record %q", ErrExec, execStatePath, b)
	}
	return st, nil
}

func rootOwned(fi os.FileInfo) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || st.Uid != 0 || fi.Mode()&0o022 != 0 || fi.Mode()&os.ModeSymlink != 0 {
		return fmt.Errorf("not owned by root, or writable by others (mode %v): not trusting it", fi.Mode())
	}
	return nil
}

// procCreds are a process's real ids and groups, from /proc/PID/status.
type procCreds struct {
	PPID     int
	UID, GID int
	Groups   []int
}

func readProcCreds(pid int) (procCreds, error) {
	var c procCreds
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return c, err
	}
	found := 0
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		first := func() (int, error) {
			if len(f) == 0 {
				return 0, fmt.Errorf("/proc/%d/status: empty %s", pid, k)
			}
			return strconv.Atoi(f[0])
		}
		switch k {
		case "PPid":
			c.PPID, err = first()
			found++
		case "Uid":
			c.UID, err = first()
			found++
		case "Gid":
			c.GID, err = first()
			found++
		case "Groups":
			c.Groups = []int{}
			for _, g := range f {
				n, gerr := strconv.Atoi(g)
				if gerr != nil {
					err = gerr
				}
				c.Groups = append(c.Groups, n)
			}
		}
		if err != nil {
			return c, fmt.Errorf("/proc/%d/status: %s: %w", pid, k, err)
		}
	}
	if found != 3 {
		return c, fmt.Errorf("/proc/%d/status: no PPid, Uid or Gid", pid)
	}
	return c, nil
}

// readEnviron reads a process's environment.
func readEnviron(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		return nil, err
	}
	var env []string
	for kv := range strings.SplitSeq(string(b), "\x00") {
		if kv != "" {
			env = append(env, kv)
		}
	}
	return env, nil
}

// ExecOptions configure Exec.
type ExecOptions struct {
	// Caller is set when a non-root user started boot exec setuid root
	// (docker exec into a container run with --user). It may then only
	// enter a workload that runs as the same uid.
	Caller *Caller
}

// Exec is `boot exec -- CMD...`, run inside a bootfs container (docker
// exec CONTAINER /.bootfs/boot exec -- CMD): it runs argv in the
// workload's mount and PID namespaces, with the workload's root, user
// (uid, gid and supplementary groups, as the workload process has them
// now) and environment (the one it started with), in its working
// directory, and returns argv's exit status (128+n if signal n killed
// it). Signals that Exec gets are passed on to argv.
//
// An error means argv never ran; its ExitError status is 126, or 127 for
// a command not found.
func Exec(argv []string, opts ExecOptions) (int, error) {
	if len(argv) == 0 {
		return 0, fmt.Errorf("%w: no command to run", ErrExec)
	}
	st, err := readExecState()
	if err != nil {
		return 0, err
	}
	creds, err := readProcCreds(st.PID)
	if err != nil {
		return 0, fmt.Errorf("%w: %v (has the workload ended?)", ErrExec, err)
	}
	if creds.PPID != st.InitPID {
		return 0, fmt.Errorf("%w: process %d is not init's child any more (has the workload ended?)", ErrExec, st.PID)
	}
	if c := opts.Caller; c != nil && c.UID != creds.UID {
		return 0, fmt.Errorf("%w: the workload runs as uid %d, and uid %d started boot exec setuid root; docker exec -u %d, or as root",
			ErrSetuid, creds.UID, c.UID, creds.UID)
	}
	// The workload's environment and namespaces are open to a process
	// of its own uid and gid (ptrace's rule); root would need
	// CAP_SYS_PTRACE, which a container without --privileged lacks.
	var env []string
	nsfd := [2]int{-1, -1}
	defer func() {
		for _, fd := range nsfd {
			if fd >= 0 {
				unix.Close(fd)
			}
		}
	}()
	err = (&Caller{UID: creds.UID, GID: creds.GID}).do(func() error {
		var err error
		if env, err = readEnviron(st.PID); err != nil {
			return err
		}
		for i, ns := range []string{"pid", "mnt"} {
			if nsfd[i], err = unix.Open(fmt.Sprintf("/proc/%d/ns/%s", st.PID, ns), unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
				return fmt.Errorf("open its %s namespace: %w", ns, err)
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("%w: %v", ErrExec, err)
	}

	// Entering a mount namespace needs a thread that shares its root
	// and working directory with no other: this one, locked, unshared.
	// It is never unlocked: it ends with the process.
	runtime.LockOSThread()
	if err := unix.Unshare(unix.CLONE_FS); err != nil {
		return 0, fmt.Errorf("%w: unshare: %v", ErrExec, err)
	}
	if err := unix.Setns(nsfd[0], unix.CLONE_NEWPID); err != nil {
		return 0, fmt.Errorf("%w: enter its PID namespace: %v", ErrExec, err)
	}
	if err := unix.Setns(nsfd[1], unix.CLONE_NEWNS); err != nil {
		return 0, fmt.Errorf("%w: enter its mount namespace: %v", ErrExec, err)
	}
	// From here on, file names are the workload's.
	wd := st.WorkingDir
	if fi, err := os.Stat(wd); wd == "" || err != nil || !fi.IsDir() {
		wd = "/"
	}
	if err := unix.Chdir(wd); err != nil {
		return 0, fmt.Errorf("%w: change to %s: %v", ErrExec, wd, err)
	}
	prog, err := lookPath(argv[0], getenvFrom(env, "PATH"))
	if err != nil {
		return 0, err
	}
	groups := make([]uint32, len(creds.Groups))
	for i, g := range creds.Groups {
		groups[i] = uint32(g)
	}
	cmd := &exec.Cmd{
		Path: prog, Args: argv, Env: env, Dir: wd,
		Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr,
		SysProcAttr: &syscall.SysProcAttr{
			Credential: &syscall.Credential{Uid: uint32(creds.UID), Gid: uint32(creds.GID), Groups: groups},
		},
	}
	sigc := make(chan os.Signal, 16)
	signal.Notify(sigc, forwarded()...)
	defer signal.Stop(sigc)
	if err := cmd.Start(); err != nil {
		status := 126
		if errors.Is(err, unix.ENOENT) {
			status = 127
		}
		return 0, &ExitError{Status: status, Err: fmt.Errorf("boot exec: %s: %w", argv[0], err)}
	}
	done := make(chan struct{})
	go func() {
		for {
			select {
			case s := <-sigc:
				cmd.Process.Signal(s)
			case <-done:
				return
			}
		}
	}()
	err = cmd.Wait()
	close(done)
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok {
		switch {
		case ws.Exited():
			return ws.ExitStatus(), nil
		case ws.Signaled():
			return 128 + int(ws.Signal()), nil
		}
	}
	return 0, fmt.Errorf("boot exec: wait for %s: %w", argv[0], err)
}
