package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The agent runs as two processes so that it can be restarted and
// upgraded under running containers. The holder (RunHolder) is small and
// never changes: it owns the socket and, for every mount, the /dev/fuse
// fd of its connection, which keeps the connection alive while no worker
// serves it (the kernel queues its requests). The worker is the agent
// proper (Agent, with Options.Holder): stores, cache, LRU and FUSE
// servers. When it exits, or is killed, the holder starts the binary on
// disk again and hands it every mount; the new worker adopts each
// connection (lazyfs.FS.AdoptServer) and has the kernel re-send the
// requests the old one had read and not answered (lazyfs.Resend).

// Environment of a worker: WorkerEnv set to 1 makes bootfs-agent a worker;
// RestartsEnv says how many workers ran before it.
const (
	WorkerEnv   = "BOOTFS_AGENT_WORKER"
	RestartsEnv = "BOOTFS_AGENT_RESTARTS"
)

// A worker's fds: the socket's listener and its end of the handover.
const (
	workerListenFD   = 3
	workerHandoverFD = 4
)

// Signals the holder sends its worker: SIGTERM to hand over (stop taking
// requests, finish those under way, exit: the next worker serves the
// mounts), SIGINT to drain (stop taking requests, serve the mounts until
// their containers end, exit).
const (
	sigHandover = syscall.SIGTERM
	sigDrain    = syscall.SIGINT
)

// HolderOptions configure RunHolder.
type HolderOptions struct {
	// SocketDir and Replace are Options'.
	SocketDir string
	Replace   bool
	// Worker returns the command of a new worker: bootfs-agent, as on
	// disk now, with the holder's flags. RunHolder adds the fds and the
	// environment. Required.
	Worker func() *exec.Cmd
	// Restart replaces the worker gracefully on each receive (SIGHUP).
	Restart <-chan os.Signal
	// Logger receives the holder's log; nil discards.
	Logger *slog.Logger
}

// heldMount is a mount the holder keeps for the next worker.
type heldMount struct {
	state *mountState
	fds   []int
}

// RunHolder is bootfs-agent: it listens on the socket and keeps a worker
// serving it, starting a new one whenever the last one exits, until ctx
// ends; then it stops taking requests, lets its worker serve the running
// containers until they end, and returns.
func RunHolder(ctx context.Context, opts HolderOptions) error {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	l, err := listen(opts.SocketDir, opts.Replace, log)
	if err != nil {
		return err
	}
	defer l.Close()
	lf, err := l.File()
	if err != nil {
		return fmt.Errorf("bootfs-agent: %w", err)
	}
	defer lf.Close()
	log.Info("holding the socket and the FUSE connections", "socket", l.Addr().String(), "pid", os.Getpid())

	held := make(map[uint64]*heldMount)
	defer func() {
		for _, m := range held {
			closeFDs(m.fds)
		}
	}()
	stopping := false
	for restarts := 0; ; restarts++ {
		started := time.Now()
		code, err := runWorker(ctx, opts, lf, held, restarts, &stopping, l, log)
		if err != nil {
			return err
		}
		if stopping && code == 0 {
			return nil
		}
		if restarts == 0 && time.Since(started) < 2*time.Second && code > 0 {
			return fmt.Errorf("bootfs-agent: the worker exited with %d as it started (see its log above)", code)
		}
		log.Warn("the worker exited; starting a new one, which takes over the running containers", "code", code, "mounts", len(held))
		if time.Since(started) < time.Second { // no busy loop of a worker that cannot start
			time.Sleep(time.Second)
		}
	}
}

// runWorker starts a worker, hands it the held mounts, and keeps held up
// to date with what it reports, until it exits; it returns its exit code
// (-1 if killed by a signal).
func runWorker(ctx context.Context, opts HolderOptions, lf *os.File, held map[uint64]*heldMount, restarts int, stopping *bool, l *net.UnixListener, log *slog.Logger) (int, error) {
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("bootfs-agent: socketpair: %w", err)
	}
	theirs := os.NewFile(uintptr(sp[1]), "handover")
	ours, err := net.FileConn(os.NewFile(uintptr(sp[0]), "handover"))
	unix.Close(sp[0]) // FileConn dups
	if err != nil {
		theirs.Close()
		return 0, fmt.Errorf("bootfs-agent: %w", err)
	}
	c := ours.(*net.UnixConn)
	defer c.Close()

	cmd := opts.Worker()
	cmd.ExtraFiles = []*os.File{lf, theirs} // fds 3 and 4
	cmd.Env = append(os.Environ(), WorkerEnv+"=1", RestartsEnv+"="+strconv.Itoa(restarts))
	// A worker outlives no holder: with the holder gone, nothing would
	// keep its connections over its own end.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	err = cmd.Start()
	theirs.Close()
	if err != nil {
		return 0, fmt.Errorf("bootfs-agent: start the worker: %w", err)
	}
	log.Info("started a worker", "pid", cmd.Process.Pid, "restarts", restarts, "mounts", len(held))
	exited := make(chan int, 1)
	go func() {
		cmd.Wait()
		exited <- cmd.ProcessState.ExitCode()
	}()
	for _, m := range held {
		if err := send(c, message{Op: opHold, Mount: m.state}, m.fds...); err != nil {
			log.Warn("cannot hand a mount to the worker", "err", err)
		}
	}
	if err := send(c, message{Op: opReady}); err != nil {
		log.Warn("cannot hand over to the worker", "err", err)
	}
	if *stopping {
		cmd.Process.Signal(sigDrain)
	}
	msgs := make(chan heldMessage)
	go func() {
		defer close(msgs)
		for {
			m, fds, err := receive(c)
			if errors.Is(err, errHandoverEnd) || errors.Is(err, net.ErrClosed) {
				return
			}
			if err != nil && !errors.Is(err, errBadMessage) {
				log.Error("the handover to the worker broke; replacing the worker", "err", err)
				cmd.Process.Signal(sigHandover)
				return
			}
			msgs <- heldMessage{m, fds, err}
		}
	}()
	done := ctx.Done()
	for {
		select {
		case hm, ok := <-msgs:
			if !ok {
				// The worker closed its end: it is exiting.
				return <-exited, nil
			}
			apply(held, hm, log)
		case <-opts.Restart:
			log.Info("replacing the worker (SIGHUP): the new one runs the binary on disk", "pid", cmd.Process.Pid)
			cmd.Process.Signal(sigHandover)
		case <-done:
			done = nil
			*stopping = true
			l.Close() // no new containers; the socket goes
			log.Info("stopped taking requests; the worker serves the running containers until they end", "mounts", len(held))
			cmd.Process.Signal(sigDrain)
		}
	}
}

type heldMessage struct {
	m   message
	fds []int
	err error
}

// apply updates held with a worker's message.
func apply(held map[uint64]*heldMount, hm heldMessage, log *slog.Logger) {
	if hm.err != nil {
		log.Warn("bad message from the worker", "err", hm.err)
		return
	}
	switch hm.m.Op {
	case opHold:
		if old := held[hm.m.Mount.NS]; old != nil {
			closeFDs(old.fds)
		}
		held[hm.m.Mount.NS] = &heldMount{state: hm.m.Mount, fds: hm.fds}
	case opDrop:
		if old := held[hm.m.NS]; old != nil {
			closeFDs(old.fds)
			delete(held, hm.m.NS)
		}
	default:
		closeFDs(hm.fds)
	}
}

// WorkerFiles returns a worker's listener and handover connection, the
// fds its holder passed (Options.Listener, Options.Holder).
func WorkerFiles() (*net.UnixListener, *net.UnixConn, error) {
	lf := os.NewFile(workerListenFD, "listener")
	hf := os.NewFile(workerHandoverFD, "handover")
	defer lf.Close()
	defer hf.Close()
	l, err := net.FileListener(lf)
	if err != nil {
		return nil, nil, fmt.Errorf("bootfs-agent: the worker's socket (fd %d; start bootfs-agent, not a worker by hand): %w", workerListenFD, err)
	}
	c, err := net.FileConn(hf)
	if err != nil {
		l.Close()
		return nil, nil, fmt.Errorf("bootfs-agent: the worker's handover (fd %d; start bootfs-agent, not a worker by hand): %w", workerHandoverFD, err)
	}
	ul, ok1 := l.(*net.UnixListener)
	uc, ok2 := c.(*net.UnixConn)
	if !ok1 || !ok2 {
		l.Close()
		c.Close()
		return nil, nil, errors.New("bootfs-agent: the worker's fds are not Unix sockets (start bootfs-agent, not a worker by hand)")
	}
	return ul, uc, nil
}
