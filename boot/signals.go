package boot

import (
	"bufio"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// forwarded are the signals init passes on to the workload: every
// catchable one but SIGCHLD (init's own), SIGURG (the Go runtime's) and
// SIGPIPE (init's own broken log pipe).
func forwarded() []os.Signal {
	var out []os.Signal
	for s := syscall.Signal(1); s <= 64; s++ {
		switch s {
		case unix.SIGKILL, unix.SIGSTOP, unix.SIGCHLD, unix.SIGURG, unix.SIGPIPE, 32, 33:
			continue
		}
		out = append(out, s)
	}
	return out
}

// stopSignals are the signals that stop a container (docker stop's
// SIGTERM, a terminal's SIGINT, ...) and so end boot or the workload
// process while the workload has not started.
var stopSignals = []os.Signal{unix.SIGTERM, unix.SIGINT, unix.SIGHUP, unix.SIGQUIT}

// exitOnStop makes the stopSignals end the process, with status 128+n,
// until the returned stop is called.
func exitOnStop(log *slog.Logger) (stop func()) {
	c := make(chan os.Signal, 1)
	signal.Notify(c, stopSignals...)
	done := make(chan struct{})
	go func() {
		select {
		case s := <-c:
			log.Warn("stopped before the workload started", "signal", s)
			os.Exit(128 + int(s.(syscall.Signal)))
		case <-done:
		}
	}()
	return sync.OnceFunc(func() {
		signal.Stop(c)
		close(done)
	})
}

// catches reports whether process pid has a handler for sig, from the
// SigCgt mask of /proc/PID/status.
func catches(pid int, sig syscall.Signal) (bool, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "SigCgt:"); ok {
			mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				return false, fmt.Errorf("/proc/%d/status: SigCgt: %w", pid, err)
			}
			return mask&(1<<(uint(sig)-1)) != 0, nil
		}
	}
	return false, fmt.Errorf("/proc/%d/status: no SigCgt", pid)
}

// asPID1Would reports whether the kernel would deliver sig, sent from
// outside the container, to the workload if it were the container's
// PID 1, as it is in the original image: only if it has a handler for
// it (SIGKILL and SIGSTOP are never forwarded: they stop boot itself).
// When boot is not PID 1 (docker run --init), the workload is not PID 1
// in the original either, and every signal goes through.
func asPID1Would(pid int, sig syscall.Signal) bool {
	if os.Getpid() != 1 {
		return true
	}
	ok, err := catches(pid, sig)
	return ok || err != nil
}
