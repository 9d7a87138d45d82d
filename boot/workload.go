package boot

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/bootfs/bootfs/internal/bootconfig"
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

// workloadSpec is what init tells the workload process (see
// WorkloadCommand) on its fd 3.
type workloadSpec struct {
	Argv       []string `json:"argv"`
	Env        []string `json:"env"`
	ImageEnv   []string `json:"image_env"`
	User       string   `json:"user"`
	WorkingDir string   `json:"working_dir"`
	// ExtraGroups are supplementary groups to add to the user's own
	// (Docker's --group-add for a Caller).
	ExtraGroups []int `json:"extra_groups,omitempty"`
}

// workload is the running workload process.
type workload struct {
	pid   int
	execR *os.File
	sigc  chan os.Signal
	// stoppedBy is the stop signal that killed the workload process
	// before it exec'd its command, if one did.
	stoppedBy atomic.Int32
}

// startWorkload re-executes this binary as WorkloadCommand, in init's
// namespaces and root: docker exec and health checks, which the runtime
// starts in init's namespaces, then see what the workload sees, its
// processes too.
func startWorkload(argv, environ []string, img bootconfig.Image, extraGroups []int) (*workload, error) {
	spec, err := json.Marshal(workloadSpec{
		Argv: argv, Env: environ, ImageEnv: img.Env,
		User: img.User, WorkingDir: img.WorkingDir, ExtraGroups: extraGroups,
	})
	if err != nil {
		return nil, fmt.Errorf("boot: %w", err)
	}
	specR, specW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("boot: %w", err)
	}
	defer specR.Close()
	execR, execW, err := os.Pipe()
	if err != nil {
		specW.Close()
		return nil, fmt.Errorf("boot: %w", err)
	}
	defer execW.Close()

	cmd := exec.Command("/proc/self/exe", WorkloadCommand)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.ExtraFiles = []*os.File{specR, execW}
	cmd.Env = []string{}
	cmd.SysProcAttr = &syscall.SysProcAttr{}
	if isTerminal(0) {
		// docker run -t: the workload leads its own session on the tty.
		cmd.SysProcAttr.Setsid = true
		cmd.SysProcAttr.Setctty = true
		cmd.SysProcAttr.Ctty = 0
	}

	w := &workload{execR: execR, sigc: make(chan os.Signal, 64)}
	// Before the start, so no signal or exit is missed.
	signal.Notify(w.sigc, append(forwarded(), unix.SIGCHLD)...)
	if err := cmd.Start(); err != nil {
		signal.Stop(w.sigc)
		specW.Close()
		execR.Close()
		return nil, fmt.Errorf("boot: start the workload: %w", err)
	}
	w.pid = cmd.Process.Pid
	// A failed write means the child died early: waitExec sees its end
	// of the exec pipe close and supervise reaps it.
	_, _ = specW.Write(spec)
	specW.Close()
	return w, nil
}

func isTerminal(fd int) bool {
	_, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	return err == nil
}

// forwardWhileStarting handles signals for the workload process until
// the returned stop is called, while it has not exec'd its command yet.
// Its first reads of the image (its user's entry in /etc/passwd, its
// binary) may wait on a store that does not answer, in page-cache reads
// that only SIGKILL interrupts; and until it execs, it is boot's own code
// with nothing to clean up. So a stop signal (stopSignals) kills it, and
// is recorded for the exit status; others are forwarded. Signals that stop does not see are left for supervise.
func (w *workload) forwardWhileStarting(log *slog.Logger) (stop func()) {
	done, exited := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(exited)
		for {
			select {
			case <-done:
				return
			case s := <-w.sigc:
				if s == unix.SIGCHLD {
					continue // supervise reaps before it waits
				}
				sig := s.(syscall.Signal)
				if slices.Contains(stopSignals, s) {
					log.Warn("stopped before the workload started", "signal", s)
					w.stoppedBy.CompareAndSwap(0, int32(sig))
					sig = unix.SIGKILL
				} else {
					log.Debug("forwarding signal while the workload starts", "signal", s)
				}
				if err := unix.Kill(w.pid, sig); err != nil && !errors.Is(err, unix.ESRCH) {
					log.Warn("cannot forward signal to the workload", "signal", s, "err", err)
				}
			}
		}
	}()
	return func() {
		close(done)
		<-exited
	}
}

// waitExec waits until the workload process has exec'd the command (its
// end of the pipe closes on exec) or reports why it could not.
func (w *workload) waitExec() error {
	defer w.execR.Close()
	b, _ := io.ReadAll(io.LimitReader(w.execR, 64<<10))
	if len(b) > 0 {
		return errors.New(string(b))
	}
	return nil
}

// supervise forwards signals to the workload and reaps children until the
// workload exits, and returns its exit status. onUSR1 runs on SIGUSR1,
// which is forwarded too.
func (w *workload) supervise(onUSR1 func(), log *slog.Logger) int {
	log = orDiscard(log)
	defer signal.Stop(w.sigc)
	for {
		// A reap first: the workload may have ended before the signal
		// handler was in place.
		if status, done := w.reap(log); done {
			return status
		}
		s := <-w.sigc
		switch s {
		case unix.SIGCHLD:
			continue
		case unix.SIGUSR1:
			onUSR1()
		}
		if !asPID1Would(w.pid, s.(syscall.Signal)) {
			log.Debug("not forwarding a signal the workload has no handler for, as its PID 1 would not get it", "signal", s)
			continue
		}
		log.Debug("forwarding signal", "signal", s)
		if err := unix.Kill(w.pid, s.(syscall.Signal)); err != nil && !errors.Is(err, unix.ESRCH) {
			log.Warn("cannot forward signal to the workload", "signal", s, "err", err)
		}
	}
}

// reap collects every child that has ended. done is true once the
// workload has, with its exit status.
func (w *workload) reap(log *slog.Logger) (status int, done bool) {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || pid <= 0 {
			return 0, false
		}
		if pid != w.pid {
			log.Debug("reaped an orphan", "pid", pid)
			continue
		}
		switch {
		case ws.Exited():
			return ws.ExitStatus(), true
		case ws.Signaled():
			return 128 + int(ws.Signal()), true
		}
	}
}

// RunWorkload is the workload process that Init starts in the workload's
// root, which init has made the container's. It reads its spec from fd 3,
// takes the image's user and groups (from the root's /etc/passwd and
// /etc/group), changes to the working directory and execs the command,
// looked up in the workload's PATH.
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
	return execWorkload(s)
}

// execWorkload execs s's command in the process's current root: the
// image's user and groups, the environment, the working directory. It
// returns only on failure.
func execWorkload(s workloadSpec) error {
	u, err := resolveImageUser(s.User)
	if err != nil {
		return err
	}
	u.Groups = mergeGroups(u.Groups, s.ExtraGroups)
	rootHome := ""
	if root, err := resolveImageUser("0"); err == nil {
		rootHome = root.Home
	}
	env := workloadEnv(s.Env, s.ImageEnv, u.Home, rootHome)
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
